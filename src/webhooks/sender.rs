//! The node's webhook sender: posts the outbox to `webhooks.url` as `{"events":[...]}`, at most
//! [`BATCH`] events a request, lowest outbox id first.
//!
//! A batch is sent only once the messages its events come from are durable (it waits for a flush), and
//! removed only after a 2xx; anything else, or no answer within [`ANSWER_TIMEOUT`], and the same events are
//! sent again after a backoff ([`retry_delay`]: 1 s doubling to 60 s, with jitter), for as long as it takes.
//! Events of one conversation are written in seq order by its actor and read in id order, so they arrive in
//! seq order (a batch is retried before anything after it). An `offline_message` for a member who has the
//! conversation muted when it is sent is dropped instead (the mute lives with the member's user actor).

use std::collections::HashMap;
use std::time::Duration;

use crate::actors::now_ms;
use crate::actors::user::GetConvSettings;
use crate::cluster::Router;
use crate::ids::{ConvId, UserId};
use crate::store::outbox::OutboxEntry;

/// Most events in one request (the contract's limit).
pub const BATCH: usize = 100;
/// How long the receiver has to answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The first retry's delay, doubled after each failure up to [`MAX_DELAY`].
pub const FIRST_DELAY: Duration = Duration::from_secs(1);
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// How often an idle sender looks at the outbox even without being woken (events of other writers).
const IDLE_POLL: Duration = Duration::from_secs(1);

/// The wait before retry number `failures` (1 for the first): `FIRST_DELAY * 2^(failures-1)`, capped at
/// `MAX_DELAY`, plus up to 10 % jitter (`random` uniform in `[0, 1)`), taken off instead at the cap, so
/// nodes that failed together do not retry in lockstep and no wait exceeds `MAX_DELAY`.
pub fn retry_delay(failures: u32, random: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let base = FIRST_DELAY.saturating_mul(1u32 << exp).min(MAX_DELAY);
    let jitter = base.mul_f64(0.1 * random.clamp(0.0, 1.0));
    if base + jitter <= MAX_DELAY {
        base + jitter
    } else {
        MAX_DELAY.saturating_sub(jitter)
    }
}

/// The request body for `batch`: the stored events as they are.
pub fn body(batch: &[OutboxEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + batch.iter().map(|e| e.json.len() + 1).sum::<usize>());
    out.extend_from_slice(b"{\"events\":[");
    for (i, e) in batch.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e.json.as_bytes());
    }
    out.extend_from_slice(b"]}");
    out
}

