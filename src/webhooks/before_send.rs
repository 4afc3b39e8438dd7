//! The before-send hook: with `webhooks.before_send_url` set, each new message (`send` and
//! `POST /v1/messages`) is first POSTed there as `{"conv","from","cid","body"}` (signed like the events),
//! and the answer decides: `allow`, `reject` (the sender gets `forbidden` with the reason) or `replace`
//! (that body is stored instead). No valid answer within `before_send_timeout_ms`: `before_send_failure`
//! decides (`reject` answers `unavailable`).
//!
//! The hook is asked from the request's own future (a session's or an HTTP handler's), never on a
//! conversation's actor, so a slow hook delays only the messages waiting for it. A `cid` the conversation
//! already accepted is answered from its dedupe record without asking (the conversation is asked first,
//! [`LookupCid`]); two copies of a new `cid` in flight at once may both be asked, and the conversation
//! stores one.

use std::future::Future;
use std::time::{Duration, Instant};

use actix::dev::ToEnvelope;
use actix::{Actor, Handler};
use futures_util::future::Either;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::actors::conversation::{ConvActor, Post, Posted};
use crate::actors::server_api::{LookupCid, ServerPost};
use crate::cluster::remote::Remote;
use crate::cluster::Router;
use crate::config::WebhooksConfig;
use crate::error::{ChatError, ChatResult};
use crate::ids::{Cid, ConvId, UserId};

/// A message the hook screens: who sends which `cid`, and the body it may replace.
pub trait Screened {
    fn sender(&self) -> &UserId;
    fn cid(&self) -> &Cid;
    fn body(&self) -> &RawValue;
    fn body_mut(&mut self) -> &mut Box<RawValue>;
}

impl Screened for Post {
    fn sender(&self) -> &UserId {
        &self.from
    }
    fn cid(&self) -> &Cid {
        &self.cid
    }
    fn body(&self) -> &RawValue {
        &self.body
    }
    fn body_mut(&mut self) -> &mut Box<RawValue> {
        &mut self.body
    }
}

impl Screened for ServerPost {
    fn sender(&self) -> &UserId {
        &self.from
    }
    fn cid(&self) -> &Cid {
        &self.cid
    }
    fn body(&self) -> &RawValue {
        &self.body
    }
    fn body_mut(&mut self) -> &mut Box<RawValue> {
        &mut self.body
    }
}

/// What the hook is asked.
#[derive(Serialize)]
struct Question<'a> {
    conv: &'a ConvId,
    from: &'a UserId,
    cid: &'a Cid,
    body: &'a RawValue,
}

/// A valid answer.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Answer {
    Allow,
    Reject {
        #[serde(default)]
        reason: String,
    },
    Replace {
        body: serde_json::Map<String, serde_json::Value>,
    },
}

/// What happens to the message.
#[derive(Debug)]
pub enum Verdict {
    /// Store it as sent.
    Keep,
    /// Store this body instead.
    Replace(Box<RawValue>),
}

/// Decides from the hook's answer (`Err`: none, or not a valid one; the reason is logged).
pub fn decide(
    answer: Result<Answer, String>,
    config: &WebhooksConfig,
    max_body_bytes: usize,
) -> ChatResult<Verdict> {
    let failed = |why: String| {
        tracing::warn!(reason = %why, policy = %config.before_send_failure, "before-send hook failed");
        if config.before_send_failure == "reject" {
            Err(ChatError::unavailable(
                "the before-send hook did not answer; try again",
            ))
        } else {
            Ok(Verdict::Keep)
        }
    };
    match answer {
        Ok(Answer::Allow) => Ok(Verdict::Keep),
        Ok(Answer::Reject { reason }) => {
            let reason = if reason.is_empty() {
                "rejected by the before-send hook".to_owned()
            } else {
                reason
            };
            Err(ChatError::forbidden(reason))
        }
        Ok(Answer::Replace { body }) => {
            let json = serde_json::Value::Object(body).to_string();
            if json.len() > max_body_bytes {
                return failed(format!("replacement body is over {max_body_bytes} bytes"));
            }
            match RawValue::from_string(json) {
                Ok(raw) => Ok(Verdict::Replace(raw)),
                Err(e) => failed(e.to_string()),
            }
        }
        Err(why) => failed(why),
    }
}

