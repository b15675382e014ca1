//! Client commands (PROTOCOL section 3) parsed with simd-json.
//!
//! A [`CommandParser`] lives once per core: it copies a text frame into its
//! padded scratch buffer, builds a simd-json tape there (reusing the tape,
//! the scratch and simd-json's `Buffers` across frames: no allocation per
//! command once warm), and hands the caller a [`Command`] whose strings
//! borrow the scratch. Fields are looked up on the tape directly instead of
//! through serde, so a wrong type in one field still lets the reply carry the
//! command's `id`, and `data` is re-emitted from the tape in its original key
//! order. This module must not decide what a command does; it only reads it.

use super::ErrorCode;
use super::event::push_json_str;
use simd_json::prelude::*;
use simd_json::tape::{Object, Tape, Value};
use simd_json::{Buffers, INPUT_PADDING};
use std::borrow::Cow;

/// Deepest nesting accepted in a command (objects and arrays). Bounds the
/// parser's work and the recursion of re-encoding `data`.
pub const MAX_DEPTH: usize = 64;
/// Longest string `id`, bytes.
pub const MAX_ID_LEN: usize = 128;
/// Longest idempotency `key` of a `publish`, bytes.
pub const MAX_KEY_LEN: usize = 64;
/// Default and largest `limit` of a `history` command.
pub const HISTORY_LIMIT: (u64, u64) = (50, 500);

/// A command's `id`, kept as its encoded JSON (`"abc"` or `42`) so replies
/// can repeat it verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Id(Box<str>);

impl Id {
    /// An integer id.
    pub fn int(v: i64) -> Self {
        Id(itoa::Buffer::new().format(v).into())
    }

    /// A string id.
    pub fn string(s: &str) -> Self {
        let mut out = String::with_capacity(s.len() + 2);
        push_json_str(&mut out, s);
        Id(out.into())
    }

    /// The id as JSON.
    pub fn as_json(&self) -> &str {
        &self.0
    }
}

/// A recovery position: `since` of a `join`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    /// The room epoch the client saw.
    pub epoch: String,
    /// The last seq the client saw.
    pub seq: u64,
}

/// Presence states a client may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Online.
    Online,
    /// Away.
    Away,
    /// Busy.
    Busy,
}

/// A JSON value from the frame (the `data` of a publish or direct message).
#[derive(Clone, Copy)]
pub struct Data<'t, 'a>(Value<'t, 'a>);

impl Data<'_, '_> {
    /// Appends the value as compact JSON (keys in their original order).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        self.0
            .write(out)
            .expect("writing JSON into a Vec cannot fail");
    }

    /// The value as compact JSON text.
    pub fn to_json(&self) -> String {
        let mut v = Vec::new();
        self.write_json(&mut v);
        String::from_utf8(v).expect("simd-json writes UTF-8")
    }
}

impl std::fmt::Debug for Data<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_json())
    }
}

/// One parsed command; strings borrow the parser's scratch buffer.
#[derive(Debug)]
pub enum Command<'t, 'a> {
    /// `auth`
    Auth {
        /// The JWT.
        token: &'a str,
    },
    /// `join`
    Join {
        /// Room name (not yet validated).
        room: &'a str,
        /// Recovery position.
        since: Option<Since>,
    },
    /// `leave`
    Leave {
        /// Room name.
        room: &'a str,
    },
    /// `publish`
    Publish {
        /// Room name.
        room: &'a str,
        /// Payload.
        data: Data<'t, 'a>,
        /// Idempotency key (1..=[`MAX_KEY_LEN`] bytes).
        key: Option<&'a str>,
    },
    /// `typing`
    Typing {
        /// Room name.
        room: &'a str,
        /// Typing or stopped.
        typing: bool,
    },
    /// `presence`
    Presence {
        /// New status.
        status: Status,
    },
    /// `direct`
    Direct {
        /// Recipient user id.
        to: &'a str,
        /// Payload.
        data: Data<'t, 'a>,
    },
    /// `history`
    History {
        /// Room name.
        room: &'a str,
        /// Only messages with a smaller seq.
        before: Option<u64>,
        /// At most this many (clamped to 1..=500).
        limit: u64,
    },
    /// `members`
    Members {
        /// Room name.
        room: &'a str,
    },
    /// `ping`
    Ping,
}

