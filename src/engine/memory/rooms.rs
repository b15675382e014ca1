//! A room at its home core: the only place a room's messages are
//! sequenced in the memory engine.
//!
//! [`RoomHomes`] holds the rooms whose home is this core — their `seq` and
//! `epoch`, the history window, the durability mode, which cores have
//! members (the interest set: a core with no member never receives the
//! room's events), which users are in them (for `joined`/`left`, member
//! counts and `members`), typing state, and messages waiting for the
//! store's fsync, and the idempotency keys of recent publishes
//! ([`super::dedupe`]) — and carries out the room commands: join (with
//! recovery from the window), leave, publish, history, members, typing. It frames
//! each event once and names the cores that get it; it must not touch
//! connections or sockets (the socket layer delivers what it emits).

use super::Cx;
use super::dedupe::Keys;
use super::history::{Entry, Retention, RoomModes, Window};
use super::store::{Append, LoadedRoom, QueueError, StoreHandle, StoreMsg};
use crate::config::Durability;
use crate::engine::{Answer, ConnRef, Event, ReplyTo, replies};
use crate::frame::text_frame;
use crate::proto::command::{Id, Since};
use crate::proto::event::{self, Event as Ev};
use crate::proto::{ErrorCode, Status};
use bytes::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use tracing::warn;

/// Typing not refreshed for this long ends (PROTOCOL: 6 s).
pub const TYPING_TTL_MS: u64 = 6000;

/// A user in a room, as counted at the room's home core.
#[derive(Debug)]
struct RoomUser {
    connections: u32,
    name: Option<Arc<str>>,
    status: Status,
}

/// A room at its home core.
#[derive(Debug)]
pub struct HomeRoom {
    /// Last assigned seq (0 = none yet).
    pub seq: u64,
    /// Identifies this incarnation of the room's history.
    pub epoch: Arc<str>,
    /// Member connections per core (the interest set).
    cores: Vec<u32>,
    users: HashMap<Arc<str>, RoomUser>,
    /// Monotonic ms of the last join, leave or publish.
    last_active_ms: u64,
    /// Recent messages, for recovery and `history`.
    pub history: Window,
    /// How durable this room's messages are.
    pub mode: Durability,
    /// Users typing, with when their typing expires (monotonic ms).
    pub typing: HashMap<Arc<str>, u64>,
    /// Sequenced messages waiting for the store's fsync (sync mode), in
    /// seq order; they are delivered, acknowledged and enter `history`
    /// once stored.
    pub pending: VecDeque<Pending>,
    /// Idempotency keys of recent publishes.
    pub keys: Keys,
}

/// A sequenced message not yet durable.
#[derive(Debug)]
pub struct Pending {
    /// The message.
    pub entry: Entry,
    /// Where its `ack` goes.
    pub reply: Option<ReplyTo>,
    /// When it was sequenced (server-monotonic µs).
    pub at_us: u64,
    /// Publishes with the same key that arrived while it waited: they get
    /// its ack, marked duplicate.
    pub dups: Vec<ReplyTo>,
}

impl HomeRoom {
    /// Cores with at least one member connection.
    pub fn interested(&self) -> impl Iterator<Item = usize> + '_ {
        self.cores
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n > 0)
            .map(|(c, _)| c)
    }

    /// Number of distinct users in the room.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    fn idle(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `user` is a member.
    pub fn has_user(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// Notes a member's presence status (for `members`).
    pub fn set_status(&mut self, user: &str, status: Status) {
        if let Some(u) = self.users.get_mut(user) {
            u.status = status;
        }
    }

    /// The `users` array of a `members` reply:
    /// `[{"user","name","status"}, ...]`, sorted by user id.
    pub fn members_json(&self, out: &mut String) {
        let mut users: Vec<_> = self.users.iter().collect();
        users.sort_by(|a, b| a.0.cmp(b.0));
        out.push('[');
        for (i, (user, u)) in users.into_iter().enumerate() {
            replies::push_member(out, i == 0, user, u.name.as_deref(), u.status.as_str());
        }
        out.push(']');
    }

    /// The seq of the last message delivered (messages waiting for the
    /// store are not visible yet: a joiner's `ack` must not claim them).
    pub fn visible_seq(&self) -> u64 {
        self.seq - self.pending.len() as u64
    }

    fn holds_nothing(&self) -> bool {
        self.history.is_empty() && self.pending.is_empty()
    }
}

