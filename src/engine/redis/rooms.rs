//! A node's rooms in the Redis engine: which cores have members (the
//! node's interest set), which local users are in each room, the room's
//! subscription, and the position up to which the node has delivered the
//! room's messages.
//!
//! The order of a room is Redis's: the publish script assigns seqs one at
//! a time and PUBLISHes in that order. This node delivers message `seq`
//! only after `seq - 1`: a message that arrives early (after a gap: a lost
//! or re-established subscription) waits in `buffer` while the gap is read
//! from the room's stream. A join subscribes first, then runs the join
//! script, which reports the room's seq `T` at that instant (and the
//! missed messages after `since`). Everything after `T` arrives on the
//! subscription; the joiner's `ack` is sent when the node's position
//! reaches `T` — at once if it is there already (the messages delivered
//! since the script ran are kept in `recent` while joins are out), or
//! right after message `T` is delivered — on the same channel to the core
//! that then carries the room's messages. So the joiner sees exactly the
//! messages after its `ack`'s seq, from whichever node they were published.
//!
//! This module decides; it must not do I/O itself: it calls Redis and
//! talks to cores through [`Io`].

use super::bridge::{Io, Want, as_array, as_bytes, as_int, as_str};
use crate::engine::{Answer, ConnRef, Event, ReplyTo, replies};
use crate::frame::text_frame;
use crate::proto::ErrorCode;
use crate::proto::command::{Id, Since};
use crate::proto::event::{self, Event as Ev};
use bytes::Bytes;
use redis::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use tracing::{debug, warn};

/// A room the node stopped needing stays subscribed this long, ms (a
/// member who drops and comes back does not cost a resubscribe).
pub const LINGER_MS: u64 = 5000;
/// A join waiting for messages the subscription should bring fills them
/// from the stream after this long, ms.
const PARKED_FILL_MS: u64 = 500;
/// Most messages held for a room while its gap is filled; beyond it the
/// room is resynchronised (its members recover with `since`).
const MAX_BUFFER: usize = 100_000;
/// Typing not refreshed for this long ends (PROTOCOL: 6 s).
pub const TYPING_TTL_MS: u64 = 6000;

/// A local member of a room: user and display name.
pub type Member = (Arc<str>, Option<Arc<str>>);

/// A join in progress.
#[derive(Debug)]
pub struct JoinReq {
    /// Core of the joining connection.
    pub core: usize,
    /// The connection.
    pub conn: ConnRef,
    /// Its user.
    pub user: Arc<str>,
    /// The user's display name.
    pub name: Option<Arc<str>>,
    /// Command id for the `ack`.
    pub id: Option<Id>,
    /// Recovery position.
    pub since: Option<Since>,
    /// Already a member.
    pub rejoin: bool,
}

/// A join answered by Redis, waiting for the node's position to reach
/// the seq the script saw.
#[derive(Debug)]
struct Parked {
    req: JoinReq,
    target: u64,
    members: u64,
    recovered: Option<bool>,
    replay: Vec<(u64, Bytes)>,
    since_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sub {
    /// Not subscribed.
    None,
    /// SUBSCRIBE sent, not confirmed.
    Pending,
    /// Confirmed: every later publish reaches this node.
    Active,
}

/// The node's delivered position in a room.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pos {
    /// Not known yet (no join or position answered since subscribing).
    Unknown,
    /// Delivered up to `last` under `epoch`.
    Known { epoch: Arc<str>, last: u64 },
    /// Was `Known`, but the subscription was lost: messages after `last`
    /// may have been missed and are read from the stream.
    Stale { epoch: Arc<str>, last: u64 },
}

/// One room on this node.
#[derive(Debug)]
struct NodeRoom {
    /// Member connections per core, counted when their `ack` goes out.
    cores: Vec<u32>,
    /// Local member connections per user (counted when the join is sent)
    /// and the user's name.
    users: HashMap<Arc<str>, (u32, Option<Arc<str>>)>,
    sub: Sub,
    pos: Pos,
    /// A POSITION call is out.
    fetching: bool,
    /// Messages not deliverable yet, by seq: (epoch, frame).
    buffer: BTreeMap<u64, (Arc<str>, Bytes)>,
    /// An XRANGE for a gap is out.
    filling: bool,
    /// Joins waiting for the subscription.
    waiting: Vec<JoinReq>,
    /// Join scripts sent and not answered.
    in_flight: u32,
    /// Messages delivered while joins are out (their replay may need them).
    recent: VecDeque<(u64, Bytes)>,
    /// Answered joins waiting for the position to reach their target.
    parked: VecDeque<Parked>,
    /// Publish acks held until the node delivered their seq (so a member
    /// who publishes gets its message before its ack, as in one node).
    acks: VecDeque<(u64, usize, Event, u64)>,
    /// Local typists and when their typing ends (monotonic ms).
    typing: HashMap<Arc<str>, u64>,
    /// When the room stopped being needed (monotonic ms); 0 = needed.
    idle_since: u64,
}

