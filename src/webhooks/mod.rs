//! Webhooks (PROTOCOL.md, "Webhooks"): events for the product's backend, and the before-send hook.
//!
//! - [`events`]: which events an accepted message causes (`message`, `offline_message`) and presence causes
//!   (`user_online`, `user_offline`). A message's events are written to the outbox in the same sled batch as
//!   the message, before its `sent` (see [`crate::store::outbox`]).
//! - [`sender`]: one task per node posts the outbox in batches of at most 100, signed, with exponential
//!   backoff and jitter, and removes events only after a 2xx: at least once, in seq order per conversation.
//! - [`before_send`]: asks `before_send_url` about each new `cid` (never a dedupe hit) off the actor
//!   threads, with a timeout and the configured failure policy.
//!
//! Every request is signed: `X-Rookery-Signature: sha256=HEX`, the HMAC-SHA256 of the body with
//! `webhooks.secret`. One HTTP client per process keeps connections to the receivers open.

pub mod before_send;
pub mod events;
pub mod sender;

use std::sync::OnceLock;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header carrying a request's signature.
pub const SIGNATURE_HEADER: &str = "X-Rookery-Signature";

/// `sha256=HEX`: the HMAC-SHA256 of `body` keyed by `secret`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    // an HMAC takes a key of any length
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("hmac accepts any key length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The process's HTTP client for webhooks (a pool of kept-alive connections per receiver).
pub(crate) fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(90))
            // every connection opened under load is kept for the next request: a smaller idle pool closes
            // and reopens connections once more requests are in flight than it keeps (measured: at 5,000
            // hook calls a second the churn took more CPU than the requests)
            .pool_max_idle_per_host(MAX_IN_FLIGHT)
            .tcp_nodelay(true)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new())
    })
}

/// Requests in flight to the receivers at once, per process; more wait for a turn (within their timeout).
const MAX_IN_FLIGHT: usize = 256;

fn in_flight() -> &'static tokio::sync::Semaphore {
    static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_IN_FLIGHT);
    &SLOTS
}

/// POSTs `body` (JSON) to `url`, signed with `secret`, and waits at most `timeout` for the whole answer
/// (a turn among the [`MAX_IN_FLIGHT`] requests included, so a receiver that falls behind makes requests
/// time out instead of piling up connections).
pub(crate) async fn post(
    url: &str,
    secret: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(u16, bytes::Bytes), String> {
    let signature = sign(secret, &body);
    let request = client()
        .post(url)
        .header("Content-Type", "application/json")
        .header(SIGNATURE_HEADER, signature)
        .body(body)
        .timeout(timeout)
        .send();
    let exchange = async {
        let _turn = in_flight()
            .acquire()
            .await
            .map_err(|_| "webhook client closed".to_string())?;
        let response = request.await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| e.to_string())?;
        Ok((status, bytes))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