/// Asks the hook about `msg` (a new `cid`) and applies its verdict to `msg`'s body.
async fn screen<M: Screened>(router: &Router, conv: &ConvId, msg: &mut M) -> ChatResult<()> {
    let config = &router.config().webhooks;
    let question = Question {
        conv,
        from: msg.sender(),
        cid: msg.cid(),
        body: msg.body(),
    };
    let body = serde_json::to_vec(&question).map_err(|e| ChatError::internal(e.to_string()))?;
    let timeout = Duration::from_millis(config.before_send_timeout_ms);
    let started = Instant::now();
    let answer = match super::post(&config.before_send_url, &config.secret, body, timeout).await {
        Ok((status, bytes)) if (200..300).contains(&status) => {
            serde_json::from_slice::<Answer>(&bytes).map_err(|e| format!("invalid answer: {e}"))
        }
        Ok((status, _)) => Err(format!("status {status}")),
        Err(e) => Err(e),
    };
    let metrics = router.metrics();
    metrics
        .before_send_seconds
        .observe(started.elapsed().as_secs_f64());
    metrics.before_send(match &answer {
        Ok(Answer::Allow) => "allow",
        Ok(Answer::Reject { .. }) => "reject",
        Ok(Answer::Replace { .. }) => "replace",
        Err(_) => "failed",
    });
    match decide(answer, config, router.config().limits.max_body_bytes)? {
        Verdict::Keep => {}
        Verdict::Replace(body) => *msg.body_mut() = body,
    }
    Ok(())
}

/// The first answer to a `cid` the conversation accepted before, if it did.
async fn lookup(
    router: &Router,
    conv: &ConvId,
    from: &UserId,
    cid: &Cid,
) -> ChatResult<Option<Posted>> {
    let msg = LookupCid {
        from: from.clone(),
        cid: cid.clone(),
    };
    router.ask_conv(conv, msg).await?
}

/// Posts `msg` to `conv` through the router, asking the before-send hook first when one is configured and
/// the `cid` is new. Without a hook the message is enqueued at once (a connection's sends keep their order);
/// with one, each waits for its own answer.
pub fn post<M>(
    router: &Router,
    conv: &ConvId,
    mut msg: M,
) -> impl Future<Output = ChatResult<ChatResult<Posted>>> + 'static
where
    M: Screened + Remote<Result = ChatResult<Posted>>,
    ConvActor: Handler<M>,
    <ConvActor as Actor>::Context: ToEnvelope<ConvActor, M>,
{
    if router.config().webhooks.before_send_url.is_empty() {
        return Either::Left(router.ask_conv(conv, msg));
    }
    let router = router.clone();
    let conv = conv.clone();
    Either::Right(async move {
        if lookup(&router, &conv, msg.sender(), msg.cid())
            .await?
            .is_none()
        {
            if let Err(e) = screen(&router, &conv, &mut msg).await {
                return Ok(Err(e));
            }
        }
        router.ask_conv(&conv, msg).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn config(failure: &str) -> WebhooksConfig {
        WebhooksConfig {
            before_send_url: "http://127.0.0.1:9/hook".into(),
            before_send_failure: failure.into(),
            ..WebhooksConfig::default()
        }
    }

    fn parse(text: &str) -> Result<Answer, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn answers_decide_and_failures_follow_the_policy() {
        let allow = config("allow");
        let reject = config("reject");
        let keep = |v: ChatResult<Verdict>| matches!(v, Ok(Verdict::Keep));
        assert!(keep(decide(parse(r#"{"action":"allow"}"#), &reject, 100)));
        let e = decide(parse(r#"{"action":"reject","reason":"spam"}"#), &allow, 100)
            .expect_err("rejected");
        assert_eq!((e.code, e.message.as_str()), (ErrorCode::Forbidden, "spam"));
        let replaced = decide(
            parse(r#"{"action":"replace","body":{"text":"***"}}"#),
            &allow,
            100,
        );
        match replaced {
            Ok(Verdict::Replace(body)) => assert_eq!(body.get(), r#"{"text":"***"}"#),
            other => panic!("{other:?}"),
        }
        for bad in [
            r#"{"action":"maybe"}"#,
            r#"{"action":"replace","body":"x"}"#,
            "nope",
        ] {
            assert!(keep(decide(parse(bad), &allow, 100)), "{bad}");
            let e = decide(parse(bad), &reject, 100).expect_err("policy reject");
            assert_eq!(e.code, ErrorCode::Unavailable, "{bad}");
        }
        let big = r#"{"action":"replace","body":{"text":"0123456789"}}"#;
        assert!(
            keep(decide(parse(big), &allow, 10)),
            "too large a replacement"
        );
        assert!(keep(decide(Err("timeout".into()), &allow, 100)));
    }
}
