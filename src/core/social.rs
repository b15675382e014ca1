//! The core loop's side of presence, typing, members, direct messages,
//! notifications and broadcasts, and of gathering counts across cores
//! (`delivered`, stats).
//!
//! Users have a home core (`home_core(user)`) that knows their
//! connections (`presence::UserHomes`); rooms keep typing state
//! and member statuses at the room's home core. Everything moves over the
//! bus as in the rest of the core; nothing here blocks or locks. A count
//! gathered from several cores is an [`Agg`] on the asking core, finished
//! when every part has reported (or after [`AGG_TIMEOUT_MS`] with what it
//! has). This module must not parse commands (the session does) or touch
//! sockets directly.

use super::*;
use crate::bus::{AggRef, Answer};
use crate::presence::Status;

/// Typing not refreshed for this long ends (PROTOCOL: 6 s).
pub(super) const TYPING_TTL_MS: u64 = 6000;
/// A gathering that has not completed by then answers with what it has.
pub(super) const AGG_TIMEOUT_MS: u64 = 5000;

/// Where a gathered count goes when complete.
#[derive(Debug)]
pub(super) enum AggTarget {
    /// `ack` of a `direct` with `delivered`.
    Direct { conn: ConnRef, id: Option<Id> },
    /// HTTP `{"delivered": N}` (`/api/notify`, `/api/broadcast`).
    Delivered { conn: ConnRef },
    /// HTTP stats or metrics from every core's snapshot.
    Stats { conn: ConnRef, metrics: bool },
}

/// A count being gathered on this core.
#[derive(Debug)]
pub(super) struct Agg {
    target: AggTarget,
    /// `AggExpect`s still to come (one per user's home core asked).
    waiting_expects: u32,
    /// Reports expected so far.
    parts: u32,
    /// Reports received.
    got: u32,
    delivered: u64,
    snapshots: Vec<crate::metrics::Snapshot>,
    started_ms: u64,
}

impl Core {
    /// Starts a gathering; returns its reference.
    pub(super) fn agg_start(
        &mut self,
        target: AggTarget,
        waiting_expects: u32,
        parts: u32,
    ) -> AggRef {
        self.next_token += 1;
        let token = self.next_token;
        self.aggs.insert(
            token,
            Agg {
                target,
                waiting_expects,
                parts,
                got: 0,
                delivered: 0,
                snapshots: Vec::new(),
                started_ms: self.now_ms,
            },
        );
        self.agg_check(token);
        AggRef {
            core: self.id,
            token,
        }
    }

    fn agg_check(&mut self, token: u64) {
        let done = self
            .aggs
            .get(&token)
            .is_some_and(|a| a.waiting_expects == 0 && a.got >= a.parts);
        if done && let Some(a) = self.aggs.remove(&token) {
            self.agg_finish(a, false);
        }
    }

    fn agg_finish(&mut self, a: Agg, timed_out: bool) {
        match a.target {
            AggTarget::Direct { conn, id } => {
                let ack = Event::new("ack")
                    .id(id.as_ref())
                    .num("delivered", a.delivered)
                    .finish();
                if self.live(conn.key as usize, conn.generation) {
                    self.reply(conn.key as usize, &ack);
                }
            }
            AggTarget::Delivered { conn } => {
                let body = format!("{{\"delivered\":{}}}", a.delivered);
                self.http_answer(conn, 200, body);
            }
            AggTarget::Stats { conn, metrics } => {
                let mut snaps = a.snapshots;
                snaps.sort_by_key(|s| s.core);
                if metrics && timed_out {
                    // Partial sums would look like counter resets.
                    let body = http::error_body("unavailable", "a core did not answer in time");
                    self.http_answer(conn, 503, body);
                } else if metrics {
                    let text = crate::metrics::encode_prometheus(snaps);
                    self.http_answer_raw(
                        conn,
                        200,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        text,
                    );
                } else {
                    let status = if timed_out { 503 } else { 200 };
                    let body = stats_json(&snaps, self.bus.cores(), self.now_ms);
                    self.http_answer(conn, status, body);
                }
            }
        }
    }

