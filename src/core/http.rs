//! The HTTP front door: request heads parsed with httparse (bounded), the
//! route table, and the plain responses (JSON errors, health, 101).
//!
//! Pure functions over bytes: the core loop reads and writes the socket.
//! This module must not read sockets or decide authentication; it reports
//! what the request asked for.

use std::fmt::Write as _;

/// Largest request head accepted, bytes; beyond it the answer is 431.
pub const MAX_HEAD: usize = 8192;
/// Most headers accepted in a request head.
pub const MAX_HEADERS: usize = 48;

/// The routes of the one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /ws`: the protocol's WebSocket.
    Ws,
    /// `GET /echo`: raw WebSocket echo (when enabled).
    Echo,
    /// `GET /health`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// `/api/...`.
    Api,
    /// `GET /sse`.
    Sse,
    /// `GET /`: the demo page.
    Demo,
    /// `GET /corecast.js`: the JavaScript client.
    ClientJs,
    /// Anything else.
    NotFound,
}

/// What the core needs from a request head.
#[derive(Debug, Default)]
pub struct Request {
    /// Method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Query string (after `?`), if any.
    pub query: Option<String>,
    /// `Upgrade: websocket` and `Connection: upgrade` were both present.
    pub upgrade: bool,
    /// `Sec-WebSocket-Key`.
    pub ws_key: Option<String>,
    /// `Sec-WebSocket-Version`.
    pub ws_version: Option<String>,
    /// Token of `Authorization: Bearer <token>`.
    pub bearer: Option<String>,
    /// `Content-Length`.
    pub content_length: Option<usize>,
    /// `Transfer-Encoding` other than identity (not supported: 411).
    pub chunked: bool,
    /// `Last-Event-ID` (SSE resume).
    pub last_event_id: Option<String>,
    /// `Origin` (sent by browsers).
    pub origin: Option<String>,
    /// `Host`.
    pub host: Option<String>,
    /// `X-Forwarded-For` (several headers joined with `,`).
    pub forwarded_for: Option<String>,
    /// `Forwarded` (RFC 7239; several joined with `,`).
    pub forwarded: Option<String>,
    /// `Accept` names OpenMetrics (`/metrics` answers in it, else in the
    /// Prometheus text format 0.0.4).
    pub accepts_openmetrics: bool,
}

impl Request {
    /// The route for this path.
    pub fn route(&self) -> Route {
        match self.path.as_str() {
            "/ws" => Route::Ws,
            "/echo" => Route::Echo,
            "/health" => Route::Health,
            "/metrics" => Route::Metrics,
            "/sse" => Route::Sse,
            "/" | "/index.html" => Route::Demo,
            "/corecast.js" => Route::ClientJs,
            p if p.starts_with("/api/") => Route::Api,
            _ => Route::NotFound,
        }
    }

    /// The first value of query parameter `name`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let q = self.query.as_deref()?;
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

fn join_header(slot: &mut Option<String>, value: &str) {
    match slot {
        Some(s) => {
            s.push(',');
            s.push_str(value);
        }
        None => *slot = Some(value.to_string()),
    }
}

/// A request head that cannot be served.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Malformed (400).
    Malformed(String),
    /// Too many headers (431).
    TooLarge,
}

/// Parses a request head from `buf`: `Ok(None)` = incomplete, else the
/// request and the head's length (bytes after it belong to the body or to
/// the upgraded protocol).
pub fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    let target = req.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (target, None),
    };
    let mut out = Request {
        method: req.method.unwrap_or("").to_string(),
        path: path.to_string(),
        query,
        ..Default::default()
    };
    let mut upgrade_ws = false;
    let mut connection_upgrade = false;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade_ws |= value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("websocket"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            connection_upgrade |= value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        } else if h.name.eq_ignore_ascii_case("sec-websocket-key") {
            out.ws_key = Some(value.to_string());
        } else if h.name.eq_ignore_ascii_case("sec-websocket-version") {
            out.ws_version = Some(value.to_string());
        } else if h.name.eq_ignore_ascii_case("content-length") {
            match value.parse::<usize>() {
                Ok(n) if out.content_length.is_none_or(|m| m == n) => out.content_length = Some(n),
                _ => return Err(HeadError::Malformed("bad Content-Length".into())),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            out.chunked |= !value.eq_ignore_ascii_case("identity");
        } else if h.name.eq_ignore_ascii_case("last-event-id") {
            out.last_event_id = Some(value.to_string());
        } else if h.name.eq_ignore_ascii_case("origin") {
            out.origin = Some(value.to_string());
        } else if h.name.eq_ignore_ascii_case("host") {
            out.host = Some(value.to_string());
        } else if h.name.eq_ignore_ascii_case("x-forwarded-for") {
            join_header(&mut out.forwarded_for, value);
        } else if h.name.eq_ignore_ascii_case("forwarded") {
            join_header(&mut out.forwarded, value);
        } else if h.name.eq_ignore_ascii_case("accept") {
            out.accepts_openmetrics |= value.split(',').any(|t| {
                t.trim()
                    .to_ascii_lowercase()
                    .starts_with("application/openmetrics-text")
            });
        } else if h.name.eq_ignore_ascii_case("authorization")
            && let Some((scheme, token)) = value.split_once(' ')
            && scheme.eq_ignore_ascii_case("bearer")
        {
            out.bearer = Some(token.trim().to_string());
        }
    }
    out.upgrade = upgrade_ws && connection_upgrade;
    Ok(Some((out, len)))
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A complete response with a body of `content_type`; the connection
/// closes after it.
pub fn response(status: u16, content_type: &str, body: &str) -> Vec<u8> {
    response_with(status, content_type, &[], body)
}

