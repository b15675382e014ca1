//! `session`: the per-connection state machine
//! (`corecast::proto::session::Session`) driven by a sequence of frames
//! and events, with the home core's answers to joins played by the driver.
//!
//! Input: the first byte picks the start (`n`: in-band auth awaited, `a`:
//! anonymous, `t`: authenticated by a token; anything else by its value
//! mod 3), and a second byte the limits; then `\n`-separated steps. A step
//! is a text frame, unless it starts with a control byte:
//! `\x01` binary frame, `\x02` auth timeout, `\x03` token-expiry timer,
//! `\x04` end of the expiry grace, `\x05N` N ms pass (monotonic clock),
//! `\x06N` N s pass (Unix clock), `\x07` the home core refuses the pending
//! join (otherwise it is accepted before the next step).
//!
//! Checks (besides no panic): every frame is a JSON object with a string
//! `type`; each `Output::Error(c)` follows an `error` frame with code `c`;
//! `publish` and `direct` events are complete JSON events; at most one
//! `Close`, nothing at all after it, and `is_closing` says so; joins are
//! asked one at a time and only for rooms the token allows; leaves name
//! the slot the join got; the session's rooms are the ones the driver
//! acknowledged, unique, at most `max_rooms`; room-scoped outputs name a
//! joined room; an unauthenticated session that is not closing only got
//! rate-limited or authenticated.

#![no_main]

#[path = "common.rs"]
mod common;

use corecast::auth::{Authenticator, TokenSpec, sign_token, unix_now};
use corecast::config::Config;
use corecast::proto::command::CommandParser;
use corecast::proto::event;
use corecast::proto::session::{Ctx, Output, Session, SessionConfig, SessionId};
use corecast::proto::{ErrorCode, valid_room};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

/// The secret of the seed corpus's tokens (`fuzz/seeds/session/`).
pub const SECRET: &str = "corecast-fuzz-secret";

struct World {
    auths: [Authenticator; 2],
    cfgs: [SessionConfig; 2],
}

/// A token for the `t` start, valid for two minutes from now (signed per
/// input: a token made once would expire during a long run).
fn driver_token() -> String {
    sign_token(
        SECRET,
        &TokenSpec {
            sub: "u1".into(),
            name: Some("Ann".into()),
            rooms: Some(vec!["lobby".into(), "team:*".into()]),
            publish: Some(vec!["announce".into()]),
            ttl: Some(120),
            exp: None,
        },
    )
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let mut small = Config::default();
    small.limits.max_rooms = 3;
    small.limits.max_message = 64;
    small.limits.rate_burst = 5.0;
    small.limits.rate_per_sec = 2.0;
    small.limits.rate_kick_after = 2;
    small.auth.expiry_grace = 5;
    World {
        auths: [
            Authenticator::new(Some(SECRET), false, &["*".to_string()]),
            Authenticator::new(
                Some(SECRET),
                true,
                &["lobby".to_string(), "team:*".to_string()],
            ),
        ],
        cfgs: [
            SessionConfig::from_config(&Config::default()),
            SessionConfig::from_config(&small),
        ],
    }
});

/// The driver's view: what it acknowledged.
struct Model {
    rooms: BTreeMap<Arc<str>, u32>,
    next_slot: u32,
    closed: bool,
}

fn number(rest: &[u8]) -> u64 {
    std::str::from_utf8(rest)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1)
        .min(u32::MAX as u64)
}

fuzz_target!(|input: &[u8]| {
    let w = &*WORLD;
    let (start, limits, body) = match input {
        [s, l, b'\n', rest @ ..] => (*s, *l, rest),
        [s, l, rest @ ..] => (*s, *l, rest),
        [s] => (*s, 0, &[][..]),
        [] => return,
    };
    let auth = &w.auths[(limits & 1) as usize];
    let cfg = &w.cfgs[((limits >> 1) & 1) as usize];
    let mut now_ms = 0u64;
    let mut unix_s = unix_now();
    let identity = match start {
        b'n' => None,
        b'a' => Some(auth.anonymous("s_1")),
        b't' => Some(auth.verify(&driver_token()).expect("the driver's token")),
        other => match other % 3 {
            0 => None,
            1 => Some(auth.anonymous("s_1")),
            _ => Some(auth.verify(&driver_token()).expect("the driver's token")),
        },
    };
    let mut s = Session::new(SessionId(1), identity, cfg, now_ms);
    let mut parser = CommandParser::new();
    let mut m = Model {
        rooms: BTreeMap::new(),
        next_slot: 0,
        closed: false,
    };
    let mut out = Vec::new();
    for step in body.split(|&b| b == b'\n') {
        // The home core answers the join in flight before the next input.
        let refuse = step.first() == Some(&0x07);
        if let Some(room) = s.pending_join.clone() {
            let slot = if refuse || m.rooms.contains_key(&room) {
                None
            } else {
                let slot = m.next_slot;
                m.next_slot += 1;
                m.rooms.insert(room.clone(), slot);
                Some(slot)
            };
            s.join_done(room, slot);
        }
        let ctx = Ctx {
            cfg,
            auth,
            now_ms,
            unix_s,
            core: 0,
            node: None,
        };
        let was_authenticated = s.identity.is_some();
        let mut text = false;
        out.clear();
        match step.first() {
            None | Some(0x07) => {}
            Some(0x01) => s.handle_binary(&ctx, &mut out),
            Some(0x02) => s.on_auth_timeout(&mut out),
            Some(0x03) => {
                if let Some(grace) = s.on_token_expiry(&ctx, &mut out) {
                    assert_eq!(grace, cfg.expiry_grace);
                    assert!(matches!(out.as_slice(), [Output::Frame(_)]));
                }
            }
            Some(0x04) => s.on_expiry_grace(&ctx, &mut out),
            Some(0x05) => now_ms += number(&step[1..]),
            Some(0x06) => unix_s += number(&step[1..]),
            Some(_) => {
                text = true;
                s.handle_text(step, &mut parser, &ctx, &mut out);
            }
        }
        check(&s, &mut m, &out, cfg, text && !was_authenticated);
    }
});

