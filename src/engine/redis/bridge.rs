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
//! This module owns the connections, the FIFO and the timers; what rooms
//! and users decide is in [`super::rooms`] and [`super::users`]. It must
//! not touch client connections.

use super::conn::{ConnState, Progress, RespConn, Target};
use super::gather::{Gathers, parse_count};
use super::io::{BTimer, Io, MAX_IN_FLIGHT, Want};
use super::rooms::{JoinReq, NodeRooms};
use super::scripts::{Channel, Keys, Scripts};
use super::users::NodeUsers;
use super::wire::{as_array, as_int, as_str, cluster_json, history_reply, members_answer};
use super::{Handle, Settings, nodes};
use crate::bus::{Bus, Outbox};
use crate::core::Shared;
use crate::engine::{Answer, Command, Event, ReplyTo, replies};
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

const CMD: Token = Token(0);
const SUB: Token = Token(1);
const WAKER: Token = Token(2);

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
    cmd: RespConn,
    sub: RespConn,
    fifo: VecDeque<(Want, u64)>,
    failed: Vec<Want>,
    /// Commands were dropped while connected: reconcile once drained.
    dropped: bool,
    /// A heartbeat succeeded on this command connection.
    registered: bool,
    subs: Vec<(bool, String)>,
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
    stopping: bool,
    values: Vec<Value>,
}

