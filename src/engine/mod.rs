//! The engine seam: what the socket layer (`core/`) asks of sequencing,
//! history, membership and presence, and what it is told back.
//!
//! A core turns what its connections want into [`Command`]s and hands them
//! to the engine through its [`Link`]; the engine answers with [`Event`]s
//! that name connections and rooms *on that core* (deliver this frame to
//! your members of room R, send this reply to connection C, ...). The core
//! does not know which engine runs:
//!
//! - [`memory`]: one node. Each room and each user has a home core
//!   (`home_core(name)`) whose [`memory::Home`] assigns seqs, keeps the
//!   history window, counts members per core and tracks presence, with the
//!   embedded store thread for durability. Commands travel the bus to the
//!   home core, events travel back; the path is the one measured in
//!   docs/BENCHMARKS.md.
//! - [`redis`]: several nodes joined through Redis. A bridge thread per
//!   node owns the Redis connections; it sequences publishes with a Lua
//!   script, keeps the node's interest (which cores have members of which
//!   room), subscribes to the rooms and users the node has, and hands
//!   framed events to the cores.
//!
//! This module only names the messages and where a command goes; it must
//! not hold state. Payloads that reach many connections are framed once
//! (`Bytes`, shared by reference).

pub mod memory;
pub mod presence;
pub mod redis;
pub mod replies;

use crate::proto::Status;
use crate::proto::command::{Id, Since};
use bytes::Bytes;
use std::sync::Arc;

/// A connection on some core: slab key plus the generation that guards
/// against the key having been reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnRef {
    /// Slab key on its core.
    pub key: u32,
    /// Generation of the connection in that slot.
    pub generation: u32,
}

/// Where the answer to a command goes.
#[derive(Debug)]
pub struct ReplyTo {
    /// Core of the asking connection.
    pub core: usize,
    /// The asking connection.
    pub conn: ConnRef,
    /// Its command id.
    pub id: Option<Id>,
    /// The asker is an HTTP API request (`/api/publish`): answer with an
    /// HTTP response instead of an event.
    pub http: bool,
}

/// A count being gathered on some core (`direct` and notification
/// `delivered`, stats): where the parts report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AggRef {
    /// The gathering core.
    pub core: usize,
    /// Its token for the gathering.
    pub token: u64,
}

/// Where a room's description goes.
#[derive(Debug)]
pub enum Answer {
    /// A WebSocket command (`members`): a reply event.
    Ws(ReplyTo),
    /// An HTTP request waiting on `core` (`/api/rooms/..`).
    Http {
        /// Core of the request.
        core: usize,
        /// The HTTP connection.
        conn: ConnRef,
    },
}

