//! WebSocket connections: frames in (through tungstenite and the
//! connection's sans-IO session), frames out (the shared-frame queue,
//! flushed once per iteration with `writev`), and closing.
//!
//! Owns the read loop with its budget, the flush policy (replies every
//! iteration, room deliveries deferred while input keeps arriving), the
//! backlog bound (4009), the close handshake, and turning what a session
//! asks for into engine [`Command`]s. It must not decide anything about
//! rooms or users itself: that is the engine's, through [`Core::submit`].

use super::conn::{Closing, Conn, Push, State, WsConn, queue_ws};
use super::{CLOSE_TIMEOUT_MS, Core, DEFER_US, FLUSH_POLL_EVERY, MAX_FLUSH_POLLS, READ_BUDGET};
use super::{RECONNECT_JITTER_MS, TimerKind, idle, outq, would_block, ws_would_block};
use crate::engine::{Answer, Command, ConnRef, ReplyTo};
use crate::proto::close;
use crate::proto::event::Event;
use crate::proto::session::{Ctx, Output, Session};
use bytes::Bytes;
use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tracing::{debug, info};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, Utf8Bytes};

impl Core {
    /// Reads and handles frames. `may_skip_eagain`: this follows a readiness
    /// event without hangup, so a short read proves the socket drained.
    pub(super) fn ws_read(&mut self, key: usize, may_skip_eagain: bool) {
        // A TLS read returns decrypted records, whose size says nothing
        // about what is left in the socket.
        let plain = self.conns.get(key).is_some_and(|c| !c.stream.is_tls());
        self.scratch.begin(may_skip_eagain && plain);
        self.ws_read_frames(key);
        let pending = match self.conns.get_mut(key) {
            Some(Conn {
                state: State::Ws(ws),
                ..
            }) => ws.ctx.as_mut().map(|live| &mut live.pending),
            _ => None,
        };
        self.scratch.stash(pending);
    }

