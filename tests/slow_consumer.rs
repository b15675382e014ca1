//! Slow consumers, against the server binary: a member that stops reading is
//! closed with 4009 once its outbound backlog passes `limits.max_backlog`,
//! the server's memory stays bounded while large messages keep flowing, and
//! members that do read get every message.

mod common;

use common::*;
use serde_json::json;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Outbound backlog limit given to the server, bytes.
const MAX_BACKLOG: &str = "524288";
/// Size of each published `data` string, bytes (max_message is 65536).
const DATA_LEN: usize = 60_000;
/// Most messages the publisher runs ahead of the reading member, so that the
/// reader's own backlog stays far below `MAX_BACKLOG`.
const WINDOW: u64 = 4;
/// Most acks the publisher leaves unread.
const ACK_WINDOW: u64 = 16;
/// Room everyone is in.
const ROOM: &str = "big";

fn start_server() -> ChildServer {
    ChildServer::start(&[
        ("CORECAST_CORES", "2"),
        ("CORECAST_AUTH__SECRET", SECRET),
        ("CORECAST_LIMITS__RATE_PER_SEC", "100000"),
        ("CORECAST_LIMITS__RATE_BURST", "100000"),
        ("CORECAST_LIMITS__MAX_BACKLOG", MAX_BACKLOG),
        // Room history holds `size` messages per room on purpose; keep it
        // small so the RSS bound below measures the per-connection backlogs.
        ("CORECAST_HISTORY__DURABILITY", "memory"),
        ("CORECAST_HISTORY__SIZE", "10"),
    ])
}

/// Connects with a tiny receive buffer (set before connect, so the TCP
/// window stays small) and reads the welcome; returns the session id.
fn connect_small_rcvbuf(server: &ChildServer, user: &str) -> (Client, String) {
    let addr: SocketAddr = server.addr;
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let stream: TcpStream = sock.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_nodelay(true).unwrap();
    let url = server.url(&format!("/ws?token={}", token(user, |_| {})));
    let (ws, _) = tungstenite::client(url.as_str(), stream).expect("upgrade");
    let mut c = Client { ws };
    let w = c.recv_type("welcome");
    (c, w["session"].as_str().unwrap().to_string())
}

/// A member of [`ROOM`] (its own `joined` already read).
fn member(server: &ChildServer, user: &str) -> (Client, String) {
    let (mut c, session) = connect_small_rcvbuf(server, user);
    c.join(ROOM);
    assert_eq!(c.recv_type("joined")["user"], user);
    (c, session)
}

/// A publisher with publish-only access: not a member, so it gets only acks.
fn publisher(server: &ChildServer) -> Client {
    let t = token("pub", |t| t.publish = Some(vec![ROOM.into()]));
    Client::connect_welcome(&server.url(&format!("/ws?token={t}"))).0
}

/// Reads the room's messages until the one whose data is "end"; checks
/// they come in seq order without gaps; publishes its progress.
fn read_until_end(c: &mut Client, progress: &AtomicU64) -> u64 {
    let mut next = 1;
    loop {
        let v = c.recv();
        match v["type"].as_str() {
            Some("message") => {
                assert_eq!(v["seq"], next, "reading member: gap or reorder");
                progress.store(next, Ordering::Release);
                next += 1;
                if v["data"] == "end" {
                    return next - 1;
                }
                assert_eq!(v["data"].as_str().map(str::len), Some(DATA_LEN));
            }
            // A stuck member closed with 4009 leaves, and goes offline
            // once the presence grace passed (on a slow run, mid-test).
            Some("joined" | "left" | "presence") => {}
            _ => panic!("reading member got {v}"),
        }
    }
}

