//! Server-Sent Events at `GET /sse?rooms=a,b`: a one-way stream of the
//! rooms' `message` events for clients that cannot or need not speak
//! WebSocket.
//!
//! An SSE stream is a room member like a WebSocket connection (it is in
//! the core's local member lists and joins through the rooms' home cores),
//! with the same authentication (`?token=` or `Authorization: Bearer`, or
//! anonymous when allowed) and room rules. Each event carries an `id` that
//! is the stream's position in every room — `room:seq@epoch` joined by `;`
//! — so a reconnecting `EventSource` that sends `Last-Event-ID` resumes
//! after it in each room whose history still holds that position (a room
//! that cannot be resumed gets an `event: reset`). `: ping` comments every
//! heartbeat keep proxies from closing an idle stream. Output beyond
//! `max_backlog` closes the stream (a slow consumer), as on WebSocket.
//!
//! This module must not change the shared frames: it re-frames each event
//! as SSE text per stream, which is why SSE is not the fan-out fast path.

use super::conn::{Conn, State, Then};
use super::{Core, TimerKind, http, would_block};
use crate::auth::Identity;
use crate::engine::{Command, ConnRef};
use crate::proto::close;
use crate::proto::command::Since;
use crate::proto::event::Event;
use bytes::Bytes;
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tracing::debug;

/// An SSE stream.
pub(super) struct SseConn {
    ident: Identity,
    /// Rooms: (name, slot in the local member list once joined, epoch, seq).
    rooms: Vec<SseRoom>,
    out: Vec<u8>,
    written: usize,
}

struct SseRoom {
    name: Arc<str>,
    slot: Option<u32>,
    epoch: Arc<str>,
    seq: u64,
}

impl SseConn {
    fn cursor(&self) -> String {
        let mut c = String::new();
        for r in self.rooms.iter().filter(|r| r.slot.is_some()) {
            if !c.is_empty() {
                c.push(';');
            }
            c.push_str(&r.name);
            c.push(':');
            c.push_str(itoa::Buffer::new().format(r.seq));
            c.push('@');
            c.push_str(&r.epoch);
        }
        c
    }
}

/// Parses a `Last-Event-ID` cursor (`room:seq@epoch` joined by `;`, as
/// this module writes them) into per-room positions. Parts that do not
/// read as `room:seq[@epoch]` with a decimal `seq` are skipped; a part
/// without `@` has an empty epoch. Total over any input (it is what a
/// client sends).
pub fn parse_cursor(s: &str) -> Vec<(String, Since)> {
    let mut out = Vec::new();
    for part in s.split(';') {
        let (pos, epoch) = part.rsplit_once('@').unwrap_or((part, ""));
        let Some((room, seq)) = pos.rsplit_once(':') else {
            continue;
        };
        let Ok(seq) = seq.parse() else { continue };
        out.push((
            room.to_string(),
            Since {
                epoch: epoch.into(),
                seq,
            },
        ));
    }
    out
}

/// The number after `"key":` in `json` (the events are our own encoding).
fn json_num(json: &[u8], key: &[u8]) -> Option<u64> {
    let i = memchr::memmem::find(json, key)? + key.len();
    let digits = json[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&json[i..i + digits]).ok()?.parse().ok()
}

fn json_str<'a>(json: &'a [u8], key: &[u8]) -> Option<&'a str> {
    let i = memchr::memmem::find(json, key)? + key.len();
    let end = memchr::memchr(b'"', &json[i..])?;
    std::str::from_utf8(&json[i..i + end]).ok()
}

