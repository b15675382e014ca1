//! A room's idempotency keys at its home core: which `key`s were published
//! recently, with the seq and ts of the message each one produced, so a
//! publish retried with the same key is acknowledged again instead of
//! stored twice.
//!
//! A key is remembered while its message is within the room's history
//! window (the last `history.size` seqs, younger than `history.ttl`) or
//! for [`KEEP_MS`] after it was published, whichever is longer, and at
//! most [`cap`] keys per room (the oldest go first), so memory stays
//! bounded however fast a room is published to. The Redis engine applies
//! the same rule in its publish script. This module must not deliver or
//! acknowledge anything; the room decides what a duplicate gets.

use super::history::Retention;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// How long a key is remembered at least, ms (10 minutes), even after its
/// message left the history window.
pub const KEEP_MS: u64 = 600_000;
/// Fewest keys a room may remember, whatever `history.size` is.
pub const MIN_CAP: usize = 10_000;

/// Most keys one room remembers: `max(history.size, MIN_CAP)`.
pub fn cap(r: &Retention) -> usize {
    r.size.max(MIN_CAP)
}

/// The keys of one room.
#[derive(Debug, Default)]
pub struct Keys {
    /// Key → (seq, ts) of the message it produced.
    by_key: HashMap<Arc<str>, (u64, u64)>,
    /// The same, oldest first (seqs ascending).
    order: VecDeque<(Arc<str>, u64, u64)>,
}

impl Keys {
    /// The (seq, ts) a key produced, if remembered.
    pub fn get(&self, key: &str) -> Option<(u64, u64)> {
        self.by_key.get(key).copied()
    }

    /// Number of keys remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Remembers `key` for the message `seq` (the room's newest), then
    /// forgets what fell out of the window.
    pub fn insert(&mut self, key: Arc<str>, seq: u64, ts: u64, r: &Retention, now_unix_ms: u64) {
        self.by_key.insert(key.clone(), (seq, ts));
        self.order.push_back((key, seq, ts));
        self.evict(r, seq, now_unix_ms);
    }

    /// Forgets the keys of messages after `seq` (their seqs were given
    /// back: the publish failed, so a retry must be stored).
    pub fn forget_after(&mut self, seq: u64) {
        while let Some((key, s, _)) = self.order.back() {
            if *s <= seq {
                break;
            }
            self.by_key.remove(key);
            self.order.pop_back();
        }
    }

    /// Forgets keys outside the window, given the room's last seq.
    pub fn evict(&mut self, r: &Retention, last_seq: u64, now_unix_ms: u64) {
        let cap = cap(r);
        while let Some((key, seq, ts)) = self.order.front() {
            let in_history =
                seq + r.size as u64 > last_seq && ts.saturating_add(r.ttl_ms) >= now_unix_ms;
            let recent = ts.saturating_add(KEEP_MS) >= now_unix_ms;
            if self.order.len() <= cap && (in_history || recent) {
                break;
            }
            self.by_key.remove(key);
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Retention = Retention {
        size: 3,
        ttl_ms: 1_000_000,
    };

    fn key(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn keys_stay_for_ten_minutes_or_while_in_history() {
        let mut k = Keys::default();
        for seq in 1..=5 {
            k.insert(key(&format!("k{seq}")), seq, 1000, &R, 1000);
        }
        // Out of the 3-message history, but younger than 10 minutes.
        assert_eq!(k.get("k1"), Some((1, 1000)));
        assert_eq!(k.len(), 5);
        // 10 minutes later only the ones still in history stay.
        k.evict(&R, 5, 1000 + KEEP_MS + 1);
        assert_eq!(k.get("k2"), None);
        assert_eq!(k.get("k3"), Some((3, 1000)));
        assert_eq!(k.len(), 3);
        // And past the history's age limit, none.
        k.evict(&R, 5, 1000 + R.ttl_ms + 1);
        assert!(k.is_empty());
    }

    #[test]
    fn the_cap_bounds_a_busy_room_and_failed_seqs_are_forgotten() {
        let mut k = Keys::default();
        let n = MIN_CAP as u64 + 10;
        for seq in 1..=n {
            k.insert(key(&seq.to_string()), seq, 5, &R, 5);
        }
        assert_eq!(k.len(), MIN_CAP);
        assert_eq!(k.get("10"), None, "the oldest went first");
        assert_eq!(k.get("11"), Some((11, 5)));
        k.forget_after(n - 2);
        assert_eq!(k.get(&n.to_string()), None);
        assert_eq!(k.get(&(n - 2).to_string()), Some((n - 2, 5)));
    }
}
