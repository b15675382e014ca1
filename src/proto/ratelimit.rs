//! Per-connection token bucket over all commands (PROTOCOL section 3).
//!
//! 16 bytes per connection; rate, burst and kick-after come from the config
//! on each call instead of being stored per connection. Time is passed in
//! (milliseconds, monotonic). This module must not read clocks.

/// What to do with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A token was taken: run the command.
    Allowed,
    /// No token: drop the command with `rate_limited`.
    Limited,
    /// The bucket has been empty for `kick_after`: close with 4008.
    Kick,
}

/// Rate-limit parameters (from `[limits]`).
#[derive(Debug, Clone, Copy)]
pub struct RateParams {
    /// Refill per second.
    pub per_sec: f64,
    /// Bucket size.
    pub burst: f64,
    /// Milliseconds of continuous limiting before a kick.
    pub kick_after_ms: u64,
}

/// A token bucket; starts full.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f32,
    /// Milliseconds of the last refill (truncated to u32: ~49 days wrap is
    /// handled by wrapping subtraction).
    last_ms: u32,
    /// When the current run of limiting began, +1 (0 = not limited). A run
    /// ends only at two allowed commands in a row, so a client that keeps
    /// sending faster than the rate (and gets the odd refilled token) stays
    /// in one run and is kicked.
    limited_since: u32,
    last_limited: bool,
}

impl TokenBucket {
    /// A full bucket at `now_ms`.
    pub fn new(p: &RateParams, now_ms: u64) -> Self {
        TokenBucket {
            tokens: p.burst as f32,
            last_ms: now_ms as u32,
            limited_since: 0,
            last_limited: false,
        }
    }

    /// Takes one token for a command at `now_ms`.
    pub fn take(&mut self, p: &RateParams, now_ms: u64) -> Verdict {
        let now = now_ms as u32;
        let elapsed = now.wrapping_sub(self.last_ms);
        self.last_ms = now;
        self.tokens =
            (self.tokens + elapsed as f32 * (p.per_sec as f32 / 1000.0)).min(p.burst as f32);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            if !self.last_limited {
                self.limited_since = 0;
            }
            self.last_limited = false;
            return Verdict::Allowed;
        }
        self.last_limited = true;
        if self.limited_since == 0 {
            self.limited_since = now.wrapping_add(1).max(1);
            return Verdict::Limited;
        }
        let limited_for = now.wrapping_sub(self.limited_since.wrapping_sub(1));
        if u64::from(limited_for) >= p.kick_after_ms {
            Verdict::Kick
        } else {
            Verdict::Limited
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: RateParams = RateParams {
        per_sec: 10.0,
        burst: 5.0,
        kick_after_ms: 2000,
    };

    #[test]
    fn burst_then_refill() {
        let mut b = TokenBucket::new(&P, 1000);
        for _ in 0..5 {
            assert_eq!(b.take(&P, 1000), Verdict::Allowed);
        }
        assert_eq!(b.take(&P, 1000), Verdict::Limited);
        // 10/s: one token per 100 ms
        assert_eq!(b.take(&P, 1050), Verdict::Limited);
        assert_eq!(b.take(&P, 1150), Verdict::Allowed);
        assert_eq!(b.take(&P, 1150), Verdict::Limited);
        // a long pause refills to the burst, not beyond
        let t = 100_000;
        for _ in 0..5 {
            assert_eq!(b.take(&P, t), Verdict::Allowed);
        }
        assert_eq!(b.take(&P, t), Verdict::Limited);
    }

    #[test]
    fn sustained_abuse_kicks_and_a_pause_forgives() {
        let mut b = TokenBucket::new(&P, 0);
        let mut now = 0;
        let mut verdicts = Vec::new();
        // 1000 commands/s for 3 s against a 10/s limit
        while now < 3000 {
            verdicts.push((now, b.take(&P, now)));
            now += 1;
        }
        let first_kick = verdicts
            .iter()
            .find(|(_, v)| *v == Verdict::Kick)
            .unwrap()
            .0;
        assert!((2000..2200).contains(&first_kick), "kick at {first_kick}");

        // limited for a while, then the client slows down: no kick
        let mut b = TokenBucket::new(&P, 0);
        for t in 0..1500 {
            assert_ne!(b.take(&P, t), Verdict::Kick);
        }
        assert_eq!(b.take(&P, 1700), Verdict::Allowed, "refilled, run reset");
        assert_ne!(b.take(&P, 3000), Verdict::Kick);
    }

    #[test]
    fn survives_u32_wraparound() {
        let start = u32::MAX as u64 - 50;
        let mut b = TokenBucket::new(&P, start);
        for _ in 0..5 {
            assert_eq!(b.take(&P, start), Verdict::Allowed);
        }
        assert_eq!(b.take(&P, start + 200), Verdict::Allowed);
    }
}