/// A member connection as the home core sees it.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    /// Core of the connection.
    pub core: usize,
    /// Its user.
    pub user: &'a Arc<str>,
    /// The user's display name.
    pub name: Option<&'a Arc<str>>,
}

/// What a join changed at the home core.
#[derive(Debug, PartialEq, Eq)]
pub struct JoinOutcome {
    /// Latest seq.
    pub seq: u64,
    /// Room epoch.
    pub epoch: Arc<str>,
    /// Distinct users after the join.
    pub members: usize,
    /// This was the user's first connection in the room (`joined` is due).
    pub first: bool,
}

/// The table of rooms whose home is this core (state only).
#[derive(Debug)]
pub struct HomeRooms {
    rooms: HashMap<Arc<str>, HomeRoom>,
    cores: usize,
    /// Rooms without members or history are forgotten after this long
    /// without activity.
    idle_ms: u64,
    /// History bounds.
    pub retention: Retention,
    /// Durability per room.
    modes: RoomModes,
}

impl HomeRooms {
    /// Home-room table for a server of `cores` cores.
    pub fn new(cores: usize, idle_ms: u64, retention: Retention, modes: RoomModes) -> Self {
        HomeRooms {
            rooms: HashMap::new(),
            cores,
            idle_ms,
            retention,
            modes,
        }
    }

    /// The room, if it exists, for changes.
    pub fn get_mut(&mut self, room: &str) -> Option<&mut HomeRoom> {
        self.rooms.get_mut(room)
    }

    /// The room, if it exists.
    pub fn get(&self, room: &str) -> Option<&HomeRoom> {
        self.rooms.get(room)
    }

    /// Number of rooms held.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    /// Whether no room is held.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    fn room_mut(
        &mut self,
        room: &Arc<str>,
        now_ms: u64,
        new_epoch: impl FnOnce() -> Arc<str>,
    ) -> &mut HomeRoom {
        let cores = self.cores;
        let modes = &self.modes;
        let r = self.rooms.entry(room.clone()).or_insert_with(|| HomeRoom {
            mode: modes.of(room),
            seq: 0,
            epoch: new_epoch(),
            cores: vec![0; cores],
            users: HashMap::new(),
            last_active_ms: now_ms,
            history: Window::default(),
            pending: VecDeque::new(),
            typing: HashMap::new(),
            keys: Keys::default(),
        });
        r.last_active_ms = now_ms;
        r
    }

    /// Registers a member connection (unless `rejoin`).
    pub fn join(
        &mut self,
        room: &Arc<str>,
        m: Member<'_>,
        rejoin: bool,
        now_ms: u64,
        new_epoch: impl FnOnce() -> Arc<str>,
    ) -> JoinOutcome {
        let r = self.room_mut(room, now_ms, new_epoch);
        let mut first = false;
        if !rejoin {
            r.cores[m.core] += 1;
            let u = r.users.entry(m.user.clone()).or_insert_with(|| {
                first = true;
                RoomUser {
                    connections: 0,
                    name: m.name.cloned(),
                    status: Status::Online,
                }
            });
            u.connections += 1;
        }
        JoinOutcome {
            seq: r.visible_seq(),
            epoch: r.epoch.clone(),
            members: r.users.len(),
            first,
        }
    }

    /// Unregisters a member connection of `user` on `core`. Returns the
    /// user's name when this was their last connection (`left` is due).
    pub fn leave(
        &mut self,
        room: &str,
        core: usize,
        user: &str,
        now_ms: u64,
    ) -> Option<Option<Arc<str>>> {
        let r = self.rooms.get_mut(room)?;
        r.last_active_ms = now_ms;
        r.cores[core] = r.cores[core].saturating_sub(1);
        let u = r.users.get_mut(user)?;
        u.connections -= 1;
        let left = if u.connections == 0 {
            r.users.remove(user).map(|u| u.name)
        } else {
            None
        };
        // An empty room keeps its epoch until the idle sweep: a member who
        // left (or dropped) and comes back with `since` still recovers
        // what was published after it.
        left
    }

    /// Installs a room loaded from the durable store (at start). A room
    /// whose pattern now makes it memory-only is not restored: it starts
    /// over under a new epoch when used, so no seq it hands out can collide
    /// with stored ones.
    pub fn restore(&mut self, loaded: LoadedRoom, now_ms: u64, now_unix_ms: u64) {
        if self.modes.of(&loaded.room) == Durability::Memory {
            return;
        }
        let mut history = Window::default();
        for e in loaded.entries {
            history.push(e, &self.retention, now_unix_ms);
        }
        let mut keys = Keys::default();
        for (key, seq, ts) in loaded.keys {
            keys.insert(key, seq, ts, &self.retention, now_unix_ms);
        }
        keys.evict(&self.retention, loaded.seq, now_unix_ms);
        let r = HomeRoom {
            mode: self.modes.of(&loaded.room),
            seq: loaded.seq,
            epoch: loaded.epoch,
            cores: vec![0; self.cores],
            users: HashMap::new(),
            last_active_ms: now_ms,
            history,
            pending: VecDeque::new(),
            typing: HashMap::new(),
            keys,
        };
        self.rooms.insert(loaded.room, r);
    }

    /// Assigns the next seq of `room` (creating it for publish-only senders).
    pub fn sequence(
        &mut self,
        room: &Arc<str>,
        now_ms: u64,
        new_epoch: impl FnOnce() -> Arc<str>,
    ) -> &mut HomeRoom {
        let r = self.room_mut(room, now_ms, new_epoch);
        r.seq += 1;
        r
    }

    /// Trims every room's history by age, then forgets rooms with no
    /// members and no history that have been inactive for the idle time
    /// (a room that comes back starts a new epoch). Returns how many were
    /// dropped.
    pub fn sweep(&mut self, now_ms: u64, now_unix_ms: u64) -> usize {
        let before = self.rooms.len();
        let (idle_ms, retention) = (self.idle_ms, self.retention);
        self.rooms.retain(|_, r| {
            r.history.trim(&retention, now_unix_ms);
            r.keys.evict(&retention, r.seq, now_unix_ms);
            !(r.idle() && r.holds_nothing() && now_ms.saturating_sub(r.last_active_ms) >= idle_ms)
        });
        before - self.rooms.len()
    }
}

