//! The formats of what passes through Redis: reading replies
//! (`redis::Value`), the payloads on the channels (see [`super::scripts`]
//! for the kinds), stream entries, and turning replies into answers
//! (`history`, `members`, the cluster's stats).
//!
//! Everything here is a pure function of its input, tested without Redis.
//! It must not do I/O or hold state.

use crate::engine::{Answer, Event, ReplyTo, replies};
use crate::proto::command::Id;
use redis::Value;
use std::sync::Arc;

/// Reads a reply as an integer.
pub fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// Reads a reply as bytes.
pub fn as_bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// Reads a reply as UTF-8 text.
pub fn as_str(v: &Value) -> Option<&str> {
    std::str::from_utf8(as_bytes(v)?).ok()
}

/// Reads a reply as an array (`Nil` = empty).
pub fn as_array(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) => Some(a),
        Value::Nil => Some(&[]),
        _ => None,
    }
}

/// A broadcast on the broadcast channel: `b<len>,<origin><token>,<json>`.
pub fn bcast_payload(origin: &str, token: u64, json: &[u8]) -> Vec<u8> {
    let mut p = format!("b{},{origin}{token},", origin.len()).into_bytes();
    p.extend_from_slice(json);
    p
}

/// `<len>,<origin><token>,<json>` of a broadcast.
pub fn parse_bcast(p: &[u8]) -> Option<(&str, u64, &[u8])> {
    let c = memchr::memchr(b',', p)?;
    let len: usize = std::str::from_utf8(&p[..c]).ok()?.parse().ok()?;
    let rest = &p[c + 1..];
    let origin = std::str::from_utf8(rest.get(..len)?).ok()?;
    let rest = &rest[len..];
    let c2 = memchr::memchr(b',', rest)?;
    let token = std::str::from_utf8(&rest[..c2]).ok()?.parse().ok()?;
    Some((origin, token, &rest[c2 + 1..]))
}

/// `{"nodes":N,"connections":..,"users":..,"per_node":[..]}` from the
/// live nodes' stats.
pub fn cluster_json(v: &Value) -> String {
    let a = as_array(v).unwrap_or(&[]);
    let mut per_node = String::from("[");
    let (mut nodes, mut conns) = (0u64, 0u64);
    let mut i = 0;
    while i + 1 < a.len() {
        let node = as_str(&a[i]).unwrap_or("");
        let stats = as_str(&a[i + 1]).unwrap_or("{}");
        let parsed: serde_json::Value = serde_json::from_str(stats).unwrap_or_default();
        conns += parsed["connections"].as_u64().unwrap_or(0);
        if nodes > 0 {
            per_node.push(',');
        }
        nodes += 1;
        let mut obj = String::from("{\"node\":");
        crate::proto::event::push_json_str(&mut obj, node);
        let inner = stats.trim();
        if inner.len() > 2 && inner.starts_with('{') {
            obj.push(',');
            obj.push_str(&inner[1..]);
        } else {
            obj.push('}');
        }
        per_node.push_str(&obj);
        i += 2;
    }
    per_node.push(']');
    format!("{{\"nodes\":{nodes},\"connections\":{conns},\"per_node\":{per_node}}}")
}

/// The seq and epoch of a `message` event of `room` as the publish script
/// wrote it: `{"type":"message","room":"<room>","seq":N,"epoch":"E",...`.
pub fn parse_message<'a>(room: &str, json: &'a [u8]) -> Option<(u64, &'a str)> {
    const HEAD: &[u8] = b"{\"type\":\"message\",\"room\":\"";
    let rest = json.strip_prefix(HEAD)?;
    let rest = rest.strip_prefix(room.as_bytes())?;
    let rest = rest.strip_prefix(b"\",\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let seq = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = rest[digits..].strip_prefix(b",\"epoch\":\"")?;
    let end = memchr::memchr(b'"', rest)?;
    Some((seq, std::str::from_utf8(&rest[..end]).ok()?))
}

/// A room event for everyone but `user` (typing): `x<len>,<user><json>`.
pub fn except_payload(user: &str, json: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(json.len() + user.len() + 8);
    p.push(b'x');
    p.extend_from_slice(itoa::Buffer::new().format(user.len()).as_bytes());
    p.push(b',');
    p.extend_from_slice(user.as_bytes());
    p.extend_from_slice(json);
    p
}

/// `<len>,<user><json>` of a room event for everyone but one user.
pub fn parse_except(p: &[u8]) -> Option<(&str, &[u8])> {
    let c = memchr::memchr(b',', p)?;
    let len: usize = std::str::from_utf8(&p[..c]).ok()?.parse().ok()?;
    let rest = &p[c + 1..];
    let user = std::str::from_utf8(rest.get(..len)?).ok()?;
    Some((user, &rest[len..]))
}

/// `[id, [d, json, t, ts]]` of a stream entry → (seq, json).
pub fn stream_entry(v: &Value) -> Option<(u64, &[u8])> {
    let a = as_array(v)?;
    let id = as_str(a.first()?)?;
    let seq = id.split('-').next()?.parse().ok()?;
    let fields = as_array(a.get(1)?)?;
    let mut i = 0;
    while i + 1 < fields.len() {
        if as_bytes(&fields[i]) == Some(b"d") {
            return Some((seq, as_bytes(&fields[i + 1])?));
        }
        i += 2;
    }
    None
}

