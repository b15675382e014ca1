//! The HTTP API over real sockets: every route with good input, bad input
//! and without (or with a wrong) key, and the status codes of each.

mod common;

use common::*;
use serde_json::json;
use std::io::{Read, Write};

const KEY: &str = "test-api-key-1";

fn server(f: impl FnOnce(&mut corecast::Config)) -> TestServer {
    TestServer::with_auth(|c| {
        c.auth.api_keys = vec![KEY.into()];
        c.limits.rate_per_sec = 1e6;
        c.limits.rate_burst = 1e6;
        f(c);
    })
}

fn member(s: &TestServer, user: &str, room: &str) -> Client {
    let t = token(user, |_| {});
    let (mut c, _) = Client::connect_welcome(&s.url(&format!("/ws?token={t}")));
    if !room.is_empty() {
        assert_eq!(c.ask(json!({"type":"join","room":room}))["type"], "ack");
    }
    c
}

#[test]
fn every_route_needs_a_valid_key() {
    let s = server(|_| {});
    for (method, path) in [
        ("POST", "/api/publish"),
        ("POST", "/api/notify"),
        ("POST", "/api/broadcast"),
        ("GET", "/api/rooms/lobby"),
        ("GET", "/api/stats"),
        ("POST", "/api/tokens"),
    ] {
        let (status, body) = api(s.addr, method, path, None, Some(&json!({})));
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized");
        let (status, _) = api(s.addr, method, path, Some("wrong"), Some(&json!({})));
        assert_eq!(status, 401, "{method} {path} with a wrong key");
    }
    // Without any key configured the API is off.
    let s = TestServer::start(|_| {});
    let (status, body) = api(s.addr, "GET", "/api/stats", Some(KEY), None);
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("api_keys")
    );
}