/// Starts the bridge thread of node `node`.
pub fn spawn(
    shared: Arc<Shared>,
    bus: Bus,
    target: Target,
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
    let mut bridge = Bridge {
        outbox: Outbox::new(cores),
        bus,
        poll,
        rx,
        keys: Keys::new(prefix, node),
        scripts: Scripts::default(),
        cmd: RespConn::new("command", target.clone(), tls.clone(), CMD),
        sub: RespConn::new("pub/sub", target, tls, SUB),
        fifo: VecDeque::new(),
        failed: Vec::new(),
        dropped: false,
        registered: false,
        subs: Vec::new(),
        wheel: TimerWheel::new(WHEEL_SLOTS, WHEEL_TICK_MS, now),
        rng: fastrand::Rng::new(),
        rooms: NodeRooms::new(cores),
        users: NodeUsers::new(cfg.grace_ms),
        gathers: Gathers::default(),
        publishes: Vec::new(),
        probe: None,
        probe_n: 0,
        base_subscribed: false,
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
            let (mut cmd_ready, mut sub_ready) = (self.cmd.more, self.sub.more);
            for ev in events.iter() {
                match ev.token() {
                    CMD => cmd_ready = true,
                    SUB => sub_ready = true,
                    _ => {}
                }
            }
            // Reading resumes where a bounded read stopped, too.
            if cmd_ready {
                self.on_cmd_event(now);
            }
            if sub_ready {
                self.on_sub_event(now);
            }
            self.take_commands(now);
            self.run_timers(now);
            self.check_timeouts(now);
            self.flush(now);
            if self.stopping {
                break;
            }
        }
        info!("redis bridge stopped");
    }

    fn io(&mut self, now_ms: u64) -> (Io<'_>, &mut NodeRooms, &mut NodeUsers, &mut Gathers) {
        let sub_ready = self.sub.ready();
        (
            Io {
                now_ms,
                now_us: self.shared.now_us(),
                keys: &self.keys,
                scripts: &self.scripts,
                cfg: &self.cfg,
                cmd: &mut self.cmd,
                fifo: &mut self.fifo,
                failed: &mut self.failed,
                dropped: &mut self.dropped,
                subs: &mut self.subs,
                sub_ready,
                outbox: &mut self.outbox,
                wheel: &mut self.wheel,
                rng: &mut self.rng,
            },
            &mut self.rooms,
            &mut self.users,
            &mut self.gathers,
        )
    }

    fn poll_timeout(&self, now: u64) -> Duration {
        let mut ms = self.wheel.next_timeout_ms(now).unwrap_or(250).min(250);
        for c in [&self.cmd, &self.sub] {
            if let Some(at) = c.next_deadline() {
                ms = ms.min(at.saturating_sub(now));
            }
        }
        if !self.failed.is_empty() || self.cmd.more || self.sub.more {
            ms = 0;
        }
        Duration::from_millis(ms)
    }

    /// Starts connection attempts that are due.
    fn connect(&mut self, now: u64) {
        if self.cmd.state() == ConnState::Down {
            let loads: Vec<redis::Cmd> = self
                .scripts
                .sources
                .iter()
                .map(|s| redis::cmd("SCRIPT").arg("LOAD").arg(s).to_owned())
                .collect();
            let name = format!("corecast:{}:cmd", self.keys.node());
            if let Progress::Failed(e) =
                self.cmd
                    .try_connect(self.poll.registry(), now, &name, &loads)
            {
                self.cmd_lost(now, &e);
            }
        }
        if self.sub.state() == ConnState::Down {
            let name = format!("corecast:{}:sub", self.keys.node());
            if let Progress::Failed(e) = self.sub.try_connect(self.poll.registry(), now, &name, &[])
            {
                self.sub_lost(&e);
            }
        }
        for p in [self.cmd.check_deadline(now)] {
            if let Progress::Failed(e) = p {
                self.cmd_lost(now, &e);
            }
        }
        if let Progress::Failed(e) = self.sub.check_deadline(now) {
            self.sub_lost(&e);
        }
    }

    fn update_health(&self) {
        let down = !(self.cmd.ready() && self.sub.ready() && self.base_subscribed);
        self.shared.redis_down.store(down, Ordering::Relaxed);
    }

    // ---- the command connection ----------------------------------------

    fn on_cmd_event(&mut self, now: u64) {
        let mut values = std::mem::take(&mut self.values);
        match self.cmd.on_event(now, &mut values) {
            Progress::Ready => {
                info!(node = self.keys.node(), "redis command connection ready");
                self.update_health();
                let (mut io, rooms, users, _) = self.io(now);
                nodes::reconcile(&mut io, rooms, users);
                rooms.on_cmd_back(&mut io);
                // Registered at once: a node that dies right after its
                // start must still be reaped.
                self.heartbeat(now);
            }
            Progress::Failed(e) => {
                self.values = values;
                self.dispatch_replies(now);
                return self.cmd_lost(now, &e);
            }
            Progress::Same => {}
        }
        self.values = values;
        self.dispatch_replies(now);
    }

    fn dispatch_replies(&mut self, now: u64) {
        let values = std::mem::take(&mut self.values);
        for v in values.into_iter() {
            let Some((want, _)) = self.fifo.pop_front() else {
                warn!("redis reply without a command; connection reset");
                self.cmd.reset(now, "unexpected reply");
                self.cmd_lost(now, "unexpected reply");
                break;
            };
            self.on_reply(now, want, v);
        }
        self.fail_pending(now);
    }

    /// The command connection is gone: every waiting command fails.
    fn cmd_lost(&mut self, now: u64, why: &str) {
        // Each new reason is a warning; the same one again, every backoff,
        // is not.
        if !self.fifo.is_empty() || !self.cmd.repeated {
            warn!(node = self.keys.node(), waiting = self.fifo.len(), "{why}");
        } else {
            debug!("{why}");
        }
        self.update_health();
        let waiting: Vec<Want> = self.fifo.drain(..).map(|(w, _)| w).collect();
        self.failed.extend(waiting);
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
        if let Some((_, sent)) = self.fifo.front()
            && now.saturating_sub(*sent) >= COMMAND_TIMEOUT_MS
        {
            self.cmd.reset(now, "a reply timed out");
            self.cmd_lost(now, "redis command connection: a reply timed out");
        }
        if let Some((_, sent)) = self.probe
            && now.saturating_sub(sent) >= PROBE_TIMEOUT_MS
            && self.sub.ready()
        {
            self.probe = None;
            self.sub.reset(now, "probe lost");
            self.sub_lost("redis pub/sub connection: a probe did not come back");
        }
        let (mut io, _, _, gathers) = self.io(now);
        gathers.expire(&mut io);
    }

    // ---- the pub/sub connection ----------------------------------------

    fn on_sub_event(&mut self, now: u64) {
        let mut values = std::mem::take(&mut self.values);
        let progress = self.sub.on_event(now, &mut values);
        for v in values.drain(..) {
            self.on_push(now, v);
        }
        self.values = values;
        match progress {
            Progress::Ready => {
                info!(node = self.keys.node(), "redis pub/sub connection ready");
                self.base_subscribed = false;
                self.update_health();
                self.subs
                    .push((true, self.keys.node_channel(self.keys.node())));
                self.subs.push((true, self.keys.bcast()));
                let (mut io, rooms, users, _) = self.io(now);
                rooms.resubscribe(&mut io);
                users.resubscribe(&mut io);
            }
            Progress::Failed(e) => self.sub_lost(&e),
            Progress::Same => {}
        }
        self.fail_pending(now);
    }

    fn sub_lost(&mut self, why: &str) {
        if !self.sub.repeated {
            warn!(node = self.keys.node(), "{why}");
        } else {
            debug!("{why}");
        }
        self.base_subscribed = false;
        self.update_health();
        self.probe = None;
        self.subs.clear();
        let now = self.shared.now_ms();
        let (mut io, rooms, _, _) = self.io(now);
        rooms.on_sub_lost(&mut io);
    }

    /// A message or confirmation on the pub/sub connection.
    fn on_push(&mut self, now: u64, v: Value) {
        let mut parts = match v {
            Value::Array(a) => a.into_iter(),
            Value::ServerError(e) => {
                // E.g. NOPERM for an ACL user without channel rights: the
                // joins waiting for that subscription time out.
                return warn!(error = ?e, "redis refused a subscription");
            }
            _ => return,
        };
        let (Some(Value::BulkString(kind)), Some(Value::BulkString(channel))) =
            (parts.next(), parts.next())
        else {
            return;
        };
        match kind.as_slice() {
            b"message" => {
                if let Some(Value::BulkString(payload)) = parts.next() {
                    self.on_message(now, &channel, &payload);
                }
            }
            b"subscribe" => {
                if channel == self.keys.bcast().as_bytes() {
                    self.base_subscribed = true;
                    self.update_health();
                }
                if let Channel::Room(room) = self.keys.classify(&channel) {
                    let room = room.to_string();
                    let (mut io, rooms, _, _) = self.io(now);
                    rooms.on_subscribed(&mut io, &room);
                }
            }
            _ => {}
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
                if !io.cmd_ready() {
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

    // ---- replies ---------------------------------------------------------

    fn on_reply(&mut self, now: u64, want: Want, v: Value) {
        if let Value::ServerError(e) = &v
            && e.code() == "NOSCRIPT"
        {
            // Scripts were flushed behind our back: reload them (reconnect).
            warn!("redis lost our scripts (SCRIPT FLUSH?); reconnecting");
            self.cmd.reset(now, "NOSCRIPT");
            self.failed.push(want);
            return self.cmd_lost(now, "redis command connection: NOSCRIPT");
        }
        let cutoff = crate::auth::unix_now_ms().saturating_sub(self.cfg.ttl_ms);
        let (mut io, rooms, users, gathers) = self.io(now);
        match want {
            Want::Ignore(what) => {
                if let Value::ServerError(e) = &v {
                    warn!(what, error = ?e, "redis command failed");
                }
            }
            Want::Publish { items } => {
                let a = as_array(&v).unwrap_or(&[]);
                let ts = a.first().and_then(as_int).map(|t| t as u64);
                if ts.is_none() {
                    warn!(rooms = items.len(), reply = ?v, "publish script failed");
                }
                // Per room: its epoch, then a seq per message (a string
                // among them is a new epoch for what follows; `[seq, ts]`
                // a duplicate of the message with that seq).
                let mut vals = a.iter().skip(1).peekable();
                for (room, replies_of) in items {
                    let mut epoch = vals.next().and_then(as_str).unwrap_or("");
                    for reply in replies_of {
                        if let Some(e) = vals.next_if(|x| as_str(x).is_some()) {
                            epoch = as_str(e).unwrap_or("");
                        }
                        let seq = match (vals.next(), ts) {
                            (Some(Value::Int(s)), Some(ts)) => Some((*s as u64, ts, false)),
                            (Some(Value::Array(d)), Some(_)) => match d.as_slice() {
                                [Value::Int(s), Value::Int(t)] => {
                                    Some((*s as u64, *t as u64, true))
                                }
                                _ => None,
                            },
                            _ => None,
                        };
                        let Some(reply) = reply else { continue };
                        match seq {
                            Some((seq, ts, dup)) => {
                                let (core, ev) =
                                    replies::publish_ack(reply, &room, seq, epoch, ts, dup);
                                rooms.publish_acked(&mut io, &room, seq, core, ev);
                            }
                            _ => {
                                let msg = "the cluster engine failed; retry";
                                let (core, ev) =
                                    replies::refuse(reply, ErrorCode::Unavailable, msg);
                                io.event(core, ev);
                            }
                        }
                    }
                }
            }
            Want::Join { room, req } => rooms.on_join_reply(&mut io, room, req, v),
            Want::Position { room } => rooms.on_position(&mut io, room, v),
            Want::Fill { room, from, to } => rooms.on_fill(&mut io, room, from, to, v),
            Want::History { room, reply } => {
                let text = history_reply(&room, &reply, &v, cutoff);
                io.event(reply.core, replies::reply(reply.conn, &text));
            }
            Want::RoomInfo { room, id, answer } => {
                let (core, ev) = members_answer(&room, id, answer, &v);
                io.event(core, ev);
            }
            Want::UserConn { user } => users.on_conn_reply(&mut io, &user, &v),
            Want::UserOffline {
                user, rooms: last, ..
            } => users.on_offline_reply(&mut io, &user, last, &v),
            Want::Direct { agg } => {
                let n = as_int(&v).unwrap_or(0).max(0) as u64;
                io.event(
                    agg.core,
                    Event::AggExpect {
                        token: agg.token,
                        parts: 1,
                    },
                );
                io.event(
                    agg.core,
                    Event::AggDone {
                        token: agg.token,
                        delivered: n,
                    },
                );
            }
            Want::Broadcast { token } => {
                let n = as_int(&v).unwrap_or(0).max(0) as u32;
                gathers.expect(&mut io, token, n);
            }
            Want::Heartbeat => {
                let a = as_array(&v).unwrap_or(&[]);
                let was_registered = a.first().and_then(as_int) == Some(1);
                let dead: Vec<String> = a
                    .iter()
                    .skip(1)
                    .filter_map(as_str)
                    .filter(|n| *n != io.keys.node())
                    .map(String::from)
                    .collect();
                for node in dead {
                    nodes::start_reap(&mut io, &node);
                }
                if !was_registered && self.registered {
                    // Another node reaped this one while it was alive (it
                    // could not reach Redis, or stalled): put back what it
                    // holds.
                    warn!(
                        node = self.keys.node(),
                        "this node was reaped while alive; reconciling"
                    );
                    let (mut io, rooms, users, _) = self.io(now);
                    nodes::reconcile(&mut io, rooms, users);
                }
                self.registered = true;
            }
            Want::Probe => {
                if as_int(&v) == Some(0) && self.sub.ready() {
                    self.probe = None;
                    self.sub.reset(now, "not subscribed");
                    self.sub_lost("redis pub/sub connection: not subscribed to our channel");
                }
            }
            Want::ClusterStats { agg } => {
                let json = cluster_json(&v);
                io.event(
                    agg.core,
                    Event::AggInfo {
                        token: agg.token,
                        json,
                    },
                );
            }
            Want::Reap(step) => nodes::on_reap_reply(&mut io, rooms, users, step, v),
        }
    }

    /// A command that could not be sent or was never answered.
    fn fail(&mut self, now: u64, want: Want) {
        let (mut io, rooms, users, gathers) = self.io(now);
        let unavailable = "the cluster engine (Redis) is unreachable; retry later";
        match want {
            Want::Publish { items } => {
                for reply in items.into_iter().flat_map(|(_, r)| r).flatten() {
                    let (core, ev) = replies::refuse(reply, ErrorCode::Unavailable, unavailable);
                    io.event(core, ev);
                }
            }
            Want::Join { room, req } => rooms.join_failed(&mut io, room, req),
            Want::History { reply, .. } => {
                let (core, ev) = replies::refuse(reply, ErrorCode::Unavailable, unavailable);
                io.event(core, ev);
            }
            Want::RoomInfo { answer, .. } => {
                let (core, ev) = match answer {
                    Answer::Ws(reply) => {
                        replies::refuse(reply, ErrorCode::Unavailable, unavailable)
                    }
                    Answer::Http { core, conn } => (
                        core,
                        Event::HttpReply {
                            conn,
                            status: 503,
                            body: crate::core::http::error_body("unavailable", unavailable),
                        },
                    ),
                };
                io.event(core, ev);
            }
            Want::Direct { agg } | Want::ClusterStats { agg } => io.event(
                agg.core,
                Event::AggFailed {
                    token: agg.token,
                    code: ErrorCode::Unavailable,
                },
            ),
            Want::Broadcast { token } => gathers.failed(&mut io, token),
            Want::Position { room } | Want::Fill { room, .. } => rooms.retry_later(&room),
            Want::UserOffline { user, token, rooms } => users.offline_failed(user, token, rooms),
            Want::Probe => self.probe = None,
            Want::Ignore(_) | Want::UserConn { .. } | Want::Heartbeat | Want::Reap(_) => {
                // Redis is reconciled with this node's state when the
                // connection is back, or (commands dropped while the queue
                // was full) once the queue drained.
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
        if !self.cmd.ready() {
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
        let probe = self.sub.ready() && self.probe.is_none();
        self.probe_n += 1;
        let probe_n = self.probe_n;
        let (mut io, _, _, _) = self.io(now);
        let mut c = io.script(&io.scripts.heartbeat, &[&nodes, &stats_key]);
        c.arg(&node).arg(NODE_TTL_MS).arg(stats);
        io.call(&c, Want::Heartbeat);
        if probe {
            let c = redis::cmd("PUBLISH")
                .arg(io.keys.node_channel(&node))
                .arg(format!("k{probe_n}"))
                .to_owned();
            io.call(&c, Want::Probe);
            self.probe = Some((probe_n, now));
        }
    }

    fn flush(&mut self, now: u64) {
        if self.sub.ready() {
            // In the order asked: runs of subscriptions and unsubscriptions,
            // up to 512 channels a command.
            let mut i = 0;
            while i < self.subs.len() {
                let kind = self.subs[i].0;
                let mut c = redis::cmd(if kind { "SUBSCRIBE" } else { "UNSUBSCRIBE" });
                let mut n = 0;
                while i < self.subs.len() && self.subs[i].0 == kind && n < 512 {
                    c.arg(&self.subs[i].1);
                    i += 1;
                    n += 1;
                }
                self.sub.send(&c);
            }
        }
        self.subs.clear();
        if self.dropped && self.cmd.ready() && self.fifo.len() < MAX_IN_FLIGHT / 2 {
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
        if let Progress::Failed(e) = self.sub.flush(now) {
            self.sub_lost(&e);
        }
        if let Progress::Failed(e) = self.cmd.flush(now) {
            self.cmd_lost(now, &e);
        }
        self.shared
            .redis_bytes_in
            .store(self.sub.bytes_in + self.cmd.bytes_in, Ordering::Relaxed);
        self.outbox.flush(&self.bus);
    }
}
