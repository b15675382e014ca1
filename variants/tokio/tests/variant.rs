//! The built `corecast-tokio` (and `corecast-axum`) binaries over real
//! loopback sockets, driven by blocking tungstenite clients.

use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::Duration;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

const BINS: [&str; 2] = [
    env!("CARGO_BIN_EXE_corecast-tokio"),
    env!("CARGO_BIN_EXE_corecast-axum"),
];

struct Server {
    child: Child,
    port: u16,
    line: String,
}

impl Server {
    fn start(bin: &str, extra: &[&str]) -> Server {
        let cores: &[&str] = if extra.contains(&"--cores") {
            &[]
        } else {
            &["--cores", "2"]
        };
        let mut child = Command::new(bin)
            .args(["--listen", "127.0.0.1:0"])
            .args(cores)
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start server");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).expect("listening line");
        // Keep draining stderr so the server never blocks on it.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("no addr in {line:?}"));
        let port = addr.rsplit(':').next().unwrap().parse().unwrap();
        Server { child, port, line }
    }

    fn connect(&self, path: &str) -> Ws {
        let (ws, _) =
            tungstenite::connect(format!("ws://127.0.0.1:{}{path}", self.port)).expect("connect");
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        }
        ws
    }

    /// A `/ws` client past its `welcome`; returns its user id too.
    fn client(&self) -> (Ws, String) {
        let mut ws = self.connect("/ws");
        let w = recv_json(&mut ws);
        assert_eq!(w["type"], "welcome", "{w}");
        (ws, w["user"].as_str().unwrap().to_string())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).expect("send");
}

