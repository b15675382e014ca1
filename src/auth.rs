//! Authentication: JWT (HS256) verification into an [`Identity`], room
//! patterns, and dev-token signing for `corecast token`.
//!
//! Owns the claim names of PROTOCOL section 2 and the pattern rule (`*` as a
//! suffix wildcard). It must not know about sockets or sessions: callers pass
//! a token string and get an identity or an [`AuthError`].

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest accepted `sub` (user id), bytes.
pub const MAX_USER_LEN: usize = 256;
/// Longest accepted `name`, bytes (longer names are cut at a char boundary).
pub const MAX_NAME_LEN: usize = 256;
/// Longest accepted token, bytes.
pub const MAX_TOKEN_LEN: usize = 8192;

/// A list of room patterns: `lobby` matches exactly, `team:*` matches every
/// room starting with `team:`, `*` matches all rooms.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Patterns(Vec<Box<str>>);

impl Patterns {
    /// Builds a pattern list from strings.
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(items: I) -> Self {
        Patterns(items.into_iter().map(|s| s.as_ref().into()).collect())
    }

    /// Whether any pattern matches `room`.
    pub fn matches(&self, room: &str) -> bool {
        self.0.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => room.starts_with(prefix),
            None => &**p == room,
        })
    }
}

/// Whether `p` is a room pattern: a room name, a room-name prefix ending
/// in `*`, or `*` alone.
pub fn valid_pattern(p: &str) -> bool {
    match p.strip_suffix('*') {
        Some("") => true,
        Some(prefix) => crate::proto::valid_room(prefix),
        None => crate::proto::valid_room(p),
    }
}

/// Who a connection is, as established by a token or as an anonymous user.
#[derive(Debug, Clone)]
pub struct Identity {
    /// User id (`sub`, or `anon:<session>`).
    pub user: Arc<str>,
    /// Display name (`name` claim).
    pub name: Option<Arc<str>>,
    /// Rooms this user may join.
    pub rooms: Arc<Patterns>,
    /// Rooms this user may publish to without being a member (the `publish`
    /// claim); `None` = the `rooms` patterns, and membership is required.
    pub publish: Option<Arc<Patterns>>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: Option<u64>,
    /// No token was given.
    pub anonymous: bool,
}

impl Identity {
    /// Whether the user may publish into `room`, given its membership.
    pub fn may_publish(&self, room: &str, member: bool) -> bool {
        match &self.publish {
            Some(p) => p.matches(room),
            None => member && self.rooms.matches(room),
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// The server has no `auth.secret`, so no token can be verified.
    NoSecret,
    /// The token's `exp` has passed.
    Expired,
    /// Bad signature, malformed token or claims; the text says which.
    Invalid(String),
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::NoSecret => f.write_str("this server has no auth secret configured"),
            AuthError::Expired => f.write_str("token expired"),
            AuthError::Invalid(m) => write!(f, "invalid token: {m}"),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rooms: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    publish: Option<Vec<String>>,
}

/// Verifies tokens with the configured secret and policy. Shared read-only
/// by all cores.
pub struct Authenticator {
    key: Option<DecodingKey>,
    validation: Validation,
    default_rooms: Arc<Patterns>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("has_secret", &self.key.is_some())
            .field("default_rooms", &self.default_rooms)
            .finish()
    }
}

impl Authenticator {
    /// `secret`: the HS256 key, if any; `require_exp`: refuse tokens without
    /// `exp`; `default_rooms`: patterns for tokens without a `rooms` claim.
    pub fn new(secret: Option<&str>, require_exp: bool, default_rooms: &[String]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_exp = true;
        let required: &[&str] = if require_exp {
            &["sub", "exp"]
        } else {
            &["sub"]
        };
        validation.set_required_spec_claims(required);
        Authenticator {
            key: secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            validation,
            default_rooms: Arc::new(Patterns::new(default_rooms)),
        }
    }

