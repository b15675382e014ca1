//! Idempotent publish (`key`), over real sockets against both engines: a
//! key already used in the room is acknowledged again with the first seq
//! and ts and `"duplicate": true`, and members get the message once; over
//! WebSocket and `POST /api/publish` alike; while the first is still
//! waiting for its fsync (sync durability); after a restart (the key is
//! stored with the message); and across nodes in cluster mode.

mod common;

use common::*;
use serde_json::{Value, json};

const KEY: &str = "idem-api-key";

fn publish(c: &mut Client, id: &str, room: &str, key: &str, data: Value) -> Value {
    c.send(json!({"type":"publish","id":id,"room":room,"data":data,"key":key}));
    loop {
        let v = c.recv();
        if v["id"] == id {
            return v;
        }
    }
}

/// The messages member `m` receives before a fence: `p` publishes one
/// more (keyless) message to `room`, and everything `m` got before it is
/// returned. A room's messages reach a member in seq order, so a
/// duplicate delivered for an earlier publish would arrive before the
/// fence: no fixed wait is needed to see that none came.
fn messages_before_fence(p: &mut Client, m: &mut Client, room: &str) -> Vec<Value> {
    let ack = p.ask(json!({"type":"publish","room":room,"data":"fence"}));
    assert_eq!(ack["type"], "ack", "{ack}");
    let mut got = Vec::new();
    loop {
        let v = m.recv();
        if v["type"] == "message" && v["room"] == room {
            if v["seq"] == ack["seq"] {
                assert_eq!(v["data"], "fence", "{v}");
                return got;
            }
            got.push(v);
        }
    }
}

#[test]
fn a_key_used_again_is_acknowledged_with_the_first_seq_and_not_published() {
    let s = TestServer::start(|c| {
        c.auth.api_keys = vec![KEY.into()];
        c.limits.rate_per_sec = 1e6;
        c.limits.rate_burst = 1e6;
    });
    let (mut p, _) = Client::connect_welcome(&s.url("/ws"));
    let (mut m, _) = Client::connect_welcome(&s.url("/ws"));
    p.join("idem");
    m.join("idem");

    let first = publish(&mut p, "a", "idem", "k-1", json!("hello"));
    assert_eq!(first["type"], "ack", "{first}");
    assert_eq!(first["seq"], 1);
    assert!(first.get("duplicate").is_none(), "{first}");
    let again = publish(&mut p, "b", "idem", "k-1", json!("hello again"));
    assert_eq!(
        (
            &again["type"],
            &again["seq"],
            &again["ts"],
            &again["duplicate"]
        ),
        (&json!("ack"), &json!(1), &first["ts"], &json!(true)),
        "{again}"
    );
    // Another key is a new message; the same key in another room too.
    assert_eq!(publish(&mut p, "c", "idem", "k-2", json!(2))["seq"], 2);
    p.join("other");
    let other = publish(&mut p, "d", "other", "k-1", json!(3));
    assert_eq!((&other["seq"], other.get("duplicate")), (&json!(1), None));

    // The member saw each message once (the fence takes seq 3).
    let got = messages_before_fence(&mut p, &mut m, "idem");
    let seqs: Vec<u64> = got.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2], "{got:?}");
    assert_eq!(got[0]["data"], "hello");

    // The HTTP API shares the room's keys.
    let (status, body) = api(
        s.addr,
        "POST",
        "/api/publish",
        Some(KEY),
        Some(&json!({"room":"idem","data":"x","key":"k-2"})),
    );
    assert_eq!(
        (status, &body["seq"], &body["duplicate"]),
        (200, &json!(2), &json!(true)),
        "{body}"
    );
    let (status, body) = api(
        s.addr,
        "POST",
        "/api/publish",
        Some(KEY),
        Some(&json!({"room":"idem","data":"x","key":"k-3"})),
    );
    assert_eq!((status, &body["seq"]), (200, &json!(4)), "{body}");
    assert!(body.get("duplicate").is_none(), "{body}");
    let (status, body) = api(
        s.addr,
        "POST",
        "/api/publish",
        Some(KEY),
        Some(&json!({"room":"idem","data":"x","key":""})),
    );
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("bad_json")),
        "{body}"
    );

    // Keys are 1-64 bytes of text.
    for bad in [json!(""), json!("x".repeat(65)), json!(7), json!({"k":1})] {
        p.send(json!({"type":"publish","id":"bad","room":"idem","data":1,"key":bad}));
        let e = loop {
            let v = p.recv();
            if v["id"] == "bad" {
                break v;
            }
        };
        assert_eq!(e["code"], "bad_json", "{e}");
        assert!(e["message"].as_str().unwrap().contains("key"), "{e}");
    }
    assert_eq!(
        publish(&mut p, "e", "idem", &"x".repeat(64), json!(4))["seq"],
        5
    );
}

