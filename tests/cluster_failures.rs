//! Failures in cluster mode, against a real redis-server and corecast nodes
//! as child processes: Redis stopped and restarted mid-run (errors and 503
//! while it is away, recovery without restarting anything, nothing
//! acknowledged lost; with data lost, a new epoch reported), a node killed
//! with its clients resuming on another, and a pub/sub connection that
//! silently stops delivering (caught by the probe).

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const KEY: &str = "cluster-api-key-1";

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("CORECAST_AUTH__API_KEYS", KEY),
        ("CORECAST_LIMITS__RATE_PER_SEC", "100000"),
        ("CORECAST_LIMITS__RATE_BURST", "100000"),
    ]
}

/// Publishes `n` messages one at a time; returns the acked seqs and the
/// error codes of the refused ones.
fn publish_some(c: &mut Client, room: &str, n: usize) -> (Vec<u64>, Vec<String>) {
    let (mut acked, mut refused) = (Vec::new(), Vec::new());
    for i in 0..n {
        c.send(json!({"type":"publish","id":format!("p{i}"),"room":room,"data":i}));
        loop {
            let v = c.recv();
            if v["id"] == format!("p{i}") {
                match v["type"].as_str() {
                    Some("ack") => acked.push(v["seq"].as_u64().unwrap()),
                    _ => refused.push(v["code"].as_str().unwrap_or("").to_string()),
                }
                break;
            }
        }
    }
    (acked, refused)
}

/// Reads `message` seqs until `want` (all of them) arrived.
fn collect_until(c: &mut Client, want: &BTreeSet<u64>) -> Vec<u64> {
    let mut got = Vec::new();
    let start = Instant::now();
    while !want.iter().all(|s| got.contains(s)) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "got {got:?}, want {want:?}"
        );
        let v = c.recv();
        if v["type"] == "message" {
            got.push(v["seq"].as_u64().unwrap());
        }
    }
    got
}

#[test]
fn redis_down_and_back_errors_then_recovers_with_nothing_acknowledged_lost() {
    // appendfsync always: what Redis acknowledged survives its restart.
    let mut redis = RedisServer::start_with(&[
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    ]);
    let n1 = cluster_node(&redis, &env());
    let n2 = cluster_node(&redis, &env());
    let (mut p, _) = Client::connect_welcome(&n1.url("/ws"));
    let epoch = p.join("durable")["epoch"].clone();
    let (mut m, _) = Client::connect_welcome(&n2.url("/ws"));
    m.join("durable");
    let (acked1, refused) = publish_some(&mut p, "durable", 20);
    assert!(refused.is_empty(), "{refused:?}");

    redis.kill();
    assert!(
        wait_health(n1.addr, 503, WAIT),
        "/health says 503 while Redis is away"
    );
    let (_, _, health) = http_get(n1.addr, "/health");
    assert!(health.contains("\"redis\":\"down\""), "{health}");
    let (_, _, metrics) = http_get(n1.addr, "/metrics");
    assert!(metrics.contains("corecast_redis_up 0"), "{metrics}");
    let (_, refused) = publish_some(&mut p, "durable", 3);
    assert_eq!(
        refused, ["unavailable"; 3],
        "publishes fail while Redis is away"
    );
    let v = p.ask(json!({"type":"direct","to":"someone","data":1}));
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some("unavailable")),
        "{v}"
    );
    let (status, body) = api(
        n1.addr,
        "POST",
        "/api/publish",
        Some(KEY),
        Some(&json!({"room":"durable","data":1})),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );

    redis.restart();
    assert!(
        wait_health(n1.addr, 200, Duration::from_secs(15)),
        "back without a restart"
    );
    assert!(wait_health(n2.addr, 200, Duration::from_secs(15)));
    let (acked2, refused) = publish_some(&mut p, "durable", 20);
    assert!(refused.is_empty(), "{refused:?}");
    // The connections stayed open; the member got every acknowledged
    // message, in order, once.
    let want: BTreeSet<u64> = acked1.iter().chain(&acked2).copied().collect();
    let got = collect_until(&mut m, &want);
    let mut sorted = got.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(got, sorted, "in order, no duplicate");
    // The same epoch, and the history holds every acknowledged message.
    let h = m.ask(json!({"type":"history","room":"durable","limit":500}));
    assert!(
        h["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["epoch"] == epoch)
    );
    let in_history: BTreeSet<u64> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["seq"].as_u64().unwrap())
        .collect();
    assert!(
        want.is_subset(&in_history),
        "history {in_history:?} lacks some of {want:?}"
    );
}

