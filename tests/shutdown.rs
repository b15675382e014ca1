//! Graceful shutdown of the server binary on SIGTERM: every client is told
//! to reconnect and closed with 1001, new connections are refused while
//! draining, and the process exits 0 no later than `shutdown_timeout`.

mod common;

use common::*;
use std::io::ErrorKind;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Lines of the drain starting on a core.
fn draining_cores(server: &ChildServer) -> usize {
    server
        .log()
        .iter()
        .filter(|l| l.contains("draining"))
        .count()
}

#[test]
fn sigterm_sends_reconnect_then_1001_and_exits_zero() {
    let mut server = ChildServer::start(&[("CORECAST_CORES", "2")]);
    let mut clients: Vec<Client> = (0..4)
        .map(|_| Client::connect_welcome(&server.url("/ws")).0)
        .collect();
    for c in clients.iter_mut().take(2) {
        c.join("lobby");
    }
    // Each joiner's own `joined` (and the second one's, for the first).
    clients[0].recv_type("joined");
    clients[0].recv_type("joined");
    clients[1].recv_type("joined");

    server.signal(libc::SIGTERM);
    for (i, c) in clients.iter_mut().enumerate() {
        let (code, reason, texts) = c.read_until_close();
        assert_eq!(
            texts.len(),
            1,
            "client {i}: exactly one event before the close: {texts:?}"
        );
        let ev = &texts[0];
        assert_eq!(ev["type"], "reconnect", "client {i}: {ev}");
        let after = ev["after_ms"].as_u64().expect("after_ms is a number");
        assert!(
            (100..=5000).contains(&after),
            "client {i}: after_ms {after} outside 100..=5000"
        );
        assert_eq!(code, Some(1001), "client {i}: close reason {reason:?}");
    }
    let code = server.wait_exit(Duration::from_secs(12));
    assert_eq!(
        code,
        Some(0),
        "exit within shutdown_timeout (10 s); log:\n{}",
        server.log().join("\n")
    );
}

#[test]
fn new_connections_are_refused_once_draining() {
    let mut server = ChildServer::start(&[("CORECAST_CORES", "2")]);
    let addr = server.addr;
    // A client that never reads keeps the server draining for a while (it
    // never answers the close handshake).
    let (_stuck, _) = Client::connect_welcome(&server.url("/ws"));
    server.signal(libc::SIGTERM);
    assert!(
        eventually(WAIT, || draining_cores(&server) == 2),
        "both cores logged the drain: {:?}",
        server.log()
    );
    let refused = TcpStream::connect(addr);
    let still_running = server.child.try_wait().unwrap().is_none();
    assert!(
        still_running,
        "the server exited before the check; it should wait for the stuck client"
    );
    match refused {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}"),
        Ok(_) => panic!("a TCP connection was accepted after the drain started on every core"),
    }
}

#[test]
fn client_ignoring_the_close_does_not_hold_the_server_past_shutdown_timeout() {
    let mut server =
        ChildServer::start(&[("CORECAST_CORES", "1"), ("CORECAST_SHUTDOWN_TIMEOUT", "2")]);
    let (_stuck, _) = Client::connect_welcome(&server.url("/ws"));
    let start = Instant::now();
    server.signal(libc::SIGTERM);
    // The deadline is 2 s; a per-connection close timeout (5 s) must not be
    // what ends the drain.
    let code = server.wait_exit(Duration::from_millis(4500));
    assert_eq!(
        code,
        Some(0),
        "still running (or failed) {:?} after SIGTERM with shutdown_timeout = 2; log:\n{}",
        start.elapsed(),
        server.log().join("\n")
    );
    assert!(
        eventually(Duration::from_secs(1), || server
            .log()
            .iter()
            .any(|l| l.contains("drain deadline reached"))),
        "the drain ended by its deadline: {:?}",
        server.log()
    );
}
