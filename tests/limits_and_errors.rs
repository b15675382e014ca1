//! Limits and error codes over real sockets: connection limit, message and
//! frame sizes, rooms per connection, room names, rate limiting and its
//! kick, malformed input, binary frames, unknown and unsupported commands,
//! slow consumers and the handshake timeout.

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tungstenite::Message;

/// The connection is still open and answering commands (the next frame is
/// the pong).
fn assert_open(c: &mut Client) {
    let pong = c.request(json!({"type":"ping","id":"alive?"}));
    assert_eq!(pong, json!({"type":"pong","id":"alive?"}));
}

/// Sends `cmd` and asserts the reply is an `error` with `code` and the
/// command's `id`.
fn expect_error_reply(c: &mut Client, cmd: Value, code: &str) -> Value {
    let e = c.request(cmd.clone());
    assert_eq!(e["type"], "error", "{cmd} -> {e}");
    assert_eq!(e["code"], code, "{cmd} -> {e}");
    assert_eq!(e["id"], cmd["id"], "reply repeats the id: {cmd} -> {e}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{cmd} -> {e}"
    );
    e
}

/// The next text frame, or `Err(close code)` when the server closes.
fn next_event_or_close(c: &mut Client) -> Result<Value, Option<u16>> {
    loop {
        match c.ws.read() {
            Ok(Message::Text(t)) => return Ok(serde_json::from_str(&t).unwrap()),
            Ok(Message::Close(f)) => return Err(f.map(|f| u16::from(f.code))),
            Ok(_) => {}
            Err(e) => panic!("expected a frame or a close, got error {e}"),
        }
    }
}

/// Joins `room` and consumes the `ack` and the own `joined`.
fn join_fresh(c: &mut Client, room: &str) {
    c.join(room);
    let j = c.recv_type("joined");
    assert_eq!(j["room"], room, "{j}");
}

/// A publish frame of exactly `len` bytes (a string `data` padded with `x`).
fn publish_frame_of_len(room: &str, len: usize) -> String {
    let empty = json!({"type":"publish","id":"big","room":room,"data":""}).to_string();
    assert!(len >= empty.len());
    let frame =
        json!({"type":"publish","id":"big","room":room,"data":"x".repeat(len - empty.len())})
            .to_string();
    assert_eq!(frame.len(), len);
    frame
}

// ---- welcome --------------------------------------------------------------

#[test]
fn welcome_announces_configured_limits() {
    let server = TestServer::start(|c| {
        c.heartbeat = 9;
        c.limits.max_message = 2048;
        c.limits.max_rooms = 7;
        c.limits.rate_per_sec = 30.0;
        c.limits.rate_burst = 60.0;
    });
    let (_c, w) = Client::connect_welcome(&server.url("/ws"));
    assert_eq!(w["heartbeat"], 9, "{w}");
    assert_eq!(
        w["limits"],
        json!({"max_message":2048,"max_rooms":7,"rate":{"per_sec":30,"burst":60}}),
        "{w}"
    );
}

// ---- connections ----------------------------------------------------------

#[test]
fn connection_limit_refuses_upgrades_with_503_until_a_slot_frees() {
    let server = TestServer::with_auth(|c| {
        c.cores = 3;
        c.auth.anonymous = Some(true);
        c.limits.max_connections = 3;
    });
    // Refused upgrades take no slot.
    for _ in 0..4 {
        match Client::try_connect_with(&server.url("/ws?token=garbage"), &[]) {
            Err(ConnectError::Http(401, _)) => {}
            Err(e) => panic!("expected 401, got {e:?}"),
            Ok(_) => panic!("expected 401, got a WebSocket"),
        }
    }
    // The limit holds for the whole server, whichever core accepts.
    let mut open: Vec<Client> = (0..3)
        .map(|_| Client::connect_welcome(&server.url("/ws")).0)
        .collect();
    let t = token("ann", |_| {});
    for url in [server.url("/ws"), server.url(&format!("/ws?token={t}"))] {
        match Client::try_connect_with(&url, &[]) {
            Err(ConnectError::Http(503, body)) => {
                let v: Value =
                    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body}: {e}"));
                assert_eq!(v["error"]["code"], "overloaded", "{body}");
                assert!(v["error"]["message"].is_string(), "{body}");
            }
            Err(e) => panic!("expected 503, got {e:?}"),
            Ok(_) => panic!("a 4th connection was accepted over max_connections = 3"),
        }
    }
    // Plain HTTP is not counted against the limit.
    let (status, _, body) = http_get(server.addr, "/health");
    assert_eq!(status, 200, "{body}");

    // A clean close frees a slot.
    let mut c = open.pop().unwrap();
    c.close();
    let _ = c.read_until_close();
    drop(c);
    let mut next = None;
    assert!(
        eventually(WAIT, || {
            next = Client::try_connect_with(&server.url("/ws"), &[]).ok();
            next.is_some()
        }),
        "the closed connection's slot was never freed"
    );
    let mut c = next.take().unwrap();
    c.recv_type("welcome");
    open.push(c);
    // And so does a dropped TCP connection.
    drop(open.pop());
    assert!(
        eventually(WAIT, || {
            next = Client::try_connect_with(&server.url(&format!("/ws?token={t}")), &[]).ok();
            next.is_some()
        }),
        "the dropped connection's slot was never freed"
    );
    assert_eq!(next.unwrap().recv_type("welcome")["user"], "ann");
}

