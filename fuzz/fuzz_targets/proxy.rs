//! `proxy`: the PROXY protocol header parser
//! (`corecast::core::proxy::parse_header`, v1 text and v2 binary) on
//! arbitrary bytes, and `proxy::client_ip` on arbitrary `X-Forwarded-For`
//! / `Forwarded` values.
//!
//! Input: the whole input goes to `parse_header`; split at the first
//! `\n` after byte 0 it is also (XFF, Forwarded) text for `client_ip`.
//! Checks: no panic; a header's length is within the input, the header
//! alone gives the same answer and every shorter prefix is `Incomplete`
//! (the front door reads it incrementally); `Incomplete` only for inputs
//! shorter than the largest header; v1 headers end in CRLF; an untrusted
//! peer's forwarding headers are never believed.

#![no_main]

use corecast::core::proxy::{self, Header};
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;
use std::sync::LazyLock;

static TRUSTED: LazyLock<Vec<ipnet::IpNet>> = LazyLock::new(|| {
    ["10.0.0.0/8", "127.0.0.1", "fd00::/8"]
        .iter()
        .map(|n| corecast::config::parse_net(n).expect("a network"))
        .collect()
});

fuzz_target!(|buf: &[u8]| {
    let h = proxy::parse_header(buf);
    match &h {
        Header::Proxy { len, .. } => {
            let len = *len;
            assert!(len <= buf.len(), "{h:?} of {} bytes", buf.len());
            assert_eq!(proxy::parse_header(&buf[..len]), h, "the header alone");
            for k in [1, len / 2, len - 1] {
                if k > 0 && k < len {
                    assert_eq!(
                        proxy::parse_header(&buf[..k]),
                        Header::Incomplete,
                        "prefix of {k} of a {len}-byte header"
                    );
                }
            }
            if buf.starts_with(b"PROXY ") {
                assert!(buf[..len].ends_with(b"\r\n"));
                assert!(len <= 107);
            } else {
                assert!((16..=16 + 1024).contains(&len));
            }
        }
        Header::Incomplete => assert!(buf.len() < 16 + 1024, "Incomplete at {} bytes", buf.len()),
        Header::None | Header::Bad(_) => {}
    }

    let text = String::from_utf8_lossy(buf);
    let (xff, fwd) = text.split_once('\n').unwrap_or((&text, ""));
    for (peer, xff, fwd) in [
        ("10.9.9.9", Some(xff), Some(fwd)),
        ("10.9.9.9", None, Some(fwd)),
        ("fd00::1", Some(fwd), None),
        ("203.0.113.5", Some(xff), Some(fwd)),
    ] {
        let peer: IpAddr = peer.parse().expect("an address");
        let ip = proxy::client_ip(peer, xff, fwd, &TRUSTED);
        if !TRUSTED.iter().any(|n| n.contains(&peer)) {
            assert_eq!(ip, peer);
        }
    }
});
