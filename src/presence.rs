//! Users at their home core: how many connections each user has on which
//! core, their presence status, and the rooms their connections are in —
//! the state behind `presence` events, `direct` messages and notifications.
//!
//! A user's home core is `bus::home_core(user)`, like a room's. Cores tell
//! it when a connection of the user authenticates or goes away, and when
//! one joins or leaves a room. Presence is per user, not per connection: a
//! user is online while any connection is, and goes `offline` only after
//! the last one has been gone for the grace period (a reconnect within it
//! changes nothing). The rooms of a user who just left are kept through the
//! grace period, so the `offline` event reaches the people who shared them.
//!
//! This module must not send anything or arm timers: the core loop routes
//! what these functions decide and runs the grace timer.

use std::collections::HashMap;
use std::sync::Arc;

/// A user's presence status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Connected.
    Online,
    /// Connected, away.
    Away,
    /// Connected, busy.
    Busy,
    /// No connection for the grace period.
    Offline,
}

impl Status {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Away => "away",
            Status::Busy => "busy",
            Status::Offline => "offline",
        }
    }

    /// A status a client may set.
    pub fn parse_settable(s: &str) -> Option<Status> {
        match s {
            "online" => Some(Status::Online),
            "away" => Some(Status::Away),
            "busy" => Some(Status::Busy),
            _ => None,
        }
    }
}

/// One user at its home core.
#[derive(Debug)]
pub struct UserHome {
    /// Display name (from the latest connection).
    pub name: Option<Arc<str>>,
    /// Connections per core.
    conns: Vec<u32>,
    total: u32,
    /// Current status (never `Offline` while the entry exists).
    pub status: Status,
    /// Rooms with the number of the user's member connections in them;
    /// while the user is gone (grace), the rooms they were last in, at 0.
    rooms: HashMap<Arc<str>, u32>,
    /// The last connection went away (grace running), monotonic ms.
    gone_since: Option<u64>,
    /// Guards the grace timer against a reconnect in between.
    pub grace_gen: u32,
}

impl UserHome {
    /// Cores holding at least one connection of the user.
    pub fn cores(&self) -> impl Iterator<Item = usize> + '_ {
        self.conns
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n > 0)
            .map(|(c, _)| c)
    }

    /// Connections of the user, all cores.
    pub fn connections(&self) -> u32 {
        self.total
    }

    /// The rooms the user is (or, during the grace, was last) in.
    pub fn rooms(&self) -> Vec<Arc<str>> {
        self.rooms.keys().cloned().collect()
    }
}

/// Users whose home is this core.
#[derive(Debug)]
pub struct UserHomes {
    users: HashMap<Arc<str>, UserHome>,
    cores: usize,
}

/// A presence change to announce to the user's rooms.
#[derive(Debug, PartialEq, Eq)]
pub struct Change {
    /// New status.
    pub status: Status,
    /// Rooms whose members hear of it.
    pub rooms: Vec<Arc<str>>,
}

impl UserHomes {
    /// An empty table for a server of `cores` cores.
    pub fn new(cores: usize) -> Self {
        UserHomes {
            users: HashMap::new(),
            cores,
        }
    }

    /// The user, if known (connected or within the grace).
    pub fn get(&self, user: &str) -> Option<&UserHome> {
        self.users.get(user)
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
        self.users.values().filter(|u| u.total > 0).count()
    }

    /// A connection of `user` on `core` authenticated. Returns whether the
    /// user came online (was neither connected nor within the grace).
    pub fn connect(&mut self, user: &Arc<str>, name: Option<&Arc<str>>, core: usize) -> bool {
        let cores = self.cores;
        let mut fresh = false;
        let u = self.users.entry(user.clone()).or_insert_with(|| {
            fresh = true;
            UserHome {
                name: None,
                conns: vec![0; cores],
                total: 0,
                status: Status::Online,
                rooms: HashMap::new(),
                gone_since: None,
                grace_gen: 0,
            }
        });
        if let Some(name) = name {
            u.name = Some(name.clone());
        }
        if u.total == 0 && u.gone_since.take().is_some() {
            // Back within the grace: the rooms kept for the offline event
            // are rejoined by the new connection if it wants them.
            u.rooms.retain(|_, n| *n > 0);
            u.grace_gen = u.grace_gen.wrapping_add(1);
        }
        u.conns[core] += 1;
        u.total += 1;
        fresh
    }

