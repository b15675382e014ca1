//! Room history over real sockets: recovery with `join` + `since` after a
//! disconnect, the window's bounds (count, age, epoch), the `history`
//! command, and a replay larger than the backlog bound.

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;

fn unlimited(c: &mut corecast::Config) {
    c.limits.rate_per_sec = 1e6;
    c.limits.rate_burst = 1e6;
}

/// Publishes `n` messages from `c` into `room` and returns their seqs (from
/// the acks), reading away the echoes.
fn publish_n(c: &mut Client, room: &str, n: usize, tag: &str) -> Vec<u64> {
    for i in 0..n {
        c.send(json!({"type":"publish","id":i,"room":room,"data":{"tag":tag,"i":i}}));
    }
    let mut seqs = Vec::new();
    while seqs.len() < n {
        let v = c.recv();
        if v["type"] == "ack" {
            seqs.push(v["seq"].as_u64().unwrap());
        }
    }
    seqs
}

#[test]
fn rejoin_with_since_replays_exactly_the_missed_messages_then_live_ones() {
    let server = TestServer::start(|c| {
        c.cores = 3;
        unlimited(c);
    });
    // Rooms with different home cores.
    for room in ["rec-a", "rec-b", "rec-c", "rec-d"] {
        let (mut a, _) = Client::connect_welcome(&server.url("/ws"));
        let (mut b, _) = Client::connect_welcome(&server.url("/ws"));
        let ack = a.join(room);
        a.recv_type("joined");
        let epoch = ack["epoch"].as_str().unwrap().to_string();
        b.join(room);
        b.recv_type("joined");
        a.recv_type("joined");
        publish_n(&mut b, room, 3, "before");
        let mut last = 0;
        for _ in 0..3 {
            let m = a.recv_type("message");
            last = m["seq"].as_u64().unwrap();
        }
        assert_eq!(last, 3);
        // A goes away; B keeps publishing.
        a.close();
        drop(a);
        publish_n(&mut b, room, 5, "missed");
        // A comes back and asks for what it missed.
        let (mut a, _) = Client::connect_welcome(&server.url("/ws"));
        a.send(json!({"type":"join","id":"r","room":room,"since":{"epoch":epoch,"seq":last}}));
        let mut replayed = Vec::new();
        let ack = loop {
            let v = a.recv();
            match v["type"].as_str().unwrap() {
                "message" => replayed.push(v),
                "ack" => break v,
                other => panic!("{other}: {v}"),
            }
        };
        assert_eq!(ack["recovered"], true, "{ack}");
        assert_eq!(ack["seq"], 8);
        let seqs: Vec<u64> = replayed
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, [4, 5, 6, 7, 8], "exactly the missed ones, in order");
        assert!(
            replayed
                .iter()
                .all(|m| m["data"]["tag"] == "missed" && m["epoch"] == epoch.as_str())
        );
        // Then live messages continue the sequence, without duplicates.
        assert_eq!(a.recv_type("joined")["room"], room);
        publish_n(&mut b, room, 2, "live");
        let live: Vec<u64> = (0..2)
            .map(|_| a.recv_type("message")["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(live, [9, 10]);
    }
}

#[test]
fn nothing_missed_recovers_with_no_replay() {
    let server = TestServer::start(unlimited);
    let (mut a, _) = Client::connect_welcome(&server.url("/ws"));
    let ack = a.join("quiet");
    a.recv_type("joined");
    publish_n(&mut a, "quiet", 2, "x");
    let epoch = ack["epoch"].clone();
    let (mut b, _) = Client::connect_welcome(&server.url("/ws"));
    let ack =
        b.request(json!({"type":"join","id":1,"room":"quiet","since":{"epoch":epoch,"seq":2}}));
    assert_eq!(ack["type"], "ack", "no replay before the ack: {ack}");
    assert_eq!(ack["recovered"], true);
}

#[test]
fn a_position_older_than_the_window_or_another_epoch_is_not_recovered() {
    let server = TestServer::start(|c| {
        unlimited(c);
        c.history.size = 5;
    });
    let (mut a, _) = Client::connect_welcome(&server.url("/ws"));
    let epoch = a.join("small")["epoch"].clone();
    a.recv_type("joined");
    publish_n(&mut a, "small", 10, "x"); // window keeps 6..=10
    let (mut b, _) = Client::connect_welcome(&server.url("/ws"));
    for (since, recovered, replay) in [
        (json!({"epoch":epoch,"seq":4}), false, 0), // 5 is gone
        (json!({"epoch":epoch,"seq":5}), true, 5),  // 6..=10 are there
        (json!({"epoch":"not-it","seq":9}), false, 0),
        (json!({"epoch":epoch,"seq":11}), false, 0), // from the future
    ] {
        b.send(json!({"type":"join","id":"j","room":"small","since":since}));
        let mut n = 0;
        let ack = loop {
            let v = b.recv();
            match v["type"].as_str().unwrap() {
                "message" => n += 1,
                "joined" => {}
                "ack" => break v,
                other => panic!("{other}: {v}"),
            }
        };
        assert_eq!(ack["recovered"], recovered, "since {since}: {ack}");
        assert_eq!(n, replay, "since {since}");
    }
}

#[test]
fn history_pages_backwards_and_needs_membership() {
    let server = TestServer::start(unlimited);
    let (mut a, _) = Client::connect_welcome(&server.url("/ws"));
    let h = a.request(json!({"type":"history","id":1,"room":"hist"}));
    assert_eq!(h["code"], "not_member", "{h}");
    a.join("hist");
    a.recv_type("joined");
    publish_n(&mut a, "hist", 12, "x");
    let page = |c: &mut Client, cmd: Value| -> Vec<u64> {
        let v = c.request(cmd);
        assert_eq!(v["type"], "history", "{v}");
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                assert_eq!(m["type"], "message");
                assert_eq!(m["room"], "hist");
                m["seq"].as_u64().unwrap()
            })
            .collect()
    };
    assert_eq!(
        page(&mut a, json!({"type":"history","room":"hist","limit":3})),
        [10, 11, 12]
    );
    assert_eq!(
        page(
            &mut a,
            json!({"type":"history","room":"hist","before":10,"limit":4})
        ),
        [6, 7, 8, 9]
    );
    assert_eq!(
        page(&mut a, json!({"type":"history","id":"all","room":"hist"})).len(),
        12,
        "default limit 50 covers all 12"
    );
    assert_eq!(
        page(&mut a, json!({"type":"history","room":"hist","before":1})),
        Vec::<u64>::new()
    );
    let v = a.request(json!({"type":"history","id":"x","room":"hist","limit":1}));
    assert_eq!(v["id"], "x");
}

