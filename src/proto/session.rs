//! The per-connection protocol state machine.
//!
//! Inputs are `handle_*`/`on_*` calls with the time passed in; outputs are
//! [`Output`] values pushed to a caller-owned `Vec` for the core loop to
//! carry out (send a frame, close, ask a room's home core to join/leave,
//! sequence a publish). A `Session` owns who the connection is, which rooms
//! it is in, its rate limiter and its auth state. It must not touch sockets,
//! other connections, room indexes or other cores: everything shared goes
//! out as an `Output`.

use super::command::{self, Command, CommandError, CommandParser, Id, Since};
use super::event::{self, Event};
use super::ratelimit::{RateParams, TokenBucket, Verdict};
use super::{ErrorCode, close, valid_room};
use crate::auth::{Authenticator, Identity};
use crate::config::Config;
use std::sync::Arc;

/// Consecutive malformed frames before a connection is closed with 1008.
pub const MAX_BAD_FRAMES: u8 = 10;

/// The parts of the configuration a session needs, resolved once per core.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Largest `data`, bytes.
    pub max_message: usize,
    /// Rooms per connection.
    pub max_rooms: usize,
    /// Rate limit.
    pub rate: RateParams,
    /// Heartbeat interval, seconds (announced in `welcome`).
    pub heartbeat: u64,
    /// Seconds between `token_expired` and close 4001.
    pub expiry_grace: u64,
    /// The `limits` object of `welcome`, pre-encoded.
    pub limits_json: String,
}

impl SessionConfig {
    /// Derives the session settings from a validated config.
    pub fn from_config(c: &Config) -> Self {
        let l = &c.limits;
        SessionConfig {
            max_message: l.max_message,
            max_rooms: l.max_rooms,
            rate: RateParams {
                per_sec: l.rate_per_sec,
                burst: l.rate_burst,
                kick_after_ms: l.rate_kick_after * 1000,
            },
            heartbeat: c.heartbeat,
            expiry_grace: c.auth.expiry_grace,
            limits_json: format!(
                "{{\"max_message\":{},\"max_rooms\":{},\"rate\":{{\"per_sec\":{},\"burst\":{}}}}}",
                l.max_message, l.max_rooms, l.rate_per_sec, l.rate_burst
            ),
        }
    }
}

/// What a session call needs to know about the world.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    /// Settings.
    pub cfg: &'a SessionConfig,
    /// Token verification.
    pub auth: &'a Authenticator,
    /// Monotonic milliseconds (rate limiting).
    pub now_ms: u64,
    /// Unix seconds (token expiry).
    pub unix_s: u64,
    /// Index of the core that owns the connection (announced in `welcome`).
    pub core: usize,
    /// The node's name in cluster mode (announced in `welcome`).
    pub node: Option<&'a str>,
}

impl Ctx<'_> {
    /// Unix time in ms (event timestamps).
    pub fn unix_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// Longest user id accepted in `direct` and the HTTP API.
pub const MAX_USER_LEN: usize = 256;

/// A room the connection is in.
#[derive(Debug, Clone)]
pub struct JoinedRoom {
    /// Room name (shared with the core's room index).
    pub name: Arc<str>,
    /// The connection's slot in the core's member list of that room.
    pub slot: u32,
}