    /// Answers gatherings that waited too long (a core stopped answering).
    pub(super) fn agg_expire(&mut self) {
        let now = self.now_ms;
        let late: Vec<u64> = self
            .aggs
            .iter()
            .filter(|(_, a)| now.saturating_sub(a.started_ms) >= AGG_TIMEOUT_MS)
            .map(|(&t, _)| t)
            .collect();
        for t in late {
            if let Some(a) = self.aggs.remove(&t) {
                self.agg_finish(a, true);
            }
        }
    }

    pub(super) fn on_agg_expect(&mut self, token: u64, parts: u32) {
        if let Some(a) = self.aggs.get_mut(&token) {
            a.waiting_expects = a.waiting_expects.saturating_sub(1);
            a.parts += parts;
        }
        self.agg_check(token);
    }

    pub(super) fn on_agg_done(&mut self, token: u64, delivered: u64) {
        if let Some(a) = self.aggs.get_mut(&token) {
            a.got += 1;
            a.delivered += delivered;
        }
        self.agg_check(token);
    }

    pub(super) fn on_stats_reply(&mut self, token: u64, snapshot: crate::metrics::Snapshot) {
        if let Some(a) = self.aggs.get_mut(&token) {
            a.got += 1;
            a.snapshots.push(snapshot);
        }
        self.agg_check(token);
    }

    /// This core's counters, for a scrape.
    pub(super) fn snapshot(&self) -> crate::metrics::Snapshot {
        let (mut conns, mut sse) = (0, 0);
        for (_, c) in self.conns.iter() {
            match c.state {
                State::Ws(_) => conns += 1,
                State::Sse(_) => sse += 1,
                State::Http(_) => {}
            }
        }
        crate::metrics::Snapshot {
            core: self.id,
            connections: conns,
            sse,
            users: self.users.online() as u64,
            rooms: self.home.len() as u64,
            in_per_s: self.rates.2,
            out_per_s: self.rates.3,
            last_loop_ms: self.now_ms,
            metrics: {
                let mut m = self.metrics.clone();
                m.bytes_in = self.scratch.bytes;
                m
            },
        }
    }

    /// Once a second: message rates, typing expiry, late gatherings.
    pub(super) fn tick(&mut self) {
        let (in0, out0) = (self.rates.0, self.rates.1);
        self.rates = (
            self.metrics.messages_in,
            self.metrics.messages_out,
            self.metrics.messages_in - in0,
            self.metrics.messages_out - out0,
        );
        self.expire_typing();
        self.agg_expire();
    }

    // ---- users and presence -------------------------------------------

    /// Counts the connection's user at its home core once it has one (and
    /// moves the count when a fresh anonymous connection became a user).
    pub(super) fn count_user(&mut self, key: usize) {
        let Some(Conn {
            generation,
            state: State::Ws(ws),
            ..
        }) = self.conns.get_mut(key)
        else {
            return;
        };
        let Some(session) = ws.session.as_ref() else {
            return;
        };
        let Some(ident) = session.identity.as_ref() else {
            return;
        };
        if ws.counted && ws.counted_anon == ident.anonymous {
            return; // same identity (a refresh)
        }
        let conn = ConnRef {
            key: key as u32,
            generation: *generation,
        };
        let (user, name) = (ident.user.clone(), ident.name.clone());
        // Only a fresh anonymous connection may become another user.
        let old: Option<Arc<str>> = ws.counted.then(|| format!("anon:{}", session.id).into());
        ws.counted = true;
        ws.counted_anon = ident.anonymous;
        let cores = self.bus.cores();
        if let Some(old) = old {
            let msg = BusMsg::UserGone {
                user: old.clone(),
                core: self.id,
                conn,
                rooms: Vec::new(),
            };
            self.route(home_core(&old, cores), msg);
        }
        let msg = BusMsg::UserConnected {
            user: user.clone(),
            name,
            core: self.id,
            conn,
        };
        self.route(home_core(&user, cores), msg);
    }