    pub(super) fn ws_read_frames(&mut self, key: usize) {
        for _ in 0..READ_BUDGET {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let generation = conn.generation;
            let State::Ws(ws) = &mut conn.state else {
                return;
            };
            if ws.blocked {
                return;
            }
            if ws.failed {
                return self.discard_input(key);
            }
            let one_off = idle::quiet(ws, self.now_ms);
            let live = idle::live(&mut ws.ctx, ws.session.is_none(), one_off, &self.shared);
            match live.read(&mut conn.stream, &mut self.scratch, &mut ws.out) {
                Ok(msg) => {
                    ws.last_rx_ms = self.now_ms;
                    let closing = ws.closing;
                    let echo = ws.session.is_none();
                    match msg {
                        Message::Text(t) if echo => self.echo(key, outq::TEXT, t.into()),
                        Message::Binary(b) if echo => self.echo(key, outq::BINARY, b),
                        Message::Close(_) => {
                            // tungstenite queued the reply (it goes out after
                            // the data already queued, see `sockio::Io`);
                            // nothing more is queued, and the peer gets a
                            // deadline to go away.
                            ws.ctl = true;
                            if !closing {
                                ws.closing = true;
                                let at = self.now_ms + CLOSE_TIMEOUT_MS;
                                self.timer(at, key, generation, TimerKind::CloseDeadline);
                            }
                            self.mark_dirty(key);
                        }
                        _ if closing => {}
                        Message::Text(t) => self.on_text(key, generation, t),
                        Message::Binary(_) => self.on_binary(key, generation),
                        Message::Ping(_) => {
                            ws.ctl = true; // tungstenite queued the pong
                            self.mark_dirty(key);
                        }
                        Message::Pong(_) | Message::Frame(_) => {}
                    }
                }
                Err(e) if ws_would_block(&e) => {
                    if ws.ctl {
                        self.mark_dirty(key); // a queued pong or close reply is waiting
                    }
                    return self.read_done(key, generation);
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return self.remove_when_flushed(key);
                }
                Err(_) if ws.closing => return self.remove_conn(key),
                Err(tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                )) => {
                    debug!(core = self.id, "peer went away without a close frame");
                    return self.remove_conn(key);
                }
                Err(e) => {
                    // After a read error tungstenite's frame state is not safe
                    // to read again: fail the connection.
                    let (code, reason) = match &e {
                        tungstenite::Error::Capacity(_) => (close::TOO_BIG, "message too big"),
                        tungstenite::Error::Utf8(_) => {
                            (close::INVALID_PAYLOAD, "text frame is not valid UTF-8")
                        }
                        tungstenite::Error::Protocol(_) => (close::PROTOCOL, "protocol error"),
                        tungstenite::Error::WriteBufferFull(_) => {
                            (close::SLOW_CONSUMER, "slow consumer")
                        }
                        _ => {
                            debug!(core = self.id, error = %e, "websocket read failed");
                            return self.remove_conn(key);
                        }
                    };
                    debug!(core = self.id, error = %e, "failing websocket");
                    ws.failed = true;
                    return self.close_ws(key, code, reason);
                }
            }
        }
        // Budget spent: let other connections run, continue next iteration.
        if let Some(conn) = self.conns.get(key) {
            self.runnable.push((key, conn.generation));
        }
    }

    /// Reads and drops whatever a failed connection still sends, until EOF
    /// (then removes it) or WouldBlock.
    pub(super) fn discard_input(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        loop {
            match conn.stream.read(&mut self.read_buf) {
                Ok(0) => return self.remove_conn(key),
                Ok(_) => {}
                Err(e) if would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.remove_conn(key),
            }
        }
    }

    pub(super) fn ws_flush(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let State::Ws(ws) = &mut conn.state else {
            return;
        };
        let before = ws.out.pending();
        let result = ws.out.write_to(&mut conn.stream);
        self.metrics.bytes_out += (before - ws.out.pending()) as u64;
        match result {
            Ok(true) => {}
            Ok(false) => return, // socket full: the writable event resumes
            Err(e) => {
                debug!(core = self.id, error = %e, "write failed");
                return self.remove_conn(key);
            }
        }
        if !(ws.ctl || ws.closing || ws.failed) {
            return; // tungstenite has nothing of its own to write
        }
        let flushed = idle::flush(
            &mut ws.ctx,
            &mut conn.stream,
            &mut self.scratch,
            &mut ws.out,
        );
        if flushed.is_ok() {
            ws.ctl = false;
        }
        match flushed {
            Ok(()) if ws.failed => match conn.stream.flush_tls() {
                // The close frame is out: end our side so the peer sees EOF.
                Ok(true) => conn.stream.shutdown_write(),
                Ok(false) => {} // the writable event comes back here
                Err(_) => self.remove_conn(key),
            },
            Ok(()) => {}
            Err(e) if ws_would_block(&e) => {}
            Err(tungstenite::Error::ConnectionClosed) => self.remove_when_flushed(key),
            Err(tungstenite::Error::WriteBufferFull(_)) => {} // a pong that will be retried
            Err(e) => {
                debug!(core = self.id, error = %e, "flush failed");
                self.remove_conn(key);
            }
        }
    }

    /// Flushes connections with output, each once: replies (acks, errors,
    /// pongs, closes) every iteration; room deliveries when they are due
    /// ([`Core::deliveries_due`]: with `limits.max_write_delay_ms` = 0 when
    /// an iteration brought no new input or [`DEFER_US`] has passed, so the
    /// core never sleeps holding them; with a delay, once the oldest held
    /// delivery has waited that long: one deadline per core, no timer per
    /// connection). During a long pass
    /// over room deliveries, input that arrives is taken in every
    /// [`FLUSH_POLL_EVERY`] connections, so the messages it publishes ride
    /// along in the writes still to come (a busy core packs more frames into
    /// each write, as a work-stealing runtime does by running a woken task
    /// late). Removals caused by flush errors may queue more output, hence a
    /// few rounds.
    pub(super) fn flush_pending(&mut self) {
        self.flush_urgent();
        let mut mid_polls = 0;
        for _ in 0..4 {
            if !self.deliveries_due() {
                return;
            }
            let keys = std::mem::take(&mut self.flush.deferred);
            self.deferred_since = None;
            for (i, &key) in keys.iter().enumerate() {
                if let Some(Conn {
                    state: State::Ws(ws),
                    ..
                }) = self.conns.get_mut(key)
                {
                    ws.deferred = false;
                    ws.urgent = false;
                    self.ws_flush(key);
                }
                if i % FLUSH_POLL_EVERY == FLUSH_POLL_EVERY - 1 && mid_polls < MAX_FLUSH_POLLS {
                    mid_polls += 1;
                    self.take_input_now();
                }
            }
            self.settle();
            self.flush_urgent();
            self.had_input = false; // what follows came from our own flushes
        }
    }

    /// Whether the held room deliveries are to be written now (starts their
    /// wait when it has not started).
    pub(super) fn deliveries_due(&mut self) -> bool {
        if self.flush.deferred.is_empty() {
            return false;
        }
        let waited = self
            .deferred_since
            .get_or_insert_with(Instant::now)
            .elapsed();
        if self.write_delay.is_zero() {
            !self.had_input || waited >= Duration::from_micros(DEFER_US)
        } else {
            waited >= self.write_delay || self.draining_until.is_some()
        }
    }

    /// How long the core may sleep before held deliveries are due (`None`:
    /// none is held; zero: they are due or the dial is 0, so the loop
    /// must not sleep).
    pub(super) fn deliveries_wait(&self) -> Option<Duration> {
        if self.flush.deferred.is_empty() {
            return None;
        }
        match self.deferred_since {
            Some(since) if !self.write_delay.is_zero() && self.draining_until.is_none() => {
                Some(self.write_delay.saturating_sub(since.elapsed()))
            }
            _ => Some(Duration::ZERO),
        }
    }

    /// Flushes every connection with a pending reply.
    pub(super) fn flush_urgent(&mut self) {
        for _ in 0..4 {
            if self.flush.urgent.is_empty() {
                return;
            }
            let keys = std::mem::take(&mut self.flush.urgent);
            for &key in &keys {
                if let Some(Conn {
                    state: State::Ws(ws),
                    ..
                }) = self.conns.get_mut(key)
                {
                    ws.urgent = false;
                    self.ws_flush(key);
                }
            }
            self.settle();
        }
    }

    pub(super) fn mark_dirty(&mut self, key: usize) {
        if let Some(Conn {
            state: State::Ws(ws),
            ..
        }) = self.conns.get_mut(key)
        {
            self.flush.mark(ws, key, true);
        }
    }

    /// Queues a reply (an event for this connection alone), framed into
    /// the connection's own tail buffer.
    pub(super) fn reply(&mut self, key: usize, text: &str) {
        self.push_private(key, outq::TEXT, text.as_bytes(), None);
    }

    /// Queues a framed reply (from another core, or built once).
    pub(super) fn queue(&mut self, key: usize, frame: Bytes) {
        self.queue_as(key, Push::Own(frame), true);
    }

    /// Queues a shared frame; `urgent`: flushed this iteration (a reply)
    /// rather than with the room deliveries.
    pub(super) fn queue_as(&mut self, key: usize, frame: Push, urgent: bool) {
        if let Some(conn) = self.conns.get_mut(key) {
            queue_ws(
                conn,
                key,
                frame,
                self.backlogs,
                &mut self.flush,
                urgent,
                &mut self.to_close,
            );
        }
    }

    pub(super) fn echo(&mut self, key: usize, opcode: u8, payload: Bytes) {
        self.push_private(key, opcode, &payload.clone(), Some(payload));
    }

    /// Queues a frame for one connection (see [`OutQueue::push_frame`]),
    /// marks it for flushing, and dooms it (4009) past its backlog bound.
    pub(super) fn push_private(
        &mut self,
        key: usize,
        opcode: u8,
        payload: &[u8],
        shared: Option<Bytes>,
    ) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let State::Ws(ws) = &mut conn.state else {
            return;
        };
        if ws.closing || ws.doomed {
            return;
        }
        ws.out.push_frame(opcode, payload, shared);
        self.flush.frames += 1;
        let limit = if ws.session.is_some() {
            self.backlogs.0
        } else {
            self.backlogs.1
        };
        if ws.out.pending() > limit {
            ws.doomed = true;
            let c = Closing::Ws(close::SLOW_CONSUMER, "slow consumer");
            self.to_close.push((key, conn.generation, c));
        }
        self.flush.mark(ws, key, true);
    }

    /// Queues a control frame through tungstenite (heartbeat pings).
    pub(super) fn write_control(&mut self, key: usize, msg: Message) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let State::Ws(ws) = &mut conn.state else {
            return;
        };
        if ws.closing || ws.doomed {
            return;
        }
        let one_off = idle::quiet(ws, self.now_ms);
        let live = idle::live(&mut ws.ctx, ws.session.is_none(), one_off, &self.shared);
        if !live.ctx.can_write() {
            return;
        }
        ws.ctl = true;
        match live.write(&mut conn.stream, &mut self.scratch, &mut ws.out, msg) {
            Ok(()) => {}
            Err(e) if ws_would_block(&e) => {}
            Err(_) => {
                ws.doomed = true;
                let c = Closing::Drop("write failed");
                self.to_close.push((key, conn.generation, c));
            }
        }
        self.flush.mark(ws, key, true);
    }

    pub(super) fn session_ctx(&self) -> Ctx<'_> {
        Ctx {
            cfg: &self.shared.session,
            auth: &self.shared.auth,
            now_ms: self.now_ms,
            unix_s: self.unix_s,
            core: self.id,
            node: self.shared.node.as_deref(),
        }
    }

    pub(super) fn with_session<R>(
        &mut self,
        key: usize,
        f: impl FnOnce(&mut Session, &Ctx<'_>) -> R,
    ) -> Option<R> {
        let Conn {
            state: State::Ws(ws),
            ..
        } = self.conns.get_mut(key)?
        else {
            return None;
        };
        let session = ws.session.as_mut()?;
        let ctx = Ctx {
            cfg: &self.shared.session,
            auth: &self.shared.auth,
            now_ms: self.now_ms,
            unix_s: self.unix_s,
            core: self.id,
            node: self.shared.node.as_deref(),
        };
        Some(f(session, &ctx))
    }

    pub(super) fn on_text(&mut self, key: usize, generation: u32, text: Utf8Bytes) {
        let Some(Conn {
            state: State::Ws(ws),
            ..
        }) = self.conns.get_mut(key)
        else {
            return;
        };
        let Some(session) = ws.session.as_mut() else {
            return;
        };
        let ctx = Ctx {
            cfg: &self.shared.session,
            auth: &self.shared.auth,
            now_ms: self.now_ms,
            unix_s: self.unix_s,
            core: self.id,
            node: self.shared.node.as_deref(),
        };
        session.handle_text(text.as_bytes(), &mut self.parser, &ctx, &mut self.outputs);
        self.metrics.messages_in += 1;
        self.apply_outputs(key, generation);
    }

    pub(super) fn on_binary(&mut self, key: usize, generation: u32) {
        let mut outputs = std::mem::take(&mut self.outputs);
        self.with_session(key, |s, ctx| s.handle_binary(ctx, &mut outputs));
        self.outputs = outputs;
        self.apply_outputs(key, generation);
    }

    /// Carries out what a session asked for.
    pub(super) fn apply_outputs(&mut self, key: usize, generation: u32) {
        let mut outputs = std::mem::take(&mut self.outputs);
        let conn = ConnRef {
            key: key as u32,
            generation,
        };
        let core = self.id;
        let reply_to = |id| ReplyTo {
            core,
            conn,
            id,
            http: false,
        };
        for out in outputs.drain(..) {
            match out {
                Output::Frame(f) => self.reply(key, &f),
                Output::Close { code, reason } => self.close_ws(key, code, reason),
                Output::Authenticated => {
                    self.arm_expiry(key, generation);
                    self.count_user(key);
                }
                Output::Error(code) => self.metrics.error(code),
                Output::Typing { room, typing } => {
                    if let Some((user, _)) = self.identity_of(key) {
                        self.submit(Command::Typing { room, user, typing });
                    }
                }
                Output::Presence { status } => {
                    if let Some((user, _)) = self.identity_of(key) {
                        self.submit(Command::SetStatus { user, status });
                    }
                }
                Output::Direct { to, id, event } => self.send_direct(conn, to, id, event),
                Output::Members { room, id } => {
                    let answer = Answer::Ws(reply_to(None));
                    self.submit(Command::Members { room, id, answer });
                }
                Output::Join {
                    room,
                    id,
                    since,
                    rejoin,
                } => {
                    let Some((user, name)) = self.identity_of(key) else {
                        continue;
                    };
                    if let Some(Conn {
                        state: State::Ws(ws),
                        ..
                    }) = self.conns.get_mut(key)
                    {
                        // Nothing more is read from the connection until the
                        // join is answered (a publish right after it sees it).
                        ws.blocked = true;
                    }
                    self.submit(Command::Join {
                        room,
                        core,
                        conn,
                        user,
                        name,
                        id,
                        since,
                        rejoin,
                    });
                }
                Output::Leave { room, slot } => {
                    self.rooms.remove(&room, slot);
                    if let Some((user, _)) = self.identity_of(key) {
                        self.submit(Command::UserRoom {
                            user: user.clone(),
                            room: room.clone(),
                            joined: false,
                        });
                        self.submit(Command::Leave { room, core, user });
                    }
                }
                Output::History {
                    room,
                    id,
                    before,
                    limit,
                } => {
                    let reply = reply_to(id);
                    self.submit(Command::History {
                        room,
                        reply,
                        before,
                        limit,
                    });
                }
                Output::Publish {
                    room,
                    id,
                    tail,
                    key,
                } => {
                    let reply = Some(reply_to(id));
                    self.submit(Command::Publish {
                        room,
                        reply,
                        tail,
                        key,
                    });
                }
            }
        }
        self.outputs = outputs;
    }

    pub(super) fn identity_of(&self, key: usize) -> Option<(Arc<str>, Option<Arc<str>>)> {
        let Conn {
            state: State::Ws(ws),
            ..
        } = self.conns.get(key)?
        else {
            return None;
        };
        let ident = ws.session.as_ref()?.identity.as_ref()?;
        Some((ident.user.clone(), ident.name.clone()))
    }

    /// Makes sure an expiry timer is pending for the token's `exp`; at most
    /// one entry per connection unless a refresh brings `exp` earlier.
    pub(super) fn arm_expiry(&mut self, key: usize, generation: u32) {
        let Some(Conn {
            state: State::Ws(ws),
            ..
        }) = self.conns.get_mut(key)
        else {
            return;
        };
        let exp = ws
            .session
            .as_ref()
            .and_then(|s| s.identity.as_ref())
            .and_then(|i| i.exp);
        let Some(exp) = exp else {
            return;
        };
        if ws.expiry_armed.is_some_and(|armed| armed.get() <= exp) {
            return; // the pending timer fires first and re-arms for the new exp
        }
        ws.expiry_armed = std::num::NonZeroU64::new(exp.max(1));
        let delay_ms = exp.saturating_sub(self.unix_s).saturating_mul(1000);
        let at = self.now_ms.saturating_add(delay_ms);
        self.timer(at, key, generation, TimerKind::Expiry);
    }

    /// Carries out closes queued during delivery (only from [`Core::settle`]).
    pub(super) fn process_closes(&mut self) {
        while let Some((key, generation, how)) = self.to_close.pop() {
            if !self.live(key, generation) {
                continue;
            }
            match how {
                Closing::Ws(code, reason) => self.close_ws(key, code, reason),
                Closing::Drop(reason) => {
                    debug!(core = self.id, reason, "connection dropped");
                    self.remove_conn(key);
                }
            }
        }
    }

    /// Starts the close handshake with `code`; the connection is removed when
    /// the client answers, or after [`CLOSE_TIMEOUT_MS`].
    pub(super) fn close_ws(&mut self, key: usize, code: u16, reason: &'static str) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let generation = conn.generation;
        let State::Ws(ws) = &mut conn.state else {
            return;
        };
        if ws.closing {
            return;
        }
        ws.closing = true;
        ws.blocked = false;
        self.metrics.close(code);
        if code != close::GOING_AWAY {
            let (session, user) = match &ws.session {
                Some(s) => (
                    s.id.to_string(),
                    s.identity
                        .as_ref()
                        .map(|i| i.user.to_string())
                        .unwrap_or_default(),
                ),
                None => ("echo".to_string(), String::new()),
            };
            info!(
                core = self.id,
                session, user, code, reason, "closing connection"
            );
        }
        if ws.doomed {
            // A slow consumer gets the close frame next: its backlog is
            // dropped (a started frame is finished first).
            ws.out.drop_unstarted();
        }
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        // Through `Io`: the close frame follows whatever data is still queued.
        let live = idle::live(&mut ws.ctx, ws.session.is_none(), false, &self.shared);
        ws.ctl = true;
        match live.close(&mut conn.stream, &mut self.scratch, &mut ws.out, frame) {
            Ok(()) => {}
            Err(e) if ws_would_block(&e) => {}
            Err(_) => return self.remove_conn(key),
        }
        self.mark_dirty(key);
        self.timer(
            self.now_ms + CLOSE_TIMEOUT_MS,
            key,
            generation,
            TimerKind::CloseDeadline,
        );
    }

    /// Removes a connection whose close handshake is complete, once its
    /// last bytes are out: a TLS session may still hold the records of the
    /// close reply when the socket was full (without TLS they are in the
    /// kernel already). Until then the writable event comes back through
    /// [`Core::ws_flush`], and the close deadline bounds the wait.
    pub(super) fn remove_when_flushed(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key)
            && let Ok(false) = conn.stream.flush_tls()
        {
            return;
        }
        self.remove_conn(key);
    }

    /// Removes a connection at once: leaves its rooms and frees its slot.
    pub(super) fn remove_conn(&mut self, key: usize) {
        let Some(conn) = self.conns.try_remove(key) else {
            return;
        };
        if conn.counted {
            self.shared.connections.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(ip) = conn.ip {
            self.shared.per_ip.release(ip);
        }
        match conn.state {
            State::Ws(ws) => {
                let WsConn {
                    session, counted, ..
                } = *ws;
                self.session_gone(key, conn.generation, session, counted);
            }
            State::Sse(s) => self.sse_gone(*s),
            State::Http(_) => {}
        }
        // Dropping the stream closes the socket (and removes it from epoll);
        // a TLS peer is told first (best effort).
        let mut stream = conn.stream;
        stream.close_notify();
    }

    /// A WebSocket connection is gone: leave its rooms, uncount its user.
    pub(super) fn session_gone(
        &mut self,
        key: usize,
        generation: u32,
        session: Option<Session>,
        counted: bool,
    ) {
        let Some(session) = session else {
            return;
        };
        debug!(core = self.id, session = %session.id, "websocket closed");
        let Some(ident) = session.identity else {
            return;
        };
        let mut rooms = Vec::with_capacity(session.rooms.len());
        for joined in session.rooms {
            self.rooms.remove(&joined.name, joined.slot);
            rooms.push(joined.name.clone());
            self.submit(Command::Leave {
                room: joined.name,
                core: self.id,
                user: ident.user.clone(),
            });
        }
        if counted {
            self.submit(Command::UserGone {
                user: ident.user,
                core: self.id,
                conn: ConnRef {
                    key: key as u32,
                    generation,
                },
                rooms,
            });
        }
    }

    pub(super) fn start_drain(&mut self) {
        if self.draining_until.is_some() {
            return;
        }
        let timeout = self.shared.config.shutdown_timeout * 1000;
        self.draining_until = Some(self.now_ms + timeout);
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        info!(
            core = self.id,
            connections = self.conns.len(),
            "draining: asking clients to reconnect"
        );
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let Some(conn) = self.conns.get(key) else {
                continue;
            };
            let (open_ws, has_session) = match &conn.state {
                State::Ws(ws) => (!ws.closing, ws.session.is_some()),
                State::Http(_) => {
                    self.remove_conn(key);
                    continue;
                }
                State::Sse(_) => {
                    let after = self.rng.u64(RECONNECT_JITTER_MS.0..=RECONNECT_JITTER_MS.1);
                    self.sse_reconnect(key, after);
                    self.remove_conn(key);
                    continue;
                }
            };
            if !open_ws {
                continue;
            }
            if has_session {
                let after = self.rng.u64(RECONNECT_JITTER_MS.0..=RECONNECT_JITTER_MS.1);
                let ev = Event::new("reconnect").num("after_ms", after).finish();
                self.reply(key, &ev);
            }
            self.close_ws(key, close::GOING_AWAY, "server shutting down");
        }
        self.settle();
    }
}