/// What the core loop must do after a session call.
#[derive(Debug)]
pub enum Output {
    /// Send this text frame to the client.
    Frame(String),
    /// Close the connection with this code and reason (after the frames
    /// before it).
    Close {
        /// WebSocket close code.
        code: u16,
        /// Reason text (also logged).
        reason: &'static str,
    },
    /// The identity was (re)established: (re)arm the token-expiry timer.
    Authenticated,
    /// Ask the room's home core to add this connection; the core calls
    /// [`Session::join_done`] when it answers. `rejoin`: already a member
    /// (answer with the room's position, change no counts).
    Join {
        /// Room.
        room: Arc<str>,
        /// Command id for the `ack`.
        id: Option<Id>,
        /// Recovery position.
        since: Option<Since>,
        /// Already a member.
        rejoin: bool,
    },
    /// Remove the connection from the room's local member list (at `slot`)
    /// and tell the home core. The `ack` was already emitted.
    Leave {
        /// Room.
        room: Arc<str>,
        /// Slot in the local member list.
        slot: u32,
    },
    /// Ask the room's home core for a page of history; it answers.
    History {
        /// Room (joined).
        room: Arc<str>,
        /// Command id for the reply.
        id: Option<Id>,
        /// Only messages with a smaller seq.
        before: Option<u64>,
        /// At most this many (1..=500).
        limit: u64,
    },
    /// An `error` event with this code was queued (for the metrics).
    Error(ErrorCode),
    /// The connection's typing state in a joined room (to its home core).
    Typing {
        /// Room (joined).
        room: Arc<str>,
        /// Typing or stopped.
        typing: bool,
    },
    /// The user set a presence status (to the user's home core).
    Presence {
        /// New status.
        status: crate::proto::Status,
    },
    /// A direct message to every connection of user `to`; the core acks
    /// with `delivered`.
    Direct {
        /// Recipient user id.
        to: Arc<str>,
        /// Command id for the `ack`.
        id: Option<Id>,
        /// The `direct` event, encoded.
        event: String,
    },
    /// Ask the room's home core for its members (`members` reply).
    Members {
        /// Room (joined).
        room: Arc<str>,
        /// Command id for the reply.
        id: Option<Id>,
    },
    /// Send to the room's home core for sequencing; it answers with the `ack`.
    Publish {
        /// Room.
        room: Arc<str>,
        /// Command id for the `ack`.
        id: Option<Id>,
        /// The sender's part of the `message` event ([`event::message_tail`]).
        tail: String,
        /// Idempotency key.
        key: Option<Arc<str>>,
    },
}

/// A session id: 64 random bits, written `s_` and 16 hex digits. Kept
/// as the number (8 bytes, no allocation) and formatted where shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub u64);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s_{:016x}", self.0)
    }
}

/// Protocol state of one WebSocket connection on `/ws`.
#[derive(Debug)]
pub struct Session {
    /// Session id, unique per server run.
    pub id: SessionId,
    /// Who the client is; `None` until in-band auth succeeds.
    pub identity: Option<Identity>,
    /// Rooms joined (acknowledged by their home cores).
    pub rooms: Vec<JoinedRoom>,
    /// A join sent to a home core and not yet answered. While set, the core
    /// reads no further frames from this client, so commands after a `join`
    /// see its result.
    pub pending_join: Option<Arc<str>>,
    limiter: TokenBucket,
    bad_frames: u8,
    expiry_notified: bool,
    closing: bool,
}

impl Session {
    /// A new session; `identity` is `None` when in-band auth is awaited.
    pub fn new(
        id: SessionId,
        identity: Option<Identity>,
        cfg: &SessionConfig,
        now_ms: u64,
    ) -> Self {
        Session {
            id,
            identity,
            rooms: Vec::new(),
            pending_join: None,
            limiter: TokenBucket::new(&cfg.rate, now_ms),
            bad_frames: 0,
            expiry_notified: false,
            closing: false,
        }
    }

    /// The `welcome` event (for an upgrade that was authenticated or
    /// anonymous; in-band auth produces it itself).
    pub fn welcome(&self, id: Option<&Id>, ctx: &Ctx<'_>) -> String {
        let ident = self.identity.as_ref().expect("welcome needs an identity");
        Event::with_capacity("welcome", 256)
            .id(id)
            .str("session", &self.id.to_string())
            .str("user", &ident.user)
            .maybe_str("name", ident.name.as_deref())
            .num("heartbeat", ctx.cfg.heartbeat)
            .raw("limits", &ctx.cfg.limits_json)
            .num("core", ctx.core as u64)
            .maybe_str("node", ctx.node)
            .finish()
    }

    /// Whether a `Close` was emitted (no further input is handled).
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// The joined room named `room`.
    pub fn room(&self, room: &str) -> Option<&JoinedRoom> {
        self.rooms.iter().find(|r| &*r.name == room)
    }

    /// Handles one text frame.
    pub fn handle_text(
        &mut self,
        frame: &[u8],
        parser: &mut CommandParser,
        ctx: &Ctx<'_>,
        out: &mut Vec<Output>,
    ) {
        if self.closing {
            return;
        }
        parser.parse(frame, |id, cmd| self.dispatch(id, cmd, ctx, out));
    }

