//! `command`: arbitrary bytes as a text frame's payload into the per-core
//! command parser (`corecast::proto::command::CommandParser`).
//!
//! Checks: no panic; a reused parser (as on a core, warm buffers from
//! earlier inputs) and a fresh one give the same answer; the `id` is
//! repeated as JSON; every error becomes a valid `error` event; a frame
//! the parser accepts is JSON to serde_json too, and the `data` it
//! re-emits from the tape is the frame's `data` (serde_json as reference,
//! when the frame has no duplicate top-level keys).

#![no_main]

#[path = "common.rs"]
mod common;

use corecast::proto::command::{Command, CommandParser, HISTORY_LIMIT, MAX_ID_LEN, MAX_KEY_LEN};
use corecast::proto::event;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::cell::RefCell;

thread_local! {
    static WARM: RefCell<CommandParser> = RefCell::new(CommandParser::new());
}

/// What a parse said, owned, comparable.
#[derive(Debug, PartialEq)]
struct Answer {
    id: Option<String>,
    cmd: Result<(String, Option<String>), (String, String)>,
}

fn parse(parser: &mut CommandParser, frame: &[u8]) -> Answer {
    parser.parse(frame, |id, cmd| {
        let id_json = id.as_ref().map(|i| i.as_json().to_string());
        let cmd = match cmd {
            Ok(c) => {
                check(&c);
                let data = match &c {
                    Command::Publish { data, .. } | Command::Direct { data, .. } => {
                        Some(data.to_json())
                    }
                    _ => None,
                };
                Ok((format!("{c:?}"), data))
            }
            Err(e) => {
                // The error event the session sends for it.
                let ev = event::error(id.as_ref(), e.code, &e.message);
                let m = common::event_object(&ev);
                assert_eq!(m["code"], e.code.as_str(), "{ev}");
                Err((e.code.as_str().to_string(), e.message.into_owned()))
            }
        };
        Answer { id: id_json, cmd }
    })
}

fn check(c: &Command<'_, '_>) {
    match c {
        Command::Publish { key: Some(k), .. } => {
            assert!((1..=MAX_KEY_LEN).contains(&k.len()), "key {k:?}")
        }
        Command::History { limit, .. } => {
            assert!((1..=HISTORY_LIMIT.1).contains(limit), "limit {limit}")
        }
        _ => {}
    }
}

fuzz_target!(|frame: &[u8]| {
    let fresh = parse(&mut CommandParser::new(), frame);
    let warm = WARM.with(|p| parse(&mut p.borrow_mut(), frame));
    assert_eq!(fresh, warm, "a warm parser answered differently");
    // Twice on the same parser: the tape and scratch are reset between frames.
    let again = WARM.with(|p| parse(&mut p.borrow_mut(), frame));
    assert_eq!(fresh, again, "a second parse answered differently");

    if let Some(id) = &fresh.id {
        let v: Value = serde_json::from_str(id).expect("id is JSON");
        match v {
            Value::String(s) => assert!(s.len() <= MAX_ID_LEN),
            Value::Number(n) => assert!(n.is_i64(), "id {id}"),
            other => panic!("id {other:?}"),
        }
    }

    let Ok((_, data)) = &fresh.cmd else { return };
    // Accepted: it must be JSON to an independent parser too.
    let reference: Value = match serde_json::from_slice(frame) {
        Ok(v) => v,
        Err(e) => panic!("accepted, but serde_json says: {e}"),
    };
    let Some(data) = data else { return };
    let emitted: Value = serde_json::from_str(data)
        .unwrap_or_else(|e| panic!("re-emitted data is not JSON ({e}): {data}"));
    let keys = common::top_level_keys(frame).expect("an object");
    if common::unique(&keys) {
        assert!(
            common::same(&reference["data"], &emitted),
            "data changed: {} -> {data}",
            reference["data"]
        );
    }
});
