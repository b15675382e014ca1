//! What the rooms and users of the bridge work with: [`Io`] (send a command
//! to Redis with the [`Want`] its reply goes to, subscribe, send an event
//! to a core, arm a timer) and the kinds of replies and timers.
//!
//! This module only carries requests to the bridge's connections and
//! outbox; it must not decide anything.

use super::Settings;
use super::conn::RespConn;
use super::rooms::JoinReq;
use super::scripts::{Keys, Scripts};
use crate::bus::{BusMsg, Outbox};
use crate::engine::{AggRef, Answer, Event, ReplyTo};
use crate::proto::command::Id;
use crate::timer::TimerWheel;
use redis::Script;
use std::collections::VecDeque;
use std::sync::Arc;

/// Most commands waiting for replies; beyond it commands fail (Redis is
/// not keeping up) and the node reconciles once the queue has drained.
pub const MAX_IN_FLIGHT: usize = 200_000;

/// What a reply is for (left in the FIFO when the command is sent).
#[derive(Debug)]
pub enum Want {
    /// Nothing; an error reply is logged under this name.
    Ignore(&'static str),
    /// A batch of publishes, grouped by room → their `ack`s.
    Publish {
        /// Each room and where the `ack`s of its messages go, in order.
        items: Vec<(Arc<str>, Vec<Option<ReplyTo>>)>,
    },
    /// A join script.
    Join {
        /// Room.
        room: Arc<str>,
        /// The join.
        req: JoinReq,
    },
    /// A room's position.
    Position {
        /// Room.
        room: Arc<str>,
    },
    /// A gap read from a room's stream (`from..=to`).
    Fill {
        /// Room.
        room: Arc<str>,
        /// First seq asked for.
        from: u64,
        /// Last seq asked for.
        to: u64,
    },
    /// A `history` page.
    History {
        /// Room.
        room: Arc<str>,
        /// Where it goes.
        reply: ReplyTo,
    },
    /// A room's description (`members`, `GET /api/rooms/..`).
    RoomInfo {
        /// Room.
        room: Arc<str>,
        /// Command id.
        id: Option<Id>,
        /// Where it goes.
        answer: Answer,
    },
    /// A user's connection counted: `{total, came online}`.
    UserConn {
        /// User.
        user: Arc<str>,
    },
    /// A user's grace ended here: 1 = offline.
    UserOffline {
        /// User.
        user: Arc<str>,
        /// The grace token the check ran with.
        token: String,
        /// Rooms the user was last in on this node.
        rooms: Vec<Arc<str>>,
    },
    /// A direct message or notification: the recipient's connections.
    Direct {
        /// Where the count goes.
        agg: AggRef,
    },
    /// A broadcast's PUBLISH: how many nodes got it.
    Broadcast {
        /// The gathering on this bridge.
        token: u64,
    },
    /// The heartbeat: expired nodes.
    Heartbeat,
    /// A probe's PUBLISH: receivers (0 = this node's subscription is gone).
    Probe,
    /// The live nodes' stats.
    ClusterStats {
        /// Where they go.
        agg: AggRef,
    },
    /// A step of reaping a dead node or reconciling this one.
    Reap(super::nodes::ReapStep),
}

/// A timer of the bridge.
#[derive(Debug, Clone)]
pub enum BTimer {
    /// A user's presence grace on this node ended.
    Grace {
        /// Slot in the grace table.
        slot: u32,
        /// Its grace generation.
        generation: u32,
    },
    /// Housekeeping.
    Tick,
    /// Heartbeat and probe.
    Heartbeat,
}

/// What the rooms' and users' handlers work with: Redis (the command FIFO
/// and the subscriptions), the cores, timers.
pub struct Io<'a> {
    /// Monotonic ms of this iteration.
    pub now_ms: u64,
    /// Monotonic µs (the cores' clock, for the delivery histogram).
    pub now_us: u64,
    /// Key names.
    pub keys: &'a Keys,
    /// The scripts.
    pub scripts: &'a Scripts,
    /// Settings.
    pub cfg: &'a Settings,
    pub(super) cmd: &'a mut RespConn,
    pub(super) fifo: &'a mut VecDeque<(Want, u64)>,
    /// Wants that could not be sent (the connection is down): failed after
    /// the handler returns.
    pub(super) failed: &'a mut Vec<Want>,
    /// Commands dropped while the connection was up (the queue was full):
    /// Redis must be reconciled with this node once it drained.
    pub(super) dropped: &'a mut bool,
    /// (Un)subscriptions in the order asked (true = subscribe).
    pub(super) subs: &'a mut Vec<(bool, String)>,
    pub(super) sub_ready: bool,
    pub(super) outbox: &'a mut Outbox,
    pub(super) wheel: &'a mut TimerWheel<BTimer>,
    pub(super) rng: &'a mut fastrand::Rng,
}

impl Io<'_> {
    /// Whether commands can be sent to Redis.
    pub fn cmd_ready(&self) -> bool {
        self.cmd.ready() && self.fifo.len() < MAX_IN_FLIGHT
    }

    /// Sends a command; its reply goes to `want`. When Redis cannot take
    /// it, `want` fails (`unavailable`).
    pub fn call(&mut self, cmd: &redis::Cmd, want: Want) {
        if !self.cmd_ready() {
            if self.cmd.ready() {
                *self.dropped = true;
            }
            self.failed.push(want);
            return;
        }
        self.cmd.send(cmd);
        self.fifo.push_back((want, self.now_ms));
    }

    /// An EVALSHA of `script` over `keys`; the caller adds the arguments.
    pub fn script(&self, script: &Script, keys: &[&str]) -> redis::Cmd {
        let mut c = redis::cmd("EVALSHA");
        c.arg(script.get_hash()).arg(keys.len());
        for k in keys {
            c.arg(*k);
        }
        c
    }

    /// Subscribes to a channel (sent with this iteration's batch; a down
    /// pub/sub connection resubscribes everything when it is back).
    pub fn subscribe(&mut self, channel: String) {
        if self.sub_ready {
            self.subs.push((true, channel));
        }
    }

    /// Unsubscribes from a channel (after the subscriptions asked before).
    pub fn unsubscribe(&mut self, channel: String) {
        if self.sub_ready {
            self.subs.push((false, channel));
        }
    }

    /// An event for `core`.
    pub fn event(&mut self, core: usize, ev: Event) {
        self.outbox.push(core, BusMsg::Event(ev));
    }

    /// A bridge timer at `at_ms`.
    pub fn timer(&mut self, at_ms: u64, t: BTimer) {
        self.wheel.insert(at_ms, t);
    }

    /// A candidate epoch for a room Redis does not know.
    pub fn new_epoch(&mut self) -> String {
        format!("{:08x}", self.rng.u32(..))
    }

    /// A random number (tokens, nonces).
    pub fn nonce(&mut self) -> u64 {
        self.rng.u64(..)
    }
}
