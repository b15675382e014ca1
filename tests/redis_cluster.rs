//! corecast on a real Redis Cluster (`cluster.mode = "cluster"`): three
//! masters made of `redis-server --cluster-enabled yes` processes, two
//! corecast nodes as child processes. Rooms spread over every master keep
//! one seq order across nodes and recover with `since`; each room's
//! channel is sharded (SSUBSCRIBE on the master that owns its slot, never
//! flooded to the others); a failover mid-stream loses no acknowledged
//! message; a master that is down makes only its own rooms `unavailable`.

mod common;

use common::*;
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

/// Rate limits out of the way: these tests publish hundreds of messages.
const FAST: &[(&str, &str)] = &[
    ("CORECAST_LIMITS__RATE_PER_SEC", "100000"),
    ("CORECAST_LIMITS__RATE_BURST", "100000"),
];

/// Joins `room` (events before the ack skipped); returns the ack.
fn join(c: &mut Client, room: &str) -> serde_json::Value {
    let ack = c.ask(json!({"type":"join","room":room}));
    assert_eq!(ack["type"], "ack", "join {room}: {ack}");
    ack
}

/// Rooms whose channels (`cc:r:{room}`) land on every master.
fn rooms(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("room-{i}")).collect()
}

fn channel(room: &str) -> String {
    format!("cc:r:{{{room}}}")
}

/// Sharded subscribers of `channel` on `node` (`PUBSUB SHARDNUMSUB`).
fn shard_subscribers(node: &RedisServer, channel: &str) -> i64 {
    match node.cmd(&["PUBSUB", "SHARDNUMSUB", channel]) {
        redis::Value::Array(v) => match v.get(1) {
            Some(redis::Value::Int(k)) => *k,
            other => panic!("SHARDNUMSUB {other:?}"),
        },
        other => panic!("SHARDNUMSUB {other:?}"),
    }
}

/// Reads until `want` messages per room and `acks` acks arrived; returns
/// the seqs per room in arrival order and the acks (id → seq).
fn collect(
    c: &mut Client,
    want: usize,
    rooms: usize,
    acks: usize,
) -> (HashMap<String, Vec<u64>>, HashMap<String, u64>) {
    let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
    let mut got_acks = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seqs.values().map(Vec::len).sum::<usize>() < want * rooms || got_acks.len() < acks {
        assert!(
            Instant::now() < deadline,
            "timed out: {} messages, {} acks",
            seqs.values().map(Vec::len).sum::<usize>(),
            got_acks.len()
        );
        let Some(v) = c.recv_within(1000) else {
            continue;
        };
        match v["type"].as_str() {
            Some("message") => seqs
                .entry(v["room"].as_str().unwrap().to_string())
                .or_default()
                .push(v["seq"].as_u64().unwrap()),
            Some("ack")
                if v["seq"].is_u64() && v["id"].as_str().is_some_and(|i| i.starts_with('p')) =>
            {
                got_acks.insert(
                    v["id"].as_str().unwrap().to_string(),
                    v["seq"].as_u64().unwrap(),
                );
            }
            Some("error") => panic!("error: {v}"),
            _ => {}
        }
    }
    (seqs, got_acks)
}

