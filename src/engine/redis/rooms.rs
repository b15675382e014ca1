//! A node's rooms in the Redis engine: which cores have members (the
//! node's interest set), which local users are in each room, the room's
//! subscription, and the position up to which the node has delivered the
//! room's messages.
//!
//! The order of a room is Redis's: the publish script assigns seqs one at a
//! time and PUBLISHes in that order. This node delivers message `seq` only
//! after `seq - 1`: a message that arrives early (after a gap: a lost or
//! re-established subscription) waits in `buffer` while the gap is read
//! from the room's stream. A join subscribes first, then runs the join
//! script, which reports the room's seq `T` at that instant (and the missed
//! messages after `since`). Everything after `T` arrives on the
//! subscription; the joiner's `ack` is sent when the node's position
//! reaches `T` — at once if it is there already (the messages delivered
//! since the script ran are kept in `recent` while joins are out), or right
//! after message `T` is delivered — on the same channel to the core that
//! then carries the room's messages. So the joiner sees exactly the
//! messages after its `ack`'s seq, from whichever node they were published.
//!
//! When the room cannot be continued in order (Redis has a new epoch for
//! it, or messages this node missed are no longer in the stream), its
//! local members are closed with 4009 and resume with `since`. Joins that
//! cannot complete within [`JOIN_TIMEOUT_MS`] are refused (`unavailable`).
//!
//! This module decides; it must not do I/O itself: it calls Redis and talks
//! to cores through [`Io`].

use super::io::{Io, Want};
pub use super::joins::JoinReq;
use super::joins::{Parked, refuse_join};
use super::wire::{as_array, as_int, as_str, parse_except, parse_message, stream_entry};
use crate::engine::{Event, replies};
use crate::frame::text_frame;
use crate::proto::ErrorCode;
use bytes::Bytes;
use redis::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use tracing::{debug, warn};

/// A room the node stopped needing stays subscribed this long, ms (a
/// member who drops and comes back does not cost a resubscribe).
pub const LINGER_MS: u64 = 5000;
/// A join or ack waiting for messages the subscription should bring reads
/// them from the stream after this long, ms.
const PARKED_FILL_MS: u64 = 500;
/// A join not done after this long is refused (`unavailable`), ms.
pub const JOIN_TIMEOUT_MS: u64 = 5000;
/// Most messages held for a room while its gap is filled; beyond it the
/// room is not continued (its members recover with `since`).
const MAX_BUFFER: usize = 100_000;
/// Most messages kept for the replays of joins in flight.
const MAX_RECENT: usize = 100_000;
/// Typing not refreshed for this long ends (PROTOCOL: 6 s).
pub const TYPING_TTL_MS: u64 = 6000;

const UNAVAILABLE: &str = "the cluster engine (Redis) is unreachable; retry later";

/// A local member of a room: user and display name.
pub type Member = (Arc<str>, Option<Arc<str>>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sub {
    /// Not subscribed.
    None,
    /// SUBSCRIBE sent, not confirmed.
    Pending,
    /// Confirmed: every later publish reaches this node.
    Active,
}

/// The node's delivered position in a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Pos {
    /// Not known yet (no join or position answered since subscribing).
    Unknown,
    /// Delivered up to `last` under `epoch`.
    Known { epoch: Arc<str>, last: u64 },
    /// Was `Known`, but the subscription was lost: messages after `last`
    /// may have been missed and are read from the stream.
    Stale { epoch: Arc<str>, last: u64 },
}

impl Pos {
    /// The epoch and position to tell Redis (`""` when unknown), so a Redis
    /// that is behind it renews the epoch.
    pub(super) fn seen(&self) -> (String, String) {
        match self {
            Pos::Known { epoch, last } | Pos::Stale { epoch, last } => {
                (epoch.to_string(), last.to_string())
            }
            Pos::Unknown => (String::new(), String::new()),
        }
    }
}

