//! The memory engine: one node, rooms and users homed on its cores.
//!
//! Every room and every user has a home core (`home_core(name) % cores`).
//! A core's [`Home`] holds the rooms and users homed there — a room's seq,
//! epoch, history window, members per core (the interest set) and typing
//! state ([`rooms`]); a user's connections, status and rooms ([`users`]) —
//! plus this core's end of the durable store ([`store`]). Commands reach
//! the home core over the bus ([`HomeMsg::Cmd`]); the home decides and
//! emits [`Out`]s: events for cores' socket layers, messages for other
//! homes, and timers for the core's wheel. It runs on the core thread,
//! so the publish path is `sender core -> home core -> cores with
//! members`, with no thread in between.
//!
//! This module must not touch sockets or connections: it knows connections
//! only as [`ConnRef`]s on some core, and the core carries out its [`Out`]s.

pub mod dedupe;
pub mod history;
pub mod rooms;
pub mod store;
pub mod users;

use crate::config::Config;
use crate::engine::{Command, ConnRef, Event};
use crate::proto::Status;
use history::{Retention, RoomModes};
use std::sync::Arc;
use store::{LoadedRoom, StoreHandle};

/// Home rooms without members are forgotten after this long idle, ms.
pub const ROOM_IDLE_MS: u64 = 600_000;
/// How often idle home rooms are swept, ms.
const SWEEP_MS: u64 = 60_000;
/// Period of the home's housekeeping tick (typing expiry), ms.
const TICK_MS: u64 = 1000;

/// A message for a core's home part.
#[derive(Debug)]
pub enum HomeMsg {
    /// A command from some core's socket layer.
    Cmd(Command),
    /// From the store thread: `room`'s messages up to `upto` are durable
    /// (sync mode): deliver and acknowledge them.
    Stored {
        /// Room.
        room: Arc<str>,
        /// Highest durable seq.
        upto: u64,
    },
    /// From the store thread: writing `room`'s messages failed; fail its
    /// pending publishes and roll its seq back.
    StoreFailed {
        /// Room.
        room: Arc<str>,
    },
    /// From a user's home to a room's home: note the member's status (for
    /// `members`).
    RoomStatus {
        /// Room.
        room: Arc<str>,
        /// User.
        user: Arc<str>,
        /// Status.
        status: Status,
    },
}

/// A timer a home asks its core to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HomeTimer {
    /// A user's presence grace ended (slot in the grace table, grace
    /// generation).
    Grace {
        /// Slot in the grace table.
        slot: u32,
        /// Grace generation (a reconnect makes the timer stale).
        generation: u32,
    },
    /// Forget idle rooms.
    Sweep,
    /// Housekeeping (typing expiry).
    Tick,
}

/// What a home asks its core to carry out.
#[derive(Debug)]
pub enum Out {
    /// An event for the socket layer of `core`.
    Event(usize, Event),
    /// A message for the home part of `core`.
    Home(usize, HomeMsg),
    /// Run this timer at `at_ms` (monotonic) and hand it back.
    Timer(u64, HomeTimer),
}

/// The time of the core's current loop iteration.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Server-monotonic ms.
    pub now_ms: u64,
    /// Server-monotonic µs.
    pub now_us: u64,
}

impl Clock {
    /// Unix time in ms (event timestamps).
    pub fn unix_ms(&self) -> u64 {
        crate::auth::unix_now_ms()
    }
}

/// The rooms and users homed on one core.
#[derive(Debug)]
pub struct Home {
    id: usize,
    cores: usize,
    /// Rooms homed here.
    pub rooms: rooms::RoomHomes,
    /// Users homed here.
    pub users: users::UserHomes,
    out: Vec<Out>,
}

impl Home {
    /// The home part of core `id` of `cores`, with the rooms loaded from
    /// the store whose home it is.
    pub fn new(
        id: usize,
        cores: usize,
        config: &Config,
        store: Option<StoreHandle>,
        loaded: Vec<LoadedRoom>,
        clock: Clock,
    ) -> Home {
        let h = &config.history;
        let retention = Retention {
            size: h.size,
            ttl_ms: h.ttl.saturating_mul(1000),
        };
        let mut rooms =
            rooms::RoomHomes::new(cores, ROOM_IDLE_MS, retention, RoomModes::new(h), store);
        let unix_ms = clock.unix_ms();
        for room in loaded {
            rooms.restore(room, clock.now_ms, unix_ms);
        }
        let out = vec![
            Out::Timer(clock.now_ms + SWEEP_MS, HomeTimer::Sweep),
            Out::Timer(clock.now_ms + TICK_MS, HomeTimer::Tick),
        ];
        Home {
            id,
            cores,
            rooms,
            users: users::UserHomes::new(config.presence.grace.saturating_mul(1000)),
            out,
        }
    }

