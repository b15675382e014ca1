//! The cross-core bus: one unbounded crossbeam channel of message batches
//! per core, paired with that core's `mio::Waker`.
//!
//! A core collects everything it has for another core during one loop
//! iteration in its [`Outbox`] and sends it as one batch with one wake-up.
//! Payloads are already encoded as complete WebSocket frames and
//! reference-counted (`Bytes`), so a broadcast crosses cores and reaches
//! every connection without being copied. The bus must not hold protocol
//! logic: it only names the messages and moves them.

use crate::proto::command::{Id, Since};
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use mio::Waker;
use std::sync::Arc;

/// A connection on some core: slab key plus the generation that guards
/// against the key having been reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnRef {
    /// Slab key on its core.
    pub key: u32,
    /// Generation of the connection in that slot.
    pub generation: u32,
}

/// Where the `ack` of a publish goes.
#[derive(Debug)]
pub struct ReplyTo {
    /// Core of the publishing connection.
    pub core: usize,
    /// The publishing connection.
    pub conn: ConnRef,
    /// Its command id.
    pub id: Option<Id>,
    /// The publisher is an HTTP API request (`/api/publish`): answer with
    /// an HTTP response instead of an `ack` event.
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

/// Where a room's status reply goes.
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

/// One message between cores.
#[derive(Debug)]
pub enum BusMsg {
    /// To a room's home core: add a member connection (or, with `rejoin`,
    /// just report the room's position).
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
    /// From the home core: the join is registered; add the member locally
    /// and send it `frame` (the `ack`).
    JoinAck {
        /// Room.
        room: Arc<str>,
        /// The joining connection.
        conn: ConnRef,
        /// Its user (to undo the join if the connection is gone).
        user: Arc<str>,
        /// Missed messages to send before the `ack` (recovery), framed.
        replay: Vec<Bytes>,
        /// The `ack`, framed.
        frame: Bytes,
        /// It was a rejoin (nothing to add).
        rejoin: bool,
    },
    /// To a room's home core: one member connection of `user` on `core` left.
    Leave {
        /// Room.
        room: Arc<str>,
        /// Core of the connection.
        core: usize,
        /// Its user.
        user: Arc<str>,
    },
    /// To a room's home core: sequence and fan out a message.
    Publish {
        /// Room.
        room: Arc<str>,
        /// Where the `ack` goes (`None` for server-side publishes).
        reply: Option<ReplyTo>,
        /// The sender's part of the event (`"from"` and `"data"`).
        tail: String,
    },
    /// From a home core: send `frame` to every local member of `room`.
    Deliver {
        /// Room.
        room: Arc<str>,
        /// The event (`message`, `joined`, `left`), framed.
        frame: Bytes,
        /// For a `message`: when it was sequenced (server-monotonic µs,
        /// for the delivery-latency histogram); 0 otherwise.
        at_us: u64,
    },
    /// Send `frame` to one connection.
    Reply {
        /// The connection.
        conn: ConnRef,
        /// The event, framed.
        frame: Bytes,
    },
    /// To a room's home core: answer a `history` command.
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
    /// To a user's home core: a connection of the user authenticated.
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
    /// To a user's home core: a connection of the user went away while in
    /// these rooms.
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
    /// To a user's home core: a connection of the user joined or left a room.
    UserRoom {
        /// User.
        user: Arc<str>,
        /// Room.
        room: Arc<str>,
        /// Joined (else left).
        joined: bool,
    },
    /// To a user's home core: the user set a status.
    SetStatus {
        /// User.
        user: Arc<str>,
        /// Status.
        status: crate::presence::Status,
    },
    /// To every core: a user's presence changed; tell the members of
    /// `rooms` (other than the user) and note the status in homed rooms.
    Presence {
        /// User.
        user: Arc<str>,
        /// New status.
        status: crate::presence::Status,
        /// The user's rooms.
        rooms: Arc<[Arc<str>]>,
        /// The `presence` event, framed.
        frame: Bytes,
    },
    /// From a user's home core to a room's home core: the user (joining)
    /// is not `online`.
    RoomStatus {
        /// Room.
        room: Arc<str>,
        /// User.
        user: Arc<str>,
        /// Status.
        status: crate::presence::Status,
    },
    /// To a room's home core: a member's typing state.
    Typing {
        /// Room.
        room: Arc<str>,
        /// User.
        user: Arc<str>,
        /// Typing or stopped.
        typing: bool,
    },
    /// From a room's home core: send `frame` to the local members of
    /// `room` except the connections of `except`.
    DeliverExcept {
        /// Room.
        room: Arc<str>,
        /// User whose connections are skipped.
        except: Arc<str>,
        /// The event, framed.
        frame: Bytes,
    },
    /// To a room's home core: list its members / describe it.
    Members {
        /// Room.
        room: Arc<str>,
        /// Command id (WebSocket) for the reply.
        id: Option<Id>,
        /// Where the answer goes.
        answer: Answer,
    },
    /// To a user's home core: deliver `frame` to every connection of
    /// `user`, reporting to `agg`.
    ToUser {
        /// Recipient.
        user: Arc<str>,
        /// The event (`direct`, `notification`), framed.
        frame: Bytes,
        /// Where the count goes.
        agg: AggRef,
    },
    /// From a user's home core to a core holding connections of a user:
    /// deliver `frame` to them and report the count to `agg`.
    UserDeliver {
        /// The user's connections on that core.
        conns: Vec<ConnRef>,
        /// The event, framed.
        frame: Bytes,
        /// Where the count goes.
        agg: AggRef,
    },
    /// To every core: deliver `frame` to every authenticated connection,
    /// reporting to `agg`.
    Broadcast {
        /// The event, framed.
        frame: Bytes,
        /// Where the count goes.
        agg: AggRef,
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
    /// To every core: send a snapshot of your counters to `agg`.
    StatsRequest {
        /// Where it goes.
        agg: AggRef,
    },
    /// A core's snapshot, to a gathering core.
    StatsReply {
        /// The gathering.
        token: u64,
        /// The snapshot.
        snapshot: Box<crate::metrics::Snapshot>,
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
    /// Start draining: stop accepting, tell clients to reconnect, exit.
    Shutdown,
}

/// Senders and wakers of every core; cheap to clone.
#[derive(Clone, Debug)]
pub struct Bus {
    senders: Arc<[Sender<Vec<BusMsg>>]>,
    wakers: Arc<[Arc<Waker>]>,
}

impl Bus {
    /// A bus over the given per-core senders and wakers (same order).
    pub fn new(senders: Vec<Sender<Vec<BusMsg>>>, wakers: Vec<Arc<Waker>>) -> Self {
        assert_eq!(senders.len(), wakers.len());
        Bus {
            senders: senders.into(),
            wakers: wakers.into(),
        }
    }

    /// Number of cores.
    pub fn cores(&self) -> usize {
        self.senders.len()
    }

    /// Sends a batch to `core` and wakes it. A core that has exited is
    /// ignored (shutdown).
    pub fn send(&self, core: usize, batch: Vec<BusMsg>) {
        if self.senders[core].send(batch).is_ok() {
            let _ = self.wakers[core].wake();
        }
    }
}

/// Per-core batching of outgoing bus messages.
#[derive(Debug)]
pub struct Outbox {
    pending: Vec<Vec<BusMsg>>,
}

impl Outbox {
    /// An outbox for `cores` destinations.
    pub fn new(cores: usize) -> Self {
        Outbox {
            pending: (0..cores).map(|_| Vec::new()).collect(),
        }
    }

    /// Queues `msg` for `core`.
    pub fn push(&mut self, core: usize, msg: BusMsg) {
        self.pending[core].push(msg);
    }

    /// Sends every non-empty batch (one wake-up per destination).
    pub fn flush(&mut self, bus: &Bus) {
        for (core, batch) in self.pending.iter_mut().enumerate() {
            if !batch.is_empty() {
                let cap = batch.capacity();
                bus.send(
                    core,
                    std::mem::replace(batch, Vec::with_capacity(cap.min(256))),
                );
            }
        }
    }
}

/// Receiving end of a core: its channel.
pub type Inbox = Receiver<Vec<BusMsg>>;

/// The home core of `room`: a stable FNV-1a hash modulo the core count, the
/// same on every core and every run.
pub fn home_core(room: &str, cores: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in room.bytes() {
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
}