/// Who is joining: a connection on some core and its user.
#[derive(Debug)]
pub struct Joiner {
    /// Core of the connection.
    pub core: usize,
    /// The connection.
    pub conn: ConnRef,
    /// Its user.
    pub user: Arc<str>,
    /// The user's display name.
    pub name: Option<Arc<str>>,
}

/// The room home of one core: the table and the commands on it.
#[derive(Debug)]
pub struct RoomHomes {
    table: HomeRooms,
    /// The durable store (absent when every room is memory-only).
    store: Option<StoreHandle>,
    rng: fastrand::Rng,
    /// Rooms with someone typing.
    typing_rooms: HashSet<Arc<str>>,
    /// Messages published into rooms homed here.
    pub published: u64,
    cores_scratch: Vec<usize>,
}

impl RoomHomes {
    /// The room home of a core of a `cores`-core server.
    pub fn new(
        cores: usize,
        idle_ms: u64,
        retention: Retention,
        modes: RoomModes,
        store: Option<StoreHandle>,
    ) -> Self {
        RoomHomes {
            table: HomeRooms::new(cores, idle_ms, retention, modes),
            store,
            rng: fastrand::Rng::new(),
            typing_rooms: HashSet::new(),
            published: 0,
            cores_scratch: Vec::new(),
        }
    }

    /// Number of rooms held.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no room is held.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Installs a room loaded from the store (at start).
    pub fn restore(&mut self, loaded: LoadedRoom, now_ms: u64, now_unix_ms: u64) {
        self.table.restore(loaded, now_ms, now_unix_ms);
    }

    /// Trims history by age and forgets idle rooms; returns how many.
    pub fn sweep(&mut self, now_ms: u64, now_unix_ms: u64) -> usize {
        self.table.sweep(now_ms, now_unix_ms)
    }

    fn new_epoch(rng: &mut fastrand::Rng) -> Arc<str> {
        format!("{:08x}", rng.u32(..)).into()
    }

