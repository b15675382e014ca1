//! The durable history store, through the server binary: acknowledged
//! messages, and every message a member received, survive `kill -9` in
//! `sync` mode (with their seq and epoch, none duplicated); a failing fsync
//! (injected from outside with an `LD_PRELOAD` shim, since a `kill -9`
//! keeps the page cache and cannot tell a store that fsyncs from one that
//! does not) acks and delivers nothing and fails `/health`; a client's
//! `since` from before a restart still recovers, retention bounds what
//! survives, an unclean async run gives rooms new epochs, and a corrupt
//! store stops the server from starting.

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Rooms with different home cores on a 2-core server.
const ROOMS: [&str; 4] = ["dur-a", "dur-b", "dur-c", "dur-d"];

/// Joins `room` with `since` (epoch, seq) and returns the replayed messages
/// and the ack.
fn rejoin(c: &mut Client, room: &str, epoch: &str, seq: u64) -> (Vec<Value>, Value) {
    c.send(json!({"type":"join","id":"rj","room":room,"since":{"epoch":epoch,"seq":seq}}));
    let mut replay = Vec::new();
    loop {
        let v = c.recv();
        match v["type"].as_str() {
            Some("message") => replay.push(v),
            Some("ack") if v["id"] == "rj" => return (replay, v),
            Some("joined") | Some("left") => {}
            _ => panic!("unexpected {v}"),
        }
    }
}

/// Sends `cmd` with id "q" and returns the reply with that id, skipping
/// room events.
fn ask(c: &mut Client, mut cmd: Value) -> Value {
    cmd["id"] = json!("q");
    c.send(cmd);
    loop {
        let v = c.recv();
        if v["id"] == "q" {
            return v;
        }
    }
}

/// The next `message` event, skipping membership events.
fn next_message(c: &mut Client) -> Value {
    loop {
        let v = c.recv();
        if v["type"] == "message" {
            return v;
        }
    }
}

fn join_epoch(c: &mut Client, room: &str) -> (String, u64) {
    let ack = ask(c, json!({"type":"join","room":room}));
    assert_eq!(ack["type"], "ack", "{ack}");
    (
        ack["epoch"].as_str().unwrap().to_string(),
        ack["seq"].as_u64().unwrap(),
    )
}

