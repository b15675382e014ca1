//! The connection slab's entries: what one socket is (an HTTP exchange, a
//! WebSocket, an SSE stream) and the per-connection state the socket layer
//! keeps for it, plus the two flush lists and the queueing of a shared
//! frame onto a WebSocket.
//!
//! A connection is owned by the slab of the core that accepted it and
//! changes state in place (HTTP → WebSocket or SSE). This module must not
//! do I/O; the front door ([`super::front`]), the WebSocket I/O
//! ([`super::ws`]) and SSE ([`super::sse`]) do.

use super::idle::Live;
use super::outq::{Frame, OutQueue};
use super::stream::Stream;
use super::{http, sse};
use crate::proto::close;
use crate::proto::session::Session;
use bytes::Bytes;
use std::net::IpAddr;

/// A connection before the WebSocket upgrade (or a plain HTTP exchange).
#[derive(Debug, Default)]
pub(super) struct HttpConn {
    /// Request head bytes read so far (then the body).
    pub(super) buf: Vec<u8>,
    /// A parsed head waiting for its body of this many bytes.
    pub(super) pending: Option<(Box<http::Request>, usize)>,
    /// Response being written.
    pub(super) out: Vec<u8>,
    pub(super) written: usize,
    pub(super) then: Then,
    /// The response was sent and the write side shut: read and discard until
    /// the client closes (so the response is not lost to a reset).
    pub(super) lingering: bool,
    /// The client already half-closed (while its request was waiting).
    pub(super) peer_closed: bool,
    /// An allowed cross-origin request's `Origin`: its response carries
    /// the CORS headers.
    pub(super) cors: Option<Box<str>>,
    /// The stream's start was checked for a PROXY protocol header.
    pub(super) proxy_done: bool,
    /// The client address a trusted proxy's PROXY header gave.
    pub(super) proxy_source: Option<IpAddr>,
    /// The address whose handshake token was taken at accept (TLS: the
    /// handshake is paid for before the request is read).
    pub(super) paid: Option<IpAddr>,
}

#[derive(Debug, Default)]
pub(super) enum Then {
    /// Nothing decided yet (still reading the head).
    #[default]
    Reading,
    /// Close after the response.
    Close,
    /// The request waits for an answer over the bus (HTTP API).
    Waiting,
    /// Become a WebSocket after the 101.
    Upgrade(Box<Upgrade>),
}

#[derive(Debug)]
pub(super) struct Upgrade {
    /// Protocol state (`None` on `/echo`).
    pub(super) session: Option<Session>,
    pub(super) leftover: Vec<u8>,
    /// Admitted under this address by the per-address limits.
    pub(super) ip: Option<IpAddr>,
}

/// A WebSocket connection.
pub(super) struct WsConn {
    /// tungstenite's context; `None` while the connection is idle (see
    /// [`super::idle`]).
    pub(super) ctx: Option<Box<Live>>,
    /// Protocol state (`None` on `/echo`).
    pub(super) session: Option<Session>,
    /// Counted at its user's home core (as the session's identity), and
    /// whether that identity was anonymous (`anon:<session>`, the only one
    /// a connection may switch away from). Two flags instead of the user's
    /// name: they fit in the struct's padding.
    pub(super) counted: bool,
    pub(super) counted_anon: bool,
    pub(super) last_rx_ms: u64,
    /// In the core's urgent flush list (replies: flushed this iteration).
    pub(super) urgent: bool,
    /// In the core's deferred flush list (room deliveries).
    pub(super) deferred: bool,
    /// tungstenite may hold output of its own (a pong or close reply to
    /// what it read, a ping or close we wrote through it): only then does a
    /// flush go through its `flush` (which touches its cold state).
    pub(super) ctl: bool,
    /// A join is out at another core; read nothing until it is answered.
    pub(super) blocked: bool,
    /// A close frame was sent or received: no more writes.
    pub(super) closing: bool,
    /// Queued for closing this iteration: no more writes.
    pub(super) doomed: bool,
    /// Reading failed (protocol error, oversized frame): tungstenite must
    /// not read again; incoming bytes are discarded until EOF.
    pub(super) failed: bool,
    /// In the core's list of connections that may go idle.
    pub(super) idle_listed: bool,
    /// A read ended in `WouldBlock` at least once (see [`super::idle`]).
    pub(super) has_read: bool,
    /// The token `exp` for which an expiry timer is pending.
    /// (`NonZero`: 8 bytes; an `exp` of 0 is kept as 1.)
    pub(super) expiry_armed: Option<std::num::NonZeroU64>,
    /// Bytes of a recovery replay still queued, which the backlog bound
    /// does not count (see [`queue_replay`]); shrinks as the queue drains.
    pub(super) replay_allowance: u32,
    /// Data frames waiting to be written (tungstenite's own buffer holds
    /// only the control frames it writes, and those go out after these; see
    /// [`sockio::Io`]).
    pub(super) out: OutQueue,
}

pub(super) enum State {
    Http(Box<HttpConn>),
    Ws(Box<WsConn>),
    Sse(Box<sse::SseConn>),
}