    /// A connection of `user` on `core` went away while in `rooms`. Returns
    /// the grace generation to arm the offline timer with when it was the
    /// user's last connection.
    pub fn disconnect(
        &mut self,
        user: &str,
        core: usize,
        rooms: &[Arc<str>],
        now_ms: u64,
    ) -> Option<u32> {
        let u = self.users.get_mut(user)?;
        if u.conns[core] == 0 {
            return None; // not counted (never authenticated here)
        }
        u.conns[core] -= 1;
        u.total -= 1;
        let last = u.total == 0;
        for room in rooms {
            if let Some(n) = u.rooms.get_mut(room) {
                *n = n.saturating_sub(1);
                if *n == 0 && !last {
                    u.rooms.remove(room);
                }
            }
        }
        if last {
            // Keep every room at 0 for the offline event.
            for n in u.rooms.values_mut() {
                *n = 0;
            }
            u.gone_since = Some(now_ms);
            u.grace_gen = u.grace_gen.wrapping_add(1);
            return Some(u.grace_gen);
        }
        None
    }

    /// A connection of `user` joined `room`. Returns the user's status,
    /// which the room's home core is told (it may have just heard an
    /// `offline` that this reconnect overtook).
    pub fn room_joined(&mut self, user: &str, room: &Arc<str>) -> Option<Status> {
        let u = self.users.get_mut(user)?;
        *u.rooms.entry(room.clone()).or_insert(0) += 1;
        Some(u.status)
    }

    /// A connection of `user` left `room` (the user is still connected).
    pub fn room_left(&mut self, user: &str, room: &str) {
        if let Some(u) = self.users.get_mut(user)
            && let Some(n) = u.rooms.get_mut(room)
        {
            *n = n.saturating_sub(1);
            if *n == 0 && u.total > 0 {
                u.rooms.remove(room);
            }
        }
    }

    /// The user set a status; returns the change when it is one.
    pub fn set_status(&mut self, user: &str, status: Status) -> Option<Change> {
        let u = self.users.get_mut(user)?;
        if u.status == status || u.total == 0 {
            return None;
        }
        u.status = status;
        Some(Change {
            status,
            rooms: u.rooms(),
        })
    }

    /// The grace timer of `user` fired: when the user is still gone (and
    /// the timer is current), forget them and return the `offline` change.
    pub fn grace_expired(&mut self, user: &str, grace_gen: u32) -> Option<Change> {
        let u = self.users.get(user)?;
        if u.total > 0 || u.gone_since.is_none() || u.grace_gen != grace_gen {
            return None;
        }
        let u = self.users.remove(user)?;
        Some(Change {
            status: Status::Offline,
            rooms: u.rooms(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Arc<str> {
        s.into()
    }

    #[test]
    fn online_once_across_cores_offline_after_the_last_and_the_grace() {
        let mut h = UserHomes::new(2);
        let (u, r) = (a("u"), a("room"));
        assert!(h.connect(&u, None, 0), "first connection: online");
        assert!(!h.connect(&u, None, 1), "second connection on another core");
        assert_eq!(h.get("u").unwrap().cores().collect::<Vec<_>>(), [0, 1]);
        h.room_joined("u", &r);
        h.room_joined("u", &r);
        assert_eq!(h.disconnect("u", 0, std::slice::from_ref(&r), 10), None);
        assert_eq!(
            h.get("u").unwrap().rooms(),
            std::slice::from_ref(&r),
            "still in via core 1"
        );
        let g = h.disconnect("u", 1, std::slice::from_ref(&r), 20).unwrap();
        let change = h.grace_expired("u", g).unwrap();
        assert_eq!(change.status, Status::Offline);
        assert_eq!(change.rooms, [r], "offline goes to the rooms last shared");
        assert!(h.is_empty());
    }

    #[test]
    fn a_reconnect_within_the_grace_does_not_flap() {
        let mut h = UserHomes::new(1);
        let (u, r) = (a("u"), a("room"));
        h.connect(&u, None, 0);
        h.room_joined("u", &r);
        let g = h.disconnect("u", 0, std::slice::from_ref(&r), 10).unwrap();
        assert!(
            !h.connect(&u, None, 0),
            "back within the grace: no online event"
        );
        assert_eq!(h.grace_expired("u", g), None, "the stale timer is ignored");
        assert!(h.get("u").unwrap().rooms().is_empty(), "kept rooms dropped");
        assert_eq!(h.get("u").unwrap().connections(), 1);
    }

    #[test]
    fn status_changes_reach_the_current_rooms_only_when_they_change() {
        let mut h = UserHomes::new(1);
        let (u, r1, r2) = (a("u"), a("r1"), a("r2"));
        h.connect(&u, None, 0);
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