impl NodeRoom {
    fn new(cores: usize) -> NodeRoom {
        NodeRoom {
            cores: vec![0; cores],
            users: HashMap::new(),
            sub: Sub::None,
            pos: Pos::Unknown,
            fetching: false,
            buffer: BTreeMap::new(),
            filling: false,
            waiting: Vec::new(),
            in_flight: 0,
            recent: VecDeque::new(),
            parked: VecDeque::new(),
            acks: VecDeque::new(),
            typing: HashMap::new(),
            idle_since: 0,
        }
    }

    fn needed(&self) -> bool {
        !self.users.is_empty()
            || !self.acks.is_empty()
            || !self.waiting.is_empty()
            || self.in_flight > 0
            || !self.parked.is_empty()
            || self.cores.iter().any(|&n| n > 0)
    }

    fn interested(&self) -> impl Iterator<Item = usize> + '_ {
        self.cores
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n > 0)
            .map(|(c, _)| c)
    }
}

/// The rooms of this node.
#[derive(Debug, Default)]
pub struct NodeRooms {
    rooms: HashMap<Arc<str>, NodeRoom>,
    cores: usize,
}

impl NodeRooms {
    /// Rooms of a node with `cores` cores.
    pub fn new(cores: usize) -> NodeRooms {
        NodeRooms {
            rooms: HashMap::new(),
            cores,
        }
    }

