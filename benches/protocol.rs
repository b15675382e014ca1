//! Micro-benchmarks of the protocol layer: command parsing and event encoding.
//!
//! ```sh
//! cargo bench --bench protocol                    # everything
//! cargo bench --bench protocol -- command_parse   # one group
//! ```
//!
//! Groups:
//! - `command_parse/<variant>/<input>`: corecast's [`CommandParser`] (simd-json
//!   tape in a reused padded scratch) against the serde_json way, on a ping, a
//!   join and publishes with ~100 B, ~1 KiB and ~16 KiB of structured `data`
//!   (plus ~16 KiB of `data` that is one long string). For publishes both
//!   variants also produce the `data` JSON bytes the message event needs.
//!   Throughput is the frame size.
//!   - `corecast`: `CommandParser::parse`, `Data::write_json` re-encodes
//!     `data` from the tape.
//!   - `corecast_no_reencode` (publishes only): the same parse without
//!     `write_json`, to split the tape from the re-encoding.
//!   - `serde_value`: `serde_json::from_slice` into a borrowing
//!     `#[derive(Deserialize)]` struct with `id` and `data` as
//!     `serde_json::Value`; `data` is re-encoded with `serde_json::to_writer`.
//!   - `serde_raw` (only with `serde_json/raw_value`, see below): the same
//!     struct with `id` and `data` as `&RawValue`; `data` is borrowed and
//!     copied out.
//! - `event_encode/<variant>/<event>`: corecast's hand-written encoder
//!   (`event::message`, `event::message_tail`, `event::error`, `Event`
//!   builder) against `serde_json::to_string` of `#[derive(Serialize)]`
//!   structs. Throughput is the encoded size.
//!
//! serde_json's `raw_value` feature is enabled for the benches only (a
//! dev-dependency feature; the server's own graph does not use it).

use corecast::proto::ErrorCode;
use corecast::proto::command::{Command, CommandParser, Id};
use corecast::proto::event::{self, Event};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use std::hint::black_box;
use std::time::Duration;

// ---------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------