/// A complete response with a JSON body; the connection closes after it.
pub fn json_response(status: u16, extra_headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    response_with(status, "application/json", extra_headers, body)
}

fn response_with(
    status: u16,
    content_type: &str,
    extra_headers: &[(&str, &str)],
    body: &str,
) -> Vec<u8> {
    let mut head = String::with_capacity(160 + body.len());
    let _ = write!(
        head,
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\ncache-control: no-store\r\n",
        reason(status),
        body.len()
    );
    for (k, v) in extra_headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    head.push_str("\r\n");
    head.push_str(body);
    head.into_bytes()
}

/// The body of an error: `{"error":{"code":..,"message":..}}`.
pub fn error_body(code: &str, message: &str) -> String {
    let mut body = String::from("{\"error\":{\"code\":");
    crate::proto::event::push_json_str(&mut body, code);
    body.push_str(",\"message\":");
    crate::proto::event::push_json_str(&mut body, message);
    body.push_str("}}");
    body
}

/// A JSON error response: `{"error":{"code":..,"message":..}}`.
pub fn error_response(
    status: u16,
    code: &str,
    message: &str,
    extra_headers: &[(&str, &str)],
) -> Vec<u8> {
    json_response(status, extra_headers, &error_body(code, message))
}

/// The 101 answer to a valid upgrade with key `key`.
pub fn switching_protocols(key: &str) -> Vec<u8> {
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

/// Appends an unmasked, final server text frame carrying `payload` (the
/// framing of RFC 6455 section 5.2; servers never mask).
pub fn push_text_frame(out: &mut Vec<u8>, payload: &[u8]) {
    super::outq::push_header(out, super::outq::TEXT, payload.len());
    out.extend_from_slice(payload);
}

/// Checks the WebSocket-specific parts of an upgrade request; `Err` is the
/// response to send instead.
pub fn check_upgrade(req: &Request) -> Result<&str, Vec<u8>> {
    if !req.upgrade {
        return Err(error_response(
            400,
            "bad_request",
            "expected a WebSocket upgrade (Upgrade: websocket, Connection: Upgrade)",
            &[],
        ));
    }
    if req.ws_version.as_deref() != Some("13") {
        return Err(error_response(
            426,
            "bad_request",
            "unsupported Sec-WebSocket-Version; this server speaks 13",
            &[("sec-websocket-version", "13")],
        ));
    }
    match req.ws_key.as_deref() {
        Some(k) if k.len() == 24 => Ok(k),
        _ => Err(error_response(
            400,
            "bad_request",
            "missing or malformed Sec-WebSocket-Key",
            &[],
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_upgrade() {
        let head = b"GET /ws?token=a.b%2Ec&x=1 HTTP/1.1\r\nHost: h\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer  tok \r\n\r\nEXTRA";
        let (req, len) = parse_head(head).unwrap().unwrap();
        assert_eq!(&head[len..], b"EXTRA");
        assert_eq!(req.route(), Route::Ws);
        assert!(req.upgrade);
        assert_eq!(req.query_param("token").as_deref(), Some("a.b.c"));
        assert_eq!(req.bearer.as_deref(), Some("tok"));
        assert_eq!(check_upgrade(&req).unwrap(), "dGhlIHNhbXBsZSBub25jZQ==");
        let resp = String::from_utf8(switching_protocols("dGhlIHNhbXBsZSBub25jZQ==")).unwrap();
        assert!(resp.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }

    #[test]
    fn partial_malformed_and_refused() {
        assert!(parse_head(b"GET /ws HTTP/1.1\r\nHost:").unwrap().is_none());
        assert!(matches!(
            parse_head(b"\x00\x01 nonsense\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..100 {
            many.push_str(&format!("x{i}: y\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(
            parse_head(many.as_bytes()).unwrap_err(),
            HeadError::TooLarge
        );
        let (req, _) = parse_head(b"GET /ws HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert!(check_upgrade(&req).is_err());
        let (req, _) = parse_head(
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        let resp = String::from_utf8(check_upgrade(&req).unwrap_err()).unwrap();
        assert!(resp.starts_with("HTTP/1.1 426 "), "{resp}");
    }

    #[test]
    fn text_frames_match_tungstenite() {
        use tungstenite::protocol::frame::Frame;
        use tungstenite::protocol::frame::coding::{Data, OpCode};
        for n in [0usize, 125, 126, 65_535, 65_536] {
            let payload = vec![b'a'; n];
            let mut ours = Vec::new();
            push_text_frame(&mut ours, &payload);
            let mut theirs = Vec::new();
            Frame::message(payload, OpCode::Data(Data::Text), true)
                .format(&mut theirs)
                .unwrap();
            assert_eq!(ours, theirs, "payload of {n} bytes");
        }
    }

    #[test]
    fn error_bodies_are_json() {
        let r =
            String::from_utf8(error_response(404, "not_found", "no \"such\" route", &[])).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 404 Not Found"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "not_found");
        assert_eq!(v["error"]["message"], "no \"such\" route");
    }
}
