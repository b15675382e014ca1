//! `auth.allowed_origins` and CORS over real sockets: WebSocket upgrades
//! and SSE from allowed, refused and missing origins; the API's preflight
//! and its `Access-Control-Allow-Origin` for allowed origins only; any
//! origin when the list is empty; bad patterns refused at start.

mod common;

use common::*;
use serde_json::Value;

const KEY: &str = "test-api-key-1";

fn server(origins: &[&str]) -> TestServer {
    TestServer::start(|c| {
        c.auth.api_keys = vec![KEY.into()];
        c.auth.allowed_origins = origins.iter().map(|s| s.to_string()).collect();
    })
}

fn upgrade(s: &TestServer, origin: Option<&str>) -> Result<Value, (u16, String)> {
    let headers: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
    match Client::try_connect_with(&s.url("/ws"), &headers) {
        Ok(mut c) => Ok(c.recv_type("welcome")),
        Err(ConnectError::Http(status, body)) => Err((status, body)),
        Err(e) => panic!("{e:?}"),
    }
}

fn raw(
    s: &TestServer,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String, String) {
    http_raw(
        s.addr,
        format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

#[test]
fn websocket_upgrades_from_refused_origins_get_403() {
    let s = server(&["https://app.example.com", "https://*.example.org"]);
    assert!(upgrade(&s, Some("https://app.example.com")).is_ok());
    assert!(upgrade(&s, Some("https://chat.eu.example.org")).is_ok());
    assert!(upgrade(&s, None).is_ok(), "no Origin: not a browser page");
    // The server's own origin (the demo page it serves) is always allowed.
    let own = format!("http://{}", s.addr);
    assert!(upgrade(&s, Some(&own)).is_ok(), "same origin");
    for bad in [
        "https://evil.example.net",
        "http://app.example.com",
        "https://example.org",
        "null",
    ] {
        let (status, body) = upgrade(&s, Some(bad)).expect_err(bad);
        assert_eq!(status, 403, "{bad}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "forbidden", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("auth.allowed_origins")
        );
    }
    // Refused upgrades are counted with the other HTTP errors.
    let (_, _, m) = http_get(s.addr, "/metrics");
    assert!(
        m.lines().any(
            |l| l.starts_with("corecast_http_errors_total{status=\"403\"}") && !l.ends_with(" 0")
        ),
        "{m}"
    );
}

#[test]
fn sse_checks_the_origin_and_answers_cors() {
    let s = server(&["https://app.example.com"]);
    let (status, head, _) = raw(
        &s,
        "GET",
        "/sse?rooms=r",
        "Origin: https://evil.example.net\r\n",
        "",
    );
    assert_eq!(status, 403, "{head}");
    // An allowed origin's stream: read its head, then drop it.
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.write_all(b"GET /sse?rooms=r HTTP/1.1\r\nHost: t\r\nOrigin: https://app.example.com\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        header(&head, "content-type"),
        Some("text/event-stream"),
        "{head}"
    );
    assert_eq!(
        header(&head, "access-control-allow-origin"),
        Some("https://app.example.com"),
        "{head}"
    );
    // The preflight of an EventSource with Last-Event-ID.
    let (status, head, _) = raw(
        &s,
        "OPTIONS",
        "/sse?rooms=r",
        "Origin: https://app.example.com\r\nAccess-Control-Request-Headers: last-event-id\r\n",
        "",
    );
    assert_eq!(status, 204, "{head}");
    assert!(
        header(&head, "access-control-allow-headers")
            .unwrap()
            .contains("last-event-id")
    );
}

#[test]
fn the_api_answers_preflights_and_allowed_origins_only() {
    let s = server(&["https://app.example.com"]);
    let ok = "Origin: https://app.example.com\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, content-type\r\n";
    let (status, head, body) = raw(&s, "OPTIONS", "/api/publish", ok, "");
    assert_eq!(status, 204, "{head}{body}");
    assert_eq!(
        header(&head, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert!(
        header(&head, "access-control-allow-methods")
            .unwrap()
            .contains("POST")
    );
    let allowed = header(&head, "access-control-allow-headers").unwrap();
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{allowed}"
    );
    assert_eq!(header(&head, "vary"), Some("Origin"));
    let (status, head, _) = raw(
        &s,
        "OPTIONS",
        "/api/publish",
        "Origin: https://evil.example.net\r\n",
        "",
    );
    assert_eq!(status, 403, "{head}");
    assert_eq!(header(&head, "access-control-allow-origin"), None);

    let body = r#"{"room":"r","data":1}"#;
    let auth = format!("Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n");
    let (status, head, resp) = raw(
        &s,
        "POST",
        "/api/publish",
        &format!("{auth}Origin: https://app.example.com\r\n"),
        body,
    );
    assert_eq!(status, 200, "{head}{resp}");
    assert_eq!(
        header(&head, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    // Errors carry the header too, so the page can read them.
    let (status, head, _) = raw(
        &s,
        "POST",
        "/api/publish",
        "Origin: https://app.example.com\r\n",
        body,
    );
    assert_eq!(status, 401, "{head}");
    assert_eq!(
        header(&head, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    // A server-side caller sends no Origin and gets no CORS headers.
    let (status, head, _) = raw(&s, "POST", "/api/publish", &auth, body);
    assert_eq!(status, 200, "{head}");
    assert_eq!(header(&head, "access-control-allow-origin"), None);
    // A refused origin is refused outright, key or not.
    let (status, _, _) = raw(
        &s,
        "POST",
        "/api/publish",
        &format!("{auth}Origin: https://evil.example.net\r\n"),
        body,
    );
    assert_eq!(status, 403);
}

#[test]
fn without_a_list_every_origin_is_allowed() {
    let s = server(&[]);
    assert!(upgrade(&s, Some("https://anything.example.net")).is_ok());
    let (status, head, _) = raw(
        &s,
        "OPTIONS",
        "/api/stats",
        "Origin: https://anything.example.net\r\n",
        "",
    );
    assert_eq!(status, 204, "{head}");
    assert_eq!(
        header(&head, "access-control-allow-origin"),
        Some("https://anything.example.net")
    );
    // Only a well-formed origin is echoed back into a header.
    let (_, head, _) = raw(&s, "GET", "/api/stats", "Origin: <script> x\r\n", "");
    assert_eq!(header(&head, "access-control-allow-origin"), None, "{head}");
}

#[test]
fn a_bad_pattern_stops_the_start_naming_it() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corecast"))
        .env(
            "CORECAST_AUTH__ALLOWED_ORIGINS",
            "https://ok.example.com, app.example.com",
        )
        .env("CORECAST_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("auth.allowed_origins") && err.contains("`app.example.com`"),
        "{err}"
    );
}