pub(super) struct Conn {
    /// The socket (and its TLS session).
    pub(super) stream: Stream,
    pub(super) generation: u32,
    /// Counted in `Shared::connections`.
    pub(super) counted: bool,
    /// Counted in `Shared::per_ip` under this address (released when the
    /// connection goes).
    pub(super) ip: Option<IpAddr>,
    pub(super) state: State,
}

/// What to do with a connection found to need closing mid-iteration.
#[derive(Debug, Clone, Copy)]
pub(super) enum Closing {
    /// WebSocket close frame with this code and reason.
    Ws(u16, &'static str),
    /// Drop the TCP connection (I/O error).
    Drop(&'static str),
}

/// A framed message to queue: shared with other connections of the core,
/// or this connection's alone.
pub(super) enum Push {
    Shared(Frame),
    Own(Bytes),
}

/// Queues a framed message on a WebSocket connection; marks it for
/// flushing; records a needed close when its backlog passes the bound
/// (`backlogs`: `/ws`, `/echo`): 4009.
#[inline]
pub(super) fn queue_ws(
    conn: &mut Conn,
    key: usize,
    frame: Push,
    backlogs: (usize, usize),
    flush: &mut FlushLists,
    urgent: bool,
    to_close: &mut Vec<(usize, u32, Closing)>,
) {
    let State::Ws(ws) = &mut conn.state else {
        return;
    };
    if ws.closing || ws.doomed {
        return;
    }
    // What is left of a replay is at most what is still queued.
    let allowance = (ws.replay_allowance as usize).min(ws.out.pending());
    ws.replay_allowance = allowance as u32;
    match frame {
        Push::Shared(f) => ws.out.push(f),
        Push::Own(b) => ws.out.push_own(b),
    }
    flush.frames += 1;
    let limit = if ws.session.is_some() {
        backlogs.0
    } else {
        backlogs.1
    };
    if ws.out.pending() > limit + allowance {
        ws.doomed = true;
        to_close.push((
            key,
            conn.generation,
            Closing::Ws(close::SLOW_CONSUMER, "slow consumer"),
        ));
    }
    flush.mark(ws, key, urgent);
}

/// Queues the missed messages of a rejoin with `since`. They are not
/// counted against the backlog bound: a replay larger than the bound would
/// otherwise close the connection with 4009 on every attempt, and the
/// client, told to reconnect at once, would loop without ever catching up.
/// The frames are the history's own shared `Bytes` (a reference count
/// each), and the history bounds them (`history.size` × `max_message`).
/// Live frames after them still count beyond the replay: a reader that
/// does not drain its replay is closed as soon as new traffic passes the
/// bound.
pub(super) fn queue_replay(
    conn: &mut Conn,
    key: usize,
    frames: Vec<Bytes>,
    flush: &mut FlushLists,
) {
    let State::Ws(ws) = &mut conn.state else {
        return;
    };
    if ws.closing || ws.doomed || frames.is_empty() {
        return;
    }
    let left = (ws.replay_allowance as usize).min(ws.out.pending());
    let before = ws.out.pending();
    flush.frames += frames.len() as u64;
    for f in frames {
        ws.out.push(Frame::new(f));
    }
    let added = ws.out.pending() - before;
    ws.replay_allowance = u32::try_from(left + added).unwrap_or(u32::MAX);
    flush.mark(ws, key, true);
}

/// Connections with queued output, in two classes (see
/// [`Core::flush_pending`]), and the count of frames queued.
#[derive(Debug, Default)]
pub(super) struct FlushLists {
    /// Replies to this connection's own commands, control frames.
    pub(super) urgent: Vec<usize>,
    /// Room deliveries only (they may wait for `limits.max_write_delay_ms`).
    pub(super) deferred: Vec<usize>,
    /// Frames queued to WebSocket connections so far (metrics).
    pub(super) frames: u64,
}

impl FlushLists {
    #[inline]
    pub(super) fn mark(&mut self, ws: &mut WsConn, key: usize, urgent: bool) {
        if urgent {
            if !ws.urgent {
                ws.urgent = true;
                self.urgent.push(key);
            }
        } else if !ws.deferred && !ws.urgent {
            ws.deferred = true;
            self.deferred.push(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    /// The per-connection budget (docs/ARCHITECTURE.md, "Memory per
    /// connection"): these sizes are part of it, so growing one is a
    /// decision, not an accident.
    #[test]
    fn connection_structs_stay_within_the_budget() {
        // A debug build's mio socket carries an 8-byte selector id.
        let mio_extra = if cfg!(debug_assertions) { 8 } else { 0 };
        assert!(size_of::<Conn>() <= 56 + mio_extra, "{}", size_of::<Conn>());
        assert!(size_of::<WsConn>() <= 232, "{}", size_of::<WsConn>());
        assert!(size_of::<Option<Session>>() <= 144);
        assert!(size_of::<OutQueue>() <= 48);
        assert!(size_of::<(u32, super::super::Timer)>() <= 16);
    }
}
