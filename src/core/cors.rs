//! Which web origins may use this server (`auth.allowed_origins`), and the
//! CORS headers that let an allowed origin's page call the HTTP API and
//! open SSE streams from another origin.
//!
//! Patterns are `scheme://host[:port]`, where the host may start with `*.`
//! (any subdomain, not the bare domain), or `*` alone (any origin; also
//! what an empty list means). A request without `Origin` is not from a
//! browser page and is always allowed: origins protect users' browsers
//! from other sites, not the server from other programs. Pure functions:
//! the front door decides what to do with the verdict; this module must
//! not read sockets or hold per-connection state.

/// The parsed `auth.allowed_origins`.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    /// `None`: any origin.
    patterns: Option<Vec<Pattern>>,
}

#[derive(Debug, Clone)]
struct Pattern {
    scheme: String,
    /// Host without the `*.` prefix, lowercase.
    host: String,
    wildcard: bool,
    /// Explicit port, or the scheme's default.
    port: Option<u16>,
}

impl Origins {
    /// Parses the configured patterns (already validated by
    /// [`validate`]; an invalid one here is skipped).
    pub fn new(list: &[String]) -> Self {
        if list.is_empty() || list.iter().any(|p| p.trim() == "*") {
            return Origins { patterns: None };
        }
        Origins {
            patterns: Some(list.iter().filter_map(|p| parse(p, true)).collect()),
        }
    }

    /// Whether `origin` is a well-formed origin (only those are echoed in
    /// `Access-Control-Allow-Origin`).
    pub fn well_formed(origin: &str) -> bool {
        parse(origin, false).is_some()
    }

    /// Whether any origin is allowed.
    pub fn any(&self) -> bool {
        self.patterns.is_none()
    }

    /// The verdict for a request's `Origin` header (`None`: no header);
    /// `host` is its `Host` header: a page of the server's own origin (the
    /// demo page, or an app served through the same host) is allowed.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        if let (Some((_, authority)), Some(host)) = (origin.split_once("://"), host)
            && authority.eq_ignore_ascii_case(host)
        {
            return true;
        }
        let Some(patterns) = &self.patterns else {
            return true;
        };
        let Some(o) = parse(origin, false) else {
            return false; // `null` (sandboxed frames, files) and anything malformed
        };
        patterns.iter().any(|p| {
            p.scheme == o.scheme
                && p.port == o.port
                && if p.wildcard {
                    o.host
                        .strip_suffix(p.host.as_str())
                        .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.'))
                } else {
                    p.host == o.host
                }
        })
    }
}

/// Checks one configured pattern; the error says what is wrong with it.
pub fn validate(pattern: &str) -> Result<(), String> {
    if pattern.trim() == "*" || parse(pattern, true).is_some() {
        Ok(())
    } else {
        Err(format!(
            "`{pattern}` is not an origin pattern (scheme://host[:port], the host may start with `*.`, or `*`)"
        ))
    }
}

fn parse(s: &str, pattern: bool) -> Option<Pattern> {
    let s = s.trim().to_ascii_lowercase();
    let (scheme, rest) = s.split_once("://")?;
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return None;
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    // `host`, `host:port`, `[v6]` or `[v6]:port`.
    let split = match rest.find(']') {
        Some(end) if rest.starts_with('[') => end + 1,
        _ => rest.rfind(':').unwrap_or(rest.len()),
    };
    let (host, port) = match &rest[split..] {
        "" => (&rest[..split], None),
        p => (
            &rest[..split],
            Some(p.strip_prefix(':')?.parse::<u16>().ok()?),
        ),
    };
    let (wildcard, host) = match host.strip_prefix("*.") {
        Some(h) if pattern => (true, h),
        _ => (false, host),
    };
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b));
    if !valid {
        return None;
    }
    let port = port.or(match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    });
    Some(Pattern {
        scheme: scheme.to_string(),
        host: host.to_string(),
        wildcard,
        port,
    })
}

/// Headers of an answer to an allowed cross-origin request.
pub fn allow_headers(origin: &str) -> String {
    format!("access-control-allow-origin: {origin}\r\nvary: Origin\r\n")
}

/// The answer to a CORS preflight (`OPTIONS`) from an allowed origin.
pub fn preflight(origin: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 204 No Content\r\n{}access-control-allow-methods: GET, POST, OPTIONS\r\n\
         access-control-allow-headers: authorization, content-type, last-event-id\r\n\
         access-control-max-age: 600\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        allow_headers(origin)
    )
    .into_bytes()
}

/// Adds the CORS headers to a complete response (after its status line).
pub fn add_to_response(resp: &mut Vec<u8>, origin: &str) {
    if let Some(i) = resp.windows(2).position(|w| w == b"\r\n") {
        let h = allow_headers(origin);
        resp.splice(i + 2..i + 2, h.into_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_scheme_host_and_port() {
        let o = Origins::new(&[
            "https://app.example.com".into(),
            "https://*.example.org".into(),
            "http://localhost:3000".into(),
        ]);
        assert!(!o.any());
        assert!(o.allows(None, None), "no Origin: not a browser page");
        assert!(
            o.allows(Some("http://10.0.0.5:8080"), Some("10.0.0.5:8080")),
            "same origin"
        );
        assert!(!o.allows(Some("http://evil.net"), Some("10.0.0.5:8080")));
        assert!(o.allows(Some("https://app.example.com"), None));
        assert!(o.allows(Some("https://APP.example.com:443"), None));
        assert!(!o.allows(Some("http://app.example.com"), None), "scheme");
        assert!(
            !o.allows(Some("https://app.example.com:8443"), None),
            "port"
        );
        assert!(!o.allows(Some("https://app.example.com.evil.net"), None));
        assert!(o.allows(Some("https://a.b.example.org"), None));
        assert!(
            !o.allows(Some("https://example.org"), None),
            "*. wants a subdomain"
        );
        assert!(!o.allows(Some("https://evilexample.org"), None));
        assert!(o.allows(Some("http://localhost:3000"), None));
        assert!(!o.allows(Some("http://localhost:3001"), None));
        assert!(!o.allows(Some("null"), None));
        assert!(!o.allows(Some(""), None));
        let v6 = Origins::new(&["http://[::1]:8080".into()]);
        assert!(v6.allows(Some("http://[::1]:8080"), None));
        assert!(!v6.allows(Some("http://[::1]"), None));
        assert!(Origins::new(&[]).allows(Some("https://anything.net"), None));
        assert!(Origins::new(&["*".into()]).any());
    }

    #[test]
    fn bad_patterns_are_named() {
        assert!(validate("https://ok.example.com").is_ok());
        assert!(validate("*").is_ok());
        for bad in [
            "example.com",
            "https://",
            "https://a b",
            "https://x:99999",
            "://x",
        ] {
            assert!(validate(bad).unwrap_err().contains(bad), "{bad}");
        }
    }

    #[test]
    fn headers_go_after_the_status_line() {
        let mut r = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec();
        add_to_response(&mut r, "https://a.example");
        let s = String::from_utf8(r).unwrap();
        assert!(s.starts_with("HTTP/1.1 200 OK\r\naccess-control-allow-origin: https://a.example\r\nvary: Origin\r\ncontent-length: 0"));
    }
}
