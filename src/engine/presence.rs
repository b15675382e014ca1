//! A user's connections and presence as one holder sees them: which
//! connections (core, connection) a user has, their status, the rooms
//! their connections are in, and the grace period after the last one
//! went. The memory engine keeps one [`UserTable`] per home core (for the
//! users homed there); the Redis engine keeps one per node (for the users
//! with connections on it).
//!
//! Presence is per user, not per connection: a user is online while any
//! connection is, and goes `offline` only after the last one has been gone
//! for the grace period (a reconnect within it changes nothing). The rooms
//! of a user who just left are kept through the grace period, so the
//! `offline` event reaches the people who shared them.
//!
//! This module must not send anything or arm timers: its owners do.

use crate::engine::ConnRef;
use crate::frame::text_frame;
use crate::proto::Status;
use crate::proto::event::Event as Ev;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;

/// One user at its home core. Every connected user has one, so the common
/// case — one connection, no room, online — is a 16-byte value; anything
/// else lives in a boxed [`Full`] record.
#[derive(Debug)]
pub struct UserHome(Repr);

#[derive(Debug)]
enum Repr {
    /// One connection (core, connection), in no room, online.
    Single(u32, ConnRef),
    Full(Box<Full>),
}

/// A user with several connections, rooms, a status or a running grace.
#[derive(Debug)]
struct Full {
    /// The user's connections: (core, connection on that core).
    conns: Vec<(u32, ConnRef)>,
    /// Rooms with the number of the user's member connections in them;
    /// while the user is gone (grace), the rooms they were last in, at 0.
    rooms: Vec<(Arc<str>, u32)>,
    /// When the last connection went away (grace running), monotonic ms;
    /// 0 = not gone.
    gone_since: u64,
    /// Guards the grace timer against a reconnect in between.
    grace_gen: u32,
    /// Current status (never `Offline` while the entry exists).
    status: Status,
}

impl Full {
    fn room_mut(&mut self, room: &str) -> Option<&mut u32> {
        self.rooms
            .iter_mut()
            .find(|(r, _)| &**r == room)
            .map(|(_, n)| n)
    }
}

impl UserHome {
    fn full(&mut self) -> &mut Full {
        if let Repr::Single(core, conn) = self.0 {
            self.0 = Repr::Full(Box::new(Full {
                conns: vec![(core, conn)],
                rooms: Vec::new(),
                gone_since: 0,
                grace_gen: 0,
                status: Status::Online,
            }));
        }
        match &mut self.0 {
            Repr::Full(f) => f,
            Repr::Single(..) => unreachable!("promoted above"),
        }
    }

    /// Cores holding at least one connection of the user, each with the
    /// connections there.
    pub fn by_core(&self) -> Vec<(usize, Vec<ConnRef>)> {
        let all: Vec<(u32, ConnRef)> = match &self.0 {
            Repr::Single(core, conn) => vec![(*core, *conn)],
            Repr::Full(f) => f.conns.clone(),
        };
        let mut out: Vec<(usize, Vec<ConnRef>)> = Vec::new();
        for (core, conn) in all {
            match out.iter_mut().find(|(c, _)| *c == core as usize) {
                Some((_, v)) => v.push(conn),
                None => out.push((core as usize, vec![conn])),
            }
        }
        out
    }

    /// Connections of the user, all cores.
    pub fn connections(&self) -> u32 {
        match &self.0 {
            Repr::Single(..) => 1,
            Repr::Full(f) => f.conns.len() as u32,
        }
    }

    /// The rooms the user is (or, during the grace, was last) in.
    pub fn rooms(&self) -> Vec<Arc<str>> {
        match &self.0 {
            Repr::Single(..) => Vec::new(),
            Repr::Full(f) => f.rooms.iter().map(|(r, _)| r.clone()).collect(),
        }
    }

    /// The user's status.
    pub fn status(&self) -> Status {
        match &self.0 {
            Repr::Single(..) => Status::Online,
            Repr::Full(f) => f.status,
        }
    }
}

/// The table of users whose home is this core (state only).
#[derive(Debug, Default)]
pub struct UserTable {
    users: HashMap<Arc<str>, UserHome>,
}