    /// Sends `frame` to every core with members of `room`.
    fn deliver(&mut self, cx: &mut Cx<'_>, room: &Arc<str>, frame: Bytes, at_us: u64) {
        let mut cores = std::mem::take(&mut self.cores_scratch);
        cores.clear();
        if let Some(r) = self.table.get(room) {
            cores.extend(r.interested());
        }
        for &c in &cores {
            let ev = Event::Deliver {
                room: room.clone(),
                frame: frame.clone(),
                at_us,
            };
            cx.event(c, ev);
        }
        self.cores_scratch = cores;
    }

    /// Registers a member (unless `rejoin`) and answers with the `ack`,
    /// after the missed messages when `since` is given and the window still
    /// holds them all. The answer travels the channel that carries the
    /// room's later deliveries to the joiner's core, so the joiner sees
    /// exactly the messages after the `seq` in its `ack`.
    pub fn join(
        &mut self,
        cx: &mut Cx<'_>,
        room: Arc<str>,
        who: Joiner,
        id: Option<Id>,
        since: Option<Since>,
        rejoin: bool,
    ) {
        let rng = &mut self.rng;
        let member = Member {
            core: who.core,
            user: &who.user,
            name: who.name.as_ref(),
        };
        let o = self.table.join(&room, member, rejoin, cx.clock.now_ms, || {
            Self::new_epoch(rng)
        });
        let mut ack = Ev::new("ack")
            .id(id.as_ref())
            .str("room", &room)
            .str("epoch", &o.epoch)
            .num("seq", o.seq)
            .num("members", o.members as u64);
        let mut replay = Vec::new();
        if let Some(since) = since {
            let r = self.table.get(&room).expect("joined room exists");
            // An empty epoch means "the current one" (SSE cursors written
            // without epochs).
            let recovered = (since.epoch.is_empty() || *since.epoch == *o.epoch)
                && match r.history.since(since.seq, r.visible_seq()) {
                    Some(missed) => {
                        replay.extend(missed.map(|e| e.frame.clone()));
                        true
                    }
                    None => false,
                };
            ack = ack.bool("recovered", recovered);
        }
        let frame = text_frame(ack.finish().as_bytes());
        let joined = o.first.then(|| {
            let ev = event::membership("joined", &room, &who.user, who.name.as_deref());
            text_frame(ev.as_bytes())
        });
        let ev = Event::JoinAck {
            room: room.clone(),
            conn: who.conn,
            user: who.user,
            replay,
            frame,
            rejoin,
            refused: false,
        };
        cx.event(who.core, ev);
        if let Some(joined) = joined {
            self.deliver(cx, &room, joined, 0);
        }
    }

    /// One member connection of `user` on `core` left; `left` goes out
    /// when it was the user's last (and typing ends).
    pub fn leave(&mut self, cx: &mut Cx<'_>, room: Arc<str>, core: usize, user: Arc<str>) {
        let Some(name) = self.table.leave(&room, core, &user, cx.clock.now_ms) else {
            return;
        };
        let was_typing = self
            .table
            .get_mut(&room)
            .is_some_and(|r| r.typing.remove(&user).is_some());
        if was_typing {
            self.send_typing(cx, room.clone(), user.clone(), false);
        }
        let left = event::membership("left", &room, &user, name.as_deref());
        self.deliver(cx, &room, text_frame(left.as_bytes()), 0);
    }

