//! The client's address behind proxies (`proxy.trusted`): the PROXY
//! protocol header (v1 text, v2 binary; HAProxy, AWS NLB) a trusted peer
//! puts before the request, and `X-Forwarded-For` / `Forwarded` from a
//! trusted peer. From any other peer none of these are believed: the TCP
//! peer is the client.
//!
//! Pure functions over bytes and addresses; the front door reads the
//! socket and uses the answer for the per-address limits and the logs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The v2 signature.
const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 line (the spec's bound).
const V1_MAX: usize = 107;
/// Largest v2 header accepted (addresses + TLVs).
const V2_MAX: usize = 16 + 1024;

/// What the start of a trusted peer's stream says.
#[derive(Debug, PartialEq, Eq)]
pub enum Header {
    /// Not a PROXY header: the bytes are the request.
    None,
    /// More bytes are needed to tell.
    Incomplete,
    /// A PROXY header.
    Proxy {
        /// Its length in bytes (the request follows).
        len: usize,
        /// The client (`None`: a LOCAL or UNKNOWN connection, e.g. the
        /// proxy's own health check).
        source: Option<IpAddr>,
    },
    /// A PROXY header that cannot be parsed.
    Bad(&'static str),
}

/// Reads a PROXY protocol header at the start of `buf`.
pub fn parse_header(buf: &[u8]) -> Header {
    if buf.is_empty() {
        return Header::Incomplete;
    }
    let n = buf.len().min(V2_SIG.len());
    if buf[..n] == V2_SIG[..n] {
        return if buf.len() < 16 {
            Header::Incomplete
        } else {
            v2(buf)
        };
    }
    let n = buf.len().min(6);
    if buf[..n] == b"PROXY "[..n] {
        return if buf.len() < 6 {
            Header::Incomplete
        } else {
            v1(buf)
        };
    }
    Header::None
}

fn v1(buf: &[u8]) -> Header {
    let Some(end) = buf.iter().take(V1_MAX).position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Header::Bad("PROXY v1 line too long")
        } else {
            Header::Incomplete
        };
    };
    let Ok(line) = std::str::from_utf8(&buf[..end]) else {
        return Header::Bad("PROXY v1 line is not text");
    };
    let Some(line) = line.strip_suffix('\r') else {
        return Header::Bad("PROXY v1 line must end with CRLF");
    };
    let parts: Vec<&str> = line.split(' ').collect();
    let len = end + 1;
    match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Header::Proxy { len, source: None },
        ["PROXY", fam @ ("TCP4" | "TCP6"), src, _dst, _sport, _dport] => {
            match src.parse::<IpAddr>() {
                Ok(ip) if ip.is_ipv4() == (*fam == "TCP4") => Header::Proxy {
                    len,
                    source: Some(ip),
                },
                _ => Header::Bad("PROXY v1: bad source address"),
            }
        }
        _ => Header::Bad("PROXY v1: malformed line"),
    }
}

fn v2(buf: &[u8]) -> Header {
    let ver_cmd = buf[12];
    let fam = buf[13];
    let body = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    let len = 16 + body;
    if ver_cmd >> 4 != 2 {
        return Header::Bad("PROXY v2: unknown version");
    }
    if len > V2_MAX {
        return Header::Bad("PROXY v2: header too long");
    }
    if buf.len() < len {
        return Header::Incomplete;
    }
    let a = &buf[16..len];
    match (ver_cmd & 0x0f, fam >> 4) {
        (0, _) => Header::Proxy { len, source: None }, // LOCAL
        (1, 1) if a.len() >= 12 => Header::Proxy {
            len,
            source: Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))),
        },
        (1, 2) if a.len() >= 36 => {
            let o: [u8; 16] = a[..16].try_into().expect("16 bytes");
            Header::Proxy {
                len,
                source: Some(IpAddr::V6(Ipv6Addr::from(o))),
            }
        }
        (1, 0 | 3) => Header::Proxy { len, source: None }, // UNSPEC, UNIX
        (1, _) => Header::Bad("PROXY v2: address block too short"),
        _ => Header::Bad("PROXY v2: unknown command"),
    }
}