    /// Handles one binary frame (reserved for a future encoding).
    pub fn handle_binary(&mut self, ctx: &Ctx<'_>, out: &mut Vec<Output>) {
        if self.closing || !self.admit(None, ctx, out) {
            return;
        }
        if self.identity.is_none() {
            return self.refuse_unauthenticated(None, out);
        }
        out.push(Output::Frame(event::error(
            None,
            ErrorCode::Unsupported,
            "binary frames are not supported; send JSON text frames",
        )));
    }

    /// The home core answered the pending join. `slot`: the connection's
    /// place in the local member list, or `None` for a rejoin.
    pub fn join_done(&mut self, room: Arc<str>, slot: Option<u32>) {
        self.pending_join = None;
        if let Some(slot) = slot {
            // Most connections are in one room or a few: room for one
            // first (32 B instead of 112 for the default four), doubling
            // from there.
            self.rooms.reserve_exact(usize::from(self.rooms.is_empty()));
            self.rooms.push(JoinedRoom { name: room, slot });
        }
    }

    /// The auth timeout passed.
    pub fn on_auth_timeout(&mut self, out: &mut Vec<Output>) {
        if self.identity.is_none() && !self.closing {
            self.close(close::UNAUTHORIZED, "authentication timeout", out);
        }
    }

    /// The token's `exp` may have passed: warn once with `token_expired`.
    /// Returns the grace in seconds after which [`Session::on_expiry_grace`]
    /// must be called, if the warning was sent now.
    pub fn on_token_expiry(&mut self, ctx: &Ctx<'_>, out: &mut Vec<Output>) -> Option<u64> {
        let exp = self.identity.as_ref()?.exp?;
        if self.closing || exp > ctx.unix_s || self.expiry_notified {
            return None;
        }
        self.expiry_notified = true;
        out.push(Output::Frame(event::error(
            None,
            ErrorCode::TokenExpired,
            "token expired: send a fresh auth before the grace period ends",
        )));
        Some(ctx.cfg.expiry_grace)
    }

    /// The grace after `token_expired` ended: close 4001 unless refreshed.
    pub fn on_expiry_grace(&mut self, ctx: &Ctx<'_>, out: &mut Vec<Output>) {
        let expired = self
            .identity
            .as_ref()
            .and_then(|i| i.exp)
            .is_some_and(|exp| exp <= ctx.unix_s);
        if expired && self.expiry_notified && !self.closing {
            self.close(close::UNAUTHORIZED, "token expired", out);
        }
    }

    fn close(&mut self, code: u16, reason: &'static str, out: &mut Vec<Output>) {
        self.closing = true;
        out.push(Output::Close { code, reason });
    }

    /// `start`, then the sender (`{"user",..}`) and `,"data":<data>`, with
    /// `data` bounded by `max_message`; `None` after a `too_large` error.
    fn sender_and_data(
        &self,
        start: &str,
        ident: &Identity,
        data: command::Data<'_, '_>,
        id: Option<&Id>,
        ctx: &Ctx<'_>,
        out: &mut Vec<Output>,
    ) -> Option<Vec<u8>> {
        let mut head = String::with_capacity(64 + start.len());
        head.push_str(start);
        event::push_from(&mut head, &ident.user, ident.name.as_deref());
        head.push_str(",\"data\":");
        let mut bytes = head.into_bytes();
        let prefix = bytes.len();
        data.write_json(&mut bytes);
        if bytes.len() - prefix > ctx.cfg.max_message {
            self.error(
                id,
                ErrorCode::TooLarge,
                "data is larger than max_message",
                out,
            );
            return None;
        }
        Some(bytes)
    }

    fn error(&self, id: Option<&Id>, code: ErrorCode, message: &str, out: &mut Vec<Output>) {
        out.push(Output::Frame(event::error(id, code, message)));
        out.push(Output::Error(code));
    }