/// A chat-like `data` object of roughly `target` bytes: a text, a few scalar
/// fields, mentions, and as many small item objects as fit (strings, an
/// integer, a float, a boolean, a short array each).
fn structured_data(target: usize) -> String {
    let mut s = String::from(
        r#"{"text":"Hello team, the build is green again","kind":"chat","reply_to":48213,"mentions":["u:ann","u:bob"]"#,
    );
    if s.len() + 2 < target {
        s.push_str(r#","items":["#);
        let mut i = 0u32;
        loop {
            let item = format!(
                r#"{{"id":{},"name":"item number {}","price":{}.25,"in_stock":{},"tags":["blue","xl"]}}"#,
                1000 + i,
                i,
                10 + i % 90,
                !i.is_multiple_of(3)
            );
            if i > 0 && s.len() + item.len() + 3 > target {
                break;
            }
            if i > 0 {
                s.push(',');
            }
            s.push_str(&item);
            i += 1;
        }
        s.push(']');
    }
    s.push('}');
    s
}

/// A `data` object holding one long plain string of about `target` bytes.
fn text_data(target: usize) -> String {
    const WORDS: &str =
        "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor ";
    let body: String = WORDS.chars().cycle().take(target - 12).collect();
    format!(r#"{{"text":"{body}"}}"#)
}

fn publish(id: u32, room: &str, data: &str) -> String {
    format!(r#"{{"type":"publish","id":{id},"room":"{room}","data":{data}}}"#)
}

/// The parse inputs: (name, frame).
fn parse_inputs() -> Vec<(&'static str, String)> {
    vec![
        ("ping", r#"{"type":"ping","id":"p-0001"}"#.to_string()),
        (
            "join",
            r#"{"type":"join","id":17,"room":"team:engineering"}"#.to_string(),
        ),
        (
            "publish_100B",
            publish(18, "team:engineering", &structured_data(100)),
        ),
        (
            "publish_1KiB",
            publish(19, "team:engineering", &structured_data(1024)),
        ),
        (
            "publish_16KiB",
            publish(20, "team:engineering", &structured_data(16 * 1024)),
        ),
        (
            "publish_16KiB_text",
            publish(21, "team:engineering", &text_data(16 * 1024)),
        ),
    ]
}

// ---------------------------------------------------------------------------
// Command parsing
// ---------------------------------------------------------------------------

/// Work done with a parsed command, the same for every variant: look at the
/// command, and for a publish produce the `data` JSON bytes into `out`.
/// Returns something that depends on all of it, for `black_box`.
fn corecast_parse(parser: &mut CommandParser, frame: &[u8], out: &mut Vec<u8>) -> usize {
    parser.parse(frame, |id, cmd| {
        usize::from(id.is_some())
            + match cmd {
                Ok(Command::Publish { room, data, .. }) => {
                    out.clear();
                    data.write_json(out);
                    room.len() + out.len()
                }
                Ok(Command::Join { room, since }) => {
                    room.len() + since.map_or(0, |s| s.seq as usize)
                }
                Ok(c) => c.name().len(),
                Err(e) => e.message.len(),
            }
    })
}

/// [`corecast_parse`] without re-encoding `data`: the tape alone (the
/// difference to `corecast` is the cost of `Data::write_json`).
fn corecast_parse_no_reencode(parser: &mut CommandParser, frame: &[u8]) -> usize {
    parser.parse(frame, |id, cmd| {
        usize::from(id.is_some())
            + match cmd {
                Ok(Command::Publish { room, data, .. }) => {
                    black_box(data);
                    room.len()
                }
                Ok(c) => c.name().len(),
                Err(e) => e.message.len(),
            }
    })
}

/// `since` of a join, as a serde team would declare it.
#[derive(Deserialize)]
#[allow(dead_code)]
struct SinceDe<'a> {
    epoch: &'a str,
    seq: u64,
}

/// Every command's fields in one flat struct, `id`/`data` as `Value`.
#[derive(Deserialize)]
#[allow(dead_code)]
struct CmdValue<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    id: Option<serde_json::Value>,
    room: Option<&'a str>,
    data: Option<serde_json::Value>,
    #[serde(borrow)]
    since: Option<SinceDe<'a>>,
    token: Option<&'a str>,
    typing: Option<bool>,
    status: Option<&'a str>,
    to: Option<&'a str>,
    before: Option<u64>,
    limit: Option<u64>,
}

fn serde_value_parse(frame: &[u8], out: &mut Vec<u8>) -> usize {
    let cmd: CmdValue<'_> = match serde_json::from_slice(frame) {
        Ok(c) => c,
        Err(e) => return e.column(),
    };
    usize::from(cmd.id.is_some())
        + match cmd.ty {
            "publish" => match (cmd.room, &cmd.data) {
                (Some(room), Some(data)) => {
                    out.clear();
                    serde_json::to_writer(&mut *out, data).expect("writing into a Vec");
                    room.len() + out.len()
                }
                _ => 0,
            },
            "join" => cmd.room.map_or(0, str::len) + cmd.since.map_or(0, |s| s.seq as usize),
            other => other.len(),
        }
}

mod raw {
    use serde::Deserialize;
    use serde_json::value::RawValue;

    /// Every command's fields in one flat struct, `id`/`data` as `&RawValue`.
    #[derive(Deserialize)]
    #[allow(dead_code)]
    pub struct CmdRaw<'a> {
        #[serde(rename = "type")]
        pub ty: &'a str,
        #[serde(borrow)]
        pub id: Option<&'a RawValue>,
        pub room: Option<&'a str>,
        #[serde(borrow)]
        pub data: Option<&'a RawValue>,
        #[serde(borrow)]
        pub since: Option<super::SinceDe<'a>>,
        pub token: Option<&'a str>,
        pub typing: Option<bool>,
        pub status: Option<&'a str>,
        pub to: Option<&'a str>,
        pub before: Option<u64>,
        pub limit: Option<u64>,
    }

    pub fn serde_raw_parse(frame: &[u8], out: &mut Vec<u8>) -> usize {
        let cmd: CmdRaw<'_> = match serde_json::from_slice(frame) {
            Ok(c) => c,
            Err(e) => return e.column(),
        };
        usize::from(cmd.id.is_some())
            + match cmd.ty {
                "publish" => match (cmd.room, cmd.data) {
                    (Some(room), Some(data)) => {
                        out.clear();
                        out.extend_from_slice(data.get().as_bytes());
                        room.len() + out.len()
                    }
                    _ => 0,
                },
                "join" => cmd.room.map_or(0, str::len) + cmd.since.map_or(0, |s| s.seq as usize),
                other => other.len(),
            }
    }
}