/// The client address of a request that came from `peer` (the TCP peer,
/// or the PROXY header's source): when `peer` is trusted, the rightmost
/// address in `X-Forwarded-For` (then `Forwarded: for=`) that is not a
/// trusted proxy itself; else `peer`.
pub fn client_ip(
    peer: IpAddr,
    xff: Option<&str>,
    forwarded: Option<&str>,
    trusted: &[ipnet::IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = match (xff, forwarded) {
        (Some(x), _) => x.split(',').filter_map(parse_hop).collect(),
        (None, Some(f)) => f
            .split(',')
            .filter_map(|el| {
                el.split(';').find_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    k.trim().eq_ignore_ascii_case("for").then_some(v)
                })
            })
            .filter_map(parse_hop)
            .collect(),
        (None, None) => Vec::new(),
    };
    hops.iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .or(hops.first())
        .copied()
        .unwrap_or(peer)
}

/// One hop: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `"[2001:db8::1]:4711"`; `unknown` and obfuscated names are not
/// addresses.
fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> Vec<ipnet::IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn v1_headers() {
        let h = b"PROXY TCP4 198.51.100.7 10.0.0.1 5555 80\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse_header(h),
            Header::Proxy {
                len: 42,
                source: Some("198.51.100.7".parse().unwrap())
            }
        );
        assert_eq!(parse_header(&h[..20]), Header::Incomplete);
        assert_eq!(parse_header(b"PRO"), Header::Incomplete);
        assert_eq!(parse_header(b"GET / HTTP/1.1\r\n"), Header::None);
        assert!(matches!(
            parse_header(b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n"),
            Header::Bad(_)
        ));
        assert!(matches!(
            parse_header(b"PROXY UNKNOWN\r\n"),
            Header::Proxy {
                len: 15,
                source: None
            }
        ));
        assert!(matches!(
            parse_header(&[b'P', b'R', b'O', b'X', b'Y', b' ', b'x'].repeat(20)),
            Header::Bad(_)
        ));
    }

    #[test]
    fn v2_headers() {
        let mut h = V2_SIG.to_vec();
        h.extend([
            0x21, 0x11, 0, 12, 203, 0, 113, 9, 10, 0, 0, 1, 0x15, 0xb3, 0, 80,
        ]);
        h.extend(b"GET /");
        assert_eq!(
            parse_header(&h),
            Header::Proxy {
                len: 28,
                source: Some("203.0.113.9".parse().unwrap())
            }
        );
        assert_eq!(parse_header(&h[..20]), Header::Incomplete);
        let mut local = V2_SIG.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(
            parse_header(&local),
            Header::Proxy {
                len: 16,
                source: None
            }
        );
        let mut v6 = V2_SIG.to_vec();
        v6.extend([0x21, 0x21, 0, 36]);
        let src: Ipv6Addr = "2001:db8::7".parse().unwrap();
        v6.extend(src.octets());
        v6.extend([0u8; 20]);
        assert_eq!(
            parse_header(&v6),
            Header::Proxy {
                len: 52,
                source: Some(IpAddr::V6(src))
            }
        );
        let mut bad = V2_SIG.to_vec();
        bad.extend([0x11, 0x11, 0, 12]);
        assert!(matches!(parse_header(&bad), Header::Bad(_)));
    }

    #[test]
    fn forwarded_headers_only_from_trusted_peers() {
        let trusted = nets(&["10.0.0.0/8"]);
        let lb: IpAddr = "10.1.2.3".parse().unwrap();
        let other: IpAddr = "192.0.2.50".parse().unwrap();
        let c = |p, x, f| client_ip(p, x, f, &trusted).to_string();
        assert_eq!(c(lb, Some("203.0.113.5"), None), "203.0.113.5");
        assert_eq!(
            c(lb, Some("6.6.6.6, 203.0.113.5, 10.9.9.9"), None),
            "203.0.113.5",
            "rightmost untrusted"
        );
        assert_eq!(
            c(lb, Some("10.0.0.2, 10.0.0.3"), None),
            "10.0.0.2",
            "all trusted: the first"
        );
        assert_eq!(
            c(lb, None, Some("for=\"[2001:db8::1]:4711\";proto=https")),
            "2001:db8::1"
        );
        assert_eq!(
            c(lb, None, Some("for=192.0.2.60:80, for=10.0.0.9")),
            "192.0.2.60"
        );
        assert_eq!(c(lb, Some("unknown"), None), "10.1.2.3");
        assert_eq!(c(lb, None, None), "10.1.2.3");
        assert_eq!(
            c(other, Some("203.0.113.5"), None),
            "192.0.2.50",
            "untrusted peer: ignored"
        );
    }
}