impl Core {
    /// `GET /sse`: authenticate, check the rooms, send the response head,
    /// and join every room (resuming from `Last-Event-ID`).
    pub(super) fn sse_open(&mut self, key: usize, req: &http::Request) {
        if self.draining_until.is_some() {
            return self.http_error(key, 503, "overloaded", "server is shutting down");
        }
        let ident = match req.query_param("token").or_else(|| req.bearer.clone()) {
            Some(t) => match self.shared.auth.verify(&t) {
                Ok(i) => i,
                Err(e) => return self.http_error(key, 401, "unauthorized", &e.to_string()),
            },
            None if self.shared.config.anonymous_allowed() => {
                let sid = format!("sse_{:016x}", self.rng.u64(..));
                self.shared.auth.anonymous(&sid)
            }
            None => return self.http_error(key, 401, "unauthorized", "a token is required"),
        };
        let names: Vec<String> = req
            .query_param("rooms")
            .unwrap_or_default()
            .split(',')
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty())
            .collect();
        if names.is_empty() {
            return self.http_error(key, 400, "missing_field", "`rooms` is required");
        }
        if names.len() > self.shared.config.limits.max_rooms {
            return self.http_error(key, 400, "room_limit", "too many rooms");
        }
        for r in &names {
            if !crate::proto::valid_room(r) {
                return self.http_error(key, 400, "invalid_room", "invalid room name");
            }
            if !ident.rooms.matches(r) {
                return self.http_error(key, 403, "forbidden", "not allowed to join this room");
            }
        }
        let resume = match (
            req.last_event_id.as_deref(),
            req.query_param("last_event_id"),
        ) {
            (Some(id), _) => parse_cursor(id),
            (None, Some(q)) => parse_cursor(&q),
            (None, None) => Vec::new(),
        };
        let ip = match self.admit_ip(key, self.client_ip(key, req)) {
            Ok(ip) => ip,
            Err(resp) => {
                self.metrics.http_error(429);
                return self.respond(key, resp, Then::Close);
            }
        };
        let max = self.shared.config.limits.max_connections;
        if self.shared.connections.fetch_add(1, Ordering::Relaxed) >= max {
            self.shared.connections.fetch_sub(1, Ordering::Relaxed);
            if let Some(ip) = ip {
                self.shared.per_ip.release(ip);
            }
            return self.http_error(key, 503, "overloaded", "connection limit reached");
        }
        let Some(conn) = self.conns.get_mut(key) else {
            self.shared.connections.fetch_sub(1, Ordering::Relaxed);
            if let Some(ip) = ip {
                self.shared.per_ip.release(ip);
            }
            return;
        };
        conn.counted = true;
        conn.ip = ip;
        let generation = conn.generation;
        let exp = ident.exp;
        let mut names_dedup = names.clone();
        names_dedup.sort();
        names_dedup.dedup();
        let mut head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-store\r\nconnection: close\r\nx-accel-buffering: no\r\n\r\n: corecast\n\n".to_vec();
        if let Some(origin) = req
            .origin
            .as_deref()
            .filter(|o| super::cors::Origins::well_formed(o))
        {
            // Allowed (the front door refused the others): a page of that
            // origin may read the stream.
            super::cors::add_to_response(&mut head, origin);
        }
        let rooms: Vec<SseRoom> = names_dedup
            .iter()
            .map(|n| SseRoom {
                name: n.as_str().into(),
                slot: None,
                epoch: "".into(),
                seq: 0,
            })
            .collect();
        let user = ident.user.clone();
        let name = ident.name.clone();
        conn.state = State::Sse(Box::new(SseConn {
            ident,
            rooms,
            out: head,
            written: 0,
        }));
        let conn_ref = ConnRef {
            key: key as u32,
            generation,
        };
        for room in names_dedup {
            let since = resume
                .iter()
                .find(|(r, _)| *r == room)
                .map(|(_, s)| s.clone());
            self.submit(Command::Join {
                room: room.into(),
                core: self.id,
                conn: conn_ref,
                user: user.clone(),
                name: name.clone(),
                id: None,
                since,
                rejoin: false,
            });
        }
        let hb = self.shared.config.heartbeat * 1000;
        self.timer(self.now_ms + hb, key, generation, TimerKind::Heartbeat);
        if let Some(exp) = exp {
            // The stream ends when its token expires (a reconnect with a
            // fresh token resumes it).
            let at = self.now_ms + exp.saturating_sub(self.unix_s).saturating_mul(1000);
            self.timer(at, key, generation, TimerKind::Expiry);
        }
        self.sse_write(key);
    }

    /// The engine answered an SSE stream's join: the stream becomes a
    /// member, gets the replay, and a `reset` when it could not resume. A
    /// refused join (the engine is unavailable) ends the stream, so the
    /// client's EventSource reconnects and resumes.
    /// Returns false when `key` is not an SSE stream.
    pub(super) fn sse_join_acked(
        &mut self,
        key: usize,
        room: &Arc<str>,
        replay: Vec<Bytes>,
        ack: &Bytes,
        refused: bool,
    ) -> bool {
        let Some(Conn {
            state: State::Sse(s),
            ..
        }) = self.conns.get_mut(key)
        else {
            return false;
        };
        if refused {
            debug!(core = self.id, room = %room, "SSE stream closed: join refused");
            self.remove_conn(key);
            return true;
        }
        let json = crate::frame::payload(ack);
        let epoch: Arc<str> = json_str(json, b"\"epoch\":\"").unwrap_or("").into();
        let seq = json_num(json, b"\"seq\":").unwrap_or(0);
        let recovered = memchr::memmem::find(json, b"\"recovered\":false").is_none();
        let resumed = memchr::memmem::find(json, b"\"recovered\":").is_some();
        let slot = self.sse_rooms.add(room, key);
        if let Some(r) = s.rooms.iter_mut().find(|r| r.name == *room) {
            r.slot = Some(slot);
            r.epoch = epoch.clone();
            // Replayed messages move the position as they are written.
            r.seq = seq.saturating_sub(replay.len() as u64);
        }
        if resumed && !recovered {
            let ev = Event::object()
                .str("room", room)
                .str("epoch", &epoch)
                .num("seq", seq)
                .finish();
            let cursor = s.cursor();
            push_event(&mut s.out, "reset", &cursor, ev.as_bytes());
        }
        for frame in replay {
            self.sse_push(key, &frame);
        }
        self.sse_write(key);
        true
    }

    /// Appends one delivered event (a `message`, or `joined`/`left`) to a
    /// stream. Only `message` events are streamed.
    pub(super) fn sse_push(&mut self, key: usize, frame: &Bytes) {
        let max = self.backlogs.0;
        let Some(Conn {
            state: State::Sse(s),
            ..
        }) = self.conns.get_mut(key)
        else {
            return;
        };
        let json = crate::frame::payload(frame);
        if !json.starts_with(b"{\"type\":\"message\"") {
            return;
        }
        let (Some(room), Some(seq)) = (json_str(json, b"\"room\":\""), json_num(json, b"\"seq\":"))
        else {
            return;
        };
        if let Some(r) = s.rooms.iter_mut().find(|r| &*r.name == room) {
            match json_str(json, b"\"epoch\":\"") {
                // A new epoch (the room's history was lost) restarts the
                // position.
                Some(e) if *e != *r.epoch => {
                    r.epoch = e.into();
                    r.seq = seq;
                }
                _ => r.seq = r.seq.max(seq),
            }
        }
        let cursor = s.cursor();
        push_event(&mut s.out, "message", &cursor, json);
        if s.out.len() - s.written > max {
            debug!(core = self.id, "SSE stream closed: slow consumer");
            self.metrics.close(close::SLOW_CONSUMER);
            self.remove_conn(key);
        }
    }

    /// A room delivery to this core's SSE streams in `room`.
    pub(super) fn sse_deliver(&mut self, room: &str, frame: &Bytes) {
        let keys: Vec<usize> = match self.sse_rooms.members(room) {
            Some(m) => m.iter().map(|(_, &k)| k as usize).collect(),
            None => return,
        };
        for key in keys {
            self.sse_push(key, frame);
            self.sse_write(key);
        }
    }

    /// Writes what a stream has queued.
    pub(super) fn sse_write(&mut self, key: usize) {
        let Some(Conn {
            stream,
            state: State::Sse(s),
            ..
        }) = self.conns.get_mut(key)
        else {
            return;
        };
        while s.written < s.out.len() {
            match stream.write(&s.out[s.written..]) {
                Ok(0) => return self.remove_conn(key),
                Ok(n) => {
                    s.written += n;
                    self.metrics.bytes_out += n as u64;
                }
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.remove_conn(key),
            }
        }
        if s.written == s.out.len() {
            s.out.clear();
            s.written = 0;
        } else if s.written > 64 * 1024 {
            s.out.drain(..s.written);
            s.written = 0;
        }
    }

    /// Heartbeat comment.
    pub(super) fn sse_ping(&mut self, key: usize, generation: u32) {
        if let Some(Conn {
            state: State::Sse(s),
            ..
        }) = self.conns.get_mut(key)
        {
            s.out.extend_from_slice(b": ping\n\n");
        }
        self.sse_write(key);
        let hb = self.shared.config.heartbeat * 1000;
        self.timer(self.now_ms + hb, key, generation, TimerKind::Heartbeat);
    }

    /// The server drains: tell the stream when to come back (best effort;
    /// the stream closes right after).
    pub(super) fn sse_reconnect(&mut self, key: usize, after_ms: u64) {
        if let Some(Conn {
            state: State::Sse(s),
            ..
        }) = self.conns.get_mut(key)
        {
            let ev = Event::new("reconnect").num("after_ms", after_ms).finish();
            s.out.extend_from_slice(b"retry: ");
            s.out
                .extend_from_slice(itoa::Buffer::new().format(after_ms).as_bytes());
            s.out.extend_from_slice(b"\nevent: reconnect\ndata: ");
            s.out.extend_from_slice(ev.as_bytes());
            s.out.extend_from_slice(b"\n\n");
        }
        self.sse_write(key);
    }

    /// A stream is gone: leave its rooms.
    pub(super) fn sse_gone(&mut self, s: SseConn) {
        for r in s.rooms {
            let Some(slot) = r.slot else {
                continue; // its join is still out: the ack will find it gone
            };
            self.sse_rooms.remove(&r.name, slot);
            self.submit(Command::Leave {
                room: r.name,
                core: self.id,
                user: s.ident.user.clone(),
            });
        }
    }
}