/// Delivers this node's outbox until the node stops (spawned by [`crate::Node::run`]).
pub async fn deliver_forever(router: Router) {
    let config = router.config().webhooks.clone();
    if config.url.is_empty() {
        return;
    }
    let store = router.store().clone();
    let metrics = router.metrics();
    let mut failures: u32 = 0;
    loop {
        let batch = match store.outbox_batch(BATCH) {
            Ok(batch) => batch,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the webhook outbox");
                tokio::time::sleep(FIRST_DELAY).await;
                continue;
            }
        };
        if batch.is_empty() {
            let _ = tokio::time::timeout(IDLE_POLL, store.outbox_added_wait()).await;
            continue;
        }
        // never announce a message that a crash could still take back
        store.flusher().flushed().await;
        let batch = match drop_muted(&router, batch).await {
            Some(batch) => batch,
            None => continue,
        };
        let started = std::time::Instant::now();
        let result = super::post(&config.url, &config.secret, body(&batch), ANSWER_TIMEOUT).await;
        metrics
            .webhook_request_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok((status, _)) if (200..300).contains(&status) => {
                failures = 0;
                metrics.webhook_requests_ok.inc();
                metrics
                    .webhook_events_delivered
                    .inc_by(u64::try_from(batch.len()).unwrap_or(0));
                let ids: Vec<u64> = batch.iter().map(|e| e.id).collect();
                if let Err(e) = store.outbox_remove(&ids) {
                    tracing::error!(error = %e, "cannot remove delivered webhook events");
                }
            }
            failed => {
                failures = failures.saturating_add(1);
                metrics.webhook_requests_failed.inc();
                let delay = retry_delay(failures, rand::random());
                match failed {
                    Ok((status, _)) => {
                        tracing::warn!(status, events = batch.len(), retry_in = ?delay, "webhook receiver refused a batch")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, events = batch.len(), retry_in = ?delay, "webhook receiver unreachable")
                    }
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The `offline_message` event of a batch, as far as muting goes.
#[derive(serde::Deserialize)]
struct OfflineEvent {
    #[serde(rename = "type")]
    kind: String,
    user: Option<UserId>,
    conv: Option<ConvId>,
}

/// The batch without the `offline_message` events of members who have the conversation muted now (asked
/// of each member's user actor, wherever it runs; one question per member and conversation). Those are
/// removed from the outbox. `None` when nothing is left to send (or the outbox cannot be written).
async fn drop_muted(router: &Router, batch: Vec<OutboxEntry>) -> Option<Vec<OutboxEntry>> {
    let now = now_ms();
    let mut muted: HashMap<(UserId, ConvId), bool> = HashMap::new();
    let mut keep = Vec::with_capacity(batch.len());
    let mut dropped = Vec::new();
    for entry in batch {
        let offline = serde_json::from_str::<OfflineEvent>(&entry.json)
            .ok()
            .filter(|e| e.kind == "offline_message")
            .and_then(|e| Some((e.user?, e.conv?)));
        let Some(key) = offline else {
            keep.push(entry);
            continue;
        };
        let is_muted = match muted.get(&key) {
            Some(m) => *m,
            None => {
                // a member whose actor cannot answer (its node down) is not muted: the event is kept
                let settings = router
                    .ask_user(
                        &key.0,
                        GetConvSettings {
                            conv: key.1.clone(),
                        },
                    )
                    .await;
                let m = settings.is_ok_and(|s| s.is_muted(now));
                muted.insert(key, m);
                m
            }
        };
        if is_muted {
            dropped.push(entry.id);
        } else {
            keep.push(entry);
        }
    }
    if !dropped.is_empty() {
        if let Err(e) = router.store().outbox_remove(&dropped) {
            tracing::error!(error = %e, "cannot remove muted webhook events");
            return None;
        }
    }
    (!keep.is_empty()).then_some(keep)
}

/// Sets the outbox gauges from the store (at every scrape of `/metrics`, so they are never stale while
/// the sender sleeps in a backoff).
pub fn observe_outbox(router: &Router) {
    let store = router.store();
    let metrics = router.metrics();
    metrics
        .webhook_outbox_events
        .set(i64::try_from(store.outbox_depth()).unwrap_or(i64::MAX));
    let age = match store.outbox_oldest_ms() {
        Ok(Some(t)) => now_ms().saturating_sub(t) as f64 / 1000.0,
        Ok(None) => 0.0,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the webhook outbox");
            return;
        }
    };
    metrics.webhook_outbox_age_seconds.set(age);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_start_at_one_second_double_and_stop_at_a_minute() {
        let low: Vec<u64> = (1..=8).map(|n| retry_delay(n, 0.0).as_secs()).collect();
        assert_eq!(low, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(
            retry_delay(1, 0.999).as_millis(),
            1099,
            "jitter above the base"
        );
        assert_eq!(
            retry_delay(50, 0.5),
            Duration::from_secs(57),
            "jitter below the cap"
        );
        assert!(retry_delay(u32::MAX, 0.99) <= MAX_DELAY);
    }

    #[test]
    fn a_body_carries_the_stored_events_as_they_are() {
        let e = |id, json: &str| OutboxEntry {
            id,
            enqueued_ms: 0,
            json: json.into(),
        };
        let b = body(&[e(1, r#"{"id":"a"}"#), e(2, r#"{"id":"b"}"#)]);
        assert_eq!(b, br#"{"events":[{"id":"a"},{"id":"b"}]}"#.to_vec());
        let parsed: serde_json::Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(parsed["events"][1]["id"], "b");
    }
}