#[test]
fn acknowledged_messages_survive_kill_9_in_sync_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let mut server = ChildServer::start(&durable_env(path, "sync"));
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    let (mut member, _) = Client::connect_welcome(&server.url("/ws"));
    let mut epochs = HashMap::new();
    for room in ROOMS {
        epochs.insert(room, join_epoch(&mut c, room).0);
        join_epoch(&mut member, room);
    }
    // A second connection in every room records every message it gets,
    // until the connection dies with the server (what reached its socket
    // before the kill counts as delivered).
    let member = std::thread::spawn(move || {
        let mut got = Vec::new();
        while let Ok(v) = member.try_recv() {
            if let Some(v) = v.filter(|v| v["type"] == "message") {
                got.push(v);
            }
        }
        got
    });
    // The publisher is a member of every room too.
    let mut delivered = Vec::new();
    // Publish with ~200 in flight and kill the server while acks are still
    // arriving: everything acknowledged before the kill must be there, and
    // everything delivered (in sync mode a message goes out only once it
    // is durable).
    let kill_after = 1500;
    let mut acked: BTreeMap<usize, (String, u64)> = BTreeMap::new();
    let mut sent = 0;
    while acked.len() < kill_after {
        for _ in 0..50 {
            let room = ROOMS[sent % ROOMS.len()];
            c.send(json!({"type":"publish","id":sent,"room":room,"data":{"i":sent}}));
            sent += 1;
        }
        while sent - acked.len() > 200 || (acked.len() < kill_after && sent - acked.len() > 150) {
            let v = c.recv();
            if v["type"] == "message" {
                delivered.push(v);
            } else if v["type"] == "ack" {
                let i = v["id"].as_u64().unwrap() as usize;
                acked.insert(
                    i,
                    (
                        v["room"].as_str().unwrap().to_string(),
                        v["seq"].as_u64().unwrap(),
                    ),
                );
            }
            if acked.len() >= kill_after {
                break;
            }
        }
    }
    // A last burst, and the kill right behind it, so it lands mid-flight.
    for _ in 0..500 {
        let room = ROOMS[sent % ROOMS.len()];
        c.send(json!({"type":"publish","id":sent,"room":room,"data":{"i":sent}}));
        sent += 1;
    }
    server.signal(libc::SIGKILL);
    server.child.wait().unwrap();
    // Acks that were already on the wire count too.
    while let Ok(Some(v)) = c.try_recv() {
        if v["type"] == "message" {
            delivered.push(v);
        } else if v["type"] == "ack" {
            let i = v["id"].as_u64().unwrap() as usize;
            acked.insert(
                i,
                (
                    v["room"].as_str().unwrap().to_string(),
                    v["seq"].as_u64().unwrap(),
                ),
            );
        }
    }
    drop(c);
    let by_member = member.join().unwrap();
    assert!(
        by_member.len() >= kill_after,
        "the member got {} messages",
        by_member.len()
    );
    delivered.extend(by_member);
    assert!(acked.len() >= kill_after);
    assert!(
        acked.len() < sent,
        "the kill must land with publishes in flight"
    );

    let server = ChildServer::start(&durable_env(path, "sync"));
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    let mut stored = 0;
    for room in ROOMS {
        let (replay, ack) = rejoin(&mut c, room, &epochs[room], 0);
        assert_eq!(
            ack["recovered"], true,
            "{room}: same epoch after restart: {ack}"
        );
        assert_eq!(ack["epoch"].as_str().unwrap(), epochs[room]);
        let last = ack["seq"].as_u64().unwrap();
        // Seqs 1..=last, each exactly once, each a distinct publish.
        let seqs: Vec<u64> = replay.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(
            seqs,
            (1..=last).collect::<Vec<_>>(),
            "{room}: contiguous, no duplicate"
        );
        let mut by_seq = HashMap::new();
        let mut seen_i = std::collections::HashSet::new();
        for m in &replay {
            assert_eq!(m["epoch"].as_str().unwrap(), epochs[room]);
            let i = m["data"]["i"].as_u64().unwrap() as usize;
            assert!(seen_i.insert(i), "{room}: publish {i} stored twice");
            by_seq.insert(m["seq"].as_u64().unwrap(), i);
        }
        for (i, (r, seq)) in &acked {
            if r == room {
                assert_eq!(
                    by_seq.get(seq),
                    Some(i),
                    "{room}: acked publish {i} as seq {seq}"
                );
            }
        }
        // Delivered implies durable: whatever a member got before the
        // kill is in the history, under the same seq and epoch.
        for m in delivered.iter().filter(|m| m["room"] == room) {
            let (seq, i) = (m["seq"].as_u64().unwrap(), m["data"]["i"].as_u64().unwrap());
            assert_eq!(m["epoch"].as_str().unwrap(), epochs[room], "{m}");
            assert_eq!(
                by_seq.get(&seq),
                Some(&(i as usize)),
                "{room}: publish {i} was delivered as seq {seq} before the kill"
            );
        }
        stored += replay.len();
        // The room goes on from where it was.
        c.send(json!({"type":"publish","id":"next","room":room,"data":{}}));
        let a = loop {
            let v = c.recv();
            if v["type"] == "ack" {
                break v;
            }
        };
        assert_eq!(a["seq"].as_u64().unwrap(), last + 1);
    }
    assert!(
        stored >= acked.len(),
        "{stored} stored < {} acked",
        acked.len()
    );
    eprintln!(
        "crash test: {sent} sent, {} acked and {} delivered before kill -9, {stored} in history after restart",
        acked.len(),
        delivered.len()
    );
}