    /// Applies the rate limit; false = the command is dropped.
    fn admit(&mut self, id: Option<&Id>, ctx: &Ctx<'_>, out: &mut Vec<Output>) -> bool {
        match self.limiter.take(&ctx.cfg.rate, ctx.now_ms) {
            Verdict::Allowed => true,
            Verdict::Limited => {
                self.error(
                    id,
                    ErrorCode::RateLimited,
                    "rate limit exceeded; command dropped",
                    out,
                );
                false
            }
            Verdict::Kick => {
                self.close(close::RATE_LIMITED, "rate limited for too long", out);
                false
            }
        }
    }

    fn refuse_unauthenticated(&mut self, id: Option<&Id>, out: &mut Vec<Output>) {
        self.error(
            id,
            ErrorCode::Unauthorized,
            "authenticate first: send {\"type\":\"auth\",\"token\":\"...\"}",
            out,
        );
        self.close(close::UNAUTHORIZED, "not authenticated", out);
    }

    fn dispatch(
        &mut self,
        id: Option<Id>,
        cmd: Result<Command<'_, '_>, CommandError>,
        ctx: &Ctx<'_>,
        out: &mut Vec<Output>,
    ) {
        let id = id.as_ref();
        if !self.admit(id, ctx, out) {
            return;
        }
        let cmd = match cmd {
            Ok(cmd) => {
                self.bad_frames = 0;
                cmd
            }
            Err(e) if self.identity.is_none() => {
                self.error(id, e.code, &e.message, out);
                return self.refuse_unauthenticated(id, out);
            }
            Err(e) => {
                self.error(id, e.code, &e.message, out);
                self.bad_frames += 1;
                if self.bad_frames >= MAX_BAD_FRAMES {
                    self.close(close::POLICY, "too many malformed commands", out);
                }
                return;
            }
        };
        let Some(ident) = self.identity.as_ref() else {
            return match cmd {
                Command::Auth { token } => self.first_auth(id, token, ctx, out),
                _ => self.refuse_unauthenticated(id, out),
            };
        };
        match cmd {
            Command::Auth { token } => self.refresh_auth(id, token, ctx, out),
            Command::Publish { room, data, key } => {
                if !valid_room(room) {
                    return self.error(id, ErrorCode::InvalidRoom, "invalid room name", out);
                }
                let member = self.room(room);
                if !ident.may_publish(room, member.is_some()) {
                    return if member.is_none() && ident.publish.is_none() {
                        self.error(id, ErrorCode::NotMember, "join the room first", out)
                    } else {
                        self.error(id, ErrorCode::Forbidden, "not allowed to publish here", out)
                    };
                }
                let Some(mut bytes) = self.sender_and_data("", ident, data, id, ctx, out) else {
                    return;
                };
                bytes.push(b'}');
                let Ok(tail) = String::from_utf8(bytes) else {
                    return self.error(id, ErrorCode::Internal, "encoding failed", out);
                };
                let room = match member {
                    Some(m) => m.name.clone(),
                    None => Arc::from(room),
                };
                out.push(Output::Publish {
                    room,
                    id: id.cloned(),
                    tail,
                    key: key.map(Arc::from),
                });
            }
            Command::Join { room, since } => {
                if !valid_room(room) {
                    return self.error(id, ErrorCode::InvalidRoom, "invalid room name", out);
                }
                if !ident.rooms.matches(room) {
                    return self.error(
                        id,
                        ErrorCode::Forbidden,
                        "not allowed to join this room",
                        out,
                    );
                }
                let (room, rejoin) = match self.room(room) {
                    Some(r) => (r.name.clone(), true),
                    None if self.rooms.len() >= ctx.cfg.max_rooms => {
                        return self.error(
                            id,
                            ErrorCode::RoomLimit,
                            "too many rooms on this connection",
                            out,
                        );
                    }
                    None => (Arc::from(room), false),
                };
                self.pending_join = Some(room.clone());
                out.push(Output::Join {
                    room,
                    id: id.cloned(),
                    since,
                    rejoin,
                });
            }
            Command::Leave { room } => {
                if !valid_room(room) {
                    return self.error(id, ErrorCode::InvalidRoom, "invalid room name", out);
                }
                let Some(pos) = self.rooms.iter().position(|r| &*r.name == room) else {
                    return self.error(id, ErrorCode::NotMember, "not in this room", out);
                };
                let joined = self.rooms.swap_remove(pos);
                out.push(Output::Frame(
                    Event::new("ack").id(id).str("room", &joined.name).finish(),
                ));
                out.push(Output::Leave {
                    room: joined.name,
                    slot: joined.slot,
                });
            }
            Command::Ping => out.push(Output::Frame(Event::new("pong").id(id).finish())),
            Command::History {
                room,
                before,
                limit,
            } => {
                if !valid_room(room) {
                    return self.error(id, ErrorCode::InvalidRoom, "invalid room name", out);
                }
                let Some(joined) = self.room(room) else {
                    return self.error(id, ErrorCode::NotMember, "join the room first", out);
                };
                out.push(Output::History {
                    room: joined.name.clone(),
                    id: id.cloned(),
                    before,
                    limit,
                });
            }
            Command::Typing { room, typing } => {
                if !valid_room(room) {
                    return self.error(id, ErrorCode::InvalidRoom, "invalid room name", out);
                }
                let Some(joined) = self.room(room) else {
                    return self.error(id, ErrorCode::NotMember, "join the room first", out);
                };
                out.push(Output::Typing {
                    room: joined.name.clone(),
                    typing,
                });
            }
            Command::Presence { status } => {
                use crate::proto::Status as S;
                let status = match status {
                    command::Status::Online => S::Online,
                    command::Status::Away => S::Away,
                    command::Status::Busy => S::Busy,
                };
                out.push(Output::Presence { status });
            }
            Command::Direct { to, data } => {
                if to.is_empty() || to.len() > MAX_USER_LEN {
                    return self.error(
                        id,
                        ErrorCode::BadJson,
                        "`to` must be a user id of 1-256 bytes",
                        out,
                    );
                }
                let start = "{\"type\":\"direct\",\"from\":";
                let Some(mut bytes) = self.sender_and_data(start, ident, data, id, ctx, out) else {
                    return;
                };
                bytes.extend_from_slice(b",\"ts\":");
                bytes.extend_from_slice(itoa::Buffer::new().format(ctx.unix_ms()).as_bytes());
                bytes.push(b'}');
                let Ok(event) = String::from_utf8(bytes) else {
                    return self.error(id, ErrorCode::Internal, "encoding failed", out);
                };
                out.push(Output::Direct {
                    to: Arc::from(to),
                    id: id.cloned(),
                    event,
                });
            }
            Command::Members { room } => {
                if !valid_room(room) {
                    return self.error(id, ErrorCode::InvalidRoom, "invalid room name", out);
                }
                let Some(joined) = self.room(room) else {
                    return self.error(id, ErrorCode::NotMember, "join the room first", out);
                };
                out.push(Output::Members {
                    room: joined.name.clone(),
                    id: id.cloned(),
                });
            }
        }
    }