fn recv_json(ws: &mut Ws) -> Value {
    loop {
        match ws.read().expect("read") {
            Message::Text(t) => {
                return serde_json::from_str(t.as_str()).unwrap_or_else(|e| panic!("{t}: {e}"));
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn join(ws: &mut Ws, room: &str) -> Value {
    send(ws, json!({"type":"join","id":"j","room":room}));
    let ack = recv_json(ws);
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["room"], room);
    ack
}

fn for_each_bin(test: impl Fn(&str)) {
    for bin in BINS {
        eprintln!("--- {bin}");
        test(bin);
    }
}

#[test]
fn announces_the_real_port_and_workers() {
    let s = Server::start(BINS[0], &["--cores", "3"]);
    assert!(
        s.line.starts_with(&format!(
            "corecast-tokio listening addr=127.0.0.1:{} workers=3",
            s.port
        )),
        "{}",
        s.line
    );
    let s = Server::start(BINS[1], &["--cores", "0"]);
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(
        s.line.trim_end(),
        format!(
            "corecast-axum listening addr=127.0.0.1:{} workers={cpus}",
            s.port
        )
    );
}

#[test]
fn echo_returns_every_message_unchanged() {
    for_each_bin(|bin| {
        let s = Server::start(bin, &[]);
        let mut ws = s.connect("/echo");
        ws.send(Message::text("hello")).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text("hello"));
        ws.send(Message::binary(vec![0u8, 1, 2, 255])).unwrap();
        assert_eq!(ws.read().unwrap(), Message::binary(vec![0u8, 1, 2, 255]));
        // Pipelined, and one larger than /ws allows.
        let big: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
        for i in 0..50 {
            ws.write(Message::text(format!("m{i}"))).unwrap();
        }
        ws.write(Message::binary(big.clone())).unwrap();
        ws.flush().unwrap();
        for i in 0..50 {
            assert_eq!(ws.read().unwrap(), Message::text(format!("m{i}")));
        }
        assert_eq!(ws.read().unwrap(), Message::binary(big));
        ws.close(None).unwrap();
    });
}

#[test]
fn unknown_route_is_refused() {
    let s = Server::start(BINS[0], &[]);
    let err = tungstenite::connect(format!("ws://127.0.0.1:{}/nope", s.port)).unwrap_err();
    match err {
        tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 404),
        other => panic!("{other}"),
    }
}

/// N clients join one room; several publish concurrently (pipelined). Every
/// client receives every message, in seq order 1..=total, and each
/// publisher's acks carry the seqs of its own messages.
#[test]
fn fan_out_is_complete_and_in_seq_order() {
    for_each_bin(|bin| {
        const CLIENTS: usize = 12;
        const PUBLISHERS: usize = 6;
        const EACH: usize = 300;
        const TOTAL: u64 = (PUBLISHERS * EACH) as u64;
        let s = Server::start(bin, &[]);
        let mut clients: Vec<(Ws, String)> = (0..CLIENTS).map(|_| s.client()).collect();
        let mut epoch = None;
        for (i, (ws, _)) in clients.iter_mut().enumerate() {
            let ack = join(ws, "fan");
            assert_eq!(ack["seq"], 0);
            assert_eq!(ack["members"], i + 1);
            let e = ack["epoch"].as_str().unwrap().to_string();
            assert_eq!(e.len(), 8);
            assert_eq!(epoch.get_or_insert(e.clone()), &e);
        }
        let epoch = epoch.unwrap();
        let users: Vec<String> = clients.iter().map(|c| c.1.clone()).collect();
        let barrier = Arc::new(Barrier::new(CLIENTS));
        let threads: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(i, (mut ws, _))| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    let publisher = i < PUBLISHERS;
                    if publisher {
                        for n in 0..EACH {
                            let cmd =
                                json!({"type":"publish","id":n,"room":"fan","data":{"p":i,"n":n}});
                            ws.write(Message::text(cmd.to_string())).unwrap();
                        }
                        ws.flush().unwrap();
                    }
                    let mut messages = Vec::new();
                    let mut acks = Vec::new();
                    while messages.len() < TOTAL as usize || (publisher && acks.len() < EACH) {
                        let v = recv_json(&mut ws);
                        match v["type"].as_str() {
                            Some("message") => messages.push(v),
                            Some("ack") => acks.push(v),
                            _ => panic!("client {i}: unexpected {v}"),
                        }
                    }
                    ws.close(None).ok();
                    (messages, acks)
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();

        // The reference order: what client 0 saw (every client must agree).
        let reference = &results[0].0;
        for (i, (messages, acks)) in results.iter().enumerate() {
            assert_eq!(messages.len() as u64, TOTAL, "client {i}");
            for (k, m) in messages.iter().enumerate() {
                assert_eq!(
                    m["seq"],
                    k as u64 + 1,
                    "client {i}: gap or reorder at {k}: {m}"
                );
                assert_eq!(m["room"], "fan");
                assert_eq!(m["epoch"], epoch.as_str());
                assert!(m["ts"].as_u64().unwrap() > 1_600_000_000_000);
                assert_eq!(m, &reference[k], "client {i} disagrees at seq {}", k + 1);
            }
            if i < PUBLISHERS {
                assert_eq!(acks.len(), EACH, "client {i}");
                let mut seen = HashSet::new();
                for (n, ack) in acks.iter().enumerate() {
                    // Acks come in command order, each with its message's seq.
                    assert_eq!(ack["id"], n, "client {i}: {ack}");
                    let seq = ack["seq"].as_u64().unwrap();
                    assert!(seen.insert(seq));
                    let m = &reference[seq as usize - 1];
                    assert_eq!(m["data"], json!({"p":i,"n":n}), "ack {ack} vs {m}");
                    assert_eq!(m["from"]["user"], users[i].as_str());
                    assert_eq!(m["ts"], ack["ts"]);
                }
            } else {
                assert!(acks.is_empty(), "client {i}: {acks:?}");
            }
        }
        // Each publisher's messages appear in the order it sent them.
        let mut next: HashMap<u64, u64> = HashMap::new();
        for m in reference {
            let p = m["data"]["p"].as_u64().unwrap();
            let n = next.entry(p).or_default();
            assert_eq!(m["data"]["n"], *n);
            *n += 1;
        }
    });
}

#[test]
fn a_joiner_gets_exactly_the_messages_after_its_ack() {
    for_each_bin(|bin| {
        let s = Server::start(bin, &[]);
        let (mut a, user_a) = s.client();
        join(&mut a, "r");
        for n in 0..5 {
            send(&mut a, json!({"type":"publish","id":n,"room":"r","data":n}));
            assert_eq!(recv_json(&mut a)["type"], "message");
            let ack = recv_json(&mut a);
            assert_eq!(
                ack,
                json!({"type":"ack","id":n,"room":"r","seq":n+1,"ts":ack["ts"]})
            );
        }
        let (mut b, _) = s.client();
        let ack = join(&mut b, "r");
        assert_eq!(ack["seq"], 5);
        assert_eq!(ack["members"], 2);
        assert_eq!(ack["id"], "j");
        send(
            &mut a,
            json!({"type":"publish","room":"r","data":{"x":null}}),
        );
        let m = recv_json(&mut b);
        assert_eq!(
            m,
            json!({"type":"message","room":"r","seq":6,"epoch":ack["epoch"],"ts":m["ts"],
                   "from":{"user":user_a},"data":{"x":null}})
        );
        // Rejoining answers the current state and changes nothing.
        let again = join(&mut b, "r");
        assert_eq!(
            (again["seq"].as_u64(), again["members"].as_u64()),
            (Some(6), Some(2))
        );
        // Leaving stops delivery.
        send(&mut b, json!({"type":"leave","id":1,"room":"r"}));
        assert_eq!(recv_json(&mut b), json!({"type":"ack","id":1,"room":"r"}));
        send(&mut a, json!({"type":"publish","room":"r","data":7}));
        send(&mut b, json!({"type":"ping","id":"p"}));
        assert_eq!(recv_json(&mut b), json!({"type":"pong","id":"p"}));
    });
}

#[test]
fn errors_have_their_codes_and_ids() {
    for_each_bin(|bin| {
        let s = Server::start(bin, &[]);
        let (mut ws, _) = s.client();
        let cases = [
            (
                json!({"type":"publish","id":1,"room":"r","data":1}),
                "not_member",
            ),
            (json!({"type":"leave","id":2,"room":"r"}), "not_member"),
            (json!({"type":"frobnicate","id":3}), "unknown_type"),
            (json!({"type":"join","id":4}), "missing_field"),
            (
                json!({"type":"join","id":5,"room":"no spaces"}),
                "invalid_room",
            ),
            (json!({"type":"join","id":6,"room":7}), "bad_json"),
            (json!({"id":7}), "missing_field"),
        ];
        for (cmd, code) in cases {
            let id = cmd["id"].clone();
            send(&mut ws, cmd);
            let e = recv_json(&mut ws);
            assert_eq!(
                (e["type"].as_str(), e["code"].as_str()),
                (Some("error"), Some(code)),
                "{e}"
            );
            assert_eq!(e["id"], id);
            assert!(e["message"].is_string());
        }
        ws.send(Message::text("{not json")).unwrap();
        let e = recv_json(&mut ws);
        assert_eq!(e["code"], "bad_json");
        assert!(e.get("id").is_none());
        ws.send(Message::binary(vec![1u8])).unwrap();
        assert_eq!(recv_json(&mut ws)["code"], "unsupported");
        join(&mut ws, "r");
        let big = "x".repeat(70_000);
        send(
            &mut ws,
            json!({"type":"publish","id":8,"room":"r","data":&big[..65_600]}),
        );
        assert_eq!(recv_json(&mut ws)["code"], "too_large");
        for i in 1..100 {
            join(&mut ws, &format!("r{i}"));
        }
        send(&mut ws, json!({"type":"join","id":9,"room":"one-too-many"}));
        assert_eq!(recv_json(&mut ws)["code"], "room_limit");
        // A frame over 65 KiB + 1 KiB ends the connection: corecast-tokio
        // closes with 1009, axum's tungstenite drops it.
        ws.send(Message::text(big)).unwrap();
        loop {
            match ws.read() {
                Ok(Message::Close(Some(f))) => {
                    assert_eq!(f.code, CloseCode::Size);
                    break;
                }
                Ok(Message::Close(None)) => panic!("close without code"),
                Ok(_) => {}
                Err(_) if bin.ends_with("axum") => break,
                Err(e) => panic!("{e}"),
            }
        }
    });
}

/// A member that stops reading while the room keeps publishing falls more
/// than `--room-capacity` frames behind and is closed with 4009 (it gets
/// what was already written to its socket first, still without gaps).
#[test]
fn a_slow_consumer_is_closed_with_4009() {
    for_each_bin(|bin| {
        let s = Server::start(bin, &["--room-capacity", "16"]);
        let (mut slow, _) = s.client();
        let (mut publisher, _) = s.client();
        join(&mut slow, "busy");
        join(&mut publisher, "busy");
        let data = "y".repeat(16 * 1024);
        // 3000 x 16 KiB = 48 MiB: far more than the loopback socket buffers.
        for n in 0..3000 {
            send(
                &mut publisher,
                json!({"type":"publish","id":n,"room":"busy","data":data}),
            );
            assert_eq!(recv_json(&mut publisher)["type"], "message");
            assert_eq!(recv_json(&mut publisher)["type"], "ack");
        }
        let mut expect = 1;
        loop {
            match slow.read() {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    assert_eq!(v["seq"], expect, "gap before the close");
                    expect += 1;
                }
                Ok(Message::Close(Some(f))) => {
                    assert_eq!(f.code, CloseCode::from(4009));
                    break;
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(e) => panic!("after seq {}: {e}", expect - 1),
            }
        }
        assert!(expect < 3000, "was never behind");
        // The publisher is unaffected.
        send(&mut publisher, json!({"type":"ping","id":1}));
        assert_eq!(recv_json(&mut publisher)["type"], "pong");
    });
}

#[test]
fn sigterm_exits_zero() {
    for_each_bin(|bin| {
        let mut s = Server::start(bin, &[]);
        let _client = s.client();
        let st = Command::new("kill")
            .args(["-TERM", &s.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = s.child.try_wait().unwrap() {
                assert!(status.success(), "{status}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "still running");
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}

#[test]
fn membership_events_are_opt_in() {
    for_each_bin(|bin| {
        let s = Server::start(bin, &["--membership-events"]);
        let (mut a, user_a) = s.client();
        let (mut b, user_b) = s.client();
        join(&mut a, "m");
        let joined = |u: &str| json!({"type":"joined","room":"m","user":u,"name":null});
        assert_eq!(recv_json(&mut a), joined(&user_a));
        join(&mut b, "m");
        assert_eq!(recv_json(&mut b), joined(&user_b));
        assert_eq!(recv_json(&mut a), joined(&user_b));
        send(&mut b, json!({"type":"leave","room":"m"}));
        assert_eq!(recv_json(&mut b)["type"], "ack");
        assert_eq!(
            recv_json(&mut a),
            json!({"type":"left","room":"m","user":user_b,"name":null})
        );
        // Without the flag (every other test) there are none.
        let s = Server::start(bin, &[]);
        let (mut c, _) = s.client();
        join(&mut c, "m");
        send(&mut c, json!({"type":"ping"}));
        assert_eq!(recv_json(&mut c), json!({"type":"pong"}));
    });
}

/// A connection in several rooms gets every room's messages, each room's in
/// seq order (the multi-room receive path).
#[test]
fn several_rooms_on_one_connection_keep_per_room_order() {
    for_each_bin(|bin| {
        const ROOMS: [&str; 3] = ["a", "b", "c"];
        const EACH: u64 = 400;
        let s = Server::start(bin, &[]);
        let (mut reader, _) = s.client();
        for room in ROOMS {
            join(&mut reader, room);
        }
        let publishers: Vec<_> = ROOMS
            .iter()
            .map(|room| {
                let (mut ws, _) = s.client();
                join(&mut ws, room);
                std::thread::spawn(move || {
                    for n in 0..EACH {
                        let cmd = json!({"type":"publish","id":n,"room":room,"data":n});
                        ws.write(Message::text(cmd.to_string())).unwrap();
                    }
                    ws.flush().unwrap();
                    let mut acks = 0;
                    while acks < EACH {
                        if recv_json(&mut ws)["type"] == "ack" {
                            acks += 1;
                        }
                    }
                })
            })
            .collect();
        let mut last: HashMap<String, u64> = HashMap::new();
        for _ in 0..EACH * ROOMS.len() as u64 {
            let m = recv_json(&mut reader);
            assert_eq!(m["type"], "message", "{m}");
            let seen = last
                .entry(m["room"].as_str().unwrap().to_string())
                .or_default();
            assert_eq!(m["seq"], *seen + 1, "{m}");
            assert_eq!(m["data"], *seen);
            *seen += 1;
        }
        for p in publishers {
            p.join().unwrap();
        }
        assert!(last.values().all(|&n| n == EACH), "{last:?}");
    });
}