/// Publishes large messages, never more than [`WINDOW`] ahead of `progress`,
/// reading its acks as it goes, while `go_on(sent)` says so; then publishes
/// the "end" marker and reads the remaining acks. Returns messages published
/// (the marker included).
fn publish_paced(p: &mut Client, progress: &AtomicU64, mut go_on: impl FnMut(u64) -> bool) -> u64 {
    let data = "x".repeat(DATA_LEN);
    let mut sent = 0u64;
    let mut acked = 0u64;
    let read_ack = |p: &mut Client, acked: &mut u64| {
        let ack = p.recv_type("ack");
        *acked += 1;
        assert_eq!(ack["seq"], *acked, "acks in seq order: {ack}");
    };
    while go_on(sent) {
        let waiting = Instant::now();
        while sent >= progress.load(Ordering::Acquire) + WINDOW {
            assert!(
                waiting.elapsed() < WAIT,
                "the reading member is stuck at {} of {sent}",
                progress.load(Ordering::Acquire)
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        p.send(json!({"type":"publish","id":sent,"room":ROOM,"data":data}));
        sent += 1;
        while acked + ACK_WINDOW < sent {
            read_ack(p, &mut acked);
        }
    }
    p.send(json!({"type":"publish","id":"end","room":ROOM,"data":"end"}));
    sent += 1;
    while acked < sent {
        read_ack(p, &mut acked);
    }
    sent
}

/// Whether the server logged closing `session` as a slow consumer.
fn closed_as_slow(server: &ChildServer, session: &str) -> bool {
    server.log().iter().any(|l| {
        l.contains("closing connection")
            && l.contains(session)
            && l.contains("code=4009")
            && l.contains("slow consumer")
    })
}

#[test]
fn non_reader_gets_an_unbroken_prefix_then_close_4009() {
    let server = start_server();
    let (mut slow, slow_session) = member(&server, "slow");
    let (mut reader, _) = member(&server, "reader");
    let mut p = publisher(&server);
    let progress = AtomicU64::new(0);
    let (sent, read) = std::thread::scope(|s| {
        let reader = s.spawn(|| read_until_end(&mut reader, &progress));
        // Publish until the server gives up on the non-reader (checked every
        // 10 messages; 2000 x 60 KB is far more than any socket buffers).
        let sent = publish_paced(&mut p, &progress, |sent| {
            sent < 2000 && (sent % 10 != 0 || !closed_as_slow(&server, &slow_session))
        });
        (sent, reader.join().unwrap())
    });
    assert_eq!(read, sent, "the reading member got every message");
    assert!(
        closed_as_slow(&server, &slow_session),
        "no 4009 for the non-reader after {sent} messages of {DATA_LEN} bytes; log:\n{}",
        server.log().join("\n")
    );
    // Now the non-reader reads (within the server's close-handshake time):
    // messages from seq 1 without gaps, then the close frame 4009.
    let (code, reason, texts) = slow.read_until_close();
    let seqs: Vec<u64> = texts
        .iter()
        .filter(|v| v["type"] == "message")
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    assert!(!seqs.is_empty(), "the non-reader got no message at all");
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "the non-reader's messages are an unbroken prefix"
    );
    assert!(
        (seqs.len() as u64) < sent,
        "the non-reader was cut off before the end"
    );
    assert_eq!(code, Some(4009), "close reason {reason:?}");
}

#[test]
fn memory_stays_bounded_while_members_never_read() {
    const MESSAGES: u64 = 2000; // 2000 x 60 KB = 120 MB to each member
    let server = start_server();
    let stuck: Vec<(Client, String)> = (0..2)
        .map(|i| member(&server, &format!("stuck-{i}")))
        .collect();
    let (mut reader, _) = member(&server, "reader");
    let mut p = publisher(&server);
    std::thread::sleep(Duration::from_millis(200));
    let baseline = server.rss_kib();
    let mut peak = baseline;
    let progress = AtomicU64::new(0);
    let (sent, read) = std::thread::scope(|s| {
        let reader = s.spawn(|| read_until_end(&mut reader, &progress));
        let sent = publish_paced(&mut p, &progress, |sent| {
            if sent % 50 == 0 {
                peak = peak.max(server.rss_kib());
            }
            sent < MESSAGES
        });
        (sent, reader.join().unwrap())
    });
    peak = peak.max(server.rss_kib());
    assert_eq!(sent, MESSAGES + 1);
    assert_eq!(read, sent, "the reading member got every message");
    let growth_mib = peak.saturating_sub(baseline) / 1024;
    eprintln!("server RSS: baseline {baseline} KiB, peak {peak} KiB (+{growth_mib} MiB)");
    // What may legitimately be held: two stuck backlogs of 512 KiB, the
    // history (10 × 60 KB) and allocator slack; measured +1–2 MiB here.
    // 6 MiB would catch a backlog bound overshot by more than ~4×.
    assert!(
        growth_mib < 6,
        "server RSS grew by {growth_mib} MiB (baseline {baseline} KiB, peak {peak} KiB) \
         while {} MB went to members that do not read",
        MESSAGES * DATA_LEN as u64 / 1_000_000
    );
    for (_, session) in &stuck {
        assert!(
            eventually(WAIT, || closed_as_slow(&server, session)),
            "no 4009 for non-reader {session}; log:\n{}",
            server.log().join("\n")
        );
    }
    drop(stuck);
}