/// One room on this node.
#[derive(Debug)]
pub(super) struct NodeRoom {
    /// Member connections per core, counted when their `ack` goes out.
    pub(super) cores: Vec<u32>,
    /// Local member connections per user (counted when the join arrives)
    /// and the user's name.
    pub(super) users: HashMap<Arc<str>, (u32, Option<Arc<str>>)>,
    pub(super) sub: Sub,
    pub(super) pos: Pos,
    /// A POSITION call is out.
    pub(super) fetching: bool,
    /// Messages not deliverable yet, by seq: (epoch, frame).
    pub(super) buffer: BTreeMap<u64, (Arc<str>, Bytes)>,
    /// An XRANGE for a gap is out.
    pub(super) filling: bool,
    /// Joins waiting for the subscription.
    pub(super) waiting: Vec<JoinReq>,
    /// The node's position when each join script in flight was sent (in
    /// send order, which is reply order).
    pub(super) sent: VecDeque<u64>,
    /// Messages delivered while joins are out, after the lowest position
    /// any of them may need (their replays may need them).
    pub(super) recent: VecDeque<(u64, Bytes)>,
    /// Answered joins waiting for the position to reach their target.
    pub(super) parked: VecDeque<Parked>,
    /// Publish acks held until the node delivered their seq (so a member
    /// who publishes gets its message before its ack, as in one node).
    pub(super) acks: VecDeque<(u64, usize, Event, u64)>,
    /// Local typists and when their typing ends (monotonic ms).
    pub(super) typing: HashMap<Arc<str>, u64>,
    /// When the room stopped being needed (monotonic ms); 0 = needed.
    pub(super) idle_since: u64,
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
            sent: VecDeque::new(),
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
            || !self.sent.is_empty()
            || !self.parked.is_empty()
            || self.cores.iter().any(|&n| n > 0)
    }

    pub(super) fn interested(&self) -> impl Iterator<Item = usize> + '_ {
        self.cores
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n > 0)
            .map(|(c, _)| c)
    }

    /// Drops the kept messages no join in flight or parked can need.
    pub(super) fn trim_recent(&mut self) {
        let floor = self
            .sent
            .iter()
            .copied()
            .chain(self.parked.iter().map(|p| p.target))
            .min();
        match floor {
            None => self.recent.clear(),
            Some(f) => {
                while self.recent.front().is_some_and(|(s, _)| *s <= f) {
                    self.recent.pop_front();
                }
            }
        }
        while self.recent.len() > MAX_RECENT {
            self.recent.pop_front();
        }
    }
}

/// The rooms of this node.
#[derive(Debug, Default)]
pub struct NodeRooms {
    pub(super) rooms: HashMap<Arc<str>, NodeRoom>,
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

    pub(super) fn room(&mut self, room: &Arc<str>) -> &mut NodeRoom {
        let cores = self.cores;
        self.rooms
            .entry(room.clone())
            .or_insert_with(|| NodeRoom::new(cores))
    }

    pub(super) fn name(&self, room: &str) -> Option<Arc<str>> {
        self.rooms.get_key_value(room).map(|(k, _)| k.clone())
    }

    // ---- messages -------------------------------------------------------

    /// A room event from the subscription.
    pub fn on_payload(&mut self, io: &mut Io<'_>, room: &str, payload: &[u8]) {
        let Some(name) = self.name(room) else {
            return; // a late message after unsubscribing
        };
        match payload.first() {
            Some(b'{') => {
                let Some((seq, epoch)) = parse_message(&name, payload) else {
                    return warn!(room = %name, "unreadable message payload");
                };
                let epoch: Arc<str> = epoch.into();
                self.on_message(io, &name, seq, epoch, text_frame(payload));
            }
            Some(b'e') => {
                let frame = text_frame(&payload[1..]);
                deliver_all(io, &name, self.room(&name), frame, 0);
            }
            Some(b'x') => {
                let Some((user, json)) = parse_except(&payload[1..]) else {
                    return;
                };
                let frame = text_frame(json);
                let except: Arc<str> = user.into();
                for c in self.room(&name).interested() {
                    let ev = Event::DeliverExcept {
                        room: name.clone(),
                        except: except.clone(),
                        frame: frame.clone(),
                    };
                    io.event(c, ev);
                }
            }
            _ => debug!(room = %name, "unknown room payload"),
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
                if r.buffer.len() > MAX_BUFFER {
                    // The gap is not closing: continue from what is held.
                    warn!(room = %room, "gap not filled in time; members resume with since");
                    self.skip_to_buffer(io, room);
                }
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
                    r.buffer.pop_first();
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
        if !r.sent.is_empty() || !r.parked.is_empty() {
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
        Self::release_acks(io, self.room(room), false);
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
        self.room(room).trim_recent();
    }

    /// Delivers what the buffer holds in order; asks the stream for a gap.
    pub(super) fn drain(&mut self, io: &mut Io<'_>, room: &Arc<str>) {
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
                request_fill(io, room, r, last + 1, seq - 1);
                break;
            }
            let (_, (e, frame)) = r.buffer.pop_first().expect("checked");
            if e != epoch {
                continue;
            }
            self.deliver(io, room, seq, frame);
        }
        self.after_delivery(io, room);
    }