    /// Rooms held (with members, joining or lingering).
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    /// Whether no room is held.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    fn room(&mut self, room: &Arc<str>) -> &mut NodeRoom {
        let cores = self.cores;
        self.rooms
            .entry(room.clone())
            .or_insert_with(|| NodeRoom::new(cores))
    }

    // ---- joining --------------------------------------------------------

    /// A connection wants to join (or, `rejoin`, to hear the position).
    pub fn join(&mut self, io: &mut Io<'_>, room: Arc<str>, req: JoinReq) {
        if !io.cmd_ready() {
            return refuse_join(io, room, req, ErrorCode::Unavailable, UNAVAILABLE);
        }
        let r = self.room(&room);
        r.idle_since = 0;
        if !req.rejoin {
            let first_here = r.users.is_empty();
            let u = r.users.entry(req.user.clone()).or_insert((0, None));
            u.0 += 1;
            if req.name.is_some() {
                u.1 = req.name.clone();
            }
            if first_here {
                let set = io.keys.node_set(io.keys.node(), "rooms");
                io.call(
                    redis::cmd("SADD").arg(set).arg(&*room),
                    Want::Ignore("SADD"),
                );
            }
        }
        match r.sub {
            Sub::Active => self.send_join(io, room, req),
            Sub::Pending => r.waiting.push(req),
            Sub::None => {
                r.sub = Sub::Pending;
                r.waiting.push(req);
                io.subscribe(io.keys.room_channel(&room));
            }
        }
    }

    fn send_join(&mut self, io: &mut Io<'_>, room: Arc<str>, req: JoinReq) {
        let r = self.room(&room);
        // Registered in Redis by the user's first local connection only.
        let register = !req.rejoin && r.users.get(&req.user).is_some_and(|u| u.0 == 1);
        let (since_epoch, since_seq) = match &req.since {
            Some(s) => (s.epoch.as_str().to_string(), s.seq.to_string()),
            None => (String::new(), String::new()),
        };
        let k = io.keys;
        let mut cmd = io.script(
            &io.scripts.join,
            &[
                &k.room(&room, "m"),
                &k.room(&room, "h"),
                &k.room(&room, "u"),
                &k.room(&room, "nm"),
                &k.room_node(&room, k.node()),
            ],
        );
        cmd.arg(k.room_channel(&room))
            .arg(io.new_epoch())
            .arg(&*room)
            .arg(&*req.user)
            .arg(req.name.as_deref().unwrap_or(""))
            .arg(if register { "1" } else { "0" })
            .arg(since_epoch)
            .arg(since_seq)
            .arg(io.cfg.ttl_ms)
            .arg(io.cfg.idle_ms);
        r.in_flight += 1;
        io.call(&cmd, Want::Join { room, req });
    }

    /// The subscription to a room's channel is confirmed.
    pub fn on_subscribed(&mut self, io: &mut Io<'_>, room: &str) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        if r.sub == Sub::Active {
            return;
        }
        r.sub = Sub::Active;
        let room: Arc<str> = self.rooms.get_key_value(room).expect("held").0.clone();
        let waiting = std::mem::take(&mut self.room(&room).waiting);
        let joins = !waiting.is_empty();
        for req in waiting {
            self.send_join(io, room.clone(), req);
        }
        let r = self.room(&room);
        if !joins && r.pos != Pos::Unknown {
            // A resubscription after a lost connection: where is the room?
            fetch_position(io, &room, r);
        }
    }

    /// The join script answered `{epoch, seq, members, recovered, json...}`.
    pub fn on_join_reply(&mut self, io: &mut Io<'_>, room: Arc<str>, req: JoinReq, v: Value) {
        let Some(r) = self.rooms.get_mut(&room) else {
            return refuse_join(io, room, req, ErrorCode::Internal, "room state lost");
        };
        r.in_flight = r.in_flight.saturating_sub(1);
        let parsed = as_array(&v).and_then(|a| {
            let epoch: Arc<str> = as_str(a.first()?)?.into();
            let seq = as_int(a.get(1)?)? as u64;
            let members = as_int(a.get(2)?)? as u64;
            let recovered = match as_int(a.get(3)?)? {
                -1 => None,
                n => Some(n == 1),
            };
            let mut replay = Vec::new();
            for (i, j) in a[4..].iter().enumerate() {
                let seq_i = req.since.as_ref().map_or(0, |s| s.seq) + 1 + i as u64;
                replay.push((seq_i, text_frame(as_bytes(j)?)));
            }
            Some((epoch, seq, members, recovered, replay))
        });
        let Some((epoch, target, members, recovered, replay)) = parsed else {
            warn!(room = %room, reply = ?v, "join script failed");
            self.undo_join(io, &room, &req);
            return refuse_join(
                io,
                room,
                req,
                ErrorCode::Unavailable,
                "cluster engine error",
            );
        };
        let r = self.room(&room);
        if let Pos::Stale { epoch: e, last } = r.pos.clone() {
            // The subscription was lost: deliver what the node missed
            // first, from the stream.
            r.pos = Pos::Known { epoch: e, last };
        }
        let parked = Parked {
            req,
            target,
            members,
            recovered,
            replay,
            since_ms: io.now_ms,
        };
        match r.pos.clone() {
            Pos::Unknown => {
                r.pos = Pos::Known {
                    epoch: epoch.clone(),
                    last: target,
                };
                self.ack(io, &room, parked, epoch);
                self.drain(io, &room);
            }
            Pos::Known { epoch: e, last } if e == epoch => {
                if last >= target {
                    self.ack(io, &room, parked, epoch);
                } else {
                    r.parked.push_back(parked);
                    if r.buffer
                        .first_key_value()
                        .is_some_and(|(&s, _)| s > last + 1)
                    {
                        self.drain(io, &room);
                    }
                }
            }
            Pos::Known { .. } => {
                // Redis has a new epoch for the room: its history was lost.
                self.reset_epoch(io, &room, epoch.clone(), target);
                self.ack(io, &room, parked, epoch);
                self.drain(io, &room);
            }
            Pos::Stale { .. } => unreachable!("made Known above"),
        }
        self.release_recent(&room);
    }

    /// Sends the `ack` of a join whose target the node has reached.
    fn ack(&mut self, io: &mut Io<'_>, room: &Arc<str>, p: Parked, epoch: Arc<str>) {
        let r = self.room(room);
        let Pos::Known { last, .. } = r.pos else {
            unreachable!("acked only at a known position")
        };
        let since = p.req.since.as_ref().map_or(0, |s| s.seq);
        let mut replay: Vec<Bytes> = Vec::new();
        if p.recovered == Some(true) {
            replay.extend(p.replay.into_iter().map(|(_, f)| f));
            // Delivered to the room after the script ran, before this ack.
            replay.extend(
                r.recent
                    .iter()
                    .filter(|(s, _)| *s > p.target.max(since) && *s <= last)
                    .map(|(_, f)| f.clone()),
            );
        }
        let mut ack = Ev::new("ack")
            .id(p.req.id.as_ref())
            .str("room", room)
            .str("epoch", &epoch)
            .num("seq", last)
            .num("members", p.members);
        if let Some(rec) = p.recovered {
            ack = ack.bool("recovered", rec);
        }
        if !p.req.rejoin {
            r.cores[p.req.core] += 1;
        }
        let ev = Event::JoinAck {
            room: room.clone(),
            conn: p.req.conn,
            user: p.req.user,
            replay,
            frame: text_frame(ack.finish().as_bytes()),
            rejoin: p.req.rejoin,
            refused: false,
        };
        io.event(p.req.core, ev);
    }

    /// A join that failed after being counted: undo the local count.
    fn undo_join(&mut self, io: &mut Io<'_>, room: &Arc<str>, req: &JoinReq) {
        if req.rejoin {
            return;
        }
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        if let Some(u) = r.users.get_mut(&req.user) {
            u.0 = u.0.saturating_sub(1);
            if u.0 == 0 {
                r.users.remove(&req.user);
            }
        }
        self.maybe_idle(io, room);
    }

    /// Fails a join whose script never answered (the connection dropped).
    pub fn join_failed(&mut self, io: &mut Io<'_>, room: Arc<str>, req: JoinReq) {
        if let Some(r) = self.rooms.get_mut(&room) {
            r.in_flight = r.in_flight.saturating_sub(1);
        }
        self.undo_join(io, &room, &req);
        self.release_recent(&room);
        refuse_join(io, room, req, ErrorCode::Unavailable, UNAVAILABLE);
    }

    fn release_recent(&mut self, room: &str) {
        if let Some(r) = self.rooms.get_mut(room)
            && r.in_flight == 0
            && r.parked.is_empty()
        {
            r.recent.clear();
        }
    }

    // ---- messages -------------------------------------------------------

    /// A room event from the subscription (`payload` without its kind
    /// byte's meaning resolved yet).
    pub fn on_payload(&mut self, io: &mut Io<'_>, room: &str, payload: &[u8]) {
        let Some(r) = self.rooms.get(room) else {
            return; // a late message after unsubscribing
        };
        let room: Arc<str> = self.rooms.get_key_value(room).expect("held").0.clone();
        match payload.first() {
            Some(b'm') => {
                let Some((seq, epoch, json)) = parse_message(&payload[1..]) else {
                    return warn!(room = %room, "unreadable message payload");
                };
                let _ = r;
                self.on_message(io, &room, seq, epoch.into(), text_frame(json));
            }
            Some(b'e') => {
                let frame = text_frame(&payload[1..]);
                deliver_all(io, &room, r, frame, 0);
            }
            Some(b'x') => {
                let Some((user, json)) = parse_except(&payload[1..]) else {
                    return;
                };
                let frame = text_frame(json);
                for c in r.interested() {
                    let ev = Event::DeliverExcept {
                        room: room.clone(),
                        except: user.into(),
                        frame: frame.clone(),
                    };
                    io.event(c, ev);
                }
            }
            _ => debug!(room = %room, "unknown room payload"),
        }
    }

    fn on_message(
        &mut self,
        io: &mut Io<'_>,
        room: &Arc<str>,
        seq: u64,
        epoch: Arc<str>,
        frame: Bytes,
    ) {
        let r = self.room(room);
        match &r.pos {
            Pos::Known { epoch: e, last } if *e == epoch => {
                let last = *last;
                if seq <= last {
                    return; // already delivered (from the stream)
                }
                if seq == last + 1 && r.buffer.is_empty() {
                    self.deliver(io, room, seq, frame);
                    return self.after_delivery(io, room);
                }
                r.buffer.insert(seq, (epoch, frame));
                self.drain(io, room);
            }
            Pos::Known { .. } => {
                // A new epoch: Redis lost the room's history.
                r.buffer.insert(seq, (epoch.clone(), frame));
                self.reset_epoch(io, room, epoch, seq - 1);
                self.drain(io, room);
            }
            Pos::Unknown | Pos::Stale { .. } => {
                r.buffer.insert(seq, (epoch, frame));
                if r.buffer.len() > MAX_BUFFER {
                    r.buffer.clear();
                }
            }
        }
    }

    /// Delivers message `seq` (the next one) to the cores with members.
    fn deliver(&mut self, io: &mut Io<'_>, room: &Arc<str>, seq: u64, frame: Bytes) {
        let r = self.room(room);
        if let Pos::Known { last, .. } = &mut r.pos {
            *last = seq;
        }
        if r.in_flight > 0 || !r.parked.is_empty() {
            r.recent.push_back((seq, frame.clone()));
        }
        let at_us = io.now_us.max(1);
        deliver_all(io, room, r, frame, at_us);
    }

    /// A publish was sequenced as `seq`: its `ack` (`ev` for `core`) goes
    /// out once this node delivered `seq`, when it delivers the room.
    pub fn publish_acked(&mut self, io: &mut Io<'_>, room: &str, seq: u64, core: usize, ev: Event) {
        match self.rooms.get_mut(room) {
            Some(r)
                if r.sub == Sub::Active
                    && matches!(&r.pos, Pos::Known { last, .. } if *last < seq) =>
            {
                r.acks.push_back((seq, core, ev, io.now_ms));
            }
            _ => io.event(core, ev),
        }
    }

    /// Sends every held ack whose seq was delivered (all, with `all`).
    fn release_acks(io: &mut Io<'_>, r: &mut NodeRoom, all: bool) {
        let last = match &r.pos {
            Pos::Known { last, .. } if !all => *last,
            _ => u64::MAX,
        };
        while r.acks.front().is_some_and(|(s, ..)| *s <= last) {
            let (_, core, ev, _) = r.acks.pop_front().expect("checked");
            io.event(core, ev);
        }
    }

    /// Sends the joins whose target the position reached, and the acks.
    fn after_delivery(&mut self, io: &mut Io<'_>, room: &Arc<str>) {
        if let Some(r) = self.rooms.get_mut(room) {
            Self::release_acks(io, r, false);
        }
        loop {
            let r = self.room(room);
            let Pos::Known { epoch, last } = r.pos.clone() else {
                return;
            };
            if r.parked.front().is_none_or(|p| p.target > last) {
                break;
            }
            let p = r.parked.pop_front().expect("checked");
            self.ack(io, room, p, epoch);
        }
        self.release_recent(room);
    }

    /// Delivers what the buffer holds in order; asks the stream for a gap.
    fn drain(&mut self, io: &mut Io<'_>, room: &Arc<str>) {
        loop {
            let r = self.room(room);
            let Pos::Known { epoch, last } = r.pos.clone() else {
                return;
            };
            let Some((&seq, _)) = r.buffer.first_key_value() else {
                break;
            };
            if seq <= last {
                r.buffer.pop_first();
                continue;
            }
            if seq > last + 1 {
                if !r.filling && io.cmd_ready() {
                    r.filling = true;
                    let cmd = redis::cmd("XRANGE")
                        .arg(io.keys.room(room, "h"))
                        .arg(format!("{}-0", last + 1))
                        .arg(format!("{}-0", seq - 1))
                        .to_owned();
                    io.call(&cmd, Want::Fill { room: room.clone() });
                }
                break;
            }
            let (_, (e, frame)) = r.buffer.pop_first().expect("checked");
            if e != epoch {
                continue;
            }
            self.deliver(io, room, seq, frame);
            self.after_delivery(io, room);
        }
        self.after_delivery(io, room);
    }

    /// A gap's messages from the stream (`XRANGE` entries).
    pub fn on_fill(&mut self, io: &mut Io<'_>, room: Arc<str>, v: Value) {
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        r.filling = false;
        let Pos::Known { epoch, last } = r.pos.clone() else {
            return;
        };
        let entries = as_array(&v).map(|a| a.to_vec()).unwrap_or_default();
        let mut got_next = false;
        for e in &entries {
            let Some((seq, json)) = stream_entry(e) else {
                continue;
            };
            if seq == last + 1 {
                got_next = true;
            }
            if seq > last {
                r.buffer.insert(seq, (epoch.clone(), text_frame(json)));
            }
        }
        let gap_start = r.buffer.first_key_value().map(|(&s, _)| s);
        if !got_next && gap_start.is_some_and(|s| s > last + 1) {
            // The stream no longer has what this node missed (trimmed, or
            // a long disconnection): the members cannot be served in order
            // without a gap, so they are asked to recover with `since`.
            let first = gap_start.expect("checked");
            warn!(room = %room, from = last + 1, to = first - 1, "messages lost to this node; members resume with since");
            self.evict(io, &room);
            if let Pos::Known { last, .. } = &mut self.room(&room).pos {
                *last = first - 1;
            }
        }
        self.drain(io, &room);
    }

    /// Redis knows the room under a new epoch (its history was lost): the
    /// local members cannot continue their positions and recover with
    /// `since` (their `recovered: false` reports the loss).
    fn reset_epoch(&mut self, io: &mut Io<'_>, room: &Arc<str>, epoch: Arc<str>, last: u64) {
        warn!(room = %room, epoch = %epoch, "room has a new epoch in Redis (history lost)");
        self.evict(io, room);
        let r = self.room(room);
        r.pos = Pos::Known { epoch, last };
        r.recent.clear();
        // Parked joins were answered under the old epoch: they retry.
        let parked: Vec<Parked> = r.parked.drain(..).collect();
        for p in parked {
            self.undo_join(io, room, &p.req);
            refuse_join(
                io,
                room.clone(),
                p.req,
                ErrorCode::Unavailable,
                "room history changed; retry",
            );
        }
    }

    /// Closes this node's members of `room` with 4009 (resume with since).
    fn evict(&mut self, io: &mut Io<'_>, room: &Arc<str>) {
        let r = self.room(room);
        Self::release_acks(io, r, true);
        for c in r.interested() {
            io.event(c, Event::Evict { room: room.clone() });
        }
    }

    /// The room's position (after a resubscription without joins).
    pub fn on_position(&mut self, io: &mut Io<'_>, room: Arc<str>, v: Value) {
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        r.fetching = false;
        let Some((epoch, seq)) = as_array(&v).and_then(|a| {
            Some((
                Arc::<str>::from(as_str(a.first()?)?),
                as_int(a.get(1)?)? as u64,
            ))
        }) else {
            return warn!(room = %room, reply = ?v, "position script failed");
        };
        match r.pos.clone() {
            Pos::Stale { epoch: e, last } | Pos::Known { epoch: e, last } if e == epoch => {
                r.pos = Pos::Known { epoch, last };
                if seq > last && r.buffer.first_key_value().is_none_or(|(&s, _)| s > seq) {
                    // Missed while unsubscribed: read them from the stream
                    // (the buffer's first message marks the gap's end).
                    let cmd = redis::cmd("XRANGE")
                        .arg(io.keys.room(&room, "h"))
                        .arg(format!("{}-0", last + 1))
                        .arg(format!("{seq}-0"))
                        .to_owned();
                    r.filling = true;
                    io.call(&cmd, Want::Fill { room: room.clone() });
                    return;
                }
                self.drain(io, &room);
            }
            Pos::Unknown => {
                r.pos = Pos::Known { epoch, last: seq };
                self.drain(io, &room);
            }
            _ => {
                self.reset_epoch(io, &room, epoch, seq);
                self.drain(io, &room);
            }
        }
    }

    /// A position or gap read that was never answered (Redis went away):
    /// it is asked again once the command connection is back.
    pub fn retry_later(&mut self, room: &str) {
        if let Some(r) = self.rooms.get_mut(room) {
            r.fetching = false;
            r.filling = false;
        }
    }

    /// The command connection is back: rooms whose position or gap read
    /// was lost ask again.
    pub fn on_cmd_back(&mut self, io: &mut Io<'_>) {
        let names: Vec<Arc<str>> = self.rooms.keys().cloned().collect();
        for name in names {
            let r = self.room(&name);
            if r.sub != Sub::Active {
                continue;
            }
            match r.pos {
                Pos::Stale { .. } => fetch_position(io, &name, r),
                Pos::Known { .. } if !r.buffer.is_empty() => self.drain(io, &name),
                _ => {}
            }
        }
    }

    // ---- leaving --------------------------------------------------------

    /// One member connection of `user` on `core` left.
    pub fn leave(&mut self, io: &mut Io<'_>, room: Arc<str>, core: usize, user: Arc<str>) {
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        r.cores[core] = r.cores[core].saturating_sub(1);
        let Some(u) = r.users.get_mut(&user) else {
            return;
        };
        u.0 = u.0.saturating_sub(1);
        if u.0 > 0 {
            return;
        }
        r.users.remove(&user);
        if r.typing.remove(&user).is_some() {
            publish_typing(io, &room, &user, false);
        }
        if io.cmd_ready() {
            let k = io.keys;
            let mut cmd = io.script(
                &io.scripts.leave,
                &[
                    &k.room(&room, "m"),
                    &k.room(&room, "u"),
                    &k.room(&room, "nm"),
                    &k.room_node(&room, k.node()),
                ],
            );
            cmd.arg(k.room_channel(&room))
                .arg(&*room)
                .arg(&*user)
                .arg(io.cfg.idle_ms);
            io.call(&cmd, Want::Ignore("leave"));
        }
        self.maybe_idle(io, &room);
    }

    /// Starts the linger of a room nobody on this node needs any more.
    fn maybe_idle(&mut self, io: &mut Io<'_>, room: &Arc<str>) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        if r.needed() || r.idle_since != 0 {
            return;
        }
        r.idle_since = io.now_ms.max(1);
        if io.cmd_ready() {
            let set = io.keys.node_set(io.keys.node(), "rooms");
            io.call(
                redis::cmd("SREM").arg(set).arg(&**room),
                Want::Ignore("SREM"),
            );
        }
    }

    /// Once in a while: unsubscribes rooms idle for [`LINGER_MS`], fills
    /// for joins waiting too long, ends local typing that expired.
    pub fn tick(&mut self, io: &mut Io<'_>) {
        let now = io.now_ms;
        let mut drop = Vec::new();
        let mut fill = Vec::new();
        let mut typing_ended = Vec::new();
        for (name, r) in self.rooms.iter_mut() {
            if r.idle_since != 0 && !r.needed() && now.saturating_sub(r.idle_since) >= LINGER_MS {
                drop.push(name.clone());
                continue;
            }
            // Joins or acks waiting for messages the subscription should
            // have brought: read them from the stream.
            let waiting = r
                .parked
                .front()
                .map(|p| (p.since_ms, p.target))
                .into_iter()
                .chain(r.acks.front().map(|a| (a.3, a.0)))
                .filter(|(since, _)| now.saturating_sub(*since) >= PARKED_FILL_MS)
                .map(|(_, target)| target)
                .max();
            if !r.filling
                && let (Some(target), Pos::Known { last, .. }) = (waiting, &r.pos)
            {
                fill.push((name.clone(), *last, target));
            }
            r.typing.retain(|user, until| {
                let keep = *until > now;
                if !keep {
                    typing_ended.push((name.clone(), user.clone()));
                }
                keep
            });
        }
        for room in drop {
            self.rooms.remove(&room);
            io.unsubscribe(io.keys.room_channel(&room));
        }
        for (room, last, target) in fill {
            if target > last && io.cmd_ready() {
                self.room(&room).filling = true;
                let cmd = redis::cmd("XRANGE")
                    .arg(io.keys.room(&room, "h"))
                    .arg(format!("{}-0", last + 1))
                    .arg(format!("{target}-0"))
                    .to_owned();
                io.call(&cmd, Want::Fill { room });
            }
        }
        for (room, user) in typing_ended {
            publish_typing(io, &room, &user, false);
        }
    }

    // ---- typing ---------------------------------------------------------

    /// A local member's typing state; only changes are published.
    pub fn typing(&mut self, io: &mut Io<'_>, room: Arc<str>, user: Arc<str>, typing: bool) {
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        if !r.users.contains_key(&user) {
            return;
        }
        let changed = if typing {
            r.typing
                .insert(user.clone(), io.now_ms + TYPING_TTL_MS)
                .is_none()
        } else {
            r.typing.remove(&user).is_some()
        };
        if changed && io.cmd_ready() {
            publish_typing(io, &room, &user, typing);
        }
    }

    // ---- connection loss ------------------------------------------------

    /// The pub/sub connection was lost: every room must resubscribe, and
    /// what was delivered is only a lower bound now.
    pub fn on_sub_lost(&mut self, io: &mut Io<'_>) {
        for r in self.rooms.values_mut() {
            Self::release_acks(io, r, true);
            r.sub = Sub::None;
            if let Pos::Known { epoch, last } = r.pos.clone() {
                r.pos = Pos::Stale { epoch, last };
            }
            r.filling = false;
            r.fetching = false;
        }
    }

    /// The pub/sub connection is back: resubscribes the rooms still needed
    /// (positions are fetched as the confirmations arrive).
    pub fn resubscribe(&mut self, io: &mut Io<'_>) {
        let mut gone = Vec::new();
        for (name, r) in self.rooms.iter_mut() {
            if !r.needed() {
                gone.push(name.clone());
                continue;
            }
            r.sub = Sub::Pending;
            io.subscribe(io.keys.room_channel(name));
        }
        for room in gone {
            self.rooms.remove(&room);
        }
    }

    /// This node's members per room, for reconciling Redis after a
    /// (re)connect: (room, [(user, name)]).
    pub fn members(&self) -> Vec<(Arc<str>, Vec<Member>)> {
        self.rooms
            .iter()
            .filter(|(_, r)| !r.users.is_empty())
            .map(|(name, r)| {
                let users = r
                    .users
                    .iter()
                    .map(|(u, (_, n))| (u.clone(), n.clone()))
                    .collect();
                (name.clone(), users)
            })
            .collect()
    }

    /// The local rooms a user is in (for the user's presence).
    pub fn has_member(&self, room: &str, user: &str) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|r| r.users.contains_key(user))
    }

    /// Cores with members of `room`.
    pub fn cores_of(&self, room: &str) -> Vec<usize> {
        self.rooms
            .get(room)
            .map(|r| r.interested().collect())
            .unwrap_or_default()
    }
}