impl Command<'_, '_> {
    /// The command's `type` on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Auth { .. } => "auth",
            Command::Join { .. } => "join",
            Command::Leave { .. } => "leave",
            Command::Publish { .. } => "publish",
            Command::Typing { .. } => "typing",
            Command::Presence { .. } => "presence",
            Command::Direct { .. } => "direct",
            Command::History { .. } => "history",
            Command::Members { .. } => "members",
            Command::Ping => "ping",
        }
    }
}

/// Why a frame is not a usable command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    /// Wire error code.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: Cow<'static, str>,
}

impl CommandError {
    fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        CommandError {
            code,
            message: message.into(),
        }
    }
}

/// Per-core command parser with reusable buffers.
pub struct CommandParser {
    scratch: Vec<u8>,
    buffers: Buffers,
    tape: Option<Tape<'static>>,
}

impl Default for CommandParser {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for CommandParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandParser")
            .field("scratch_capacity", &self.scratch.capacity())
            .finish()
    }
}

impl CommandParser {
    /// A parser with small initial buffers (they grow to the largest frame seen).
    pub fn new() -> Self {
        CommandParser {
            scratch: Vec::with_capacity(1024),
            buffers: Buffers::with_max_depth(1024, MAX_DEPTH),
            tape: Some(Tape::null()),
        }
    }

    /// Parses `frame` and calls `f` with the command's id (if it could be
    /// read) and the command or the reason it is unusable.
    pub fn parse<R>(
        &mut self,
        frame: &[u8],
        f: impl for<'t, 'a> FnOnce(Option<Id>, Result<Command<'t, 'a>, CommandError>) -> R,
    ) -> R {
        let len = frame.len();
        self.scratch.clear();
        self.scratch.reserve(len + INPUT_PADDING);
        self.scratch.extend_from_slice(frame);
        self.scratch.resize(len + INPUT_PADDING, b' ');
        let mut tape = self.tape.take().unwrap_or_else(Tape::null).reset();
        let result =
            match simd_json::fill_tape_padded(&mut self.scratch, len, &mut self.buffers, &mut tape)
            {
                Err(e) => f(
                    None,
                    Err(CommandError::new(
                        ErrorCode::BadJson,
                        format!("invalid JSON: {e}"),
                    )),
                ),
                Ok(()) => decode(tape.as_value(), f),
            };
        self.tape = Some(tape.reset());
        result
    }
}

fn decode<'t, 'a, R>(
    v: Value<'t, 'a>,
    f: impl FnOnce(Option<Id>, Result<Command<'t, 'a>, CommandError>) -> R,
) -> R {
    let Some(obj) = v.as_object() else {
        return f(
            None,
            Err(CommandError::new(
                ErrorCode::BadJson,
                "a command must be a JSON object",
            )),
        );
    };
    let id = match read_id(&obj) {
        Ok(id) => id,
        Err(e) => return f(None, Err(e)),
    };
    let cmd = read_command(&obj);
    f(id, cmd)
}

fn read_id(obj: &Object<'_, '_>) -> Result<Option<Id>, CommandError> {
    let Some(v) = obj.get("id") else {
        return Ok(None);
    };
    if let Some(s) = v.as_str() {
        if s.len() > MAX_ID_LEN {
            return Err(CommandError::new(
                ErrorCode::BadJson,
                "`id` is longer than 128 bytes",
            ));
        }
        return Ok(Some(Id::string(s)));
    }
    if let Some(i) = v.as_i64() {
        return Ok(Some(Id::int(i)));
    }
    Err(CommandError::new(
        ErrorCode::BadJson,
        "`id` must be a string or an integer",
    ))
}

fn missing(field: &'static str) -> CommandError {
    CommandError::new(ErrorCode::MissingField, format!("missing field `{field}`"))
}

fn wrong_type(field: &'static str, expected: &'static str) -> CommandError {
    CommandError::new(
        ErrorCode::BadJson,
        format!("field `{field}` must be {expected}"),
    )
}

fn req_str<'a>(obj: &Object<'_, 'a>, field: &'static str) -> Result<&'a str, CommandError> {
    let v = obj.get(field).ok_or_else(|| missing(field))?;
    v.into_string().ok_or_else(|| wrong_type(field, "a string"))
}

