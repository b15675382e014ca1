//! Carrying out the engine's [`Event`]s for this core's connections:
//! room deliveries to the local member lists, join acknowledgements,
//! presence and typing, deliveries to named connections (direct messages,
//! notifications), broadcasts, and the counts they report.
//!
//! Which cores and rooms get an event is the engine's decision; this
//! module decides only which local connections (open, not closing, not the
//! excluded user). It also tells the engine about a connection's user
//! (`count_user`) and starts the gathering of a `direct`'s count. It must
//! not sequence, store or route anything between cores itself.

use super::Core;
use super::conn::{Conn, Push, State, WsConn, queue_replay, queue_ws};
use super::outq::Frame;
use crate::engine::{AggRef, Command, ConnRef, Event, Report};
use crate::proto::command::Id;
use bytes::Bytes;
use std::sync::Arc;

impl Core {
    /// Handles one event from the engine.
    pub(super) fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Deliver { room, frame, at_us } => {
                if at_us > 0 {
                    let us = self.now_us.saturating_sub(at_us);
                    crate::metrics::CoreMetrics::record(&mut self.metrics.delivery_us, us);
                }
                self.deliver_local(&room, frame)
            }
            Event::Reply { conn, frame } => {
                if self.live(conn.key as usize, conn.generation) {
                    self.queue(conn.key as usize, frame);
                }
            }
            Event::JoinAck {
                room,
                conn,
                user,
                replay,
                frame,
                rejoin,
                refused,
            } => self.join_acked(room, conn, user, replay, frame, rejoin, refused),
            Event::DeliverExcept {
                room,
                except,
                frame,
            } => self.deliver_except(&room, &except, &frame),
            Event::Presence {
                user,
                rooms,
                skip,
                frame,
            } => self.on_presence(&user, &rooms, &skip, &frame),
            Event::Evict { room } => self.evict(&room),
            Event::HttpReply { conn, status, body } => self.http_answer(conn, status, body),
            Event::UserDeliver { conns, frame, agg } => self.on_user_deliver(conns, frame, agg),
            Event::Broadcast { frame, agg } => self.on_broadcast(frame, agg),
            Event::AggExpect { token, parts } => self.aggs_expect(token, parts),
            Event::AggDone { token, delivered } => self.aggs_done(token, delivered),
            Event::AggFailed { token, code } => self.aggs_failed(token, code),
            Event::AggInfo { token, json } => self.aggs_info(token, json),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn join_acked(
        &mut self,
        room: Arc<str>,
        conn: ConnRef,
        user: Arc<str>,
        replay: Vec<Bytes>,
        frame: Bytes,
        rejoin: bool,
        refused: bool,
    ) {
        let key = conn.key as usize;
        if matches!(
            self.conns.get(key),
            Some(Conn { generation, state: State::Sse(_), .. }) if *generation == conn.generation
        ) {
            self.sse_join_acked(key, &room, replay, &frame, refused);
            return;
        }
        let member = match self.conns.get_mut(key) {
            Some(Conn {
                generation,
                state: State::Ws(ws),
                ..
            }) if *generation == conn.generation && !ws.closing => Some(ws),
            _ => None,
        };
        let Some(ws) = member else {
            // The connection went away while its join was in flight: undo it.
            if !rejoin && !refused {
                let core = self.id;
                self.submit(Command::Leave { room, core, user });
            }
            return;
        };
        let slot = (!rejoin && !refused).then(|| self.rooms.add(&room, key));
        if let Some(s) = ws.session.as_mut() {
            s.join_done(room.clone(), slot);
        }
        if std::mem::take(&mut ws.blocked) {
            self.runnable.push((key, conn.generation));
        }
        if slot.is_some() {
            self.submit(Command::UserRoom {
                user,
                room,
                joined: true,
            });
        }
        // Missed messages first (outside the backlog bound: see
        // `queue_replay`), then the ack.
        if let Some(conn) = self.conns.get_mut(key) {
            queue_replay(conn, key, replay, &mut self.flush);
        }
        self.queue(key, frame);
    }

    pub(super) fn deliver_local(&mut self, room: &str, frame: Bytes) {
        if !self.sse_rooms.is_empty() {
            self.sse_deliver(room, &frame);
        }
        let Some(members) = self.rooms.members(room) else {
            return;
        };
        let frame = Frame::new(frame);
        self.metrics.messages_out += members.len() as u64;
        for (_, &key) in members.iter() {
            if let Some(conn) = self.conns.get_mut(key as usize) {
                queue_ws(
                    conn,
                    key as usize,
                    Push::Shared(frame.clone()),
                    self.backlogs,
                    &mut self.flush,
                    false,
                    &mut self.to_close,
                );
            }
        }
    }

