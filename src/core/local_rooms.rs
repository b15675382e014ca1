//! The local member lists of one core: which of *this core's* connections
//! are in which room — the fan-out list a delivered message is written to.
//!
//! Owned by the socket layer; the engine decides which cores get a room's
//! events, this decides which connections of the core. It must not send
//! anything or know about homes, seqs or other cores.

use slab::Slab;
use std::collections::HashMap;
use std::sync::Arc;

/// Members of rooms on this core.
#[derive(Debug, Default)]
pub struct LocalRooms {
    rooms: HashMap<Arc<str>, Slab<u32>>,
}

impl LocalRooms {
    /// Adds connection `key` to `room`; returns its slot (keep it for [`LocalRooms::remove`]).
    pub fn add(&mut self, room: &Arc<str>, key: usize) -> u32 {
        let members = match self.rooms.get_mut(&**room) {
            Some(m) => m,
            None => self.rooms.entry(room.clone()).or_default(),
        };
        members.insert(key as u32) as u32
    }

    /// Removes the member at `slot` of `room`; drops the room when it empties.
    pub fn remove(&mut self, room: &str, slot: u32) {
        if let Some(members) = self.rooms.get_mut(room) {
            members.try_remove(slot as usize);
            if members.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    /// The member connection keys of `room` on this core.
    pub fn members(&self, room: &str) -> Option<&Slab<u32>> {
        self.rooms.get(room)
    }

    /// Number of rooms with members on this core.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    /// Whether no room has members on this core.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_membership() {
        let mut l = LocalRooms::default();
        let r: Arc<str> = "a".into();
        let s1 = l.add(&r, 10);
        let s2 = l.add(&r, 11);
        let keys: Vec<u32> = l.members("a").unwrap().iter().map(|(_, &k)| k).collect();
        assert_eq!(keys, [10, 11]);
        l.remove("a", s1);
        l.remove("a", s1); // twice is harmless
        assert_eq!(l.members("a").unwrap().len(), 1);
        l.remove("a", s2);
        assert!(l.members("a").is_none() && l.is_empty());
    }
}
