//! Behind a proxy (`proxy.trusted`), over real sockets: the client address
//! a trusted peer gives — `X-Forwarded-For`, `Forwarded`, the PROXY
//! protocol v1 and v2 — is the one the per-address limits count; from an
//! untrusted peer those headers are ignored and a PROXY header is a bad
//! request. The limit is 1 connection per address, so a second connection
//! under the same address shows which address the server believed.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

fn server(trusted: &[&str]) -> TestServer {
    TestServer::start(|c| {
        c.limits.per_ip_exempt = Vec::new();
        c.limits.max_connections_per_ip = 1;
        c.proxy.trusted = trusted.iter().map(|s| s.to_string()).collect();
    })
}

/// Opens a connection from `src`, sends `prefix` (a PROXY header or
/// nothing) and an upgrade request with `headers`; returns the stream
/// (kept open while the test holds it) and the response status.
fn upgrade(s: &TestServer, src: &str, prefix: &[u8], headers: &str) -> (TcpStream, u16) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{src}:0").parse().unwrap();
    sock.bind(&from.into()).unwrap();
    sock.connect(&s.addr.into()).unwrap();
    let mut t: TcpStream = sock.into();
    t.set_read_timeout(Some(WAIT)).unwrap();
    let mut req = prefix.to_vec();
    req.extend_from_slice(
        format!("GET /ws HTTP/1.1\r\nHost: t\r\n{UPGRADE}{headers}\r\n").as_bytes(),
    );
    t.write_all(&req).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match t.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&head);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (t, status)
}

fn v2(src: [u8; 4]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend([0x21, 0x11, 0, 12]);
    h.extend(src);
    h.extend([127, 0, 0, 1, 0x30, 0x39, 0x1f, 0x90]);
    h
}

#[test]
fn forwarded_headers_from_a_trusted_proxy_name_the_client() {
    let s = server(&["127.0.0.0/8"]);
    let xff = |ip: &str| format!("X-Forwarded-For: {ip}\r\n");
    let (_a, st) = upgrade(&s, "127.0.0.2", b"", &xff("203.0.113.5"));
    assert_eq!(st, 101);
    // Same proxy, another client: served; the same client again: refused.
    let (_b, st) = upgrade(&s, "127.0.0.2", b"", &xff("203.0.113.6"));
    assert_eq!(st, 101, "another client behind the same proxy");
    let (_c, st) = upgrade(&s, "127.0.0.3", b"", &xff("198.51.100.1, 203.0.113.5"));
    assert_eq!(st, 429, "the rightmost untrusted hop is the client");
    let (_d, st) = upgrade(
        &s,
        "127.0.0.2",
        b"",
        "Forwarded: for=\"[2001:db8::1]:4711\";proto=https\r\n",
    );
    assert_eq!(st, 101);
    let (_e, st) = upgrade(&s, "127.0.0.2", b"", "Forwarded: for=\"[2001:db8::1]\"\r\n");
    assert_eq!(st, 429, "the same client through Forwarded");
}

#[test]
fn proxy_protocol_from_a_trusted_proxy_names_the_client() {
    let s = server(&["127.0.0.0/8"]);
    let v1 = |ip: &str| format!("PROXY TCP4 {ip} 127.0.0.1 40000 8080\r\n").into_bytes();
    let (_a, st) = upgrade(&s, "127.0.0.4", &v1("192.0.2.10"), "");
    assert_eq!(st, 101, "v1");
    let (_b, st) = upgrade(&s, "127.0.0.4", &v1("192.0.2.11"), "");
    assert_eq!(st, 101);
    let (_c, st) = upgrade(&s, "127.0.0.5", &v2([192, 0, 2, 10]), "");
    assert_eq!(st, 429, "v2 names the same client as the first v1");
    let (_d, st) = upgrade(&s, "127.0.0.5", &v2([192, 0, 2, 12]), "");
    assert_eq!(st, 101, "v2");
    // A client behind the PROXY header cannot claim another address.
    let (_e, st) = upgrade(
        &s,
        "127.0.0.4",
        &v1("192.0.2.10"),
        "X-Forwarded-For: 192.0.2.99\r\n",
    );
    assert_eq!(st, 429);
    // A broken header is a bad request, not a stuck slot.
    let (_f, st) = upgrade(&s, "127.0.0.4", b"PROXY TCP4 nonsense\r\n", "");
    assert_eq!(st, 400);
}

#[test]
fn an_untrusted_peer_is_the_client_whatever_it_says() {
    let s = server(&["10.0.0.0/8"]);
    let (_a, st) = upgrade(&s, "127.0.0.6", b"", "X-Forwarded-For: 203.0.113.5\r\n");
    assert_eq!(st, 101);
    let (_b, st) = upgrade(&s, "127.0.0.6", b"", "X-Forwarded-For: 203.0.113.6\r\n");
    assert_eq!(
        st, 429,
        "counted as 127.0.0.6, not as the forwarded address"
    );
    let (_c, st) = upgrade(
        &s,
        "127.0.0.7",
        b"PROXY TCP4 192.0.2.10 127.0.0.1 1 2\r\n",
        "",
    );
    assert_eq!(st, 400, "a PROXY header from an untrusted peer is not HTTP");
}