#[test]
fn since_from_before_a_clean_restart_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    for mode in ["sync", "async"] {
        let server = ChildServer::start(&durable_env(path, mode));
        let (mut a, _) = Client::connect_welcome(&server.url("/ws"));
        let (mut b, _) = Client::connect_welcome(&server.url("/ws"));
        let room = format!("restart-{mode}");
        let (epoch, _) = join_epoch(&mut a, &room);
        ask(&mut b, json!({"type":"join","room":room}));
        for i in 0..5 {
            ask(&mut b, json!({"type":"publish","room":room,"data":{"i":i}}));
        }
        let mut pos = 0;
        for _ in 0..5 {
            pos = next_message(&mut a)["seq"].as_u64().unwrap();
        }
        drop(a);
        for i in 5..12 {
            ask(&mut b, json!({"type":"publish","room":room,"data":{"i":i}}));
        }
        drop(b);
        let mut server = server;
        server.signal(libc::SIGTERM);
        assert_eq!(server.wait_exit(WAIT), Some(0));

        let server = ChildServer::start(&durable_env(path, mode));
        let (mut a, _) = Client::connect_welcome(&server.url("/ws"));
        let (replay, ack) = rejoin(&mut a, &room, &epoch, pos);
        assert_eq!(ack["recovered"], true, "{mode}: {ack}");
        let got: Vec<u64> = replay
            .iter()
            .map(|m| m["data"]["i"].as_u64().unwrap())
            .collect();
        assert_eq!(
            got,
            (5..12).collect::<Vec<_>>(),
            "{mode}: exactly the missed ones"
        );
        // History reads the same window.
        let h = ask(&mut a, json!({"type":"history","room":room,"limit":3}));
        let seqs: Vec<u64> = h["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, [10, 11, 12]);
        let mut server = server;
        server.signal(libc::SIGTERM);
        assert_eq!(server.wait_exit(WAIT), Some(0));
    }
}

#[test]
fn retention_bounds_what_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let mut e = durable_env(path, "sync");
    e.push(("CORECAST_HISTORY__SIZE", "10"));
    let mut server = ChildServer::start(&e);
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    let (epoch, _) = join_epoch(&mut c, "ret");
    for i in 0..25 {
        ask(
            &mut c,
            json!({"type":"publish","room":"ret","data":{"i":i}}),
        );
    }
    drop(c);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(WAIT), Some(0));

    let server = ChildServer::start(&e);
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    // Seq 15 onwards is still held (16..=25 is the last 10).
    let (replay, ack) = rejoin(&mut c, "ret", &epoch, 15);
    assert_eq!(ack["recovered"], true);
    assert_eq!(replay.len(), 10);
    // Seq 14 needs message 15, which retention dropped.
    let (replay, ack) = rejoin(&mut c, "ret", &epoch, 5);
    assert_eq!(ack["recovered"], false, "{ack}");
    assert!(replay.is_empty());
    drop(server);

    // The age bound: with a 1 s ttl everything is gone after a restart 2 s
    // later, though the room keeps its position. (The sleep is the time
    // that must pass, not a wait for the server.)
    let mut e = durable_env(path, "sync");
    e.push(("CORECAST_HISTORY__TTL", "1"));
    std::thread::sleep(Duration::from_millis(2100));
    let server = ChildServer::start(&e);
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    let (replay, ack) = rejoin(&mut c, "ret", &epoch, 20);
    assert_eq!(ack["seq"], 25, "{ack}");
    assert_eq!(ack["recovered"], false, "messages 21..25 expired: {ack}");
    assert!(replay.is_empty());
    let h = ask(&mut c, json!({"type":"history","room":"ret"}));
    assert_eq!(h["messages"].as_array().map(Vec::len), Some(0), "{h}");
}