/// The optional idempotency `key` of a `publish`: a string of
/// 1..=[`MAX_KEY_LEN`] bytes.
fn opt_key<'a>(obj: &Object<'_, 'a>) -> Result<Option<&'a str>, CommandError> {
    match obj.get("key") {
        None => Ok(None),
        Some(v) if v.is_null() => Ok(None),
        Some(v) => match v.into_string() {
            Some(k) if valid_key(k) => Ok(Some(k)),
            _ => Err(wrong_type("key", "a string of 1-64 bytes")),
        },
    }
}

/// Whether `k` may be an idempotency key (1..=[`MAX_KEY_LEN`] bytes).
pub fn valid_key(k: &str) -> bool {
    (1..=MAX_KEY_LEN).contains(&k.len())
}

fn opt_u64(obj: &Object<'_, '_>, field: &'static str) -> Result<Option<u64>, CommandError> {
    match obj.get(field) {
        None => Ok(None),
        Some(v) if v.is_null() => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| wrong_type(field, "a non-negative integer")),
    }
}

fn req_data<'t, 'a>(obj: &Object<'t, 'a>) -> Result<Data<'t, 'a>, CommandError> {
    obj.get("data").map(Data).ok_or_else(|| missing("data"))
}

fn read_command<'t, 'a>(obj: &Object<'t, 'a>) -> Result<Command<'t, 'a>, CommandError> {
    let ty = obj.get("type").ok_or_else(|| missing("type"))?;
    let ty = ty
        .into_string()
        .ok_or_else(|| wrong_type("type", "a string"))?;
    Ok(match ty {
        "publish" => Command::Publish {
            room: req_str(obj, "room")?,
            data: req_data(obj)?,
            key: opt_key(obj)?,
        },
        "ping" => Command::Ping,
        "join" => {
            let room = req_str(obj, "room")?;
            let since = match obj.get("since") {
                None => None,
                Some(v) if v.is_null() => None,
                Some(v) => {
                    let s = v
                        .as_object()
                        .ok_or_else(|| wrong_type("since", "an object {epoch, seq}"))?;
                    Some(Since {
                        epoch: req_str(&s, "epoch")?.to_string(),
                        seq: opt_u64(&s, "seq")?.ok_or_else(|| missing("seq"))?,
                    })
                }
            };
            Command::Join { room, since }
        }
        "leave" => Command::Leave {
            room: req_str(obj, "room")?,
        },
        "auth" => Command::Auth {
            token: req_str(obj, "token")?,
        },
        "typing" => Command::Typing {
            room: req_str(obj, "room")?,
            typing: obj
                .get("typing")
                .ok_or_else(|| missing("typing"))?
                .as_bool()
                .ok_or_else(|| wrong_type("typing", "a boolean"))?,
        },
        "presence" => Command::Presence {
            status: match req_str(obj, "status")? {
                "online" => Status::Online,
                "away" => Status::Away,
                "busy" => Status::Busy,
                _ => return Err(wrong_type("status", "online, away or busy")),
            },
        },
        "direct" => Command::Direct {
            to: req_str(obj, "to")?,
            data: req_data(obj)?,
        },
        "history" => Command::History {
            room: req_str(obj, "room")?,
            before: opt_u64(obj, "before")?,
            limit: opt_u64(obj, "limit")?
                .unwrap_or(HISTORY_LIMIT.0)
                .clamp(1, HISTORY_LIMIT.1),
        },
        "members" => Command::Members {
            room: req_str(obj, "room")?,
        },
        other => {
            let mut cut = other.len().min(64);
            while !other.is_char_boundary(cut) {
                cut -= 1;
            }
            let mut shown = String::new();
            push_json_str(&mut shown, &other[..cut]);
            return Err(CommandError::new(
                ErrorCode::UnknownType,
                format!("unknown command type {shown}"),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(frame: &str) -> (Option<String>, Result<String, (ErrorCode, String)>) {
        CommandParser::new().parse(frame.as_bytes(), |id, cmd| {
            (
                id.map(|i| i.as_json().to_string()),
                cmd.map(|c| format!("{c:?}"))
                    .map_err(|e| (e.code, e.message.into_owned())),
            )
        })
    }

    #[test]
    fn publish_keeps_data_order_and_id() {
        let (id, cmd) = parse(
            r#"{"type":"publish","id":"p1","room":"lobby","data":{"z":1,"a":[true,null,"x\n"]}}"#,
        );
        assert_eq!(id.as_deref(), Some("\"p1\""));
        assert_eq!(
            cmd.unwrap(),
            r#"Publish { room: "lobby", data: {"z":1,"a":[true,null,"x\n"]}, key: None }"#
        );
    }

    #[test]
    fn publish_keys_are_short_strings() {
        let (_, cmd) = parse(r#"{"type":"publish","room":"r","data":1,"key":"k\u00e9"}"#);
        assert_eq!(
            cmd.unwrap(),
            r#"Publish { room: "r", data: 1, key: Some("ké") }"#
        );
        let (_, cmd) = parse(r#"{"type":"publish","room":"r","data":1,"key":null}"#);
        assert!(cmd.unwrap().ends_with("key: None }"));
        let long = "x".repeat(MAX_KEY_LEN + 1);
        for bad in [
            r#""""#.to_string(),
            format!("\"{long}\""),
            "5".into(),
            "[]".into(),
        ] {
            let (_, cmd) = parse(&format!(
                r#"{{"type":"publish","room":"r","data":1,"key":{bad}}}"#
            ));
            let (code, msg) = cmd.unwrap_err();
            assert_eq!(code, ErrorCode::BadJson, "{bad}");
            assert!(msg.contains("key"), "{msg}");
        }
    }

    #[test]
    fn integer_ids_and_escaped_strings() {
        let (id, cmd) =
            parse(r#"{"id":-5,"type":"join","room":"lo\u0062by","since":{"epoch":"e","seq":3}}"#);
        assert_eq!(id.as_deref(), Some("-5"));
        assert_eq!(
            cmd.unwrap(),
            r#"Join { room: "lobby", since: Some(Since { epoch: "e", seq: 3 }) }"#
        );
    }

    #[test]
    fn errors_carry_codes() {
        assert_eq!(parse("{nope").1.unwrap_err().0, ErrorCode::BadJson);
        assert_eq!(parse("[1]").1.unwrap_err().0, ErrorCode::BadJson);
        assert_eq!(
            parse(r#"{"room":"x"}"#).1.unwrap_err().0,
            ErrorCode::MissingField
        );
        let (id, r) = parse(r#"{"id":1,"type":"fly"}"#);
        assert_eq!(id.as_deref(), Some("1"));
        assert_eq!(r.unwrap_err().0, ErrorCode::UnknownType);
        let (id, r) = parse(r#"{"id":2,"type":"join","room":5}"#);
        assert_eq!(id.as_deref(), Some("2"));
        assert_eq!(
            r.unwrap_err(),
            (ErrorCode::BadJson, "field `room` must be a string".into())
        );
        assert_eq!(
            parse(r#"{"type":"publish","room":"x"}"#).1.unwrap_err(),
            (ErrorCode::MissingField, "missing field `data`".into())
        );
        assert_eq!(
            parse(r#"{"id":1.5,"type":"ping"}"#).1.unwrap_err().0,
            ErrorCode::BadJson
        );
    }

    #[test]
    fn deep_nesting_is_rejected_not_recursed() {
        let deep = format!(
            "{{\"type\":\"publish\",\"room\":\"r\",\"data\":{}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(parse(&deep).1.unwrap_err().0, ErrorCode::BadJson);
        let ok = format!(
            "{{\"type\":\"publish\",\"room\":\"r\",\"data\":{}{}}}",
            "[".repeat(60),
            "]".repeat(60)
        );
        assert!(parse(&ok).1.is_ok());
    }

    #[test]
    fn parser_is_reusable_across_sizes() {
        let mut p = CommandParser::new();
        for n in [10usize, 100_000, 3] {
            let frame = format!(
                "{{\"type\":\"publish\",\"room\":\"r\",\"data\":\"{}\"}}",
                "x".repeat(n)
            );
            let len = p.parse(frame.as_bytes(), |_, c| match c.unwrap() {
                Command::Publish { data, .. } => data.to_json().len(),
                _ => 0,
            });
            assert_eq!(len, n + 2);
        }
    }
}