    /// Sequences a message. Without a sync store it is recorded, delivered
    /// and acknowledged at once (and queued for the store in async mode);
    /// in sync mode it waits in the room's pending queue until the store
    /// reports it durable ([`RoomHomes::stored`]).
    pub fn publish(
        &mut self,
        cx: &mut Cx<'_>,
        room: Arc<str>,
        reply: Option<ReplyTo>,
        tail: String,
        key: Option<Arc<str>>,
    ) {
        let ts = cx.clock.unix_ms();
        let reply = match &key {
            Some(k) => match self.duplicate(cx, &room, k, reply) {
                Ok(()) => return,
                Err(reply) => reply,
            },
            None => reply,
        };
        let at_us = cx.clock.now_us.max(1);
        let retention = self.table.retention;
        let rng = &mut self.rng;
        let r = self
            .table
            .sequence(&room, cx.clock.now_ms, || Self::new_epoch(rng));
        let (seq, epoch) = (r.seq, r.epoch.clone());
        self.published += 1;
        let json = event::message(&room, seq, &epoch, ts, &tail);
        let frame = text_frame(json.as_bytes());
        let header_len = (frame.len() - json.len()) as u8;
        let entry = Entry {
            seq,
            ts,
            header_len,
            frame: frame.clone(),
        };
        let (mode, store) = match (r.mode, &self.store) {
            (Durability::Memory, _) | (_, None) => (Durability::Memory, None),
            (mode, Some(store)) => (mode, Some(store)),
        };
        let sync = mode == Durability::Sync;
        let sent = store.map(|store| {
            store.try_send(StoreMsg::Append(Append {
                home: cx.id,
                room: room.clone(),
                epoch,
                seq,
                ts,
                frame: frame.clone(),
                header_len,
                sync,
                key: key.clone(),
            }))
        });
        if sent == Some(Err(QueueError::Full)) {
            // The disk is not keeping up: refuse rather than queue without
            // bound. Nothing was delivered; the seq is given back.
            r.seq -= 1;
            self.published -= 1;
            if let Some(reply) = reply {
                let (core, ev) = replies::refuse(
                    reply,
                    ErrorCode::Overloaded,
                    "history store is behind; retry",
                );
                cx.event(core, ev);
            }
            return;
        }
        let sent = sent.is_none_or(|r| r.is_ok());
        if let Some(k) = key {
            r.keys.insert(k, seq, ts, &retention, ts);
        }
        if sync {
            r.pending.push_back(Pending {
                entry,
                reply,
                at_us,
                dups: Vec::new(),
            });
            if !sent {
                self.store_failed(cx, room);
            }
        } else {
            if mode == Durability::Async && !sent {
                warn!(room = %room, "history store is gone: message kept in memory only");
            }
            r.history.push(entry, &retention, ts);
            self.deliver(cx, &room, frame, at_us);
            self.send_ack(cx, reply, &room, seq, ts, false);
        }
    }

    /// A publish whose key the room remembers: acknowledged with the first
    /// message's seq and ts (once that is durable, if it is still waiting
    /// for the store), nothing published. Hands `reply` back when the key
    /// is new.
    fn duplicate(
        &mut self,
        cx: &mut Cx<'_>,
        room: &Arc<str>,
        key: &str,
        reply: Option<ReplyTo>,
    ) -> Result<(), Option<ReplyTo>> {
        let Some(r) = self.table.get_mut(room) else {
            return Err(reply);
        };
        let Some((seq, ts)) = r.keys.get(key) else {
            return Err(reply);
        };
        if seq > r.visible_seq() {
            if let (Some(reply), Some(p)) =
                (reply, r.pending.iter_mut().find(|p| p.entry.seq == seq))
            {
                p.dups.push(reply);
            }
        } else {
            self.send_ack(cx, reply, room, seq, ts, true);
        }
        Ok(())
    }

    fn send_ack(
        &mut self,
        cx: &mut Cx<'_>,
        reply: Option<ReplyTo>,
        room: &str,
        seq: u64,
        ts: u64,
        duplicate: bool,
    ) {
        let Some(reply) = reply else { return };
        let epoch = self.table.get(room).map(|r| r.epoch.clone());
        let epoch = epoch.as_deref().unwrap_or("");
        let (core, ev) = replies::publish_ack(reply, room, seq, epoch, ts, duplicate);
        cx.event(core, ev);
    }

    /// The store made `room`'s messages up to `upto` durable: they enter
    /// the history, go out to members and are acknowledged, in seq order.
    pub fn stored(&mut self, cx: &mut Cx<'_>, room: &Arc<str>, upto: u64) {
        let (retention, now) = (self.table.retention, cx.clock.unix_ms());
        loop {
            let Some(r) = self.table.get_mut(room) else {
                return;
            };
            if r.pending.front().is_none_or(|p| p.entry.seq > upto) {
                return;
            }
            let p = r.pending.pop_front().expect("checked");
            let (seq, ts, frame) = (p.entry.seq, p.entry.ts, p.entry.frame.clone());
            r.history.push(p.entry, &retention, now);
            self.deliver(cx, room, frame, p.at_us);
            self.send_ack(cx, p.reply, room, seq, ts, false);
            for dup in p.dups {
                self.send_ack(cx, Some(dup), room, seq, ts, true);
            }
        }
    }

