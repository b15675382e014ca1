//! `sse_cursor`: `Last-Event-ID` values into the SSE cursor parser
//! (`corecast::core::sse::parse_cursor`).
//!
//! Checks: no panic; each position re-encoded the way the stream writes
//! it (`room:seq@epoch` joined by `;`) parses back to the same positions;
//! no part yields more than one position.

#![no_main]

use corecast::core::sse::parse_cursor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|buf: &[u8]| {
    let Ok(s) = std::str::from_utf8(buf) else {
        return;
    };
    let parsed = parse_cursor(s);
    assert!(parsed.len() <= s.split(';').count());
    let mut encoded = String::new();
    for (room, since) in &parsed {
        assert!(!room.contains(';') && !since.epoch.contains(';') && !since.epoch.contains('@'));
        if !encoded.is_empty() {
            encoded.push(';');
        }
        encoded.push_str(room);
        encoded.push(':');
        encoded.push_str(&since.seq.to_string());
        encoded.push('@');
        encoded.push_str(&since.epoch);
    }
    let back = parse_cursor(&encoded);
    assert_eq!(back, parsed, "re-encoded as {encoded:?}");
});
