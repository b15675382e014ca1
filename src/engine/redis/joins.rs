//! The join protocol of the Redis engine: how a `join` becomes an `ack`
//! at exactly the right position, whichever node published what.
//!
//! A join counts the member locally, subscribes the node to the room when
//! it is the first (and waits for the confirmation), then runs the join
//! script, which registers the member in Redis and reports the room's seq
//! `T` at that instant plus the missed messages after `since`. The `ack`
//! goes out when the node's position in the room reaches `T` (at once if it
//! is past it: the messages delivered meanwhile are in the room's
//! `recent`), on the channel to the joiner's core that then carries the
//! room's messages. A join that cannot complete is refused and its
//! registration undone. The room state is [`super::rooms`]'s; this module
//! must not deliver messages itself.

use super::io::{Io, Want};
use super::rooms::{NodeRooms, Pos, Sub, fetch_position, request_fill, send_leave};
use super::wire::{as_array, as_bytes, as_int, as_str};
use crate::engine::{ConnRef, Event};
use crate::frame::text_frame;
use crate::proto::command::{Id, Since};
use crate::proto::event::{self, Event as Ev};
use crate::proto::{ErrorCode, Status};
use bytes::Bytes;
use redis::Value;
use std::sync::Arc;
use tracing::{debug, warn};

const UNAVAILABLE: &str = "the cluster engine (Redis) is unreachable; retry later";

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
    /// The user's status (kept in the room for `members`).
    pub status: Status,
    /// When the join arrived (monotonic ms), for its deadline.
    pub at_ms: u64,
}

/// A join answered by Redis, waiting for the node's position to reach the
/// seq the script saw.
#[derive(Debug)]
pub(super) struct Parked {
    pub(super) req: JoinReq,
    pub(super) target: u64,
    pub(super) members: u64,
    pub(super) recovered: Option<bool>,
    pub(super) replay: Vec<Bytes>,
    pub(super) since_ms: u64,
}

impl NodeRooms {
    // ---- joining --------------------------------------------------------