#[test]
fn history_expires_with_its_ttl() {
    let server = TestServer::start(|c| {
        unlimited(c);
        c.history.ttl = 1;
    });
    let (mut a, _) = Client::connect_welcome(&server.url("/ws"));
    let epoch = a.join("brief")["epoch"].clone();
    a.recv_type("joined");
    publish_n(&mut a, "brief", 3, "x");
    // Held at first, so it is the ttl that empties it below.
    let v = a.request(json!({"type":"history","room":"brief"}));
    assert_eq!(v["messages"].as_array().map(Vec::len), Some(3), "{v}");
    // The time that must pass (1 s ttl, plus margin), not a wait for the
    // server: expiry is applied when the history is read.
    std::thread::sleep(Duration::from_millis(2100));
    let v = a.request(json!({"type":"history","room":"brief"}));
    assert_eq!(v["messages"], json!([]), "{v}");
    let (mut b, _) = Client::connect_welcome(&server.url("/ws"));
    let ack = b.request(json!({"type":"join","room":"brief","since":{"epoch":epoch,"seq":1}}));
    assert_eq!(ack["recovered"], false, "{ack}");
}

/// A replay may be larger than the backlog bound: it is the history's own
/// frames, and closing with 4009 would make the client rejoin and hit the
/// same wall forever. A member that then stops reading is still closed
/// once live traffic passes the bound beyond what is left of its replay.
#[test]
fn a_replay_bigger_than_the_backlog_bound_is_delivered_whole() {
    let server = TestServer::start(|c| {
        unlimited(c);
        c.limits.max_message = 2048;
        c.limits.max_backlog = 16 * 1024;
        c.history.size = 100;
    });
    let (mut a, _) = Client::connect_welcome(&server.url("/ws"));
    let epoch = a.join("big")["epoch"].clone();
    a.recv_type("joined");
    let blob = "y".repeat(1500);
    let publish = |a: &mut Client, i: usize| {
        a.send(json!({"type":"publish","room":"big","data":{"i":i,"blob":blob}}));
        a.recv_until("message");
        a.recv_until("ack");
    };
    for i in 0..60 {
        publish(&mut a, i);
    }
    // 60 × ~1.6 KiB of replay: six times the 16 KiB bound, all of it arrives.
    let (mut b, _) = Client::connect_welcome(&server.url("/ws"));
    b.send(json!({"type":"join","id":1,"room":"big","since":{"epoch":epoch,"seq":0}}));
    let mut got = Vec::new();
    loop {
        let m = b.recv();
        if m["type"] == "message" {
            got.push(m["data"]["i"].as_u64().unwrap());
        } else if m["type"] == "ack" {
            assert_eq!(m["recovered"], true, "{m}");
            break;
        }
    }
    assert_eq!(got, (0..60).collect::<Vec<u64>>());

    // A member that replays and then never reads: closed by live traffic.
    let addr = server.addr;
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let stream: std::net::TcpStream = sock.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let (ws, _) = tungstenite::client(server.url("/ws").as_str(), stream).expect("upgrade");
    let mut c = Client { ws };
    c.recv_type("welcome");
    c.send(json!({"type":"join","room":"big","since":{"epoch":epoch,"seq":0}}));
    std::thread::sleep(std::time::Duration::from_millis(200));
    for i in 60..4000 {
        publish(&mut a, i);
    }
    let texts = c.expect_close(4009);
    assert!(texts.len() < 4000, "cut off: {} frames", texts.len());
}
