//! Encoding of server events (PROTOCOL section 4) as compact JSON text.
//!
//! Hand-written rather than serde: events are flat, their keys are static,
//! and a broadcast is encoded once per publish at the room's home core, so a
//! builder that appends to one `String` is both the simplest and the fastest
//! form. This module must not decide *when* an event is sent; it only spells
//! events.

use super::ErrorCode;
use super::command::Id;

/// Appends `s` to `out` as a JSON string literal (quotes included).
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Builder for one event object: `Event::new("ack").id(id).str("room", r).finish()`.
/// Keys must be plain ASCII identifiers (they are not escaped).
#[derive(Debug)]
pub struct Event {
    buf: String,
}

impl Event {
    /// Starts `{"type":"<ty>"`.
    pub fn new(ty: &str) -> Self {
        Self::with_capacity(ty, 96)
    }

    /// Like [`Event::new`] with room for `cap` bytes.
    pub fn with_capacity(ty: &str, cap: usize) -> Self {
        let mut buf = String::with_capacity(cap);
        buf.push_str("{\"type\":\"");
        buf.push_str(ty);
        buf.push('"');
        Event { buf }
    }

    /// Starts a plain object without a `type` (HTTP API bodies).
    pub fn object() -> Self {
        let mut buf = String::with_capacity(96);
        buf.push('{');
        Event { buf }
    }

    fn key(&mut self, key: &str) {
        if self.buf.len() > 1 {
            self.buf.push(',');
        }
        self.buf.push('"');
        self.buf.push_str(key);
        self.buf.push_str("\":");
    }

    /// Adds `"id":<id>` when the command had one.
    pub fn id(mut self, id: Option<&Id>) -> Self {
        if let Some(id) = id {
            self.key("id");
            self.buf.push_str(id.as_json());
        }
        self
    }

    /// Adds a string field.
    pub fn str(mut self, key: &str, value: &str) -> Self {
        self.key(key);
        push_json_str(&mut self.buf, value);
        self
    }

    /// Adds a string field when there is a value.
    pub fn maybe_str(self, key: &str, value: Option<&str>) -> Self {
        match value {
            Some(v) => self.str(key, v),
            None => self,
        }
    }

    /// Adds a string field, or `null`.
    pub fn opt_str(mut self, key: &str, value: Option<&str>) -> Self {
        match value {
            Some(v) => self.str(key, v),
            None => {
                self.key(key);
                self.buf.push_str("null");
                self
            }
        }
    }

    /// Adds an unsigned number field.
    pub fn num(mut self, key: &str, value: u64) -> Self {
        self.key(key);
        self.buf.push_str(itoa::Buffer::new().format(value));
        self
    }

    /// Adds a boolean field.
    pub fn bool(mut self, key: &str, value: bool) -> Self {
        self.key(key);
        self.buf.push_str(if value { "true" } else { "false" });
        self
    }

    /// Adds a field whose value is already-encoded JSON.
    pub fn raw(mut self, key: &str, json: &str) -> Self {
        self.key(key);
        self.buf.push_str(json);
        self
    }

    /// Closes the object and returns the text.
    pub fn finish(mut self) -> String {
        self.buf.push('}');
        self.buf
    }
}

/// `{"type":"error","id":..,"code":..,"message":..}`
pub fn error(id: Option<&Id>, code: ErrorCode, message: &str) -> String {
    Event::new("error")
        .id(id)
        .str("code", code.as_str())
        .str("message", message)
        .finish()
}

/// The `"from":{"user":..,"name":..}` object of messages and events.
pub fn push_from(out: &mut String, user: &str, name: Option<&str>) {
    out.push_str("{\"user\":");
    push_json_str(out, user);
    if let Some(name) = name {
        out.push_str(",\"name\":");
        push_json_str(out, name);
    }
    out.push('}');
}

/// `joined` / `left` for `room` and `user`.
pub fn membership(ty: &str, room: &str, user: &str, name: Option<&str>) -> String {
    Event::new(ty)
        .str("room", room)
        .str("user", user)
        .opt_str("name", name)
        .finish()
}

/// Assembles a `message` event from the parts its two cores know: the home
/// core's `room`/`seq`/`epoch`/`ts` and the sender core's pre-encoded `tail`
/// (`"from":{..},"data":<json>}`, see [`message_tail`]).
pub fn message(room: &str, seq: u64, epoch: &str, ts: u64, tail: &str) -> String {
    let mut e = Event::with_capacity("message", 80 + room.len() + epoch.len() + tail.len())
        .str("room", room)
        .num("seq", seq)
        .str("epoch", epoch)
        .num("ts", ts);
    e.buf.push_str(",\"from\":");
    e.buf.push_str(tail);
    e.buf
}

/// The sender's part of a `message` event: `{"user":..,"name":..},"data":<data>}`
/// (it follows `"from":`). `data` is already-encoded JSON.
pub fn message_tail(user: &str, name: Option<&str>, data: &str) -> String {
    let mut out = String::with_capacity(32 + user.len() + data.len());
    push_from(&mut out, user, name);
    out.push_str(",\"data\":");
    out.push_str(data);
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> serde_json::Value {
        serde_json::from_str(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn escapes_strings() {
        let mut s = String::new();
        push_json_str(&mut s, "a\"b\\c\nd\u{1}é\u{7f}");
        assert_eq!(s, "\"a\\\"b\\\\c\\nd\\u0001é\u{7f}\"");
        assert_eq!(parse(&s), "a\"b\\c\nd\u{1}é\u{7f}");
    }

    #[test]
    fn builds_events() {
        let id = Id::int(7);
        let e = Event::new("ack")
            .id(Some(&id))
            .str("room", "r")
            .num("seq", 3)
            .bool("recovered", false)
            .finish();
        assert_eq!(
            parse(&e),
            serde_json::json!({"type":"ack","id":7,"room":"r","seq":3,"recovered":false})
        );
        let e = error(None, ErrorCode::NotMember, "join first");
        assert_eq!(
            parse(&e),
            serde_json::json!({"type":"error","code":"not_member","message":"join first"})
        );
    }

    #[test]
    fn message_from_parts() {
        let tail = message_tail("u\"1", Some("Ann"), "{\"x\":[1,2]}");
        let m = message("lobby", 5, "e1", 1700, &tail);
        assert_eq!(
            parse(&m),
            serde_json::json!({"type":"message","room":"lobby","seq":5,"epoch":"e1","ts":1700,
                "from":{"user":"u\"1","name":"Ann"},"data":{"x":[1,2]}})
        );
    }
}
