//! Presence, typing, members and direct messages over real sockets, with
//! the server forced to 2 cores and a user's connections placed on
//! different cores (asserted from the `welcome`'s `core`).

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;

fn server(grace: u64) -> TestServer {
    TestServer::with_auth(|c| {
        c.presence.grace = grace;
        c.limits.rate_per_sec = 1e6;
        c.limits.rate_burst = 1e6;
    })
}

/// Connects as `user` until the connection lands on `core`.
fn connect_on(s: &TestServer, user: &str, name: &str, core: u64) -> Client {
    let t = token(user, |t| t.name = Some(name.into()));
    for _ in 0..200 {
        let (c, w) = Client::connect_welcome(&s.url(&format!("/ws?token={t}")));
        if w["core"] == core {
            return c;
        }
    }
    panic!("no connection landed on core {core}");
}

fn join(c: &mut Client, room: &str) -> Value {
    let a = c.ask(json!({"type":"join","room":room}));
    assert_eq!(a["type"], "ack", "{a}");
    a
}

#[test]
fn presence_is_per_user_across_cores_and_offline_waits_for_the_grace() {
    let s = server(1);
    let mut watcher = connect_on(&s, "w", "Watcher", 0);
    join(&mut watcher, "pres");
    let mut a0 = connect_on(&s, "ann", "Ann", 0);
    let mut a1 = connect_on(&s, "ann", "Ann", 1);
    join(&mut a0, "pres");
    join(&mut a1, "pres");
    // members lists ann once, online, with her name, from any core.
    let m = watcher.ask(json!({"type":"members","room":"pres"}));
    assert_eq!(m["type"], "members", "{m}");
    let users = m["users"].as_array().unwrap();
    let ann: Vec<&Value> = users.iter().filter(|u| u["user"] == "ann").collect();
    assert_eq!(ann.len(), 1, "{m}");
    assert_eq!(ann[0]["status"], "online");
    assert_eq!(ann[0]["name"], "Ann");
    // A status set on one connection reaches the room once.
    a1.send(json!({"type":"presence","status":"away"}));
    assert_eq!(watcher.presence_of("ann")["status"], "away");
    watcher.no_presence_of("ann", 300);
    let m = watcher.ask(json!({"type":"members","room":"pres"}));
    let ann = m["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user"] == "ann")
        .cloned();
    assert_eq!(ann.unwrap()["status"], "away", "{m}");
    // One connection going away changes nothing; the second one makes
    // her offline, but only after the grace.
    drop(a0);
    watcher.no_presence_of("ann", 1500);
    let gone = std::time::Instant::now();
    drop(a1);
    let v = watcher.presence_of("ann");
    assert_eq!(v["status"], "offline");
    assert!(
        gone.elapsed() >= Duration::from_millis(900),
        "offline came before the grace"
    );
    // And not much after it (1 s grace; the slack is for a loaded machine).
    assert!(
        gone.elapsed() < Duration::from_secs(5),
        "offline came {:?} after the last connection, for a 1 s grace",
        gone.elapsed()
    );
}

#[test]
fn a_quick_reconnect_does_not_flap() {
    let s = server(2);
    let mut watcher = connect_on(&s, "w", "W", 1);
    join(&mut watcher, "flap");
    let mut b = connect_on(&s, "bob", "Bob", 0);
    join(&mut b, "flap");
    drop(b);
    std::thread::sleep(Duration::from_millis(300));
    let mut b = connect_on(&s, "bob", "Bob", 1);
    join(&mut b, "flap");
    watcher.no_presence_of("bob", 2600);
    // Still listed as a member.
    let m = watcher.ask(json!({"type":"members","room":"flap"}));
    assert!(
        m["users"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["user"] == "bob"),
        "{m}"
    );
}

#[test]
fn typing_is_conflated_not_echoed_and_expires() {
    let s = server(5);
    let mut a = connect_on(&s, "ann", "Ann", 0);
    let mut b = connect_on(&s, "bob", "Bob", 1);
    join(&mut a, "chat");
    join(&mut b, "chat");
    // A burst of typing commands: one event for bob, none for ann herself.
    for _ in 0..10 {
        a.send(json!({"type":"typing","room":"chat","typing":true}));
    }
    let v = b.recv_until("typing");
    assert_eq!(
        (v["user"].clone(), v["typing"].clone()),
        (json!("ann"), json!(true))
    );
    let mut more = 0;
    while let Some(v) = b.recv_within(400) {
        if v["type"] == "typing" {
            more += 1;
        }
    }
    assert_eq!(more, 0, "the burst was conflated into one event");
    while let Some(v) = a.recv_within(200) {
        assert_ne!(v["type"], "typing", "not echoed to the typist: {v}");
    }
    // An explicit stop is sent at once.
    a.send(json!({"type":"typing","room":"chat","typing":false}));
    let v = b.recv_until("typing");
    assert_eq!(v["typing"], false);
    // Without a refresh, typing ends by itself after 6 s.
    a.send(json!({"type":"typing","room":"chat","typing":true}));
    assert_eq!(b.recv_until("typing")["typing"], true);
    let start = std::time::Instant::now();
    let v = loop {
        match b.recv_within(9000) {
            Some(v) if v["type"] == "typing" => break v,
            Some(_) => {}
            None => panic!("typing never expired"),
        }
    };
    assert_eq!(v["typing"], false);
    assert!(
        start.elapsed() >= Duration::from_millis(5000),
        "{:?}",
        start.elapsed()
    );
    // Typing needs membership.
    let e = a.ask(json!({"type":"typing","room":"elsewhere","typing":true}));
    assert_eq!(e["code"], "not_member");
}

#[test]
fn direct_messages_reach_every_connection_of_the_user_on_both_cores() {
    let s = server(5);
    let mut sender = connect_on(&s, "ann", "Ann", 0);
    let mut c0 = connect_on(&s, "bob", "Bob", 0);
    let mut c1 = connect_on(&s, "bob", "Bob", 1);
    // A connection is registered at its user's home core right after its
    // welcome went out; give that message its moment.
    assert!(eventually(WAIT, || {
        let ack = sender.ask(json!({"type":"direct","to":"bob","data":{"text":"hi"}}));
        assert_eq!(ack["type"], "ack", "{ack}");
        ack["delivered"] == 2
    }));
    for c in [&mut c0, &mut c1] {
        let d = c.recv_until("direct");
        assert_eq!(d["from"]["user"], "ann");
        assert_eq!(d["from"]["name"], "Ann");
        assert_eq!(d["data"], json!({"text":"hi"}));
        assert!(d["ts"].as_u64().unwrap() > 0);
    }
    // Nobody home: delivered 0.
    let ack = sender.ask(json!({"type":"direct","to":"nobody","data":1}));
    assert_eq!(ack["delivered"], 0, "{ack}");
    // After one of bob's connections left, 1.
    drop(c1);
    assert!(eventually(WAIT, || {
        sender.ask(json!({"type":"direct","to":"bob","data":2}))["delivered"] == 1
    }));
    let e = sender.ask(json!({"type":"direct","to":"","data":1}));
    assert_eq!(e["type"], "error", "{e}");
}
