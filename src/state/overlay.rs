//! [`Overlay`]: what a partition leader's actor has proposed but not yet seen applied, layered over the
//! stored [`History`].
//!
//! With replication the leader's actor applies a command to its in-memory state at once (it answers what
//! the core refuses without a round trip and assigns seqs in order) and proposes it; the store changes only
//! when the committed entry is applied. Until then the actor's next commands must see the proposed writes:
//! a `cid` resent while its first copy is in flight is a duplicate, and a recall, edit or reaction may name a
//! message that is not stored yet. The overlay answers those reads from the proposed writes, newest first,
//! and falls back to the store; entries leave it once their proposal is applied. Replicas apply the same
//! commands against the store alone, which by then holds everything the overlay held, so both decide alike
//! (`overlay_reads_like_the_store_would` checks that the two views agree).

use std::collections::VecDeque;

use super::conv::{History, Write};
use crate::error::ChatResult;
use crate::ids::{Cid, UserId};

/// Writes of proposals in flight, by proposal epoch (ascending).
#[derive(Debug, Default)]
pub struct Overlay {
    pending: VecDeque<(u64, Vec<Write>)>,
}

impl Overlay {
    /// The writes of the proposal numbered `epoch` (epochs only grow).
    pub fn push(&mut self, epoch: u64, writes: Vec<Write>) {
        if !writes.is_empty() {
            self.pending.push_back((epoch, writes));
        }
    }

    /// Proposals up to `epoch` are applied to the store: their writes are read from there now.
    pub fn applied(&mut self, epoch: u64) {
        while self.pending.front().is_some_and(|(e, _)| *e <= epoch) {
            self.pending.pop_front();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn clear(&mut self) {
        self.pending.clear();
    }

    /// Every write in flight, newest first.
    fn newest_first(&self) -> impl Iterator<Item = &Write> {
        self.pending.iter().rev().flat_map(|(_, w)| w.iter().rev())
    }

    /// The store's history seen through this overlay.
    pub fn over<'a, H: History>(&'a self, stored: &'a H) -> Layered<'a, H> {
        Layered {
            overlay: self,
            stored,
        }
    }
}

/// A [`History`] reading the overlay first, then the store.
pub struct Layered<'a, H> {
    overlay: &'a Overlay,
    stored: &'a H,
}

impl<H: History> History for Layered<'_, H> {
    fn cid(&self, from: &UserId, cid: &Cid) -> ChatResult<Option<(u64, u64)>> {
        for w in self.overlay.newest_first() {
            if let Write::Cid {
                from: f,
                cid: c,
                seq,
                ts,
            } = w
            {
                if f == from && c == cid {
                    return Ok(Some((*seq, *ts)));
                }
            }
        }
        self.stored.cid(from, cid)
    }

    fn message(&self, seq: u64) -> ChatResult<Option<String>> {
        for w in self.overlay.newest_first() {
            if let Write::Message { seq: s, json } = w {
                if *s == seq {
                    return Ok(Some(json.clone()));
                }
            }
        }
        self.stored.message(seq)
    }

    fn reactions_of(&self, seq: u64, user: &UserId) -> ChatResult<Vec<String>> {
        let mut held = self.stored.reactions_of(seq, user)?;
        // oldest first: each write sets or clears one emoji
        for (_, writes) in &self.overlay.pending {
            for w in writes {
                if let Write::Reaction {
                    seq: s,
                    user: u,
                    emoji,
                    on,
                    ..
                } = w
                {
                    if *s == seq && u == user {
                        held.retain(|e| e != emoji);
                        if *on {
                            held.push(emoji.clone());
                        }
                    }
                }
            }
        }
        // in the store's (key) order
        held.sort();
        Ok(held)
    }

    fn reaction_count(&self, seq: u64, emoji: &str) -> ChatResult<u64> {
        for w in self.overlay.newest_first() {
            if let Write::Reaction {
                seq: s,
                emoji: e,
                count,
                ..
            } = w
            {
                if *s == seq && e == emoji {
                    return Ok(*count);
                }
            }
        }
        self.stored.reaction_count(seq, emoji)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::mem::Mem;
    use super::*;

    fn user(s: &str) -> UserId {
        UserId::parse(s).expect("user")
    }

    fn cid(s: &str) -> Cid {
        Cid::parse(s).expect("cid")
    }

    /// Random writes, some applied (moved to the store) at random points: the overlay over the store must
    /// read exactly like a store that got every write.
    #[test]
    fn overlay_reads_like_the_store_would() {
        let users = [user("ann"), user("bob")];
        let emojis = ["a", "b", "c"];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _round in 0..200 {
            let mut stored = Mem::default();
            let mut everything = Mem::default();
            let mut overlay = Overlay::default();
            let mut in_flight: VecDeque<(u64, Vec<Write>)> = VecDeque::new();
            let mut counts: HashMap<(u64, String), u64> = HashMap::new();
            for epoch in 1..40u64 {
                let mut writes = Vec::new();
                for _ in 0..=next(3) {
                    let seq = 1 + next(4);
                    let u = users[usize::try_from(next(2)).unwrap_or(0)].clone();
                    match next(3) {
                        0 => writes.push(Write::Cid {
                            from: u,
                            cid: cid(&format!("c{}", next(5))),
                            seq,
                            ts: epoch,
                        }),
                        1 => writes.push(Write::Message {
                            seq,
                            json: format!("m{epoch}"),
                        }),
                        _ => {
                            let emoji = emojis[usize::try_from(next(3)).unwrap_or(0)].to_owned();
                            let on = next(2) == 0;
                            let count = counts.entry((seq, emoji.clone())).or_insert(0);
                            *count = if on {
                                *count + 1
                            } else {
                                count.saturating_sub(1)
                            };
                            writes.push(Write::Reaction {
                                seq,
                                user: u,
                                emoji,
                                on,
                                count: *count,
                            });
                        }
                    }
                }
                everything.write(writes.clone());
                overlay.push(epoch, writes.clone());
                in_flight.push_back((epoch, writes));
                if next(3) == 0 {
                    // the oldest proposals are applied
                    let upto = epoch.saturating_sub(next(4));
                    while in_flight.front().is_some_and(|(e, _)| *e <= upto) {
                        if let Some((_, w)) = in_flight.pop_front() {
                            stored.write(w);
                        }
                    }
                    overlay.applied(upto);
                }
                let layered = overlay.over(&stored);
                for seq in 1..=4 {
                    assert_eq!(layered.message(seq).ok(), everything.message(seq).ok());
                    for u in &users {
                        assert_eq!(
                            layered.reactions_of(seq, u).ok(),
                            everything.reactions_of(seq, u).ok()
                        );
                        for k in 0..5 {
                            let c = cid(&format!("c{k}"));
                            assert_eq!(layered.cid(u, &c).ok(), everything.cid(u, &c).ok());
                        }
                    }
                    for e in emojis {
                        assert_eq!(
                            layered.reaction_count(seq, e).ok(),
                            everything.reaction_count(seq, e).ok()
                        );
                    }
                }
            }
        }
    }
}