fn push_event(out: &mut Vec<u8>, event: &str, id: &str, json: &[u8]) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\nid: ");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let c = parse_cursor("team:42:5@e1;b:9@e2;junk;c:x@e");
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].0, "team:42");
        assert_eq!((c[0].1.seq, &*c[0].1.epoch), (5, "e1"));
        assert_eq!((c[1].0.as_str(), c[1].1.seq), ("b", 9));
        let no_epoch = parse_cursor("a:3");
        assert_eq!((no_epoch[0].1.seq, &*no_epoch[0].1.epoch), (3, ""));
    }

    #[test]
    fn reads_our_own_events() {
        let ev = br#"{"type":"message","room":"a:b","seq":12,"epoch":"e","ts":1,"from":{"user":"u"},"data":{"seq":99}}"#;
        let mut frame = Vec::new();
        http::push_text_frame(&mut frame, ev);
        let json = crate::frame::payload(&frame);
        assert_eq!(json, ev);
        assert_eq!(json_num(json, b"\"seq\":"), Some(12));
        assert_eq!(json_str(json, b"\"room\":\""), Some("a:b"));
        let mut out = Vec::new();
        push_event(&mut out, "message", "a:b:12@e", json);
        assert!(out.starts_with(b"event: message\nid: a:b:12@e\ndata: {"));
        assert!(out.ends_with(b"}\n\n"));
    }
}
