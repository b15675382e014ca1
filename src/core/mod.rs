//! The core loop: the only code that touches mio and sockets.
//!
//! One [`Core`] runs per thread (pinned). It owns its SO_REUSEPORT listener,
//! its `mio::Poll`, a `Slab` of connections, the local room index, the rooms
//! whose home it is, a timer wheel and scratch buffers. Per loop iteration
//! it: handles socket readiness (accept until WouldBlock, read each ready
//! connection up to a budget), drains its bus inbox, fires due timers, then
//! flushes every connection that got output exactly once and sends each
//! other core one batch. It must not block (no disk, DNS or locks) and must
//! not share connections with other threads: everything crossing cores goes
//! over the bus.

mod api;
pub mod http;
pub mod listener;
pub mod outq;
mod social;
pub mod sockio;
mod sse;

use crate::auth::{Authenticator, Identity, unix_now};
use crate::bus::{Bus, BusMsg, ConnRef, Inbox, Outbox, ReplyTo, home_core};
use crate::config::{Config, Durability};
use crate::history::{Entry, Retention, RoomModes};
use crate::proto::ErrorCode;
use crate::proto::close;
use crate::proto::command::{CommandParser, Id};
use crate::proto::event::{self, Event};
use crate::proto::ratelimit::{RateParams, TokenBucket, Verdict};
use crate::proto::session::{Ctx, Output, Session, SessionConfig};
use crate::rooms::{HomeRooms, LocalRooms, Member, Pending};
use crate::store::{Append, LoadedRoom, QueueError, StoreHandle, StoreMsg};
use crate::timer::TimerWheel;
use bytes::Bytes;
use http::{Route, check_upgrade, error_response, json_response, switching_protocols};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use outq::OutQueue;
use slab::Slab;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Message, Utf8Bytes};

/// Token of the core's listener.
pub const LISTENER: Token = Token(usize::MAX - 1);
/// Token of the core's bus waker.
pub const WAKER: Token = Token(usize::MAX - 2);

/// Timer wheel tick, ms: the resolution of every timeout.
const TICK_MS: u64 = 100;
/// Timer wheel slots (one turn = 102.4 s).
const WHEEL_SLOTS: usize = 1024;
/// Frames read from one connection before others get a turn.
const READ_BUDGET: usize = 64;
/// Bus batches handled per iteration before sockets get a turn.
const BUS_BUDGET: usize = 256;
/// Time a closing connection gets to finish the close handshake, ms.
const CLOSE_TIMEOUT_MS: u64 = 5000;
/// Pause after accept fails for lack of file descriptors or memory, ms.
const ACCEPT_RETRY_MS: u64 = 100;
/// How often idle home rooms are swept, ms.
const SWEEP_MS: u64 = 60_000;
/// Home rooms without members are forgotten after this long idle, ms.
const ROOM_IDLE_MS: u64 = 600_000;
/// Longest a room delivery waits for its connection's flush while new
/// input keeps arriving, µs (a busy core packs more frames per write).
const DEFER_US: u64 = 1000;
/// Connections flushed between two looks for new input in a flush pass.
const FLUSH_POLL_EVERY: usize = 64;
/// Looks for new input per flush pass (bounds the pass).
const MAX_FLUSH_POLLS: usize = 64;
/// Longest poll sleep, ms (keeps the liveness stamp for `/health` fresh).
const MAX_SLEEP_MS: u64 = 250;
/// Range of the jittered `after_ms` of `reconnect` on shutdown.
const RECONNECT_JITTER_MS: (u64, u64) = (100, 5000);

/// Liveness and size of one core, written by that core, read by `/health`.
#[derive(Debug, Default)]
pub struct CoreStats {
    /// Monotonic ms of the core's last loop iteration.
    pub last_loop_ms: AtomicU64,
    /// Connections held (all states).
    pub connections: AtomicUsize,
}

/// State shared read-only by all cores (plus a few counters written on
/// connect/disconnect, never per message).
#[derive(Debug)]
pub struct Shared {
    /// The validated configuration.
    pub config: Config,
    /// Session settings derived from it.
    pub session: SessionConfig,
    /// Token verification.
    pub auth: Authenticator,
    /// tungstenite settings for `/ws`.
    pub ws_config: WebSocketConfig,
    /// tungstenite settings for `/echo`.
    pub echo_config: WebSocketConfig,
    /// Per-core liveness.
    pub cores: Vec<CoreStats>,
    /// WebSocket connections on the whole server (checked against
    /// `max_connections` at upgrade).
    pub connections: AtomicUsize,
    /// Set by the store thread when a write failed (`/health` reports it).
    pub store_failed: Arc<AtomicBool>,
    started: Instant,
}

impl Shared {
    /// Builds the shared state for `cores` cores.
    pub fn new(config: Config, cores: usize) -> Self {
        let l = &config.limits;
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(l.read_buffer)
            // Never write to the socket from inside `write`: the loop flushes
            // each connection once per iteration (one syscall, many frames).
            .write_buffer_size(l.max_backlog - 1)
            .max_write_buffer_size(l.max_backlog)
            .max_message_size(Some(l.max_message + 1024))
            .max_frame_size(Some(l.max_message + 1024));
        let echo_backlog = 2 * l.echo_max_message + 1024;
        let echo_config = WebSocketConfig::default()
            .read_buffer_size(l.read_buffer)
            .write_buffer_size(echo_backlog - 1)
            .max_write_buffer_size(echo_backlog)
            .max_message_size(Some(l.echo_max_message))
            .max_frame_size(Some(l.echo_max_message));
        Shared {
            session: SessionConfig::from_config(&config),
            auth: Authenticator::new(
                config.auth.secret.as_deref(),
                config.auth.require_exp,
                &config.auth.default_rooms,
            ),
            ws_config,
            echo_config,
            cores: (0..cores).map(|_| CoreStats::default()).collect(),
            connections: AtomicUsize::new(0),
            store_failed: Arc::new(AtomicBool::new(false)),
            started: Instant::now(),
            config,
        }
    }