    /// A user's presence changed: tell this core's members of the user's
    /// rooms, each connection once (and none that is also in a `skip` room:
    /// it heard of the change already).
    pub(super) fn on_presence(
        &mut self,
        user: &str,
        rooms: &[Arc<str>],
        skip: &[Arc<str>],
        frame: &Bytes,
    ) {
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
                    && !in_any(ws, skip)
                {
                    targets.push(key as usize);
                }
            }
        }
        // Each connection once, even when it shares several rooms.
        targets.sort_unstable();
        targets.dedup();
        let frame = Frame::new(frame.clone());
        for &key in &targets {
            self.deliver_one(key, &frame);
        }
        self.key_scratch = targets;
    }

    /// The engine cannot continue `room` in order for this core's members:
    /// WebSocket members are closed with 4009 (they rejoin with `since` and
    /// get `recovered: false`), SSE streams end (the EventSource resumes).
    fn evict(&mut self, room: &str) {
        let ws: Vec<usize> = self
            .rooms
            .members(room)
            .map(|m| m.iter().map(|(_, &k)| k as usize).collect())
            .unwrap_or_default();
        for key in ws {
            self.close_ws(
                key,
                crate::proto::close::SLOW_CONSUMER,
                "room history changed; resume with since",
            );
        }
        let sse: Vec<usize> = self
            .sse_rooms
            .members(room)
            .map(|m| m.iter().map(|(_, &k)| k as usize).collect())
            .unwrap_or_default();
        for key in sse {
            self.remove_conn(key);
        }
    }

    /// Queues a shared frame to one connection as a room-style delivery.
    pub(super) fn deliver_one(&mut self, key: usize, frame: &Frame) {
        if self.conns.contains(key) {
            self.metrics.messages_out += 1;
            self.queue_as(key, Push::Shared(frame.clone()), false);
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
        let frame = Frame::new(frame.clone());
        for &key in &targets {
            self.deliver_one(key, &frame);
        }
        self.key_scratch = targets;
    }

    /// Delivers to these connections (those still there) and reports the
    /// count when asked.
    pub(super) fn on_user_deliver(
        &mut self,
        conns: Vec<ConnRef>,
        frame: Bytes,
        agg: Option<AggRef>,
    ) {
        let keys: Vec<usize> = conns
            .into_iter()
            .filter(|c| self.live(c.key as usize, c.generation))
            .map(|c| c.key as usize)
            .collect();
        let delivered = self.deliver_to(keys, frame);
        if let Some(agg) = agg {
            self.report(Report::Core(agg), delivered);
        }
    }

    /// Delivers to every authenticated WebSocket connection of this core.
    pub(super) fn on_broadcast(&mut self, frame: Bytes, agg: Report) {
        let keys: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(&c.state, State::Ws(ws) if ws.counted))
            .map(|(k, _)| k)
            .collect();
        let delivered = self.deliver_to(keys, frame);
        self.report(agg, delivered);
    }

    pub(super) fn deliver_to(&mut self, keys: Vec<usize>, frame: Bytes) -> u64 {
        let frame = Frame::new(frame);
        let mut delivered = 0;
        for key in keys {
            if self.ws_open(key) {
                self.deliver_one(key, &frame);
                delivered += 1;
            }
        }
        delivered
    }

    /// Reports a delivery count to a gathering core or to the bridge.
    pub(super) fn report(&mut self, to: Report, delivered: u64) {
        match to {
            Report::Core(agg) => {
                let ev = Event::AggDone {
                    token: agg.token,
                    delivered,
                };
                self.route(agg.core, crate::bus::BusMsg::Event(ev));
            }
            Report::Bridge(token) => self.submit(Command::Delivered { token, delivered }),
        }
    }

    pub(super) fn ws_open(&self, key: usize) -> bool {
        matches!(
            self.conns.get(key),
            Some(Conn { state: State::Ws(ws), .. }) if !ws.closing && !ws.doomed
        )
    }

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
        if let Some(old) = old {
            self.submit(Command::UserGone {
                user: old,
                core: self.id,
                conn,
                rooms: Vec::new(),
            });
        }
        self.submit(Command::UserConnected {
            user,
            name,
            core: self.id,
            conn,
        });
    }

    /// A `direct` command: gather the recipient's connections' count.
    pub(super) fn send_direct(
        &mut self,
        conn: ConnRef,
        to: Arc<str>,
        id: Option<Id>,
        event: String,
    ) {
        let agg = self.agg_start(super::agg::AggTarget::Direct { conn, id }, 1, 0);
        let frame = crate::frame::text_frame(event.as_bytes());
        self.submit(Command::ToUser {
            user: to,
            frame,
            agg,
        });
    }
}

/// Whether the connection is a member of any of `rooms`.
fn in_any(ws: &WsConn, rooms: &[Arc<str>]) -> bool {
    !rooms.is_empty()
        && ws
            .session
            .as_ref()
            .is_some_and(|s| s.rooms.iter().any(|j| rooms.contains(&j.name)))
}

/// Whether the connection belongs to `user`.
fn is_user(ws: &WsConn, user: &str) -> bool {
    ws.session
        .as_ref()
        .and_then(|s| s.identity.as_ref())
        .is_some_and(|i| &*i.user == user)
}