/// Checks that the variants agree before timing them.
fn check_parse_variants(inputs: &[(&'static str, String)]) {
    let mut parser = CommandParser::new();
    for (name, frame) in inputs {
        let mut a = Vec::new();
        let mut b = Vec::new();
        let ra = corecast_parse(&mut parser, frame.as_bytes(), &mut a);
        let rb = serde_value_parse(frame.as_bytes(), &mut b);
        assert_eq!(ra, rb, "{name}: variants disagree");
        if name.starts_with("publish") {
            let va: serde_json::Value = serde_json::from_slice(&a).expect("corecast data");
            let vb: serde_json::Value = serde_json::from_slice(&b).expect("serde data");
            assert_eq!(va, vb, "{name}: data differs");
        }
        {
            let mut c = Vec::new();
            let rc = raw::serde_raw_parse(frame.as_bytes(), &mut c);
            assert_eq!(ra, rc, "{name}: raw variant disagrees");
            if name.starts_with("publish") {
                assert_eq!(a, c, "{name}: compact data should be byte-identical");
            }
        }
    }
}

fn bench_command_parse(c: &mut Criterion) {
    let inputs = parse_inputs();
    check_parse_variants(&inputs);

    let mut g = c.benchmark_group("command_parse");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    let mut parser = CommandParser::new();
    let mut out = Vec::with_capacity(32 * 1024);
    for (name, frame) in &inputs {
        let frame = frame.as_bytes();
        g.throughput(Throughput::Bytes(frame.len() as u64));
        g.bench_with_input(BenchmarkId::new("corecast", name), frame, |b, f| {
            b.iter(|| corecast_parse(&mut parser, black_box(f), &mut out))
        });
        if name.starts_with("publish") {
            g.bench_with_input(
                BenchmarkId::new("corecast_no_reencode", name),
                frame,
                |b, f| b.iter(|| corecast_parse_no_reencode(&mut parser, black_box(f))),
            );
        }
        g.bench_with_input(BenchmarkId::new("serde_value", name), frame, |b, f| {
            b.iter(|| serde_value_parse(black_box(f), &mut out))
        });
        g.bench_with_input(BenchmarkId::new("serde_raw", name), frame, |b, f| {
            b.iter(|| raw::serde_raw_parse(black_box(f), &mut out))
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------
// Event encoding
// ---------------------------------------------------------------------------

const ROOM: &str = "team:engineering";
const EPOCH: &str = "k3J9xq2LmP";
const USER: &str = "u:7f3a9c21";
const NAME: &str = "Ann Example";
const SEQ: u64 = 1_234_567;
const TS: u64 = 1_767_225_600_123;

#[derive(Serialize)]
struct FromSer<'a> {
    user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

/// The `message` event as a serde team would declare it, `data` as a parsed
/// `Value` (what they hold after parsing without `raw_value`).
#[derive(Serialize)]
struct MessageValue<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    room: &'a str,
    seq: u64,
    epoch: &'a str,
    ts: u64,
    from: FromSer<'a>,
    data: &'a serde_json::Value,
}

#[derive(Serialize)]
struct ErrorSer<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a serde_json::Value>,
    code: &'a str,
    message: &'a str,
}

#[derive(Serialize)]
struct AckSer<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a serde_json::Value>,
    room: &'a str,
    seq: u64,
    ts: u64,
}

#[derive(Serialize)]
struct MessageRaw<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    room: &'a str,
    seq: u64,
    epoch: &'a str,
    ts: u64,
    from: FromSer<'a>,
    data: &'a serde_json::value::RawValue,
}

fn ser(data: &serde_json::Value) -> MessageValue<'_> {
    MessageValue {
        ty: "message",
        room: ROOM,
        seq: SEQ,
        epoch: EPOCH,
        ts: TS,
        from: FromSer {
            user: USER,
            name: Some(NAME),
        },
        data,
    }
}

fn serde_error<'a>(id: &'a serde_json::Value, message: &'a str) -> ErrorSer<'a> {
    ErrorSer {
        ty: "error",
        id: Some(id),
        code: ErrorCode::NotMember.as_str(),
        message,
    }
}

fn serde_ack(id: &serde_json::Value) -> AckSer<'_> {
    AckSer {
        ty: "ack",
        id: Some(id),
        room: ROOM,
        seq: SEQ,
        ts: TS,
    }
}