    /// Monotonic milliseconds since the server started.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Monotonic microseconds since the server started (the same clock on
    /// every core).
    pub fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// Whether every core finished a loop iteration within the last second.
    pub fn all_cores_alive(&self) -> bool {
        let now = self.now_ms();
        self.cores
            .iter()
            .all(|c| now.saturating_sub(c.last_loop_ms.load(Ordering::Relaxed)) <= 1000)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerKind {
    /// The HTTP request head (and response) must be done by now.
    Handshake,
    /// Ping, or drop a connection silent for two intervals.
    Heartbeat,
    /// In-band auth must have happened by now.
    Auth,
    /// The token's `exp` may have passed.
    Expiry,
    /// The grace after `token_expired` ends.
    ExpiryGrace,
    /// A closing connection must be gone by now.
    CloseDeadline,
    /// Try accepting again after running out of descriptors.
    AcceptRetry,
    /// Forget idle home rooms.
    Sweep,
    /// Once a second: rates, typing expiry, late gatherings.
    Tick,
    /// A user's presence grace ended (key = slot in `grace_timers`).
    PresenceGrace,
}

#[derive(Debug, Clone, Copy)]
struct Timer {
    key: u32,
    generation: u32,
    kind: TimerKind,
}

/// A connection before the WebSocket upgrade (or a plain HTTP exchange).
#[derive(Debug, Default)]
struct HttpConn {
    /// Request head bytes read so far (then the body).
    buf: Vec<u8>,
    /// A parsed head waiting for its body of this many bytes.
    pending: Option<(Box<http::Request>, usize)>,
    /// Response being written.
    out: Vec<u8>,
    written: usize,
    then: Then,
    /// The response was sent and the write side shut: read and discard until
    /// the client closes (so the response is not lost to a reset).
    lingering: bool,
    /// The client already half-closed (while its request was waiting).
    peer_closed: bool,
}

#[derive(Debug, Default)]
enum Then {
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
struct Upgrade {
    /// Protocol state (`None` on `/echo`).
    session: Option<Session>,
    leftover: Vec<u8>,
}

/// A WebSocket connection.
struct WsConn {
    ctx: WebSocketContext,
    /// Protocol state (`None` on `/echo`).
    session: Option<Session>,
    /// Counted at its user's home core (as the session's identity), and
    /// whether that identity was anonymous (`anon:<session>`, the only one
    /// a connection may switch away from). Two flags instead of the user's
    /// name: they fit in the struct's padding.
    counted: bool,
    counted_anon: bool,
    last_rx_ms: u64,
    /// In the core's urgent flush list (replies: flushed this iteration).
    urgent: bool,
    /// In the core's deferred flush list (room deliveries).
    deferred: bool,
    /// A join is out at another core; read nothing until it is answered.
    blocked: bool,
    /// A close frame was sent or received: no more writes.
    closing: bool,
    /// Queued for closing this iteration: no more writes.
    doomed: bool,
    /// Reading failed (protocol error, oversized frame): tungstenite must
    /// not read again; incoming bytes are discarded until EOF.
    failed: bool,
    /// The token `exp` for which an expiry timer is pending.
    expiry_armed: Option<u64>,
    /// Input read from the socket but not yet consumed by tungstenite (only
    /// when reading stopped mid-burst: a pending join or the read budget).
    pending: Vec<u8>,
    /// Data frames waiting to be written (tungstenite's own buffer holds
    /// only the control frames it writes, and those go out after these; see
    /// [`sockio::Io`]).
    out: OutQueue,
}

enum State {
    Http(Box<HttpConn>),
    Ws(Box<WsConn>),
    Sse(Box<sse::SseConn>),
}

struct Conn {
    stream: TcpStream,
    generation: u32,
    /// Counted in `Shared::connections`.
    counted: bool,
    state: State,
}

/// What to do with a connection found to need closing mid-iteration.
#[derive(Debug, Clone, Copy)]
enum Closing {
    /// WebSocket close frame with this code and reason.
    Ws(u16, &'static str),
    /// Drop the TCP connection (I/O error).
    Drop(&'static str),
}

/// Everything a core thread needs to start.
pub struct CoreInit {
    /// Core index.
    pub id: usize,
    /// Its poll (the waker is registered on it with [`WAKER`]).
    pub poll: Poll,
    /// Its listener.
    pub listener: std::net::TcpListener,
    /// Its bus inbox.
    pub inbox: Inbox,
    /// All cores' senders.
    pub bus: Bus,
    /// Shared state.
    pub shared: Arc<Shared>,
    /// The durable store (absent in `memory` mode).
    pub store: Option<StoreHandle>,
    /// Rooms loaded from the store whose home is this core.
    pub loaded: Vec<LoadedRoom>,
}

/// One core loop and everything it owns.
pub struct Core {
    id: usize,
    poll: Poll,
    listener: Option<TcpListener>,
    accept_paused: bool,
    last_accept_warn_ms: u64,
    conns: Slab<Conn>,
    next_generation: u32,
    rooms: LocalRooms,
    home: HomeRooms,
    wheel: TimerWheel<Timer>,
    inbox: Inbox,
    bus: Bus,
    outbox: Outbox,
    /// The durable store (absent when every room is memory-only).
    store: Option<StoreHandle>,
    /// Users whose home is this core.
    users: crate::presence::UserHomes,
    /// Pending presence grace timers: (user, grace generation).
    grace_timers: Slab<(Arc<str>, u32)>,
    /// Counts being gathered here.
    aggs: std::collections::HashMap<u64, social::Agg>,
    next_token: u64,
    /// Home rooms with someone typing.
    typing_rooms: std::collections::HashSet<Arc<str>>,
    key_scratch: Vec<usize>,
    /// Counters (merged at scrape time).
    metrics: crate::metrics::CoreMetrics,
    /// (messages in, out) at the last tick, and the rates over it.
    rates: (u64, u64, u64, u64),
    /// SSE streams per room (kept apart so room deliveries to WebSocket
    /// members pay nothing for SSE).
    sse_rooms: LocalRooms,
    /// Server-monotonic µs at the start of this iteration.
    now_us: u64,
    iterations: u64,
    /// The HTTP API's bucket on this core.
    api_limiter: TokenBucket,
    api_rate: RateParams,
    parser: CommandParser,
    outputs: Vec<Output>,
    expired: Vec<Timer>,
    flush: FlushLists,
    /// Output bound per connection (`/ws`, `/echo`) before close 4009.
    backlogs: (usize, usize),
    /// Event buffer for [`Core::take_input_now`].
    mid_events: Events,
    /// When the oldest deferred (room delivery) output was queued.
    deferred_since: Option<Instant>,
    /// This iteration handled new input (socket reads, accepts, bus).
    had_input: bool,
    runnable: Vec<(usize, u32)>,
    to_close: Vec<(usize, u32, Closing)>,
    /// Bus messages for this core itself, handled in [`Core::settle`] (never
    /// recursively, so no path re-enters the message handlers).
    local: std::collections::VecDeque<BusMsg>,
    cores_scratch: Vec<usize>,
    read_buf: Box<[u8]>,
    scratch: sockio::ReadScratch,
    rng: fastrand::Rng,
    shared: Arc<Shared>,
    draining_until: Option<u64>,
    more_bus: bool,
    now_ms: u64,
    unix_s: u64,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

fn ws_would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if would_block(io))
}

impl Core {
    /// Sets up a core from its init bundle (on the core's own thread).
    pub fn new(init: CoreInit) -> io::Result<Core> {
        let mut listener = TcpListener::from_std(init.listener);
        init.poll
            .registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let now = init.shared.now_ms();
        let cores = init.bus.cores();
        let api_rate = RateParams {
            per_sec: init.shared.config.api.rate_per_sec,
            burst: init.shared.config.api.rate_burst,
            kick_after_ms: u64::MAX,
        };
        let mut core = Core {
            id: init.id,
            poll: init.poll,
            listener: Some(listener),
            accept_paused: false,
            last_accept_warn_ms: 0,
            conns: Slab::with_capacity(1024),
            next_generation: 0,
            rooms: LocalRooms::default(),
            home: HomeRooms::new(
                cores,
                ROOM_IDLE_MS,
                Retention {
                    size: init.shared.config.history.size,
                    ttl_ms: init.shared.config.history.ttl.saturating_mul(1000),
                },
                RoomModes::new(&init.shared.config.history),
            ),
            wheel: TimerWheel::new(WHEEL_SLOTS, TICK_MS, now),
            inbox: init.inbox,
            bus: init.bus,
            outbox: Outbox::new(cores),
            store: init.store,
            users: crate::presence::UserHomes::new(),
            grace_timers: Slab::new(),
            aggs: std::collections::HashMap::new(),
            next_token: 0,
            typing_rooms: std::collections::HashSet::new(),
            key_scratch: Vec::new(),
            metrics: crate::metrics::CoreMetrics::default(),
            rates: (0, 0, 0, 0),
            sse_rooms: LocalRooms::default(),
            now_us: 0,
            iterations: 0,
            api_limiter: TokenBucket::new(&api_rate, now),
            api_rate,
            parser: CommandParser::new(),
            outputs: Vec::new(),
            expired: Vec::new(),
            flush: FlushLists::default(),
            backlogs: (
                init.shared.config.limits.max_backlog,
                2 * init.shared.config.limits.echo_max_message + 1024,
            ),
            mid_events: Events::with_capacity(256),
            deferred_since: None,
            had_input: false,
            runnable: Vec::new(),
            to_close: Vec::new(),
            local: std::collections::VecDeque::new(),
            cores_scratch: Vec::new(),
            read_buf: vec![0; http::MAX_HEAD].into_boxed_slice(),
            scratch: sockio::ReadScratch::default(),
            rng: fastrand::Rng::new(),
            shared: init.shared,
            draining_until: None,
            more_bus: false,
            now_ms: now,
            unix_s: unix_now(),
        };
        let unix_ms = core.unix_ms();
        for room in init.loaded {
            core.home.restore(room, now, unix_ms);
        }
        core.wheel.insert(
            now + SWEEP_MS,
            Timer {
                key: 0,
                generation: 0,
                kind: TimerKind::Sweep,
            },
        );
        core.wheel.insert(
            now + 1000,
            Timer {
                key: 0,
                generation: 0,
                kind: TimerKind::Tick,
            },
        );
        Ok(core)
    }

    /// Runs the loop until a drain completes.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                warn!(core = self.id, error = %e, "poll failed; core exits");
                break;
            }
            self.now_us = self.shared.now_us();
            self.now_ms = self.now_us / 1000;
            self.unix_s = unix_now();
            self.had_input = !self.runnable.is_empty();
            self.handle_events(&events);
            self.drain_bus();
            self.run_timers();
            self.run_runnable();
            self.flush_pending();
            self.outbox.flush(&self.bus);
            debug_assert!(self.local.is_empty() && self.to_close.is_empty());
            // Sampled: one busy iteration in 16 pays for the second clock
            // read.
            if !events.is_empty() {
                self.iterations = self.iterations.wrapping_add(1);
            }
            if self.iterations % 16 == 1 && !events.is_empty() {
                let us = self.shared.now_us().saturating_sub(self.now_us);
                crate::metrics::CoreMetrics::record(&mut self.metrics.loop_us, us);
            }
            let stats = &self.shared.cores[self.id];
            stats.last_loop_ms.store(self.now_ms, Ordering::Relaxed);
            stats.connections.store(self.conns.len(), Ordering::Relaxed);
            if let Some(until) = self.draining_until
                && (self.conns.is_empty() || self.now_ms >= until)
            {
                break;
            }
        }
        let left = self.conns.len();
        if left > 0 {
            info!(
                core = self.id,
                connections = left,
                "drain deadline reached; dropping the rest"
            );
        }
        debug!(core = self.id, "core loop exits");
    }

    fn handle_events(&mut self, events: &Events) {
        for ev in events.iter() {
            match ev.token() {
                LISTENER => {
                    self.had_input = true;
                    self.accept();
                }
                WAKER => {}
                Token(key) => {
                    let hangup = ev.is_read_closed() || ev.is_error();
                    let readable = ev.is_readable() || hangup;
                    self.had_input |= readable;
                    self.conn_event(key, readable, ev.is_writable(), hangup);
                }
            }
        }
    }

    /// During a long flush pass: takes in whatever input is ready now
    /// (without sleeping), so its room deliveries join the writes of
    /// connections not flushed yet in this pass, and its replies go out.
    fn take_input_now(&mut self) {
        let mut events = std::mem::replace(&mut self.mid_events, Events::with_capacity(0));
        if self.poll.poll(&mut events, Some(Duration::ZERO)).is_ok() {
            self.handle_events(&events);
        }
        self.mid_events = events;
        self.drain_bus();
        self.run_runnable();
        self.flush_urgent();
    }

    fn poll_timeout(&self) -> Duration {
        if !self.runnable.is_empty()
            || self.more_bus
            || !self.flush.urgent.is_empty()
            || !self.flush.deferred.is_empty()
        {
            return Duration::ZERO;
        }
        let ms = self
            .wheel
            .next_timeout_ms(self.shared.now_ms())
            .unwrap_or(MAX_SLEEP_MS)
            .min(MAX_SLEEP_MS);
        Duration::from_millis(ms)
    }

    fn timer(&mut self, at_ms: u64, key: usize, generation: u32, kind: TimerKind) {
        self.wheel.insert(
            at_ms,
            Timer {
                key: key as u32,
                generation,
                kind,
            },
        );
    }

    fn live(&self, key: usize, generation: u32) -> bool {
        self.conns
            .get(key)
            .is_some_and(|c| c.generation == generation)
    }

    // ---- accept -------------------------------------------------------

    fn accept(&mut self) {
        if self.accept_paused || self.draining_until.is_some() {
            return;
        }
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((mut stream, _)) => {
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
                    self.next_generation = self.next_generation.wrapping_add(1);
                    let generation = self.next_generation;
                    entry.insert(Conn {
                        stream,
                        generation,
                        counted: false,
                        state: State::Http(Box::default()),
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

    // ---- readiness ----------------------------------------------------

    /// `hangup`: the event also reported the peer's FIN or an error, which
    /// only a read past the data shows (so no read may be skipped).
    fn conn_event(&mut self, key: usize, readable: bool, writable: bool, hangup: bool) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
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

    fn run_runnable(&mut self) {
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

    // ---- HTTP ---------------------------------------------------------

    fn http_read(&mut self, key: usize) {
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
                            return self.head_parsed(key, req, leftover);
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
                Err(_) => return self.remove_conn(key),
            }
        }
    }

    /// A request head arrived: answer at once, or wait for its body.
    fn head_parsed(&mut self, key: usize, req: http::Request, rest: Vec<u8>) {
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

    fn handle_request(&mut self, key: usize, req: http::Request, leftover: Vec<u8>) {
        let route = req.route();
        let get = req.method == "GET";
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
            return self.gather_stats(conn, true);
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
            Route::Ws | Route::Echo => {
                match self.upgrade_request(&req, route == Route::Echo, leftover) {
                    Ok(up) => {
                        let ws_key = req.ws_key.as_deref().unwrap_or_default();
                        if let Some(conn) = self.conns.get_mut(key) {
                            conn.counted = true;
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
    fn upgrade_request(
        &mut self,
        req: &http::Request,
        echo: bool,
        leftover: Vec<u8>,
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
        let identity = if echo {
            None
        } else {
            match req.query_param("token").or_else(|| req.bearer.clone()) {
                Some(token) => match self.shared.auth.verify(&token) {
                    Ok(identity) => Some(identity),
                    Err(e) => {
                        debug!(core = self.id, error = %e, "upgrade refused: bad token");
                        return Err(error_response(401, "unauthorized", &e.to_string(), &[]));
                    }
                },
                None => None,
            }
        };
        let max = self.shared.config.limits.max_connections;
        if self.shared.connections.fetch_add(1, Ordering::Relaxed) >= max {
            self.shared.connections.fetch_sub(1, Ordering::Relaxed);
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
        Ok(Box::new(Upgrade { session, leftover }))
    }

    fn new_session(&mut self, identity: Option<Identity>) -> Session {
        let sid = format!("s_{:016x}", self.rng.u64(..));
        let identity = identity.or_else(|| {
            self.shared
                .config
                .anonymous_allowed()
                .then(|| self.shared.auth.anonymous(&sid))
        });
        Session::new(sid.into(), identity, &self.shared.session, self.now_ms)
    }

    fn health_response(&self) -> Vec<u8> {
        let store = match &self.store {
            None => "none",
            Some(_) if self.shared.store_failed.load(Ordering::Relaxed) => "failed",
            Some(_) => "ok",
        };
        let ok = self.shared.all_cores_alive() && store != "failed";
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
            .num(
                "connections",
                self.shared.connections.load(Ordering::Relaxed) as u64,
            )
            .finish();
        json_response(if ok { 200 } else { 503 }, &[], &body)
    }

    fn respond(&mut self, key: usize, bytes: Vec<u8>, then: Then) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let State::Http(h) = &mut conn.state else {
            return;
        };
        h.out = bytes;
        h.written = 0;
        h.then = then;
        self.http_write(key);
    }

    fn http_write(&mut self, key: usize) {
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
        h.out = Vec::new();
        match std::mem::replace(&mut h.then, Then::Close) {
            Then::Upgrade(up) => self.upgrade(key, *up),
            Then::Close | Then::Reading | Then::Waiting => {
                if h.peer_closed {
                    return self.remove_conn(key);
                }
                let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                h.lingering = true;
            }
        }
    }

    fn upgrade(&mut self, key: usize, up: Upgrade) {
        let session = up.session;
        let cfg = if session.is_none() {
            self.shared.echo_config
        } else {
            self.shared.ws_config
        };
        let ctx = if up.leftover.is_empty() {
            WebSocketContext::new(Role::Server, Some(cfg))
        } else {
            WebSocketContext::from_partially_read(up.leftover, Role::Server, Some(cfg))
        };
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
            blocked: false,
            closing: false,
            doomed: false,
            failed: false,
            expiry_armed: None,
            pending: Vec::new(),
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

    // ---- WebSocket ----------------------------------------------------

    /// Reads and handles frames. `may_skip_eagain`: this follows a readiness
    /// event without hangup, so a short read proves the socket drained.
    fn ws_read(&mut self, key: usize, may_skip_eagain: bool) {
        self.scratch.begin(may_skip_eagain);
        self.ws_read_frames(key);
        let pending = match self.conns.get_mut(key) {
            Some(Conn {
                state: State::Ws(ws),
                ..
            }) => Some(&mut ws.pending),
            _ => None,
        };
        self.scratch.stash(pending);
    }

    fn ws_read_frames(&mut self, key: usize) {
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
            let mut io = sockio::Io {
                tcp: &mut conn.stream,
                scratch: &mut self.scratch,
                pending: &mut ws.pending,
                out: &mut ws.out,
            };
            match ws.ctx.read(&mut io) {
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
                        Message::Ping(_) => self.mark_dirty(key),
                        Message::Pong(_) | Message::Frame(_) => {}
                    }
                }
                Err(e) if ws_would_block(&e) => {
                    self.mark_dirty(key); // a queued pong or close reply may be waiting
                    return;
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return self.remove_conn(key);
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
    fn discard_input(&mut self, key: usize) {
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

    fn ws_flush(&mut self, key: usize) {
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
        let mut io = sockio::Io {
            tcp: &mut conn.stream,
            scratch: &mut self.scratch,
            pending: &mut ws.pending,
            out: &mut ws.out,
        };
        match ws.ctx.flush(&mut io) {
            Ok(()) => {
                if ws.failed {
                    // The close frame is out: end our side so the peer sees EOF.
                    let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                }
            }
            Err(e) if ws_would_block(&e) => {}
            Err(tungstenite::Error::ConnectionClosed) => self.remove_conn(key),
            Err(tungstenite::Error::WriteBufferFull(_)) => {} // a pong that will be retried
            Err(e) => {
                debug!(core = self.id, error = %e, "flush failed");
                self.remove_conn(key);
            }
        }
    }

    /// Flushes connections with output, each once: replies (acks, errors,
    /// pongs, closes) every iteration; room deliveries when an iteration
    /// brought no new input or [`DEFER_US`] has passed. During a long pass
    /// over room deliveries, input that arrives is taken in every
    /// [`FLUSH_POLL_EVERY`] connections, so the messages it publishes ride
    /// along in the writes still to come (a busy core packs more frames into
    /// each write, as a work-stealing runtime does by running a woken task
    /// late). Removals caused by flush errors may queue more output, hence a
    /// few rounds.
    fn flush_pending(&mut self) {
        self.flush_urgent();
        let mut mid_polls = 0;
        for _ in 0..4 {
            let due = !self.flush.deferred.is_empty() && {
                let since = *self.deferred_since.get_or_insert_with(Instant::now);
                !self.had_input || since.elapsed() >= Duration::from_micros(DEFER_US)
            };
            if !due {
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

    /// Flushes every connection with a pending reply.
    fn flush_urgent(&mut self) {
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

    fn mark_dirty(&mut self, key: usize) {
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
    fn reply(&mut self, key: usize, text: &str) {
        self.push_private(key, outq::TEXT, text.as_bytes(), None);
    }

    /// Queues a framed reply (from another core, or built once).
    fn queue(&mut self, key: usize, frame: Bytes) {
        self.queue_as(key, frame, true);
    }

    /// Queues a shared frame; `urgent`: flushed this iteration (a reply)
    /// rather than with the room deliveries.
    fn queue_as(&mut self, key: usize, frame: Bytes, urgent: bool) {
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

    fn echo(&mut self, key: usize, opcode: u8, payload: Bytes) {
        self.push_private(key, opcode, &payload.clone(), Some(payload));
    }

    /// Queues a frame for one connection (see [`OutQueue::push_frame`]),
    /// marks it for flushing, and dooms it (4009) past its backlog bound.
    fn push_private(&mut self, key: usize, opcode: u8, payload: &[u8], shared: Option<Bytes>) {
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
    fn write_control(&mut self, key: usize, msg: Message) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let State::Ws(ws) = &mut conn.state else {
            return;
        };
        if ws.closing || ws.doomed || !ws.ctx.can_write() {
            return;
        }
        let mut io = sockio::Io {
            tcp: &mut conn.stream,
            scratch: &mut self.scratch,
            pending: &mut ws.pending,
            out: &mut ws.out,
        };
        match ws.ctx.write(&mut io, msg) {
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

    fn session_ctx(&self) -> Ctx<'_> {
        Ctx {
            cfg: &self.shared.session,
            auth: &self.shared.auth,
            now_ms: self.now_ms,
            unix_s: self.unix_s,
            core: self.id,
        }
    }

    fn with_session<R>(
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
        };
        Some(f(session, &ctx))
    }

    fn on_text(&mut self, key: usize, generation: u32, text: Utf8Bytes) {
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
        };
        session.handle_text(text.as_bytes(), &mut self.parser, &ctx, &mut self.outputs);
        self.metrics.messages_in += 1;
        self.apply_outputs(key, generation);
    }

    fn on_binary(&mut self, key: usize, generation: u32) {
        let mut outputs = std::mem::take(&mut self.outputs);
        self.with_session(key, |s, ctx| s.handle_binary(ctx, &mut outputs));
        self.outputs = outputs;
        self.apply_outputs(key, generation);
    }

    /// Carries out what a session asked for.
    fn apply_outputs(&mut self, key: usize, generation: u32) {
        let mut outputs = std::mem::take(&mut self.outputs);
        let conn_ref = ConnRef {
            key: key as u32,
            generation,
        };
        let cores = self.bus.cores();
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
                        let home = home_core(&room, cores);
                        self.route(home, BusMsg::Typing { room, user, typing });
                    }
                }
                Output::Presence { status } => {
                    if let Some((user, _)) = self.identity_of(key) {
                        let home = home_core(&user, cores);
                        self.route(home, BusMsg::SetStatus { user, status });
                    }
                }
                Output::Direct { to, id, event } => self.send_direct(conn_ref, to, id, event),
                Output::Members { room, id } => {
                    let home = home_core(&room, cores);
                    let answer = crate::bus::Answer::Ws(ReplyTo {
                        core: self.id,
                        conn: conn_ref,
                        id: None,
                        http: false,
                    });
                    self.route(home, BusMsg::Members { room, id, answer });
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
                    let home = home_core(&room, cores);
                    if let Some(Conn {
                        state: State::Ws(ws),
                        ..
                    }) = self.conns.get_mut(key)
                    {
                        ws.blocked = true;
                    }
                    let msg = BusMsg::Join {
                        room,
                        core: self.id,
                        conn: conn_ref,
                        user,
                        name,
                        id,
                        since,
                        rejoin,
                    };
                    self.route(home, msg);
                }
                Output::Leave { room, slot } => {
                    self.rooms.remove(&room, slot);
                    if let Some((user, _)) = self.identity_of(key) {
                        let msg = BusMsg::UserRoom {
                            user: user.clone(),
                            room: room.clone(),
                            joined: false,
                        };
                        self.route(home_core(&user, cores), msg);
                        let home = home_core(&room, cores);
                        let core = self.id;
                        self.route(home, BusMsg::Leave { room, core, user });
                    }
                }
                Output::History {
                    room,
                    id,
                    before,
                    limit,
                } => {
                    let home = home_core(&room, cores);
                    let reply = ReplyTo {
                        core: self.id,
                        conn: conn_ref,
                        id,
                        http: false,
                    };
                    let msg = BusMsg::History {
                        room,
                        reply,
                        before,
                        limit,
                    };
                    self.route(home, msg);
                }
                Output::Publish { room, id, tail } => {
                    let home = home_core(&room, cores);
                    let reply = Some(ReplyTo {
                        core: self.id,
                        conn: conn_ref,
                        id,
                        http: false,
                    });
                    self.route(home, BusMsg::Publish { room, reply, tail });
                }
            }
        }
        self.outputs = outputs;
    }

    fn identity_of(&self, key: usize) -> Option<(Arc<str>, Option<Arc<str>>)> {
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
    fn arm_expiry(&mut self, key: usize, generation: u32) {
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
        if ws.expiry_armed.is_some_and(|armed| armed <= exp) {
            return; // the pending timer fires first and re-arms for the new exp
        }
        ws.expiry_armed = Some(exp);
        let delay_ms = exp.saturating_sub(self.unix_s).saturating_mul(1000);
        let at = self.now_ms.saturating_add(delay_ms);
        self.timer(at, key, generation, TimerKind::Expiry);
    }

    // ---- bus and home-core logic --------------------------------------

    fn route(&mut self, core: usize, msg: BusMsg) {
        if core == self.id {
            self.local.push_back(msg);
        } else {
            self.outbox.push(core, msg);
        }
    }

    /// Handles this core's own bus messages and pending closes until none
    /// is left. Handlers only queue (messages, closes), so nothing recurses.
    fn settle(&mut self) {
        loop {
            while let Some(msg) = self.local.pop_front() {
                self.handle_bus(msg);
            }
            if self.to_close.is_empty() {
                return;
            }
            self.process_closes();
        }
    }

    fn drain_bus(&mut self) {
        self.more_bus = false;
        for _ in 0..BUS_BUDGET {
            let Ok(batch) = self.inbox.try_recv() else {
                return;
            };
            self.had_input = true;
            for msg in batch {
                self.handle_bus(msg);
            }
            self.settle();
        }
        self.more_bus = !self.inbox.is_empty();
    }

    fn new_epoch(rng: &mut fastrand::Rng) -> Arc<str> {
        format!("{:08x}", rng.u32(..)).into()
    }

    fn interested_cores(&mut self, room: &str) -> Vec<usize> {
        let mut cores = std::mem::take(&mut self.cores_scratch);
        cores.clear();
        if let Some(r) = self.home.get(room) {
            cores.extend(r.interested());
        }
        cores
    }

    fn deliver_to_room(&mut self, room: &Arc<str>, frame: Bytes, at_us: u64) {
        let cores = self.interested_cores(room);
        for &c in &cores {
            let msg = BusMsg::Deliver {
                room: room.clone(),
                frame: frame.clone(),
                at_us,
            };
            self.route(c, msg);
        }
        self.cores_scratch = cores;
    }

    fn handle_bus(&mut self, msg: BusMsg) {
        match msg {
            BusMsg::Deliver { room, frame, at_us } => {
                if at_us > 0 {
                    let us = self.now_us.saturating_sub(at_us);
                    crate::metrics::CoreMetrics::record(&mut self.metrics.delivery_us, us);
                }
                self.deliver_local(&room, &frame)
            }
            BusMsg::Publish { room, reply, tail } => self.publish(room, reply, tail),
            BusMsg::Stored { room, upto } => self.stored(&room, upto),
            BusMsg::StoreFailed { room } => self.store_failed(room),
            BusMsg::Reply { conn, frame } => {
                if self.live(conn.key as usize, conn.generation) {
                    self.queue(conn.key as usize, frame);
                }
            }
            BusMsg::Join {
                room,
                core,
                conn,
                user,
                name,
                id,
                since,
                rejoin,
            } => {
                let rng = &mut self.rng;
                let member = Member {
                    core,
                    user: &user,
                    name: name.as_ref(),
                };
                let o = self
                    .home
                    .join(&room, member, rejoin, self.now_ms, || Self::new_epoch(rng));
                let mut ack = Event::new("ack")
                    .id(id.as_ref())
                    .str("room", &room)
                    .str("epoch", &o.epoch)
                    .num("seq", o.seq)
                    .num("members", o.members as u64);
                // Recovery: the missed messages go out before the ack, from
                // the room's window, when it still holds all of them.
                let mut replay = Vec::new();
                if let Some(since) = since {
                    let r = self.home.get(&room).expect("joined room exists");
                    // An empty epoch means "the current one" (SSE cursors
                    // written without epochs).
                    let recovered = (since.epoch.is_empty() || *since.epoch == *o.epoch)
                        && match r.history.since(since.seq, r.visible_seq()) {
                            Some(missed) => {
                                replay.extend(missed.map(|e| e.frame.clone()));
                                true
                            }
                            None => false,
                        };
                    ack = ack.bool("recovered", recovered);
                }
                let frame = outq::text_frame(ack.finish().as_bytes());
                let joined = o.first.then(|| {
                    outq::text_frame(
                        event::membership("joined", &room, &user, name.as_deref()).as_bytes(),
                    )
                });
                let reply = BusMsg::JoinAck {
                    room: room.clone(),
                    conn,
                    user,
                    replay,
                    frame,
                    rejoin,
                };
                self.route(core, reply);
                if let Some(joined) = joined {
                    self.deliver_to_room(&room, joined, 0);
                }
            }
            BusMsg::JoinAck {
                room,
                conn,
                user,
                replay,
                frame,
                rejoin,
            } => self.join_acked(room, conn, user, replay, frame, rejoin),
            BusMsg::History {
                room,
                reply,
                before,
                limit,
            } => {
                let mut out = String::with_capacity(256);
                out.push_str("{\"type\":\"history\"");
                if let Some(id) = &reply.id {
                    out.push_str(",\"id\":");
                    out.push_str(id.as_json());
                }
                out.push_str(",\"room\":");
                event::push_json_str(&mut out, &room);
                out.push_str(",\"messages\":[");
                let (retention, now) = (self.home.retention, self.unix_ms());
                if let Some(r) = self.home.get_mut(&room) {
                    r.history.trim(&retention, now);
                    for (i, e) in r.history.page(before, limit as usize).enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        // Entries hold the JSON the server itself encoded.
                        out.push_str(std::str::from_utf8(e.json()).unwrap_or("null"));
                    }
                }
                out.push_str("]}");
                let msg = BusMsg::Reply {
                    conn: reply.conn,
                    frame: outq::text_frame(out.as_bytes()),
                };
                self.route(reply.core, msg);
            }
            BusMsg::Leave { room, core, user } => {
                if let Some(name) = self.home.leave(&room, core, &user, self.now_ms) {
                    let was_typing = self
                        .home
                        .get_mut(&room)
                        .is_some_and(|r| r.typing.remove(&user).is_some());
                    if was_typing {
                        self.send_typing(room.clone(), user.clone(), false);
                    }
                    let left = event::membership("left", &room, &user, name.as_deref());
                    self.deliver_to_room(&room, outq::text_frame(left.as_bytes()), 0);
                }
            }
            BusMsg::UserConnected {
                user,
                name,
                core,
                conn,
            } => self.on_user_connected(user, name, core, conn),
            BusMsg::UserGone {
                user,
                core,
                conn,
                rooms,
            } => self.on_user_gone(user, core, conn, rooms),
            BusMsg::UserRoom { user, room, joined } => self.on_user_room(user, room, joined),
            BusMsg::SetStatus { user, status } => self.on_set_status(user, status),
            BusMsg::Presence {
                user,
                status,
                rooms,
                frame,
            } => self.on_presence(&user, status, &rooms, &frame),
            BusMsg::RoomStatus { room, user, status } => self.on_room_status(&room, &user, status),
            BusMsg::Typing { room, user, typing } => self.on_typing(room, user, typing),
            BusMsg::DeliverExcept {
                room,
                except,
                frame,
            } => self.deliver_except(&room, &except, &frame),
            BusMsg::Members { room, id, answer } => self.on_members(room, id, answer),
            BusMsg::ToUser { user, frame, agg } => self.on_to_user(user, frame, agg),
            BusMsg::UserDeliver { conns, frame, agg } => self.on_user_deliver(conns, frame, agg),
            BusMsg::Broadcast { frame, agg } => self.on_broadcast(frame, agg),
            BusMsg::AggExpect { token, parts } => self.on_agg_expect(token, parts),
            BusMsg::AggDone { token, delivered } => self.on_agg_done(token, delivered),
            BusMsg::StatsRequest { agg } => {
                let snapshot = Box::new(self.snapshot());
                let msg = BusMsg::StatsReply {
                    token: agg.token,
                    snapshot,
                };
                self.route(agg.core, msg);
            }
            BusMsg::StatsReply { token, snapshot } => self.on_stats_reply(token, *snapshot),
            BusMsg::HttpReply { conn, status, body } => self.http_answer(conn, status, body),
            BusMsg::Shutdown => self.start_drain(),
        }
    }

    /// Sequences a message at its home core. Without a sync store it is
    /// recorded, delivered and acknowledged at once (and queued for the
    /// store in async mode); in sync mode it waits in the room's pending
    /// queue until the store reports it durable ([`Core::stored`]).
    fn publish(&mut self, room: Arc<str>, reply: Option<ReplyTo>, tail: String) {
        let ts = self.unix_ms();
        let at_us = self.now_us.max(1);
        let retention = self.home.retention;
        let rng = &mut self.rng;
        let r = self
            .home
            .sequence(&room, self.now_ms, || Self::new_epoch(rng));
        let (seq, epoch) = (r.seq, r.epoch.clone());
        self.metrics.published += 1;
        let json = event::message(&room, seq, &epoch, ts, &tail);
        let frame = outq::text_frame(json.as_bytes());
        let header_len = (frame.len() - json.len()) as u8;
        let entry = Entry {
            seq,
            ts,
            header_len,
            frame: frame.clone(),
        };
        let (mode, store) = match (r.mode, &self.store) {
            (Durability::Memory, _) | (_, None) => (Durability::Memory, None),
            (mode, Some(store)) => (mode, Some(store)),
        };
        let sync = mode == Durability::Sync;
        let sent = store.map(|store| {
            store.try_send(StoreMsg::Append(Append {
                home: self.id,
                room: room.clone(),
                epoch,
                seq,
                ts,
                frame: frame.clone(),
                header_len,
                sync,
            }))
        });
        if sent == Some(Err(QueueError::Full)) {
            // The disk is not keeping up: refuse rather than queue without
            // bound. Nothing was delivered; the seq is given back.
            r.seq -= 1;
            self.metrics.published -= 1;
            if let Some(reply) = reply {
                self.refuse_publish(
                    reply,
                    ErrorCode::Overloaded,
                    "history store is behind; retry",
                );
            }
            return;
        }
        let sent = sent.is_none_or(|r| r.is_ok());
        if sync {
            r.pending.push_back(Pending {
                entry,
                reply,
                at_us,
            });
            if !sent {
                self.store_failed(room);
            }
        } else {
            if mode == Durability::Async && !sent {
                warn!(room = %room, "history store is gone: message kept in memory only");
            }
            r.history.push(entry, &retention, ts);
            self.deliver_to_room(&room, frame, at_us);
            self.send_ack(reply, &room, seq, ts);
        }
    }

    fn send_ack(&mut self, reply: Option<ReplyTo>, room: &str, seq: u64, ts: u64) {
        let Some(reply) = reply else { return };
        if reply.http {
            let epoch = self.home.get(room).map(|r| r.epoch.clone());
            let body = Event::object()
                .str("room", room)
                .num("seq", seq)
                .str("epoch", epoch.as_deref().unwrap_or(""))
                .num("ts", ts)
                .finish();
            let msg = BusMsg::HttpReply {
                conn: reply.conn,
                status: 200,
                body,
            };
            return self.route(reply.core, msg);
        }
        let ack = Event::new("ack")
            .id(reply.id.as_ref())
            .str("room", room)
            .num("seq", seq)
            .num("ts", ts)
            .finish();
        let msg = BusMsg::Reply {
            conn: reply.conn,
            frame: outq::text_frame(ack.as_bytes()),
        };
        self.route(reply.core, msg);
    }

    /// The store made `room`'s messages up to `upto` durable: they enter
    /// the history, go out to members and are acknowledged, in seq order.
    fn stored(&mut self, room: &Arc<str>, upto: u64) {
        let (retention, now) = (self.home.retention, self.unix_ms());
        loop {
            let Some(r) = self.home.get_mut(room) else {
                return;
            };
            if r.pending.front().is_none_or(|p| p.entry.seq > upto) {
                return;
            }
            let p = r.pending.pop_front().expect("checked");
            let (seq, ts, frame) = (p.entry.seq, p.entry.ts, p.entry.frame.clone());
            r.history.push(p.entry, &retention, now);
            self.deliver_to_room(room, frame, p.at_us);
            self.send_ack(p.reply, room, seq, ts);
        }
    }

    /// Writing `room`'s messages failed: none of its pending messages was
    /// delivered or acknowledged, so they fail with `internal` and their
    /// seqs are given back; the store accepts the room again after the
    /// reset.
    fn store_failed(&mut self, room: Arc<str>) {
        let Some(r) = self.home.get_mut(&room) else {
            return;
        };
        let failed: Vec<Pending> = r.pending.drain(..).collect();
        r.seq -= failed.len() as u64;
        // A failed batch may still have reached the disk (a write that
        // succeeded before its fsync failed) and come back at the next
        // start under the old epoch: the seqs handed out from now on must
        // not be mistaken for those, so the room moves to a new epoch.
        r.epoch = Self::new_epoch(&mut self.rng);
        if let Some(store) = &self.store {
            store.send(StoreMsg::Reset { room: room.clone() });
        }
        warn!(room = %room, messages = failed.len(), "publish failed: history store write error");
        for p in failed {
            let Some(reply) = p.reply else { continue };
            self.refuse_publish(
                reply,
                ErrorCode::Internal,
                "message could not be stored; not delivered",
            );
        }
    }

    /// Answers a publish that was not delivered: `error` event, or HTTP
    /// 500/503 for the API.
    fn refuse_publish(&mut self, reply: ReplyTo, code: ErrorCode, message: &str) {
        if reply.http {
            let status = if code == ErrorCode::Overloaded {
                503
            } else {
                500
            };
            let msg = BusMsg::HttpReply {
                conn: reply.conn,
                status,
                body: http::error_body(code.as_str(), message),
            };
            return self.route(reply.core, msg);
        }
        let err = event::error(reply.id.as_ref(), code, message);
        let msg = BusMsg::Reply {
            conn: reply.conn,
            frame: outq::text_frame(err.as_bytes()),
        };
        self.route(reply.core, msg);
    }

    fn join_acked(
        &mut self,
        room: Arc<str>,
        conn: ConnRef,
        user: Arc<str>,
        replay: Vec<Bytes>,
        frame: Bytes,
        rejoin: bool,
    ) {
        let key = conn.key as usize;
        if matches!(
            self.conns.get(key),
            Some(Conn { generation, state: State::Sse(_), .. }) if *generation == conn.generation
        ) {
            self.sse_join_acked(key, &room, replay, &frame);
            return;
        }
        let member = match self.conns.get_mut(key) {
            Some(Conn {
                generation,
                state: State::Ws(ws),
                ..
            }) if *generation == conn.generation && !ws.closing => Some(ws),
            _ => None,
        };
        let Some(ws) = member else {
            // The connection went away while its join was in flight: undo it.
            if !rejoin {
                let home = home_core(&room, self.bus.cores());
                let core = self.id;
                self.route(home, BusMsg::Leave { room, core, user });
            }
            return;
        };
        let slot = (!rejoin).then(|| self.rooms.add(&room, key));
        if let Some(s) = ws.session.as_mut() {
            s.join_done(room.clone(), slot);
        }
        if std::mem::take(&mut ws.blocked) {
            self.runnable.push((key, conn.generation));
        }
        if !rejoin {
            let home = home_core(&user, self.bus.cores());
            self.route(
                home,
                BusMsg::UserRoom {
                    user,
                    room,
                    joined: true,
                },
            );
        }
        // Missed messages first (a replay that passes the backlog bound
        // closes the connection with 4009, like any slow consumer), then
        // the ack.
        for missed in replay {
            self.queue(key, missed);
        }
        self.queue(key, frame);
    }

    fn deliver_local(&mut self, room: &str, frame: &Bytes) {
        if !self.sse_rooms.is_empty() {
            self.sse_deliver(room, frame);
        }
        let Some(members) = self.rooms.members(room) else {
            return;
        };
        self.metrics.messages_out += members.len() as u64;
        for (_, &key) in members.iter() {
            if let Some(conn) = self.conns.get_mut(key as usize) {
                queue_ws(
                    conn,
                    key as usize,
                    frame.clone(),
                    self.backlogs,
                    &mut self.flush,
                    false,
                    &mut self.to_close,
                );
            }
        }
    }

    fn unix_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    // ---- timers -------------------------------------------------------

    fn run_timers(&mut self) {
        let mut expired = std::mem::take(&mut self.expired);
        self.wheel.advance(self.now_ms, &mut expired);
        for t in expired.drain(..) {
            self.fire(t);
            self.settle();
        }
        self.expired = expired;
    }

    fn fire(&mut self, t: Timer) {
        let key = t.key as usize;
        match t.kind {
            TimerKind::AcceptRetry => {
                self.accept_paused = false;
                return self.accept();
            }
            TimerKind::Tick => {
                self.tick();
                return self.timer(self.now_ms + 1000, 0, 0, TimerKind::Tick);
            }
            TimerKind::PresenceGrace => return self.on_grace_timer(key),
            TimerKind::Sweep => {
                let dropped = self.home.sweep(self.now_ms, self.unix_ms());
                if dropped > 0 {
                    debug!(core = self.id, dropped, "idle rooms forgotten");
                }
                return self.timer(self.now_ms + SWEEP_MS, 0, 0, TimerKind::Sweep);
            }
            _ => {}
        }
        if !self.live(key, t.generation) {
            return; // stale: the connection is gone or the slot was reused
        }
        if matches!(self.conns[key].state, State::Sse(_)) {
            return match t.kind {
                TimerKind::Heartbeat => self.sse_ping(key, t.generation),
                TimerKind::Expiry => {
                    debug!(core = self.id, "SSE stream closed: token expired");
                    self.remove_conn(key)
                }
                _ => {}
            };
        }
        let conn = &mut self.conns[key];
        match (t.kind, &mut conn.state) {
            (TimerKind::Handshake, State::Http(h)) => {
                debug!(core = self.id, "handshake timeout");
                if matches!(h.then, Then::Waiting) {
                    self.metrics.http_error(503);
                    let r = error_response(503, "timeout", "no answer in time; retry", &[]);
                    return self.respond(key, r, Then::Close);
                }
                if matches!(h.then, Then::Reading) && (!h.buf.is_empty() || h.pending.is_some()) {
                    // Best effort: a slow client that sent part of a request
                    // learns why; nothing waits for this write.
                    let what = if h.pending.is_some() {
                        "request body not received in time"
                    } else {
                        "request head not received in time"
                    };
                    let r = error_response(408, "timeout", what, &[]);
                    let _ = conn.stream.write(&r);
                }
                self.remove_conn(key);
            }
            (TimerKind::CloseDeadline, _) => {
                debug!(core = self.id, "close handshake timeout");
                self.remove_conn(key);
            }
            (TimerKind::Heartbeat, State::Ws(ws)) if !ws.closing => {
                let hb = self.shared.config.heartbeat * 1000;
                if self.now_ms.saturating_sub(ws.last_rx_ms) >= 2 * hb {
                    let session = ws
                        .session
                        .as_ref()
                        .map(|s| s.id.to_string())
                        .unwrap_or_default();
                    info!(
                        core = self.id,
                        session,
                        code = "none",
                        reason = "heartbeat timeout",
                        "dropping connection: silent for two heartbeat intervals"
                    );
                    return self.remove_conn(key);
                }
                self.write_control(key, Message::Ping(Default::default()));
                self.timer(self.now_ms + hb, key, t.generation, TimerKind::Heartbeat);
            }
            (TimerKind::Auth, State::Ws(_)) => {
                let mut outputs = std::mem::take(&mut self.outputs);
                self.with_session(key, |s, _| s.on_auth_timeout(&mut outputs));
                self.outputs = outputs;
                self.apply_outputs(key, t.generation);
            }
            (TimerKind::Expiry, State::Ws(ws)) => {
                ws.expiry_armed = None;
                let mut outputs = std::mem::take(&mut self.outputs);
                let grace = self
                    .with_session(key, |s, ctx| s.on_token_expiry(ctx, &mut outputs))
                    .flatten();
                self.outputs = outputs;
                match grace {
                    Some(grace) => {
                        let at = self.now_ms + grace * 1000;
                        self.timer(at, key, t.generation, TimerKind::ExpiryGrace);
                    }
                    None => {
                        // Refreshed meanwhile (or the clock stepped back):
                        // wait for the current exp.
                        let later = self
                            .with_session(key, |s, ctx| {
                                s.identity
                                    .as_ref()
                                    .and_then(|i| i.exp)
                                    .is_some_and(|exp| exp > ctx.unix_s)
                            })
                            .unwrap_or(false);
                        if later {
                            self.arm_expiry(key, t.generation);
                        }
                    }
                }
                self.apply_outputs(key, t.generation);
            }
            (TimerKind::ExpiryGrace, State::Ws(_)) => {
                let mut outputs = std::mem::take(&mut self.outputs);
                self.with_session(key, |s, ctx| s.on_expiry_grace(ctx, &mut outputs));
                self.outputs = outputs;
                self.apply_outputs(key, t.generation);
            }
            _ => {}
        }
    }

    // ---- closing ------------------------------------------------------

    /// Carries out closes queued during delivery (only from [`Core::settle`]).
    fn process_closes(&mut self) {
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
    fn close_ws(&mut self, key: usize, code: u16, reason: &'static str) {
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
        let mut io = sockio::Io {
            tcp: &mut conn.stream,
            scratch: &mut self.scratch,
            pending: &mut ws.pending,
            out: &mut ws.out,
        };
        match ws.ctx.close(&mut io, Some(frame)) {
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

    /// Removes a connection at once: leaves its rooms and frees its slot.
    fn remove_conn(&mut self, key: usize) {
        let Some(conn) = self.conns.try_remove(key) else {
            return;
        };
        if conn.counted {
            self.shared.connections.fetch_sub(1, Ordering::Relaxed);
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
        // Dropping the stream closes the socket (and removes it from epoll).
    }

    /// A WebSocket connection is gone: leave its rooms, uncount its user.
    fn session_gone(
        &mut self,
        key: usize,
        generation: u32,
        session: Option<Session>,
        counted: bool,
    ) {
        let mut user = None;
        let cores = self.bus.cores();
        let mut rooms = Vec::new();
        if let Some(session) = session {
            debug!(core = self.id, session = %session.id, "websocket closed");
            if let Some(ident) = session.identity {
                if counted {
                    user = Some(ident.user.clone());
                }
                for joined in session.rooms {
                    self.rooms.remove(&joined.name, joined.slot);
                    let home = home_core(&joined.name, cores);
                    rooms.push(joined.name.clone());
                    let msg = BusMsg::Leave {
                        room: joined.name,
                        core: self.id,
                        user: ident.user.clone(),
                    };
                    self.route(home, msg);
                }
            }
        }
        if let Some(user) = user {
            let home = home_core(&user, cores);
            let msg = BusMsg::UserGone {
                user,
                core: self.id,
                conn: ConnRef {
                    key: key as u32,
                    generation,
                },
                rooms,
            };
            self.route(home, msg);
        }
    }

    fn start_drain(&mut self) {
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

/// Queues a framed message on a WebSocket connection; marks it for
/// flushing; records a needed close when its backlog passes the bound
/// (`backlogs`: `/ws`, `/echo`): 4009.
fn queue_ws(
    conn: &mut Conn,
    key: usize,
    frame: Bytes,
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
    ws.out.push(frame);
    let limit = if ws.session.is_some() {
        backlogs.0
    } else {
        backlogs.1
    };
    if ws.out.pending() > limit {
        ws.doomed = true;
        to_close.push((
            key,
            conn.generation,
            Closing::Ws(close::SLOW_CONSUMER, "slow consumer"),
        ));
    }
    flush.mark(ws, key, urgent);
}

/// Connections with queued output, in two classes (see
/// [`Core::flush_pending`]).
#[derive(Debug, Default)]
struct FlushLists {
    /// Replies to this connection's own commands, control frames.
    urgent: Vec<usize>,
    /// Room deliveries only.
    deferred: Vec<usize>,
}

impl FlushLists {
    fn mark(&mut self, ws: &mut WsConn, key: usize, urgent: bool) {
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
