//! Smoke runs of every load-generator scenario against a real server:
//! correctness only (everything opened, deliveries complete and in order,
//! no errors). No timing is asserted; the benchmarks measure speed.

mod common;

use common::*;
use serde_json::Value;
use std::process::Command;

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
    // every room saw messages, and every member ended at the room's last seq
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