const UNAVAILABLE: &str = "the cluster engine (Redis) is unreachable; retry later";

/// Sends `frame` to every core with members of the room.
fn deliver_all(io: &mut Io<'_>, room: &Arc<str>, r: &NodeRoom, frame: Bytes, at_us: u64) {
    for c in r.interested() {
        let ev = Event::Deliver {
            room: room.clone(),
            frame: frame.clone(),
            at_us,
        };
        io.event(c, ev);
    }
}

fn fetch_position(io: &mut Io<'_>, room: &Arc<str>, r: &mut NodeRoom) {
    if r.fetching || !io.cmd_ready() {
        return;
    }
    r.fetching = true;
    let mut cmd = io.script(
        &io.scripts.position,
        &[&io.keys.room(room, "m"), &io.keys.room(room, "h")],
    );
    cmd.arg(io.new_epoch());
    io.call(&cmd, Want::Position { room: room.clone() });
}

/// Answers a join that will not happen: the error, framed, as a refused
/// `JoinAck` (the connection reads on and stays out of the room).
fn refuse_join(io: &mut Io<'_>, room: Arc<str>, req: JoinReq, code: ErrorCode, msg: &str) {
    let err = event::error(req.id.as_ref(), code, msg);
    let ev = Event::JoinAck {
        room,
        conn: req.conn,
        user: req.user,
        replay: Vec::new(),
        frame: text_frame(err.as_bytes()),
        rejoin: req.rejoin,
        refused: true,
    };
    io.event(req.core, ev);
}

