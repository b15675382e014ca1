//! The wire protocol, sans-IO: commands in, events out, and the per-connection
//! [`session::Session`] state machine between them.
//!
//! Everything here is deterministic and testable without sockets: time is
//! passed in (milliseconds on a monotonic clock, seconds of Unix time), and
//! the results are [`session::Output`] values for the core loop to carry out.
//! This module must not touch sockets, clocks, threads or other cores.

pub mod command;
pub mod event;
pub mod ratelimit;
pub mod session;

/// Longest room name, bytes.
pub const MAX_ROOM_LEN: usize = 128;

/// Whether `room` is 1–128 bytes of `[A-Za-z0-9_:.-]` (PROTOCOL section 3).
pub fn valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= MAX_ROOM_LEN
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'.' | b'-'))
}

/// A user's presence status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Connected.
    Online,
    /// Connected, away.
    Away,
    /// Connected, busy.
    Busy,
    /// No connection for the grace period.
    Offline,
}

impl Status {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Away => "away",
            Status::Busy => "busy",
            Status::Offline => "offline",
        }
    }

    /// A status a client may set.
    pub fn parse_settable(s: &str) -> Option<Status> {
        match s {
            "online" => Some(Status::Online),
            "away" => Some(Status::Away),
            "busy" => Some(Status::Busy),
            _ => None,
        }
    }
}

/// The error codes of PROTOCOL section 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame is not valid JSON, not an object, or a field has the wrong type.
    BadJson,
    /// `type` names no command.
    UnknownType,
    /// A required field is absent.
    MissingField,
    /// A room name breaks the naming rule.
    InvalidRoom,
    /// Authentication failed or is required first.
    Unauthorized,
    /// The token expired while connected.
    TokenExpired,
    /// The token's patterns do not allow this.
    Forbidden,
    /// The command needs membership of the room.
    NotMember,
    /// The connection is in `max_rooms` rooms already.
    RoomLimit,
    /// `data` is larger than `max_message`.
    TooLarge,
    /// The per-connection token bucket is empty; the command was dropped.
    RateLimited,
    /// Binary frames, and commands this server does not offer.
    Unsupported,
    /// The server cannot take the command now.
    Overloaded,
    /// The server cannot reach its cluster engine (Redis); retry later.
    Unavailable,
    /// A server-side failure.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotMember => "not_member",
            ErrorCode::RoomLimit => "room_limit",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status the API answers this code with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Overloaded | ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
            ErrorCode::Unauthorized | ErrorCode::TokenExpired => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            _ => 400,
        }
    }
}

/// WebSocket close codes of PROTOCOL section 5.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Server shutting down (after `reconnect`).
    pub const GOING_AWAY: u16 = 1001;
    /// WebSocket protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// Text frame that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation (repeated malformed frames).
    pub const POLICY: u16 = 1008;
    /// Frame or message too big.
    pub const TOO_BIG: u16 = 1009;
    /// Internal error.
    pub const INTERNAL: u16 = 1011;
    /// Unauthenticated or token expired.
    pub const UNAUTHORIZED: u16 = 4001;
    /// Rate limited for too long.
    pub const RATE_LIMITED: u16 = 4008;
    /// Slow consumer: outbound queue passed `max_backlog`.
    pub const SLOW_CONSUMER: u16 = 4009;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        assert!(valid_room("lobby"));
        assert!(valid_room("team:42:general-1.x_y"));
        assert!(valid_room(&"a".repeat(128)));
        assert!(!valid_room(&"a".repeat(129)));
        assert!(!valid_room(""));
        assert!(!valid_room("has space"));
        assert!(!valid_room("star*"));
        assert!(!valid_room("é"));
    }
}
