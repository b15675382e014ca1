//! The bridge thread of a node: its own mio loop with the command and
//! pub/sub connections to Redis, the cores' command channel, and a timer
//! wheel.
//!
//! Per iteration it reads replies (matched in order to the [`Want`] each
//! command left in the FIFO) and pub/sub messages, takes the cores'
//! commands, fires timers (heartbeat and probe, reaping dead nodes, grace
//! timers, lingering rooms), then writes everything queued to Redis in
//! one write per connection and sends each core one batch. When the
//! command connection drops, every command still waiting fails
//! (`unavailable`: never a false `ack`) and the bridge reconnects with
//! backoff; once back it reconciles what this node holds with what Redis
//! says. When the pub/sub connection drops, or a probe on it goes missing,
//! it is re-established, every room resubscribed and re-checked.
//!
//! This module owns the shards' connections, the FIFOs and the timers;
//! what each reply means is in `answers`, following a Redis Cluster's slot
//! map in `slots` (both parts of the bridge); what rooms and users decide
//! is in [`super::rooms`] and [`super::users`]. It must not touch client
//! connections.

use super::conn::{ConnState, Progress, RespConn, Target};
use super::gather::{Gathers, parse_count};
use super::io::{BTimer, Io, MAX_IN_FLIGHT, Route, Shard, Want};
use super::rooms::{JoinReq, NodeRooms};
use super::scripts::{Channel, Keys, Scripts};
use super::topology::{self, Master, SlotMap, UNOWNED};
use super::users::NodeUsers;
use super::wire::{as_array, as_int, as_str, cluster_json, history_reply, members_answer};
use super::{Handle, Settings, nodes};
use crate::bus::{Bus, Outbox};
use crate::core::Shared;
use crate::engine::{Answer, Command, Event, ReplyTo};
use crate::proto::ErrorCode;
use crate::timer::TimerWheel;
use crossbeam_channel::{Receiver, TryRecvError};
use mio::{Events, Poll, Token, Waker};
use redis::Value;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;
use tracing::{debug, info, warn};

mod answers;
mod slots;

const WAKER: Token = Token(2);
/// Shard `i`'s command connection is `Token(FIRST_SHARD + 2 i)`, its
/// pub/sub connection the token after.
const FIRST_SHARD: usize = 16;
/// Least time between two `CLUSTER SLOTS` asked for, ms.
const TOPOLOGY_MIN_MS: u64 = 200;

/// A command not answered within this long drops the connection, ms.
const COMMAND_TIMEOUT_MS: u64 = 5000;
/// Heartbeat and probe period, ms.
const HEARTBEAT_MS: u64 = 2000;
/// A node's registration lives this long without a heartbeat, ms; then
/// other nodes reap it (its users go offline, its members leave).
pub const NODE_TTL_MS: u64 = 15_000;
/// A probe not back on the pub/sub connection by then drops it, ms.
const PROBE_TIMEOUT_MS: u64 = 3000;
/// A publish waiting for its batch: where its `ack` goes, and its tail.
/// A publish waiting for this iteration's script call: where its ack goes,
/// its tail, its idempotency key.
type PendingPublish = (Option<ReplyTo>, String, Option<Arc<str>>);
/// A room and its publishes, in order.
type RoomPublishes = (Arc<str>, Vec<PendingPublish>);

/// Most publishes sequenced by one script call.
const PUBLISH_BATCH: usize = 128;
/// Timer wheel tick and slots.
const WHEEL_TICK_MS: u64 = 50;
const WHEEL_SLOTS: usize = 512;
/// Housekeeping period (rooms' linger and parked joins, typing), ms.
const TICK_MS: u64 = 250;