#[test]
fn rooms_on_every_master_keep_one_order_across_nodes_and_recover() {
    let cluster = RedisCluster::start(3, 0);
    let names = rooms(60);
    // The rooms really are spread over the three masters.
    let owners: HashSet<u16> = names
        .iter()
        .map(|r| cluster.master_of(&channel(r)).port)
        .collect();
    assert_eq!(owners.len(), 3, "60 rooms over 3 masters");

    let n1 = cluster_mode_node(&cluster, FAST);
    let n2 = cluster_mode_node(&cluster, FAST);
    let (mut a, _) = Client::connect_welcome(&n1.url("/ws"));
    let (mut b, _) = Client::connect_welcome(&n2.url("/ws"));
    let mut epochs = HashMap::new();
    for r in &names {
        let ack = join(&mut a, r);
        epochs.insert(r.clone(), ack["epoch"].as_str().unwrap().to_string());
        let ack_b = join(&mut b, r);
        assert_eq!(
            ack_b["epoch"], ack["epoch"],
            "one epoch per room over nodes"
        );
    }
    // Each room's channel is subscribed on its own master only, by both
    // nodes: sharded pub/sub, no flooding of the others.
    for r in &names {
        let owner = cluster.master_of(&channel(r));
        for n in cluster.nodes.iter() {
            let subs = shard_subscribers(n, &channel(r));
            let expect = if n.port == owner.port { 2 } else { 0 };
            assert_eq!(subs, expect, "{r} on :{} (owner :{})", n.port, owner.port);
        }
    }

    // Both nodes publish into every room, interleaved.
    let per = 4;
    for i in 0..per {
        for (j, r) in names.iter().enumerate() {
            let c = if (i + j) % 2 == 0 { &mut a } else { &mut b };
            c.send(json!({"type":"publish","id":format!("p{i}-{r}"),"room":r,"data":{"i":i}}));
        }
    }
    let acks_a = per * names.len() / 2;
    let (seqs_a, got_a) = collect(&mut a, per, names.len(), acks_a);
    let (seqs_b, got_b) = collect(&mut b, per, names.len(), per * names.len() - acks_a);
    for r in &names {
        let expect: Vec<u64> = (1..=per as u64).collect();
        assert_eq!(
            seqs_a[r], expect,
            "{r} on node 1: every message, in seq order"
        );
        assert_eq!(seqs_b[r], expect, "{r} on node 2");
    }
    let mut acked: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (id, seq) in got_a.into_iter().chain(got_b) {
        let room = id.split_once('-').unwrap().1.to_string();
        acked.entry(room).or_default().push(seq);
    }
    for (r, mut s) in acked {
        s.sort();
        assert_eq!(
            s,
            (1..=per as u64).collect::<Vec<_>>(),
            "{r}: one ack per seq"
        );
    }

    // Recovery with `since` on the other node, from the room's stream on
    // its master.
    let r = &names[7];
    let (mut c, _) = Client::connect_welcome(&n2.url("/ws"));
    c.send(json!({"type":"join","id":"j","room":r,"since":{"epoch":epochs[r],"seq":1}}));
    let mut replay = Vec::new();
    loop {
        let v = c.recv();
        match v["type"].as_str() {
            Some("message") => replay.push(v["seq"].as_u64().unwrap()),
            Some("ack") => {
                assert_eq!(v["recovered"], true, "{v}");
                break;
            }
            _ => {}
        }
    }
    assert_eq!(replay, (2..=per as u64).collect::<Vec<_>>());
    // `history` reads the stream on the room's master.
    let h = c.ask(json!({"type":"history","room":r,"limit":10}));
    assert_eq!(h["messages"].as_array().map(Vec::len), Some(per), "{h}");
}

