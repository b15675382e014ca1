//! The user home of a core in the memory engine: carries out the user
//! commands for the users homed here (`engine::home_core(user)`) on their
//! [`UserTable`] — connect, disconnect with the grace timer, room changes,
//! status, direct messages and notifications — and emits what they cause.
//! Cores tell the home when a connection of the user authenticates or goes
//! away, and when one joins or leaves a room. This module must not touch
//! connections or sockets.

use super::{Cx, HomeMsg, HomeTimer};
use crate::engine::presence::{Change, UserTable, presence_frame};
use crate::engine::{AggRef, ConnRef, Event, home_core};
use crate::proto::Status;
use bytes::Bytes;
use slab::Slab;
use std::sync::Arc;

/// The user home of one core: the table, the grace timers, and the
/// commands on them.
#[derive(Debug)]
pub struct UserHomes {
    table: UserTable,
    /// Pending presence grace timers: (user, grace generation).
    grace_timers: Slab<(Arc<str>, u32)>,
    grace_ms: u64,
}

impl UserHomes {
    /// A user home whose users go offline `grace_ms` after their last
    /// connection.
    pub fn new(grace_ms: u64) -> Self {
        UserHomes {
            table: UserTable::new(),
            grace_timers: Slab::new(),
            grace_ms,
        }
    }

    /// Users with at least one connection.
    pub fn online(&self) -> usize {
        self.table.online()
    }

    /// A connection of `user` authenticated.
    pub fn connect(&mut self, user: &Arc<str>, core: usize, conn: ConnRef) {
        self.table.connect(user, core, conn);
    }

    /// A connection of `user` went away while in `rooms`; the last one
    /// starts the grace period.
    pub fn disconnect(
        &mut self,
        cx: &mut Cx<'_>,
        user: Arc<str>,
        core: usize,
        conn: ConnRef,
        rooms: &[Arc<str>],
    ) {
        let now = cx.clock.now_ms;
        if let Some(generation) = self.table.disconnect(&user, core, conn, rooms, now) {
            let slot = self.grace_timers.insert((user, generation)) as u32;
            cx.timer(now + self.grace_ms, HomeTimer::Grace { slot, generation });
        }
    }

    /// A grace timer fired: `offline` when the user is still gone.
    pub fn grace_timer(&mut self, cx: &mut Cx<'_>, slot: usize, generation: u32) {
        let Some((user, grace_gen)) = self.grace_timers.try_remove(slot) else {
            return;
        };
        debug_assert_eq!(grace_gen, generation);
        if let Some(change) = self.table.grace_expired(&user, grace_gen) {
            announce(cx, user, change);
        }
    }

    /// A connection of `user` joined or left `room`. A join tells the
    /// room's home the user's status (it may have just heard an `offline`
    /// that this reconnect overtook).
    pub fn room_changed(&mut self, cx: &mut Cx<'_>, user: Arc<str>, room: Arc<str>, joined: bool) {
        if joined {
            if let Some(status) = self.table.room_joined(&user, &room) {
                let home = home_core(&room, cx.cores);
                cx.home(home, HomeMsg::RoomStatus { room, user, status });
            }
        } else {
            self.table.room_left(&user, &room);
        }
    }

    /// The user set a status.
    pub fn set_status(&mut self, cx: &mut Cx<'_>, user: Arc<str>, status: Status) {
        if let Some(change) = self.table.set_status(&user, status) {
            announce(cx, user, change);
        }
    }

    /// A direct message or notification for `user`: one shared frame to the
    /// cores holding the user's connections, naming them (so those cores
    /// need no index of their own); the asking core learns how many cores
    /// will report.
    pub fn to_user(&mut self, cx: &mut Cx<'_>, user: &str, frame: Bytes, agg: AggRef) {
        let by_core = self
            .table
            .get(user)
            .map(|u| u.by_core())
            .unwrap_or_default();
        let parts = by_core.len() as u32;
        cx.event(
            agg.core,
            Event::AggExpect {
                token: agg.token,
                parts,
            },
        );
        for (c, conns) in by_core {
            let ev = Event::UserDeliver {
                conns,
                frame: frame.clone(),
                agg: Some(agg),
            };
            cx.event(c, ev);
        }
    }
}

/// A presence change goes to every core (for their members of the user's
/// rooms) and to each room's home (for `members`).
fn announce(cx: &mut Cx<'_>, user: Arc<str>, change: Change) {
    if change.rooms.is_empty() {
        return; // nobody shares a room with the user
    }
    let frame = presence_frame(&user, change.status);
    for room in &change.rooms {
        let home = home_core(room, cx.cores);
        let msg = HomeMsg::RoomStatus {
            room: room.clone(),
            user: user.clone(),
            status: change.status,
        };
        cx.home(home, msg);
    }
    let rooms: Arc<[Arc<str>]> = change.rooms.into();
    for core in 0..cx.cores {
        let ev = Event::Presence {
            user: user.clone(),
            rooms: rooms.clone(),
            skip: Arc::from([]),
            frame: frame.clone(),
        };
        cx.event(core, ev);
    }
}