fn publish_typing(io: &mut Io<'_>, room: &str, user: &str, typing: bool) {
    let frame = replies::typing_frame(room, user, typing);
    let json = crate::frame::payload(&frame);
    let mut payload = Vec::with_capacity(json.len() + user.len() + 8);
    payload.push(b'x');
    payload.extend_from_slice(itoa::Buffer::new().format(user.len()).as_bytes());
    payload.push(b',');
    payload.extend_from_slice(user.as_bytes());
    payload.extend_from_slice(json);
    let cmd = redis::cmd("PUBLISH")
        .arg(io.keys.room_channel(room))
        .arg(payload)
        .to_owned();
    io.call(&cmd, Want::Ignore("typing"));
}

/// `<seq>,<epoch>,<json>` of a message payload.
fn parse_message(p: &[u8]) -> Option<(u64, &str, &[u8])> {
    let c1 = memchr::memchr(b',', p)?;
    let seq = std::str::from_utf8(&p[..c1]).ok()?.parse().ok()?;
    let rest = &p[c1 + 1..];
    let c2 = memchr::memchr(b',', rest)?;
    let epoch = std::str::from_utf8(&rest[..c2]).ok()?;
    Some((seq, epoch, &rest[c2 + 1..]))
}

/// `<len>,<user><json>` of a room event for everyone but one user.
fn parse_except(p: &[u8]) -> Option<(&str, &[u8])> {
    let c = memchr::memchr(b',', p)?;
    let len: usize = std::str::from_utf8(&p[..c]).ok()?.parse().ok()?;
    let rest = &p[c + 1..];
    let user = std::str::from_utf8(rest.get(..len)?).ok()?;
    Some((user, &rest[len..]))
}