/// The bridge of one node.
pub struct Bridge {
    shared: Arc<Shared>,
    bus: Bus,
    outbox: Outbox,
    poll: Poll,
    rx: Receiver<Vec<Command>>,
    keys: Keys,
    scripts: Scripts,
    cfg: Settings,
    /// The Redis masters this node talks to: one for a standalone Redis,
    /// one per master of a Redis Cluster (indexes stay: a master that is no
    /// longer one is retired, not removed).
    shards: Vec<Shard>,
    route: Route,
    /// Redis Cluster: the seed nodes, asked for the slot map when no shard
    /// is reachable.
    seeds: Vec<Target>,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// A `CLUSTER SLOTS` is out; when the last was asked (ms).
    topology_out: bool,
    topology_at: u64,
    /// Something suggested the slot map changed (a redirection, a lost
    /// shard, a dropped sharded subscription): ask again.
    topology_wanted: bool,
    failed: Vec<Want>,
    /// Commands were dropped while connected: reconcile once drained.
    dropped: bool,
    /// A heartbeat succeeded on this command connection.
    registered: bool,
    wheel: TimerWheel<BTimer>,
    rng: fastrand::Rng,
    rooms: NodeRooms,
    users: NodeUsers,
    gathers: Gathers,
    /// Publishes taken in this iteration, sequenced together at its end.
    publishes: Vec<(Arc<str>, PendingPublish)>,
    /// The probe on the pub/sub connection: (number, sent at ms).
    probe: Option<(u64, u64)>,
    probe_n: u64,
    /// Redis confirmed this pub/sub connection's subscription to the
    /// broadcast channel (and, sent before it, to the node's own channel):
    /// until then `/health` says down, or a broadcast or direct message
    /// sent at once would miss this node.
    base_subscribed: bool,
    /// A command got a cluster redirection (it did not run): reconcile at
    /// the next heartbeat.
    redirected: bool,
    /// Redis confirmed the node channel's subscription (on a cluster it is
    /// on another master than the broadcast channel, as a rule).
    node_subscribed: bool,
    /// Redis dropped a sharded subscription of the base channels or a
    /// user's: subscribe them again once the slot map is read.
    resubscribe_pending: bool,
    stopping: bool,
    values: Vec<Value>,
}

/// A shard (its connections not started) for `master`, at index `i`,
/// reached with `template`'s credentials and TLS.
fn new_shard(
    i: usize,
    master: Master,
    template: &Target,
    tls: &Option<Arc<rustls::ClientConfig>>,
) -> Shard {
    let mut target = template.clone();
    target.host = master.host.clone();
    target.port = master.port;
    let token = FIRST_SHARD + 2 * i;
    Shard {
        master,
        cmd: RespConn::new("command", target.clone(), tls.clone(), Token(token)),
        sub: RespConn::new("pub/sub", target, tls.clone(), Token(token + 1)),
        fifo: VecDeque::new(),
        subs: Vec::new(),
        retired: false,
    }
}

/// Starts the bridge thread of node `node`. `targets`: the Redis (one) or,
/// with `sharded`, the seed nodes of a Redis Cluster.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    shared: Arc<Shared>,
    bus: Bus,
    targets: Vec<Target>,
    sharded: bool,
    tls: Option<Arc<rustls::ClientConfig>>,
    node: &str,
    prefix: &str,
    cfg: Settings,
) -> io::Result<(Handle, JoinHandle<()>)> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (tx, rx) = crossbeam_channel::unbounded();
    let cores = bus.cores();
    let now = shared.now_ms();
    let shards: Vec<Shard> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let m = Master {
                host: t.host.clone(),
                port: t.port,
            };
            new_shard(i, m, t, &tls)
        })
        .collect();
    let mut bridge = Bridge {
        outbox: Outbox::new(cores),
        bus,
        poll,
        rx,
        keys: Keys::new(prefix, node, sharded),
        scripts: Scripts::new(sharded),
        shards,
        route: Route {
            single: !sharded,
            owner: Vec::new(),
        },
        seeds: targets,
        tls,
        topology_out: false,
        topology_at: 0,
        topology_wanted: sharded,
        failed: Vec::new(),
        dropped: false,
        registered: false,
        wheel: TimerWheel::new(WHEEL_SLOTS, WHEEL_TICK_MS, now),
        rng: fastrand::Rng::new(),
        rooms: NodeRooms::new(cores),
        users: NodeUsers::new(cfg.grace_ms),
        gathers: Gathers::default(),
        publishes: Vec::new(),
        probe: None,
        probe_n: 0,
        base_subscribed: false,
        node_subscribed: false,
        redirected: false,
        resubscribe_pending: false,
        stopping: false,
        values: Vec::new(),
        cfg,
        shared,
    };
    bridge.shared.redis_down.store(true, Ordering::Relaxed);
    bridge.wheel.insert(now + TICK_MS, BTimer::Tick);
    bridge.wheel.insert(now + HEARTBEAT_MS, BTimer::Heartbeat);
    let thread = std::thread::Builder::new()
        .name("corecast-redis".into())
        .spawn(move || bridge.run())?;
    Ok((Handle { tx, waker }, thread))
}

