//! `PullView`: what a group's pulls are served from without going through its actor.
//!
//! After a `notify`, every online member of a large group pulls at once: thousands of `sync` requests for
//! the same few messages. The group's conversation actor keeps a `PullView` (its members, its published
//! seq and its last [`RECENT`] published messages, already validated JSON) and registers it with the
//! router; a `sync` for a range the view covers is answered on the requesting session's own thread (or the
//! peer link's, for a session on another node), in parallel, while the actor goes on accepting messages.
//! Anything the view does not cover (older messages, `before`, a conversation whose actor is not running)
//! goes to the actor as before. The actor updates the view in the same handler that changes its own state,
//! so the view never shows a message before the actor would (only published, durable ones) nor to a member
//! the actor has already removed.

use std::collections::{HashSet, VecDeque};
use std::sync::{PoisonError, RwLock};

use serde_json::value::RawValue;

use crate::actors::conversation::{Fetched, Range};
use crate::cluster::pulls::FetchedMany;
use crate::error::{ChatError, ChatResult};
use crate::ids::{ConvId, UserId};

/// Published messages a view keeps.
pub const RECENT: usize = 256;

pub struct PullView {
    conv: ConvId,
    inner: RwLock<Inner>,
}

struct Inner {
    members: HashSet<UserId>,
    published_seq: u64,
    recent: VecDeque<(u64, Box<RawValue>)>,
}

impl PullView {
    pub fn new(conv: ConvId, members: HashSet<UserId>, published_seq: u64) -> PullView {
        PullView {
            conv,
            inner: RwLock::new(Inner {
                members,
                published_seq,
                recent: VecDeque::new(),
            }),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Message `seq` is published (its `sent` went out); `raw` is its JSON (None: pulls of it go to the store).
    pub fn publish(&self, seq: u64, raw: Option<Box<RawValue>>) {
        let mut inner = self.write();
        inner.published_seq = inner.published_seq.max(seq);
        match raw {
            Some(raw) => inner.recent.push_back((seq, raw)),
            // a gap: the window can no longer answer for what came before
            None => inner.recent.clear(),
        }
        if inner.recent.len() > RECENT {
            inner.recent.pop_front();
        }
    }

    /// Does the window hold message `seq` (so a rewrite of it must reach the view)?
    pub fn covers(&self, seq: u64) -> bool {
        self.read().recent.iter().any(|(s, _)| *s == seq)
    }

    /// Message `seq` was rewritten (recalled, edited, reacted to).
    pub fn replace(&self, seq: u64, raw: Box<RawValue>) {
        if let Some(entry) = self.write().recent.iter_mut().find(|(s, _)| *s == seq) {
            entry.1 = raw;
        }
    }

    /// The members are now `members`.
    pub fn set_members(&self, members: HashSet<UserId>) {
        self.write().members = members;
    }

    /// `members` joined (`add`) or left.
    pub fn change_members(&self, members: &[UserId], add: bool) {
        let mut inner = self.write();
        for m in members {
            if add {
                inner.members.insert(m.clone());
            } else {
                inner.members.remove(m);
            }
        }
    }

    /// Answers a pull if the view covers it: `None` means ask the actor (or the store).
    pub fn serve(&self, user: &UserId, range: Range, limit: usize) -> Option<ChatResult<Fetched>> {
        let inner = self.read();
        if !inner.members.contains(user) {
            return Some(Err(self.not_member()));
        }
        inner.window(range, limit).map(Ok)
    }

    /// [`PullView::serve`] for many users at once: the messages once, and the users that are not members
    /// (all of it under one look at the view).
    pub fn serve_many(&self, users: &[UserId], range: Range, limit: usize) -> Option<FetchedMany> {
        let inner = self.read();
        let (members, outsiders): (Vec<&UserId>, Vec<&UserId>) =
            users.iter().partition(|u| inner.members.contains(*u));
        let fetched = if members.is_empty() {
            Fetched {
                msgs: Vec::new(),
                last_seq: 0,
            }
        } else {
            inner.window(range, limit)?
        };
        let refused = outsiders
            .into_iter()
            .map(|u| (u.clone(), self.not_member()))
            .collect();
        Some(FetchedMany { fetched, refused })
    }

    fn not_member(&self) -> ChatError {
        ChatError::forbidden(format!("not a member of {}", self.conv))
    }
}

impl Inner {
    /// The published messages after `range`'s start, up to `limit`, if the window covers them.
    fn window(&self, range: Range, limit: usize) -> Option<Fetched> {
        let Range::After(after) = range else {
            return None;
        };
        let published = self.published_seq;
        let msgs = if after >= published {
            Vec::new()
        } else {
            match self.recent.front() {
                Some((first, _)) if *first <= after + 1 => self
                    .recent
                    .iter()
                    .filter(|(seq, _)| *seq > after)
                    .take(limit)
                    .map(|(_, raw)| raw.clone())
                    .collect(),
                _ => return None,
            }
        };
        Some(Fetched {
            msgs,
            last_seq: published,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(u: &str) -> UserId {
        UserId::parse(u).unwrap()
    }

    fn raw(seq: u64) -> Option<Box<RawValue>> {
        RawValue::from_string(format!("{{\"seq\":{seq}}}")).ok()
    }

    fn seqs(f: &Fetched) -> Vec<String> {
        f.msgs.iter().map(|m| m.get().to_string()).collect()
    }

    fn view() -> PullView {
        let conv = ConvId::parse("g:t").unwrap();
        PullView::new(conv, [user("a"), user("b")].into_iter().collect(), 0)
    }

    #[test]
    fn serves_members_from_the_window_and_refuses_others() {
        let v = view();
        for seq in 1..=3 {
            v.publish(seq, raw(seq));
        }
        let f = v.serve(&user("a"), Range::After(1), 10).unwrap().unwrap();
        assert_eq!(seqs(&f), vec!["{\"seq\":2}", "{\"seq\":3}"]);
        assert_eq!(f.last_seq, 3);
        let f = v.serve(&user("a"), Range::After(0), 2).unwrap().unwrap();
        assert_eq!(f.msgs.len(), 2, "limit applies");
        let f = v.serve(&user("b"), Range::After(3), 10).unwrap().unwrap();
        assert!(f.msgs.is_empty());
        let err = v
            .serve(&user("c"), Range::After(0), 10)
            .unwrap()
            .unwrap_err();
        assert_eq!(err.code, crate::error::ErrorCode::Forbidden);
        v.change_members(&[user("b")], false);
        assert!(v.serve(&user("b"), Range::After(0), 10).unwrap().is_err());
        let many = v
            .serve_many(&[user("b"), user("a"), user("c")], Range::After(1), 10)
            .unwrap();
        assert_eq!(seqs(&many.fetched), vec!["{\"seq\":2}", "{\"seq\":3}"]);
        let refused: Vec<&str> = many.refused.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(refused, vec!["b", "c"]);
    }

    #[test]
    fn leaves_what_it_does_not_cover_to_the_actor() {
        let v = view();
        assert!(v.serve(&user("a"), Range::Before(5), 10).is_none());
        for seq in 1..=(RECENT as u64 + 10) {
            v.publish(seq, raw(seq));
        }
        assert!(
            v.serve(&user("a"), Range::After(0), 10).is_none(),
            "older than the window"
        );
        assert!(v.serve(&user("a"), Range::After(20), 10).is_some());
        v.publish(RECENT as u64 + 11, None);
        assert!(
            v.serve(&user("a"), Range::After(RECENT as u64 + 9), 10)
                .is_none(),
            "after a gap"
        );
    }
}