/// `[id, [d, json, t, ts]]` of a stream entry → (seq, json).
pub fn stream_entry(v: &Value) -> Option<(u64, &[u8])> {
    let a = as_array(v)?;
    let id = as_str(a.first()?)?;
    let seq = id.split('-').next()?.parse().ok()?;
    let fields = as_array(a.get(1)?)?;
    let mut i = 0;
    while i + 1 < fields.len() {
        if as_bytes(&fields[i]) == Some(b"d") {
            return Some((seq, as_bytes(&fields[i + 1])?));
        }
        i += 2;
    }
    None
}

/// The `t` (ts) field of a stream entry.
pub fn stream_ts(v: &Value) -> Option<u64> {
    let a = as_array(v)?;
    let fields = as_array(a.get(1)?)?;
    let mut i = 0;
    while i + 1 < fields.len() {
        if as_bytes(&fields[i]) == Some(b"t") {
            return as_str(&fields[i + 1])?.parse().ok();
        }
        i += 2;
    }
    None
}

/// A `history` reply from `XREVRANGE` entries (newest first), keeping
/// those younger than `cutoff_ms`.
pub fn history_reply(room: &str, reply: &ReplyTo, v: &Value, cutoff_ms: u64) -> String {
    let mut out = String::with_capacity(256);
    replies::history_head(&mut out, reply.id.as_ref(), room);
    let entries = as_array(v).map(|a| a.to_vec()).unwrap_or_default();
    let mut first = true;
    for e in entries.iter().rev() {
        if stream_ts(e).is_some_and(|ts| ts < cutoff_ms) {
            continue;
        }
        let Some((_, json)) = stream_entry(e) else {
            continue;
        };
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(std::str::from_utf8(json).unwrap_or("null"));
    }
    out.push_str("]}");
    out
}