#[test]
fn a_redis_restart_that_lost_the_data_is_reported_as_a_new_epoch() {
    let mut redis = RedisServer::start();
    let n1 = cluster_node(&redis, &env());
    let n2 = cluster_node(&redis, &env());
    let (mut p, _) = Client::connect_welcome(&n1.url("/ws"));
    let old = p.join("fragile")["epoch"].clone();
    let (mut m, _) = Client::connect_welcome(&n2.url("/ws"));
    m.join("fragile");
    let (acked, _) = publish_some(&mut p, "fragile", 5);
    collect_until(&mut m, &acked.iter().copied().collect());
    redis.kill();
    redis.restart(); // empty: no persistence
    assert!(wait_health(n2.addr, 200, Duration::from_secs(15)));
    // The member cannot continue its position: closed with 4009 (resume
    // with since), and the resume reports the loss.
    let (code, _, _) = m.read_until_close();
    assert_eq!(code, Some(4009));
    let (mut m, _) = Client::connect_welcome(&n2.url("/ws"));
    m.send(json!({"type":"join","id":"j","room":"fragile","since":{"epoch":old,"seq":5}}));
    let ack = m.recv_until("ack");
    assert_eq!(ack["recovered"], false, "{ack}");
    assert_ne!(ack["epoch"], old, "a new epoch");
}

#[test]
fn clients_of_a_killed_node_resume_on_another_and_miss_nothing_acknowledged() {
    let redis = RedisServer::start();
    let mut a = cluster_node(&redis, &env());
    let b = cluster_node(&redis, &env());
    // Members on node A, the publisher on node B.
    let mut members: Vec<(Client, Value, u64)> = (0..3)
        .map(|_| {
            let (mut c, _) = Client::connect_welcome(&a.url("/ws"));
            let ack = c.join("survive");
            (c, ack["epoch"].clone(), 0)
        })
        .collect();
    let (mut p, _) = Client::connect_welcome(&b.url("/ws"));
    p.join("survive");
    let (acked1, _) = publish_some(&mut p, "survive", 10);
    let mut seen: Vec<Vec<u64>> = Vec::new();
    for (c, _, last) in members.iter_mut() {
        let got = collect_until(c, &acked1.iter().copied().collect());
        *last = *got.last().unwrap();
        seen.push(got);
    }
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    // Published while the members are away.
    let (acked2, refused) = publish_some(&mut p, "survive", 10);
    assert!(refused.is_empty(), "{refused:?}");
    for (i, (_, epoch, last)) in members.iter().enumerate() {
        let (mut c, _) = Client::connect_welcome(&b.url("/ws"));
        c.send(json!({"type":"join","id":"j","room":"survive","since":{"epoch":epoch,"seq":last}}));
        let mut replay = Vec::new();
        let ack = loop {
            let v = c.recv();
            match v["type"].as_str() {
                Some("message") => replay.push(v["seq"].as_u64().unwrap()),
                Some("ack") => break v,
                _ => {}
            }
        };
        assert_eq!(ack["recovered"], true, "{ack}");
        seen[i].extend(replay);
        let all: Vec<u64> = acked1.iter().chain(&acked2).copied().collect();
        assert_eq!(
            seen[i], all,
            "member {i}: every acknowledged message exactly once, in order"
        );
    }
}

/// A TCP proxy in front of Redis that can blackhole what Redis sends on
/// the pub/sub connections open so far (they stay open but deliver
/// nothing, as seen elsewhere after failovers); later connections pass.
struct Proxy {
    port: u16,
    /// Connections numbered below this are blackholed.
    blackhole_below: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
}

