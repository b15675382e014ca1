//! A room's recent history at its home core: a window of framed `message`
//! events bounded by count and age, used to replay what a reconnecting
//! client missed (`join` with `since`) and to answer `history`.
//!
//! Entries keep the framed bytes that were delivered, shared by reference:
//! a replay queues the same `Bytes` again, and a `history` reply slices the
//! JSON out of them. This module must not know about connections, cores or
//! disks; the durable store persists the same entries separately. It also
//! decides each room's durability mode ([`RoomModes`]).

use crate::auth::Patterns;
use crate::config::{Durability, HistoryConfig};
use bytes::Bytes;
use std::collections::VecDeque;

/// How much history a room keeps (config `[history]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Most messages kept per room.
    pub size: usize,
    /// Oldest message kept, ms.
    pub ttl_ms: u64,
}

/// Which durability each room gets (config `history.durability`,
/// `memory_rooms`, `async_rooms`), decided once when a home core creates
/// the room.
#[derive(Debug, Clone)]
pub struct RoomModes {
    default: Durability,
    memory: Patterns,
    asyncs: Patterns,
}

impl RoomModes {
    /// From the `[history]` config.
    pub fn new(h: &HistoryConfig) -> Self {
        RoomModes {
            default: h.durability,
            memory: Patterns::new(&h.memory_rooms),
            asyncs: Patterns::new(&h.async_rooms),
        }
    }

    /// Every room in one mode.
    pub fn all(mode: Durability) -> Self {
        RoomModes {
            default: mode,
            memory: Patterns::default(),
            asyncs: Patterns::default(),
        }
    }

    /// The mode of `room`: `memory_rooms` first, then `async_rooms`, else
    /// the default; a memory-only server never writes.
    pub fn of(&self, room: &str) -> Durability {
        if self.default == Durability::Memory || self.memory.matches(room) {
            Durability::Memory
        } else if self.asyncs.matches(room) {
            Durability::Async
        } else {
            self.default
        }
    }
}

/// One message of a room.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its seq.
    pub seq: u64,
    /// When it was sequenced, Unix ms.
    pub ts: u64,
    /// The `message` event as delivered: WebSocket header + JSON.
    pub frame: Bytes,
    /// Length of the WebSocket header in `frame`.
    pub header_len: u8,
}

impl Entry {
    /// The event's JSON.
    pub fn json(&self) -> &[u8] {
        &self.frame[self.header_len as usize..]
    }
}

/// The window of one room; seqs are contiguous and ascending.
#[derive(Debug, Default)]
pub struct Window {
    entries: VecDeque<Entry>,
}

impl Window {
    /// Appends the next message and applies retention.
    pub fn push(&mut self, entry: Entry, r: &Retention, now_unix_ms: u64) {
        debug_assert!(
            self.entries.back().is_none_or(|b| b.seq + 1 == entry.seq),
            "history seqs must be contiguous"
        );
        self.entries.push_back(entry);
        self.trim(r, now_unix_ms);
    }

    /// Drops messages beyond the count or older than the age limit.
    pub fn trim(&mut self, r: &Retention, now_unix_ms: u64) {
        while self.entries.len() > r.size {
            self.entries.pop_front();
        }
        while self
            .entries
            .front()
            .is_some_and(|e| e.ts.saturating_add(r.ttl_ms) < now_unix_ms)
        {
            self.entries.pop_front();
        }
    }

    /// Number of messages held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Seq of the oldest message held.
    pub fn oldest(&self) -> Option<u64> {
        self.entries.front().map(|e| e.seq)
    }

    /// Every message after `seq`, when the window still holds all of them
    /// (`latest` is the room's newest seq). `None` = there is a gap the
    /// window cannot fill.
    pub fn since(&self, seq: u64, latest: u64) -> Option<impl Iterator<Item = &Entry>> {
        if seq > latest {
            return None;
        }
        let skip = if seq == latest {
            self.entries.len()
        } else {
            let oldest = self.oldest()?;
            if oldest > seq + 1 {
                return None;
            }
            (seq + 1 - oldest) as usize
        };
        Some(self.entries.iter().skip(skip))
    }

    /// Up to `limit` messages with seq below `before` (all when `None`),
    /// the newest of them, in ascending order.
    pub fn page(&self, before: Option<u64>, limit: usize) -> impl Iterator<Item = &Entry> {
        let end = match (before, self.oldest()) {
            (Some(b), Some(oldest)) => (b.saturating_sub(oldest) as usize).min(self.entries.len()),
            _ => self.entries.len(),
        };
        let start = end.saturating_sub(limit);
        self.entries.range(start..end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, ts: u64) -> Entry {
        let json = format!("{{\"seq\":{seq}}}");
        let mut frame = vec![0x81, json.len() as u8];
        frame.extend_from_slice(json.as_bytes());
        Entry {
            seq,
            ts,
            frame: Bytes::from(frame),
            header_len: 2,
        }
    }

    const R: Retention = Retention {
        size: 5,
        ttl_ms: 1000,
    };

    fn seqs<'a>(it: impl Iterator<Item = &'a Entry>) -> Vec<u64> {
        it.map(|e| e.seq).collect()
    }

    #[test]
    fn keeps_the_newest_by_count() {
        let mut w = Window::default();
        for s in 1..=8 {
            w.push(entry(s, 0), &R, 0);
        }
        assert_eq!(w.len(), 5);
        assert_eq!(w.oldest(), Some(4));
        assert_eq!(
            std::str::from_utf8(w.entries[0].json()).unwrap(),
            "{\"seq\":4}"
        );
    }

    #[test]
    fn drops_by_age() {
        let mut w = Window::default();
        w.push(entry(1, 100), &R, 100);
        w.push(entry(2, 600), &R, 600);
        w.trim(&R, 1200);
        assert_eq!(w.oldest(), Some(2));
        w.trim(&R, 1700);
        assert!(w.is_empty());
    }

    #[test]
    fn since_replays_exactly_the_missed_or_reports_a_gap() {
        let mut w = Window::default();
        for s in 1..=8 {
            w.push(entry(s, 0), &R, 0);
        }
        // window holds 4..=8
        assert_eq!(seqs(w.since(5, 8).unwrap()), [6, 7, 8]);
        assert_eq!(seqs(w.since(3, 8).unwrap()), [4, 5, 6, 7, 8]);
        assert!(w.since(2, 8).is_none(), "message 3 is gone");
        assert_eq!(seqs(w.since(8, 8).unwrap()), Vec::<u64>::new());
        assert!(w.since(9, 8).is_none(), "a position from the future");
        // an empty window can only confirm "nothing missed"
        let empty = Window::default();
        assert!(empty.since(0, 0).unwrap().next().is_none());
        assert!(empty.since(0, 3).is_none());
    }

    #[test]
    fn pages_backwards() {
        let mut w = Window::default();
        for s in 1..=5 {
            w.push(entry(s, 0), &R, 0);
        }
        assert_eq!(seqs(w.page(None, 2)), [4, 5]);
        assert_eq!(seqs(w.page(Some(4), 2)), [2, 3]);
        assert_eq!(seqs(w.page(Some(2), 10)), [1]);
        assert_eq!(seqs(w.page(Some(1), 10)), Vec::<u64>::new());
        assert_eq!(seqs(w.page(Some(100), 3)), [3, 4, 5]);
    }
}