fn check(s: &Session, m: &mut Model, out: &[Output], cfg: &SessionConfig, unauth_text: bool) {
    if m.closed {
        assert!(out.is_empty(), "output after Close: {out:?}");
    }
    let mut joins = 0;
    let mut last_error_frame: Option<String> = None;
    let mut rate_limited = false;
    for (i, o) in out.iter().enumerate() {
        assert!(!m.closed, "output after Close: {:?}", &out[i..]);
        match o {
            Output::Frame(f) => {
                let e = common::event_object(f);
                last_error_frame = (e["type"] == "error")
                    .then(|| e["code"].as_str().expect("error code").to_string());
            }
            Output::Error(code) => {
                assert_eq!(
                    last_error_frame.take().as_deref(),
                    Some(code.as_str()),
                    "Error({code:?}) without its frame: {out:?}"
                );
                rate_limited |= *code == ErrorCode::RateLimited;
            }
            Output::Close { code, reason } => {
                assert!((1000..5000).contains(code), "close code {code}");
                assert!(reason.len() <= 123, "close reason too long for a frame");
                m.closed = true;
            }
            Output::Authenticated => assert!(s.identity.is_some()),
            Output::Join { room, rejoin, .. } => {
                joins += 1;
                assert!(valid_room(room), "join {room:?}");
                let ident = s.identity.as_ref().expect("join needs an identity");
                assert!(ident.rooms.matches(room), "join {room:?} not allowed");
                assert_eq!(*rejoin, m.rooms.contains_key(room), "rejoin flag");
                assert!(*rejoin || m.rooms.len() < cfg.max_rooms, "room limit");
                assert_eq!(s.pending_join.as_ref(), Some(room));
            }
            Output::Leave { room, slot } => {
                assert_eq!(m.rooms.remove(room), Some(*slot), "leave {room:?}");
            }
            Output::History { room, limit, .. } => {
                assert!(m.rooms.contains_key(room), "history of {room:?}");
                assert!((1..=500).contains(limit));
            }
            Output::Typing { room, .. } | Output::Members { room, .. } => {
                assert!(m.rooms.contains_key(room), "{o:?} not a member");
            }
            Output::Presence { .. } => {}
            Output::Direct { to, event, .. } => {
                assert!(!to.is_empty() && to.len() <= 256);
                let e = common::event_object(event);
                assert_eq!(e["type"], "direct");
                assert!(e.contains_key("data") && e.contains_key("from"));
            }
            Output::Publish {
                room, tail, key, ..
            } => {
                assert!(valid_room(room), "publish to {room:?}");
                let ident = s.identity.as_ref().expect("publish needs an identity");
                assert!(ident.may_publish(room, m.rooms.contains_key(room)));
                if let Some(k) = key {
                    assert!((1..=64).contains(&k.len()));
                }
                let msg = event::message(room, 1, "e1", 2, tail);
                let e = common::event_object(&msg);
                assert_eq!(e["type"], "message");
                assert_eq!(e["room"], **room);
                assert!(e.contains_key("data") && e.contains_key("from"));
                // The sender's strings are escaped, so the first `,"data":`
                // is the field's; the tail ends with the event's `}`.
                let at = tail.find(",\"data\":").expect("data in the tail") + 8;
                let data_len = tail.len() - at - 1;
                assert!(data_len <= cfg.max_message, "data over max_message");
            }
        }
    }
    assert!(joins <= 1, "several joins in one step");
    assert_eq!(
        s.is_closing(),
        m.closed,
        "is_closing disagrees with the Close"
    );
    // What the session holds is what the driver acknowledged.
    let mut held: Vec<(&str, u32)> = s.rooms.iter().map(|r| (&*r.name, r.slot)).collect();
    held.sort();
    let model: Vec<(&str, u32)> = m.rooms.iter().map(|(r, s)| (&**r, *s)).collect();
    assert_eq!(
        held, model,
        "session rooms differ from the acknowledged ones"
    );
    assert!(s.rooms.len() <= cfg.max_rooms);
    if unauth_text && s.identity.is_none() {
        assert!(
            m.closed || rate_limited,
            "unauthenticated command let through: {out:?}"
        );
    }
}