    /// The messages `from..=to` of a gap, from the stream (`XRANGE`).
    pub fn on_fill(&mut self, io: &mut Io<'_>, room: Arc<str>, from: u64, to: u64, v: Value) {
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        r.filling = false;
        let Pos::Known { epoch, last } = r.pos.clone() else {
            return;
        };
        let mut got_next = false;
        for e in as_array(&v).unwrap_or(&[]) {
            let Some((seq, json)) = stream_entry(e) else {
                continue;
            };
            if let Some(other) = epoch_in(json).filter(|e| **e != *epoch) {
                // The stream holds another epoch already: Redis renewed the
                // room meanwhile.
                let other: Arc<str> = other.into();
                let frame = text_frame(json);
                self.reset_epoch(io, &room, other.clone(), seq - 1);
                self.room(&room).buffer.insert(seq, (other, frame));
                return self.drain(io, &room);
            }
            if seq == last + 1 {
                got_next = true;
            }
            if seq > last {
                r.buffer.insert(seq, (epoch.clone(), text_frame(json)));
            }
        }
        if from == last + 1 && !got_next {
            // The stream no longer has what this node missed (trimmed,
            // expired, or a long disconnection): the members cannot be
            // served in order without a gap, so they recover with `since`.
            warn!(room = %room, from, to, "messages lost to this node; members resume with since");
            let resume_at = r
                .buffer
                .first_key_value()
                .map_or(to, |(&s, _)| (s - 1).min(to));
            self.evict(io, &room);
            if let Pos::Known { last, .. } = &mut self.room(&room).pos {
                *last = (*last).max(resume_at);
            }
        }
        self.drain(io, &room);
    }

    /// The gap before the buffer will not be filled: the members are asked
    /// to recover, and delivery continues from the first message held.
    fn skip_to_buffer(&mut self, io: &mut Io<'_>, room: &Arc<str>) {
        self.evict(io, room);
        let r = self.room(room);
        let first = r.buffer.first_key_value().map(|(&s, _)| s);
        if let (Some(first), Pos::Known { last, .. }) = (first, &mut r.pos) {
            *last = (*last).max(first - 1);
        }
    }

    /// Redis knows the room under a new epoch (its history was lost): the
    /// local members cannot continue their positions and recover with
    /// `since` (their `recovered: false` reports the loss).
    pub(super) fn reset_epoch(
        &mut self,
        io: &mut Io<'_>,
        room: &Arc<str>,
        epoch: Arc<str>,
        last: u64,
    ) {
        warn!(room = %room, epoch = %epoch, "room has a new epoch in Redis (history lost)");
        self.evict(io, room);
        let r = self.room(room);
        r.pos = Pos::Known { epoch, last };
        r.recent.clear();
    }

    /// Closes this node's members of `room` with 4009 (resume with since)
    /// and refuses the joins waiting for a position that no longer holds.
    fn evict(&mut self, io: &mut Io<'_>, room: &Arc<str>) {
        let r = self.room(room);
        Self::release_acks(io, r, true);
        for c in r.interested() {
            io.event(c, Event::Evict { room: room.clone() });
        }
        let parked: Vec<Parked> = r.parked.drain(..).collect();
        for p in parked {
            self.undo_join(io, room, &p.req);
            let msg = "room history changed; retry";
            refuse_join(io, room.clone(), p.req, ErrorCode::Unavailable, msg);
        }
    }

