//! The core loop: the socket layer, and the only code that touches mio and
//! sockets.
//!
//! One [`Core`] runs per thread (pinned). It owns its SO_REUSEPORT listener,
//! its `mio::Poll`, a `Slab` of connections (one owner for every
//! connection of the core, which is why the files below all work on it),
//! the local member lists, a timer wheel and scratch buffers; and, with the
//! memory engine, this core's [`memory::Home`] (the rooms and users homed
//! here). Per loop iteration it: handles socket readiness (accept until
//! WouldBlock, read each ready connection up to a budget), drains its bus
//! inbox, fires due timers, then flushes every connection that got output
//! exactly once and sends each other core one batch. It must not block
//! (no disk, DNS, Redis or locks) and must not share connections with
//! other threads: everything crossing cores goes over the bus, everything
//! for the engine through [`Link`].
//!
//! The parts, one file each: [`conn`] (what a connection is), `front`
//! (accepting and the HTTP exchange up to the upgrade), `ws` (WebSocket
//! frames in and out, closing), `deliver` (carrying out the engine's
//! events for local connections), `agg` (counts gathered across cores and
//! stats), `timers`, `api` (the HTTP API), `sse` (Server-Sent Events),
//! `idle` (what an idle WebSocket gives back: its tungstenite context).

mod agg;
mod api;
mod conn;
pub mod cors;
mod deliver;
mod front;
pub mod http;
mod idle;
pub mod listener;
pub mod local_rooms;
pub mod outq;
pub mod per_ip;
pub mod proxy;
pub mod sockio;
pub mod sse;
mod stream;
mod timers;
mod web;
mod ws;

use crate::auth::{Authenticator, unix_now};
use crate::bus::{Bus, BusMsg, Inbox, Outbox};
use crate::config::Config;
use crate::engine::memory::{self, HomeMsg, HomeTimer, Out};
use crate::engine::{Command, Dest, Event, Link, Report};
use crate::proto::command::CommandParser;
use crate::proto::ratelimit::{RateParams, TokenBucket};
use crate::proto::session::{Output, SessionConfig};
use crate::timer::TimerWheel;
use conn::{Closing, Conn, FlushLists};
use local_rooms::LocalRooms;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};
use tungstenite::protocol::WebSocketConfig;

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
    /// `auth.allowed_origins`.
    pub origins: cors::Origins,
    /// Connections and handshakes per client address.
    pub per_ip: per_ip::PerIp,
    /// `proxy.trusted`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The listener's TLS (`[tls]`), set by [`crate::Server::start`].
    pub tls: Option<Arc<crate::tls::ServerTls>>,
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
    /// Set by the Redis bridge while Redis is unreachable (`/health`).
    pub redis_down: Arc<AtomicBool>,
    /// This node's name in cluster mode (announced in `welcome`).
    pub node: Option<Arc<str>>,
    /// Bytes the Redis bridge read from Redis (both connections).
    pub redis_bytes_in: AtomicU64,
    started: Instant,
}

impl Shared {
    /// Builds the shared state for `cores` cores; `node` is the node's
    /// name in cluster mode.
    pub fn new(config: Config, cores: usize, node: Option<String>) -> Self {
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
            origins: cors::Origins::new(&config.auth.allowed_origins),
            trusted_proxies: config
                .proxy
                .trusted
                .iter()
                .filter_map(|n| crate::config::parse_net(n))
                .collect(),
            tls: None,
            per_ip: per_ip::PerIp::new(per_ip::Limits {
                max_connections: l.max_connections_per_ip,
                per_sec: l.handshakes_per_ip_per_sec,
                burst: l.handshakes_per_ip_burst,
                exempt: l
                    .per_ip_exempt
                    .iter()
                    .filter_map(|n| crate::config::parse_net(n))
                    .collect(),
            }),
            ws_config,
            echo_config,
            cores: (0..cores).map(|_| CoreStats::default()).collect(),
            connections: AtomicUsize::new(0),
            store_failed: Arc::new(AtomicBool::new(false)),
            redis_down: Arc::new(AtomicBool::new(false)),
            node: node.map(Arc::from),
            redis_bytes_in: AtomicU64::new(0),
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
    /// Once a second: rates, late gatherings.
    Tick,
    /// A timer of this core's home (key/generation carry its data).
    Home(HomeTimerKind),
}

/// Which home timer a [`TimerKind::Home`] entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HomeTimerKind {
    Grace,
    Sweep,
    Tick,
}