#[test]
fn a_failover_mid_stream_loses_no_acknowledged_message() {
    let cluster = RedisCluster::start(3, 1);
    let room = "failover";
    let n1 = cluster_mode_node(&cluster, FAST);
    let n2 = cluster_mode_node(&cluster, FAST);
    let (mut member, _) = Client::connect_welcome(&n2.url("/ws"));
    join(&mut member, room);
    let (mut publisher, _) = Client::connect_welcome(&n1.url("/ws"));
    join(&mut publisher, room);

    let old_master = cluster.master_of(&channel(room)).port;
    let replica = cluster
        .nodes
        .iter()
        .find(|n| {
            matches!(n.cmd(&["ROLE"]), redis::Value::Array(ref v)
                if matches!(v.get(2), Some(redis::Value::Int(p)) if *p as u16 == old_master))
        })
        .expect("the room's master has a replica");

    let mut acked = Vec::new();
    let mut failed = 0;
    let started = Instant::now();
    // 100 publishes, then a coordinated failover (the replica takes over
    // the slots) while publishing goes on, until 150 more were acked after
    // the switch was visible.
    let mut switched_at: Option<usize> = None;
    for i in 0..5000u32 {
        if i == 100 {
            replica.cmd(&["CLUSTER", "FAILOVER"]);
        }
        if i > 100
            && switched_at.is_none()
            && i % 10 == 0
            && cluster.master_of(&channel(room)).port != old_master
        {
            switched_at = Some(acked.len());
        }
        if switched_at.is_some_and(|at| acked.len() >= at + 150) {
            break;
        }
        publisher.send(json!({"type":"publish","id":format!("p{i}"),"room":room,"data":{"i":i}}));
        loop {
            let v = publisher.recv();
            match v["type"].as_str() {
                Some("ack") if v["id"] == format!("p{i}") => {
                    acked.push(v["seq"].as_u64().unwrap());
                    break;
                }
                Some("error") if v["id"] == format!("p{i}") => {
                    assert_eq!(v["code"], "unavailable", "{v}");
                    failed += 1;
                    std::thread::sleep(Duration::from_millis(20));
                    break;
                }
                _ => {}
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "publishing stalled"
        );
    }
    assert_ne!(
        cluster.master_of(&channel(room)).port,
        old_master,
        "the replica took over"
    );
    // Both nodes subscribed the room's channel on the new master (the old
    // one, now a replica, would still pass its messages on: Redis
    // propagates sharded messages to a shard's replicas).
    let new_master = cluster.master_of(&channel(room));
    assert!(
        eventually(Duration::from_secs(10), || shard_subscribers(
            new_master,
            &channel(room)
        ) == 2),
        "the nodes resubscribed on the new master"
    );
    assert!(acked.len() > 150, "acked {} (failed {failed})", acked.len());
    eprintln!("acked {}, unavailable {failed}", acked.len());
    // Every acknowledged message reaches the member on the other node,
    // once and in seq order; no seq appears that was not acked before it.
    let last = *acked.last().unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.last() != Some(&last) {
        assert!(
            Instant::now() < deadline,
            "member got {} of {}",
            got.len(),
            acked.len()
        );
        if let Some(v) = member.recv_within(1000)
            && v["type"] == "message"
        {
            got.push(v["seq"].as_u64().unwrap());
        }
    }
    let mut sorted = got.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(got, sorted, "in seq order, no duplicates");
    for s in &acked {
        assert!(got.contains(s), "acked seq {s} was delivered");
    }
    // The nodes noticed: the old master's shard was retired.
    assert!(
        n2.log().iter().any(|l| l.contains("not a master any more")),
        "node 2 followed the failover: {:?}",
        n2.log()
    );
}

#[test]
fn a_master_down_makes_only_its_rooms_unavailable() {
    let mut cluster = RedisCluster::start(3, 0);
    let names = rooms(12);
    let n1 = cluster_mode_node(&cluster, FAST);
    let (mut c, _) = Client::connect_welcome(&n1.url("/ws"));
    for r in &names {
        join(&mut c, r);
    }
    let victim = cluster.master_of(&channel(&names[0])).port;
    let (down, up): (Vec<&String>, Vec<&String>) = names
        .iter()
        .partition(|r| cluster.master_of(&channel(r)).port == victim);
    assert!(!up.is_empty(), "rooms on the other masters");
    let i = cluster.nodes.iter().position(|n| n.port == victim).unwrap();
    cluster.nodes[i].kill();

    // Rooms on the live masters keep working; the others get
    // `unavailable` (never an ack).
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    for r in &up {
        loop {
            n += 1;
            let v = c.ask(json!({"type":"publish","room":r,"data":{"n":n}}));
            if v["type"] == "ack" {
                break;
            }
            assert_eq!(v["code"], "unavailable", "{v}");
            assert!(Instant::now() < deadline, "{r} stayed unavailable");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for r in &down {
        n += 1;
        let v = c.ask(json!({"type":"publish","room":r,"data":{"n":n}}));
        assert_eq!(
            (v["type"].as_str(), v["code"].as_str()),
            (Some("error"), Some("unavailable")),
            "{r} is on the dead master: {v}"
        );
    }
}
