//! Room state of one core, in two roles.
//!
//! [`LocalRooms`]: which of *this core's* connections are in which room (the
//! fan-out list a delivered message is written to). [`HomeRooms`]: the rooms
//! whose home is this core: their `seq` and `epoch`, which cores have members
//! (the interest set: a core with no member never receives the room's
//! messages) and which users are in them (for `joined`/`left` and member
//! counts). This module must not send anything or touch connections; the
//! core loop routes what these structures decide.

use crate::bus::ReplyTo;
use crate::config::Durability;
use crate::history::{Entry, Retention, RoomModes, Window};
use crate::presence::Status;
use crate::store::LoadedRoom;
use slab::Slab;
use std::collections::{HashMap, VecDeque};
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

/// A user in a room, as counted at the room's home core.
#[derive(Debug)]
struct RoomUser {
    connections: u32,
    name: Option<Arc<str>>,
    status: Status,
}

/// A room at its home core.
#[derive(Debug)]
pub struct HomeRoom {
    /// Last assigned seq (0 = none yet).
    pub seq: u64,
    /// Identifies this incarnation of the room's history.
    pub epoch: Arc<str>,
    /// Member connections per core (the interest set).
    cores: Vec<u32>,
    users: HashMap<Arc<str>, RoomUser>,
    /// Monotonic ms of the last join, leave or publish.
    last_active_ms: u64,
    /// Recent messages, for recovery and `history`.
    pub history: Window,
    /// How durable this room's messages are.
    pub mode: Durability,
    /// Users typing, with when their typing expires (monotonic ms).
    pub typing: HashMap<Arc<str>, u64>,
    /// Sequenced messages waiting for the store's fsync (sync mode), in
    /// seq order; they are delivered, acknowledged and enter `history`
    /// once stored.
    pub pending: VecDeque<Pending>,
}

/// A sequenced message not yet durable.
#[derive(Debug)]
pub struct Pending {
    /// The message.
    pub entry: Entry,
    /// Where its `ack` goes.
    pub reply: Option<ReplyTo>,
    /// When it was sequenced (server-monotonic µs).
    pub at_us: u64,
}

impl HomeRoom {
    /// Cores with at least one member connection.
    pub fn interested(&self) -> impl Iterator<Item = usize> + '_ {
        self.cores
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n > 0)
            .map(|(c, _)| c)
    }

    /// Number of distinct users in the room.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    fn idle(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `user` is a member.
    pub fn has_user(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// Notes a member's presence status (for `members`).
    pub fn set_status(&mut self, user: &str, status: Status) {
        if let Some(u) = self.users.get_mut(user) {
            u.status = status;
        }
    }

    /// The `users` array of a `members` reply:
    /// `[{"user","name","status"}, ...]`, sorted by user id.
    pub fn members_json(&self, out: &mut String) {
        let mut users: Vec<_> = self.users.iter().collect();
        users.sort_by(|a, b| a.0.cmp(b.0));
        out.push('[');
        for (i, (user, u)) in users.into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str("{\"user\":");
            crate::proto::event::push_json_str(out, user);
            if let Some(name) = &u.name {
                out.push_str(",\"name\":");
                crate::proto::event::push_json_str(out, name);
            }
            out.push_str(",\"status\":\"");
            out.push_str(u.status.as_str());
            out.push_str("\"}");
        }
        out.push(']');
    }

    /// The seq of the last message delivered (messages waiting for the
    /// store are not visible yet: a joiner's `ack` must not claim them).
    pub fn visible_seq(&self) -> u64 {
        self.seq - self.pending.len() as u64
    }

    fn holds_nothing(&self) -> bool {
        self.history.is_empty() && self.pending.is_empty()
    }
}

/// A member connection as the home core sees it.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    /// Core of the connection.
    pub core: usize,
    /// Its user.
    pub user: &'a Arc<str>,
    /// The user's display name.
    pub name: Option<&'a Arc<str>>,
}

/// What a join changed at the home core.
#[derive(Debug, PartialEq, Eq)]
pub struct JoinOutcome {
    /// Latest seq.
    pub seq: u64,
    /// Room epoch.
    pub epoch: Arc<str>,
    /// Distinct users after the join.
    pub members: usize,
    /// This was the user's first connection in the room (`joined` is due).
    pub first: bool,
}

