//! Pulls of a conversation owned by another node, batched per node.
//!
//! After a large group's `notify`, thousands of devices on this node pull the same range of the same
//! conversation at once. Instead of one call each, this node sends one [`FetchMany`] for every user waiting
//! on the same (conversation, `after`, `limit`): the first pull goes out at once, pulls that arrive while it
//! is in flight wait for its reply and then go out together in the next batch. The owner answers with the
//! messages once and the users that may not read them; each waiting pull gets its share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::actors::conversation::{Fetched, Range};
use crate::error::{ChatError, ChatResult};
use crate::ids::{ConvId, UserId};

use super::Router;

/// `sync` for many users at once (`after`, `limit` as in [`crate::actors::conversation::Fetch`]).
#[derive(actix::Message, Serialize, Deserialize)]
#[rtype(result = "ChatResult<FetchedMany>")]
pub struct FetchMany {
    pub conv: ConvId,
    pub users: Vec<UserId>,
    pub after: u64,
    pub limit: usize,
}

/// The messages once, and who may not read them.
#[derive(Debug, Serialize, Deserialize)]
pub struct FetchedMany {
    pub fetched: Fetched,
    pub refused: Vec<(UserId, ChatError)>,
}

type Waiter = (UserId, oneshot::Sender<ChatResult<Fetched>>);

#[derive(Default)]
struct Batch {
    waiting: Vec<Waiter>,
    in_flight: bool,
}

type Key = (ConvId, u64, usize);

/// The batches of one node's remote pulls.
#[derive(Default, Clone)]
pub struct PullBatches {
    batches: Arc<Mutex<HashMap<Key, Batch>>>,
}

impl PullBatches {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Batch>> {
        self.batches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `user`'s pull of `conv` after `after`; sends a batch now unless one is in flight.
    pub fn pull(
        &self,
        router: &Router,
        conv: &ConvId,
        user: UserId,
        after: u64,
        limit: usize,
    ) -> oneshot::Receiver<ChatResult<Fetched>> {
        let (tx, rx) = oneshot::channel();
        let key = (conv.clone(), after, limit);
        let start = {
            let mut batches = self.lock();
            let batch = batches.entry(key.clone()).or_default();
            batch.waiting.push((user, tx));
            !std::mem::replace(&mut batch.in_flight, true)
        };
        if start {
            self.send(router.clone(), key);
        }
        rx
    }

    /// Sends everything waiting under `key` as one call; when it is answered, sends what queued meanwhile.
    fn send(&self, router: Router, key: Key) {
        let waiting = match self.lock().get_mut(&key) {
            Some(batch) => std::mem::take(&mut batch.waiting),
            None => return,
        };
        let (conv, after, limit) = key.clone();
        let msg = FetchMany {
            conv: conv.clone(),
            users: waiting.iter().map(|(u, _)| u.clone()).collect(),
            after,
            limit,
        };
        let reply = router.call_conv_node(&conv, msg);
        let this = self.clone();
        actix_rt::spawn(async move {
            let result = reply.await.and_then(|r| r);
            answer(waiting, result);
            let again = {
                let mut batches = this.lock();
                match batches.get_mut(&key) {
                    Some(batch) if !batch.waiting.is_empty() => true,
                    _ => {
                        batches.remove(&key);
                        false
                    }
                }
            };
            if again {
                this.send(router, key);
            }
        });
    }
}

fn answer(waiting: Vec<Waiter>, result: ChatResult<FetchedMany>) {
    match result {
        Ok(many) => {
            let refused: HashMap<UserId, ChatError> = many.refused.into_iter().collect();
            for (user, tx) in waiting {
                let share = match refused.get(&user) {
                    Some(e) => Err(e.clone()),
                    None => Ok(Fetched {
                        msgs: many.fetched.msgs.clone(),
                        last_seq: many.fetched.last_seq,
                    }),
                };
                let _ = tx.send(share);
            }
        }
        Err(e) => {
            for (_, tx) in waiting {
                let _ = tx.send(Err(e.clone()));
            }
        }
    }
}

/// Serves a [`FetchMany`] on the node that owns the conversation: from the group's pull view when it covers
/// the range, else by the conversation's actor (one read of the store for the whole batch).
pub async fn serve(router: Router, msg: FetchMany) -> ChatResult<FetchedMany> {
    if let Some(many) = router
        .pull_view(&msg.conv)
        .and_then(|v| v.serve_many(&msg.users, Range::After(msg.after), msg.limit))
    {
        return Ok(many);
    }
    let conv = msg.conv.clone();
    router.ask_conv(&conv, msg).await?
}