#[test]
fn publish_reaches_members_with_seq_and_server_sender() {
    let s = server(|_| {});
    let mut m = member(&s, "u1", "news");
    let (status, body) = api(
        s.addr,
        "POST",
        "/api/publish",
        Some(KEY),
        Some(&json!({"room":"news","data":{"headline":"x"}})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["seq"], 1);
    assert!(
        body["epoch"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    assert!(body["ts"].as_u64().unwrap() > 0);
    let msg = m.recv_until("message");
    assert_eq!(msg["from"], json!({"user":"server"}));
    assert_eq!(msg["data"], json!({"headline":"x"}));
    assert_eq!(msg["seq"], 1);
    assert_eq!(msg["epoch"], body["epoch"]);
    // Bad input.
    for (b, code) in [
        (json!({"data":1}), "missing_field"),
        (json!({"room":"bad room","data":1}), "invalid_room"),
        (json!({"room":"news"}), "missing_field"),
    ] {
        let (status, body) = api(s.addr, "POST", "/api/publish", Some(KEY), Some(&b));
        assert_eq!(status, 400, "{b}: {body}");
        assert_eq!(body["error"]["code"], code, "{b}");
    }
    let (status, _, body) = http_raw(
        s.addr,
        format!("POST /api/publish HTTP/1.1\r\nAuthorization: Bearer {KEY}\r\nContent-Length: 4\r\n\r\n{{nop").as_bytes(),
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = api(s.addr, "GET", "/api/publish", Some(KEY), None);
    assert_eq!(status, 405, "{body}");
    let (status, body) = api(s.addr, "POST", "/api/nothing", Some(KEY), Some(&json!({})));
    assert_eq!(status, 404, "{body}");
}

#[test]
fn bodies_are_bounded() {
    let s = server(|c| {
        c.limits.max_message = 1000;
        c.api.max_body = 4096;
    });
    let big = "x".repeat(2000);
    let (status, body) = api(
        s.addr,
        "POST",
        "/api/publish",
        Some(KEY),
        Some(&json!({"room":"r","data":big})),
    );
    assert_eq!(status, 413, "data over max_message: {body}");
    let huge = "x".repeat(5000);
    let (status, body) = api(
        s.addr,
        "POST",
        "/api/publish",
        Some(KEY),
        Some(&json!({"room":"r","data":huge})),
    );
    assert_eq!(status, 413, "body over api.max_body: {body}");
}

/// A body larger than one read (8 KiB), in the same segment train as the
/// head or arriving later, is read to its end (edge-triggered readiness
/// gives no second event for bytes already queued).
#[test]
fn large_bodies_are_read_whole() {
    let s = server(|_| {});
    let mut m = member(&s, "u1", "big");
    let data = "y".repeat(40_000);
    let (status, body) = api(
        s.addr,
        "POST",
        "/api/publish",
        Some(KEY),
        Some(&json!({"room":"big","data":data})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        m.recv_until("message")["data"].as_str().map(str::len),
        Some(40_000)
    );
    // The head first, the body 300 ms later in two pieces.
    let payload = json!({"room":"big","data":"z".repeat(20_000)}).to_string();
    let mut c = std::net::TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        c,
        "POST /api/publish HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        payload.len()
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (a, b) = payload.as_bytes().split_at(payload.len() / 2);
    c.write_all(a).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    c.write_all(b).unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(
        m.recv_until("message")["data"].as_str().map(str::len),
        Some(20_000)
    );
}

/// The next notification that is not a reachability probe.
fn next_note(c: &mut Client) -> serde_json::Value {
    loop {
        let n = c.recv_until("notification");
        if n["data"] != "probe" {
            return n;
        }
    }
}

#[test]
fn notify_and_broadcast_count_the_connections_reached() {
    let s = server(|_| {});
    let mut a1 = member(&s, "ann", "");
    let mut a2 = member(&s, "ann", "");
    let mut b = member(&s, "bob", "");
    // A connection reaches its user's home core asynchronously to its
    // `welcome`: wait until each user is reachable (one probe each) before
    // counting.
    for (user, conns) in [("ann", 2), ("bob", 1)] {
        let t = std::time::Instant::now();
        loop {
            let (_, body) = api(
                s.addr,
                "POST",
                "/api/notify",
                Some(KEY),
                Some(&json!({"user":user,"data":"probe"})),
            );
            if body["delivered"] == conns {
                break;
            }
            assert!(t.elapsed() < WAIT, "{user} never reachable: {body}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    let (status, body) = api(
        s.addr,
        "POST",
        "/api/notify",
        Some(KEY),
        Some(&json!({"user":"ann","data":{"n":1}})),
    );
    assert_eq!(
        (status, body["delivered"].clone()),
        (200, json!(2)),
        "{body}"
    );
    for c in [&mut a1, &mut a2] {
        let n = next_note(c);
        assert_eq!(n["data"], json!({"n":1}));
        assert!(n["ts"].as_u64().is_some());
    }
    let (_, body) = api(
        s.addr,
        "POST",
        "/api/notify",
        Some(KEY),
        Some(&json!({"users":["ann","bob","nobody"],"data":2})),
    );
    assert_eq!(body["delivered"], 3, "{body}");
    next_note(&mut b);
    let (status, body) = api(
        s.addr,
        "POST",
        "/api/notify",
        Some(KEY),
        Some(&json!({"data":2})),
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = api(
        s.addr,
        "POST",
        "/api/broadcast",
        Some(KEY),
        Some(&json!({"data":"all"})),
    );
    assert_eq!(
        (status, body["delivered"].clone()),
        (200, json!(3)),
        "{body}"
    );
    for c in [&mut a1, &mut a2, &mut b] {
        // The second notify reached ann's connections too.
        let mut n = next_note(c);
        if n["data"] == 2 {
            n = next_note(c);
        }
        assert_eq!(n["data"], "all");
    }
}

#[test]
fn rooms_and_stats_describe_the_server() {
    let s = server(|_| {});
    let _m1 = member(&s, "ann", "desc");
    let _m2 = member(&s, "bob", "desc");
    api(
        s.addr,
        "POST",
        "/api/publish",
        Some(KEY),
        Some(&json!({"room":"desc","data":1})),
    );
    let (status, body) = api(s.addr, "GET", "/api/rooms/desc", Some(KEY), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room"], "desc");
    assert_eq!(body["seq"], 1);
    let users: Vec<&str> = body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["ann", "bob"]);
    let (status, body) = api(s.addr, "GET", "/api/rooms/never-seen", Some(KEY), None);
    assert_eq!(status, 404, "{body}");
    let (status, body) = api(s.addr, "GET", "/api/rooms/bad%20room", Some(KEY), None);
    assert_eq!(status, 400, "{body}");
    let (status, body) = api(s.addr, "GET", "/api/stats", Some(KEY), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["cores"], 2);
    assert_eq!(body["cores_answered"], 2);
    assert_eq!(body["connections"], 2, "{body}");
    assert_eq!(body["users"], 2, "{body}");
    assert!(body["rooms"].as_u64().unwrap() >= 1);
    assert_eq!(body["per_core"].as_array().unwrap().len(), 2);
    assert!(body["published"].as_u64().unwrap() >= 1);
    assert!(body["messages_in_per_s"].is_u64());
}

#[test]
fn tokens_only_in_dev_mode_and_rate_limit() {
    let s = server(|_| {});
    let (status, body) = api(
        s.addr,
        "POST",
        "/api/tokens",
        Some(KEY),
        Some(&json!({"sub":"x"})),
    );
    assert_eq!(status, 403, "{body}");
    let s = server(|c| {
        c.api.dev_tokens = true;
        c.api.rate_per_sec = 1.0;
        c.api.rate_burst = 3.0;
    });
    let (status, body) = api(
        s.addr,
        "POST",
        "/api/tokens",
        Some(KEY),
        Some(&json!({"sub":"dev1","name":"Dev","rooms":["lobby"]})),
    );
    assert_eq!(status, 200, "{body}");
    let t = body["token"].as_str().unwrap();
    let (mut c, w) = Client::connect_welcome(&s.url(&format!("/ws?token={t}")));
    assert_eq!(w["user"], "dev1");
    let e = c.ask(json!({"type":"join","room":"elsewhere"}));
    assert_eq!(e["code"], "forbidden", "the rooms claim holds");
    let (status, _) = api(s.addr, "POST", "/api/tokens", Some(KEY), Some(&json!({})));
    assert_eq!(status, 400);
    // Dev mode mints for callers without a key (the demo page, a
    // browser), and only there: the other routes still need one.
    let (status, body) = api(
        s.addr,
        "POST",
        "/api/tokens",
        None,
        Some(&json!({"sub":"dev2"})),
    );
    assert_eq!(status, 200, "{body}");
    let (status, _) = api(s.addr, "GET", "/api/stats", None, None);
    assert!(status == 401 || status == 429, "{status}");
    // The bucket (burst 3) is empty by now on at least one core.
    let mut limited = false;
    for _ in 0..10 {
        let (status, body) = api(s.addr, "GET", "/api/stats", Some(KEY), None);
        if status == 429 {
            assert_eq!(body["error"]["code"], "rate_limited");
            limited = true;
            break;
        }
    }
    assert!(limited, "no 429 after exceeding api.rate_burst");
}

#[test]
fn a_client_that_half_closes_after_its_request_still_gets_the_answer() {
    let s = server(|_| {});
    let mut t = std::net::TcpStream::connect(s.addr).unwrap();
    t.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        t,
        "GET /api/stats HTTP/1.1\r\nAuthorization: Bearer {KEY}\r\n\r\n"
    )
    .unwrap();
    t.shutdown(std::net::Shutdown::Write).unwrap();
    let mut resp = String::new();
    t.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    assert!(resp.contains("\"cores\":2"), "{resp}");
}