/// What the socket layer asks of the engine.
#[derive(Debug)]
pub enum Command {
    /// Add a member connection to a room (or, with `rejoin`, just report
    /// the room's position); answered with [`Event::JoinAck`] on the same
    /// path that then carries the room's messages.
    Join {
        /// Room.
        room: Arc<str>,
        /// Core of the joining connection.
        core: usize,
        /// The joining connection.
        conn: ConnRef,
        /// Its user.
        user: Arc<str>,
        /// The user's display name.
        name: Option<Arc<str>>,
        /// Command id for the `ack`.
        id: Option<Id>,
        /// Recovery position.
        since: Option<Since>,
        /// Already a member.
        rejoin: bool,
    },
    /// One member connection of `user` on `core` left `room`.
    Leave {
        /// Room.
        room: Arc<str>,
        /// Core of the connection.
        core: usize,
        /// Its user.
        user: Arc<str>,
    },
    /// Sequence a message and fan it out; `reply` gets the `ack`.
    Publish {
        /// Room.
        room: Arc<str>,
        /// Where the `ack` goes (`None` for server-side publishes).
        reply: Option<ReplyTo>,
        /// The sender's part of the event (`"from"` and `"data"`).
        tail: String,
        /// Idempotency key: a key already used in the room within its
        /// dedupe window is not published again (the ack repeats the
        /// first seq and ts, with `"duplicate": true`).
        key: Option<Arc<str>>,
    },
    /// A page of a room's history.
    History {
        /// Room.
        room: Arc<str>,
        /// Where the reply goes.
        reply: ReplyTo,
        /// Only messages with a smaller seq.
        before: Option<u64>,
        /// At most this many.
        limit: u64,
    },
    /// A room's members (`members`) or description (`GET /api/rooms/..`).
    Members {
        /// Room.
        room: Arc<str>,
        /// Command id (WebSocket) for the reply.
        id: Option<Id>,
        /// Where the answer goes.
        answer: Answer,
    },
    /// A member's typing state.
    Typing {
        /// Room.
        room: Arc<str>,
        /// User.
        user: Arc<str>,
        /// Typing or stopped.
        typing: bool,
    },
    /// The user set a status.
    SetStatus {
        /// User.
        user: Arc<str>,
        /// Status.
        status: Status,
    },
    /// A connection of the user authenticated.
    UserConnected {
        /// User.
        user: Arc<str>,
        /// Display name.
        name: Option<Arc<str>>,
        /// Core of the connection.
        core: usize,
        /// The connection.
        conn: ConnRef,
    },
    /// A connection of the user went away while in these rooms.
    UserGone {
        /// User.
        user: Arc<str>,
        /// Core of the connection.
        core: usize,
        /// The connection.
        conn: ConnRef,
        /// Rooms the connection was in.
        rooms: Vec<Arc<str>>,
    },
    /// A connection of the user joined or left a room.
    UserRoom {
        /// User.
        user: Arc<str>,
        /// Room.
        room: Arc<str>,
        /// Joined (else left).
        joined: bool,
    },
    /// Deliver `frame` to every connection of `user`; the count reaches `agg`
    /// as [`Event::AggExpect`] plus [`Event::AggDone`]s.
    ToUser {
        /// Recipient.
        user: Arc<str>,
        /// The event (`direct`, `notification`), framed.
        frame: Bytes,
        /// Where the count goes.
        agg: AggRef,
    },
    /// Deliver `frame` to every authenticated connection of the server
    /// (every node); the count reaches `agg`.
    Broadcast {
        /// The event, framed.
        frame: Bytes,
        /// Where the count goes.
        agg: AggRef,
    },
    /// The cluster's figures for `/api/stats` (Redis engine only).
    ClusterStats {
        /// Where they go (as [`Event::AggInfo`]).
        agg: AggRef,
    },
    /// A core's part of a count the Redis bridge gathers for another node
    /// ([`Report::Bridge`]).
    Delivered {
        /// The bridge's gathering.
        token: u64,
        /// Connections reached on that core.
        delivered: u64,
    },
}

/// What the engine tells a core's socket layer.
#[derive(Debug)]
pub enum Event {
    /// A join is registered: add the member locally, queue `replay` and
    /// then `frame` (the `ack`). Events of the room sent after this one
    /// are the messages after the `ack`'s seq.
    JoinAck {
        /// Room.
        room: Arc<str>,
        /// The joining connection.
        conn: ConnRef,
        /// Its user (to undo the join if the connection is gone).
        user: Arc<str>,
        /// Missed messages to send before the `ack` (recovery), framed.
        replay: Vec<Bytes>,
        /// The `ack` (or an `error`), framed.
        frame: Bytes,
        /// It was a rejoin (nothing to add).
        rejoin: bool,
        /// The join was refused (`frame` is the error): nothing to add.
        refused: bool,
    },
    /// Send `frame` to every local member of `room`.
    Deliver {
        /// Room.
        room: Arc<str>,
        /// The event (`message`, `joined`, `left`), framed.
        frame: Bytes,
        /// For a `message`: when it was sequenced (server-monotonic µs,
        /// for the delivery-latency histogram); 0 otherwise.
        at_us: u64,
    },
    /// Send `frame` to the local members of `room` except the connections
    /// of `except` (typing).
    DeliverExcept {
        /// Room.
        room: Arc<str>,
        /// User whose connections are skipped.
        except: Arc<str>,
        /// The event, framed.
        frame: Bytes,
    },
    /// A user's presence changed: tell the local members of `rooms` other
    /// than the user, each connection once, except members of `skip`
    /// (they heard of this change already).
    Presence {
        /// User.
        user: Arc<str>,
        /// The rooms whose members hear of it.
        rooms: Arc<[Arc<str>]>,
        /// Rooms whose members already got this change.
        skip: Arc<[Arc<str>]>,
        /// The `presence` event, framed.
        frame: Bytes,
    },
    /// The engine can no longer continue this core's members of `room` in
    /// order (Redis lost the room's history, or this node missed messages
    /// the stream no longer holds): close them with 4009, so they rejoin
    /// with `since` and learn of the gap (`recovered: false`).
    Evict {
        /// Room.
        room: Arc<str>,
    },
    /// Send `frame` to one connection.
    Reply {
        /// The connection.
        conn: ConnRef,
        /// The event, framed.
        frame: Bytes,
    },
    /// Answer an HTTP request waiting on this core.
    HttpReply {
        /// The HTTP connection.
        conn: ConnRef,
        /// Status.
        status: u16,
        /// JSON body.
        body: String,
    },
    /// Deliver `frame` to these connections (those still there); report
    /// the count to `agg` when given.
    UserDeliver {
        /// A user's connections on this core.
        conns: Vec<ConnRef>,
        /// The event, framed.
        frame: Bytes,
        /// Where the count goes.
        agg: Option<AggRef>,
    },
    /// Deliver `frame` to every authenticated connection of this core;
    /// report the count to `agg`.
    Broadcast {
        /// The event, framed.
        frame: Bytes,
        /// Where the count goes.
        agg: Report,
    },
    /// To a gathering core: `parts` more reports are coming.
    AggExpect {
        /// The gathering.
        token: u64,
        /// Reports to expect.
        parts: u32,
    },
    /// To a gathering core: one report.
    AggDone {
        /// The gathering.
        token: u64,
        /// Connections reached.
        delivered: u64,
    },
    /// To a gathering core: the gathering cannot complete (the engine is
    /// unavailable); answer with this error.
    AggFailed {
        /// The gathering.
        token: u64,
        /// Why.
        code: crate::proto::ErrorCode,
    },
    /// To a gathering core: the cluster's part of `/api/stats` (JSON).
    AggInfo {
        /// The gathering.
        token: u64,
        /// `{"nodes":..,"connections":..,"per_node":[..]}`
        json: String,
    },
}