/// The room description from `ROOM_INFO` and the members' statuses:
/// `members` or the `/api/rooms` body.
pub fn members_answer(
    room: &str,
    id: Option<Id>,
    answer: Answer,
    info: &Value,
    statuses: &[Option<String>],
) -> (usize, Event) {
    let a = as_array(info).map(|a| a.to_vec()).unwrap_or_default();
    let epoch = a.first().and_then(as_str).unwrap_or("").to_string();
    let seq = a.get(1).and_then(as_int).unwrap_or(0) as u64;
    let len = a.get(2).and_then(as_int).unwrap_or(0) as u64;
    let mut users: Vec<(String, String)> = Vec::new();
    let mut i = 3;
    while i + 1 < a.len() {
        let u = as_str(&a[i]).unwrap_or("").to_string();
        let n = as_str(&a[i + 1]).unwrap_or("").to_string();
        users.push((u, n));
        i += 2;
    }
    let mut order: Vec<usize> = (0..users.len()).collect();
    order.sort_by(|&x, &y| users[x].0.cmp(&users[y].0));
    let mut list = String::from("[");
    for (k, &j) in order.iter().enumerate() {
        let (u, n) = &users[j];
        let st = statuses.get(j).cloned().flatten();
        let name = (!n.is_empty()).then_some(n.as_str());
        replies::push_member(
            &mut list,
            k == 0,
            u,
            name,
            st.as_deref().unwrap_or("online"),
        );
    }
    list.push(']');
    let described = (!epoch.is_empty()).then(|| (Arc::<str>::from(epoch.as_str()), seq, len));
    replies::members(room, id, answer, &list, described)
}