#[test]
fn unclean_async_run_gives_rooms_a_new_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let mut server = ChildServer::start(&durable_env(path, "async"));
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    let (epoch, _) = join_epoch(&mut c, "unclean");
    for i in 0..5 {
        ask(
            &mut c,
            json!({"type":"publish","room":"unclean","data":{"i":i}}),
        );
    }
    // An async write has no outside signal (no ack waits for it, which is
    // the point of the mode); the background writer takes each message at
    // once, so 300 ms is a margin for it before the crash. The epoch and
    // recovery assertions below do not depend on it; `seq >= 5` does.
    std::thread::sleep(Duration::from_millis(300));
    server.signal(libc::SIGKILL);
    server.child.wait().unwrap();
    drop(c);
    let server = ChildServer::start(&durable_env(path, "async"));
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    let (replay, ack) = rejoin(&mut c, "unclean", &epoch, 5);
    assert_eq!(
        ack["recovered"], false,
        "old position must not claim recovery: {ack}"
    );
    assert!(replay.is_empty());
    assert_ne!(ack["epoch"].as_str().unwrap(), epoch);
    assert!(ack["seq"].as_u64().unwrap() >= 5, "seq continues: {ack}");
}

#[test]
fn a_corrupt_store_stops_the_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let mut server = ChildServer::start(&durable_env(path, "sync"));
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    join_epoch(&mut c, "corrupt");
    for i in 0..50 {
        ask(
            &mut c,
            json!({"type":"publish","room":"corrupt","data":{"i":i,"pad":"x".repeat(200)}}),
        );
    }
    drop(c);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(WAIT), Some(0));
    // Flip bytes in the middle of every file of the store.
    let mut damaged = 0;
    for entry in walk(dir.path()) {
        let mut bytes = std::fs::read(&entry).unwrap();
        if bytes.len() < 64 {
            continue;
        }
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid - 16..mid + 16] {
            *b ^= 0x5a;
        }
        std::fs::write(&entry, bytes).unwrap();
        damaged += 1;
    }
    assert!(damaged > 0);
    let out = Command::new(env!("CARGO_BIN_EXE_corecast"))
        .env_clear()
        .envs(durable_env(path, "sync"))
        .env("CORECAST_LISTEN", "127.0.0.1:0")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must refuse to start: {stderr}");
    assert!(
        stderr.contains("history store") && stderr.contains("refusing to start"),
        "clear message: {stderr}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A tmpfs of `size` mounted for the life of the value (the test needs root,
/// as CI has; it fails loudly without).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill it and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_full_disk_fails_publishes_with_internal_and_never_acks_them() {
    let disk = SmallDisk::mount("3m");
    let path = disk.dir.path().to_str().unwrap().to_string();
    let mut server = ChildServer::start(&durable_env(&path, "sync"));
    let (mut p, _) = Client::connect_welcome(&server.url("/ws"));
    let (mut m, _) = Client::connect_welcome(&server.url("/ws"));
    join_epoch(&mut p, "full");
    join_epoch(&mut m, "full");
    // Incompressible text (the store compresses).
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut pad = move || {
        (0..60_000)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (b'a' + (rng % 26) as u8) as char
            })
            .collect::<String>()
    };
    let mut acked = Vec::new();
    let mut failed = 0;
    for i in 0..200 {
        let r = ask(
            &mut p,
            json!({"type":"publish","room":"full","data":{"i":i,"pad":pad()}}),
        );
        match r["type"].as_str() {
            Some("ack") => {
                assert_eq!(
                    failed, 0,
                    "an ack after a failure: the store must stay failed"
                );
                acked.push(r["seq"].as_u64().unwrap());
            }
            Some("error") => {
                assert_eq!(r["code"], "internal", "{r}");
                failed += 1;
                if failed == 3 {
                    break;
                }
            }
            _ => panic!("unexpected {r}"),
        }
    }
    assert!(failed == 3, "the disk never filled ({} acked)", acked.len());
    assert!(
        !acked.is_empty(),
        "some publishes fit before the disk filled"
    );
    // The member got exactly the acknowledged messages, nothing of the
    // failed ones; the seq was given back, so the next success would follow.
    let mut seen = Vec::new();
    while seen.len() < acked.len() {
        let v = next_message(&mut m);
        seen.push(v["seq"].as_u64().unwrap());
    }
    assert_eq!(seen, acked);
    let ping = ask(&mut m, json!({"type":"ping"}));
    assert_eq!(
        ping["type"], "pong",
        "no further message before the pong: {ping}"
    );
    assert_store_failed(&server);
    // The server itself keeps serving.
    let (mut other, _) = Client::connect_welcome(&server.url("/ws"));
    assert_eq!(ask(&mut other, json!({"type":"ping"}))["type"], "pong");
    server.signal(libc::SIGKILL);
    server.child.wait().unwrap();
}

