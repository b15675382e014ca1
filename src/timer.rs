//! A hashed timer wheel with coarse ticks, one per core.
//!
//! Holds plain items with a deadline; it never cancels. Callers key items by
//! slab key + generation (and re-check their own state on expiry), so an
//! entry left behind by a closed connection, or by a reused slab slot, is
//! recognised and ignored when it fires. Insert is O(1); each tick scans one
//! slot. This module must not know what its items mean.

/// Farthest a deadline may lie ahead, in ticks: entries keep their tick
/// as a `u32` (8 bytes less per entry: 16 instead of 24 for the core's
/// timers, one or two per connection), compared with wrapping arithmetic,
/// so everything pending must lie within half its range. A later deadline
/// fires early, at this horizon (~3.4 years at 100 ms ticks); callers
/// re-check their state when an entry fires, as they must anyway.
pub const MAX_AHEAD_TICKS: u64 = (1 << 30) - 1;

/// A timer wheel of `T` items.
#[derive(Debug)]
pub struct TimerWheel<T> {
    /// Entries per slot: (tick, truncated to 32 bits; item).
    slots: Vec<Vec<(u32, T)>>,
    tick_ms: u64,
    /// The next tick to process.
    next_tick: u64,
    len: usize,
}

impl<T> TimerWheel<T> {
    /// A wheel of `slots` slots of `tick_ms` each, starting at `now_ms`.
    pub fn new(slots: usize, tick_ms: u64, now_ms: u64) -> Self {
        assert!(slots > 0 && tick_ms > 0);
        TimerWheel {
            slots: (0..slots).map(|_| Vec::new()).collect(),
            tick_ms,
            next_tick: now_ms / tick_ms,
            len: 0,
        }
    }

    /// Number of pending items.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no item is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Schedules `item` to expire at `at_ms` (rounded up to a tick; a time in
    /// the past expires at the next [`TimerWheel::advance`], one beyond
    /// [`MAX_AHEAD_TICKS`] at that horizon).
    pub fn insert(&mut self, at_ms: u64, item: T) {
        let tick = at_ms
            .div_ceil(self.tick_ms)
            .clamp(self.next_tick, self.next_tick + MAX_AHEAD_TICKS);
        let slot = (tick % self.slots.len() as u64) as usize;
        self.slots[slot].push((tick as u32, item));
        self.len += 1;
    }

    /// Moves time to `now_ms`, appending every expired item to `expired`
    /// (in tick order).
    pub fn advance(&mut self, now_ms: u64, expired: &mut Vec<T>) {
        let now_tick = now_ms / self.tick_ms;
        if now_tick < self.next_tick {
            return;
        }
        let n = self.slots.len() as u64;
        if now_tick - self.next_tick >= n {
            // A full turn (or more) passed: every slot is due once.
            for slot in 0..self.slots.len() {
                self.expire_slot(slot, now_tick, expired);
            }
        } else {
            for tick in self.next_tick..=now_tick {
                self.expire_slot((tick % n) as usize, tick, expired);
            }
        }
        self.next_tick = now_tick + 1;
    }

    fn expire_slot(&mut self, slot: usize, up_to_tick: u64, expired: &mut Vec<T>) {
        let entries = &mut self.slots[slot];
        let up_to = up_to_tick as u32;
        let mut i = 0;
        while i < entries.len() {
            // Due when at or before `up_to`: pending entries lie within
            // MAX_AHEAD_TICKS of it either way, so the wrapping distance
            // tells the side.
            if up_to.wrapping_sub(entries[i].0) <= MAX_AHEAD_TICKS as u32 {
                expired.push(entries.swap_remove(i).1);
                self.len -= 1;
            } else {
                i += 1;
            }
        }
        if entries.is_empty() && entries.capacity() > 64 {
            entries.shrink_to(16);
        }
    }