    /// Verifies `token` and returns the identity it proves.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let key = self.key.as_ref().ok_or(AuthError::NoSecret)?;
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Invalid("token too long".into()));
        }
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
                    ErrorKind::MissingRequiredClaim(c) => {
                        AuthError::Invalid(format!("missing claim `{c}`"))
                    }
                    ErrorKind::InvalidAlgorithm => {
                        AuthError::Invalid("algorithm must be HS256".into())
                    }
                    _ => AuthError::Invalid(e.to_string()),
                }
            })?;
        let c = data.claims;
        // RFC 7519 4.1.4: not accepted *on or after* exp (jsonwebtoken only
        // refuses exp < now); the session's expiry timer uses the same rule.
        if c.exp.is_some_and(|exp| exp <= unix_now()) {
            return Err(AuthError::Expired);
        }
        if c.sub.is_empty() || c.sub.len() > MAX_USER_LEN {
            return Err(AuthError::Invalid(format!(
                "`sub` must be 1..={MAX_USER_LEN} bytes"
            )));
        }
        if c.sub.starts_with("anon:") || c.sub == "server" {
            return Err(AuthError::Invalid(
                "`sub` must not be `server` or start with `anon:`".into(),
            ));
        }
        let name = c.name.map(|mut n| {
            if n.len() > MAX_NAME_LEN {
                let mut cut = MAX_NAME_LEN;
                while !n.is_char_boundary(cut) {
                    cut -= 1;
                }
                n.truncate(cut);
            }
            Arc::<str>::from(n)
        });
        Ok(Identity {
            user: c.sub.into(),
            name,
            rooms: match c.rooms {
                Some(r) => Arc::new(Patterns::new(r)),
                None => self.default_rooms.clone(),
            },
            publish: c.publish.map(|p| Arc::new(Patterns::new(p))),
            exp: c.exp,
            anonymous: false,
        })
    }

    /// The identity of an anonymous connection with session id `session`.
    pub fn anonymous(&self, session: &str) -> Identity {
        Identity {
            user: format!("anon:{session}").into(),
            name: None,
            rooms: self.default_rooms.clone(),
            publish: None,
            exp: None,
            anonymous: true,
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix time in milliseconds (event timestamps).
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What `corecast token` (and tests) sign.
#[derive(Debug, Clone, Default)]
pub struct TokenSpec {
    /// `sub`
    pub sub: String,
    /// `name`
    pub name: Option<String>,
    /// `rooms`
    pub rooms: Option<Vec<String>>,
    /// `publish`
    pub publish: Option<Vec<String>>,
    /// Lifetime in seconds from now; `None` = no `exp`.
    pub ttl: Option<u64>,
    /// Absolute `exp` (overrides `ttl`), for tests of expired tokens.
    pub exp: Option<u64>,
}

/// Signs an HS256 token for `spec` with `secret`.
pub fn sign_token(secret: &str, spec: &TokenSpec) -> String {
    let claims = Claims {
        sub: spec.sub.clone(),
        name: spec.name.clone(),
        exp: spec.exp.or(spec.ttl.map(|t| unix_now() + t)),
        rooms: spec.rooms.clone(),
        publish: spec.publish.clone(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing of plain claims cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "test-secret-0123";

    fn spec(sub: &str) -> TokenSpec {
        TokenSpec {
            sub: sub.into(),
            ..Default::default()
        }
    }

    #[test]
    fn patterns_exact_and_suffix_wildcard() {
        let p = Patterns::new(["lobby", "team:42:*"]);
        assert!(p.matches("lobby"));
        assert!(!p.matches("lobby2"));
        assert!(p.matches("team:42:general"));
        assert!(!p.matches("team:43:general"));
        assert!(Patterns::new(["*"]).matches("anything"));
        assert!(!Patterns::default().matches("lobby"));
    }

    #[test]
    fn verifies_claims_and_defaults() {
        let a = Authenticator::new(Some(SECRET), false, &["public:*".to_string()]);
        let t = sign_token(
            SECRET,
            &TokenSpec {
                name: Some("Ann".into()),
                rooms: Some(vec!["lobby".into()]),
                ttl: Some(60),
                ..spec("u1")
            },
        );
        let id = a.verify(&t).unwrap();
        assert_eq!(&*id.user, "u1");
        assert_eq!(id.name.as_deref(), Some("Ann"));
        assert!(id.rooms.matches("lobby") && !id.rooms.matches("public:x"));
        assert!(id.may_publish("lobby", true) && !id.may_publish("lobby", false));
        let id = a.verify(&sign_token(SECRET, &spec("u2"))).unwrap();
        assert!(id.rooms.matches("public:x"), "default policy applies");
    }

    #[test]
    fn refuses_bad_tokens() {
        let a = Authenticator::new(Some(SECRET), false, &["*".to_string()]);
        let other = sign_token("another-secret-1", &spec("u1"));
        assert_eq!(
            a.verify(&other).unwrap_err(),
            AuthError::Invalid("bad signature".into())
        );
        let expired = sign_token(
            SECRET,
            &TokenSpec {
                exp: Some(unix_now() - 10),
                ..spec("u1")
            },
        );
        assert_eq!(a.verify(&expired).unwrap_err(), AuthError::Expired);
        assert!(matches!(a.verify("garbage"), Err(AuthError::Invalid(_))));
        assert!(matches!(
            a.verify(&sign_token(SECRET, &spec("anon:x"))),
            Err(AuthError::Invalid(_))
        ));
        let strict = Authenticator::new(Some(SECRET), true, &[]);
        assert!(matches!(
            strict.verify(&sign_token(SECRET, &spec("u1"))),
            Err(AuthError::Invalid(m)) if m.contains("exp")
        ));
        let none = Authenticator::new(None, false, &[]);
        assert_eq!(none.verify(&other).unwrap_err(), AuthError::NoSecret);
    }

    #[test]
    fn publish_claim_grants_publish_only_access() {
        let a = Authenticator::new(Some(SECRET), false, &["*".to_string()]);
        let t = sign_token(
            SECRET,
            &TokenSpec {
                rooms: Some(vec![]),
                publish: Some(vec!["alerts:*".into()]),
                ..spec("svc")
            },
        );
        let id = a.verify(&t).unwrap();
        assert!(id.may_publish("alerts:1", false));
        assert!(!id.may_publish("lobby", true));
    }
}