#[test]
fn keys_survive_a_restart_and_wait_with_a_message_for_its_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let mut s = ChildServer::start(&durable_env(path, "sync"));
    let (mut p, _) = Client::connect_welcome(&s.url("/ws"));
    let (mut m, _) = Client::connect_welcome(&s.url("/ws"));
    p.join("dur");
    m.join("dur");
    // Sent back to back: the second arrives while the first may still wait
    // for the store; both are acknowledged with the same seq, once stored.
    for (id, data) in [("a", 1), ("b", 2)] {
        p.send(json!({"type":"publish","id":id,"room":"dur","data":data,"key":"once"}));
    }
    let mut acks = Vec::new();
    while acks.len() < 2 {
        let v = p.recv();
        if v["type"] == "ack" {
            acks.push(v);
        }
    }
    acks.sort_by_key(|a| a["id"].as_str().unwrap().to_string());
    assert_eq!(acks[0]["seq"], 1, "{acks:?}");
    assert_eq!(
        (&acks[1]["seq"], &acks[1]["ts"]),
        (&json!(1), &acks[0]["ts"])
    );
    assert_eq!(acks[1]["duplicate"], true);
    // One message for the two publishes (the fence takes seq 2).
    let got = messages_before_fence(&mut p, &mut m, "dur");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["data"], 1);
    let more = publish(&mut p, "c", "dur", "twice", json!(3));
    assert_eq!(more["seq"], 3);

    // kill -9: acknowledged means stored, key included.
    s.signal(libc::SIGKILL);
    s.child.wait().unwrap();
    let s = ChildServer::start(&durable_env(path, "sync"));
    let (mut p, _) = Client::connect_welcome(&s.url("/ws"));
    p.join("dur");
    let again = publish(&mut p, "d", "dur", "once", json!("retry"));
    assert_eq!(
        (&again["seq"], &again["ts"], &again["duplicate"]),
        (&json!(1), &acks[0]["ts"], &json!(true)),
        "{again}"
    );
    assert_eq!(
        publish(&mut p, "e", "dur", "twice", json!(0))["duplicate"],
        true
    );
    assert_eq!(publish(&mut p, "f", "dur", "new", json!(4))["seq"], 4);
}