/// The ts of a stream entry (from its event JSON).
pub fn stream_ts(v: &Value) -> Option<u64> {
    let (_, json) = stream_entry(v)?;
    const KEY: &[u8] = b",\"ts\":";
    let i = memchr::memmem::find(json, KEY)? + KEY.len();
    let digits = json[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&json[i..i + digits]).ok()?.parse().ok()
}

/// A `history` reply from `XREVRANGE` entries (newest first), keeping
/// those younger than `cutoff_ms`.
pub fn history_reply(room: &str, reply: &ReplyTo, v: &Value, cutoff_ms: u64) -> String {
    let mut out = String::with_capacity(256);
    replies::history_head(&mut out, reply.id.as_ref(), room);
    let entries = as_array(v).map(|a| a.to_vec()).unwrap_or_default();
    let mut first = true;
    for e in entries.iter().rev() {
        if stream_ts(e).is_some_and(|ts| ts < cutoff_ms) {
            continue;
        }
        let Some((_, json)) = stream_entry(e) else {
            continue;
        };
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(std::str::from_utf8(json).unwrap_or("null"));
    }
    out.push_str("]}");
    out
}

/// The room description from `ROOM_INFO` (`{epoch, seq, history length,
/// user, name, status, ...}`): the `members` reply or the `/api/rooms` body.
pub fn members_answer(room: &str, id: Option<Id>, answer: Answer, info: &Value) -> (usize, Event) {
    let a = as_array(info).unwrap_or(&[]);
    let epoch = a.first().and_then(as_str).unwrap_or("");
    let seq = a.get(1).and_then(as_int).unwrap_or(0) as u64;
    let len = a.get(2).and_then(as_int).unwrap_or(0) as u64;
    let mut users: Vec<(&str, &str, &str)> = a
        .get(3..)
        .unwrap_or(&[])
        .chunks_exact(3)
        .map(|t| {
            (
                as_str(&t[0]).unwrap_or(""),
                as_str(&t[1]).unwrap_or(""),
                as_str(&t[2]).unwrap_or("online"),
            )
        })
        .collect();
    users.sort_by(|x, y| x.0.cmp(y.0));
    let mut list = String::from("[");
    for (k, (u, n, st)) in users.iter().enumerate() {
        let name = (!n.is_empty()).then_some(*n);
        replies::push_member(&mut list, k == 0, u, name, st);
    }
    list.push(']');
    let described = (!epoch.is_empty()).then(|| (Arc::<str>::from(epoch), seq, len));
    replies::members(room, id, answer, &list, described)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn broadcast_payload_parses() {
        let p = bcast_payload("127.0.0.1:8", 42, b"{\"a\":1}");
        let (origin, token, json) = parse_bcast(&p[1..]).expect("parses");
        assert_eq!(
            (origin, token, json),
            ("127.0.0.1:8", 42, &b"{\"a\":1}"[..])
        );
        assert!(parse_bcast(b"99,short").is_none());
    }

    #[test]
    fn cluster_stats_merge_nodes() {
        let v = Value::Array(vec![
            Value::BulkString(b"a".to_vec()),
            Value::BulkString(b"{\"connections\":2,\"users\":1}".to_vec()),
            Value::BulkString(b"b".to_vec()),
            Value::BulkString(b"{\"connections\":3}".to_vec()),
        ]);
        let j: serde_json::Value = serde_json::from_str(&cluster_json(&v)).unwrap();
        assert_eq!(j["nodes"], 2);
        assert_eq!(j["connections"], 5);
        assert_eq!(j["per_node"][0]["node"], "a");
        assert_eq!(j["per_node"][0]["users"], 1);
    }
    #[test]
    fn payloads_parse() {
        let m = br#"{"type":"message","room":"a:b","seq":12,"epoch":"ab12","ts":1,"from":{"user":"u"},"data":1}"#;
        assert_eq!(parse_message("a:b", m), Some((12, "ab12")));
        assert_eq!(parse_message("a", m), None, "another room's prefix");
        assert!(parse_message("a:b", b"{\"type\":\"joined\"}").is_none());
        let (user, json) = parse_except(b"3,a,b{\"t\":1}").unwrap();
        assert_eq!((user, json), ("a,b", &b"{\"t\":1}"[..]));
        assert!(parse_except(b"9,ab").is_none());
    }

    #[test]
    fn stream_entries_give_seq_json_and_ts() {
        let e = Value::Array(vec![
            Value::BulkString(b"7-0".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"d".to_vec()),
                Value::BulkString(b"{\"seq\":7,\"ts\":1700,\"data\":{\"ts\":2}}".to_vec()),
            ]),
        ]);
        let (seq, json) = stream_entry(&e).unwrap();
        assert_eq!((seq, json.len()), (7, 35));
        assert_eq!(stream_ts(&e), Some(1700), "the event's ts, not the data's");
    }
}