    /// The room's position (after a resubscription without joins).
    pub fn on_position(&mut self, io: &mut Io<'_>, room: Arc<str>, v: Value) {
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        r.fetching = false;
        let Some((epoch, seq)) = as_array(&v).and_then(|a| {
            let e: Arc<str> = as_str(a.first()?)?.into();
            Some((e, as_int(a.get(1)?)? as u64))
        }) else {
            // Retried from the tick.
            return warn!(room = %room, reply = ?v, "position script failed");
        };
        match r.pos.clone() {
            Pos::Stale { epoch: e, last } | Pos::Known { epoch: e, last } if e == epoch => {
                r.pos = Pos::Known { epoch, last };
                if seq > last {
                    // Published while this node was not subscribed: read
                    // them from the stream (duplicates of what the new
                    // subscription brings are dropped by seq).
                    request_fill(io, &room, r, last + 1, seq);
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
    /// asked again once the command connection is back, or by the tick.
    pub fn retry_later(&mut self, room: &str) {
        if let Some(r) = self.rooms.get_mut(room) {
            r.fetching = false;
            r.filling = false;
        }
    }

    /// Rooms whose position or gap read was lost ask again.
    pub fn on_cmd_back(&mut self, io: &mut Io<'_>) {
        let names: Vec<Arc<str>> = self.rooms.keys().cloned().collect();
        for name in names {
            self.resume(io, &name);
        }
    }

    fn resume(&mut self, io: &mut Io<'_>, name: &Arc<str>) {
        let r = self.room(name);
        if r.sub != Sub::Active {
            return;
        }
        match r.pos {
            Pos::Stale { .. } => fetch_position(io, name, r),
            Pos::Known { .. } if !r.buffer.is_empty() && !r.filling => self.drain(io, name),
            _ => {}
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
        send_leave(io, &room, &user);
        self.maybe_idle(io, &room);
    }

    /// Starts the linger of a room nobody on this node needs any more.
    pub(super) fn maybe_idle(&mut self, io: &mut Io<'_>, room: &Arc<str>) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        if r.needed() || r.idle_since != 0 {
            return;
        }
        r.idle_since = io.now_ms.max(1);
        let set = io.keys.node_set(io.keys.node(), "rooms");
        io.call(
            redis::cmd("SREM").arg(set).arg(&**room),
            Want::Ignore("SREM"),
        );
    }

    /// Four times a second: unsubscribes rooms idle for [`LINGER_MS`],
    /// reads from the stream for joins and acks waiting too long, refuses
    /// joins past their deadline, retries lost position reads, ends local
    /// typing that expired.
    pub fn tick(&mut self, io: &mut Io<'_>) {
        let now = io.now_ms;
        let names: Vec<Arc<str>> = self.rooms.keys().cloned().collect();
        for name in names {
            let r = self.room(&name);
            if r.idle_since != 0 && !r.needed() && now.saturating_sub(r.idle_since) >= LINGER_MS {
                self.rooms.remove(&name);
                io.unsubscribe(io.keys.room_channel(&name));
                continue;
            }
            // Joins past their deadline (a subscription that never comes,
            // messages that never arrive).
            let late = |at: u64| now.saturating_sub(at) >= JOIN_TIMEOUT_MS;
            let waiting: Vec<JoinReq> = if r.waiting.iter().any(|j| late(j.at_ms)) {
                let (late_ones, keep) = r.waiting.drain(..).partition(|j| late(j.at_ms));
                r.waiting = keep;
                late_ones
            } else {
                Vec::new()
            };
            let mut parked = Vec::new();
            while r.parked.front().is_some_and(|p| late(p.req.at_ms)) {
                parked.push(r.parked.pop_front().expect("checked"));
            }
            for req in waiting.into_iter().chain(parked.into_iter().map(|p| p.req)) {
                self.undo_join(io, &name, &req);
                refuse_join(io, name.clone(), req, ErrorCode::Unavailable, UNAVAILABLE);
            }
            let r = self.room(&name);
            r.trim_recent();
            // Joins or acks waiting for messages the subscription should
            // have brought: read them from the stream.
            let waiting_for = r
                .parked
                .front()
                .map(|p| (p.since_ms, p.target))
                .into_iter()
                .chain(r.acks.front().map(|a| (a.3, a.0)))
                .filter(|(since, _)| now.saturating_sub(*since) >= PARKED_FILL_MS)
                .map(|(_, target)| target)
                .max();
            if let (Some(target), Pos::Known { last, .. }) = (waiting_for, r.pos.clone())
                && target > last
            {
                request_fill(io, &name, r, last + 1, target);
            }
            self.resume(io, &name);
            let r = self.room(&name);
            let mut ended = Vec::new();
            r.typing.retain(|user, until| {
                let keep = *until > now;
                if !keep {
                    ended.push(user.clone());
                }
                keep
            });
            for user in ended {
                publish_typing(io, &name, &user, false);
            }
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
        if changed && io.room_ready(&room) {
            publish_typing(io, &room, &user, typing);
        }
    }

    // ---- connection loss ------------------------------------------------

    /// A pub/sub connection was lost (or a room's sharded subscription was
    /// dropped by Redis): the rooms `on` says (by name) must resubscribe,
    /// and what was delivered is only a lower bound now.
    pub fn on_sub_lost(&mut self, io: &mut Io<'_>, on: &dyn Fn(&str) -> bool) {
        for (name, r) in self.rooms.iter_mut() {
            if !on(name) {
                continue;
            }
            Self::release_acks(io, r, true);
            r.sub = Sub::None;
            if let Pos::Known { epoch, last } = r.pos.clone() {
                r.pos = Pos::Stale { epoch, last };
            }
            r.filling = false;
            r.fetching = false;
        }
    }

    /// A pub/sub connection is back (or the slot map moved rooms): the
    /// rooms `on` says that are still needed subscribe again (positions
    /// are fetched as the confirmations arrive); with `lost_only`, only
    /// those without a confirmed one.
    pub fn resubscribe(&mut self, io: &mut Io<'_>, on: &dyn Fn(&str) -> bool, lost_only: bool) {
        let mut gone = Vec::new();
        for (name, r) in self.rooms.iter_mut() {
            if !on(name) || (lost_only && r.sub == Sub::Active) {
                continue;
            }
            if !r.needed() {
                // On a fresh connection nothing is subscribed: forget it.
                // On a live one it may be: the tick's linger unsubscribes.
                if !lost_only {
                    gone.push(name.clone());
                }
                continue;
            }
            r.sub = Sub::Pending;
            io.subscribe(io.keys.room_channel(name));
        }
        for room in gone {
            self.rooms.remove(&room);
        }
    }

    /// Whether the room is kept here and has lost its subscription (or
    /// never had one).
    pub fn unsubscribed(&self, room: &str) -> bool {
        self.rooms.get(room).is_some_and(|r| r.sub == Sub::None)
    }

    /// Names of the rooms kept here.
    pub fn names(&self) -> Vec<Arc<str>> {
        self.rooms.keys().cloned().collect()
    }

    /// This node's members per room, for reconciling Redis after a
    /// (re)connect.
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

    /// Whether `user` has a member connection of `room` on this node.
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

/// Reads `from..=to` of the room's stream, unless a read is out already.
pub(super) fn request_fill(io: &mut Io<'_>, room: &Arc<str>, r: &mut NodeRoom, from: u64, to: u64) {
    if r.filling || from > to || !io.room_ready(room) {
        return;
    }
    r.filling = true;
    let cmd = redis::cmd("XRANGE")
        .arg(io.keys.room(room, "h"))
        .arg(format!("{from}-0"))
        .arg(format!("{to}-0"))
        .to_owned();
    let room = room.clone();
    io.call(&cmd, Want::Fill { room, from, to });
}

pub(super) fn fetch_position(io: &mut Io<'_>, room: &Arc<str>, r: &mut NodeRoom) {
    if r.fetching || !io.room_ready(room) {
        return;
    }
    r.fetching = true;
    let (seen_epoch, seen_last) = r.pos.seen();
    let mut cmd = io.script(
        &io.scripts.position,
        &[&io.keys.room(room, "m"), &io.keys.room(room, "h")],
    );
    cmd.arg(io.new_epoch()).arg(seen_epoch).arg(seen_last);
    io.call(&cmd, Want::Position { room: room.clone() });
}

/// Removes this node's registration of `user` in `room` (`left` when it
/// was the user's last node).
pub(super) fn send_leave(io: &mut Io<'_>, room: &str, user: &str) {
    let k = io.keys;
    let mut cmd = io.script(
        &io.scripts.leave,
        &[
            &k.room(room, "m"),
            &k.room(room, "u"),
            &k.room(room, "nm"),
            &k.room(room, "st"),
            &k.room_node(room, k.node()),
        ],
    );
    cmd.arg(k.room_channel(room))
        .arg(room)
        .arg(user)
        .arg(io.cfg.idle_ms);
    io.call(&cmd, Want::Ignore("leave"));
}

fn publish_typing(io: &mut Io<'_>, room: &str, user: &str, typing: bool) {
    let frame = replies::typing_frame(room, user, typing);
    let payload = super::wire::except_payload(user, crate::frame::payload(&frame));
    let cmd = io
        .keys
        .publish_cmd()
        .arg(io.keys.room_channel(room))
        .arg(payload)
        .to_owned();
    io.call(&cmd, Want::Ignore("typing"));
}

/// The `epoch` of one of our `message` events' JSON.
fn epoch_in(json: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b",\"epoch\":\"";
    let i = memchr::memmem::find(json, KEY)? + KEY.len();
    let end = memchr::memchr(b'"', &json[i..])?;
    std::str::from_utf8(&json[i..i + end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_read_from_our_events() {
        let j = br#"{"type":"message","room":"r","seq":3,"epoch":"ab12","ts":1,"from":{"user":"u"},"data":{"epoch":"x"}}"#;
        assert_eq!(epoch_in(j), Some("ab12"));
        assert_eq!(epoch_in(b"{}"), None);
    }

    #[test]
    fn positions_seen_by_redis() {
        assert_eq!(Pos::Unknown.seen(), (String::new(), String::new()));
        let p = Pos::Stale {
            epoch: "e".into(),
            last: 7,
        };
        assert_eq!(p.seen(), ("e".into(), "7".into()));
    }
}