#[test]
fn silent_tcp_connection_is_dropped_after_the_handshake_timeout() {
    let server = TestServer::start(|c| c.auth.timeout = 1);
    for prefix in [&b""[..], &b"GET /ws HTTP/1.1\r\nHost: x\r\n"[..]] {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        std::io::Write::write_all(&mut s, prefix).unwrap();
        let mut buf = Vec::new();
        match s.read_to_end(&mut buf) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("server kept a silent connection open: {e}"),
        }
        let text = String::from_utf8_lossy(&buf);
        if prefix.is_empty() {
            assert!(buf.is_empty(), "{text:?}");
        } else {
            // A partial head is answered with 408 as the connection is cut.
            assert!(text.starts_with("HTTP/1.1 408 "), "{text:?}");
        }
    }
}

// ---- sizes ----------------------------------------------------------------

#[test]
fn data_up_to_max_message_is_accepted_and_larger_is_too_large() {
    let server = TestServer::start(|c| c.limits.max_message = 1024);
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    join_fresh(&mut c, "r");
    // A JSON string of 1022 characters is 1024 bytes of JSON.
    c.send(json!({"type":"publish","id":"fits","room":"r","data":"x".repeat(1022)}));
    let m = c.recv_type("message");
    assert_eq!(m["data"].as_str().unwrap().len(), 1022);
    assert_eq!(c.recv_type("ack")["id"], "fits");

    expect_error_reply(
        &mut c,
        json!({"type":"publish","id":"big","room":"r","data":"x".repeat(1023)}),
        "too_large",
    );
    expect_error_reply(
        &mut c,
        json!({"type":"publish","id":"big2","room":"r","data":{"list":vec![12345; 200]}}),
        "too_large",
    );
    // Nothing was published, and the connection stays.
    assert_open(&mut c);
    let ack = c.request(json!({"type":"publish","id":"after","room":"r","data":2}));
    let ack = if ack["type"] == "message" {
        assert_eq!(ack["seq"], 2, "refused publishes take no seq: {ack}");
        c.recv()
    } else {
        ack
    };
    assert_eq!(
        (ack["type"].clone(), ack["seq"].clone()),
        (json!("ack"), json!(2))
    );
}

#[test]
fn frame_at_max_message_plus_1k_is_read_and_one_byte_more_closes_1009() {
    let server = TestServer::start(|c| c.limits.max_message = 1024);
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    join_fresh(&mut c, "r");
    // 2048 bytes: within the frame bound, but its data is too large.
    c.send_text(&publish_frame_of_len("r", 2048));
    let e = c.expect_error("too_large");
    assert_eq!(e["id"], "big");
    assert_open(&mut c);
    // 2049 bytes: the connection is closed.
    c.send_text(&publish_frame_of_len("r", 2049));
    let before = c.expect_close(1009);
    assert!(before.is_empty(), "{before:?}");
}

#[test]
fn much_larger_frame_closes_1009() {
    let server = TestServer::start(|c| c.limits.max_message = 1024);
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    c.send_text(&"y".repeat(64 * 1024));
    c.expect_close(1009);
}