    pub(super) fn on_user_connected(
        &mut self,
        user: Arc<str>,
        name: Option<Arc<str>>,
        core: usize,
        conn: ConnRef,
    ) {
        let _ = name; // names for `members` come from the rooms
        self.users.connect(&user, core, conn);
    }

    pub(super) fn on_user_gone(
        &mut self,
        user: Arc<str>,
        core: usize,
        conn: ConnRef,
        rooms: Vec<Arc<str>>,
    ) {
        if let Some(grace_gen) = self
            .users
            .disconnect(&user, core, conn, &rooms, self.now_ms)
        {
            let slot = self.grace_timers.insert((user, grace_gen)) as u32;
            let at = self.now_ms + self.shared.config.presence.grace.saturating_mul(1000);
            self.timer(at, slot as usize, grace_gen, TimerKind::PresenceGrace);
        }
    }

    pub(super) fn on_grace_timer(&mut self, slot: usize) {
        let Some((user, grace_gen)) = self.grace_timers.try_remove(slot) else {
            return;
        };
        if let Some(change) = self.users.grace_expired(&user, grace_gen) {
            self.announce_presence(user, change);
        }
    }

    pub(super) fn on_user_room(&mut self, user: Arc<str>, room: Arc<str>, joined: bool) {
        if joined {
            if let Some(status) = self.users.room_joined(&user, &room) {
                let home = home_core(&room, self.bus.cores());
                self.route(home, BusMsg::RoomStatus { room, user, status });
            }
        } else {
            self.users.room_left(&user, &room);
        }
    }

    pub(super) fn on_set_status(&mut self, user: Arc<str>, status: Status) {
        if let Some(change) = self.users.set_status(&user, status) {
            self.announce_presence(user, change);
        }
    }

    fn announce_presence(&mut self, user: Arc<str>, change: crate::presence::Change) {
        if change.rooms.is_empty() {
            return; // nobody shares a room with the user
        }
        let ev = Event::new("presence")
            .str("user", &user)
            .str("status", change.status.as_str())
            .finish();
        let frame = outq::text_frame(ev.as_bytes());
        let rooms: Arc<[Arc<str>]> = change.rooms.into();
        for core in 0..self.bus.cores() {
            let msg = BusMsg::Presence {
                user: user.clone(),
                status: change.status,
                rooms: rooms.clone(),
                frame: frame.clone(),
            };
            self.route(core, msg);
        }
    }

    /// A user's presence changed: note it in the rooms homed here, and tell
    /// this core's members of the user's rooms, each connection once.
    pub(super) fn on_presence(
        &mut self,
        user: &str,
        status: Status,
        rooms: &[Arc<str>],
        frame: &Bytes,
    ) {
        let cores = self.bus.cores();
        for room in rooms {
            if home_core(room, cores) == self.id
                && let Some(r) = self.home.get_mut(room)
            {
                r.set_status(user, status);
            }
        }
        let mut targets = std::mem::take(&mut self.key_scratch);
        targets.clear();
        for room in rooms {
            let Some(members) = self.rooms.members(room) else {
                continue;
            };
            for (_, &key) in members.iter() {
                if let Some(Conn {
                    state: State::Ws(ws),
                    ..
                }) = self.conns.get(key as usize)
                    && !is_user(ws, user)
                {
                    targets.push(key as usize);
                }
            }
        }
        // Each connection once, even when it shares several rooms.
        targets.sort_unstable();
        targets.dedup();
        for &key in &targets {
            self.deliver_one(key, frame.clone());
        }
        self.key_scratch = targets;
    }

    pub(super) fn on_room_status(&mut self, room: &str, user: &str, status: Status) {
        if let Some(r) = self.home.get_mut(room) {
            r.set_status(user, status);
        }
    }

    /// Queues a shared frame to one connection as a room-style delivery.
    pub(super) fn deliver_one(&mut self, key: usize, frame: Bytes) {
        if self.conns.contains(key) {
            self.metrics.messages_out += 1;
            self.queue_as(key, frame, false);
        }
    }

