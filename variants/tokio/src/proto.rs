//! The corecast protocol subset this variant speaks: commands are parsed
//! with serde_json (borrowing the frame; `id` and `data` stay raw JSON and
//! are repeated verbatim), events are serde `Serialize` structs.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

/// Largest `data` of a publish, bytes (corecast's `limits.max_message`).
pub const MAX_MESSAGE: usize = 65_536;
/// Largest text frame on `/ws`; bigger closes with 1009.
pub const MAX_FRAME: usize = MAX_MESSAGE + 1024;
/// Rooms per connection (corecast's `limits.max_rooms`).
pub const MAX_ROOMS: usize = 100;
/// Seconds between server pings; silent for two intervals = dropped.
pub const HEARTBEAT_SECS: u64 = 25;
/// Largest message on `/echo` (corecast's `limits.echo_max_message`).
pub const ECHO_MAX_MESSAGE: usize = 16 << 20;
/// Longest room name, bytes.
pub const MAX_ROOM_LEN: usize = 128;
/// Longest string `id`, bytes (raw JSON, quotes included, is allowed 2 more).
pub const MAX_ID_LEN: usize = 128;

/// Close code: slow consumer.
pub const CLOSE_SLOW_CONSUMER: u16 = 4009;
/// Close code: message too big.
pub const CLOSE_TOO_BIG: u16 = 1009;

/// A client command as sent; fields a command does not use are ignored.
#[derive(Debug, Deserialize)]
pub struct Command<'a> {
    /// `type`
    #[serde(rename = "type", borrow, default)]
    pub ty: Option<Cow<'a, str>>,
    /// `id`, repeated verbatim in replies.
    #[serde(borrow, default)]
    pub id: Option<&'a RawValue>,
    /// `room`
    #[serde(borrow, default)]
    pub room: Option<Cow<'a, str>>,
    /// `data` (any JSON value, `null` included).
    #[serde(borrow, default, deserialize_with = "present")]
    pub data: Option<&'a RawValue>,
}

/// Only the `id`, to answer a command whose other fields are malformed.
#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

fn present<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Option<&'a RawValue>, D::Error> {
    <&'a RawValue>::deserialize(d).map(Some)
}

/// Why a frame is not a usable command: the reply to send.
#[derive(Debug)]
pub struct BadCommand<'a> {
    /// The command's id, when it could be read.
    pub id: Option<&'a RawValue>,
    /// Error code.
    pub code: &'static str,
    /// Detail.
    pub message: String,
}

/// Parses one text frame.
pub fn parse(text: &str) -> Result<Command<'_>, BadCommand<'_>> {
    let cmd: Command<'_> = match serde_json::from_str(text) {
        Ok(c) => c,
        Err(e) => {
            let id = serde_json::from_str::<IdOnly<'_>>(text)
                .ok()
                .and_then(|i| i.id)
                .filter(|id| valid_id(id));
            return Err(BadCommand {
                id,
                code: "bad_json",
                message: format!("invalid command: {e}"),
            });
        }
    };
    if let Some(id) = cmd.id
        && !valid_id(id)
    {
        return Err(BadCommand {
            id: None,
            code: "bad_json",
            message: "`id` must be a string of at most 128 bytes or an integer".into(),
        });
    }
    Ok(cmd)
}

/// A string id of at most [`MAX_ID_LEN`] bytes, or an integer.
fn valid_id(id: &RawValue) -> bool {
    let s = id.get().as_bytes();
    match s.first() {
        Some(b'"') => s.len() <= MAX_ID_LEN + 2,
        Some(b'-' | b'0'..=b'9') => s[1..].iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

/// A room name is 1–128 bytes of `[A-Za-z0-9_:.-]`.
pub fn valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= MAX_ROOM_LEN
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'.' | b'-'))
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("events serialize")
}

#[derive(Serialize)]
struct Rate {
    per_sec: u64,
    burst: u64,
}

#[derive(Serialize)]
struct Limits {
    max_message: usize,
    max_rooms: usize,
    rate: Rate,
}

#[derive(Serialize)]
struct Welcome<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    session: &'a str,
    user: &'a str,
    heartbeat: u64,
    limits: Limits,
    core: u32,
}

/// `welcome` for an anonymous session. No rate limit is applied; the
/// announced rate is the one corecast is benchmarked with.
pub fn welcome(session: &str, user: &str) -> String {
    to_json(&Welcome {
        ty: "welcome",
        session,
        user,
        heartbeat: HEARTBEAT_SECS,
        limits: Limits {
            max_message: MAX_MESSAGE,
            max_rooms: MAX_ROOMS,
            rate: Rate {
                per_sec: 1_000_000,
                burst: 1_000_000,
            },
        },
        core: 0,
    })
}

#[derive(Serialize)]
struct JoinAck<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
    room: &'a str,
    epoch: &'a str,
    seq: u64,
    members: usize,
}