    fn first_auth(&mut self, id: Option<&Id>, token: &str, ctx: &Ctx<'_>, out: &mut Vec<Output>) {
        match ctx.auth.verify(token) {
            Ok(ident) => {
                self.identity = Some(ident);
                out.push(Output::Frame(self.welcome(id, ctx)));
                out.push(Output::Authenticated);
            }
            Err(e) => {
                self.error(id, ErrorCode::Unauthorized, &e.to_string(), out);
                self.close(close::UNAUTHORIZED, "authentication failed", out);
            }
        }
    }

    fn refresh_auth(&mut self, id: Option<&Id>, token: &str, ctx: &Ctx<'_>, out: &mut Vec<Output>) {
        let new = match ctx.auth.verify(token) {
            Ok(new) => new,
            Err(e) => return self.error(id, ErrorCode::Unauthorized, &e.to_string(), out),
        };
        let cur = self.identity.as_ref().expect("refresh needs an identity");
        let same_user = cur.user == new.user;
        let fresh_anonymous = cur.anonymous && self.rooms.is_empty() && self.pending_join.is_none();
        if !same_user && !fresh_anonymous {
            return self.error(
                id,
                ErrorCode::Forbidden,
                "a connection cannot change its user; reconnect with the new token",
                out,
            );
        }
        out.push(Output::Frame(
            Event::new("ack").id(id).str("user", &new.user).finish(),
        ));
        self.identity = Some(new);
        self.expiry_notified = false;
        out.push(Output::Authenticated);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{TokenSpec, sign_token, unix_now};

    const SECRET: &str = "session-secret-1";

    struct H {
        cfg: SessionConfig,
        auth: Authenticator,
        parser: CommandParser,
        now_ms: u64,
    }

    impl H {
        fn new(max_rooms: usize) -> Self {
            let mut c = Config::default();
            c.limits.max_rooms = max_rooms;
            c.limits.max_message = 100;
            c.limits.rate_burst = 10.0;
            c.limits.rate_per_sec = 10.0;
            H {
                cfg: SessionConfig::from_config(&c),
                auth: Authenticator::new(Some(SECRET), false, &["*".to_string()]),
                parser: CommandParser::new(),
                now_ms: 0,
            }
        }
        fn ctx(&self) -> Ctx<'_> {
            Ctx {
                cfg: &self.cfg,
                auth: &self.auth,
                now_ms: self.now_ms,
                unix_s: unix_now(),
                core: 0,
                node: None,
            }
        }
        fn anon(&self) -> Session {
            Session::new(
                SessionId(1),
                Some(self.auth.anonymous("s_1")),
                &self.cfg,
                self.now_ms,
            )
        }
        fn send(&mut self, s: &mut Session, frame: &str) -> Vec<Output> {
            let mut out = Vec::new();
            let ctx = Ctx {
                cfg: &self.cfg,
                auth: &self.auth,
                now_ms: self.now_ms,
                unix_s: unix_now(),
                core: 0,
                node: None,
            };
            s.handle_text(frame.as_bytes(), &mut self.parser, &ctx, &mut out);
            // Error counts are for the metrics; the tests look at frames.
            out.retain(|o| !matches!(o, Output::Error(_)));
            out
        }
    }

