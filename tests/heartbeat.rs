//! Heartbeat over real sockets: the server pings every `heartbeat` seconds,
//! drops a connection that is silent for two intervals, and keeps one that
//! answers pings or sends commands.

mod common;

use common::*;
use serde_json::json;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use tungstenite::Message;

/// Performs the WebSocket upgrade by hand on a raw socket and returns it
/// right after the 101 head (nothing of the WebSocket stream is read).
fn raw_upgrade(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    // Read the response head one byte at a time so that no frame byte is consumed.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("read the 101 head");
        assert_eq!(n, 1, "EOF inside the response head: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    s
}

/// Waits (without reading any data) until the peer shuts the connection down
/// (FIN or RST), up to `timeout`. Returns whether it did.
fn wait_peer_gone(s: &TcpStream, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut fds = libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut fds, 1, left.as_millis().max(1) as i32) };
        if rc > 0 && fds.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            return true;
        }
        assert!(
            rc >= 0 || std::io::Error::last_os_error().kind() == ErrorKind::Interrupted,
            "poll failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Splits unmasked server frames into (opcode, payload); stops at an
/// incomplete frame.
fn server_frames(mut buf: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while buf.len() >= 2 {
        let opcode = buf[0] & 0x0f;
        assert_eq!(buf[1] & 0x80, 0, "server frames are not masked");
        let (len, hdr) = match buf[1] & 0x7f {
            126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
            127 if buf.len() >= 10 => (
                u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => break,
            n => (n as usize, 2),
        };
        if buf.len() < hdr + len {
            break;
        }
        out.push((opcode, buf[hdr..hdr + len].to_vec()));
        buf = &buf[hdr + len..];
    }
    out
}

#[test]
fn silent_client_is_dropped_after_two_missed_intervals() {
    let server = TestServer::start(|c| c.heartbeat = 1);
    let mut s = raw_upgrade(server.addr);
    let upgraded = Instant::now();
    assert!(
        wait_peer_gone(&s, Duration::from_secs(6)),
        "a client that never reads or answers pings is still connected after 6 s \
         with heartbeat = 1"
    );
    let gone_after = upgraded.elapsed();
    assert!(
        gone_after >= Duration::from_millis(1500),
        "dropped after {gone_after:?}: before two heartbeat intervals passed"
    );
    // What it was sent before the drop: the welcome and at least one ping,
    // then the end of the stream.
    let mut data = Vec::new();
    match s.read_to_end(&mut data) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("expected EOF or reset after the drop, got {e}"),
    }
    let frames = server_frames(&data);
    assert!(
        matches!(frames.first(), Some((0x1, t)) if t.starts_with(b"{\"type\":\"welcome\"")),
        "first frame is the welcome: {frames:?}"
    );
    assert!(
        frames.iter().any(|(op, _)| *op == 0x9),
        "the server pinged before dropping: {frames:?}"
    );
}

#[test]
fn server_pings_a_connected_client_every_interval() {
    let server = TestServer::start(|c| c.heartbeat = 1);
    let (mut c, w) = Client::connect_welcome(&server.url("/ws"));
    assert_eq!(w["heartbeat"], 1, "welcome announces the interval: {w}");
    let start = Instant::now();
    let mut pings = 0;
    while pings < 2 {
        match c.ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(other) => panic!("expected a ping, got {other:?}"),
            Err(e) => panic!("expected a ping within the read timeout, got {e}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{pings} ping(s) in 5 s with heartbeat = 1"
        );
    }
}

#[test]
fn client_that_answers_pings_stays_connected() {
    let server = TestServer::start(|c| c.heartbeat = 1);
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    c.ws.get_ref()
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let start = Instant::now();
    let mut pings = 0;
    // Keep reading (tungstenite queues a pong for each ping and writes it on
    // the next read) for more than four intervals.
    while start.elapsed() < Duration::from_millis(4500) {
        match c.ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!(
                "connection ended after {:?} although pings were answered: {e}",
                start.elapsed()
            ),
        }
    }
    assert!(pings >= 2, "only {pings} pings in 4.5 s");
    c.ws.get_ref().set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(
        c.request(json!({"type":"ping","id":"alive"})),
        json!({"type":"pong","id":"alive"})
    );
}

#[test]
fn client_that_sends_commands_but_never_reads_stays_connected() {
    let server = TestServer::start(|c| c.heartbeat = 1);
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    // Never read (so no ping is answered) but send a command every 300 ms.
    let start = Instant::now();
    let mut sent = 0;
    while start.elapsed() < Duration::from_millis(4500) {
        c.send(json!({"type":"ping","id":sent}));
        sent += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    c.send(json!({"type":"ping","id":"last"}));
    // Every command was answered, in order, and the connection is alive.
    for i in 0..sent {
        assert_eq!(c.recv(), json!({"type":"pong","id":i}));
    }
    assert_eq!(c.recv(), json!({"type":"pong","id":"last"}));
}
