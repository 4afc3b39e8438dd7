//! Pure state machines for rate limits and deadlines. They take `now` instead of reading a clock, so they are
//! unit-tested without actors or sleeps.

use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens a second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_s: u32, burst: u32, now: Instant) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate_per_s),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A deadline pushed back by activity (heartbeats: silence for `timeout` closes the connection).
#[derive(Debug, Clone)]
pub struct Deadline {
    timeout: Duration,
    last_activity: Instant,
}

impl Deadline {
    pub fn new(timeout: Duration, now: Instant) -> Deadline {
        Deadline {
            timeout,
            last_activity: now,
        }
    }
    pub fn touch(&mut self, now: Instant) {
        self.last_activity = now;
    }
    pub fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_activity) >= self.timeout
    }
}

/// At most one event per key per window (coalesced `notify`): `allow` says whether to send now; otherwise
/// the caller should send once the window ends (`pending` remembers that one is owed).
#[derive(Debug, Clone)]
pub struct Window {
    window: Duration,
    last_sent: Option<Instant>,
    pub pending: bool,
}

impl Window {
    pub fn new(window: Duration) -> Window {
        Window {
            window,
            last_sent: None,
            pending: false,
        }
    }

    /// True when an event may be sent at `now` (and records it); false marks one as owed.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.last_sent {
            Some(t) if now.saturating_duration_since(t) < self.window => {
                self.pending = true;
                false
            }
            _ => {
                self.last_sent = Some(now);
                self.pending = false;
                true
            }
        }
    }

    /// When the owed event may go out.
    pub fn next_allowed(&self) -> Option<Instant> {
        self.last_sent.map(|t| t + self.window)
    }
}

/// Spreads periodic timers: `base` plus up to `fraction` of it, from `seed` (no RNG needed for tests).
pub fn jittered(base: Duration, fraction: f64, seed: u64) -> Duration {
    let unit = (seed % 1000) as f64 / 1000.0;
    base.mul_f64(1.0 + fraction * unit)
}

/// Reconnect delays: exponential with jitter, so peers (or clients) that lost the same node do not come
/// back in lockstep. Attempt `n` waits a time in `[d/2, d]` with `d = min(base * 2^n, max)`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// The next delay; `random` is uniform in `[0, 1)`.
    pub fn next(&mut self, random: f64) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(0.5 + 0.5 * random.clamp(0.0, 1.0))
    }

    /// A connection succeeded: start again from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_jitters_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let lows: Vec<Duration> = (0..8).map(|_| b.next(0.0)).collect();
        assert_eq!(lows[0], Duration::from_millis(50));
        assert_eq!(lows[1], Duration::from_millis(100));
        assert_eq!(
            lows[7],
            Duration::from_secs(1),
            "capped at max, halved by jitter"
        );
        assert_eq!(b.next(0.999_999).as_millis(), 1999);
        b.reset();
        assert_eq!(b.next(1.0), Duration::from_millis(100));
    }

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 20, t0);
        assert_eq!((0..30).filter(|_| b.try_take(t0)).count(), 20, "burst");
        assert!(!b.try_take(t0));
        assert!(
            b.try_take(t0 + Duration::from_millis(100)),
            "one token after 1/rate"
        );
        assert!(!b.try_take(t0 + Duration::from_millis(100)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            (0..30).filter(|_| b.try_take(later)).count(),
            20,
            "refill caps at burst"
        );
    }

    #[test]
    fn deadline_expires_after_silence() {
        let t0 = Instant::now();
        let mut d = Deadline::new(Duration::from_secs(90), t0);
        assert!(!d.expired(t0 + Duration::from_secs(89)));
        d.touch(t0 + Duration::from_secs(80));
        assert!(!d.expired(t0 + Duration::from_secs(160)));
        assert!(d.expired(t0 + Duration::from_secs(170)));
    }

    #[test]
    fn window_coalesces() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_millis(100));
        assert!(w.allow(t0));
        assert!(!w.allow(t0 + Duration::from_millis(10)));
        assert!(!w.allow(t0 + Duration::from_millis(50)));
        assert!(w.pending);
        assert_eq!(w.next_allowed(), Some(t0 + Duration::from_millis(100)));
        assert!(w.allow(t0 + Duration::from_millis(100)));
        assert!(!w.pending);
    }

    #[test]
    fn jitter_stays_in_range() {
        let base = Duration::from_secs(10);
        for seed in [0, 1, 499, 999, 123_456] {
            let j = jittered(base, 0.2, seed);
            assert!(j >= base && j < base.mul_f64(1.2), "{j:?}");
        }
    }
}
