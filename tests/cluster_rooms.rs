//! Rooms across nodes, against a real redis-server and two or three
//! corecast nodes as child processes: cross-node publish and ack, one total
//! order with publishers on every node, recovery with `since` on another
//! node, the HTTP API on one node reaching members on another, typing and
//! members across nodes, SSE resuming on another node, and interest (a
//! node with no member of a room receives none of its traffic).

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn two_nodes(redis: &RedisServer) -> (ChildServer, ChildServer) {
    (cluster_node(redis, &[]), cluster_node(redis, &[]))
}

#[test]
fn a_publish_on_one_node_reaches_members_on_another_and_is_acked_after_it() {
    let redis = RedisServer::start();
    let (n1, n2) = two_nodes(&redis);
    let (mut a, wa) = Client::connect_welcome(&n1.url("/ws"));
    let (mut b, wb) = Client::connect_welcome(&n2.url("/ws"));
    assert_eq!(
        wa["node"],
        n1.addr.to_string(),
        "the welcome names the node"
    );
    assert_eq!(wb["node"], n2.addr.to_string());
    let ack_a = a.join("lobby");
    let ack_b = b.join("lobby");
    assert_eq!(ack_a["seq"], 0);
    assert_eq!(ack_b["epoch"], ack_a["epoch"], "one epoch for the room");
    assert_eq!(ack_b["members"], 2, "members counted over both nodes");
    // b's `joined` reaches a across nodes (after a's own).
    loop {
        let joined = a.recv_until("joined");
        if joined["user"] == wb["user"] {
            break;
        }
    }

    a.send(json!({"type":"publish","id":"p1","room":"lobby","data":{"n":1}}));
    // The publisher is a member: its message comes before its ack.
    let m = a.recv_until("message");
    assert_eq!(
        (m["seq"].as_u64(), m["data"]["n"].as_u64()),
        (Some(1), Some(1))
    );
    let ack = a.recv();
    assert_eq!(
        (ack["type"].as_str(), ack["id"].as_str()),
        (Some("ack"), Some("p1")),
        "{ack}"
    );
    assert_eq!(ack["seq"], 1);
    let m = b.recv_until("message");
    assert_eq!(m["seq"], 1);
    assert_eq!(m["from"]["user"], wa["user"]);
    assert_eq!(m["epoch"], ack_a["epoch"]);
    assert_eq!(m["ts"], ack["ts"]);

    b.send(json!({"type":"publish","id":"p2","room":"lobby","data":{"n":2}}));
    assert_eq!(b.recv_until("message")["seq"], 2);
    assert_eq!(b.recv()["id"], "p2");
    assert_eq!(a.recv_until("message")["seq"], 2);

    let h = b.ask(json!({"type":"history","room":"lobby"}));
    let seqs: Vec<u64> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2]);
    let members = a.ask(json!({"type":"members","room":"lobby"}));
    let users: Vec<&str> = members["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user"].as_str().unwrap())
        .collect();
    assert_eq!(users.len(), 2, "{members}");
    assert!(
        users.contains(&wa["user"].as_str().unwrap())
            && users.contains(&wb["user"].as_str().unwrap())
    );
}

#[test]
fn publishers_on_three_nodes_at_once_give_every_member_one_order() {
    let redis = RedisServer::start();
    let fast = [
        ("CORECAST_LIMITS__RATE_PER_SEC", "100000"),
        ("CORECAST_LIMITS__RATE_BURST", "100000"),
    ];
    let nodes: Vec<ChildServer> = (0..3).map(|_| cluster_node(&redis, &fast)).collect();
    let mut members: Vec<Client> = Vec::new();
    for n in &nodes {
        for _ in 0..2 {
            let (mut c, _) = Client::connect_welcome(&n.url("/ws"));
            c.join("race");
            members.push(c);
        }
    }
    const PER: usize = 150;
    let threads: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let url = n.url("/ws");
            std::thread::spawn(move || {
                let (mut p, _) = Client::connect_welcome(&url);
                p.join("race");
                let mut acked = Vec::new();
                for k in 0..PER {
                    p.send(json!({"type":"publish","id":k,"room":"race","data":{"node":i,"k":k}}));
                    // Keep a few in flight without tripping the rate limit.
                    if k % 10 == 9 {
                        while acked.len() < k + 1 {
                            let v = p.recv();
                            if v["type"] == "error" {
                                panic!("publish refused: {v}");
                            }
                            if v["type"] == "ack" {
                                acked.push(v["seq"].as_u64().unwrap());
                            }
                        }
                        std::thread::sleep(Duration::from_millis(30));
                    }
                }
                acked
            })
        })
        .collect();
    let mut acked: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    acked.sort_unstable();
    let total = (3 * PER) as u64;
    assert_eq!(
        acked,
        (1..=total).collect::<Vec<_>>(),
        "every seq acked exactly once"
    );
    let mut orders: Vec<Vec<(u64, u64, u64)>> = Vec::new();
    for c in members.iter_mut() {
        let mut got = Vec::new();
        while got.len() < total as usize {
            let v = c.recv();
            if v["type"] == "message" {
                got.push((
                    v["seq"].as_u64().unwrap(),
                    v["data"]["node"].as_u64().unwrap(),
                    v["data"]["k"].as_u64().unwrap(),
                ));
            }
        }
        let seqs: Vec<u64> = got.iter().map(|g| g.0).collect();
        assert_eq!(
            seqs,
            (1..=total).collect::<Vec<_>>(),
            "no gap, no duplicate, in seq order"
        );
        orders.push(got);
    }
    for o in &orders[1..] {
        assert_eq!(
            o, &orders[0],
            "every member on every node sees the same order"
        );
    }
    // Each publisher's messages keep their own order within the total one.
    for node in 0..3u64 {
        let ks: Vec<u64> = orders[0]
            .iter()
            .filter(|g| g.1 == node)
            .map(|g| g.2)
            .collect();
        assert_eq!(ks, (0..PER as u64).collect::<Vec<_>>());
    }
}