    /// Handles one message for this home.
    pub fn handle(&mut self, msg: HomeMsg, clock: Clock) {
        let mut cx = Cx {
            id: self.id,
            cores: self.cores,
            clock,
            out: &mut self.out,
        };
        match msg {
            HomeMsg::Cmd(cmd) => match cmd {
                Command::Join {
                    room,
                    core,
                    conn,
                    user,
                    name,
                    id,
                    since,
                    rejoin,
                } => {
                    let who = rooms::Joiner {
                        core,
                        conn,
                        user,
                        name,
                    };
                    self.rooms.join(&mut cx, room, who, id, since, rejoin);
                }
                Command::Leave { room, core, user } => self.rooms.leave(&mut cx, room, core, user),
                Command::Publish {
                    room,
                    reply,
                    tail,
                    key,
                } => self.rooms.publish(&mut cx, room, reply, tail, key),
                Command::History {
                    room,
                    reply,
                    before,
                    limit,
                } => self.rooms.history(&mut cx, &room, reply, before, limit),
                Command::Members { room, id, answer } => {
                    self.rooms.members(&mut cx, &room, id, answer)
                }
                Command::Typing { room, user, typing } => {
                    self.rooms.typing(&mut cx, room, user, typing)
                }
                Command::SetStatus { user, status } => self.users.set_status(&mut cx, user, status),
                Command::UserConnected {
                    user, core, conn, ..
                } => self.users.connect(&user, core, conn),
                Command::UserGone {
                    user,
                    core,
                    conn,
                    rooms,
                } => self.users.disconnect(&mut cx, user, core, conn, &rooms),
                Command::UserRoom { user, room, joined } => {
                    self.users.room_changed(&mut cx, user, room, joined)
                }
                Command::ToUser { user, frame, agg } => {
                    self.users.to_user(&mut cx, &user, frame, agg)
                }
                // The core sends a broadcast to every core's socket layer
                // itself, and bridge reports do not exist in one node.
                Command::Broadcast { .. }
                | Command::Delivered { .. }
                | Command::ClusterStats { .. } => {}
            },
            HomeMsg::Stored { room, upto } => self.rooms.stored(&mut cx, &room, upto),
            HomeMsg::StoreFailed { room } => self.rooms.store_failed(&mut cx, room),
            HomeMsg::RoomStatus { room, user, status } => {
                self.rooms.note_status(&room, &user, status)
            }
        }
    }

    /// A timer this home asked for fired.
    pub fn on_timer(&mut self, t: HomeTimer, clock: Clock) {
        let mut cx = Cx {
            id: self.id,
            cores: self.cores,
            clock,
            out: &mut self.out,
        };
        match t {
            HomeTimer::Grace { slot, generation } => {
                self.users.grace_timer(&mut cx, slot as usize, generation)
            }
            HomeTimer::Sweep => {
                let dropped = self.rooms.sweep(clock.now_ms, clock.unix_ms());
                if dropped > 0 {
                    tracing::debug!(core = self.id, dropped, "idle rooms forgotten");
                }
                cx.timer(clock.now_ms + SWEEP_MS, HomeTimer::Sweep);
            }
            HomeTimer::Tick => {
                self.rooms.expire_typing(&mut cx);
                cx.timer(clock.now_ms + TICK_MS, HomeTimer::Tick);
            }
        }
    }

    /// Takes what the last calls decided, for the core to carry out.
    pub fn take_out(&mut self, into: &mut Vec<Out>) {
        into.append(&mut self.out);
    }

    /// Messages published into rooms homed here.
    pub fn published(&self) -> u64 {
        self.rooms.published
    }
}

/// What a home's handlers work with: the time, and where their decisions go.
pub struct Cx<'a> {
    /// This core.
    pub id: usize,
    /// Cores of the server.
    pub cores: usize,
    /// Time of the iteration.
    pub clock: Clock,
    out: &'a mut Vec<Out>,
}

impl Cx<'_> {
    /// An event for `core`'s socket layer.
    pub fn event(&mut self, core: usize, ev: Event) {
        self.out.push(Out::Event(core, ev));
    }

    /// A message for the home part of `core`.
    pub fn home(&mut self, core: usize, msg: HomeMsg) {
        self.out.push(Out::Home(core, msg));
    }

    /// A timer for this home.
    pub fn timer(&mut self, at_ms: u64, t: HomeTimer) {
        self.out.push(Out::Timer(at_ms, t));
    }

    /// A framed reply to one connection on `core`.
    pub fn reply(&mut self, core: usize, conn: ConnRef, text: &str) {
        let frame = crate::frame::text_frame(text.as_bytes());
        self.event(core, Event::Reply { conn, frame });
    }
}