/// `ack` of a join.
pub fn join_ack(
    id: Option<&RawValue>,
    room: &str,
    epoch: &str,
    seq: u64,
    members: usize,
) -> String {
    to_json(&JoinAck {
        ty: "ack",
        id,
        room,
        epoch,
        seq,
        members,
    })
}

#[derive(Serialize)]
struct RoomAck<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
    room: &'a str,
}

/// `ack` of a leave.
pub fn leave_ack(id: Option<&RawValue>, room: &str) -> String {
    to_json(&RoomAck {
        ty: "ack",
        id,
        room,
    })
}

#[derive(Serialize)]
struct PublishAck<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
    room: &'a str,
    seq: u64,
    ts: u64,
}

/// `ack` of a publish.
pub fn publish_ack(id: Option<&RawValue>, room: &str, seq: u64, ts: u64) -> String {
    to_json(&PublishAck {
        ty: "ack",
        id,
        room,
        seq,
        ts,
    })
}

#[derive(Serialize)]
struct From<'a> {
    user: &'a str,
}

#[derive(Serialize)]
struct Message<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    room: &'a str,
    seq: u64,
    epoch: &'a str,
    ts: u64,
    from: From<'a>,
    data: &'a RawValue,
}

/// A room `message` event.
pub fn message(room: &str, seq: u64, epoch: &str, ts: u64, user: &str, data: &RawValue) -> String {
    to_json(&Message {
        ty: "message",
        room,
        seq,
        epoch,
        ts,
        from: From { user },
        data,
    })
}

#[derive(Serialize)]
struct Membership<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    room: &'a str,
    user: &'a str,
    name: Option<&'a str>,
}

/// `joined` / `left` (anonymous users have no name: `null`).
pub fn membership(ty: &'static str, room: &str, user: &str) -> String {
    to_json(&Membership {
        ty,
        room,
        user,
        name: None,
    })
}

#[derive(Serialize)]
struct Pong<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
}

/// `pong`.
pub fn pong(id: Option<&RawValue>) -> String {
    to_json(&Pong { ty: "pong", id })
}

#[derive(Serialize)]
struct Error<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
    code: &'a str,
    message: &'a str,
}

/// `error`.
pub fn error(id: Option<&RawValue>, code: &str, message: &str) -> String {
    to_json(&Error {
        ty: "error",
        id,
        code,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_keeps_raw_fields() {
        let c = parse(r#"{"type":"publish","id":"a\"b","room":"r","data":{"x":[1, 2]},"extra":1}"#)
            .unwrap();
        assert_eq!(c.ty.as_deref(), Some("publish"));
        assert_eq!(c.id.unwrap().get(), r#""a\"b""#);
        assert_eq!(c.data.unwrap().get(), r#"{"x":[1, 2]}"#);
        let c = parse(r#"{"type":"publish","room":"r","data":null}"#).unwrap();
        assert_eq!(c.data.unwrap().get(), "null");
        assert!(parse(r#"{"type":"ping"}"#).unwrap().data.is_none());
    }

    #[test]
    fn bad_commands_keep_the_id_when_they_can() {
        let e = parse(r#"{"type":"join","id":7,"room":5}"#).unwrap_err();
        assert_eq!((e.code, e.id.map(|i| i.get())), ("bad_json", Some("7")));
        let e = parse("not json").unwrap_err();
        assert_eq!((e.code, e.id.is_none()), ("bad_json", true));
        assert!(parse(r#"{"type":"ping","id":1.5}"#).is_err());
        assert!(parse(r#"{"type":"ping","id":[1]}"#).is_err());
        assert!(parse("[1]").is_err());
    }

    #[test]
    fn events_have_the_corecast_shapes() {
        let id = RawValue::from_string("3".into()).unwrap();
        assert_eq!(
            join_ack(Some(&id), "r", "0000abcd", 4, 2),
            r#"{"type":"ack","id":3,"room":"r","epoch":"0000abcd","seq":4,"members":2}"#
        );
        let data = RawValue::from_string(r#"{"t":"hi"}"#.into()).unwrap();
        assert_eq!(
            message("r", 1, "e", 9, "anon:s_1", &data),
            r#"{"type":"message","room":"r","seq":1,"epoch":"e","ts":9,"from":{"user":"anon:s_1"},"data":{"t":"hi"}}"#
        );
        assert_eq!(
            publish_ack(None, "r", 1, 9),
            r#"{"type":"ack","room":"r","seq":1,"ts":9}"#
        );
        assert_eq!(
            welcome("s_1", "anon:s_1"),
            r#"{"type":"welcome","session":"s_1","user":"anon:s_1","heartbeat":25,"limits":{"max_message":65536,"max_rooms":100,"rate":{"per_sec":1000000,"burst":1000000}},"core":0}"#
        );
        assert_eq!(
            error(None, "bad_json", "x"),
            r#"{"type":"error","code":"bad_json","message":"x"}"#
        );
    }

    #[test]
    fn room_names() {
        assert!(valid_room("team:42.a_b-c"));
        assert!(!valid_room(""));
        assert!(!valid_room("a b"));
        assert!(!valid_room(&"a".repeat(129)));
    }
}