    /// Milliseconds from `now_ms` until the next tick boundary, or `None`
    /// when nothing is pending.
    pub fn next_timeout_ms(&self, now_ms: u64) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        Some((self.next_tick * self.tick_ms).saturating_sub(now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_order_and_not_early() {
        let mut w = TimerWheel::new(8, 10, 1000);
        w.insert(1055, "b");
        w.insert(1021, "a");
        w.insert(1500, "c"); // several turns away
        let mut out = Vec::new();
        w.advance(1029, &mut out);
        assert!(out.is_empty(), "1021 rounds up to tick 103 (1030)");
        w.advance(1030, &mut out);
        assert_eq!(out, ["a"]);
        w.advance(1100, &mut out);
        assert_eq!(out, ["a", "b"]);
        w.advance(1499, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(w.len(), 1);
        w.advance(1500, &mut out);
        assert_eq!(out, ["a", "b", "c"]);
        assert!(w.is_empty());
    }

    #[test]
    fn past_deadlines_fire_next_advance_and_big_jumps_work() {
        let mut w = TimerWheel::new(4, 100, 0);
        w.advance(1000, &mut Vec::new());
        w.insert(5, 1);
        let mut out = Vec::new();
        w.advance(1000, &mut out);
        assert!(out.is_empty(), "tick already processed");
        w.advance(1100, &mut out);
        assert_eq!(out, [1]);
        for i in 0..100 {
            w.insert(1200 + i * 37, i);
        }
        out.clear();
        w.advance(1_000_000, &mut out);
        assert_eq!(out.len(), 100);
        assert!(w.is_empty());
    }

    #[test]
    fn ticks_past_u32_and_far_deadlines_work() {
        // Start just below the 32-bit wrap of the tick counter.
        let start = (u32::MAX as u64 - 5) * 10;
        let mut w = TimerWheel::new(8, 10, start);
        w.insert(start + 30, "before the wrap");
        w.insert(start + 200, "after the wrap");
        w.insert(start + 10 * (MAX_AHEAD_TICKS + 50), "beyond the horizon");
        let mut out = Vec::new();
        w.advance(start + 29, &mut out);
        assert!(out.is_empty());
        w.advance(start + 30, &mut out);
        assert_eq!(out, ["before the wrap"]);
        w.advance(start + 199, &mut out);
        assert_eq!(out.len(), 1);
        w.advance(start + 200, &mut out);
        assert_eq!(out, ["before the wrap", "after the wrap"]);
        w.advance(start + 10 * MAX_AHEAD_TICKS - 10, &mut out);
        assert_eq!(out.len(), 2, "not before the horizon");
        w.advance(start + 10 * MAX_AHEAD_TICKS, &mut out);
        assert_eq!(out.len(), 3, "clamped to the horizon");
        assert!(w.is_empty());
    }

    #[test]
    fn next_timeout_points_at_next_tick() {
        let mut w = TimerWheel::new(16, 100, 0);
        assert_eq!(w.next_timeout_ms(0), None);
        w.insert(1000, ());
        w.advance(250, &mut Vec::new());
        assert_eq!(w.next_timeout_ms(250), Some(50));
    }

    #[test]
    fn many_timers_all_fire_exactly_once() {
        let mut w = TimerWheel::new(64, 10, 0);
        let mut rng = 12345u64;
        let mut deadlines = Vec::new();
        for i in 0..10_000u64 {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let at = (rng >> 33) % 5000;
            deadlines.push(at);
            w.insert(at, (i, at));
        }
        let mut fired = Vec::new();
        let mut now = 0;
        while now <= 5010 {
            let before = fired.len();
            w.advance(now, &mut fired);
            for &(_, at) in &fired[before..] {
                assert!(at <= now && now < at + 10 + 7, "fired {at} at {now}");
            }
            now += 7;
        }
        assert_eq!(fired.len(), 10_000);
        fired.sort();
        fired.dedup();
        assert_eq!(fired.len(), 10_000);
    }
}