#[test]
fn a_client_recovers_on_another_node_with_since() {
    let redis = RedisServer::start();
    let (n1, n2) = two_nodes(&redis);
    let (mut a, _) = Client::connect_welcome(&n1.url("/ws"));
    let ack = a.join("r");
    let epoch = ack["epoch"].as_str().unwrap().to_string();
    for i in 1..=3 {
        a.send(json!({"type":"publish","id":i,"room":"r","data":i}));
        a.recv_until("ack");
    }
    a.close();
    // Published while the client was away, from the other node.
    let (mut p, _) = Client::connect_welcome(&n2.url("/ws"));
    p.join("r");
    for i in 4..=7 {
        p.send(json!({"type":"publish","id":i,"room":"r","data":i}));
        assert_eq!(p.recv_until("ack")["seq"], i);
    }
    let (mut b, _) = Client::connect_welcome(&n2.url("/ws"));
    b.send(json!({"type":"join","id":"j","room":"r","since":{"epoch":epoch,"seq":3}}));
    let mut replay = Vec::new();
    let ack = loop {
        let v = b.recv();
        match v["type"].as_str() {
            Some("message") => replay.push(v["seq"].as_u64().unwrap()),
            Some("ack") => break v,
            _ => {}
        }
    };
    assert_eq!(
        replay,
        [4, 5, 6, 7],
        "exactly the missed messages, in order"
    );
    assert_eq!(
        (ack["seq"].as_u64(), ack["recovered"].as_bool()),
        (Some(7), Some(true))
    );
    p.send(json!({"type":"publish","id":8,"room":"r","data":8}));
    assert_eq!(
        b.recv_until("message")["seq"],
        8,
        "live after the replay, no gap"
    );
    // A position from another epoch cannot be recovered.
    let (mut c, _) = Client::connect_welcome(&n1.url("/ws"));
    c.send(json!({"type":"join","id":"j","room":"r","since":{"epoch":"nope","seq":3}}));
    let ack = c.recv_until("ack");
    assert_eq!(ack["recovered"], false);
    assert_eq!(ack["seq"], 8);
}