/// Rooms whose home is this core.
#[derive(Debug)]
pub struct HomeRooms {
    rooms: HashMap<Arc<str>, HomeRoom>,
    cores: usize,
    /// Rooms without members or history are forgotten after this long
    /// without activity.
    idle_ms: u64,
    /// History bounds.
    pub retention: Retention,
    /// Durability per room.
    modes: RoomModes,
}

impl HomeRooms {
    /// Home-room table for a server of `cores` cores.
    pub fn new(cores: usize, idle_ms: u64, retention: Retention, modes: RoomModes) -> Self {
        HomeRooms {
            rooms: HashMap::new(),
            cores,
            idle_ms,
            retention,
            modes,
        }
    }

    /// The room, if it exists, for changes.
    pub fn get_mut(&mut self, room: &str) -> Option<&mut HomeRoom> {
        self.rooms.get_mut(room)
    }

    /// The room, if it exists.
    pub fn get(&self, room: &str) -> Option<&HomeRoom> {
        self.rooms.get(room)
    }

    /// Number of rooms held.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    /// Whether no room is held.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    fn room_mut(
        &mut self,
        room: &Arc<str>,
        now_ms: u64,
        new_epoch: impl FnOnce() -> Arc<str>,
    ) -> &mut HomeRoom {
        let cores = self.cores;
        let modes = &self.modes;
        let r = self.rooms.entry(room.clone()).or_insert_with(|| HomeRoom {
            mode: modes.of(room),
            seq: 0,
            epoch: new_epoch(),
            cores: vec![0; cores],
            users: HashMap::new(),
            last_active_ms: now_ms,
            history: Window::default(),
            pending: VecDeque::new(),
            typing: HashMap::new(),
        });
        r.last_active_ms = now_ms;
        r
    }

    /// Registers a member connection (unless `rejoin`).
    pub fn join(
        &mut self,
        room: &Arc<str>,
        m: Member<'_>,
        rejoin: bool,
        now_ms: u64,
        new_epoch: impl FnOnce() -> Arc<str>,
    ) -> JoinOutcome {
        let r = self.room_mut(room, now_ms, new_epoch);
        let mut first = false;
        if !rejoin {
            r.cores[m.core] += 1;
            let u = r.users.entry(m.user.clone()).or_insert_with(|| {
                first = true;
                RoomUser {
                    connections: 0,
                    name: m.name.cloned(),
                    status: Status::Online,
                }
            });
            u.connections += 1;
        }
        JoinOutcome {
            seq: r.visible_seq(),
            epoch: r.epoch.clone(),
            members: r.users.len(),
            first,
        }
    }

    /// Unregisters a member connection of `user` on `core`. Returns the
    /// user's name when this was their last connection (`left` is due).
    pub fn leave(
        &mut self,
        room: &str,
        core: usize,
        user: &str,
        now_ms: u64,
    ) -> Option<Option<Arc<str>>> {
        let r = self.rooms.get_mut(room)?;
        r.last_active_ms = now_ms;
        r.cores[core] = r.cores[core].saturating_sub(1);
        let u = r.users.get_mut(user)?;
        u.connections -= 1;
        let left = if u.connections == 0 {
            r.users.remove(user).map(|u| u.name)
        } else {
            None
        };
        // An empty room keeps its epoch until the idle sweep: a member who
        // left (or dropped) and comes back with `since` still recovers
        // what was published after it.
        left
    }

    /// Installs a room loaded from the durable store (at start). A room
    /// whose pattern now makes it memory-only is not restored: it starts
    /// over under a new epoch when used, so no seq it hands out can collide
    /// with stored ones.
    pub fn restore(&mut self, loaded: LoadedRoom, now_ms: u64, now_unix_ms: u64) {
        if self.modes.of(&loaded.room) == Durability::Memory {
            return;
        }
        let mut history = Window::default();
        for e in loaded.entries {
            history.push(e, &self.retention, now_unix_ms);
        }
        let r = HomeRoom {
            mode: self.modes.of(&loaded.room),
            seq: loaded.seq,
            epoch: loaded.epoch,
            cores: vec![0; self.cores],
            users: HashMap::new(),
            last_active_ms: now_ms,
            history,
            pending: VecDeque::new(),
            typing: HashMap::new(),
        };
        self.rooms.insert(loaded.room, r);
    }

    /// Assigns the next seq of `room` (creating it for publish-only senders).
    pub fn sequence(
        &mut self,
        room: &Arc<str>,
        now_ms: u64,
        new_epoch: impl FnOnce() -> Arc<str>,
    ) -> &mut HomeRoom {
        let r = self.room_mut(room, now_ms, new_epoch);
        r.seq += 1;
        r
    }

    /// Trims every room's history by age, then forgets rooms with no
    /// members and no history that have been inactive for the idle time
    /// (a room that comes back starts a new epoch). Returns how many were
    /// dropped.
    pub fn sweep(&mut self, now_ms: u64, now_unix_ms: u64) -> usize {
        let before = self.rooms.len();
        let (idle_ms, retention) = (self.idle_ms, self.retention);
        self.rooms.retain(|_, r| {
            r.history.trim(&retention, now_unix_ms);
            !(r.idle() && r.holds_nothing() && now_ms.saturating_sub(r.last_active_ms) >= idle_ms)
        });
        before - self.rooms.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RET: Retention = Retention {
        size: 10,
        ttl_ms: 10_000,
    };

    fn epoch() -> Arc<str> {
        "e1".into()
    }

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

    #[test]
    fn home_counts_users_and_cores() {
        let mut h = HomeRooms::new(2, 1000, RET, RoomModes::all(Durability::Memory));
        let r: Arc<str> = "a".into();
        let u1: Arc<str> = "u1".into();
        let u2: Arc<str> = "u2".into();
        let o = h.join(
            &r,
            Member {
                core: 0,
                user: &u1,
                name: None,
            },
            false,
            0,
            epoch,
        );
        assert_eq!((o.first, o.members, o.seq), (true, 1, 0));
        let o = h.join(
            &r,
            Member {
                core: 1,
                user: &u1,
                name: None,
            },
            false,
            0,
            epoch,
        );
        assert!(!o.first, "second connection of u1");
        let o = h.join(
            &r,
            Member {
                core: 1,
                user: &u2,
                name: None,
            },
            false,
            0,
            epoch,
        );
        assert_eq!((o.first, o.members), (true, 2));
        assert_eq!(h.get("a").unwrap().interested().collect::<Vec<_>>(), [0, 1]);
        let entry = crate::history::Entry {
            seq: 1,
            ts: 0,
            frame: bytes::Bytes::from_static(b"\x81\x02{}"),
            header_len: 2,
        };
        let room = h.sequence(&r, 0, epoch);
        assert_eq!(room.seq, 1);
        room.history.push(entry, &RET, 0);
        assert_eq!(
            h.join(
                &r,
                Member {
                    core: 1,
                    user: &u2,
                    name: None
                },
                true,
                0,
                epoch
            )
            .seq,
            1,
            "rejoin reports position"
        );

        assert_eq!(h.leave("a", 0, "u1", 0), None, "u1 still on core 1");
        assert_eq!(h.get("a").unwrap().interested().collect::<Vec<_>>(), [1]);
        assert_eq!(h.leave("a", 1, "u1", 0), Some(None));
        assert_eq!(h.leave("a", 1, "u2", 0), Some(None));
        assert!(h.get("a").is_some(), "kept: it has messages");
        assert_eq!(h.sweep(5000, 0), 0, "history keeps it");
        assert_eq!(h.sweep(5000, 20_000), 1, "history expired and idle");
        assert!(h.is_empty());
    }

    #[test]
    fn empty_room_keeps_its_epoch_until_the_idle_sweep() {
        let mut h = HomeRooms::new(1, 1000, RET, RoomModes::all(Durability::Memory));
        let r: Arc<str> = "a".into();
        let u: Arc<str> = "u".into();
        let m = Member {
            core: 0,
            user: &u,
            name: None,
        };
        h.join(&r, m, false, 0, epoch);
        h.leave("a", 0, "u", 0);
        assert_eq!(h.sweep(999, 0), 0, "kept while not idle long enough");
        assert_eq!(h.get("a").unwrap().epoch.as_ref(), "e1");
        assert_eq!(h.sweep(1000, 0), 1);
        assert!(h.is_empty());
    }
}