    // ---- typing ---------------------------------------------------------

    /// At the room's home core: a member's typing state. Only changes go
    /// out (a refresh just extends the expiry), so a burst of `typing`
    /// commands produces one event.
    pub(super) fn on_typing(&mut self, room: Arc<str>, user: Arc<str>, typing: bool) {
        let now = self.now_ms;
        let Some(r) = self.home.get_mut(&room) else {
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
            self.send_typing(room, user, typing);
        }
    }

    pub(super) fn send_typing(&mut self, room: Arc<str>, user: Arc<str>, typing: bool) {
        let ev = Event::new("typing")
            .str("room", &room)
            .str("user", &user)
            .bool("typing", typing)
            .finish();
        let frame = outq::text_frame(ev.as_bytes());
        let cores = self.interested_cores(&room);
        for &c in &cores {
            let msg = BusMsg::DeliverExcept {
                room: room.clone(),
                except: user.clone(),
                frame: frame.clone(),
            };
            self.route(c, msg);
        }
        self.cores_scratch = cores;
    }

    fn expire_typing(&mut self) {
        if self.typing_rooms.is_empty() {
            return;
        }
        let now = self.now_ms;
        let rooms: Vec<Arc<str>> = self.typing_rooms.drain().collect();
        for room in rooms {
            let Some(r) = self.home.get_mut(&room) else {
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
                self.send_typing(room.clone(), u, false);
            }
        }
    }

    /// Delivers `frame` to this core's members of `room`, except the
    /// connections of `except`.
    pub(super) fn deliver_except(&mut self, room: &str, except: &str, frame: &Bytes) {
        let mut targets = std::mem::take(&mut self.key_scratch);
        targets.clear();
        if let Some(members) = self.rooms.members(room) {
            for (_, &key) in members.iter() {
                if let Some(Conn {
                    state: State::Ws(ws),
                    ..
                }) = self.conns.get(key as usize)
                    && !is_user(ws, except)
                {
                    targets.push(key as usize);
                }
            }
        }
        for &key in &targets {
            self.deliver_one(key, frame.clone());
        }
        self.key_scratch = targets;
    }

    // ---- members, direct, notify, broadcast ----------------------------

    /// At the room's home core: `members` (WebSocket) or the room's
    /// description (`GET /api/rooms/{room}`).
    pub(super) fn on_members(&mut self, room: Arc<str>, id: Option<Id>, answer: Answer) {
        let r = self.home.get(&room);
        let mut users = String::with_capacity(64);
        match r {
            Some(r) => r.members_json(&mut users),
            None => users.push_str("[]"),
        }
        match answer {
            Answer::Ws(reply) => {
                let ev = Event::new("members")
                    .id(id.as_ref())
                    .str("room", &room)
                    .raw("users", &users)
                    .finish();
                let msg = BusMsg::Reply {
                    conn: reply.conn,
                    frame: outq::text_frame(ev.as_bytes()),
                };
                self.route(reply.core, msg);
            }
            Answer::Http { core, conn } => {
                let (status, body) = match r {
                    Some(r) => (
                        200,
                        Event::object()
                            .str("room", &room)
                            .str("epoch", &r.epoch)
                            .num("seq", r.visible_seq())
                            .num("history", r.history.len() as u64)
                            .raw("members", &users)
                            .finish(),
                    ),
                    None => (
                        404,
                        http::error_body("not_found", "no such room (no members, no history)"),
                    ),
                };
                self.route(core, BusMsg::HttpReply { conn, status, body });
            }
        }
    }

    /// At the user's home core: fan a direct message or notification out
    /// to the cores holding the user's connections (naming them, so those
    /// cores need no index of their own).
    pub(super) fn on_to_user(&mut self, user: Arc<str>, frame: Bytes, agg: AggRef) {
        let by_core = self
            .users
            .get(&user)
            .map(|u| u.by_core())
            .unwrap_or_default();
        self.route(
            agg.core,
            BusMsg::AggExpect {
                token: agg.token,
                parts: by_core.len() as u32,
            },
        );
        for (c, conns) in by_core {
            let msg = BusMsg::UserDeliver {
                conns,
                frame: frame.clone(),
                agg,
            };
            self.route(c, msg);
        }
    }