/// A presence change to announce to the user's rooms.
#[derive(Debug, PartialEq, Eq)]
pub struct Change {
    /// New status.
    pub status: Status,
    /// Rooms whose members hear of it.
    pub rooms: Vec<Arc<str>>,
}

impl UserTable {
    /// An empty table.
    pub fn new() -> Self {
        UserTable::default()
    }

    /// The user, if known (connected or within the grace).
    pub fn get(&self, user: &str) -> Option<&UserHome> {
        self.users.get(user)
    }

    /// Every user held, with their entry.
    pub fn users(&self) -> impl Iterator<Item = (&Arc<str>, &UserHome)> {
        self.users.iter()
    }

    /// Users held.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Users with at least one connection.
    pub fn online(&self) -> usize {
        self.users.values().filter(|u| u.connections() > 0).count()
    }

    /// Connection `conn` of `user` on `core` authenticated. Returns whether
    /// the user came online (was neither connected nor within the grace).
    /// The display name is not kept here: `members` takes names from the
    /// rooms.
    pub fn connect(&mut self, user: &Arc<str>, core: usize, conn: ConnRef) -> bool {
        let Some(u) = self.users.get_mut(user) else {
            self.users
                .insert(user.clone(), UserHome(Repr::Single(core as u32, conn)));
            return true;
        };
        let f = u.full();
        if f.conns.is_empty() && f.gone_since != 0 {
            // Back within the grace: the rooms kept for the offline event
            // are rejoined by the new connection if it wants them.
            f.gone_since = 0;
            f.rooms.retain(|(_, n)| *n > 0);
            f.grace_gen = f.grace_gen.wrapping_add(1);
        }
        f.conns.push((core as u32, conn));
        false
    }

    /// Connection `conn` of `user` on `core` went away while in `rooms`.
    /// Returns the grace generation to arm the offline timer with when it
    /// was the user's last connection.
    pub fn disconnect(
        &mut self,
        user: &str,
        core: usize,
        conn: ConnRef,
        rooms: &[Arc<str>],
        now_ms: u64,
    ) -> Option<u32> {
        let u = self.users.get_mut(user)?;
        if let Repr::Single(c, k) = u.0
            && (c as usize != core || k != conn)
        {
            return None;
        }
        let f = u.full();
        let pos = f
            .conns
            .iter()
            .position(|&(c, k)| c as usize == core && k == conn)?;
        f.conns.swap_remove(pos);
        for room in rooms {
            if let Some(n) = f.room_mut(room) {
                *n = n.saturating_sub(1);
            }
        }
        if f.conns.is_empty() {
            // Keep every room at 0 for the offline event.
            for (_, n) in f.rooms.iter_mut() {
                *n = 0;
            }
            f.gone_since = now_ms.max(1);
            f.grace_gen = f.grace_gen.wrapping_add(1);
            return Some(f.grace_gen);
        }
        f.rooms.retain(|(_, n)| *n > 0);
        None
    }

    /// A connection of `user` joined `room`. Returns the user's status,
    /// which the room's home core is told (it may have just heard an
    /// `offline` that this reconnect overtook).
    pub fn room_joined(&mut self, user: &str, room: &Arc<str>) -> Option<Status> {
        let f = self.users.get_mut(user)?.full();
        match f.room_mut(room) {
            Some(n) => *n += 1,
            None => {
                // Room for one first (32 B instead of 112 for four).
                f.rooms.reserve_exact(usize::from(f.rooms.is_empty()));
                f.rooms.push((room.clone(), 1));
            }
        }
        Some(f.status)
    }

    /// A connection of `user` left `room` (the user is still connected).
    pub fn room_left(&mut self, user: &str, room: &str) {
        let Some(u) = self.users.get_mut(user) else {
            return;
        };
        if let Repr::Single(..) = u.0 {
            return;
        }
        let f = u.full();
        if let Some(n) = f.room_mut(room) {
            *n = n.saturating_sub(1);
            if *n == 0 && !f.conns.is_empty() {
                f.rooms.retain(|(_, n)| *n > 0);
            }
        }
    }

