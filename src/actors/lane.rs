//! The bulk lane: how a large fan-out reaches the sessions of a worker thread without starving them.
//!
//! Sessions live on the HTTP worker threads. A `do_send` to a session from another thread (a group's actor
//! on its arbiter, a peer link) wakes it through the worker's shared queue, which the worker serves in
//! arrival order: 5,000 `notify`s queued there put the next direct message's push, or the `sent` of a
//! connection's `send`, behind all of them (that was 250 ms at the median while a 10,000-member group took
//! 5 messages a second).
//!
//! So a large fan-out goes to each worker's lane instead: one channel and one task per worker thread, which
//! hands the deliveries to its sessions [`TURN`] at a time and yields between turns. A yielded task is woken
//! again behind whatever became ready meanwhile (frames that arrived, among them the members' `sync`s in
//! answer to the last turn, replies from conversations, 1:1 pushes), so the fan-out advances no faster than
//! the worker serves everything else, and other traffic waits behind a few deliveries instead of thousands,
//! while the fan-out still uses every cycle nothing else wants. The lane keeps the order of what it is given,
//! so a session gets one conversation's pushes in order as long as that conversation always uses the lane
//! (see `ConvActor::fan_out`).

use std::cell::OnceCell;
use std::sync::atomic::{AtomicUsize, Ordering};

use actix::Recipient;
use tokio::sync::mpsc;

use super::session::{Deliver, Outbound};

/// Deliveries a lane hands out before it lets the worker run other tasks. Measured with a 10,000-member
/// group at 5 msgs/s and 2,000 direct msgs/s beside it (`rookery-bench fanout --dm-rate 2000`): 64 gave
/// the direct messages a p99 of 306 ms, 4 gave 103 ms (1 gave 87 ms), with the group as fast.
pub const TURN: usize = 4;

/// One frame for many sessions of one worker.
struct Batch {
    out: Outbound,
    targets: Vec<Recipient<Deliver>>,
}

/// The sending side of one worker thread's lane (cheap to clone).
#[derive(Clone)]
pub struct Lane {
    id: usize,
    tx: mpsc::UnboundedSender<Batch>,
}

impl Lane {
    /// The lane of the current thread, started on first use; call it from the thread the session runs on.
    pub fn current() -> Lane {
        thread_local! {
            static LANE: OnceCell<Lane> = const { OnceCell::new() };
        }
        LANE.with(|cell| cell.get_or_init(Lane::start).clone())
    }

    fn start() -> Lane {
        static NEXT_ID: AtomicUsize = AtomicUsize::new(0);
        let (tx, rx) = mpsc::unbounded_channel();
        actix_rt::spawn(run(rx));
        Lane {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            tx,
        }
    }

    pub fn id(&self) -> usize {
        self.id
    }

    /// Queues `out` for `targets` (sessions of this lane's thread).
    pub fn send(&self, out: Outbound, targets: Vec<Recipient<Deliver>>) {
        if let Err(mpsc::error::SendError(batch)) = self.tx.send(Batch { out, targets }) {
            // the worker's runtime is gone, and its sessions with it; deliver directly to whatever is left
            for target in batch.targets {
                target.do_send(Deliver(batch.out.clone()));
            }
        }
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Batch>) {
    let mut handed = 0;
    while let Some(batch) = rx.recv().await {
        for target in batch.targets {
            target.do_send(Deliver(batch.out.clone()));
            handed += 1;
            if handed == TURN {
                handed = 0;
                tokio::task::yield_now().await;
            }
        }
    }
}