/// The users listed in a `ROOM_INFO` reply, in order.
pub fn info_users(info: &Value) -> Vec<String> {
    let a = as_array(info).map(|a| a.to_vec()).unwrap_or_default();
    let mut out = Vec::new();
    let mut i = 3;
    while i + 1 < a.len() {
        out.push(as_str(&a[i]).unwrap_or("").to_string());
        i += 2;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse() {
        let (seq, epoch, json) = parse_message(b"12,abcd,{\"a\":1}").unwrap();
        assert_eq!((seq, epoch, json), (12, "abcd", &b"{\"a\":1}"[..]));
        assert!(parse_message(b"x,abcd,{}").is_none());
        let (user, json) = parse_except(b"3,a,b{\"t\":1}").unwrap();
        assert_eq!((user, json), ("a,b", &b"{\"t\":1}"[..]));
        assert!(parse_except(b"9,ab").is_none());
    }

    #[test]
    fn stream_entries_give_seq_json_and_ts() {
        let e = Value::Array(vec![
            Value::BulkString(b"7-0".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"d".to_vec()),
                Value::BulkString(b"{\"seq\":7}".to_vec()),
                Value::BulkString(b"t".to_vec()),
                Value::BulkString(b"1700".to_vec()),
            ]),
        ]);
        assert_eq!(stream_entry(&e), Some((7, &b"{\"seq\":7}"[..])));
        assert_eq!(stream_ts(&e), Some(1700));
    }
}
