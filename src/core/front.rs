//! The front door of a core: accepting connections and the HTTP exchange
//! up to a WebSocket upgrade, an SSE stream, an API request or a plain
//! answer (`/health`, errors).
//!
//! Owns the listener's accept loop (with its pause when descriptors run
//! out), reading and parsing the request head (8 KiB, `auth.timeout`),
//! routing, writing plain responses with a lingering half-close, and the
//! upgrade itself (101 + `welcome` in one write). It must not handle
//! WebSocket frames (`ws`) or know about rooms.

use super::conn::{Conn, HttpConn, State, Then, Upgrade, WsConn};
use super::http::{self, Route, check_upgrade, error_response, json_response, switching_protocols};
use super::idle::Live;
use super::outq::OutQueue;
use super::stream::{self, Stream};
use super::{ACCEPT_RETRY_MS, Core, TimerKind, would_block};
use super::{per_ip, proxy, web};
use crate::auth::Identity;
use crate::engine::ConnRef;
use crate::proto::event::Event;
use crate::proto::ratelimit::Verdict;
use crate::proto::session::{Session, SessionId};
use mio::{Interest, Token};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use tracing::{debug, info, warn};

impl Core {
    pub(super) fn accept(&mut self) {
        if self.accept_paused || self.draining_until.is_some() {
            return;
        }
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let entry = self.conns.vacant_entry();
                    let key = entry.key();
                    if let Err(e) = self.poll.registry().register(
                        &mut stream,
                        Token(key),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        warn!(core = self.id, error = %e, "register failed; connection dropped");
                        continue;
                    }
                    let mut paid = None;
                    let stream = match &self.shared.tls {
                        None => Stream::plain(stream),
                        Some(tls) => {
                            let proxied = self
                                .shared
                                .trusted_proxies
                                .iter()
                                .any(|t| t.contains(&peer.ip()));
                            // A TLS handshake costs this core a signature
                            // before any request: the per-address handshake
                            // rate applies now, to the TCP peer (a trusted
                            // proxy's clients are counted at the upgrade).
                            if !proxied {
                                if !self
                                    .shared
                                    .per_ip
                                    .take_handshake(peer.ip(), self.shared.now_ms())
                                {
                                    debug!(core = self.id, ip = %peer.ip(), "TLS handshake refused: limits.handshakes_per_ip_per_sec");
                                    self.metrics.http_error(429);
                                    let _ = self.poll.registry().deregister(&mut stream);
                                    continue;
                                }
                                paid = Some(peer.ip());
                            }
                            match Stream::tls(stream, tls.config(), proxied) {
                                Ok(s) => s,
                                Err(e) => {
                                    warn!(core = self.id, error = %e, "TLS session not created; connection dropped");
                                    continue;
                                }
                            }
                        }
                    };
                    self.next_generation = self.next_generation.wrapping_add(1);
                    let generation = self.next_generation;
                    entry.insert(Conn {
                        stream,
                        generation,
                        counted: false,
                        ip: None,
                        state: State::Http(Box::new(HttpConn {
                            paid,
                            ..Default::default()
                        })),
                    });
                    let deadline = self.now_ms + self.shared.config.auth.timeout * 1000;
                    self.timer(deadline, key, generation, TimerKind::Handshake);
                }
                Err(e) if would_block(&e) => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS/ENOMEM: the queue stays full and
                    // edge-triggered readiness will not fire again; retry on a timer.
                    if self.now_ms.saturating_sub(self.last_accept_warn_ms) >= 1000 {
                        warn!(core = self.id, error = %e, connections = self.conns.len(),
                            "accept failed; pausing accepts for {ACCEPT_RETRY_MS} ms");
                        self.last_accept_warn_ms = self.now_ms;
                    }
                    self.accept_paused = true;
                    self.timer(self.now_ms + ACCEPT_RETRY_MS, 0, 0, TimerKind::AcceptRetry);
                    return;
                }
            }
        }
    }

    /// `hangup`: the event also reported the peer's FIN or an error, which
    /// only a read past the data shows (so no read may be skipped).
    pub(super) fn conn_event(&mut self, key: usize, readable: bool, writable: bool, hangup: bool) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        // Records a full socket did not take go first (TLS only).
        if writable && conn.stream.is_tls() && conn.stream.flush_tls().is_err() {
            self.remove_conn(key);
            return self.settle();
        }
        match conn.state {
            State::Http(_) => {
                if writable {
                    self.http_write(key);
                }
                if readable {
                    self.http_read(key);
                }
            }
            State::Ws(_) => {
                if writable {
                    self.ws_flush(key);
                }
                if readable {
                    self.ws_read(key, !hangup);
                }
            }
            State::Sse(_) => {
                if writable {
                    self.sse_write(key);
                }
                if readable {
                    // Nothing is read from a stream; only its end matters.
                    self.discard_input(key);
                }
            }
        }
        self.settle();
    }

    pub(super) fn run_runnable(&mut self) {
        // Connections whose reading was paused (read budget spent, a join
        // answered, or just upgraded with bytes possibly pending).
        for _ in 0..4 {
            if self.runnable.is_empty() {
                return;
            }
            let batch = std::mem::take(&mut self.runnable);
            for (key, generation) in batch {
                if self.live(key, generation) {
                    self.ws_read(key, false);
                    self.settle();
                }
            }
        }
    }

    pub(super) fn http_read(&mut self, key: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let State::Http(h) = &mut conn.state else {
                return;
            };
            if matches!(h.then, Then::Upgrade(_)) {
                return; // bytes after the request belong to the WebSocket: leave them queued
            }
            match conn.stream.read(&mut self.read_buf) {
                Ok(0) => {
                    if matches!(h.then, Then::Waiting) {
                        // A client may half-close after its request: the
                        // answer still goes out, then the connection ends.
                        h.peer_closed = true;
                        return;
                    }
                    debug!(core = self.id, "peer closed during HTTP exchange");
                    return self.remove_conn(key);
                }
                Ok(n) => {
                    if !matches!(h.then, Then::Reading) {
                        continue; // closing after a response (or lingering): discard
                    }
                    h.buf.extend_from_slice(&self.read_buf[..n]);
                    if !h.proxy_done && conn.stream.is_tls() {
                        // Read before the TLS handshake, by the stream.
                        h.proxy_source = conn.stream.proxy_source();
                        h.proxy_done = true;
                    }
                    if !h.proxy_done {
                        // A trusted proxy may put a PROXY header first.
                        // (No getpeername unless proxies are configured.)
                        let trusted = &self.shared.trusted_proxies;
                        if trusted.is_empty()
                            || !conn
                                .stream
                                .peer_addr()
                                .is_ok_and(|a| trusted.iter().any(|t| t.contains(&a.ip())))
                        {
                            h.proxy_done = true;
                        } else {
                            match proxy::parse_header(&h.buf) {
                                proxy::Header::Incomplete => continue,
                                proxy::Header::None => h.proxy_done = true,
                                proxy::Header::Proxy { len, source } => {
                                    h.buf.drain(..len);
                                    h.proxy_source = source;
                                    h.proxy_done = true;
                                    if h.buf.is_empty() {
                                        continue;
                                    }
                                }
                                proxy::Header::Bad(m) => {
                                    let r = error_response(400, "bad_request", m, &[]);
                                    return self.respond(key, r, Then::Close);
                                }
                            }
                        }
                    }
                    if let Some((_, need)) = &h.pending {
                        if h.buf.len() >= *need {
                            let (req, _) = h.pending.take().expect("checked");
                            let body = std::mem::take(&mut h.buf);
                            return self.handle_request(key, *req, body);
                        }
                        continue;
                    }
                    match http::parse_head(&h.buf) {
                        Ok(Some((req, len))) if len <= http::MAX_HEAD => {
                            let leftover = h.buf[len..].to_vec();
                            h.buf = Vec::new();
                            self.head_parsed(key, req, leftover);
                            // The rest of a body may already be in the
                            // socket (edge-triggered: no new event for it):
                            // read on until it would block.
                            continue;
                        }
                        Ok(None) if h.buf.len() < http::MAX_HEAD => {}
                        Ok(_) | Err(http::HeadError::TooLarge) => {
                            let r =
                                error_response(431, "bad_request", "request head too large", &[]);
                            return self.respond(key, r, Then::Close);
                        }
                        Err(http::HeadError::Malformed(m)) => {
                            let r = error_response(
                                400,
                                "bad_request",
                                &format!("malformed request: {m}"),
                                &[],
                            );
                            return self.respond(key, r, Then::Close);
                        }
                    }
                }
                Err(e) if would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if stream::is_plain_http(&e) => {
                    debug!(core = self.id, "plain HTTP on the TLS port");
                    self.metrics.http_error(400);
                    let r = error_response(
                        400,
                        "bad_request",
                        "this port speaks TLS: use https:// or wss://",
                        &[],
                    );
                    return self.respond(key, r, Then::Close);
                }
                Err(e) => {
                    if conn.stream.is_tls() {
                        debug!(core = self.id, error = %e, "TLS connection failed");
                    }
                    return self.remove_conn(key);
                }
            }
        }
    }

    /// A request head arrived: answer at once, or wait for its body.
    pub(super) fn head_parsed(&mut self, key: usize, req: http::Request, rest: Vec<u8>) {
        if req.chunked {
            return self.http_error(
                key,
                411,
                "bad_request",
                "chunked bodies are not supported; send Content-Length",
            );
        }
        let need = req.content_length.unwrap_or(0);
        if need > self.shared.config.api.max_body {
            return self.http_error(
                key,
                413,
                "too_large",
                "request body too large (api.max_body)",
            );
        }
        if rest.len() >= need || req.route() != Route::Api {
            return self.handle_request(key, req, rest);
        }
        if let Some(Conn {
            state: State::Http(h),
            ..
        }) = self.conns.get_mut(key)
        {
            h.buf = rest;
            h.pending = Some((Box::new(req), need));
        }
    }

    pub(super) fn handle_request(&mut self, key: usize, req: http::Request, leftover: Vec<u8>) {
        let route = req.route();
        let get = req.method == "GET";
        if matches!(route, Route::Ws | Route::Echo | Route::Sse | Route::Api) {
            let origin = req.origin.as_deref();
            if !self.shared.origins.allows(origin, req.host.as_deref()) {
                self.metrics.http_error(403);
                let resp = error_response(
                    403,
                    "forbidden",
                    "origin not allowed (auth.allowed_origins)",
                    &[],
                );
                return self.respond(key, resp, Then::Close);
            }
            if let Some(origin) = origin.filter(|o| {
                matches!(route, Route::Sse | Route::Api) && super::cors::Origins::well_formed(o)
            }) {
                if req.method == "OPTIONS" {
                    return self.respond(key, super::cors::preflight(origin), Then::Close);
                }
                if let Some(Conn {
                    state: State::Http(h),
                    ..
                }) = self.conns.get_mut(key)
                {
                    h.cors = Some(origin.into());
                }
            }
        }
        if route == Route::Api {
            let need = req.content_length.unwrap_or(0).min(leftover.len());
            return self.api_request(key, &req, &leftover[..need]);
        }
        if route == Route::Metrics && get {
            let Some(generation) = self.conns.get(key).map(|c| c.generation) else {
                return;
            };
            let params = self.api_rate;
            if !matches!(
                self.api_limiter.take(&params, self.now_ms),
                Verdict::Allowed
            ) {
                return self.http_error(key, 429, "rate_limited", "too many scrapes");
            }
            self.wait(key);
            let conn = ConnRef {
                key: key as u32,
                generation,
            };
            return self.gather_stats(conn, true, req.accepts_openmetrics);
        }
        if route == Route::Sse && get {
            return self.sse_open(key, &req);
        }
        let resp = match route {
            Route::NotFound | Route::Api => {
                self.metrics.http_error(404);
                error_response(404, "not_found", "no such route", &[])
            }
            Route::Echo if !self.shared.config.echo => error_response(
                404,
                "not_found",
                "the echo route is disabled (config `echo`)",
                &[],
            ),
            Route::Health if get || req.method == "HEAD" => self.health_response(),
            _ if !get => {
                self.metrics.http_error(405);
                error_response(405, "method_not_allowed", "use GET", &[("allow", "GET")])
            }
            Route::Health | Route::Metrics | Route::Sse => unreachable!("handled above"),
            Route::Demo => web::demo(&self.shared.config),
            Route::ClientJs => web::client_js(),
            Route::Ws | Route::Echo => {
                let peer = self.client_ip(key, &req);
                match self.upgrade_request(key, &req, route == Route::Echo, leftover, peer) {
                    Ok(up) => {
                        let ws_key = req.ws_key.as_deref().unwrap_or_default();
                        if let Some(conn) = self.conns.get_mut(key) {
                            conn.counted = true;
                            conn.ip = up.ip;
                        }
                        // The `welcome` rides in the same write as the 101: one
                        // syscall, and tungstenite's write buffer stays
                        // unallocated on a connection that is then idle.
                        let mut resp = switching_protocols(ws_key);
                        if let Some(s) = up.session.as_ref().filter(|s| s.identity.is_some()) {
                            let ctx = self.session_ctx();
                            http::push_text_frame(&mut resp, s.welcome(None, &ctx).as_bytes());
                        }
                        self.metrics.upgrades += 1;
                        return self.respond(key, resp, Then::Upgrade(up));
                    }
                    Err(resp) => {
                        if let Some(status) = std::str::from_utf8(&resp[9..12])
                            .ok()
                            .and_then(|s| s.parse().ok())
                        {
                            self.metrics.http_error(status);
                        }
                        resp
                    }
                }
            }
        };
        self.respond(key, resp, Then::Close);
    }

    /// Validates an upgrade and reserves a connection slot; `Err` is the
    /// HTTP response refusing it.
    pub(super) fn upgrade_request(
        &mut self,
        key: usize,
        req: &http::Request,
        echo: bool,
        leftover: Vec<u8>,
        peer: Option<IpAddr>,
    ) -> Result<Box<Upgrade>, Vec<u8>> {
        check_upgrade(req)?;
        if self.draining_until.is_some() {
            return Err(error_response(
                503,
                "overloaded",
                "server is shutting down",
                &[("retry-after", "1")],
            ));
        }
        // Per address first: a refused or failing handshake still spends a
        // token (token guessing is throttled too).
        let ip = self.admit_ip(key, peer)?;
        let release = |me: &Self| {
            if let Some(ip) = ip {
                me.shared.per_ip.release(ip);
            }
        };
        let identity = if echo {
            None
        } else {
            match req.query_param("token").or_else(|| req.bearer.clone()) {
                Some(token) => match self.shared.auth.verify(&token) {
                    Ok(identity) => Some(identity),
                    Err(e) => {
                        debug!(core = self.id, error = %e, "upgrade refused: bad token");
                        release(self);
                        return Err(error_response(401, "unauthorized", &e.to_string(), &[]));
                    }
                },
                None => None,
            }
        };
        let max = self.shared.config.limits.max_connections;
        if self.shared.connections.fetch_add(1, Ordering::Relaxed) >= max {
            self.shared.connections.fetch_sub(1, Ordering::Relaxed);
            release(self);
            info!(
                core = self.id,
                max, "upgrade refused: connection limit reached"
            );
            return Err(error_response(
                503,
                "overloaded",
                "connection limit reached; try again later",
                &[("retry-after", "5")],
            ));
        }
        let session = (!echo).then(|| self.new_session(identity));
        Ok(Box::new(Upgrade {
            session,
            leftover,
            ip,
        }))
    }

    /// The client address of request `req` on connection `key`: its TCP
    /// peer, or what a trusted proxy said (PROXY header, then
    /// `X-Forwarded-For` / `Forwarded`).
    pub(super) fn client_ip(&self, key: usize, req: &http::Request) -> Option<IpAddr> {
        let conn = self.conns.get(key)?;
        let proxied = match &conn.state {
            State::Http(h) => h.proxy_source,
            _ => None,
        };
        let peer = proxied.or_else(|| conn.stream.peer_addr().ok().map(|a| a.ip()))?;
        Some(proxy::client_ip(
            peer,
            req.forwarded_for.as_deref(),
            req.forwarded.as_deref(),
            &self.shared.trusted_proxies,
        ))
    }

    /// Takes a new connection from `peer` through the per-address limits:
    /// `Ok(Some(ip))` when counted (release it when the connection goes),
    /// `Ok(None)` when not counted, or the 429 refusing it. A connection
    /// whose TLS handshake already took the token pays it once.
    pub(super) fn admit_ip(
        &mut self,
        key: usize,
        peer: Option<IpAddr>,
    ) -> Result<Option<IpAddr>, Vec<u8>> {
        let Some(ip) = peer else {
            return Ok(None);
        };
        let paid = matches!(self.conns.get(key), Some(Conn { state: State::Http(h), .. }) if h.paid == Some(ip));
        let now = self.shared.now_ms();
        let admitted = match paid {
            true => self.shared.per_ip.admit_paid(ip, now),
            false => self.shared.per_ip.admit(ip, now),
        };
        match admitted {
            Ok(counted) => Ok(counted.then_some(ip)),
            Err(why) => {
                let message = match why {
                    per_ip::Refusal::Connections => {
                        "too many connections from your address (limits.max_connections_per_ip)"
                    }
                    per_ip::Refusal::Handshakes => {
                        "too many new connections from your address (limits.handshakes_per_ip_per_sec)"
                    }
                };
                debug!(core = self.id, %ip, ?why, "upgrade refused by the per-address limits");
                Err(error_response(
                    429,
                    "rate_limited",
                    message,
                    &[("retry-after", "1")],
                ))
            }
        }
    }

    pub(super) fn new_session(&mut self, identity: Option<Identity>) -> Session {
        let id = SessionId(self.rng.u64(..));
        let identity = identity.or_else(|| {
            self.shared
                .config
                .anonymous_allowed()
                .then(|| self.shared.auth.anonymous(&id.to_string()))
        });
        Session::new(id, identity, &self.shared.session, self.now_ms)
    }

    pub(super) fn health_response(&self) -> Vec<u8> {
        let store = match self.shared.config.history.uses_store() && self.shared.node.is_none() {
            false => "none",
            true if self.shared.store_failed.load(Ordering::Relaxed) => "failed",
            true => "ok",
        };
        let redis = match self.shared.node {
            None => None,
            Some(_) if self.shared.redis_down.load(Ordering::Relaxed) => Some("down"),
            Some(_) => Some("ok"),
        };
        let ok = self.shared.all_cores_alive() && store != "failed" && redis != Some("down");
        let now = self.shared.now_ms();
        let mut per_core = String::from("[");
        for (i, c) in self.shared.cores.iter().enumerate() {
            if i > 0 {
                per_core.push(',');
            }
            let ago = now.saturating_sub(c.last_loop_ms.load(Ordering::Relaxed));
            per_core.push_str(
                &Event::object()
                    .num("core", i as u64)
                    .bool("alive", ago <= 1000)
                    .num("last_loop_ms_ago", ago)
                    .num("connections", c.connections.load(Ordering::Relaxed) as u64)
                    .finish(),
            );
        }
        per_core.push(']');
        let body = Event::new("health")
            .str("status", if ok { "ok" } else { "unavailable" })
            .num("cores", self.shared.cores.len() as u64)
            .raw("per_core", &per_core)
            .str("store", store)
            .maybe_str("redis", redis)
            .maybe_str("node", self.shared.node.as_deref())
            .num(
                "connections",
                self.shared.connections.load(Ordering::Relaxed) as u64,
            )
            .finish();
        json_response(if ok { 200 } else { 503 }, &[], &body)
    }

    pub(super) fn respond(&mut self, key: usize, bytes: Vec<u8>, then: Then) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let State::Http(h) = &mut conn.state else {
            return;
        };
        h.out = bytes;
        if let Some(origin) = h.cors.take()
            && !matches!(then, Then::Upgrade(_))
        {
            super::cors::add_to_response(&mut h.out, &origin);
        }
        h.written = 0;
        h.then = then;
        self.http_write(key);
    }

    pub(super) fn http_write(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let State::Http(h) = &mut conn.state else {
            return;
        };
        while h.written < h.out.len() {
            match conn.stream.write(&h.out[h.written..]) {
                Ok(0) => return self.remove_conn(key),
                Ok(n) => h.written += n,
                Err(e) if would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.remove_conn(key),
            }
        }
        if h.out.is_empty() {
            return; // nothing was being written
        }
        match conn.stream.flush_tls() {
            Ok(true) => {}
            Ok(false) => return, // the rest goes out on the writable event
            Err(_) => return self.remove_conn(key),
        }
        h.out = Vec::new();
        match std::mem::replace(&mut h.then, Then::Close) {
            Then::Upgrade(up) => self.upgrade(key, *up),
            Then::Close | Then::Reading | Then::Waiting => {
                if h.peer_closed {
                    return self.remove_conn(key);
                }
                conn.stream.shutdown_write();
                h.lingering = true;
            }
        }
    }

    pub(super) fn upgrade(&mut self, key: usize, up: Upgrade) {
        let session = up.session;
        let cfg = if session.is_none() {
            self.shared.echo_config
        } else {
            self.shared.ws_config
        };
        // The first read's context is a one-off, as for a connection that had
        // been quiet (see `idle`); without input there is none yet.
        let ctx = (!up.leftover.is_empty()).then(|| Live::new(cfg, up.leftover, true));
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let generation = conn.generation;
        let authenticated = session.as_ref().map(|s| s.identity.is_some());
        if let Some(s) = &session {
            debug!(core = self.id, session = %s.id,
                user = s.identity.as_ref().map(|i| &*i.user).unwrap_or("-"), "websocket opened");
        }
        conn.state = State::Ws(Box::new(WsConn {
            ctx,
            session,
            last_rx_ms: self.now_ms,
            urgent: false,
            deferred: false,
            ctl: false,
            blocked: false,
            closing: false,
            doomed: false,
            failed: false,
            idle_listed: false,
            has_read: false,
            expiry_armed: None,
            replay_allowance: 0,
            out: OutQueue::default(),
            counted: false,
            counted_anon: false,
        }));
        let hb = self.shared.config.heartbeat * 1000;
        self.timer(self.now_ms + hb, key, generation, TimerKind::Heartbeat);
        match authenticated {
            // The welcome went out with the 101.
            Some(true) => {
                self.arm_expiry(key, generation);
                self.count_user(key);
            }
            Some(false) => {
                let deadline = self.now_ms + self.shared.config.auth.timeout * 1000;
                self.timer(deadline, key, generation, TimerKind::Auth);
            }
            None => {}
        }
        self.runnable.push((key, generation));
    }
}