    fn frames(out: &[Output]) -> Vec<serde_json::Value> {
        out.iter()
            .filter_map(|o| match o {
                Output::Frame(f) => Some(serde_json::from_str(f).unwrap()),
                _ => None,
            })
            .collect()
    }

    fn error_code(out: &[Output]) -> String {
        frames(out)[0]["code"].as_str().unwrap().to_string()
    }

    fn token(spec: TokenSpec) -> String {
        sign_token(SECRET, &spec)
    }

    #[test]
    fn join_then_publish_then_leave() {
        let mut h = H::new(10);
        let mut s = h.anon();
        let out = h.send(&mut s, r#"{"type":"publish","room":"a","data":1}"#);
        assert_eq!(error_code(&out), "not_member");

        let out = h.send(&mut s, r#"{"type":"join","id":1,"room":"a"}"#);
        let Output::Join {
            room, rejoin, id, ..
        } = &out[0]
        else {
            panic!("{out:?}")
        };
        assert!(!rejoin);
        assert_eq!(id.as_ref().unwrap().as_json(), "1");
        assert_eq!(s.pending_join.as_deref(), Some("a"));
        s.join_done(room.clone(), Some(0));

        let out = h.send(
            &mut s,
            r#"{"type":"publish","id":"x","room":"a","data":{"k":"v"}}"#,
        );
        let Output::Publish { room, tail, .. } = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(&**room, "a");
        assert!(
            tail.starts_with(r#"{"user":"anon:s_1"},"data":{"k":"v"}}"#),
            "{tail}"
        );

        let out = h.send(&mut s, r#"{"type":"leave","id":2,"room":"a"}"#);
        assert_eq!(frames(&out)[0]["type"], "ack");
        assert!(matches!(&out[1], Output::Leave { slot: 0, .. }));
        assert!(s.rooms.is_empty());
        assert_eq!(
            error_code(&h.send(&mut s, r#"{"type":"leave","room":"a"}"#)),
            "not_member"
        );
    }

    #[test]
    fn room_rules_and_limits() {
        let mut h = H::new(1);
        let mut s = h.anon();
        assert_eq!(
            error_code(&h.send(&mut s, r#"{"type":"join","room":"bad room"}"#)),
            "invalid_room"
        );
        let out = h.send(&mut s, r#"{"type":"join","room":"a"}"#);
        let Output::Join { room, .. } = &out[0] else {
            panic!()
        };
        s.join_done(room.clone(), Some(0));
        assert_eq!(
            error_code(&h.send(&mut s, r#"{"type":"join","room":"b"}"#)),
            "room_limit"
        );
        // joining a room again is a rejoin, not a limit error
        assert!(matches!(
            h.send(&mut s, r#"{"type":"join","room":"a"}"#)[0],
            Output::Join { rejoin: true, .. }
        ));
        s.join_done("a".into(), None);
        let big = format!(
            r#"{{"type":"publish","room":"a","data":"{}"}}"#,
            "x".repeat(100)
        );
        assert_eq!(error_code(&h.send(&mut s, &big)), "too_large");
        let out = h.send(&mut s, r#"{"type":"typing","room":"a","typing":true}"#);
        assert!(
            matches!(&out[0], Output::Typing { room, typing: true } if &**room == "a"),
            "{out:?}"
        );
        assert_eq!(
            error_code(&h.send(&mut s, r#"{"type":"typing","room":"b","typing":true}"#)),
            "not_member"
        );
        let out = h.send(&mut s, r#"{"type":"members","id":3,"room":"a"}"#);
        assert!(matches!(&out[0], Output::Members { .. }), "{out:?}");
        let out = h.send(
            &mut s,
            r#"{"type":"direct","id":4,"to":"u2","data":{"x":1}}"#,
        );
        let Output::Direct { to, event, .. } = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(&**to, "u2");
        let ev: serde_json::Value = serde_json::from_str(event).unwrap();
        assert_eq!(ev["type"], "direct");
        assert_eq!(ev["data"], serde_json::json!({"x":1}));
        assert!(ev["from"]["user"].as_str().unwrap().starts_with("anon:"));
        assert!(ev["ts"].as_u64().unwrap() > 0);
        let out = h.send(&mut s, r#"{"type":"presence","status":"busy"}"#);
        assert!(matches!(
            &out[0],
            Output::Presence {
                status: crate::proto::Status::Busy
            }
        ));
    }

    #[test]
    fn token_patterns_forbid() {
        let mut h = H::new(10);
        let t = token(TokenSpec {
            sub: "u1".into(),
            rooms: Some(vec!["team:*".into()]),
            publish: Some(vec!["alerts".into()]),
            ..Default::default()
        });
        let mut s = Session::new(SessionId(2), Some(h.auth.verify(&t).unwrap()), &h.cfg, 0);
        assert_eq!(
            error_code(&h.send(&mut s, r#"{"type":"join","room":"lobby"}"#)),
            "forbidden"
        );
        // publish-only access without membership
        assert!(matches!(
            h.send(&mut s, r#"{"type":"publish","room":"alerts","data":0}"#)[0],
            Output::Publish { .. }
        ));
        // a member of team:1, but the publish claim does not cover it
        s.join_done("team:1".into(), Some(0));
        assert_eq!(
            error_code(&h.send(&mut s, r#"{"type":"publish","room":"team:1","data":0}"#)),
            "forbidden"
        );
    }

    #[test]
    fn in_band_auth_success_and_failure() {
        let mut h = H::new(10);
        let mut s = Session::new(SessionId(3), None, &h.cfg, 0);
        let t = token(TokenSpec {
            sub: "u9".into(),
            ttl: Some(60),
            ..Default::default()
        });
        let out = h.send(
            &mut s,
            &format!(r#"{{"type":"auth","id":"a","token":"{t}"}}"#),
        );
        let f = frames(&out);
        assert_eq!(f[0]["type"], "welcome");
        assert_eq!(f[0]["id"], "a");
        assert_eq!(f[0]["user"], "u9");
        assert!(matches!(out[1], Output::Authenticated));

        let mut s = Session::new(SessionId(4), None, &h.cfg, 0);
        let out = h.send(&mut s, r#"{"type":"auth","token":"nope"}"#);
        assert_eq!(error_code(&out), "unauthorized");
        assert!(matches!(out[1], Output::Close { code: 4001, .. }));
        assert!(
            h.send(&mut s, r#"{"type":"ping"}"#).is_empty(),
            "closing: input ignored"
        );

        let mut s = Session::new(SessionId(5), None, &h.cfg, 0);
        let out = h.send(&mut s, r#"{"type":"ping"}"#);
        assert_eq!(error_code(&out), "unauthorized");
        assert!(matches!(out[1], Output::Close { code: 4001, .. }));

        let mut s = Session::new(SessionId(6), None, &h.cfg, 0);
        let mut out = Vec::new();
        s.on_auth_timeout(&mut out);
        assert!(matches!(out[0], Output::Close { code: 4001, .. }));
    }

    #[test]
    fn refresh_and_expiry() {
        let mut h = H::new(10);
        let old = token(TokenSpec {
            sub: "u1".into(),
            exp: Some(unix_now() + 1),
            ..Default::default()
        });
        let mut s = Session::new(SessionId(7), Some(h.auth.verify(&old).unwrap()), &h.cfg, 0);
        // not yet expired: nothing
        let mut out = Vec::new();
        assert_eq!(s.on_token_expiry(&h.ctx(), &mut out), None);
        // pretend time passed by making the token already expired
        s.identity.as_mut().unwrap().exp = Some(unix_now() - 1);
        assert_eq!(
            s.on_token_expiry(&h.ctx(), &mut out),
            Some(h.cfg.expiry_grace)
        );
        assert_eq!(error_code(&out), "token_expired");
        // a fresh token for the same user cancels the close
        let fresh = token(TokenSpec {
            sub: "u1".into(),
            ttl: Some(60),
            ..Default::default()
        });
        let out = h.send(
            &mut s,
            &format!(r#"{{"type":"auth","id":3,"token":"{fresh}"}}"#),
        );
        assert_eq!(
            frames(&out)[0],
            serde_json::json!({"type":"ack","id":3,"user":"u1"})
        );
        let mut out = Vec::new();
        s.on_expiry_grace(&h.ctx(), &mut out);
        assert!(out.is_empty());
        // another user's token is refused on a non-anonymous connection
        let other = token(TokenSpec {
            sub: "u2".into(),
            ..Default::default()
        });
        let out = h.send(&mut s, &format!(r#"{{"type":"auth","token":"{other}"}}"#));
        assert_eq!(error_code(&out), "forbidden");
        // without a refresh the grace ends in 4001
        s.identity.as_mut().unwrap().exp = Some(unix_now() - 1);
        let mut out = Vec::new();
        s.on_token_expiry(&h.ctx(), &mut out);
        out.clear();
        s.on_expiry_grace(&h.ctx(), &mut out);
        assert!(matches!(out[0], Output::Close { code: 4001, .. }));
    }

    #[test]
    fn rate_limit_then_kick() {
        let mut h = H::new(10);
        let mut s = h.anon();
        for _ in 0..10 {
            assert_eq!(
                frames(&h.send(&mut s, r#"{"type":"ping"}"#))[0]["type"],
                "pong"
            );
        }
        assert_eq!(
            error_code(&h.send(&mut s, r#"{"type":"ping","id":1}"#)),
            "rate_limited"
        );
        // keep flooding for longer than rate_kick_after (10 s)
        let mut kicked = false;
        for _ in 0..12_000 {
            h.now_ms += 1;
            let out = h.send(&mut s, r#"{"type":"ping"}"#);
            if out
                .iter()
                .any(|o| matches!(o, Output::Close { code: 4008, .. }))
            {
                kicked = true;
                break;
            }
        }
        assert!(kicked);
        assert!(h.now_ms >= 10_000, "kicked at {}", h.now_ms);
    }

    #[test]
    fn malformed_frames_then_policy_close() {
        let mut h = H::new(10);
        h.cfg.rate.burst = 1000.0;
        let mut s = Session::new(SessionId(0), Some(h.auth.anonymous("s")), &h.cfg, 0);
        for i in 0..MAX_BAD_FRAMES {
            let out = h.send(&mut s, "{oops");
            assert_eq!(error_code(&out), "bad_json");
            let closed = out
                .iter()
                .any(|o| matches!(o, Output::Close { code: 1008, .. }));
            assert_eq!(closed, i + 1 == MAX_BAD_FRAMES);
        }
    }
}
