//! A conversation's history kept in maps, with writes applied as the store applies them: the reference
//! the cores' unit tests (and the overlay's) read through [`History`].

use std::collections::{BTreeMap, BTreeSet};

use super::conv::{History, Write};
use crate::error::ChatResult;
use crate::ids::{Cid, UserId};

/// History kept in maps, with the writes applied as the store would.
#[derive(Default)]
pub(crate) struct Mem {
    pub(crate) cids: BTreeMap<(UserId, Cid), (u64, u64)>,
    pub(crate) msgs: BTreeMap<u64, String>,
    /// (seq, user) -> emoji held
    pub(crate) held: BTreeMap<(u64, UserId), BTreeSet<String>>,
    pub(crate) counts: BTreeMap<(u64, String), u64>,
    pub(crate) mentions: BTreeSet<(u64, String)>,
}

impl History for Mem {
    fn cid(&self, from: &UserId, cid: &Cid) -> ChatResult<Option<(u64, u64)>> {
        Ok(self.cids.get(&(from.clone(), cid.clone())).copied())
    }
    fn message(&self, seq: u64) -> ChatResult<Option<String>> {
        Ok(self.msgs.get(&seq).cloned())
    }
    fn reactions_of(&self, seq: u64, user: &UserId) -> ChatResult<Vec<String>> {
        Ok(self
            .held
            .get(&(seq, user.clone()))
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default())
    }
    fn reaction_count(&self, seq: u64, emoji: &str) -> ChatResult<u64> {
        Ok(self
            .counts
            .get(&(seq, emoji.to_string()))
            .copied()
            .unwrap_or(0))
    }
}

impl Mem {
    pub(crate) fn write(&mut self, writes: Vec<Write>) {
        for w in writes {
            match w {
                Write::Cid { from, cid, seq, ts } => {
                    self.cids.insert((from, cid), (seq, ts));
                }
                Write::Message { seq, json } => {
                    self.msgs.insert(seq, json);
                }
                Write::Reaction {
                    seq,
                    user,
                    emoji,
                    on,
                    count,
                } => {
                    let held = self.held.entry((seq, user)).or_default();
                    if on {
                        held.insert(emoji.clone());
                    } else {
                        held.remove(&emoji);
                    }
                    self.counts.insert((seq, emoji), count);
                }
                Write::Mentions { seq, mentions, on } => {
                    for m in mentions {
                        let key = (seq, m.as_str().to_string());
                        if on {
                            self.mentions.insert(key);
                        } else {
                            self.mentions.remove(&key);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}