#[test]
fn oversized_frame_header_then_more_bytes_fails_cleanly_and_the_core_lives() {
    // One core, so the follow-up connection lands on the same core loop.
    let server = TestServer::start(|c| {
        c.cores = 1;
        c.limits.max_message = 1024;
    });
    let (c, _) = Client::connect_welcome(&server.url("/ws"));
    let mut raw = c.ws.into_inner();
    // A masked text frame announcing 200000 bytes, then part of its payload
    // and more data: the server refuses it at the header (1009) and must not
    // try to parse what follows.
    let mut frame = vec![0x81u8, 0x80 | 127];
    frame.extend_from_slice(&200_000u64.to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame.extend(std::iter::repeat_n(b'a', 8192));
    std::io::Write::write_all(&mut raw, &frame).unwrap();
    // Read until the close frame (opcode 0x88) with code 1009 arrives.
    let is_close_1009 = |b: &[u8]| {
        b.windows(4)
            .any(|w| w[0] == 0x88 && w[2..4] == 1009u16.to_be_bytes())
    };
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !is_close_1009(&got) {
        match raw.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    assert!(is_close_1009(&got), "no close 1009 in {} bytes", got.len());
    // Answer the close like a well-behaved client (masked close frame,
    // code 1000); the server must not feed it to its broken frame state.
    let _ = std::io::Write::write_all(&mut raw, &[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]);
    let _ = raw.read_to_end(&mut got); // until the server ends the connection
    // The core is alive: a new connection works.
    let (mut c2, _) = Client::connect_welcome(&server.url("/ws"));
    assert_eq!(c2.request(json!({"type":"ping","id":1}))["type"], "pong");
    let (status, _, body) = http_get(server.addr, "/health");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn long_unknown_type_with_multibyte_chars_is_answered_not_fatal() {
    let server = TestServer::start(|c| c.cores = 1);
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    for n in 60..68 {
        let ty = format!("{}é", "a".repeat(n));
        let v = c.request(json!({"type":ty,"id":n}));
        assert_eq!(v["code"], "unknown_type", "{v}");
        assert_eq!(v["id"], n);
    }
    assert_eq!(c.request(json!({"type":"ping","id":"p"}))["type"], "pong");
}

// ---- rooms ----------------------------------------------------------------

#[test]
fn max_rooms_is_enforced_with_room_limit() {
    let server = TestServer::start(|c| c.limits.max_rooms = 2);
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    join_fresh(&mut c, "a");
    join_fresh(&mut c, "b");
    expect_error_reply(
        &mut c,
        json!({"type":"join","id":"third","room":"c"}),
        "room_limit",
    );
    // Joining a room again is not a new room.
    let again = c.join("a");
    assert_eq!(again["room"], "a");
    // Leaving makes room.
    let ack = c.request(json!({"type":"leave","id":"l","room":"b"}));
    assert_eq!(ack, json!({"type":"ack","id":"l","room":"b"}));
    join_fresh(&mut c, "c");
    expect_error_reply(
        &mut c,
        json!({"type":"join","id":"fourth","room":"d"}),
        "room_limit",
    );
}

#[test]
fn invalid_room_names_are_refused_in_every_command() {
    let server = TestServer::start(|_| {});
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    let too_long = "a".repeat(129);
    let bad = [
        "",
        too_long.as_str(),
        "has space",
        "star*",
        "slash/es",
        "é",
        "new\nline",
        "q?x",
    ];
    for (i, room) in bad.iter().enumerate() {
        expect_error_reply(
            &mut c,
            json!({"type":"join","id":i,"room":room}),
            "invalid_room",
        );
    }
    expect_error_reply(
        &mut c,
        json!({"type":"publish","id":"p","room":"bad room","data":1}),
        "invalid_room",
    );
    expect_error_reply(
        &mut c,
        json!({"type":"leave","id":"l","room":""}),
        "invalid_room",
    );
    // The boundaries of the rule are accepted.
    join_fresh(&mut c, &"a".repeat(128));
    join_fresh(&mut c, "Az09_:.-");
}

#[test]
fn publish_or_leave_without_membership_is_not_member() {
    let server = TestServer::start(|_| {});
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    let (mut other, _) = Client::connect_welcome(&server.url("/ws"));
    join_fresh(&mut other, "r");
    expect_error_reply(
        &mut c,
        json!({"type":"publish","id":1,"room":"r","data":"hi"}),
        "not_member",
    );
    expect_error_reply(
        &mut c,
        json!({"type":"leave","id":2,"room":"r"}),
        "not_member",
    );
    // The refused publish reached nobody.
    assert_open(&mut other);
    // After leaving, publishing is refused again.
    join_fresh(&mut c, "solo");
    let ack = c.request(json!({"type":"leave","id":3,"room":"solo"}));
    assert_eq!(ack["type"], "ack", "{ack}");
    expect_error_reply(
        &mut c,
        json!({"type":"publish","id":4,"room":"solo","data":0}),
        "not_member",
    );
}

// ---- rate limiting --------------------------------------------------------

#[test]
fn over_burst_commands_are_rate_limited_with_their_id() {
    let server = TestServer::start(|c| {
        c.limits.rate_per_sec = 2.0;
        c.limits.rate_burst = 3.0;
    });
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    for i in 1..=5 {
        c.send(json!({"type":"ping","id":i}));
    }
    c.send(json!({"type":"ping","id":"str-id"}));
    for i in 1..=3 {
        assert_eq!(c.recv(), json!({"type":"pong","id":i}));
    }
    for id in [json!(4), json!(5), json!("str-id")] {
        let e = c.expect_error("rate_limited");
        assert_eq!(e["id"], id, "{e}");
    }
    // The bucket refills (2/s); the connection stays.
    std::thread::sleep(Duration::from_millis(700));
    assert_open(&mut c);
}

#[test]
fn sustained_flooding_is_closed_with_4008() {
    let server = TestServer::start(|c| {
        c.limits.rate_per_sec = 5.0;
        c.limits.rate_burst = 5.0;
        c.limits.rate_kick_after = 1;
    });
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    let start = Instant::now();
    let mut first_limited: Option<Instant> = None;
    let (mut pongs, mut limited) = (0, 0);
    let mut n = 0u64;
    // One command in flight at a time (so the client keeps reading and is
    // never a slow consumer), far faster than 5/s.
    let code = loop {
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "still open after {n} commands ({limited} rate limited)"
        );
        n += 1;
        let sent_at = Instant::now();
        c.send(json!({"type":"ping","id":n}));
        match next_event_or_close(&mut c) {
            Ok(v) if v["type"] == "pong" => {
                assert_eq!(v["id"], n, "{v}");
                pongs += 1;
            }
            Ok(v) => {
                assert_eq!(v["code"], "rate_limited", "{v}");
                assert_eq!(v["id"], n, "{v}");
                first_limited.get_or_insert(sent_at);
                limited += 1;
            }
            Err(code) => break code,
        }
    };
    assert_eq!(code, Some(4008));
    assert!(pongs >= 5, "the burst was served: {pongs}");
    // Measured from sending the first limited command, which precedes the
    // moment the server started limiting.
    let since = first_limited
        .expect("rate_limited before the kick")
        .elapsed();
    assert!(
        since >= Duration::from_millis(990),
        "kicked {since:?} after limiting began, before rate_kick_after"
    );
}

#[test]
fn slowing_down_after_being_limited_is_not_kicked() {
    let server = TestServer::start(|c| {
        c.limits.rate_per_sec = 5.0;
        c.limits.rate_burst = 5.0;
        c.limits.rate_kick_after = 1;
    });
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    for i in 0..7 {
        c.send(json!({"type":"ping","id":i}));
    }
    for i in 0..5 {
        assert_eq!(c.recv(), json!({"type":"pong","id":i}));
    }
    c.expect_error("rate_limited");
    c.expect_error("rate_limited");
    // Pause until the bucket is full again, longer than rate_kick_after.
    std::thread::sleep(Duration::from_millis(1300));
    for i in 10..16 {
        c.send(json!({"type":"ping","id":i}));
    }
    for i in 10..15 {
        assert_eq!(c.recv(), json!({"type":"pong","id":i}));
    }
    // Over the limit again: a new run of limiting, not a kick.
    let e = c.expect_error("rate_limited");
    assert_eq!(e["id"], 15);
}

// ---- malformed input ------------------------------------------------------

#[test]
fn bad_json_is_an_error_and_the_connection_stays() {
    let server = TestServer::start(|_| {});
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    for text in [
        "{oops",
        "not json at all",
        "",
        "[1,2,3]",
        "42",
        "\"str\"",
        "{\"type\":\"ping\"} trailing",
    ] {
        c.send_text(text);
        let e = c.expect_error("bad_json");
        assert!(e.get("id").is_none(), "{text:?}: {e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
        assert_open(&mut c);
    }
}

#[test]
fn wrongly_typed_fields_are_bad_json_with_the_id() {
    let server = TestServer::start(|_| {});
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    for cmd in [
        json!({"type":"join","id":1,"room":5}),
        json!({"type":7,"id":2}),
        json!({"type":"join","id":3,"room":"r","since":"yesterday"}),
        json!({"type":"join","id":4,"room":"r","since":{"epoch":"e","seq":-1}}),
        json!({"type":"typing","id":5,"room":"r","typing":"yes"}),
        json!({"type":"presence","id":6,"status":"sleeping"}),
        json!({"type":"history","id":7,"room":"r","limit":"all"}),
    ] {
        expect_error_reply(&mut c, cmd, "bad_json");
    }
    assert_open(&mut c);
    // An unusable id: bad_json without an id.
    for cmd in [
        json!({"type":"ping","id":{"x":1}}),
        json!({"type":"ping","id":1.5}),
        json!({"type":"ping","id":"i".repeat(129)}),
    ] {
        let e = c.request(cmd.clone());
        assert_eq!(e["code"], "bad_json", "{cmd} -> {e}");
        assert!(e.get("id").is_none(), "{cmd} -> {e}");
    }
    assert_open(&mut c);
}

#[test]
fn ten_malformed_frames_in_a_row_close_1008() {
    let server = TestServer::start(|_| {});
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    for _ in 0..10 {
        c.send_text("{oops");
    }
    let before = c.expect_close(1008);
    assert_eq!(before.len(), 10, "{before:?}");
    assert!(before.iter().all(|e| e["code"] == "bad_json"), "{before:?}");
}

#[test]
fn malformed_frames_of_any_kind_count_towards_the_1008_close() {
    let server = TestServer::start(|_| {});
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    for i in 0..10 {
        match i % 3 {
            0 => c.send_text("{oops"),
            1 => c.send(json!({"type":"nope","id":i})),
            _ => c.send(json!({"type":"join","id":i})),
        }
    }
    let before = c.expect_close(1008);
    let codes: Vec<&str> = before.iter().map(|e| e["code"].as_str().unwrap()).collect();
    assert_eq!(codes.len(), 10, "{before:?}");
    assert_eq!(
        &codes[..3],
        ["bad_json", "unknown_type", "missing_field"],
        "{before:?}"
    );
}

#[test]
fn a_valid_command_resets_the_malformed_count() {
    let server = TestServer::start(|_| {});
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    for round in 0..3 {
        for _ in 0..9 {
            c.send_text("{oops");
        }
        for _ in 0..9 {
            c.expect_error("bad_json");
        }
        let pong = c.request(json!({"type":"ping","id":round}));
        assert_eq!(pong, json!({"type":"pong","id":round}));
    }
}

#[test]
fn binary_frame_is_unsupported_and_the_connection_stays() {
    let server = TestServer::start(|_| {});
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    // Even valid JSON in a binary frame.
    for payload in [
        vec![0x81u8, 0xa4, 0x74],
        br#"{"type":"ping","id":1}"#.to_vec(),
    ] {
        c.ws.send(Message::binary(payload)).unwrap();
        let e = c.expect_error("unsupported");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
        assert_open(&mut c);
    }
}

#[test]
fn unknown_type_is_answered_with_its_id() {
    let server = TestServer::start(|_| {});
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    let e = expect_error_reply(&mut c, json!({"type":"dance","id":"d1"}), "unknown_type");
    assert!(e["message"].as_str().unwrap().contains("dance"), "{e}");
    expect_error_reply(&mut c, json!({"type":"PING","id":2}), "unknown_type");
    assert_open(&mut c);
}

#[test]
fn missing_fields_are_named_and_answered_with_the_id() {
    let server = TestServer::start(|_| {});
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    for (cmd, field) in [
        (json!({"id":1}), "type"),
        (json!({"type":"join","id":2}), "room"),
        (json!({"type":"publish","id":3,"room":"r"}), "data"),
        (json!({"type":"publish","id":4,"data":1}), "room"),
        (json!({"type":"leave","id":5}), "room"),
        (json!({"type":"typing","id":6,"room":"r"}), "typing"),
        (json!({"type":"direct","id":7,"data":1}), "to"),
        (
            json!({"type":"join","id":8,"room":"r","since":{"seq":1}}),
            "epoch",
        ),
        (json!({"type":"members","id":9}), "room"),
    ] {
        let e = expect_error_reply(&mut c, cmd.clone(), "missing_field");
        assert!(
            e["message"].as_str().unwrap().contains(field),
            "{cmd}: message should name `{field}`: {e}"
        );
        // Keep well below the malformed-frame close.
        if e["id"].as_u64().unwrap().is_multiple_of(4) {
            assert_open(&mut c);
        }
    }
    assert_open(&mut c);
}

#[test]
fn bad_typing_presence_direct_and_members_commands_are_errors_and_harmless() {
    let server = TestServer::start(|_| {});
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    join_fresh(&mut c, "r");
    for (cmd, code) in [
        (
            json!({"type":"typing","id":"t","room":"r","typing":"yes"}),
            "bad_json",
        ),
        (
            json!({"type":"typing","id":"t","room":"other","typing":true}),
            "not_member",
        ),
        (
            json!({"type":"presence","id":"p","status":"asleep"}),
            "bad_json",
        ),
        (
            json!({"type":"direct","id":"d","data":{"hi":1}}),
            "missing_field",
        ),
        (
            json!({"type":"members","id":"m","room":"other"}),
            "not_member",
        ),
        (
            json!({"type":"members","id":"m","room":"bad room"}),
            "invalid_room",
        ),
    ] {
        expect_error_reply(&mut c, cmd, code);
    }
    assert_open(&mut c);
    // Still a working member of its room.
    c.send(json!({"type":"publish","id":"x","room":"r","data":"still here"}));
    assert_eq!(c.recv_type("message")["data"], "still here");
    assert_eq!(c.recv_type("ack")["id"], "x");
}

#[test]
fn ping_is_answered_with_pong_and_its_id() {
    let server = TestServer::start(|_| {});
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    assert_eq!(
        c.request(json!({"type":"ping","id":"abc"})),
        json!({"type":"pong","id":"abc"})
    );
    assert_eq!(
        c.request(json!({"type":"ping","id":-12})),
        json!({"type":"pong","id":-12})
    );
    assert_eq!(c.request(json!({"type":"ping"})), json!({"type":"pong"}));
    // Unknown fields are ignored.
    assert_eq!(
        c.request(json!({"type":"ping","id":3,"extra":{"nested":[1,2]},"v":2})),
        json!({"type":"pong","id":3})
    );
    // Special characters in a string id come back intact.
    let id = "quote\" back\\slash \u{e9} \n";
    assert_eq!(
        c.request(json!({"type":"ping","id":id})),
        json!({"type":"pong","id":id})
    );
}

// ---- slow consumers -------------------------------------------------------

#[test]
fn a_client_that_does_not_read_is_closed_with_4009() {
    let server = TestServer::with_auth(|c| {
        c.auth.anonymous = Some(true);
        c.limits.max_message = 2048;
        c.limits.max_backlog = 8192;
        c.limits.rate_per_sec = 1e6;
        c.limits.rate_burst = 1e6;
    });
    let (mut slow, _) = Client::connect_welcome(&server.url("/ws"));
    // Keep the kernel from buffering megabytes on the slow client's behalf.
    socket2::SockRef::from(slow.ws.get_ref())
        .set_recv_buffer_size(4096)
        .unwrap();
    join_fresh(&mut slow, "flood");
    // A publisher that is not a member (publish claim), so it gets only acks.
    let t = token("svc", |t| {
        t.rooms = Some(vec![]);
        t.publish = Some(vec!["flood".into()]);
    });
    let (mut publisher, _) = Client::connect_welcome(&server.url(&format!("/ws?token={t}")));
    let payload = "z".repeat(1000);
    let mut sent = 0;
    for _ in 0..20 {
        for _ in 0..100 {
            publisher.send(json!({"type":"publish","room":"flood","data":payload}));
        }
        for _ in 0..100 {
            publisher.recv_type("ack");
        }
        sent += 100;
    }
    // The slow client gets what fit, then 4009.
    let (code, _, frames) = slow.read_until_close();
    assert_eq!(
        code,
        Some(4009),
        "after {} of {sent} messages",
        frames.len()
    );
    assert!(frames.len() < sent, "{} of {sent}", frames.len());
    // The publisher is unaffected.
    assert_open(&mut publisher);
}
