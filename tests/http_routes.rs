//! The HTTP front door over raw sockets: routes, methods, refused upgrades,
//! bounded request heads and the handshake deadline.

mod common;

use common::*;
use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const UPGRADE_HEADERS: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// Asserts a JSON error response with `status` and error `code`.
fn assert_json_error(resp: &(u16, String, String), status: u16, code: &str) -> Value {
    let (got, head, body) = resp;
    assert_eq!(*got, status, "{head}\n\n{body}");
    assert_eq!(
        header(head, "content-type"),
        Some("application/json"),
        "{head}"
    );
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{body}: {e}"));
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    v
}

/// Whether the server ends the connection (EOF or reset) within `timeout`
/// while this side keeps reading; any bytes it sent are returned.
fn closed_within(s: &mut TcpStream, timeout: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Some(got),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None;
            }
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn server() -> TestServer {
    TestServer::start(|c| c.auth.timeout = 1)
}

fn request(addr: SocketAddr, method: &str, path: &str, extra: &str) -> (u16, String, String) {
    http_raw(
        addr,
        format!("{method} {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n").as_bytes(),
    )
}

#[test]
fn health_is_200_json_ok() {
    let s = server();
    let (status, head, body) = http_get(s.addr, "/health");
    assert_eq!(status, 200, "{head}\n\n{body}");
    assert_eq!(header(&head, "content-type"), Some("application/json"));
    assert_eq!(
        header(&head, "content-length"),
        Some(body.len().to_string().as_str())
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ok", "{v}");
}

#[test]
fn unknown_path_is_404_json() {
    let s = server();
    assert_json_error(&http_get(s.addr, "/nope"), 404, "not_found");
    assert_json_error(&http_get(s.addr, "/ws/extra?x=1"), 404, "not_found");
}

/// The binary carries the client bundle and the demo page that loads it.
#[test]
fn the_client_module_and_the_demo_page_are_served() {
    let s = server();
    let (status, head, js) = http_get(s.addr, "/corecast.js");
    assert_eq!(status, 200, "{head}");
    assert_eq!(
        header(&head, "content-type"),
        Some("text/javascript; charset=utf-8")
    );
    let built = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/clients/js/dist/corecast.js"
    ))
    .unwrap();
    assert_eq!(js, built, "the served module is the committed bundle");
    assert!(js.contains("createClient"));
    let (status, head, page) = http_get(s.addr, "/");
    assert_eq!(status, 200, "{head}");
    assert_eq!(
        header(&head, "content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(
        page.contains(r#"from "/corecast.js""#),
        "the page imports the served module"
    );
    // The page is told what the server allows: anonymous by default.
    assert!(page.contains(r#"const CONFIG = {"anonymous":true,"devTokens":false};"#));
    let resp = request(s.addr, "POST", "/", "Content-Length: 0\r\n");
    assert_json_error(&resp, 405, "method_not_allowed");
}

#[test]
fn post_to_ws_is_405_with_allow_get() {
    let s = server();
    let resp = request(s.addr, "POST", "/ws", "Content-Length: 0\r\n");
    assert_json_error(&resp, 405, "method_not_allowed");
    assert_eq!(header(&resp.1, "allow"), Some("GET"), "{}", resp.1);
}

#[test]
fn post_to_health_is_405_with_allow_get() {
    let s = server();
    let resp = request(s.addr, "POST", "/health", "Content-Length: 0\r\n");
    assert_json_error(&resp, 405, "method_not_allowed");
    assert_eq!(header(&resp.1, "allow"), Some("GET"), "{}", resp.1);
}

#[test]
fn ws_without_upgrade_headers_is_400() {
    let s = server();
    assert_json_error(&http_get(s.addr, "/ws"), 400, "bad_request");
}

#[test]
fn wrong_websocket_version_is_426_naming_13() {
    let s = server();
    let resp = request(
        s.addr,
        "GET",
        "/ws",
        &format!("{UPGRADE_HEADERS}Sec-WebSocket-Version: 8\r\n"),
    );
    assert_json_error(&resp, 426, "bad_request");
    assert_eq!(
        header(&resp.1, "sec-websocket-version"),
        Some("13"),
        "{}",
        resp.1
    );
}

#[test]
fn request_head_over_8_kib_is_431() {
    let s = server();
    let big = "a".repeat(9000);
    let resp = request(s.addr, "GET", "/health", &format!("X-Big: {big}\r\n"));
    assert_json_error(&resp, 431, "bad_request");
}

#[test]
fn unterminated_head_over_8_kib_is_431() {
    // The head never ends: the server must stop buffering at its bound.
    let s = server();
    let mut req = b"GET /health HTTP/1.1\r\nHost: test\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 9000));
    let mut sock = TcpStream::connect(s.addr).unwrap();
    sock.write_all(&req).unwrap();
    let got = closed_within(&mut sock, WAIT).expect("the server answered and closed");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
}

#[test]
fn malformed_request_line_is_400() {
    let s = server();
    let resp = http_raw(s.addr, b"HELLO WORLD\r\n\r\n");
    assert_json_error(&resp, 400, "bad_request");
}

#[test]
fn silent_connection_is_dropped_at_the_handshake_deadline() {
    let s = server(); // auth.timeout = 1 s
    let mut sock = TcpStream::connect(s.addr).unwrap();
    let start = Instant::now();
    let got = closed_within(&mut sock, Duration::from_secs(5))
        .expect("a connection that sends nothing is still open 5 s later");
    // Bounded from both sides: not before the deadline (the server's
    // clock may trail the accept by a loop iteration; 800 ms of 1 s).
    assert!(
        start.elapsed() >= Duration::from_millis(800),
        "dropped {:?} after connecting, before the 1 s deadline",
        start.elapsed()
    );
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
}

#[test]
fn trickled_request_head_is_cut_off_at_the_handshake_deadline() {
    // Slow-loris: a byte every 100 ms keeps the socket busy but never
    // finishes the head; the deadline counts from accept, not from activity.
    let s = server(); // auth.timeout = 1 s
    let mut sock = TcpStream::connect(s.addr).unwrap();
    sock.write_all(b"GET /health HTTP/1.1\r\nHost: test\r\n")
        .unwrap();
    let start = Instant::now();
    let mut cut = false;
    while start.elapsed() < Duration::from_secs(5) {
        if sock.write_all(b"X").is_err() {
            cut = true;
            break;
        }
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut b = [0u8; 64];
        match sock.read(&mut b) {
            Ok(0) => {
                cut = true;
                break;
            }
            Ok(n) => {
                // The only answer allowed is a 408, sent as it hangs up.
                let text = String::from_utf8_lossy(&b[..n]);
                assert!(
                    text.starts_with("HTTP/1.1 408 "),
                    "unexpected response to an unfinished head: {text:?}"
                );
                assert!(
                    start.elapsed() >= Duration::from_millis(500),
                    "cut too early"
                );
                cut = true;
                break;
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                cut = true;
                break;
            }
            Err(_) => {} // timeout: still open
        }
    }
    assert!(cut, "a trickling client is still connected after 5 s");
}

#[test]
fn echo_route_is_404_when_disabled() {
    let s = server();
    match Client::try_connect_with(&s.url("/echo"), &[]) {
        Err(ConnectError::Http(status, body)) => {
            assert_eq!(status, 404, "{body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["error"]["code"], "not_found", "{v}");
        }
        Err(e) => panic!("expected HTTP 404, got {e:?}"),
        Ok(_) => panic!("/echo upgraded although echo = false"),
    }
}

#[test]
fn ws_route_still_upgrades_on_the_same_port() {
    // Control for the refusals above: a well-formed upgrade succeeds.
    let s = server();
    let (_c, w) = Client::connect_welcome(&s.url("/ws"));
    assert!(w["session"].is_string(), "{w}");
}