#[test]
fn room_patterns_choose_memory_or_async_per_room() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let mut e = durable_env(path, "sync");
    e.push(("CORECAST_HISTORY__MEMORY_ROOMS", "eph:*"));
    e.push(("CORECAST_HISTORY__ASYNC_ROOMS", "fast:*,live"));
    let mut server = ChildServer::start(&e);
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    let mut epochs = HashMap::new();
    for room in ["eph:1", "fast:1", "keep"] {
        epochs.insert(room, join_epoch(&mut c, room).0);
        for i in 0..4 {
            let a = ask(&mut c, json!({"type":"publish","room":room,"data":{"i":i}}));
            assert_eq!(a["type"], "ack", "{a}");
        }
    }
    // No wait needed before the crash: "keep" (sync) was published after
    // the other rooms were acked, and async appends are queued for the
    // store before their ack. The store takes its one queue in order and
    // fdatasyncs fjall's one journal, so "keep"'s acks mean the async
    // messages queued before them were written too.
    server.signal(libc::SIGKILL);
    server.child.wait().unwrap();
    drop(c);

    let server = ChildServer::start(&e);
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    // Sync: all there, same epoch, recovers.
    let (replay, ack) = rejoin(&mut c, "keep", &epochs["keep"], 0);
    assert_eq!(
        (ack["recovered"].clone(), replay.len()),
        (json!(true), 4),
        "{ack}"
    );
    // Async after a crash: its messages were written, but the room gets a
    // new epoch, so the old position does not claim to recover.
    let (replay, ack) = rejoin(&mut c, "fast:1", &epochs["fast:1"], 2);
    assert_eq!(ack["recovered"], false, "{ack}");
    assert!(replay.is_empty());
    assert_ne!(ack["epoch"].as_str().unwrap(), epochs["fast:1"]);
    assert_eq!(ack["seq"], 4, "async messages were written: {ack}");
    let h = ask(&mut c, json!({"type":"history","room":"fast:1"}));
    assert_eq!(h["messages"].as_array().unwrap().len(), 4, "{h}");
    // Memory-only: nothing survived.
    let (_, ack) = rejoin(&mut c, "eph:1", &epochs["eph:1"], 0);
    assert_eq!(
        (ack["recovered"].clone(), ack["seq"].clone()),
        (json!(false), json!(0)),
        "{ack}"
    );
}

/// `tests/common/fsync_fail.c` compiled with `cc` (which Rust links with,
/// so CI has it) into a shared object for `LD_PRELOAD`: while `trigger`
/// exists, every fsync of the server process fails with EIO. A real fault
/// from outside the process; the server has no hook for it.
struct FsyncShim {
    dir: tempfile::TempDir,
}