#[derive(Debug, Clone, Copy)]
struct Timer {
    key: u32,
    generation: u32,
    kind: TimerKind,
}

/// The counters at the last tick and the ratios over the second before it
/// (`/metrics`: busy ratio, frames per write).
#[derive(Debug, Default)]
struct Headroom {
    /// (busy µs, wall µs, frames queued, write syscalls) at the last tick.
    mark: (u64, u64, u64, u64),
    busy_ratio: f64,
    frames_per_write: f64,
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
    /// How this core reaches the engine.
    pub link: Link,
    /// The memory engine's part for this core (absent with Redis).
    pub home: Option<memory::Home>,
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
    /// Local member lists of WebSocket connections.
    rooms: LocalRooms,
    wheel: TimerWheel<Timer>,
    inbox: Inbox,
    bus: Bus,
    outbox: Outbox,
    /// How commands reach the engine.
    link: Link,
    /// The memory engine's rooms and users homed here.
    home: Option<memory::Home>,
    /// What the home decided, being carried out.
    home_out: Vec<Out>,
    /// Commands for the Redis bridge, sent once per iteration.
    bridge_out: Vec<Command>,
    /// Counts being gathered here.
    aggs: agg::Aggs,
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
    /// When the oldest deferred (room delivery) output started waiting.
    deferred_since: Option<Instant>,
    /// `limits.max_write_delay_ms`: how long deferred output may wait.
    write_delay: Duration,
    /// The headroom ratios of the last second.
    headroom: Headroom,
    /// This iteration handled new input (socket reads, accepts, bus).
    had_input: bool,
    runnable: Vec<(usize, u32)>,
    /// What idle connections give back (see [`idle`]).
    idle: idle::Idle,
    to_close: Vec<(usize, u32, Closing)>,
    /// Bus messages for this core itself, handled in [`Core::settle`] (never
    /// recursively, so no path re-enters the message handlers).
    local: std::collections::VecDeque<BusMsg>,
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
            wheel: TimerWheel::new(WHEEL_SLOTS, TICK_MS, now),
            inbox: init.inbox,
            bus: init.bus,
            outbox: Outbox::new(cores),
            link: init.link,
            home: init.home,
            home_out: Vec::new(),
            bridge_out: Vec::new(),
            aggs: agg::Aggs::default(),
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
            write_delay: Duration::from_millis(init.shared.config.limits.max_write_delay_ms),
            headroom: Headroom::default(),
            had_input: false,
            runnable: Vec::new(),
            idle: idle::Idle::default(),
            to_close: Vec::new(),
            local: std::collections::VecDeque::new(),
            read_buf: vec![0; http::MAX_HEAD].into_boxed_slice(),
            scratch: sockio::ReadScratch::default(),
            rng: fastrand::Rng::new(),
            shared: init.shared,
            draining_until: None,
            more_bus: false,
            now_ms: now,
            unix_s: unix_now(),
        };
        core.carry_home_out();
        core.timer(now + 1000, 0, 0, TimerKind::Tick);
        Ok(core)
    }

    /// Runs the loop until a drain completes.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if !timeout.is_zero() && !self.flush.deferred.is_empty() {
                self.metrics.write_delay_waits += 1;
            }
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
            if self.flush.urgent.is_empty() && self.flush.deferred.is_empty() {
                self.flush_pending();
            } else {
                let (t0, w0) = (self.shared.now_us(), stream::write_syscalls());
                self.flush_pending();
                if stream::write_syscalls() != w0 {
                    let us = self.shared.now_us().saturating_sub(t0);
                    crate::metrics::CoreMetrics::record(&mut self.metrics.flush_us, us);
                }
            }
            self.flush_engine();
            debug_assert!(self.local.is_empty() && self.to_close.is_empty());
            // Time outside epoll_wait (one clock read per iteration); the
            // iteration histogram samples one busy iteration in 16.
            let busy = self.shared.now_us().saturating_sub(self.now_us);
            self.metrics.busy_us += busy;
            if !events.is_empty() {
                self.iterations = self.iterations.wrapping_add(1);
                if self.iterations % 16 == 1 {
                    crate::metrics::CoreMetrics::record(&mut self.metrics.loop_us, busy);
                }
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
        if !self.runnable.is_empty() || self.more_bus || !self.flush.urgent.is_empty() {
            return Duration::ZERO;
        }
        let held = self.deliveries_wait();
        if held == Some(Duration::ZERO) {
            return Duration::ZERO;
        }
        let ms = self
            .wheel
            .next_timeout_ms(self.shared.now_ms())
            .unwrap_or(MAX_SLEEP_MS)
            .min(MAX_SLEEP_MS);
        let timers = Duration::from_millis(ms);
        // mio rounds a sub-millisecond wait up to 1 ms.
        held.map_or(timers, |h| h.min(timers))
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

    // ---- bus and engine -----------------------------------------------

    fn route(&mut self, core: usize, msg: BusMsg) {
        if core == self.id {
            self.local.push_back(msg);
        } else {
            self.outbox.push(core, msg);
        }
    }

    /// Hands a command to the engine: the home core of its room or user
    /// (memory), or this node's bridge (Redis).
    fn submit(&mut self, cmd: Command) {
        match &self.link {
            Link::Redis(_) => self.bridge_out.push(cmd),
            Link::Memory => match cmd.home(self.bus.cores()) {
                Dest::Core(core) => self.route(core, BusMsg::Home(HomeMsg::Cmd(cmd))),
                Dest::Every => {
                    // A broadcast needs no home: every core's part goes
                    // straight to that core's socket layer.
                    if let Command::Broadcast { frame, agg } = cmd {
                        for core in 0..self.bus.cores() {
                            let ev = Event::Broadcast {
                                frame: frame.clone(),
                                agg: Report::Core(agg),
                            };
                            self.route(core, BusMsg::Event(ev));
                        }
                    }
                }
            },
        }
    }

    /// Sends this iteration's batches: one per other core, one to the
    /// bridge.
    fn flush_engine(&mut self) {
        self.outbox.flush(&self.bus);
        if let Link::Redis(h) = &self.link
            && !self.bridge_out.is_empty()
        {
            let cap = self.bridge_out.capacity().min(256);
            h.send(std::mem::replace(
                &mut self.bridge_out,
                Vec::with_capacity(cap),
            ));
        }
    }

    fn clock(&self) -> memory::Clock {
        memory::Clock {
            now_ms: self.now_ms,
            now_us: self.now_us,
        }
    }

    /// Carries out what this core's home decided.
    fn carry_home_out(&mut self) {
        let Some(home) = self.home.as_mut() else {
            return;
        };
        let mut out = std::mem::take(&mut self.home_out);
        home.take_out(&mut out);
        for o in out.drain(..) {
            match o {
                Out::Event(core, ev) => self.route(core, BusMsg::Event(ev)),
                Out::Home(core, msg) => self.route(core, BusMsg::Home(msg)),
                Out::Timer(at, t) => {
                    let (key, generation, kind) = match t {
                        HomeTimer::Grace { slot, generation } => {
                            (slot, generation, HomeTimerKind::Grace)
                        }
                        HomeTimer::Sweep => (0, 0, HomeTimerKind::Sweep),
                        HomeTimer::Tick => (0, 0, HomeTimerKind::Tick),
                    };
                    self.wheel.insert(
                        at,
                        Timer {
                            key,
                            generation,
                            kind: TimerKind::Home(kind),
                        },
                    );
                }
            }
        }
        self.home_out = out;
    }

    fn home_handle(&mut self, msg: HomeMsg) {
        let clock = self.clock();
        match self.home.as_mut() {
            Some(home) => home.handle(msg, clock),
            None => {
                debug!(
                    core = self.id,
                    "home message without a memory engine: dropped"
                );
                return;
            }
        }
        self.carry_home_out();
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

    fn handle_bus(&mut self, msg: BusMsg) {
        match msg {
            BusMsg::Home(m) => self.home_handle(m),
            BusMsg::Event(ev) => self.on_event(ev),
            BusMsg::StatsRequest { agg } => {
                let snapshot = Box::new(self.snapshot());
                let msg = BusMsg::StatsReply {
                    token: agg.token,
                    snapshot,
                };
                self.route(agg.core, msg);
            }
            BusMsg::StatsReply { token, snapshot } => self.on_stats_reply(token, *snapshot),
            BusMsg::Shutdown => self.start_drain(),
        }
    }

    fn unix_ms(&self) -> u64 {
        crate::auth::unix_now_ms()
    }
}