fn bench_event_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("event_encode");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);

    for (name, data) in [
        ("message_100B", structured_data(100)),
        ("message_1KiB", structured_data(1024)),
    ] {
        let tail = event::message_tail(USER, Some(NAME), &data);
        let encoded = event::message(ROOM, SEQ, EPOCH, TS, &tail);
        let value: serde_json::Value = serde_json::from_str(&data).expect("valid data");
        {
            let a: serde_json::Value = serde_json::from_str(&encoded).expect("corecast event");
            let b: serde_json::Value =
                serde_json::from_str(&serde_json::to_string(&ser(&value)).expect("serialize"))
                    .expect("serde event");
            assert_eq!(a, b, "{name}: encoders disagree");
        }
        g.throughput(Throughput::Bytes(encoded.len() as u64));
        // The home core's part: the tail arrived pre-encoded from the sender core.
        g.bench_function(BenchmarkId::new("corecast", name), |b| {
            b.iter(|| {
                event::message(
                    black_box(ROOM),
                    black_box(SEQ),
                    black_box(EPOCH),
                    black_box(TS),
                    black_box(&tail),
                )
            })
        });
        // Both parts, as if one core did all of it.
        g.bench_function(BenchmarkId::new("corecast_tail+message", name), |b| {
            b.iter(|| {
                let tail = event::message_tail(black_box(USER), Some(NAME), black_box(&data));
                event::message(ROOM, SEQ, EPOCH, TS, &tail)
            })
        });
        g.bench_function(BenchmarkId::new("serde_value", name), |b| {
            b.iter(|| serde_json::to_string(&ser(black_box(&value))).expect("serialize"))
        });
        {
            let raw = serde_json::value::RawValue::from_string(data.clone()).expect("raw");
            let s = serde_json::to_string(&MessageRaw {
                ty: "message",
                room: ROOM,
                seq: SEQ,
                epoch: EPOCH,
                ts: TS,
                from: FromSer {
                    user: USER,
                    name: Some(NAME),
                },
                data: &raw,
            })
            .expect("serialize");
            assert_eq!(s, encoded, "{name}: raw serde should be byte-identical");
            g.bench_function(BenchmarkId::new("serde_raw", name), |b| {
                b.iter(|| {
                    serde_json::to_string(&MessageRaw {
                        ty: "message",
                        room: ROOM,
                        seq: SEQ,
                        epoch: EPOCH,
                        ts: TS,
                        from: FromSer {
                            user: USER,
                            name: Some(NAME),
                        },
                        data: black_box(&raw),
                    })
                    .expect("serialize")
                })
            });
        }
    }

    // error: {"type":"error","id":..,"code":..,"message":..}
    let id = Id::int(42);
    let id_value = serde_json::Value::from(42);
    let msg = "join the room first";
    let encoded = event::error(Some(&id), ErrorCode::NotMember, msg);
    assert_eq!(
        serde_json::to_string(&serde_error(&id_value, msg)).expect("serialize"),
        encoded
    );
    g.throughput(Throughput::Bytes(encoded.len() as u64));
    g.bench_function(BenchmarkId::new("corecast", "error"), |b| {
        b.iter(|| event::error(Some(black_box(&id)), ErrorCode::NotMember, black_box(msg)))
    });
    g.bench_function(BenchmarkId::new("serde_value", "error"), |b| {
        b.iter(|| {
            serde_json::to_string(&serde_error(black_box(&id_value), msg)).expect("serialize")
        })
    });

    // ack of a publish: {"type":"ack","id":..,"room":..,"seq":..,"ts":..}
    let encoded = Event::new("ack")
        .id(Some(&id))
        .str("room", ROOM)
        .num("seq", SEQ)
        .num("ts", TS)
        .finish();
    assert_eq!(
        serde_json::to_string(&serde_ack(&id_value)).expect("serialize"),
        encoded
    );
    g.throughput(Throughput::Bytes(encoded.len() as u64));
    g.bench_function(BenchmarkId::new("corecast", "ack"), |b| {
        b.iter(|| {
            Event::new("ack")
                .id(Some(black_box(&id)))
                .str("room", black_box(ROOM))
                .num("seq", black_box(SEQ))
                .num("ts", black_box(TS))
                .finish()
        })
    });
    g.bench_function(BenchmarkId::new("serde_value", "ack"), |b| {
        b.iter(|| serde_json::to_string(&serde_ack(black_box(&id_value))).expect("serialize"))
    });
    g.finish();
}

criterion_group!(benches, bench_command_parse, bench_event_encode);
criterion_main!(benches);