impl FsyncShim {
    fn build() -> FsyncShim {
        let dir = tempfile::tempdir().unwrap();
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/fsync_fail.c");
        let out = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(dir.path().join("fsync_fail.so"))
            .arg(src)
            .output()
            .expect("run cc (the fsync fault test compiles a small C shim)");
        assert!(
            out.status.success(),
            "cc {src}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        FsyncShim { dir }
    }

    fn so(&self) -> String {
        self.dir.path().join("fsync_fail.so").display().to_string()
    }

    fn trigger(&self) -> std::path::PathBuf {
        self.dir.path().join("fail-now")
    }

    fn fail(&self) {
        std::fs::write(self.trigger(), b"").unwrap();
    }

    fn heal(&self) {
        std::fs::remove_file(self.trigger()).unwrap();
    }
}

/// Reads `c` until `n` `message` events came (other events skipped);
/// returns (seq, data.i) of each.
/// `/health` says 503 with the store failed, and the log says why.
fn assert_store_failed(server: &ChildServer) {
    let (status, _, body) = http_get(server.addr, "/health");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"store\":\"failed\""), "{body}");
    assert!(
        server
            .log()
            .iter()
            .any(|l| l.contains("history store write failed")),
        "the failure is logged: {:?}",
        server.log()
    );
}

fn messages(c: &mut Client, n: usize) -> Vec<(u64, u64)> {
    (0..n)
        .map(|_| {
            let m = next_message(c);
            (m["seq"].as_u64().unwrap(), m["data"]["i"].as_u64().unwrap())
        })
        .collect()
}

/// Asserts `c` receives no `message` within `ms` (the ping's pong ends the
/// wait early only if nothing came before it).
fn no_message_within(c: &mut Client, ms: u64, why: &str) {
    let end = std::time::Instant::now() + Duration::from_millis(ms);
    while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
        match c.recv_within(left.as_millis() as u64 + 1) {
            Some(v) if v["type"] == "message" => panic!("{why}: got {v}"),
            Some(_) => {}
            None => break,
        }
    }
    let ping = ask(c, json!({"type":"ping"}));
    assert_eq!(ping["type"], "pong", "{why}: {ping}");
}

