//! Per-address limits over real sockets from several loopback source
//! addresses (127.0.0.2, 127.0.0.3, …): one address past
//! `limits.max_connections_per_ip` or `limits.handshakes_per_ip_per_sec` is
//! refused with 429 while another is served; a closed connection gives its
//! place back; SSE streams count too; exempt networks are not counted.

mod common;

use common::*;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn server(f: impl FnOnce(&mut corecast::Config)) -> TestServer {
    TestServer::start(|c| {
        c.limits.per_ip_exempt = Vec::new();
        f(c);
    })
}

/// A TCP connection to the server from source address `src`.
fn tcp_from(s: &TestServer, src: &str) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{src}:0").parse().unwrap();
    sock.bind(&from.into()).unwrap();
    sock.connect(&s.addr.into()).unwrap();
    let stream: TcpStream = sock.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
}

/// A WebSocket from `src`: the client, or the refusing status and body.
fn ws_from(s: &TestServer, src: &str) -> Result<Client, (u16, String)> {
    match Client::try_over(s.url("/ws").as_str(), tcp_from(s, src)) {
        Ok(mut c) => {
            c.recv_type("welcome");
            Ok(c)
        }
        Err(ConnectError::Http(status, body)) => Err((status, body)),
        Err(e) => panic!("{e:?}"),
    }
}

/// Retries `ws_from` until admitted (a release is processed by the core
/// loop that held the connection, asynchronously to this thread).
fn ws_eventually(s: &TestServer, src: &str) -> Client {
    let t = Instant::now();
    loop {
        match ws_from(s, src) {
            Ok(c) => return c,
            Err((429, _)) if t.elapsed() < WAIT => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("not admitted: {e:?}"),
        }
    }
}

/// Closes a client's WebSocket.
fn bye(mut c: Client) {
    c.close();
}

fn assert_429(r: Result<Client, (u16, String)>, what: &str) {
    match r {
        Err((429, body)) => {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["error"]["code"], "rate_limited", "{v}");
            assert!(
                v["error"]["message"].as_str().unwrap().contains(what),
                "{v}"
            );
        }
        Ok(_) => panic!("admitted past {what}"),
        Err(e) => panic!("{e:?}"),
    }
}

#[test]
fn connections_per_address_are_bounded_and_given_back() {
    let s = server(|c| c.limits.max_connections_per_ip = 3);
    let mut held: Vec<Client> = (0..3).map(|_| ws_from(&s, "127.0.0.2").unwrap()).collect();
    assert_429(ws_from(&s, "127.0.0.2"), "limits.max_connections_per_ip");
    // Another address is served meanwhile.
    let others: Vec<Client> = (0..3).map(|_| ws_from(&s, "127.0.0.3").unwrap()).collect();
    // SSE streams count against the same bound.
    let (status, head, body) = {
        use std::io::{Read, Write};
        let mut t = tcp_from(&s, "127.0.0.2");
        t.write_all(b"GET /sse?rooms=r HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut resp = Vec::new();
        let _ = t.read_to_end(&mut resp);
        let text = String::from_utf8_lossy(&resp).into_owned();
        let (h, b) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (
            h.split_whitespace().nth(1).unwrap_or("").to_string(),
            h.to_string(),
            b.to_string(),
        )
    };
    assert_eq!(status, "429", "{head}{body}");
    // A connection that goes gives its place back.
    bye(held.pop().unwrap());
    held.push(ws_eventually(&s, "127.0.0.2"));
    assert_429(ws_from(&s, "127.0.0.2"), "limits.max_connections_per_ip");
    drop(others);
}

#[test]
fn handshakes_per_address_are_rate_limited() {
    let s = server(|c| {
        c.limits.handshakes_per_ip_per_sec = 2.0;
        c.limits.handshakes_per_ip_burst = 3.0;
    });
    for _ in 0..3 {
        bye(ws_from(&s, "127.0.0.4").unwrap());
    }
    assert_429(ws_from(&s, "127.0.0.4"), "limits.handshakes_per_ip_per_sec");
    ws_from(&s, "127.0.0.5").expect("another address has its own bucket");
    // The bucket refills (2 a second): admitted again within the wait.
    ws_eventually(&s, "127.0.0.4");
}

#[test]
fn exempt_networks_are_not_counted() {
    let s = TestServer::start(|c| c.limits.max_connections_per_ip = 1);
    // The default exempts loopback (local proxies, tests, benchmarks).
    let held: Vec<Client> = (0..5).map(|_| ws_from(&s, "127.0.0.6").unwrap()).collect();
    assert_eq!(held.len(), 5);
    let s = server(|c| {
        c.limits.max_connections_per_ip = 1;
        c.limits.per_ip_exempt = vec!["127.0.0.7".into()];
    });
    let _a = ws_from(&s, "127.0.0.7").unwrap();
    let _b = ws_from(&s, "127.0.0.7").unwrap();
    let _c = ws_from(&s, "127.0.0.8").unwrap();
    assert_429(ws_from(&s, "127.0.0.8"), "limits.max_connections_per_ip");
}
