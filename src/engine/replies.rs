//! The answers both engines give, encoded once here: `ack`s of publishes,
//! refusals, `history` and `members` replies, the `/api/rooms` body, and
//! the `typing` event.
//!
//! Each function returns the core to send to and the [`Event`] to send, so
//! an engine only decides *whether* and *when* to answer. This module must
//! not hold state.

use super::{Answer, ConnRef, Event, ReplyTo};
use crate::frame::text_frame;
use crate::proto::ErrorCode;
use crate::proto::command::Id;
use crate::proto::event::{self, Event as Ev};
use bytes::Bytes;
use std::sync::Arc;

/// One framed event for one connection.
pub fn reply(conn: ConnRef, text: &str) -> Event {
    Event::Reply {
        conn,
        frame: text_frame(text.as_bytes()),
    }
}

/// The `typing` event, framed.
pub fn typing_frame(room: &str, user: &str, typing: bool) -> Bytes {
    let ev = Ev::new("typing")
        .str("room", room)
        .str("user", user)
        .bool("typing", typing)
        .finish();
    text_frame(ev.as_bytes())
}

/// Starts a `history` reply up to its `messages` array: the caller appends
/// the messages' JSON, comma-separated, then `]}`.
pub fn history_head(out: &mut String, id: Option<&Id>, room: &str) {
    out.push_str("{\"type\":\"history\"");
    if let Some(id) = id {
        out.push_str(",\"id\":");
        out.push_str(id.as_json());
    }
    out.push_str(",\"room\":");
    event::push_json_str(out, room);
    out.push_str(",\"messages\":[");
}

/// The answer to a publish: an `ack`, or the HTTP body of `/api/publish`.
pub fn publish_ack(
    reply: ReplyTo,
    room: &str,
    seq: u64,
    epoch: &str,
    ts: u64,
    duplicate: bool,
) -> (usize, Event) {
    if reply.http {
        let mut body = Ev::object()
            .str("room", room)
            .num("seq", seq)
            .str("epoch", epoch)
            .num("ts", ts);
        if duplicate {
            body = body.bool("duplicate", true);
        }
        let body = body.finish();
        let ev = Event::HttpReply {
            conn: reply.conn,
            status: 200,
            body,
        };
        return (reply.core, ev);
    }
    let mut ack = Ev::new("ack")
        .id(reply.id.as_ref())
        .str("room", room)
        .num("seq", seq)
        .num("ts", ts);
    if duplicate {
        ack = ack.bool("duplicate", true);
    }
    let ack = ack.finish();
    (reply.core, self::reply(reply.conn, &ack))
}

/// Answers a command that was not carried out: an `error` event, or the
/// HTTP error for the API.
pub fn refuse(reply: ReplyTo, code: ErrorCode, message: &str) -> (usize, Event) {
    if reply.http {
        let ev = Event::HttpReply {
            conn: reply.conn,
            status: code.http_status(),
            body: crate::core::http::error_body(code.as_str(), message),
        };
        return (reply.core, ev);
    }
    let err = event::error(reply.id.as_ref(), code, message);
    (reply.core, self::reply(reply.conn, &err))
}

/// The `members` reply, or the `/api/rooms/{room}` body: `users` is the
/// encoded `[{"user","name","status"}, ...]` array, `described` the room's
/// epoch, seq and history length (`None`: no such room, 404).
pub fn members(
    room: &str,
    id: Option<Id>,
    answer: Answer,
    users: &str,
    described: Option<(Arc<str>, u64, u64)>,
) -> (usize, Event) {
    match answer {
        Answer::Ws(reply) => {
            let ev = Ev::new("members")
                .id(id.as_ref())
                .str("room", room)
                .raw("users", users)
                .finish();
            (reply.core, self::reply(reply.conn, &ev))
        }
        Answer::Http { core, conn } => {
            let (status, body) = match described {
                Some((epoch, seq, history)) => (
                    200,
                    Ev::object()
                        .str("room", room)
                        .str("epoch", &epoch)
                        .num("seq", seq)
                        .num("history", history)
                        .raw("members", users)
                        .finish(),
                ),
                None => (
                    404,
                    crate::core::http::error_body(
                        "not_found",
                        "no such room (no members, no history)",
                    ),
                ),
            };
            (core, Event::HttpReply { conn, status, body })
        }
    }
}

/// Appends one member to a `members` array being built (`first`: no comma).
pub fn push_member(out: &mut String, first: bool, user: &str, name: Option<&str>, status: &str) {
    if !first {
        out.push(',');
    }
    out.push_str("{\"user\":");
    event::push_json_str(out, user);
    if let Some(name) = name {
        out.push_str(",\"name\":");
        event::push_json_str(out, name);
    }
    out.push_str(",\"status\":\"");
    out.push_str(status);
    out.push_str("\"}");
}