    /// The user set a status; returns the change when it is one.
    pub fn set_status(&mut self, user: &str, status: Status) -> Option<Change> {
        let u = self.users.get_mut(user)?;
        if u.status() == status || u.connections() == 0 {
            return None;
        }
        let f = u.full();
        f.status = status;
        Some(Change {
            status,
            rooms: f.rooms.iter().map(|(r, _)| r.clone()).collect(),
        })
    }

    /// The grace timer of `user` fired: when the user is still gone (and
    /// the timer is current), forget them and return the `offline` change.
    pub fn grace_expired(&mut self, user: &str, grace_gen: u32) -> Option<Change> {
        let Repr::Full(f) = &self.users.get(user)?.0 else {
            return None;
        };
        if !f.conns.is_empty() || f.gone_since == 0 || f.grace_gen != grace_gen {
            return None;
        }
        let u = self.users.remove(user)?;
        Some(Change {
            status: Status::Offline,
            rooms: u.rooms(),
        })
    }
}

/// The `presence` event, framed.
pub fn presence_frame(user: &str, status: Status) -> Bytes {
    let ev = Ev::new("presence")
        .str("user", user)
        .str("status", status.as_str())
        .finish();
    text_frame(ev.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Arc<str> {
        s.into()
    }

    fn c(key: u32) -> ConnRef {
        ConnRef { key, generation: 1 }
    }

    #[test]
    fn online_once_across_cores_offline_after_the_last_and_the_grace() {
        let mut h = UserTable::new();
        let (u, r) = (a("u"), a("room"));
        assert!(h.connect(&u, 0, c(7)), "first connection: online");
        assert!(!h.connect(&u, 1, c(7)), "second connection on another core");
        assert_eq!(
            h.get("u").unwrap().by_core(),
            [(0, vec![c(7)]), (1, vec![c(7)])]
        );
        h.room_joined("u", &r);
        h.room_joined("u", &r);
        assert_eq!(
            h.disconnect("u", 0, c(8), std::slice::from_ref(&r), 10),
            None,
            "unknown"
        );
        assert_eq!(
            h.disconnect("u", 0, c(7), std::slice::from_ref(&r), 10),
            None
        );
        assert_eq!(
            h.get("u").unwrap().rooms(),
            std::slice::from_ref(&r),
            "still in via core 1"
        );
        let g = h
            .disconnect("u", 1, c(7), std::slice::from_ref(&r), 20)
            .unwrap();
        let change = h.grace_expired("u", g).unwrap();
        assert_eq!(change.status, Status::Offline);
        assert_eq!(change.rooms, [r], "offline goes to the rooms last shared");
        assert!(h.is_empty());
    }

    #[test]
    fn a_reconnect_within_the_grace_does_not_flap() {
        let mut h = UserTable::new();
        let (u, r) = (a("u"), a("room"));
        h.connect(&u, 0, c(1));
        h.room_joined("u", &r);
        let g = h
            .disconnect("u", 0, c(1), std::slice::from_ref(&r), 10)
            .unwrap();
        assert!(
            !h.connect(&u, 0, c(2)),
            "back within the grace: no online event"
        );
        assert_eq!(h.grace_expired("u", g), None, "the stale timer is ignored");
        assert!(h.get("u").unwrap().rooms().is_empty(), "kept rooms dropped");
        assert_eq!(h.get("u").unwrap().connections(), 1);
    }

    #[test]
    fn status_changes_reach_the_current_rooms_only_when_they_change() {
        let mut h = UserTable::new();
        let (u, r1, r2) = (a("u"), a("r1"), a("r2"));
        h.connect(&u, 0, c(1));
        assert_eq!(
            h.room_joined("u", &r1),
            Some(Status::Online),
            "online is the default"
        );
        h.room_joined("u", &r2);
        h.room_left("u", "r2");
        let c = h.set_status("u", Status::Away).unwrap();
        assert_eq!(c.rooms, std::slice::from_ref(&r1));
        assert_eq!(h.set_status("u", Status::Away), None, "no change, no event");
        assert_eq!(h.room_joined("u", &r2), Some(Status::Away));
        assert_eq!(h.set_status("nobody", Status::Busy), None);
    }
}