    /// Delivers to these connections (those still there) and reports the
    /// count.
    pub(super) fn on_user_deliver(&mut self, conns: Vec<ConnRef>, frame: Bytes, agg: AggRef) {
        let keys = conns
            .into_iter()
            .filter(|c| self.live(c.key as usize, c.generation))
            .map(|c| c.key as usize)
            .collect();
        self.deliver_and_report(keys, frame, agg);
    }

    /// Delivers to every authenticated WebSocket connection of this core.
    pub(super) fn on_broadcast(&mut self, frame: Bytes, agg: AggRef) {
        let keys: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(&c.state, State::Ws(ws) if ws.counted))
            .map(|(k, _)| k)
            .collect();
        self.deliver_and_report(keys, frame, agg);
    }

    fn deliver_and_report(&mut self, keys: Vec<usize>, frame: Bytes, agg: AggRef) {
        let mut delivered = 0;
        for key in keys {
            if self.ws_open(key) {
                self.deliver_one(key, frame.clone());
                delivered += 1;
            }
        }
        self.route(
            agg.core,
            BusMsg::AggDone {
                token: agg.token,
                delivered,
            },
        );
    }

    fn ws_open(&self, key: usize) -> bool {
        matches!(
            self.conns.get(key),
            Some(Conn { state: State::Ws(ws), .. }) if !ws.closing && !ws.doomed
        )
    }

    /// A `direct` command: gather the recipient's connections' count.
    pub(super) fn send_direct(
        &mut self,
        conn: ConnRef,
        to: Arc<str>,
        id: Option<Id>,
        event: String,
    ) {
        let agg = self.agg_start(AggTarget::Direct { conn, id }, 1, 0);
        let frame = outq::text_frame(event.as_bytes());
        let home = home_core(&to, self.bus.cores());
        self.route(
            home,
            BusMsg::ToUser {
                user: to,
                frame,
                agg,
            },
        );
    }
}

/// Whether the connection belongs to `user`.
fn is_user(ws: &WsConn, user: &str) -> bool {
    ws.session
        .as_ref()
        .and_then(|s| s.identity.as_ref())
        .is_some_and(|i| &*i.user == user)
}

/// The `/api/stats` body.
fn stats_json(snaps: &[crate::metrics::Snapshot], cores: usize, now_ms: u64) -> String {
    let sum = |f: &dyn Fn(&crate::metrics::Snapshot) -> u64| -> u64 { snaps.iter().map(f).sum() };
    let mut per_core = String::from("[");
    for (i, s) in snaps.iter().enumerate() {
        if i > 0 {
            per_core.push(',');
        }
        per_core.push_str(
            &Event::object()
                .num("core", s.core as u64)
                .num("connections", s.connections)
                .num("sse", s.sse)
                .num("users", s.users)
                .num("rooms", s.rooms)
                .num("messages_in_per_s", s.in_per_s)
                .num("messages_out_per_s", s.out_per_s)
                .bool("alive", now_ms.saturating_sub(s.last_loop_ms) <= 1000)
                .finish(),
        );
    }
    per_core.push(']');
    Event::object()
        .num("cores", cores as u64)
        .num("cores_answered", snaps.len() as u64)
        .num("connections", sum(&|s| s.connections))
        .num("sse", sum(&|s| s.sse))
        .num("users", sum(&|s| s.users))
        .num("rooms", sum(&|s| s.rooms))
        .num("messages_in_per_s", sum(&|s| s.in_per_s))
        .num("messages_out_per_s", sum(&|s| s.out_per_s))
        .num("messages_in", sum(&|s| s.metrics.messages_in))
        .num("messages_out", sum(&|s| s.metrics.messages_out))
        .num("published", sum(&|s| s.metrics.published))
        .raw("per_core", &per_core)
        .finish()
}
