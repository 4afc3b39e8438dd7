//! Loopback receivers for the webhook benchmarks: `POST /events` counts the events of each batch and answers
//! 200 at once; `POST /before` answers `{"action":"allow"}` after a fixed delay (a backend's moderation hook).
//! They run on their own thread and actix system, so they take CPU from the same two cores as the server
//! and the load generator, as a receiver on the same box would.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::{json, Value};

#[derive(Default)]
pub struct Counts {
    pub batches: AtomicU64,
    pub events: AtomicU64,
    pub before_send: AtomicU64,
}

/// A running receiver; it stops with the process.
pub struct Receiver {
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
}

struct State {
    counts: Arc<Counts>,
    delay: Duration,
}

async fn events(state: web::Data<State>, body: web::Bytes) -> HttpResponse {
    let n = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["events"].as_array().map(Vec::len))
        .unwrap_or(0);
    state.counts.batches.fetch_add(1, Ordering::Relaxed);
    state.counts.events.fetch_add(n as u64, Ordering::Relaxed);
    HttpResponse::Ok().finish()
}

async fn before(state: web::Data<State>) -> HttpResponse {
    state.counts.before_send.fetch_add(1, Ordering::Relaxed);
    if !state.delay.is_zero() {
        actix_rt::time::sleep(state.delay).await;
    }
    HttpResponse::Ok().json(json!({"action": "allow"}))
}

impl Receiver {
    /// Binds 127.0.0.1 on a free port and serves until the process ends.
    pub fn start(delay: Duration) -> anyhow::Result<Receiver> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let shared = counts.clone();
        std::thread::Builder::new()
            .name("hooks".into())
            .spawn(move || {
                let system = actix_rt::System::new();
                let served = system.block_on(async move {
                    HttpServer::new(move || {
                        App::new()
                            .app_data(web::Data::new(State {
                                counts: shared.clone(),
                                delay,
                            }))
                            .app_data(web::PayloadConfig::new(64 << 20))
                            .route("/events", web::post().to(events))
                            .route("/before", web::post().to(before))
                    })
                    .workers(1)
                    .listen(listener)?
                    .run()
                    .await
                });
                if let Err(e) = served {
                    eprintln!("hook receiver stopped: {e}");
                }
            })?;
        Ok(Receiver { addr, counts })
    }

    /// The `[webhooks]` table pointing a node at this receiver.
    pub fn config(&self, events: Option<&[String]>, before_send: bool) -> String {
        let mut text = String::from("[webhooks]\nsecret = \"bench-hooks\"\n");
        if let Some(events) = events {
            let list: Vec<String> = events.iter().map(|e| format!("\"{e}\"")).collect();
            text.push_str(&format!(
                "url = \"http://{}/events\"\nevents = [{}]\n",
                self.addr,
                list.join(", ")
            ));
        }
        if before_send {
            text.push_str(&format!(
                "before_send_url = \"http://{}/before\"\nbefore_send_timeout_ms = 1000\n",
                self.addr
            ));
        }
        text
    }

    pub fn report(&self) -> Value {
        json!({
            "batches": self.counts.batches.load(Ordering::Relaxed),
            "events": self.counts.events.load(Ordering::Relaxed),
            "before_send_calls": self.counts.before_send.load(Ordering::Relaxed),
        })
    }
}