#[test]
fn a_failing_fsync_acks_nothing_delivers_nothing_and_fails_health() {
    let shim = FsyncShim::build();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let (so, trigger) = (shim.so(), shim.trigger().display().to_string());
    let mut e = durable_env(path, "sync");
    e.push(("LD_PRELOAD", &so));
    e.push(("FSYNC_SHIM_FAIL_IF_EXISTS", &trigger));
    let mut server = ChildServer::start(&e);
    let (mut p, _) = Client::connect_welcome(&server.url("/ws"));
    let (mut m, _) = Client::connect_welcome(&server.url("/ws"));
    let (epoch, _) = join_epoch(&mut p, "fsync");
    join_epoch(&mut m, "fsync");
    // With the shim loaded but not failing, sync publishes are acked.
    for i in 0..5 {
        let a = ask(
            &mut p,
            json!({"type":"publish","room":"fsync","data":{"i":i}}),
        );
        assert_eq!(
            (&a["type"], &a["seq"]),
            (&json!("ack"), &json!(i + 1)),
            "{a}"
        );
    }
    assert_eq!(http_get(server.addr, "/health").0, 200);

    // 400 publishes, about 100 in flight all along; the disk starts
    // failing after the 50th ack of these, so the failure lands among
    // publishes still waiting for their fsync, and every publish sent after
    // it must fail too.
    const N: u64 = 400;
    let mut sent = 5;
    let send = |p: &mut Client, sent: &mut u64| {
        p.send(json!({"type":"publish","id":*sent,"room":"fsync","data":{"i":*sent}}));
        *sent += 1;
    };
    while sent < 105 {
        send(&mut p, &mut sent);
    }
    let mut acked: Vec<(u64, u64)> = (1..=5).zip(0..5).collect();
    let mut failed = Vec::new();
    let mut p_seen = Vec::new();
    let mut sent_after_failing = 0;
    let mut answered = 0;
    while answered < N {
        let v = p.recv();
        match v["type"].as_str() {
            Some("ack") => {
                assert!(
                    failed.is_empty(),
                    "an ack after a failed fsync: {v} (failed before: {failed:?})"
                );
                acked.push((v["seq"].as_u64().unwrap(), v["id"].as_u64().unwrap()));
                answered += 1;
                if acked.len() == 55 {
                    shim.fail();
                }
            }
            Some("error") => {
                assert_eq!(v["code"], "internal", "{v}");
                failed.push(v["id"].as_u64().unwrap());
                answered += 1;
            }
            Some("message") => {
                p_seen.push((v["seq"].as_u64().unwrap(), v["data"]["i"].as_u64().unwrap()));
                continue;
            }
            _ => continue,
        }
        if sent < 5 + N {
            sent_after_failing += u64::from(shim.trigger().exists());
            send(&mut p, &mut sent);
        }
    }
    assert!(
        sent_after_failing > 100,
        "{sent_after_failing} sent while failing"
    );
    assert!(
        !failed.is_empty(),
        "every publish was acked although every fsync failed: the store does not fsync"
    );
    assert!(acked.len() >= 55, "{} acked", acked.len());
    let want: Vec<u64> = (1..=acked.len() as u64).collect();
    assert_eq!(
        acked.iter().map(|a| a.0).collect::<Vec<_>>(),
        want,
        "acks are the seqs in order"
    );
    eprintln!(
        "fsync fault: {} acked, {} failed with internal",
        acked.len(),
        failed.len()
    );

    // Members got exactly the acked messages: delivery waits for the fsync,
    // so nothing of the failed ones went out.
    let got = messages(&mut m, acked.len());
    assert_eq!(got, acked, "the member's messages are the acked ones");
    // (The publisher is a member too; `ask` skipped its first 5.)
    p_seen.retain(|m| m.0 > 5);
    let rest = acked.len() - 5 - p_seen.len().min(acked.len() - 5);
    p_seen.extend(messages(&mut p, rest));
    assert_eq!(p_seen, acked[5..], "the publisher saw the acked ones");
    // Proving an absence takes a wait: a failed message delivered late
    // would arrive in this window.
    no_message_within(&mut m, 500, "a message whose fsync failed was delivered");
    no_message_within(&mut p, 100, "a message whose fsync failed was delivered");
    let h = ask(&mut m, json!({"type":"history","room":"fsync","limit":10}));
    let last = h["messages"].as_array().unwrap().last().cloned();
    assert_eq!(
        last.map(|l| l["seq"].clone()),
        Some(json!(acked.len())),
        "history ends at the last acked message: {h}"
    );

    assert_store_failed(&server);

    // The disk "recovers", but after a failed fsync nobody knows what
    // reached it: the store keeps refusing and /health stays 503 until a
    // restart, rather than acking on top of lost writes.
    shim.heal();
    let a = ask(
        &mut p,
        json!({"type":"publish","room":"fsync","data":{"i":"late"}}),
    );
    assert_eq!(
        (&a["type"], &a["code"]),
        (&json!("error"), &json!("internal")),
        "{a}"
    );
    assert_eq!(http_get(server.addr, "/health").0, 503);
    no_message_within(&mut m, 200, "the refused publish was delivered");
    let (mut other, _) = Client::connect_welcome(&server.url("/ws"));
    assert_eq!(ask(&mut other, json!({"type":"ping"}))["type"], "pong");
    drop((p, m, other));
    server.signal(libc::SIGKILL);
    server.child.wait().unwrap();

    // Restarted on a healthy disk: everything acked is there, same seq.
    let server = ChildServer::start(&durable_env(path, "sync"));
    assert_eq!(http_get(server.addr, "/health").0, 200);
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    let (replay, ack) = rejoin(&mut c, "fsync", &epoch, 0);
    assert_eq!(ack["recovered"], true, "{ack}");
    let stored: HashMap<u64, u64> = replay
        .iter()
        .map(|m| (m["seq"].as_u64().unwrap(), m["data"]["i"].as_u64().unwrap()))
        .collect();
    for (seq, i) in &acked {
        assert_eq!(stored.get(seq), Some(i), "acked publish {i} as seq {seq}");
    }
}
