//! Users across nodes, against a real redis-server and corecast nodes as
//! child processes: presence per user over every node (statuses, the grace,
//! a user whose node was killed), direct messages and notifications with
//! `delivered` counted over nodes, broadcasts, and the cluster in
//! `/api/stats`.

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const KEY: &str = "cluster-api-key-1";

fn node(redis: &RedisServer) -> ChildServer {
    cluster_node(
        redis,
        &[
            ("CORECAST_AUTH__SECRET", SECRET),
            ("CORECAST_AUTH__API_KEYS", KEY),
        ],
    )
}

fn connect(n: &ChildServer, user: &str, name: &str) -> Client {
    let t = token(user, |t| t.name = Some(name.into()));
    Client::connect_welcome(&n.url(&format!("/ws?token={t}"))).0
}

#[test]
fn presence_is_per_user_over_every_node_and_offline_waits_for_the_grace() {
    let redis = RedisServer::start();
    let (n1, n2) = (node(&redis), node(&redis));
    let mut watcher = connect(&n1, "w", "Watcher");
    watcher.join("pres");
    let mut a1 = connect(&n1, "ann", "Ann");
    let mut a2 = connect(&n2, "ann", "Ann");
    a1.join("pres");
    a2.join("pres");
    let m = watcher.ask(json!({"type":"members","room":"pres"}));
    let ann: Vec<&Value> = m["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["user"] == "ann")
        .collect();
    assert_eq!(ann.len(), 1, "ann once, whatever her nodes: {m}");
    assert_eq!(
        (ann[0]["name"].as_str(), ann[0]["status"].as_str()),
        (Some("Ann"), Some("online"))
    );

    // A status set on node 2 reaches the watcher on node 1, once.
    a2.send(json!({"type":"presence","status":"away"}));
    assert_eq!(watcher.presence_of("ann")["status"], "away");
    watcher.no_presence_of("ann", 400);
    assert!(
        eventually(WAIT, || {
            let m = watcher.ask(json!({"type":"members","room":"pres"}));
            m["users"]
                .as_array()
                .unwrap()
                .iter()
                .any(|u| u["user"] == "ann" && u["status"] == "away")
        }),
        "members shows the status on every node"
    );
    // Her node-1 connection going away changes nothing (she is on node 2);
    // the last one makes her offline, only after the grace (1 s).
    drop(a1);
    watcher.no_presence_of("ann", 1800);
    let gone = Instant::now();
    drop(a2);
    let v = watcher.presence_of("ann");
    assert_eq!(v["status"], "offline");
    assert!(
        gone.elapsed() >= Duration::from_millis(900),
        "offline came before the grace"
    );
}

#[test]
fn a_reconnect_to_another_node_within_the_grace_does_not_flap() {
    let redis = RedisServer::start();
    let (n1, n2) = (node(&redis), node(&redis));
    let mut watcher = connect(&n1, "w", "W");
    watcher.join("flap");
    let mut b = connect(&n1, "bob", "Bob");
    b.join("flap");
    drop(b);
    std::thread::sleep(Duration::from_millis(300));
    let mut b = connect(&n2, "bob", "Bob");
    b.join("flap");
    watcher.no_presence_of("bob", 2500);
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
fn the_users_of_a_killed_node_leave_and_go_offline() {
    let redis = RedisServer::start();
    let n1 = node(&redis);
    let mut n2 = node(&redis);
    let mut watcher = connect(&n1, "w", "W");
    watcher.join("dead");
    let mut c = connect(&n2, "carl", "Carl");
    c.join("dead");
    loop {
        let v = watcher.recv_until("joined");
        if v["user"] == "carl" {
            break;
        }
    }
    // kill -9: no goodbye; the node's registration expires and another
    // node reaps it.
    n2.child.kill().unwrap();
    n2.child.wait().unwrap();
    let start = Instant::now();
    let (mut left, mut offline) = (false, false);
    while !(left && offline) {
        assert!(
            start.elapsed() < Duration::from_secs(45),
            "carl still there after 45 s; node 1 log: {:#?}",
            n1.log()
        );
        match watcher.recv_within(1000) {
            Some(v) if v["type"] == "left" && v["user"] == "carl" => left = true,
            Some(v) if v["type"] == "presence" && v["user"] == "carl" => {
                assert_eq!(v["status"], "offline");
                offline = true;
            }
            _ => {}
        }
    }
    let m = watcher.ask(json!({"type":"members","room":"dead"}));
    assert!(
        !m["users"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["user"] == "carl"),
        "{m}"
    );
    let (status, stats) = api(n1.addr, "GET", "/api/stats", Some(KEY), None);
    assert_eq!(status, 200);
    assert_eq!(
        stats["cluster"]["nodes"], 1,
        "the dead node is gone from the cluster: {stats}"
    );
}

#[test]
fn direct_and_notify_reach_every_connection_on_every_node() {
    let redis = RedisServer::start();
    let (n1, n2) = (node(&redis), node(&redis));
    let mut d1 = connect(&n1, "dora", "Dora");
    let mut d2 = connect(&n2, "dora", "Dora");
    let mut s = connect(&n1, "sam", "Sam");
    let delivered = |s: &mut Client| s.ask(json!({"type":"direct","to":"dora","data":{"hi":1}}));
    assert!(
        eventually(WAIT, || delivered(&mut s)["delivered"] == 2),
        "both of dora's connections (one per node) counted"
    );
    for d in [&mut d1, &mut d2] {
        let v = d.recv_until("direct");
        assert_eq!(v["from"]["user"], "sam");
        assert_eq!(v["data"]["hi"], 1);
    }
    let (status, body) = api(
        n2.addr,
        "POST",
        "/api/notify",
        Some(KEY),
        Some(&json!({"users":["dora","sam","nobody"],"data":{"n":1}})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["delivered"], 3, "2 of dora's and sam's one");
    assert_eq!(d1.recv_until("notification")["data"]["n"], 1);
    assert_eq!(d2.recv_until("notification")["data"]["n"], 1);
    assert_eq!(s.recv_until("notification")["data"]["n"], 1);
    let v = s.ask(json!({"type":"direct","to":"nobody","data":1}));
    assert_eq!(v["delivered"], 0);
}

#[test]
fn a_broadcast_reaches_every_node_and_stats_report_the_cluster() {
    let redis = RedisServer::start();
    let nodes = [node(&redis), node(&redis), node(&redis)];
    let mut clients: Vec<Client> = nodes.iter().map(|n| connect(n, "u", "U")).collect();
    clients.push(connect(&nodes[2], "v", "V"));
    let (status, body) = api(
        nodes[0].addr,
        "POST",
        "/api/broadcast",
        Some(KEY),
        Some(&json!({"data":{"all":true}})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["delivered"], 4, "every connection of every node");
    for c in clients.iter_mut() {
        assert_eq!(c.recv_until("notification")["data"]["all"], true);
    }
    assert!(
        eventually(Duration::from_secs(10), || {
            let (_, s) = api(nodes[1].addr, "GET", "/api/stats", Some(KEY), None);
            s["cluster"]["nodes"] == 3 && s["cluster"]["connections"] == 4
        }),
        "stats report the cluster"
    );
    let (_, s) = api(nodes[1].addr, "GET", "/api/stats", Some(KEY), None);
    assert_eq!(s["node"], nodes[1].addr.to_string());
    assert_eq!(s["connections"], 1, "this node's own figures too: {s}");
}