#[test]
fn the_http_api_on_one_node_reaches_members_on_another() {
    let redis = RedisServer::start();
    let key = "cluster-api-key-1";
    let env = [("CORECAST_AUTH__API_KEYS", key)];
    let n1 = cluster_node(&redis, &env);
    let n2 = cluster_node(&redis, &env);
    let (mut b, _) = Client::connect_welcome(&n2.url("/ws"));
    b.join("news");
    let (status, body) = api(
        n1.addr,
        "POST",
        "/api/publish",
        Some(key),
        Some(&json!({"room":"news","data":{"headline":"x"}})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["seq"], 1);
    let m = b.recv_until("message");
    assert_eq!(m["from"]["user"], "server");
    assert_eq!(m["data"]["headline"], "x");
    let (status, room) = api(n1.addr, "GET", "/api/rooms/news", Some(key), None);
    assert_eq!(status, 200, "{room}");
    assert_eq!(
        (room["seq"].as_u64(), room["history"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        room["members"].as_array().unwrap().len(),
        1,
        "the member on the other node"
    );
    let (status, _) = api(n1.addr, "GET", "/api/rooms/empty", Some(key), None);
    assert_eq!(status, 404, "a room nobody used");
}

#[test]
fn typing_crosses_nodes_and_skips_the_typist() {
    let redis = RedisServer::start();
    let (n1, n2) = two_nodes(&redis);
    let (mut a, wa) = Client::connect_welcome(&n1.url("/ws"));
    let (mut b, _) = Client::connect_welcome(&n2.url("/ws"));
    a.join("t");
    b.join("t");
    a.send(json!({"type":"typing","room":"t","typing":true}));
    let t = b.recv_until("typing");
    assert_eq!(
        (t["user"].as_str(), t["typing"].as_bool()),
        (wa["user"].as_str(), Some(true))
    );
    a.send(json!({"type":"typing","room":"t","typing":false}));
    assert_eq!(b.recv_until("typing")["typing"], false);
    // The typist does not hear itself.
    a.send(json!({"type":"ping","id":"x"}));
    loop {
        let v = a.recv();
        assert_ne!(v["type"], "typing", "{v}");
        if v["type"] == "pong" {
            break;
        }
    }
}

#[test]
fn a_node_without_members_of_a_room_receives_none_of_its_traffic() {
    let redis = RedisServer::start();
    let (n1, n2) = two_nodes(&redis);
    let (mut a, _) = Client::connect_welcome(&n1.url("/ws"));
    a.join("busy");
    let channel = "cc:r:{busy}";
    assert_eq!(
        redis.numsub(channel),
        1,
        "only the node with a member subscribed"
    );
    let before = redis_bytes(&n2);
    let payload = "x".repeat(1000);
    for i in 0..200 {
        a.send(json!({"type":"publish","id":i,"room":"busy","data":payload}));
        if i % 10 == 9 {
            while a.recv()["type"] != "ack" {}
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // ~200 KB went to n1; n2 read only its own heartbeats and probes.
    let read = redis_bytes(&n2) - before;
    assert!(
        read < 20_000,
        "node 2 read {read} bytes from Redis while a room it has no member in got 200 KB"
    );
    // A member on node 2 subscribes it; leaving unsubscribes after the linger.
    let (mut b, _) = Client::connect_welcome(&n2.url("/ws"));
    b.join("busy");
    assert_eq!(redis.numsub(channel), 2);
    b.send(json!({"type":"leave","id":"l","room":"busy"}));
    b.recv_until("ack");
    assert!(
        eventually(Duration::from_secs(10), || redis.numsub(channel) == 1),
        "node 2 unsubscribed a while after its last member left"
    );
}

#[test]
fn sse_resumes_on_another_node_with_last_event_id() {
    let redis = RedisServer::start();
    let (n1, n2) = two_nodes(&redis);
    let (mut p, _) = Client::connect_welcome(&n1.url("/ws"));
    p.join("feed");
    for i in 1..=2 {
        p.send(json!({"type":"publish","id":i,"room":"feed","data":i}));
        p.recv_until("ack");
    }
    let agent = ureq::Agent::new_with_config(
        ureq::config::Config::builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .build(),
    );
    let read_events = |addr, last: Option<&str>, want: usize| -> Vec<(String, Value)> {
        let mut req = agent.get(&format!("http://{addr}/sse?rooms=feed"));
        if let Some(id) = last {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.call().unwrap();
        let mut reader = std::io::BufReader::new(resp.into_body().into_reader());
        let mut out = Vec::new();
        let (mut id, mut data) = (String::new(), String::new());
        let start = Instant::now();
        while out.len() < want && start.elapsed() < Duration::from_secs(10) {
            let mut line = String::new();
            if std::io::BufRead::read_line(&mut reader, &mut line).unwrap() == 0 {
                break;
            }
            let line = line.trim_end();
            if let Some(v) = line.strip_prefix("id: ") {
                id = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = v.to_string();
            } else if line.is_empty() && !data.is_empty() {
                out.push((id.clone(), serde_json::from_str(&data).unwrap()));
                data.clear();
            }
        }
        out
    };
    // Start from seq 1 on node 1: message 2 is replayed.
    let first = read_events(n1.addr, Some("feed:1"), 1);
    assert_eq!(first[0].1["seq"], 2);
    let cursor = first[0].0.clone();
    for i in 3..=4 {
        p.send(json!({"type":"publish","id":i,"room":"feed","data":i}));
        p.recv_until("ack");
    }
    // Resume on node 2 with the cursor from node 1.
    let resumed = read_events(n2.addr, Some(&cursor), 2);
    let seqs: Vec<u64> = resumed
        .iter()
        .map(|(_, v)| v["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [3, 4], "exactly what came after the cursor");
}

/// Bytes a node's bridge read from Redis (from its `/metrics`).
fn redis_bytes(node: &ChildServer) -> u64 {
    let (status, _, body) = http_get(node.addr, "/metrics");
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix("corecast_redis_read_bytes_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no corecast_redis_read_bytes_total in /metrics"))
}