/// Where a core reports how many connections a delivery reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// To a gathering core of this node.
    Core(AggRef),
    /// To this node's Redis bridge (which sums its cores for another node).
    Bridge(u64),
}

/// How a core hands commands to the engine.
#[derive(Debug, Clone)]
pub enum Link {
    /// The memory engine: commands go to the home core of their room or
    /// user over the bus.
    Memory,
    /// The Redis engine: commands go to this node's bridge thread.
    Redis(redis::Handle),
}

/// Where the memory engine handles a command: the home core of its room or
/// user, or every core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// One core.
    Core(usize),
    /// Every core.
    Every,
}

impl Command {
    /// The memory engine's home for this command on a server of `cores`
    /// cores.
    pub fn home(&self, cores: usize) -> Dest {
        let core = match self {
            Command::Join { room, .. }
            | Command::Leave { room, .. }
            | Command::Publish { room, .. }
            | Command::History { room, .. }
            | Command::Members { room, .. }
            | Command::Typing { room, .. } => home_core(room, cores),
            Command::SetStatus { user, .. }
            | Command::UserConnected { user, .. }
            | Command::UserGone { user, .. }
            | Command::UserRoom { user, .. }
            | Command::ToUser { user, .. } => home_core(user, cores),
            Command::Broadcast { .. }
            | Command::Delivered { .. }
            | Command::ClusterStats { .. } => {
                return Dest::Every;
            }
        };
        Dest::Core(core)
    }
}

/// The home core of a room or user: a stable FNV-1a hash modulo the core
/// count, the same on every core and every run.
pub fn home_core(name: &str, cores: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % cores as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_core_is_stable_and_spreads() {
        assert_eq!(home_core("lobby", 1), 0);
        assert_eq!(home_core("lobby", 4), home_core("lobby", 4));
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[home_core(&format!("room-{i}"), 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }

    #[test]
    fn commands_go_to_the_home_of_their_room_or_user() {
        let room: Arc<str> = "lobby".into();
        let user: Arc<str> = "ann".into();
        let leave = Command::Leave {
            room: room.clone(),
            core: 0,
            user: user.clone(),
        };
        assert_eq!(leave.home(7), Dest::Core(home_core("lobby", 7)));
        let status = Command::SetStatus {
            user,
            status: Status::Away,
        };
        assert_eq!(status.home(7), Dest::Core(home_core("ann", 7)));
        let b = Command::Broadcast {
            frame: Bytes::new(),
            agg: AggRef { core: 0, token: 1 },
        };
        assert_eq!(b.home(7), Dest::Every);
    }
}
