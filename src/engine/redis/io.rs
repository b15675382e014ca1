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
use super::topology::{self, Master, UNOWNED};
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
    /// `CLUSTER SLOTS`: which master owns which slot.
    Topology,
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

/// One Redis master and this node's two connections to it: commands (with
/// the FIFO their replies are matched against) and pub/sub. One Redis is
/// one shard; a Redis Cluster has one per master.
pub struct Shard {
    /// Where it is.
    pub master: Master,
    /// The command connection.
    pub cmd: RespConn,
    /// The pub/sub connection.
    pub sub: RespConn,
    /// What each command sent on `cmd` waits for, and when it was sent.
    pub fifo: VecDeque<(Want, u64)>,
    /// (Un)subscriptions in the order asked (true = subscribe), sent with
    /// this iteration's batch.
    pub subs: Vec<(bool, String)>,
    /// No longer a master in the slot map: not connected, owns no slot.
    pub retired: bool,
}

/// Slot → shard (index into the bridge's shards); empty until the slot
/// map is known (a cluster's first `CLUSTER SLOTS`).
#[derive(Debug, Default, Clone)]
pub struct Route {
    /// One Redis: everything on shard 0.
    pub single: bool,
    /// Per slot its shard, or [`UNOWNED`].
    pub owner: Vec<u16>,
}

impl Route {
    /// The shard that owns `key` (a key or a sharded channel).
    pub fn shard_of(&self, key: &[u8]) -> Option<usize> {
        if self.single {
            return Some(0);
        }
        match self.owner.get(topology::slot(key) as usize) {
            Some(&o) if o != UNOWNED => Some(o as usize),
            _ => None,
        }
    }
}

/// The key a command is routed by: the first key of a script call, else
/// its first argument (every other command the bridge sends takes one key
/// or one channel first). `None`: a command without a key.
pub fn routing_key(cmd: &redis::Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().map(|a| match a {
        redis::Arg::Simple(b) => b,
        _ => &[][..],
    });
    let name = args.next()?;
    if name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVAL") {
        let _sha = args.next()?;
        let n = args.next()?;
        if n == b"0" {
            return None;
        }
    }
    args.next()
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
    pub(super) shards: &'a mut [Shard],
    pub(super) route: &'a Route,
    /// Wants that could not be sent (the connection is down): failed after
    /// the handler returns.
    pub(super) failed: &'a mut Vec<Want>,
    /// Commands dropped while the connection was up (the queue was full):
    /// Redis must be reconciled with this node once it drained.
    pub(super) dropped: &'a mut bool,
    pub(super) outbox: &'a mut Outbox,
    pub(super) wheel: &'a mut TimerWheel<BTimer>,
    pub(super) rng: &'a mut fastrand::Rng,
}

impl Io<'_> {
    /// Whether commands for `key` (a key or channel) can be sent: the
    /// shard that owns it is connected and not too far behind.
    pub fn ready_for(&self, key: &str) -> bool {
        self.route
            .shard_of(key.as_bytes())
            .and_then(|i| self.shards.get(i))
            .is_some_and(|s| s.cmd.ready() && s.fifo.len() < MAX_IN_FLIGHT)
    }

    /// Whether commands for `room` can be sent.
    pub fn room_ready(&self, room: &str) -> bool {
        self.ready_for(&self.keys.room_channel(room))
    }

    /// Sends a command to the shard that owns its key (shard 0 for one
    /// without); its reply goes to `want`. When Redis cannot take it,
    /// `want` fails (`unavailable`).
    pub fn call(&mut self, cmd: &redis::Cmd, want: Want) {
        let shard = match routing_key(cmd) {
            Some(key) => self.route.shard_of(key),
            None => self.route.shard_of(b"").or(Some(0)),
        };
        let Some(s) = shard.and_then(|i| self.shards.get_mut(i)) else {
            self.failed.push(want);
            return;
        };
        if !(s.cmd.ready() && s.fifo.len() < MAX_IN_FLIGHT) {
            if s.cmd.ready() {
                *self.dropped = true;
            }
            self.failed.push(want);
            return;
        }
        s.cmd.send(cmd);
        s.fifo.push_back((want, self.now_ms));
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
        self.sub_request(true, channel);
    }

    /// Unsubscribes from a channel (after the subscriptions asked before).
    pub fn unsubscribe(&mut self, channel: String) {
        self.sub_request(false, channel);
    }

    fn sub_request(&mut self, on: bool, channel: String) {
        let shard = self.route.shard_of(channel.as_bytes());
        if let Some(s) = shard.and_then(|i| self.shards.get_mut(i))
            && s.sub.ready()
        {
            s.subs.push((on, channel));
        }
    }

    /// The shard a channel is on (`None` while no master owns it).
    pub fn shard_of(&self, channel: &str) -> Option<usize> {
        self.route.shard_of(channel.as_bytes())
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
