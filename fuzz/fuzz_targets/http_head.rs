//! `http_head`: arbitrary bytes as the start of a connection into the
//! HTTP front door: `corecast::core::http::parse_head`, then what the
//! core does with a head: `Request::route`, `query_param`,
//! `check_upgrade`, the CORS verdict (`core::cors::Origins`) and the
//! client address from forwarding headers (`core::proxy::client_ip`).
//!
//! Checks: no panic; the head's length is within the input, the head
//! alone parses to the same request and one byte less is incomplete (the
//! core reads heads incrementally); a refused upgrade is a complete HTTP
//! response with a JSON body; an accepted one has a 24-byte key; an
//! origin that is echoed (`well_formed`) is printable ASCII; the client
//! address is the peer or one of the forwarded hops.

#![no_main]

use corecast::core::cors::{self, Origins};
use corecast::core::http::{self, MAX_HEAD};
use corecast::core::proxy;
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;
use std::sync::LazyLock;

struct World {
    origins: [Origins; 3],
    trusted: Vec<ipnet::IpNet>,
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    World {
        origins: [
            Origins::new(&[]),
            Origins::new(&list(&[
                "https://app.example.com",
                "https://*.example.org:8443",
            ])),
            Origins::new(&list(&[
                "http://localhost:3000",
                "http://[::1]:8080",
                "app://x",
            ])),
        ],
        trusted: ["10.0.0.0/8", "127.0.0.1", "::1", "2001:db8::/32"]
            .iter()
            .map(|n| corecast::config::parse_net(n).expect("a network"))
            .collect(),
    }
});

fn check_response(resp: &[u8]) {
    let text = std::str::from_utf8(resp).expect("responses are text");
    assert!(text.starts_with("HTTP/1.1 "), "{text:?}");
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut r = httparse::Response::new(&mut headers);
    let n = r.parse(resp).expect("a response head");
    assert!(n.is_complete() && n.unwrap() == head.len() + 4);
    let _: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
}

fuzz_target!(|buf: &[u8]| {
    let w = &*WORLD;
    let parsed = http::parse_head(buf);
    let Ok(Some((req, len))) = parsed else {
        return;
    };
    assert!(len <= buf.len());
    let again = http::parse_head(&buf[..len]);
    assert_eq!(
        format!("{again:?}"),
        format!("{:?}", Ok::<_, http::HeadError>(Some((&req, len)))),
        "the head alone parses differently"
    );
    assert!(
        matches!(http::parse_head(&buf[..len - 1]), Ok(None)),
        "a head less its last byte is not incomplete"
    );
    if len > MAX_HEAD {
        // The core answers 431 before parsing this; still no panic.
    }
    let route = req.route();
    if route == http::Route::Api {
        assert!(req.path.starts_with("/api/"));
    }
    for name in ["token", "rooms", "room", "limit", "before", "user"] {
        let _ = req.query_param(name);
    }
    match http::check_upgrade(&req) {
        Ok(key) => {
            assert!(req.upgrade && req.ws_version.as_deref() == Some("13"));
            assert_eq!(key.len(), 24);
            let resp = http::switching_protocols(key);
            assert!(resp.starts_with(b"HTTP/1.1 101 ") && resp.ends_with(b"\r\n\r\n"));
        }
        Err(resp) => check_response(&resp),
    }
    for o in &w.origins {
        let _ = o.allows(req.origin.as_deref(), req.host.as_deref());
    }
    if let Some(origin) = req.origin.as_deref()
        && Origins::well_formed(origin)
    {
        assert!(
            origin.bytes().all(|b| (0x21..=0x7e).contains(&b)),
            "echoed origin {origin:?} is not a plain header value"
        );
        let mut resp = http::error_response(403, "forbidden", "no", &[]);
        cors::add_to_response(&mut resp, origin);
        check_response(&resp);
        let pre = cors::preflight(origin);
        assert!(pre.starts_with(b"HTTP/1.1 204 ") && pre.ends_with(b"\r\n\r\n"));
    }
    for peer in ["10.1.2.3", "192.0.2.9", "::1"] {
        let peer: IpAddr = peer.parse().expect("an address");
        let ip = proxy::client_ip(
            peer,
            req.forwarded_for.as_deref(),
            req.forwarded.as_deref(),
            &w.trusted,
        );
        if !w.trusted.iter().any(|n| n.contains(&peer)) {
            assert_eq!(ip, peer, "an untrusted peer's headers were believed");
        } else if ip != peer {
            let hops = format!(
                "{} {}",
                req.forwarded_for.as_deref().unwrap_or(""),
                req.forwarded.as_deref().unwrap_or("")
            );
            let shown = ip.to_string();
            let v6 = shown.contains(':');
            // The address came from the headers (in some spelling).
            assert!(
                v6 || hops.contains(&shown),
                "client {shown} is in none of the headers {hops:?}"
            );
        }
    }
});