impl Bridge {
    fn run(mut self) {
        let mut events = Events::with_capacity(64);
        info!(node = self.keys.node(), "redis bridge started");
        loop {
            let now = self.shared.now_ms();
            self.connect(now);
            let timeout = self.poll_timeout(now);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                warn!(error = %e, "redis bridge: poll failed; bridge exits");
                break;
            }
            let now = self.shared.now_ms();
            let mut ready: Vec<(bool, bool)> = self
                .shards
                .iter()
                .map(|s| (s.cmd.more, s.sub.more))
                .collect();
            for ev in events.iter() {
                let t = ev.token().0;
                if t >= FIRST_SHARD && (t - FIRST_SHARD) / 2 < ready.len() {
                    let r = &mut ready[(t - FIRST_SHARD) / 2];
                    if (t - FIRST_SHARD).is_multiple_of(2) {
                        r.0 = true;
                    } else {
                        r.1 = true;
                    }
                }
            }
            // Reading resumes where a bounded read stopped, too.
            for (i, (cmd, sub)) in ready.into_iter().enumerate() {
                if cmd {
                    self.on_cmd_event(i, now);
                }
                if sub {
                    self.on_sub_event(i, now);
                }
            }
            self.take_commands(now);
            self.run_timers(now);
            self.check_timeouts(now);
            self.ask_topology(now);
            self.flush(now);
            if self.stopping {
                break;
            }
        }
        info!("redis bridge stopped");
    }

    fn io(&mut self, now_ms: u64) -> (Io<'_>, &mut NodeRooms, &mut NodeUsers, &mut Gathers) {
        (
            Io {
                now_ms,
                now_us: self.shared.now_us(),
                keys: &self.keys,
                scripts: &self.scripts,
                cfg: &self.cfg,
                shards: &mut self.shards,
                route: &self.route,
                failed: &mut self.failed,
                dropped: &mut self.dropped,
                outbox: &mut self.outbox,
                wheel: &mut self.wheel,
                rng: &mut self.rng,
            },
            &mut self.rooms,
            &mut self.users,
            &mut self.gathers,
        )
    }

    /// Whether the slot map is known (always, for one Redis).
    fn mapped(&self) -> bool {
        self.route.single || !self.route.owner.is_empty()
    }

    /// Whether Redis can take a reconcile now: the slot map is known and
    /// every master is connected with its queue at most half full.
    fn can_reconcile(&self) -> bool {
        self.mapped()
            && self
                .shards
                .iter()
                .all(|s| s.retired || (s.cmd.ready() && s.fifo.len() < MAX_IN_FLIGHT / 2))
    }

    /// The shard a channel is on.
    fn shard_of(&self, channel: &str) -> Option<usize> {
        self.route.shard_of(channel.as_bytes())
    }

    fn poll_timeout(&self, now: u64) -> Duration {
        let mut ms = self.wheel.next_timeout_ms(now).unwrap_or(250).min(250);
        for s in self.shards.iter().filter(|s| !s.retired) {
            for c in [&s.cmd, &s.sub] {
                if let Some(at) = c.next_deadline() {
                    ms = ms.min(at.saturating_sub(now));
                }
                if c.more {
                    ms = 0;
                }
            }
        }
        if !self.failed.is_empty() {
            ms = 0;
        }
        if self.topology_wanted && !self.topology_out {
            ms = ms.min(TOPOLOGY_MIN_MS);
        }
        Duration::from_millis(ms)
    }

    /// Starts connection attempts that are due.
    fn connect(&mut self, now: u64) {
        for i in 0..self.shards.len() {
            if self.shards[i].retired {
                continue;
            }
            if self.shards[i].cmd.state() == ConnState::Down {
                let loads: Vec<redis::Cmd> = self
                    .scripts
                    .sources
                    .iter()
                    .map(|s| redis::cmd("SCRIPT").arg("LOAD").arg(s).to_owned())
                    .collect();
                let name = format!("corecast:{}:cmd", self.keys.node());
                let p = self.shards[i]
                    .cmd
                    .try_connect(self.poll.registry(), now, &name, &loads);
                if let Progress::Failed(e) = p {
                    self.cmd_lost(now, i, &e);
                }
            }
            if self.shards[i].sub.state() == ConnState::Down {
                let name = format!("corecast:{}:sub", self.keys.node());
                let p = self.shards[i]
                    .sub
                    .try_connect(self.poll.registry(), now, &name, &[]);
                if let Progress::Failed(e) = p {
                    self.sub_lost(i, &e);
                }
            }
            if let Progress::Failed(e) = self.shards[i].cmd.check_deadline(now) {
                self.cmd_lost(now, i, &e);
            }
            if let Progress::Failed(e) = self.shards[i].sub.check_deadline(now) {
                self.sub_lost(i, &e);
            }
        }
    }

    /// Up when the slot map is known, every master's two connections are
    /// ready, and the broadcast channel's subscription is confirmed.
    fn update_health(&self) {
        let all = self
            .shards
            .iter()
            .filter(|s| !s.retired)
            .all(|s| s.cmd.ready() && s.sub.ready());
        let down = !(self.mapped() && all && self.base_subscribed && self.node_subscribed);
        self.shared.redis_down.store(down, Ordering::Relaxed);
    }

    // ---- the command connections ----------------------------------------

    fn on_cmd_event(&mut self, i: usize, now: u64) {
        let mut values = std::mem::take(&mut self.values);
        match self.shards[i].cmd.on_event(now, &mut values) {
            Progress::Ready => {
                info!(
                    node = self.keys.node(),
                    shard = i,
                    "redis command connection ready"
                );
                self.update_health();
                if self.mapped() {
                    let (mut io, rooms, users, _) = self.io(now);
                    nodes::reconcile(&mut io, rooms, users);
                    rooms.on_cmd_back(&mut io);
                    // Registered at once: a node that dies right after its
                    // start must still be reaped.
                    self.heartbeat(now);
                }
            }
            Progress::Failed(e) => {
                self.values = values;
                self.dispatch_replies(i, now);
                return self.cmd_lost(now, i, &e);
            }
            Progress::Same => {}
        }
        self.values = values;
        self.dispatch_replies(i, now);
    }

    fn dispatch_replies(&mut self, i: usize, now: u64) {
        let values = std::mem::take(&mut self.values);
        for v in values.into_iter() {
            if self.shards[i].retired {
                break; // retired by a reply just handled: the rest is moot
            }
            let Some((want, _)) = self.shards[i].fifo.pop_front() else {
                warn!("redis reply without a command; connection reset");
                self.shards[i].cmd.reset(now, "unexpected reply");
                self.cmd_lost(now, i, "unexpected reply");
                break;
            };
            self.on_reply(now, i, want, v);
        }
        self.fail_pending(now);
    }

    /// A command connection is gone: every command waiting on it fails.
    fn cmd_lost(&mut self, now: u64, i: usize, why: &str) {
        // Each new reason is a warning; the same one again, every backoff,
        // is not.
        let s = &mut self.shards[i];
        if !s.fifo.is_empty() || !s.cmd.repeated {
            warn!(
                node = self.keys.node(),
                shard = i,
                waiting = s.fifo.len(),
                "{why}"
            );
        } else {
            debug!("{why}");
        }
        let waiting: Vec<Want> = s.fifo.drain(..).map(|(w, _)| w).collect();
        self.failed.extend(waiting);
        if !self.route.single {
            self.topology_wanted = true;
        }
        self.update_health();
        self.fail_pending(now);
    }

    fn fail_pending(&mut self, now: u64) {
        while !self.failed.is_empty() {
            let failed = std::mem::take(&mut self.failed);
            for w in failed {
                self.fail(now, w);
            }
        }
    }

    fn check_timeouts(&mut self, now: u64) {
        for i in 0..self.shards.len() {
            if let Some((_, sent)) = self.shards[i].fifo.front()
                && now.saturating_sub(*sent) >= COMMAND_TIMEOUT_MS
            {
                self.shards[i].cmd.reset(now, "a reply timed out");
                self.cmd_lost(now, i, "redis command connection: a reply timed out");
            }
        }
        if let Some((_, sent)) = self.probe
            && now.saturating_sub(sent) >= PROBE_TIMEOUT_MS
            && let Some(i) = self.shard_of(&self.keys.node_channel(self.keys.node()))
            && self.shards[i].sub.ready()
        {
            self.probe = None;
            self.shards[i].sub.reset(now, "probe lost");
            self.sub_lost(i, "redis pub/sub connection: a probe did not come back");
        }
        let (mut io, _, _, gathers) = self.io(now);
        gathers.expire(&mut io);
    }

    // ---- the pub/sub connections ----------------------------------------

    fn on_sub_event(&mut self, i: usize, now: u64) {
        let mut values = std::mem::take(&mut self.values);
        let progress = self.shards[i].sub.on_event(now, &mut values);
        for v in values.drain(..) {
            self.on_push(now, i, v);
        }
        self.values = values;
        match progress {
            Progress::Ready => {
                info!(
                    node = self.keys.node(),
                    shard = i,
                    "redis pub/sub connection ready"
                );
                let keys = self.keys.clone();
                let route = self.route.clone();
                let here = move |ch: &str| route.shard_of(ch.as_bytes()) == Some(i);
                if here(&keys.bcast()) {
                    self.base_subscribed = false;
                }
                if here(&keys.node_channel(keys.node())) {
                    self.node_subscribed = false;
                }
                self.update_health();
                self.subscribe_base();
                let (mut io, rooms, users, _) = self.io(now);
                rooms.resubscribe(&mut io, &|name| here(&keys.room_channel(name)), false);
                users.resubscribe(&mut io, &here);
            }
            Progress::Failed(e) => self.sub_lost(i, &e),
            Progress::Same => {}
        }
        self.fail_pending(now);
    }

    fn sub_lost(&mut self, i: usize, why: &str) {
        if !self.shards[i].sub.repeated {
            warn!(node = self.keys.node(), shard = i, "{why}");
        } else {
            debug!("{why}");
        }
        let keys = self.keys.clone();
        let route = self.route.clone();
        let here = move |ch: &str| route.shard_of(ch.as_bytes()) == Some(i);
        if here(&keys.bcast()) {
            self.base_subscribed = false;
        }
        if here(&keys.node_channel(keys.node())) {
            self.node_subscribed = false;
            self.probe = None;
        }
        self.update_health();
        self.shards[i].subs.clear();
        if !self.route.single {
            self.topology_wanted = true;
        }
        let now = self.shared.now_ms();
        let (mut io, rooms, _, _) = self.io(now);
        rooms.on_sub_lost(&mut io, &|name| here(&keys.room_channel(name)));
    }

    /// A message or confirmation on a pub/sub connection (`message` and
    /// `subscribe` from one Redis, `smessage`, `ssubscribe` and
    /// `sunsubscribe` from a cluster's sharded channels).
    fn on_push(&mut self, now: u64, shard: usize, v: Value) {
        let mut parts = match v {
            Value::Array(a) => a.into_iter(),
            Value::ServerError(e) => {
                // E.g. NOPERM for an ACL user without channel rights, or
                // MOVED for a sharded channel whose slot moved: the joins
                // waiting for that subscription time out.
                if !self.route.single {
                    self.topology_wanted = true;
                }
                return warn!(error = ?e, "redis refused a subscription");
            }
            _ => return,
        };
        let (Some(Value::BulkString(kind)), Some(Value::BulkString(channel))) =
            (parts.next(), parts.next())
        else {
            return;
        };
        // A confirmation or end of a subscription counts only from the
        // shard the channel is routed to now: a late one from a master that
        // lost the slot must not confirm (or end) the subscription on the
        // new one.
        let current = self.route.shard_of(&channel) == Some(shard);
        match kind.as_slice() {
            b"subscribe" | b"ssubscribe" | b"sunsubscribe" if !current => {}
            b"message" | b"smessage" => {
                if let Some(Value::BulkString(payload)) = parts.next() {
                    self.on_message(now, &channel, &payload);
                }
            }
            b"subscribe" | b"ssubscribe" => {
                if channel == self.keys.bcast().as_bytes() {
                    self.base_subscribed = true;
                    self.update_health();
                }
                if channel == self.keys.node_channel(self.keys.node()).as_bytes() {
                    self.node_subscribed = true;
                    self.update_health();
                }
                if let Channel::Room(room) = self.keys.classify(&channel) {
                    let room = room.to_string();
                    let (mut io, rooms, _, _) = self.io(now);
                    rooms.on_subscribed(&mut io, &room);
                }
            }
            b"sunsubscribe" => self.on_sunsubscribe(now, &channel),
            _ => {}
        }
    }

    /// A sharded subscription ended. One this node asked to end (a room no
    /// longer needed) is gone from its tables already; any other was
    /// dropped by Redis because its slot moved to another master (a
    /// failover, a migration): it is lost, and subscribed again on the new
    /// owner once the slot map says which.
    fn on_sunsubscribe(&mut self, now: u64, channel: &[u8]) {
        let lost = match self.keys.classify(channel) {
            Channel::Room(room) => {
                let room = room.to_string();
                if self.rooms.name(&room).is_none() {
                    return;
                }
                let (mut io, rooms, _, _) = self.io(now);
                rooms.on_sub_lost(&mut io, &|name| name == room);
                true
            }
            // Only a user this node still follows (its own unsubscribe of
            // a user who went offline here ends the same way).
            Channel::User(user) => self.users.follows(user),
            Channel::Other => {
                if channel == self.keys.bcast().as_bytes() {
                    self.base_subscribed = false;
                    self.update_health();
                    true
                } else if channel == self.keys.node_channel(self.keys.node()).as_bytes() {
                    self.node_subscribed = false;
                    self.probe = None;
                    self.update_health();
                    true
                } else {
                    false
                }
            }
        };
        if lost {
            debug!(channel = %String::from_utf8_lossy(channel), "redis dropped a sharded subscription");
            self.resubscribe_pending = true;
            self.topology_wanted = true;
            self.topology_at = 0;
        }
    }

    fn on_message(&mut self, now: u64, channel: &[u8], payload: &[u8]) {
        match self.keys.classify(channel) {
            Channel::Room(room) => {
                let room = room.to_string();
                let (mut io, rooms, users, _) = self.io(now);
                if payload.first() == Some(&b'p') {
                    users.on_presence(&mut io, rooms, &payload[1..]);
                } else {
                    rooms.on_payload(&mut io, &room, payload);
                }
            }
            Channel::User(user) => {
                let user = user.to_string();
                let (mut io, rooms, users, _) = self.io(now);
                users.on_user_payload(&mut io, rooms, &user, payload);
            }
            Channel::Other => self.on_node_payload(now, payload),
        }
    }

    /// The node channel (probes, counts) and broadcasts.
    fn on_node_payload(&mut self, now: u64, payload: &[u8]) {
        match payload.first() {
            Some(b'k') => {
                let n: Option<u64> = std::str::from_utf8(&payload[1..])
                    .ok()
                    .and_then(|s| s.parse().ok());
                if self.probe.is_some_and(|(p, _)| Some(p) == n) {
                    self.probe = None;
                }
            }
            Some(b'a') => {
                if let Some((token, n)) = parse_count(&payload[1..]) {
                    let (mut io, _, _, gathers) = self.io(now);
                    gathers.part(&mut io, token, n);
                }
            }
            Some(b'b') => {
                let cores = self.bus.cores();
                let (mut io, _, _, gathers) = self.io(now);
                gathers.on_broadcast(&mut io, cores, &payload[1..]);
            }
            _ => {}
        }
    }

    // ---- commands from the cores ---------------------------------------

    fn take_commands(&mut self, now: u64) {
        for _ in 0..1024 {
            let batch = match self.rx.try_recv() {
                Ok(b) => b,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.stopping = true;
                    break;
                }
            };
            if batch.is_empty() {
                self.stopping = true;
            }
            for cmd in batch {
                self.command(now, cmd);
            }
        }
        self.send_publishes(now);
        self.fail_pending(now);
    }

    /// Sequences the publishes taken so far with one script call.
    fn send_publishes(&mut self, now: u64) {
        if self.publishes.is_empty() {
            return;
        }
        // Grouped by room, in order within each room (the order of
        // messages of different rooms does not matter).
        let mut groups: Vec<(Arc<str>, Vec<PendingPublish>)> = Vec::new();
        let mut index: HashMap<Arc<str>, usize> = HashMap::new();
        for (room, publish) in std::mem::take(&mut self.publishes) {
            let i = *index.entry(room.clone()).or_insert_with(|| {
                groups.push((room.clone(), Vec::new()));
                groups.len() - 1
            });
            groups[i].1.push(publish);
        }
        // One script call per batch; on a cluster, per hash slot (a script
        // may only touch keys of one slot).
        let mut batches: Vec<(u16, Vec<RoomPublishes>)> = Vec::new();
        for g in groups {
            let slot = if self.route.single {
                0
            } else {
                topology::slot(self.keys.room_channel(&g.0).as_bytes())
            };
            match batches.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, b)) => b.push(g),
                None => batches.push((slot, vec![g])),
            }
        }
        for (_, groups) in batches {
            self.send_publish_batch(now, groups);
        }
    }

    /// One publish script call for `groups` (rooms of one slot).
    fn send_publish_batch(&mut self, now: u64, groups: Vec<RoomPublishes>) {
        let (mut io, _, _, _) = self.io(now);
        let k = io.keys;
        let mut keys: Vec<String> = Vec::with_capacity(groups.len() * 5);
        for (room, _) in &groups {
            for part in ["m", "h", "u", "k", "kq"] {
                keys.push(k.room(room, part));
            }
        }
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut c = io.script(&io.scripts.publish, &key_refs);
        c.arg(io.new_epoch())
            .arg(io.cfg.size)
            .arg(io.cfg.ttl_ms)
            .arg(io.cfg.idle_ms);
        let mut items = Vec::with_capacity(groups.len());
        for (room, msgs) in groups {
            c.arg(&*room).arg(k.room_channel(&room)).arg(msgs.len());
            let mut replies = Vec::with_capacity(msgs.len());
            for (reply, tail, key) in msgs {
                c.arg(tail).arg(key.as_deref().unwrap_or(""));
                replies.push(reply);
            }
            items.push((room, replies));
        }
        io.call(&c, Want::Publish { items });
    }

    fn command(&mut self, now: u64, cmd: Command) {
        if !matches!(cmd, Command::Publish { .. }) {
            // Commands reach Redis in the order the cores sent them.
            self.send_publishes(now);
        }
        let (mut io, rooms, users, gathers) = self.io(now);
        match cmd {
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
                let req = JoinReq {
                    core,
                    conn,
                    status: users.status_of(&user),
                    user,
                    name,
                    id,
                    since,
                    rejoin,
                    at_ms: now,
                };
                rooms.join(&mut io, room, req);
            }
            Command::Leave { room, core, user } => rooms.leave(&mut io, room, core, user),
            Command::Publish {
                room,
                reply,
                tail,
                key,
            } => {
                if !io.room_ready(&room) {
                    return io.failed.push(Want::Publish {
                        items: vec![(room, vec![reply])],
                    });
                }
                self.publishes.push((room, (reply, tail, key)));
                if self.publishes.len() >= PUBLISH_BATCH {
                    self.send_publishes(now);
                }
            }
            Command::History {
                room,
                reply,
                before,
                limit,
            } => {
                let start = match before {
                    Some(b) => format!("({b}-0"),
                    None => "+".into(),
                };
                let c = redis::cmd("XREVRANGE")
                    .arg(io.keys.room(&room, "h"))
                    .arg(start)
                    .arg("-")
                    .arg("COUNT")
                    .arg(limit.min(io.cfg.max_history))
                    .to_owned();
                io.call(&c, Want::History { room, reply });
            }
            Command::Members { room, id, answer } => {
                let k = io.keys;
                let c = io.script(
                    &io.scripts.room_info,
                    &[
                        &k.room(&room, "m"),
                        &k.room(&room, "u"),
                        &k.room(&room, "nm"),
                        &k.room(&room, "h"),
                        &k.room(&room, "st"),
                    ],
                );
                io.call(&c, Want::RoomInfo { room, id, answer });
            }
            Command::Typing { room, user, typing } => rooms.typing(&mut io, room, user, typing),
            Command::SetStatus { user, status } => users.set_status(&mut io, &user, status),
            Command::UserConnected {
                user, core, conn, ..
            } => users.connect(&mut io, user, core, conn),
            Command::UserGone {
                user,
                core,
                conn,
                rooms: left,
            } => users.disconnect(&mut io, user, core, conn, &left),
            Command::UserRoom { user, room, joined } => users.room_changed(&user, &room, joined),
            Command::ToUser { user, frame, agg } => users.to_user(&mut io, &user, &frame, agg),
            Command::Broadcast { frame, agg } => gathers.broadcast(&mut io, &frame, agg),
            Command::Delivered { token, delivered } => gathers.part(&mut io, token, delivered),
            Command::ClusterStats { agg } => {
                let (nodes, stats) = io.keys.nodes();
                let c = io.script(&io.scripts.cluster_stats, &[&nodes, &stats]);
                io.call(&c, Want::ClusterStats { agg });
            }
        }
    }

    // ---- timers and the end of an iteration ------------------------------

    fn run_timers(&mut self, now: u64) {
        let mut expired = Vec::new();
        self.wheel.advance(now, &mut expired);
        for t in expired {
            match t {
                BTimer::Tick => {
                    let (mut io, rooms, _, _) = self.io(now);
                    rooms.tick(&mut io);
                    io.timer(now + TICK_MS, BTimer::Tick);
                }
                BTimer::Heartbeat => {
                    self.heartbeat(now);
                    self.wheel.insert(now + HEARTBEAT_MS, BTimer::Heartbeat);
                }
                BTimer::Grace { slot, generation } => {
                    let (mut io, _, users, _) = self.io(now);
                    users.grace_timer(&mut io, slot, generation);
                }
            }
        }
        self.fail_pending(now);
    }

    /// Registers the node (with its stats), looks for dead nodes, probes
    /// the pub/sub connection.
    fn heartbeat(&mut self, now: u64) {
        if !self.route.single {
            self.topology_wanted = true;
            if self.redirected && self.can_reconcile() {
                self.redirected = false;
                info!(
                    node = self.keys.node(),
                    "commands were redirected; reconciling"
                );
                let (mut io, rooms, users, _) = self.io(now);
                nodes::reconcile(&mut io, rooms, users);
            }
        }
        let (nodes, _) = self.keys.nodes();
        let channel = self.keys.node_channel(self.keys.node());
        let ready = |c: &str| {
            self.shard_of(c)
                .and_then(|i| self.shards.get(i))
                .map_or((false, false), |s| (s.cmd.ready(), s.sub.ready()))
        };
        let (registry_up, _) = ready(&nodes);
        let (_, sub_up) = ready(&channel);
        if !registry_up {
            return;
        }
        let stats = crate::proto::event::Event::object()
            .num(
                "connections",
                self.shared.connections.load(Ordering::Relaxed) as u64,
            )
            .num("users", self.users.online() as u64)
            .num("rooms", self.rooms.len() as u64)
            .finish();
        let (nodes, stats_key) = self.keys.nodes();
        let node = self.keys.node().to_string();
        let probe = sub_up && self.probe.is_none();
        self.probe_n += 1;
        let probe_n = self.probe_n;
        let (mut io, _, _, _) = self.io(now);
        let mut c = io.script(&io.scripts.heartbeat, &[&nodes, &stats_key]);
        c.arg(&node).arg(NODE_TTL_MS).arg(stats);
        io.call(&c, Want::Heartbeat);
        if probe {
            let c = io
                .keys
                .publish_cmd()
                .arg(io.keys.node_channel(&node))
                .arg(format!("k{probe_n}"))
                .to_owned();
            io.call(&c, Want::Probe);
            self.probe = Some((probe_n, now));
        }
    }

    fn flush(&mut self, now: u64) {
        let sharded = self.keys.sharded();
        for s in self.shards.iter_mut() {
            if s.sub.ready() {
                // In the order asked: runs of subscriptions and
                // unsubscriptions, up to 512 channels a command (one on a
                // cluster: channels of one command must share a slot).
                let (on, off) = if sharded {
                    ("SSUBSCRIBE", "SUNSUBSCRIBE")
                } else {
                    ("SUBSCRIBE", "UNSUBSCRIBE")
                };
                let most = if sharded { 1 } else { 512 };
                let mut i = 0;
                while i < s.subs.len() {
                    let kind = s.subs[i].0;
                    let mut c = redis::cmd(if kind { on } else { off });
                    let mut n = 0;
                    while i < s.subs.len() && s.subs[i].0 == kind && n < most {
                        c.arg(&s.subs[i].1);
                        i += 1;
                        n += 1;
                    }
                    s.sub.send(&c);
                }
            }
            s.subs.clear();
        }
        if self.dropped && self.can_reconcile() {
            // Commands were dropped while the queue was full: make Redis
            // match this node again.
            self.dropped = false;
            warn!(
                node = self.keys.node(),
                "commands were dropped (Redis behind); reconciling"
            );
            let (mut io, rooms, users, _) = self.io(now);
            nodes::reconcile(&mut io, rooms, users);
        }
        let mut bytes_in = 0;
        for i in 0..self.shards.len() {
            if let Progress::Failed(e) = self.shards[i].sub.flush(now) {
                self.sub_lost(i, &e);
            }
            if let Progress::Failed(e) = self.shards[i].cmd.flush(now) {
                self.cmd_lost(now, i, &e);
            }
            bytes_in += self.shards[i].sub.bytes_in + self.shards[i].cmd.bytes_in;
        }
        self.shared
            .redis_bytes_in
            .store(bytes_in, Ordering::Relaxed);
        self.outbox.flush(&self.bus);
    }
}
