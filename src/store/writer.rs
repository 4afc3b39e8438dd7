//! Group commit: one flusher thread makes every write durable with as few fsyncs as the load allows.
//!
//! A writer applies its batch to sled first, then registers a callback with [`Flusher::after_flush`]. The
//! flusher takes every callback registered so far, runs one `sled::Db::flush` (which covers all writes
//! applied before it started) and then calls them in registration order. Callbacks registered while a flush
//! runs wait for the next one, so under load one fsync acknowledges many messages. With
//! `durability = "os"` callbacks run at once and sled's background flusher writes on its own schedule.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use prometheus::Histogram;

use crate::config::Durability;

type Callback = Box<dyn FnOnce() + Send>;

struct State {
    waiting: Vec<Callback>,
    stopping: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

/// Handle to the flusher thread (cheap to clone).
#[derive(Clone)]
pub struct Flusher {
    shared: Arc<Shared>,
    durability: Durability,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Flusher {
    pub fn start(db: sled::Db, durability: Durability, flush_seconds: Histogram) -> Flusher {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                waiting: Vec::new(),
                stopping: false,
            }),
            wake: Condvar::new(),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("rookery-flush".into())
            .spawn(move || flush_loop(&db, &thread_shared, &flush_seconds))
            .ok();
        Flusher {
            shared,
            durability,
            thread: Arc::new(Mutex::new(thread)),
        }
    }

    /// Calls `callback` once everything written before this call is durable (at once with `os`).
    pub fn after_flush(&self, callback: impl FnOnce() + Send + 'static) {
        if self.durability == Durability::Os {
            callback();
            return;
        }
        let mut state = lock(&self.shared.state);
        if state.stopping {
            drop(state);
            callback();
            return;
        }
        state.waiting.push(Box::new(callback));
        drop(state);
        self.shared.wake.notify_one();
    }

    /// Resolves once everything written before the call is durable.
    pub fn flushed(&self) -> impl std::future::Future<Output = ()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.after_flush(move || {
            let _ = tx.send(());
        });
        async move {
            let _ = rx.await;
        }
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Runs a last flush, answers every waiter and stops the thread.
    pub fn stop(&self) {
        lock(&self.shared.state).stopping = true;
        self.shared.wake.notify_one();
        if let Some(handle) = lock(&self.thread).take() {
            let _ = handle.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The shortest time between the starts of two flushes. Under load, writes that arrive within one window share
/// one fsync; each flush also wakes sled's IO thread pool (sled 0.34 wakes all seven of its waiting threads: about
/// 165 µs of their CPU per flush, measured), so fewer flushes leave more CPU for everything else. An idle node
/// flushes at once (the window only delays a flush that follows another closely). 1 ms against 500 µs
/// (bench/README.md, "Stop 44"): 8% less CPU per message at 10,000 msgs/s and 5% less at saturation, the median
/// latency at 10,000 msgs/s 0.1 ms longer and its p99 the same within the noise.
pub const COMMIT_WINDOW: std::time::Duration = std::time::Duration::from_millis(1);

fn flush_loop(db: &sled::Db, shared: &Shared, flush_seconds: &Histogram) {
    let mut last_start: Option<Instant> = None;
    loop {
        {
            let mut state = lock(&shared.state);
            while state.waiting.is_empty() && !state.stopping {
                state = shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        }
        if let Some(wait) = last_start.map(|t| COMMIT_WINDOW.saturating_sub(t.elapsed())) {
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
        }
        let (batch, stopping) = {
            let mut state = lock(&shared.state);
            (std::mem::take(&mut state.waiting), state.stopping)
        };
        let started = Instant::now();
        last_start = Some(started);
        if let Err(e) = db.flush() {
            // A failed fsync cannot be retried safely: the data may be lost. Stop acknowledging.
            tracing::error!(error = %e, "store flush failed; exiting so no write is acknowledged undurably");
            std::process::exit(70);
        }
        flush_seconds.observe(started.elapsed().as_secs_f64());
        for callback in batch {
            callback();
        }
        if stopping && lock(&shared.state).waiting.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn callbacks_run_after_a_flush_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path()).expect("open");
        let hist = Histogram::with_opts(prometheus::HistogramOpts::new("t", "t")).expect("hist");
        let flusher = Flusher::start(db.clone(), Durability::Sync, hist.clone());
        let order = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicUsize::new(0));
        for i in 0..100 {
            db.insert(format!("k{i}"), b"v".to_vec()).expect("insert");
            let order = Arc::clone(&order);
            let done = Arc::clone(&done);
            flusher.after_flush(move || {
                lock(&order).push(i);
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        flusher.stop();
        assert_eq!(done.load(Ordering::SeqCst), 100);
        assert_eq!(*lock(&order), (0..100).collect::<Vec<_>>());
        let flushes = hist.get_sample_count();
        assert!(
            (1..=100).contains(&flushes),
            "group commit used {flushes} flushes"
        );
    }
}
