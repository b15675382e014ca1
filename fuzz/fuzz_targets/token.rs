//! `token`: tokens as the auth layer sees them
//! (`corecast::auth::Authenticator::verify`).
//!
//! Input: byte 0 picks the verifier (bit 0: `require_exp`, bit 1: default
//! rooms) and the mode (bit 2). Mode 0: the rest is the token string as a
//! client sends it. Mode 1: the rest is a claims JSON text (and, after a
//! first `\n`, a JOSE header text; the default is `{"alg":"HS256","typ":
//! "JWT"}`), signed with the verifier's secret into a real HS256 JWT, so
//! the claims handling behind the signature check is reached.
//!
//! Checks (besides no panic): an accepted identity has a valid `sub`
//! (1-256 bytes, not `server`, not `anon:`), a name of at most 256 bytes
//! cut at a char boundary, an `exp` in the future (required when
//! `require_exp`), and exactly the claims' values; claims that are
//! plainly good (only known keys, each once, of the right types, a
//! future `exp`) under a good header are accepted.

#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use corecast::auth::{Authenticator, MAX_NAME_LEN, MAX_USER_LEN, Patterns, unix_now};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::sync::LazyLock;

#[path = "common.rs"]
mod common;

const SECRET: &str = "corecast-fuzz-secret";
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

static AUTHS: LazyLock<[Authenticator; 4]> = LazyLock::new(|| {
    let star = ["*".to_string()];
    let some = ["lobby".to_string(), "team:*".to_string()];
    [
        Authenticator::new(Some(SECRET), false, &star),
        Authenticator::new(Some(SECRET), true, &star),
        Authenticator::new(Some(SECRET), false, &some),
        Authenticator::new(Some(SECRET), true, &some),
    ]
});
static KEY: LazyLock<EncodingKey> = LazyLock::new(|| EncodingKey::from_secret(SECRET.as_bytes()));

fn sign(header: &[u8], claims: &[u8]) -> String {
    let mut t = URL_SAFE_NO_PAD.encode(header);
    t.push('.');
    t.push_str(&URL_SAFE_NO_PAD.encode(claims));
    let sig = jsonwebtoken::crypto::sign(t.as_bytes(), &KEY, Algorithm::HS256).expect("HMAC");
    t.push('.');
    t.push_str(&sig);
    t
}

fn strings(v: Option<&Value>) -> Option<Option<Vec<String>>> {
    match v {
        None | Some(Value::Null) => Some(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(String::from))
            .collect::<Option<Vec<_>>>()
            .map(Some),
        Some(_) => None,
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&sel, rest)) = input.split_first() else {
        return;
    };
    let require_exp = sel & 1 == 1;
    let auth = &AUTHS[(sel & 3) as usize];
    let (token, claims, good_header) = if sel & 4 == 0 {
        let Ok(t) = std::str::from_utf8(rest) else {
            return;
        };
        (t.to_string(), None, false)
    } else {
        let (claims, header) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, HEADER.as_bytes()),
        };
        (
            sign(header, claims),
            Some(claims),
            header == HEADER.as_bytes(),
        )
    };
    let now = unix_now();
    let result = auth.verify(&token);
    if let Ok(ident) = &result {
        assert!(!ident.anonymous);
        let user = &*ident.user;
        assert!(
            !user.is_empty() && user.len() <= MAX_USER_LEN,
            "sub {user:?}"
        );
        assert!(
            user != "server" && !user.starts_with("anon:"),
            "sub {user:?}"
        );
        if let Some(n) = &ident.name {
            assert!(n.len() <= MAX_NAME_LEN);
        }
        match ident.exp {
            Some(exp) => assert!(exp > now.saturating_sub(5), "exp {exp} passed"),
            None => assert!(!require_exp, "no exp with require_exp"),
        }
    }
    let Some(claims) = claims else { return };
    let Ok(v) = serde_json::from_slice::<Value>(claims) else {
        return;
    };
    let keys = common::top_level_keys(claims);
    // What the claims say, when they are plainly good.
    let Value::Object(c) = &v else { return };
    if let Ok(ident) = &result {
        assert_eq!(c.get("sub").and_then(Value::as_str), Some(&*ident.user));
        let name = c.get("name").and_then(Value::as_str);
        match (&ident.name, name) {
            (Some(got), Some(n)) if n.len() <= MAX_NAME_LEN => assert_eq!(&**got, n),
            // Cut at the char boundary at or before MAX_NAME_LEN.
            (Some(got), Some(n)) => assert!(
                n.starts_with(&**got) && got.len() + 4 > MAX_NAME_LEN && got.len() <= MAX_NAME_LEN,
                "name cut to {} of {} bytes",
                got.len(),
                n.len()
            ),
            (None, None) => {}
            other => panic!("name {other:?}"),
        }
        assert_eq!(c.get("exp").and_then(Value::as_u64), ident.exp);
        if let Some(Some(rooms)) = strings(c.get("rooms")) {
            assert_eq!(*ident.rooms, Patterns::new(rooms));
        }
        match strings(c.get("publish")) {
            Some(Some(p)) => assert_eq!(ident.publish.as_deref(), Some(&Patterns::new(p))),
            Some(None) => assert!(ident.publish.is_none()),
            None => panic!("accepted a `publish` that is not a list of strings"),
        }
    }
    let known = ["sub", "name", "exp", "rooms", "publish"];
    let plainly_good = good_header
        && keys
            .as_deref()
            .is_some_and(|k| common::unique(k) && k.iter().all(|k| known.contains(&k.as_str())))
        && c.get("sub").and_then(Value::as_str).is_some_and(|s| {
            !s.is_empty() && s.len() <= MAX_USER_LEN && s != "server" && !s.starts_with("anon:")
        })
        && matches!(c.get("name"), None | Some(Value::Null | Value::String(_)))
        && match c.get("exp") {
            None => !require_exp,
            Some(e) => e.as_u64().is_some_and(|e| e > now + 60),
        }
        && strings(c.get("rooms")).is_some()
        && strings(c.get("publish")).is_some();
    if plainly_good {
        assert!(result.is_ok(), "good claims refused: {result:?} for {v}");
    }
});