impl Proxy {
    fn start(redis_port: u16) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let blackhole_below = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let (bh, count) = (blackhole_below.clone(), accepted.clone());
        std::thread::spawn(move || {
            for client in l.incoming().flatten() {
                let id = count.fetch_add(1, Ordering::Relaxed);
                let Ok(server) = TcpStream::connect(("127.0.0.1", redis_port)) else {
                    continue;
                };
                let pubsub = Arc::new(AtomicBool::new(false));
                let (mut c_read, mut s_write) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let flag = pubsub.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = c_read.read(&mut buf) {
                        if n == 0 || s_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        if String::from_utf8_lossy(&buf[..n]).contains(":sub\r\n") {
                            flag.store(true, Ordering::Relaxed);
                        }
                    }
                });
                let (mut s_read, mut c_write) = (server, client);
                let bh = bh.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = s_read.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        if pubsub.load(Ordering::Relaxed) && id < bh.load(Ordering::Relaxed) {
                            continue; // swallowed
                        }
                        if c_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Proxy {
            port,
            blackhole_below,
            accepted,
        }
    }
}

#[test]
fn a_pubsub_connection_that_silently_stops_delivering_is_replaced() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.port);
    let url = format!("redis://127.0.0.1:{}", proxy.port);
    let mut e = env();
    e.push(("CORECAST_CLUSTER__REDIS", &url));
    let n1 = cluster_node(&redis, &e);
    let n2 = cluster_node(&redis, &env());
    let (mut m, _) = Client::connect_welcome(&n1.url("/ws"));
    m.join("quiet");
    let (mut p, _) = Client::connect_welcome(&n2.url("/ws"));
    p.join("quiet");
    let (acked1, _) = publish_some(&mut p, "quiet", 3);
    collect_until(&mut m, &acked1.iter().copied().collect());
    let open = proxy.accepted.load(Ordering::Relaxed);
    proxy.blackhole_below.store(open, Ordering::Relaxed);
    let (acked2, _) = publish_some(&mut p, "quiet", 3);
    // Nothing arrives through the dead subscription...
    assert!(m.recv_within(500).is_none_or(|v| v["type"] != "message"));
    // ...until the probe notices and the node resubscribes (the new
    // connection is not blackholed) and reads the gap from the stream.
    let got = collect_until(&mut m, &acked2.iter().copied().collect());
    assert_eq!(got, acked2, "the missed messages, in order, once");
    assert!(
        n1.log()
            .iter()
            .any(|l| l.contains("a probe did not come back")),
        "the probe caught it: {:#?}",
        n1.log()
    );
    let (acked3, _) = publish_some(&mut p, "quiet", 2);
    assert_eq!(
        collect_until(&mut m, &acked3.iter().copied().collect()),
        acked3
    );
}

#[test]
fn a_redis_behind_a_node_under_the_same_epoch_gets_a_new_epoch() {
    // What a restart from an old snapshot or a lagging replica looks like:
    // the room's seq in Redis goes back while its epoch stays. Positions
    // must not be reused for other messages.
    let redis = RedisServer::start();
    let n1 = cluster_node(&redis, &env());
    let (mut m, _) = Client::connect_welcome(&n1.url("/ws"));
    let old = m.join("rolled")["epoch"].clone();
    let (acked, _) = publish_some(&mut m, "rolled", 5);
    assert_eq!(acked, [1, 2, 3, 4, 5]);
    redis.cmd(&["HSET", "cc:r:{rolled}:m", "s", "2"]);
    redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    // The node resubscribes, sees Redis behind its position, and the room
    // moves to a new epoch: the member resumes and learns of the gap.
    let (code, _, _) = m.read_until_close();
    assert_eq!(code, Some(4009));
    let (mut m, _) = Client::connect_welcome(&n1.url("/ws"));
    m.send(json!({"type":"join","id":"j","room":"rolled","since":{"epoch":old,"seq":5}}));
    let ack = m.recv_until("ack");
    assert_eq!(ack["recovered"], false, "{ack}");
    assert_ne!(ack["epoch"], old);
    let (acked, _) = publish_some(&mut m, "rolled", 1);
    let h = m.ask(json!({"type":"history","room":"rolled"}));
    let last = h["messages"].as_array().unwrap().last().cloned().unwrap();
    assert_eq!(
        (last["seq"].as_u64(), &last["epoch"]),
        (Some(acked[0]), &ack["epoch"])
    );
}