    /// A connection wants to join (or, `rejoin`, to hear the position).
    pub fn join(&mut self, io: &mut Io<'_>, room: Arc<str>, req: JoinReq) {
        if !io.room_ready(&room) {
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

    pub(super) fn send_join(&mut self, io: &mut Io<'_>, room: Arc<str>, req: JoinReq) {
        let r = self.room(&room);
        let (since_epoch, since_seq) = match &req.since {
            Some(s) => (s.epoch.as_str().to_string(), s.seq.to_string()),
            None => (String::new(), String::new()),
        };
        let (seen_epoch, seen_last) = r.pos.seen();
        let k = io.keys;
        let mut cmd = io.script(
            &io.scripts.join,
            &[
                &k.room(&room, "m"),
                &k.room(&room, "h"),
                &k.room(&room, "u"),
                &k.room(&room, "nm"),
                &k.room(&room, "st"),
                &k.room_node(&room, k.node()),
            ],
        );
        // Every join registers (the script's HSETNX makes a repeat
        // harmless), so no ordering of joins can leave a member out.
        cmd.arg(k.room_channel(&room))
            .arg(io.new_epoch())
            .arg(&*room)
            .arg(&*req.user)
            .arg(req.name.as_deref().unwrap_or(""))
            .arg(if req.rejoin { "0" } else { "1" })
            .arg(since_epoch)
            .arg(since_seq)
            .arg(io.cfg.ttl_ms)
            .arg(io.cfg.idle_ms)
            .arg(req.status.as_str())
            .arg(seen_epoch)
            .arg(seen_last);
        let at = match r.pos {
            Pos::Known { last, .. } => last,
            _ => 0,
        };
        r.sent.push_back(at);
        io.call(&cmd, Want::Join { room, req });
    }

    /// The subscription to a room's channel is confirmed.
    pub fn on_subscribed(&mut self, io: &mut Io<'_>, room: &str) {
        let Some(name) = self.name(room) else {
            return;
        };
        let r = self.room(&name);
        if r.sub == Sub::Active {
            return;
        }
        r.sub = Sub::Active;
        let waiting = std::mem::take(&mut r.waiting);
        let joins = !waiting.is_empty();
        for req in waiting {
            self.send_join(io, name.clone(), req);
        }
        let r = self.room(&name);
        if !joins && r.pos != Pos::Unknown {
            // A resubscription after a lost connection: where is the room?
            fetch_position(io, &name, r);
        }
    }

    /// The join script answered `{epoch, seq, members, recovered, json...}`.
    pub fn on_join_reply(&mut self, io: &mut Io<'_>, room: Arc<str>, req: JoinReq, v: Value) {
        let Some(r) = self.rooms.get_mut(&room) else {
            return refuse_join(io, room, req, ErrorCode::Internal, "room state lost");
        };
        r.sent.pop_front();
        let parsed = as_array(&v).and_then(|a| {
            let epoch: Arc<str> = as_str(a.first()?)?.into();
            let seq = as_int(a.get(1)?)? as u64;
            let members = as_int(a.get(2)?)? as u64;
            let recovered = match as_int(a.get(3)?)? {
                -1 => None,
                n => Some(n == 1),
            };
            let mut replay = Vec::with_capacity(a.len().saturating_sub(4));
            for j in &a[4..] {
                replay.push(text_frame(as_bytes(j)?));
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
        let parked = Parked {
            req,
            target,
            members,
            recovered,
            replay,
            since_ms: io.now_ms,
        };
        let r = self.room(&room);
        if let Pos::Stale { epoch: e, last } = r.pos.clone() {
            // The subscription was lost: what the node missed until the
            // script's seq is read from the stream first.
            r.pos = Pos::Known {
                epoch: e.clone(),
                last,
            };
            if e == epoch && last < target {
                request_fill(io, &room, r, last + 1, target);
            }
        }
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
                    self.drain(io, &room);
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
        self.room(&room).trim_recent();
    }

    /// Sends the `ack` of a join whose target the node has reached.
    pub(super) fn ack(&mut self, io: &mut Io<'_>, room: &Arc<str>, p: Parked, epoch: Arc<str>) {
        let r = self.room(room);
        let Pos::Known { last, .. } = r.pos else {
            unreachable!("acked only at a known position")
        };
        let since = p.req.since.as_ref().map_or(0, |s| s.seq);
        let mut replay: Vec<Bytes> = Vec::new();
        if p.recovered == Some(true) {
            replay.extend(p.replay);
            // Delivered after the script ran, before this ack: the kept
            // messages must cover them all, else the join tries again.
            let from = p.target.max(since);
            let kept: Vec<&(u64, Bytes)> = r
                .recent
                .iter()
                .filter(|(s, _)| *s > from && *s <= last)
                .collect();
            if kept.len() as u64 != last - from.min(last) {
                debug!(room = %room, "join replay not covered; refused for a retry");
                let req = p.req;
                self.undo_join(io, room, &req);
                return refuse_join(io, room.clone(), req, ErrorCode::Unavailable, "busy; retry");
            }
            replay.extend(kept.into_iter().map(|(_, f)| f.clone()));
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

    /// A join that will not complete: the local count is undone, and the
    /// user's registration in Redis removed when it was its last here.
    pub(super) fn undo_join(&mut self, io: &mut Io<'_>, room: &Arc<str>, req: &JoinReq) {
        if req.rejoin {
            return;
        }
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let gone = match r.users.get_mut(&req.user) {
            Some(u) => {
                u.0 = u.0.saturating_sub(1);
                u.0 == 0
            }
            None => false,
        };
        if gone {
            r.users.remove(&req.user);
            send_leave(io, room, &req.user);
        }
        self.maybe_idle(io, room);
    }

    /// Fails a join whose script never answered (the connection dropped).
    pub fn join_failed(&mut self, io: &mut Io<'_>, room: Arc<str>, req: JoinReq) {
        if let Some(r) = self.rooms.get_mut(&room) {
            r.sent.pop_front();
            r.trim_recent();
        }
        self.undo_join(io, &room, &req);
        refuse_join(io, room, req, ErrorCode::Unavailable, UNAVAILABLE);
    }
}

/// Answers a join that will not happen: the error, framed, as a refused
/// `JoinAck` (the connection reads on and stays out of the room).
pub(super) fn refuse_join(
    io: &mut Io<'_>,
    room: Arc<str>,
    req: JoinReq,
    code: ErrorCode,
    msg: &str,
) {
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
