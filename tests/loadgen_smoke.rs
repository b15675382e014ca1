//! Smoke runs of every load-generator scenario against a real server:
//! correctness only (everything opened, deliveries complete and in order,
//! no errors). No timing is asserted; the benchmarks measure speed.
//!
//! Over TLS (`--tls`, `--tls-ca`) against a TLS listener with a test CA:
//! fan-out complete, every connection a full handshake (or resumed with
//! `--tls-resume`), and a certificate from another CA refused.
//!
//! The generator's own checks are tested against a deliberately faulty
//! fake server: one that acks publishes it never delivers, and one that
//! delivers publishes it never acks. Both runs must fail, with the
//! shortfall in the JSON.

mod common;

use common::pki::{Pki, pki};
use common::*;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn load(server: &TestServer, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_corecast-load"))
        .args(args)
        .args(["--addr", &server.addr.to_string(), "--json", "--quiet"])
        .args(["--duration", "1", "--warmup", "0.2", "--sources", "3"])
        .output()
        .expect("run corecast-load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {stdout:?} stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(out.status.success(), "corecast-load {args:?} failed: {v:#}");
    assert_eq!(v["errors"], 0, "{v:#}");
    assert_eq!(v["unacked"], 0, "{v:#}");
    assert_eq!(v["drain_timeouts"], 0, "{v:#}");
    assert_eq!(v["ok"], true, "{v:#}");
    v
}

fn unlimited() -> TestServer {
    TestServer::start(|c| {
        c.echo = true;
        c.limits.rate_per_sec = 1e9;
        c.limits.rate_burst = 1e9;
    })
}

#[test]
fn echo_round_trips_complete() {
    let s = unlimited();
    let v = load(
        &s,
        &["echo", "--conns", "8", "--size", "64", "--inflight", "2"],
    );
    assert!(v["ops"].as_u64().unwrap() > 0, "{v:#}");
    assert_eq!(v["open_at_end"], 8);
    assert!(v["latency_us"]["p50"].as_u64().unwrap() > 0);
}

#[test]
fn fanout_delivers_everything_in_order_across_rooms() {
    let s = unlimited();
    let v = load(
        &s,
        &[
            "fanout",
            "--rooms",
            "3",
            "--members",
            "20",
            "--publishers",
            "3",
            "--inflight",
            "4",
            "--threads",
            "2",
        ],
    );
    assert!(v["published"].as_u64().unwrap() > 0, "{v:#}");
    assert!(v["ops"].as_u64().unwrap() > 0, "{v:#}");
    assert_eq!(v["missing"], 0);
    assert_eq!(v["out_of_order"], 0);
    // every room saw messages, and every member ended at the room's last
    // acknowledged seq
    for room in v["rooms"].as_array().unwrap() {
        let (max, members, sum) = (
            room[0].as_u64().unwrap(),
            room[1].as_u64().unwrap(),
            room[2].as_u64().unwrap(),
        );
        assert!(max > 0);
        assert_eq!(members, 21, "20 members + 1 publisher");
        assert_eq!(sum, max * members);
    }
}

#[test]
fn fanout_at_a_fixed_rate_over_two_processes() {
    let s = unlimited();
    let v = load(
        &s,
        &[
            "fanout",
            "--rooms",
            "2",
            "--members",
            "10",
            "--publishers",
            "2",
            "--rate",
            "200",
            "--procs",
            "2",
        ],
    );
    assert_eq!(v["missing"], 0);
    let published = v["published"].as_u64().unwrap();
    assert!(published > 50, "about 200/s for ~1 s: {published}");
}

#[test]
fn fanout_reach_times_each_publish_to_its_last_member_over_two_processes() {
    let s = unlimited();
    let v = load(
        &s,
        &[
            "fanout",
            "--rooms",
            "2",
            "--members",
            "10",
            "--publishers",
            "2",
            "--rate",
            "20",
            "--reach",
            "--procs",
            "2",
        ],
    );
    let r = &v["reach_us"];
    // ~20 publishes in the 1 s window, each counted once though its
    // members are spread over two processes, and each reached all of them.
    let publishes = r["publishes"].as_u64().unwrap();
    assert!((5..=40).contains(&publishes), "{v:#}");
    assert_eq!(r["incomplete"], 0, "{v:#}");
    assert_eq!(r["times"].as_array().unwrap().len() as u64, publishes);
    let (p50, max) = (r["p50"].as_u64().unwrap(), r["max"].as_u64().unwrap());
    assert!(0 < p50 && p50 <= max, "{v:#}");
    // The last member of a publish is no earlier than a typical delivery.
    assert!(max >= v["latency_us"]["p50"].as_u64().unwrap(), "{v:#}");
}

#[test]
fn reach_needs_a_rate() {
    let out = Command::new(env!("CARGO_BIN_EXE_corecast-load"))
        .args(["fanout", "--reach"])
        .output()
        .expect("run corecast-load");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rate"));
}

#[test]
fn fanout_with_a_token_against_a_server_that_requires_one() {
    // Anonymous connections are refused here: the run completes only if
    // every connection carries the token.
    let s = TestServer::with_auth(|c| {
        c.limits.rate_per_sec = 1e9;
        c.limits.rate_burst = 1e9;
    });
    let t = token("bench", |_| {});
    let v = load(
        &s,
        &[
            "fanout",
            "--members",
            "20",
            "--rate",
            "50",
            "--procs",
            "2",
            "--token",
            &t,
        ],
    );
    assert_eq!(v["open_after_setup"], 21, "{v:#}");
    assert_eq!(v["missing"], 0);
}

#[test]
fn echo_at_a_fixed_rate_completes_within_its_rate() {
    let s = unlimited();
    let v = load(
        &s,
        &["echo", "--conns", "4", "--size", "32", "--rate", "200"],
    );
    let ops = v["ops"].as_u64().unwrap();
    assert!(ops > 0, "{v:#}");
    // Open loop at 200/s: no more than the schedule allows in the window
    // (closed loop on loopback does thousands per second).
    let window = v["window_s"].as_f64().unwrap();
    assert!(ops as f64 <= 200.0 * window * 1.5 + 4.0, "{v:#}");
    assert!(v["latency_us"]["count"].as_u64().unwrap() > 0, "{v:#}");
    // Paced sends are timed against their schedule.
    assert!(v["send_lag_us"]["count"].as_u64().unwrap() > 0, "{v:#}");
}

#[test]
fn connect_cycles_complete() {
    let s = unlimited();
    let v = load(&s, &["connect", "--conns", "4"]);
    assert!(v["ops"].as_u64().unwrap() > 0, "{v:#}");
}

#[test]
fn idle_connections_are_held_and_memory_reported() {
    let server = ChildServer::start(&[]);
    let pid = server.child.id().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_corecast-load"))
        .args([
            "idle",
            "--conns",
            "200",
            "--duration",
            "1",
            "--warmup",
            "0",
            "--json",
            "--quiet",
        ])
        .args(["--addr", &server.addr.to_string(), "--server-pid", &pid])
        .output()
        .expect("run corecast-load");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(out.status.success(), "{v:#}");
    assert_eq!(v["open_after_setup"], 200);
    assert_eq!(v["open_at_end"], 200);
    let mem = &v["memory"];
    assert!(mem["rss_after_kib"].as_u64().unwrap() > 0, "{v:#}");
}

#[test]
fn fanout_reports_publish_to_ack_latency() {
    let s = unlimited();
    let v = load(
        &s,
        &[
            "fanout",
            "--rooms",
            "2",
            "--members",
            "0",
            "--publishers",
            "2",
            "--inflight",
            "2",
        ],
    );
    let acks = v["ack_latency_us"]["count"].as_u64().unwrap();
    assert!(acks > 0, "{v:#}");
    assert!(acks <= v["published"].as_u64().unwrap(), "{v:#}");
}

#[test]
fn recovery_replays_every_missed_message() {
    let s = unlimited();
    // The scenario itself checks each replay (exact seqs, recovered: true)
    // and counts any mismatch as an error, which `load` rejects.
    let v = load(&s, &["recovery", "--missed", "200", "--size", "50"]);
    assert!(v["ops"].as_u64().unwrap() > 0, "{v:#}");
    assert!(v["latency_us"]["p50"].as_u64().unwrap() > 0, "{v:#}");
}

fn tls_unlimited(pki: &Pki) -> TestServer {
    TestServer::start(|c| {
        c.echo = true;
        c.tls.cert = Some(pki.s("server.pem"));
        c.tls.key = Some(pki.s("server.key"));
        c.limits.rate_per_sec = 1e9;
        c.limits.rate_burst = 1e9;
    })
}

/// Every member of every room ended at the room's last acknowledged seq.
fn assert_fanout_complete(v: &Value, members_per_room: u64) {
    assert!(v["published"].as_u64().unwrap() > 0, "{v:#}");
    assert!(v["ops"].as_u64().unwrap() > 0, "{v:#}");
    assert_eq!(v["missing"], 0, "{v:#}");
    assert_eq!(v["out_of_order"], 0, "{v:#}");
    for room in v["rooms"].as_array().unwrap() {
        let (max, members, sum) = (
            room[0].as_u64().unwrap(),
            room[1].as_u64().unwrap(),
            room[2].as_u64().unwrap(),
        );
        assert!(max > 0, "{v:#}");
        assert_eq!(members, members_per_room, "{v:#}");
        assert_eq!(sum, max * members, "{v:#}");
    }
}

#[test]
fn fanout_over_tls_without_verification_delivers_everything() {
    let pki = pki();
    let s = tls_unlimited(&pki);
    let v = load(
        &s,
        &[
            "fanout",
            "--tls",
            "--rooms",
            "2",
            "--members",
            "20",
            "--publishers",
            "2",
            "--inflight",
            "4",
            "--threads",
            "2",
            "--size",
            "300",
        ],
    );
    assert_eq!(v["args"]["tls"], true);
    assert_eq!(v["args"]["tls_verify"], false);
    assert_fanout_complete(&v, 21);
    // 40 members + 2 publishers, each one full handshake, none resumed.
    assert_eq!(
        v["tls_handshakes"],
        json!({"full": 42, "resumed": 0}),
        "{v:#}"
    );
    assert_eq!(v["open_at_end"], 42, "{v:#}");
}

#[test]
fn fanout_over_tls_verified_against_the_ca_over_two_processes() {
    let pki = pki();
    let s = tls_unlimited(&pki);
    let ca = pki.s("ca.pem");
    let v = load(
        &s,
        &[
            "fanout",
            "--tls-ca",
            &ca,
            "--rooms",
            "1",
            "--members",
            "30",
            "--publishers",
            "2",
            "--inflight",
            "4",
            "--procs",
            "2",
        ],
    );
    assert_eq!(v["args"]["tls_verify"], true);
    assert_fanout_complete(&v, 32);
    assert_eq!(v["tls_handshakes"]["full"], 32, "{v:#}");
}

#[test]
fn echo_and_idle_over_tls() {
    let pki = pki();
    let s = tls_unlimited(&pki);
    let v = load(
        &s,
        &[
            "echo",
            "--tls",
            "--conns",
            "4",
            "--size",
            "2000",
            "--inflight",
            "2",
        ],
    );
    assert!(v["ops"].as_u64().unwrap() > 0, "{v:#}");
    assert_eq!(v["open_at_end"], 4, "{v:#}");
    let v = load(&s, &["idle", "--tls", "--conns", "50"]);
    assert_eq!(v["open_at_end"], 50, "{v:#}");
    assert_eq!(v["tls_handshakes"]["full"], 50, "{v:#}");
}

#[test]
fn connect_over_tls_counts_full_and_resumed_handshakes() {
    let pki = pki();
    let s = tls_unlimited(&pki);
    let ca = pki.s("ca.pem");
    let v = load(&s, &["connect", "--tls-ca", &ca, "--conns", "4"]);
    let ops = v["ops"].as_u64().unwrap();
    assert!(ops > 0, "{v:#}");
    // Every cycle is one TLS handshake, full without --tls-resume (the
    // count covers the warm-up and the end too, so it is at least ops).
    assert_eq!(v["tls_handshakes"]["resumed"], 0, "{v:#}");
    assert!(
        v["tls_handshakes"]["full"].as_u64().unwrap() >= ops,
        "{v:#}"
    );
    let v = load(
        &s,
        &["connect", "--tls-ca", &ca, "--conns", "4", "--tls-resume"],
    );
    let hs = &v["tls_handshakes"];
    assert!(v["ops"].as_u64().unwrap() > 0, "{v:#}");
    assert!(
        hs["resumed"].as_u64().unwrap() > hs["full"].as_u64().unwrap(),
        "after the first handshakes, sessions resume: {v:#}"
    );
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let pki = pki();
    let s = tls_unlimited(&pki);
    let out = Command::new(env!("CARGO_BIN_EXE_corecast-load"))
        .args(["echo", "--conns", "2", "--tls-ca", &pki.s("other-ca.pem")])
        .args(["--addr", &s.addr.to_string(), "--json", "--quiet"])
        .args(["--duration", "0.5", "--warmup", "0", "--sources", "1"])
        .output()
        .expect("run corecast-load");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(out.status.code(), Some(1), "{v:#}");
    assert_eq!(v["ok"], false, "{v:#}");
    assert_eq!(v["errors"], 2, "{v:#}");
    let first = v["first_error"].as_str().unwrap();
    assert!(first.contains("certificate"), "{first}");
    assert_eq!(v["tls_handshakes"]["full"], 0, "{v:#}");
}

/// What the fake server gets wrong.
#[derive(Clone, Copy)]
enum Fault {
    /// Acks every publish but delivers only seqs up to this one.
    DeliversUpTo(u64),
    /// Delivers every publish but acks only seqs up to this one.
    AcksUpTo(u64),
}

/// A minimal corecast look-alike on a real socket (welcome, join, publish,
/// message) that is wrong in one way; one thread per connection.
fn fake_server(fault: Fault) -> SocketAddr {
    type Rooms = Arc<Mutex<HashMap<String, (u64, Vec<Sender<String>>)>>>;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let rooms: Rooms = Arc::default();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let rooms = rooms.clone();
            std::thread::spawn(move || {
                let Ok(mut ws) = tungstenite::accept(stream) else {
                    return;
                };
                ws.get_ref()
                    .set_read_timeout(Some(Duration::from_millis(2)))
                    .unwrap();
                let (tx, rx): (Sender<String>, Receiver<String>) = channel();
                // `type` first, as corecast writes it (the generator's
                // fast path relies on that).
                let _ = tx.send(r#"{"type":"welcome","session":"s"}"#.to_string());
                loop {
                    match ws.read() {
                        Ok(tungstenite::Message::Text(t)) => {
                            let v: Value = serde_json::from_str(&t).unwrap();
                            let room = v["room"].as_str().unwrap_or("").to_string();
                            let mut rooms = rooms.lock().unwrap();
                            let r = rooms.entry(room.clone()).or_default();
                            match v["type"].as_str() {
                                Some("join") => {
                                    r.1.push(tx.clone());
                                    let _ = tx.send(format!(
                                        r#"{{"type":"ack","id":{},"room":"{room}","seq":{}}}"#,
                                        v["id"], r.0
                                    ));
                                }
                                Some("publish") => {
                                    r.0 += 1;
                                    let seq = r.0;
                                    if !matches!(fault, Fault::AcksUpTo(n) if seq > n) {
                                        let _ = tx.send(format!(
                                            r#"{{"type":"ack","id":{},"room":"{room}","seq":{seq}}}"#,
                                            v["id"]
                                        ));
                                    }
                                    if !matches!(fault, Fault::DeliversUpTo(n) if seq > n) {
                                        let m = format!(
                                            r#"{{"type":"message","room":"{room}","seq":{seq},"data":{}}}"#,
                                            v["data"]
                                        );
                                        for member in &r.1 {
                                            let _ = member.send(m.clone());
                                        }
                                    }
                                }
                                _ => {}
                            }
                        }
                        Ok(_) => {}
                        Err(tungstenite::Error::Io(e))
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => return,
                    }
                    while let Ok(out) = rx.try_recv() {
                        if ws.write(tungstenite::Message::text(out)).is_err() {
                            return;
                        }
                    }
                    if ws.flush().is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A short fan-out run against `addr`: (exit code, JSON result).
fn fanout_against(addr: SocketAddr) -> (Option<i32>, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_corecast-load"))
        .args([
            "fanout",
            "--rooms",
            "1",
            "--members",
            "3",
            "--publishers",
            "1",
        ])
        .args(["--inflight", "2", "--duration", "1", "--warmup", "0.2"])
        .args(["--drain", "0.5", "--sources", "1", "--json", "--quiet"])
        .args(["--addr", &addr.to_string()])
        .output()
        .expect("run corecast-load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: stdout {stdout:?}"));
    (out.status.code(), v)
}

#[test]
fn acked_messages_no_member_received_are_missing_and_fail_the_run() {
    // Every member (the publisher is one) stops at seq 20 while acks go on:
    // judged by what members saw, all of them are "complete".
    let (code, v) = fanout_against(fake_server(Fault::DeliversUpTo(20)));
    assert_eq!(code, Some(1), "{v:#}");
    assert_eq!(v["ok"], false, "{v:#}");
    let room = &v["rooms"][0];
    let (last_acked, members, sum) = (
        room[0].as_u64().unwrap(),
        room[1].as_u64().unwrap(),
        room[2].as_u64().unwrap(),
    );
    assert!(last_acked > 20, "publishing went past seq 20: {v:#}");
    assert_eq!((members, sum), (4, 4 * 20), "{v:#}");
    assert_eq!(v["missing"], (last_acked - 20) * 4, "{v:#}");
    assert_eq!(v["unacked"], 0, "{v:#}");
    assert_eq!(v["drain_timeouts"], 1, "the drain gave up: {v:#}");
}

#[test]
fn publishes_never_acked_are_reported_and_fail_the_run() {
    // Seqs past 20 are delivered to everyone but never acked: the
    // publisher (2 in flight) stalls, and waiting for its acks times out.
    let (code, v) = fanout_against(fake_server(Fault::AcksUpTo(20)));
    assert_eq!(code, Some(1), "{v:#}");
    assert_eq!(v["ok"], false, "{v:#}");
    assert_eq!(v["unacked"], 2, "{v:#}");
    assert_eq!(v["missing"], 0, "every member got seqs 1..=22: {v:#}");
    assert_eq!(v["rooms"][0], json!([22, 4, 88]), "{v:#}");
}

/// An echo server that answers only the first `replies` messages of each
/// connection and then only counts what it receives (total over all
/// connections, returned with the address).
fn echo_that_stops_answering(replies: u64) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let total = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let received = received.clone();
            std::thread::spawn(move || {
                let Ok(mut ws) = tungstenite::accept(stream) else {
                    return;
                };
                let mut n = 0;
                while let Ok(m) = ws.read() {
                    if !m.is_text() {
                        continue;
                    }
                    n += 1;
                    received.fetch_add(1, Ordering::SeqCst);
                    if n <= replies && ws.send(m).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, total)
}

fn echo_against(addr: SocketAddr, extra: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_corecast-load"))
        .args(["echo", "--conns", "2", "--duration", "1", "--warmup", "0.2"])
        .args([
            "--sources",
            "1",
            "--json",
            "--quiet",
            "--addr",
            &addr.to_string(),
        ])
        .args(extra)
        .output()
        .expect("run corecast-load");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(out.status.success(), "{v:#}");
    v
}

#[test]
fn echo_with_a_rate_keeps_sending_when_replies_stop() {
    // Closed loop (no --rate): one in flight per connection, so after its
    // 5 replies each connection sends exactly one more and waits.
    let (addr, received) = echo_that_stops_answering(5);
    let v = echo_against(addr, &[]);
    assert_eq!(received.load(Ordering::SeqCst), 2 * 6, "{v:#}");
    // Open loop: sends keep to the schedule whatever comes back.
    let (addr, received) = echo_that_stops_answering(5);
    let v = echo_against(addr, &["--rate", "200"]);
    let n = received.load(Ordering::SeqCst);
    assert!(
        n > 2 * 6 + 20,
        "only {n} received at 200/s for ~1.2 s: {v:#}"
    );
}

#[test]
fn perf_syscalls_counts_the_servers_writes_or_says_why_not() {
    let server = ChildServer::start(&[("CORECAST_ECHO", "true")]);
    let pid = server.child.id().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_corecast-load"))
        .args(["echo", "--conns", "4", "--rate", "400", "--perf-syscalls"])
        .args(["--duration", "1", "--warmup", "0.3", "--json", "--quiet"])
        .args(["--addr", &server.addr.to_string(), "--server-pid", &pid])
        .output()
        .expect("run corecast-load");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    // Without perf (or its permission) the run still succeeds and says why.
    assert!(out.status.success(), "{v:#}");
    if v["write_syscalls"].is_null() {
        assert!(v["perf_error"].is_string(), "{v:#}");
        return;
    }
    // Every echo the server sent back took a write of some kind.
    let writes = &v["write_syscalls"];
    let ops = v["ops"].as_u64().unwrap();
    assert!(ops > 0, "{v:#}");
    assert!(writes["total"].as_u64().unwrap() > 0, "{v:#}");
    assert!(writes["per_op"].as_f64().unwrap() > 0.0, "{v:#}");
    assert!(v["read_syscalls"]["total"].as_u64().unwrap() > 0, "{v:#}");
    assert!(v["epoll_waits"]["total"].as_u64().unwrap() > 0, "{v:#}");
    assert!(v["perf_error"].is_null(), "{v:#}");
}