#[test]
fn a_key_used_on_one_node_is_a_duplicate_on_another() {
    let redis = RedisServer::start();
    let env = [
        ("CORECAST_LIMITS__RATE_PER_SEC", "1000000"),
        ("CORECAST_LIMITS__RATE_BURST", "1000000"),
    ];
    let n1 = cluster_node(&redis, &env);
    let n2 = cluster_node(&redis, &env);
    let (mut a, _) = Client::connect_welcome(&n1.url("/ws"));
    let (mut b, _) = Client::connect_welcome(&n2.url("/ws"));
    a.join("c-idem");
    b.join("c-idem");
    let first = publish(&mut a, "a", "c-idem", "k", json!("one"));
    assert_eq!(
        (&first["seq"], first.get("duplicate")),
        (&json!(1), None),
        "{first}"
    );
    let again = publish(&mut b, "b", "c-idem", "k", json!("two"));
    assert_eq!(
        (&again["seq"], &again["ts"], &again["duplicate"]),
        (&json!(1), &first["ts"], &json!(true)),
        "{again}"
    );
    // In one burst (one script call): the second is the duplicate.
    for id in ["c", "d"] {
        a.send(json!({"type":"publish","id":id,"room":"c-idem","data":id,"key":"burst"}));
    }
    let mut acks = Vec::new();
    while acks.len() < 2 {
        let v = a.recv();
        if v["type"] == "ack" {
            acks.push(v);
        }
    }
    assert_eq!(
        (&acks[0]["id"], &acks[0]["seq"]),
        (&json!("c"), &json!(2)),
        "{acks:?}"
    );
    assert_eq!(
        (&acks[1]["seq"], &acks[1]["duplicate"]),
        (&json!(2), &json!(true))
    );
    // (b read "one" while it waited for its ack.)
    let got = messages_before_fence(&mut a, &mut b, "c-idem");
    let data: Vec<&Value> = got.iter().map(|v| &v["data"]).collect();
    assert_eq!(data, [&json!("c")], "{got:?}");
    // Redis holds the key with its message and a queue entry to forget it.
    let held = redis.cmd(&["HGET", "cc:r:{c-idem}:k", "burst"]);
    assert!(format!("{held:?}").contains("2:"), "{held:?}");
    let ttl = redis.cmd(&["PTTL", "cc:r:{c-idem}:kq"]);
    assert!(
        matches!(ttl, redis::Value::Int(t) if t > 500_000),
        "{ttl:?}"
    );
}

/// 1 for an ack, 0 for the member's own events; anything else fails.
fn count_ack(v: &Value) -> u64 {
    match v["type"].as_str() {
        Some("ack") => 1,
        Some("message" | "joined") => 0,
        _ => panic!("{v}"),
    }
}

#[test]
fn redis_forgets_the_oldest_keys_beyond_the_cap() {
    let redis = RedisServer::start();
    let env = [
        ("CORECAST_LIMITS__RATE_PER_SEC", "1000000"),
        ("CORECAST_LIMITS__RATE_BURST", "1000000"),
        ("CORECAST_HISTORY__SIZE", "100"),
    ];
    let n = cluster_node(&redis, &env);
    let (mut p, _) = Client::connect_welcome(&n.url("/ws"));
    p.join("c-cap");
    // Past the cap (max(history.size, 10000) keys): 10 200 keyed publishes.
    let total = 10_200u64;
    let mut acked = 0;
    for start in (0..total).step_by(600) {
        let end = (start + 600).min(total);
        for i in start..end {
            p.send(json!({"type":"publish","room":"c-cap","data":i,"key":format!("k{i}")}));
        }
        while acked < end {
            acked += count_ack(&p.recv());
        }
    }
    let count = |cmd: &str, key: &str| match redis.cmd(&[cmd, key]) {
        redis::Value::Int(n) => n as u64,
        other => panic!("{other:?}"),
    };
    let held = count("HLEN", "cc:r:{c-cap}:k");
    assert!((10_000..10_000 + 64).contains(&held), "{held} keys held");
    assert_eq!(count("LLEN", "cc:r:{c-cap}:kq"), held);
    // The oldest are forgotten (published again, they are new messages);
    // the newest are still duplicates.
    let old = publish(&mut p, "old", "c-cap", "k0", json!("again"));
    assert_eq!(
        (&old["seq"], old.get("duplicate")),
        (&json!(total + 1), None),
        "{old}"
    );
    let new = publish(
        &mut p,
        "new",
        "c-cap",
        &format!("k{}", total - 1),
        json!("again"),
    );
    assert_eq!(
        (&new["seq"], &new["duplicate"]),
        (&json!(total), &json!(true)),
        "{new}"
    );
}