    /// Writing `room`'s messages failed: none of its pending messages was
    /// delivered or acknowledged, so they fail with `internal` and their
    /// seqs are given back; the store accepts the room again after the
    /// reset.
    pub fn store_failed(&mut self, cx: &mut Cx<'_>, room: Arc<str>) {
        let Some(r) = self.table.get_mut(&room) else {
            return;
        };
        let failed: Vec<Pending> = r.pending.drain(..).collect();
        r.seq -= failed.len() as u64;
        // Their keys did not produce a message: a retry must be stored.
        r.keys.forget_after(r.seq);
        // A failed batch may still have reached the disk (a write that
        // succeeded before its fsync failed) and come back at the next
        // start under the old epoch: the seqs handed out from now on must
        // not be mistaken for those, so the room moves to a new epoch.
        r.epoch = Self::new_epoch(&mut self.rng);
        if let Some(store) = &self.store {
            store.send(StoreMsg::Reset { room: room.clone() });
        }
        warn!(room = %room, messages = failed.len(), "publish failed: history store write error");
        for reply in failed
            .into_iter()
            .flat_map(|p| p.reply.into_iter().chain(p.dups))
        {
            let (core, ev) = replies::refuse(
                reply,
                ErrorCode::Internal,
                "message could not be stored; not delivered",
            );
            cx.event(core, ev);
        }
    }

    /// Answers a `history` command from the window.
    pub fn history(
        &mut self,
        cx: &mut Cx<'_>,
        room: &Arc<str>,
        reply: ReplyTo,
        before: Option<u64>,
        limit: u64,
    ) {
        let mut out = String::with_capacity(256);
        replies::history_head(&mut out, reply.id.as_ref(), room);
        let (retention, now) = (self.table.retention, cx.clock.unix_ms());
        if let Some(r) = self.table.get_mut(room) {
            r.history.trim(&retention, now);
            for (i, e) in r.history.page(before, limit as usize).enumerate() {
                if i > 0 {
                    out.push(',');
                }
                // Entries hold the JSON the server itself encoded.
                out.push_str(std::str::from_utf8(e.json()).unwrap_or("null"));
            }
        }
        out.push_str("]}");
        cx.event(reply.core, replies::reply(reply.conn, &out));
    }

    /// `members` (WebSocket) or the room's description
    /// (`GET /api/rooms/{room}`).
    pub fn members(&mut self, cx: &mut Cx<'_>, room: &Arc<str>, id: Option<Id>, answer: Answer) {
        let r = self.table.get(room);
        let mut users = String::with_capacity(64);
        match r {
            Some(r) => r.members_json(&mut users),
            None => users.push_str("[]"),
        }
        let described = r.map(|r| (r.epoch.clone(), r.visible_seq(), r.history.len() as u64));
        let (core, ev) = replies::members(room, id, answer, &users, described);
        cx.event(core, ev);
    }

    /// Notes a member's status (from the user's home).
    pub fn note_status(&mut self, room: &str, user: &str, status: Status) {
        if let Some(r) = self.table.get_mut(room) {
            r.set_status(user, status);
        }
    }

    /// A member's typing state. Only changes go out (a refresh just extends
    /// the expiry), so a burst of `typing` commands produces one event.
    pub fn typing(&mut self, cx: &mut Cx<'_>, room: Arc<str>, user: Arc<str>, typing: bool) {
        let now = cx.clock.now_ms;
        let Some(r) = self.table.get_mut(&room) else {
            return;
        };
        if !r.has_user(&user) {
            return;
        }
        let changed = if typing {
            r.typing.insert(user.clone(), now + TYPING_TTL_MS).is_none()
        } else {
            r.typing.remove(&user).is_some()
        };
        if !r.typing.is_empty() {
            self.typing_rooms.insert(room.clone());
        }
        if changed {
            self.send_typing(cx, room, user, typing);
        }
    }

    fn send_typing(&mut self, cx: &mut Cx<'_>, room: Arc<str>, user: Arc<str>, typing: bool) {
        let frame = replies::typing_frame(&room, &user, typing);
        let mut cores = std::mem::take(&mut self.cores_scratch);
        cores.clear();
        if let Some(r) = self.table.get(&room) {
            cores.extend(r.interested());
        }
        for &c in &cores {
            let ev = Event::DeliverExcept {
                room: room.clone(),
                except: user.clone(),
                frame: frame.clone(),
            };
            cx.event(c, ev);
        }
        self.cores_scratch = cores;
    }

