//! Redelivery bookkeeping for one connection: every pushed `msg` stays here until the device acknowledges
//! it (cumulatively, per conversation); pushes older than the ack timeout are handed back to be pushed again.
//! Pure state machine: it takes `now` and never touches a socket.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Pending<F> {
    seq: u64,
    frame: F,
    due: Instant,
}

/// Result of [`Tracker::track`].
#[derive(Debug, PartialEq, Eq)]
pub enum Track {
    /// Tracked; push the frame.
    Push,
    /// Already tracked (a duplicate push of the same seq); nothing to do.
    Duplicate,
    /// The device has `limit` unacknowledged pushes: it is not keeping up.
    Full,
}

#[derive(Debug)]
pub struct Tracker<K, F> {
    timeout: Duration,
    limit: usize,
    len: usize,
    convs: HashMap<K, VecDeque<Pending<F>>>,
}

impl<K: Hash + Eq + Clone, F: Clone> Tracker<K, F> {
    pub fn new(timeout: Duration, limit: usize) -> Self {
        Tracker {
            timeout,
            limit,
            len: 0,
            convs: HashMap::new(),
        }
    }

    /// Records a push of `seq` in `conv` (pushes of one conversation arrive in seq order).
    pub fn track(&mut self, conv: &K, seq: u64, frame: F, now: Instant) -> Track {
        if self.len >= self.limit {
            return Track::Full;
        }
        let queue = self.convs.entry(conv.clone()).or_default();
        if queue.back().is_some_and(|p| p.seq >= seq) {
            return Track::Duplicate;
        }
        queue.push_back(Pending {
            seq,
            frame,
            due: now + self.timeout,
        });
        self.len += 1;
        Track::Push
    }

    /// The device has everything of `conv` up to `seq`. Returns how many pushes that settled.
    pub fn ack(&mut self, conv: &K, seq: u64) -> usize {
        let Some(queue) = self.convs.get_mut(conv) else {
            return 0;
        };
        let mut settled = 0;
        while queue.front().is_some_and(|p| p.seq <= seq) {
            queue.pop_front();
            settled += 1;
        }
        if queue.is_empty() {
            self.convs.remove(conv);
        }
        self.len -= settled;
        settled
    }

    /// Frames whose ack is overdue at `now`, in seq order per conversation; each is due again a timeout later.
    pub fn due(&mut self, now: Instant) -> Vec<F> {
        let mut out = Vec::new();
        for queue in self.convs.values_mut() {
            for p in queue.iter_mut().filter(|p| p.due <= now) {
                p.due = now + self.timeout;
                out.push(p.frame.clone());
            }
        }
        out
    }

    /// The earliest time something becomes due.
    pub fn next_due(&self) -> Option<Instant> {
        self.convs
            .values()
            .filter_map(|q| q.iter().map(|p| p.due).min())
            .min()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn cumulative_ack_settles_everything_up_to_seq() {
        let t0 = Instant::now();
        let mut t: Tracker<&str, u64> = Tracker::new(T, 100);
        for seq in 1..=5 {
            assert_eq!(t.track(&"c", seq, seq, t0), Track::Push);
        }
        assert_eq!(t.track(&"d", 1, 100, t0), Track::Push);
        assert_eq!(t.ack(&"c", 3), 3);
        assert_eq!(t.len(), 3);
        assert_eq!(t.ack(&"c", 3), 0, "acks are idempotent");
        assert_eq!(t.ack(&"c", 99), 2);
        assert_eq!(t.ack(&"x", 1), 0);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn overdue_pushes_come_back_once_per_timeout() {
        let t0 = Instant::now();
        let mut t: Tracker<&str, u64> = Tracker::new(T, 100);
        t.track(&"c", 1, 1, t0);
        t.track(&"c", 2, 2, t0 + Duration::from_secs(1));
        assert!(t.due(t0 + Duration::from_secs(4)).is_empty());
        assert_eq!(t.next_due(), Some(t0 + T));
        assert_eq!(t.due(t0 + T), vec![1]);
        assert_eq!(t.due(t0 + T), Vec::<u64>::new(), "rescheduled");
        assert_eq!(t.due(t0 + Duration::from_secs(6)), vec![2]);
        t.ack(&"c", 1);
        assert_eq!(t.due(t0 + Duration::from_secs(20)), vec![2]);
    }

    #[test]
    fn duplicates_and_limit() {
        let t0 = Instant::now();
        let mut t: Tracker<&str, u64> = Tracker::new(T, 2);
        assert_eq!(t.track(&"c", 1, 1, t0), Track::Push);
        assert_eq!(t.track(&"c", 1, 1, t0), Track::Duplicate);
        assert_eq!(t.track(&"c", 2, 2, t0), Track::Push);
        assert_eq!(t.track(&"c", 3, 3, t0), Track::Full);
        t.ack(&"c", 2);
        assert!(t.is_empty());
        assert_eq!(t.track(&"c", 3, 3, t0), Track::Push);
    }
}