#[test]
fn a_node_reaped_while_alive_puts_its_members_back() {
    let redis = RedisServer::start();
    let n1 = cluster_node(&redis, &env());
    let n2 = cluster_node(&redis, &env());
    let (mut w, _) = Client::connect_welcome(&n1.url("/ws"));
    w.join("alive");
    let (mut c, wc) = Client::connect_welcome(&n2.url("/ws"));
    c.join("alive");
    let user = wc["user"].as_str().unwrap().to_string();
    // Make node 2's registration look expired: node 1 reaps it.
    redis.cmd(&["ZADD", "cc:{nodes}", "0", &n2.addr.to_string()]);
    loop {
        let v = w.recv();
        if v["type"] == "left" && v["user"] == user {
            break;
        }
    }
    // Node 2 finds itself gone at its next heartbeat and puts its member
    // back; the member's connection never noticed.
    loop {
        let v = w.recv();
        if v["type"] == "joined" && v["user"] == user {
            break;
        }
    }
    let m = w.ask(json!({"type":"members","room":"alive"}));
    assert!(
        m["users"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["user"] == user.as_str()),
        "{m}"
    );
    c.send(json!({"type":"publish","id":"x","room":"alive","data":1}));
    assert_eq!(w.recv_until("message")["from"]["user"], user.as_str());
}

#[test]
fn an_offline_check_redis_missed_runs_when_it_is_back() {
    let mut redis = RedisServer::start_with(&[
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    ]);
    let n1 = cluster_node(&redis, &env());
    let n2 = cluster_node(&redis, &env());
    let (mut w, _) = Client::connect_welcome(&n2.url("/ws"));
    w.join("gone");
    let (mut u, wu) = Client::connect_welcome(&n1.url("/ws"));
    u.join("gone");
    let user = wu["user"].as_str().unwrap().to_string();
    drop(u);
    // Redis is away when the grace (1 s) ends on node 1.
    std::thread::sleep(Duration::from_millis(300));
    redis.kill();
    std::thread::sleep(Duration::from_millis(1500));
    redis.restart();
    // Once Redis is back the check runs: the user is gone from Redis (not
    // left online forever). The `presence` event itself may race node 2's
    // resubscription: events without a seq are best effort across an outage.
    let key = format!("cc:u:{{{user}}}");
    assert!(
        eventually(Duration::from_secs(20), || {
            redis.try_cmd(&["EXISTS", &key]).ok() == Some(redis::Value::Int(0))
                && redis.try_cmd(&["SISMEMBER", "cc:online", &user]).ok()
                    == Some(redis::Value::Int(0))
        }),
        "{user} still present in Redis: {:?}",
        redis.try_cmd(&["HGETALL", &key])
    );
    drop(w);
}

#[test]
fn redis_full_refuses_publishes_and_keeps_the_room_and_its_history() {
    // `maxmemory` with `noeviction` (what deploy/README.md advises): once
    // Redis is full a publish is refused (`unavailable`), never acked under
    // a new epoch with the room's history thrown away.
    let redis = RedisServer::start_with(&[
        "--save",
        "",
        "--appendonly",
        "no",
        "--maxmemory",
        "3mb",
        "--maxmemory-policy",
        "noeviction",
    ]);
    let mut e = env();
    e.push(("CORECAST_HISTORY__SIZE", "10000"));
    let n1 = cluster_node(&redis, &e);
    let (mut c, _) = Client::connect_welcome(&n1.url("/ws"));
    let ack = c.ask(json!({"type":"join","room":"full"}));
    let epoch = ack["epoch"].as_str().unwrap().to_string();
    let body = "x".repeat(1000);
    let mut acked = Vec::new();
    let mut refused = false;
    for _ in 0..20_000 {
        let v = c.ask(json!({"type":"publish","room":"full","data":{"b":body}}));
        if v["type"] == "ack" {
            acked.push(v["seq"].as_u64().unwrap());
        } else {
            assert_eq!(v["code"], "unavailable", "{v}");
            refused = true;
            break;
        }
    }
    assert!(refused, "Redis never filled up ({} acked)", acked.len());
    // A room that started over would count from 1 again.
    assert_eq!(
        acked,
        (1..=acked.len() as u64).collect::<Vec<_>>(),
        "contiguous seqs"
    );
    // The room's history is still there, up to the last acked message.
    let h = c.ask(json!({"type":"history","room":"full","limit":5}));
    let last = h["messages"]
        .as_array()
        .and_then(|m| m.iter().filter_map(|e| e["seq"].as_u64()).max());
    assert_eq!(last, acked.last().copied(), "{h}");
    let epochs: BTreeSet<&str> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["epoch"].as_str())
        .collect();
    assert_eq!(
        epochs,
        BTreeSet::from([epoch.as_str()]),
        "the room's epoch is kept"
    );
}