    /// Ends typing not refreshed for [`TYPING_TTL_MS`] (once a second).
    pub fn expire_typing(&mut self, cx: &mut Cx<'_>) {
        if self.typing_rooms.is_empty() {
            return;
        }
        let now = cx.clock.now_ms;
        let rooms: Vec<Arc<str>> = self.typing_rooms.drain().collect();
        for room in rooms {
            let Some(r) = self.table.get_mut(&room) else {
                continue;
            };
            let expired: Vec<Arc<str>> = r
                .typing
                .iter()
                .filter(|&(_, &until)| until <= now)
                .map(|(u, _)| u.clone())
                .collect();
            for u in &expired {
                r.typing.remove(u);
            }
            if !r.typing.is_empty() {
                self.typing_rooms.insert(room.clone());
            }
            for u in expired {
                self.send_typing(cx, room.clone(), u, false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RET: Retention = Retention {
        size: 10,
        ttl_ms: 10_000,
    };

    fn epoch() -> Arc<str> {
        "e1".into()
    }

    #[test]
    fn home_counts_users_and_cores() {
        let mut h = HomeRooms::new(2, 1000, RET, RoomModes::all(Durability::Memory));
        let r: Arc<str> = "a".into();
        let u1: Arc<str> = "u1".into();
        let u2: Arc<str> = "u2".into();
        let o = h.join(
            &r,
            Member {
                core: 0,
                user: &u1,
                name: None,
            },
            false,
            0,
            epoch,
        );
        assert_eq!((o.first, o.members, o.seq), (true, 1, 0));
        let o = h.join(
            &r,
            Member {
                core: 1,
                user: &u1,
                name: None,
            },
            false,
            0,
            epoch,
        );
        assert!(!o.first, "second connection of u1");
        let o = h.join(
            &r,
            Member {
                core: 1,
                user: &u2,
                name: None,
            },
            false,
            0,
            epoch,
        );
        assert_eq!((o.first, o.members), (true, 2));
        assert_eq!(h.get("a").unwrap().interested().collect::<Vec<_>>(), [0, 1]);
        let entry = crate::engine::memory::history::Entry {
            seq: 1,
            ts: 0,
            frame: bytes::Bytes::from_static(b"\x81\x02{}"),
            header_len: 2,
        };
        let room = h.sequence(&r, 0, epoch);
        assert_eq!(room.seq, 1);
        room.history.push(entry, &RET, 0);
        assert_eq!(
            h.join(
                &r,
                Member {
                    core: 1,
                    user: &u2,
                    name: None
                },
                true,
                0,
                epoch
            )
            .seq,
            1,
            "rejoin reports position"
        );

        assert_eq!(h.leave("a", 0, "u1", 0), None, "u1 still on core 1");
        assert_eq!(h.get("a").unwrap().interested().collect::<Vec<_>>(), [1]);
        assert_eq!(h.leave("a", 1, "u1", 0), Some(None));
        assert_eq!(h.leave("a", 1, "u2", 0), Some(None));
        assert!(h.get("a").is_some(), "kept: it has messages");
        assert_eq!(h.sweep(5000, 0), 0, "history keeps it");
        assert_eq!(h.sweep(5000, 20_000), 1, "history expired and idle");
        assert!(h.is_empty());
    }

    #[test]
    fn empty_room_keeps_its_epoch_until_the_idle_sweep() {
        let mut h = HomeRooms::new(1, 1000, RET, RoomModes::all(Durability::Memory));
        let r: Arc<str> = "a".into();
        let u: Arc<str> = "u".into();
        let m = Member {
            core: 0,
            user: &u,
            name: None,
        };
        h.join(&r, m, false, 0, epoch);
        h.leave("a", 0, "u", 0);
        assert_eq!(h.sweep(999, 0), 0, "kept while not idle long enough");
        assert_eq!(h.get("a").unwrap().epoch.as_ref(), "e1");
        assert_eq!(h.sweep(1000, 0), 1);
        assert!(h.is_empty());
    }
}
