//! One generator thread: a mio loop driving many non-blocking WebSocket
//! client connections through a scenario.
//!
//! Owns its connections, its histogram and its share of the scenario; it
//! reports progress through the shared atomic counters in [`Shared`] and
//! its final numbers as a [`WorkerResult`]. It must not block: every wait
//! is a poll timeout, and every phase has a deadline.
//!
//! With `--tls` each connection carries its own `rustls::ClientConnection`
//! (`sock::Sock`): reads decrypt into the same per-thread buffer the plain path
//! reads into, writes encrypt what tungstenite writes. The plain path pays
//! one branch per read or write for it.

use crate::sock::{Sock, dial};
use crate::{Scenario, TlsClient};

use hdrhistogram::Histogram;
use memchr::memmem::{Finder, FinderRev};
use mio::{Events, Interest, Poll, Token};
use rustls::ClientConnection;
use rustls::HandshakeKind;
use slab::Slab;
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tungstenite::Message;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};

/// Counters shared by all workers of a process (read by the progress
/// printer and for the measurement window).
#[derive(Default)]
pub struct Shared {
    /// Workers whose connections are open (and joined) and waiting for GO.
    pub ready: AtomicUsize,
    /// Start the measured phase.
    pub go: AtomicBool,
    /// Record latencies (inside the measurement window).
    pub measuring: AtomicBool,
    /// Stop sending; drain; finish.
    pub stop: AtomicBool,
    /// Echo replies, fan-out deliveries, or completed handshakes.
    pub ops: AtomicU64,
    /// Publishes acknowledged (fan-out).
    pub published: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    /// Failed connects/handshakes or unexpected closes.
    pub errors: AtomicU64,
    /// Fan-out: publishes sent and not yet acknowledged, all workers.
    pub unacked: AtomicU64,
    /// Fan-out: the highest acknowledged seq of each room, all workers.
    pub room_acked: Vec<AtomicU64>,
    /// Fan-out: `room_acked` holds the final seq of every room (all
    /// publishers of all processes stopped and were acknowledged).
    pub final_known: AtomicBool,
    /// Workers that have left their publishing loop (nothing more will be
    /// published by them).
    pub done_publishing: std::sync::atomic::AtomicUsize,
    /// TLS: full handshakes completed (whole run, not just the window).
    pub tls_full: AtomicU64,
    /// TLS: resumed handshakes completed (whole run).
    pub tls_resumed: AtomicU64,
}

impl Shared {
    /// Counters for a run over `rooms` rooms.
    pub fn new(rooms: usize) -> Self {
        Shared {
            room_acked: (0..rooms).map(|_| AtomicU64::new(0)).collect(),
            ..Default::default()
        }
    }
}

/// What one worker measured.
#[derive(Default)]
pub struct WorkerResult {
    /// Latency histogram (µs), recorded inside the window.
    pub hist: Option<Histogram<u64>>,
    /// Fan-out: publish→ack latency (µs), recorded inside the window.
    pub ack_hist: Option<Histogram<u64>>,
    /// Rate mode: how late sends left against their schedule (µs),
    /// inside the window.
    pub lag_hist: Option<Histogram<u64>>,
    /// Fan-out: seq gaps seen (messages skipped).
    pub missing: u64,
    /// Fan-out: seq going backwards or repeating.
    pub out_of_order: u64,
    /// Fan-out, per room: (the seq every member must reach: the highest
    /// acknowledged to any publisher, or seen if higher; members; sum of
    /// members' last seq).
    pub rooms: Vec<(u64, u64, u64)>,
    /// Fan-out: the drain ended at its deadline with members of this
    /// worker short of their room's last acknowledged seq.
    pub drain_timed_out: bool,
    /// Connections that could not be opened or joined in setup.
    pub setup_failures: u64,
    /// First error text, for the report.
    pub first_error: Option<String>,
    /// Fan-out with `--reach`: per publish, how far it got (whole run).
    pub reach: BTreeMap<(usize, u64), Reach>,
}

/// `--reach`: one publish as this worker's members saw it. Merged over
/// workers and processes, `last_us - sent_us` is the time the publish
/// took to reach every member, and `count` says whether it did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reach {
    /// When the publisher sent it (its `data.t`, wall clock µs).
    pub sent_us: u64,
    /// When the last of these members read it (wall clock µs).
    pub last_us: u64,
    /// Members that received it.
    pub count: u64,
}

impl Reach {
    /// Combines what two sets of members saw of the same publish.
    pub fn merge(&mut self, other: Reach) {
        self.sent_us = self.sent_us.max(other.sent_us);
        self.last_us = self.last_us.max(other.last_us);
        self.count += other.count;
    }
}

/// This worker's share of the work.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Server addresses (connections go round-robin) and their text (the
    /// Host header).
    pub addrs: Vec<(SocketAddr, String)>,
    /// Where publishers connect, when not round-robin with the rest (a
    /// cluster node of their own: every delivery crosses nodes).
    pub pub_addr: Option<SocketAddr>,
    /// Source addresses to spread connections over.
    pub sources: Vec<Ipv4Addr>,
    /// Echo / idle: connections; connect: concurrent dialers.
    pub conns: usize,
    /// Fan-out: (room index, members of it on this worker).
    pub members: Vec<(usize, usize)>,
    /// Fan-out: rooms of this worker's publishers.
    pub publishers: Vec<usize>,
    /// Payload size, bytes.
    pub size: usize,
    /// Echo: messages in flight per connection; fan-out (flat out): publishes in flight per publisher.
    pub inflight: usize,
    /// Rate mode: messages per second per sending connection — each
    /// publisher (fan-out) or each echo connection (echo); 0 = flat out.
    pub rate_per_sender: f64,
    /// Fan-out: every publish carries a unique idempotency key.
    pub keys: bool,
    /// Fan-out: record, per publish, when the last of this worker's
    /// members received it (`--reach`).
    pub reach: bool,
    /// `--token`: sent as `?token=` on every `/ws` upgrade.
    pub token: Option<String>,
    /// Number of rooms (fan-out).
    pub rooms: usize,
    /// Connection index offset (source address spreading).
    pub offset: usize,
    /// Fan-out: how long to wait, after publishing stopped, for the last
    /// acks and (twice that) for members to receive every acked message.
    pub drain: Duration,
    /// TLS client configuration and server name (`--tls`).
    pub tls: TlsClient,
}

enum Phase {
    Connecting,
    Handshake {
        out: Vec<u8>,
        written: usize,
        input: Vec<u8>,
    },
    Open(Box<WebSocketContext>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role2 {
    Echo,
    Member { room: usize },
    Publisher { room: usize },
    Dialer,
    Idle,
}

struct Conn {
    stream: Sock,
    phase: Phase,
    role: Role2,
    path: &'static str,
    /// Fan-out: joined (ack seen).
    joined: bool,
    /// Fan-out: last seq seen in its room.
    last_seq: u64,
    /// Echo / publisher: messages in flight.
    inflight: usize,
    /// Publisher or echo connection: messages sent so far (rate mode).
    sent: u64,
    /// Connect scenario: close sent.
    closing: bool,
    dirty: bool,
    /// An incomplete frame from the previous read.
    pending: Vec<u8>,
}

/// Microseconds on the wall clock (shared across generator processes).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn client_config(scenario: Scenario) -> WebSocketConfig {
    // Reads go through the per-thread scratch, so this is only the copy size.
    let read = if scenario == Scenario::Idle {
        128
    } else {
        1024
    };
    WebSocketConfig::default()
        .read_buffer_size(read)
        .write_buffer_size(1 << 20)
        .max_write_buffer_size(64 << 20)
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20))
}

struct Finders {
    seq: Finder<'static>,
    /// `"t":` of the payload, near the end of a message: searched backwards.
    t: FinderRev<'static>,
    /// `"id":` of an ack (a publish's id is its send time, µs).
    id: Finder<'static>,
}

/// Whether the event `b` has `"type":"<ty>"` as its first field (both
/// corecast and the variants write `type` first).
fn is_type(b: &[u8], ty: &[u8]) -> bool {
    const PREFIX: &[u8] = b"{\"type\":\"";
    b.starts_with(PREFIX)
        && b[PREFIX.len()..].starts_with(ty)
        && b.get(PREFIX.len() + ty.len()) == Some(&b'"')
}

/// Header length and payload length of the server frame starting `b`, once
/// enough of its header is there.
fn frame_extent(b: &[u8]) -> Option<(usize, usize)> {
    let len7 = *b.get(1)? & 0x7f;
    match len7 {
        126 => Some((
            4,
            u16::from_be_bytes(b.get(2..4)?.try_into().ok()?) as usize,
        )),
        127 => Some((
            10,
            u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize,
        )),
        n => Some((2, n as usize)),
    }
}

fn parse_num(b: &[u8]) -> u64 {
    let mut v = 0u64;
    for &c in b {
        if !c.is_ascii_digit() {
            break;
        }
        v = v * 10 + u64::from(c - b'0');
    }
    v
}

/// Runs one worker to completion.
pub fn run(id: usize, scenario: Scenario, plan: Plan, shared: Arc<Shared>) -> WorkerResult {
    let mut w = Worker::new(id, scenario, plan, shared);
    w.run();
    w.result
}

struct Worker {
    scenario: Scenario,
    plan: Plan,
    shared: Arc<Shared>,
    poll: Poll,
    conns: Slab<Conn>,
    dirty: Vec<usize>,
    hist: Histogram<u64>,
    ack_hist: Histogram<u64>,
    lag_hist: Histogram<u64>,
    /// Rate mode: the connections that send on a schedule.
    pacers: Vec<usize>,
    result: WorkerResult,
    f: Finders,
    cfg: WebSocketConfig,
    dialed: usize,
    payload_pad: String,
    rooms_max: Vec<u64>,
    started: Option<Instant>,
    id: usize,
    /// Read buffer of the thread (see [`Worker::read_frames`]).
    rbuf: Box<[u8]>,
    /// Wall clock (µs) at the start of the current read burst.
    now_cache: u64,
}

impl Worker {
    fn new(id: usize, scenario: Scenario, plan: Plan, shared: Arc<Shared>) -> Self {
        let rooms = plan.rooms;
        let pad_len = plan.size.saturating_sub(40);
        Worker {
            scenario,
            shared,
            poll: Poll::new().expect("poll"),
            conns: Slab::new(),
            dirty: Vec::new(),
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
            ack_hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
            lag_hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
            pacers: Vec::new(),
            result: WorkerResult::default(),
            f: Finders {
                seq: Finder::new(b"\"seq\":").into_owned(),
                t: FinderRev::new(b"\"t\":").into_owned(),
                id: Finder::new(b"\"id\":").into_owned(),
            },
            cfg: client_config(scenario),
            dialed: 0,
            payload_pad: "x".repeat(pad_len),
            rooms_max: vec![0; rooms],
            started: None,
            id,
            rbuf: vec![0; 256 * 1024].into_boxed_slice(),
            now_cache: 0,
            plan,
        }
    }

    fn error(&mut self, e: impl ToString) {
        self.shared.errors.fetch_add(1, Ordering::Relaxed);
        if self.result.first_error.is_none() {
            self.result.first_error = Some(e.to_string());
        }
    }

    fn open_conn(&mut self, role: Role2, path: &'static str) {
        let src = self.plan.sources[(self.plan.offset + self.dialed) % self.plan.sources.len()];
        self.dialed += 1;
        let addr = match (role, self.plan.pub_addr) {
            (Role2::Publisher { .. }, Some(a)) => a,
            _ => self.plan.addrs[self.dialed % self.plan.addrs.len()].0,
        };
        let tls = match &self.plan.tls {
            None => None,
            Some((config, name)) => match ClientConnection::new(config.clone(), name.clone()) {
                Ok(c) => Some(Box::new(c)),
                Err(e) => return self.error(format!("TLS: {e}")),
            },
        };
        let tcp = match dial(addr, src) {
            Ok(s) => s,
            Err(e) => return self.error(format!("connect from {src}: {e}")),
        };
        let mut stream = Sock { tcp, tls };
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut stream.tcp,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return self.error(e);
        }
        entry.insert(Conn {
            stream,
            phase: Phase::Connecting,
            role,
            path,
            joined: false,
            last_seq: 0,
            inflight: 0,
            sent: 0,
            closing: false,
            dirty: false,
            pending: Vec::new(),
        });
    }

    fn setup(&mut self) {
        match self.scenario {
            Scenario::Echo => {
                for _ in 0..self.plan.conns {
                    self.open_conn(Role2::Echo, "/echo");
                }
            }
            Scenario::Idle => {
                for _ in 0..self.plan.conns {
                    self.open_conn(Role2::Idle, "/ws");
                }
            }
            Scenario::Fanout => {
                for (room, n) in self.plan.members.clone() {
                    for _ in 0..n {
                        self.open_conn(Role2::Member { room }, "/ws");
                    }
                }
                for room in self.plan.publishers.clone() {
                    self.open_conn(Role2::Publisher { room }, "/ws");
                }
            }
            // Dialers start at GO; recovery runs in its own module.
            Scenario::Connect | Scenario::Recovery => {}
        }
    }

    /// Everything opened (and joined) that will be?
    fn setup_done(&self) -> bool {
        self.conns.iter().all(|(_, c)| match c.phase {
            Phase::Open(_) => match c.role {
                Role2::Member { .. } | Role2::Publisher { .. } | Role2::Idle => c.joined,
                _ => true,
            },
            _ => false,
        })
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(4096);
        self.setup();
        let setup_deadline = Instant::now() + Duration::from_secs(60);
        // Setup: open (and join) everything, then report ready.
        while !self.setup_done() && Instant::now() < setup_deadline {
            self.turn(&mut events, Duration::from_millis(10));
        }
        let open = self.conns.len() as u64;
        self.result.setup_failures = (self.expected_conns() as u64).saturating_sub(open)
            + self
                .conns
                .iter()
                .filter(|(_, c)| !matches!(c.phase, Phase::Open(_)))
                .count() as u64;
        self.shared.ready.fetch_add(1, Ordering::SeqCst);
        while !self.shared.go.load(Ordering::SeqCst) {
            if self.shared.stop.load(Ordering::SeqCst) {
                return self.finish();
            }
            // Keep answering pings while waiting.
            self.turn(&mut events, Duration::from_millis(5));
        }
        self.started = Some(Instant::now());
        self.kick_off();
        while !self.shared.stop.load(Ordering::Relaxed) {
            let timeout = if self.plan.rate_per_sender > 0.0 {
                Duration::from_millis(1)
            } else {
                Duration::from_millis(20)
            };
            self.turn(&mut events, timeout);
            if self.plan.rate_per_sender > 0.0 && !self.shared.stop.load(Ordering::Relaxed) {
                self.pace();
            }
        }
        self.shared.done_publishing.fetch_add(1, Ordering::SeqCst);
        // Drain: every member catches up with the final seq of its room
        // (known once all publishers, of every process, are acknowledged).
        if self.scenario == Scenario::Fanout {
            let deadline = Instant::now() + 2 * self.plan.drain;
            while Instant::now() < deadline && !self.caught_up() {
                self.turn(&mut events, Duration::from_millis(10));
            }
            // Not silent: what is still short counts as missing, and the
            // timeout itself fails the run.
            self.result.drain_timed_out = !self.caught_up();
        }
        self.finish();
    }

    fn expected_conns(&self) -> usize {
        match self.scenario {
            Scenario::Echo | Scenario::Idle => self.plan.conns,
            Scenario::Fanout => {
                self.plan.members.iter().map(|(_, n)| n).sum::<usize>() + self.plan.publishers.len()
            }
            Scenario::Connect | Scenario::Recovery => 0,
        }
    }

    /// Every publish of every worker is acknowledged, and every member of
    /// this worker has the last acknowledged seq of its room.
    fn caught_up(&self) -> bool {
        self.shared.final_known.load(Ordering::SeqCst)
            && self.conns.iter().all(|(_, c)| match c.role {
                Role2::Member { room } | Role2::Publisher { room } => {
                    c.last_seq >= self.shared.room_acked[room].load(Ordering::SeqCst)
                }
                _ => true,
            })
    }

    fn finish(&mut self) {
        let mut rooms = vec![(0u64, 0u64, 0u64); self.plan.rooms];
        for (_, c) in self.conns.iter() {
            if let Role2::Member { room } | Role2::Publisher { room } = c.role {
                rooms[room].1 += 1;
                rooms[room].2 += c.last_seq;
            }
        }
        // Completeness is judged against what publishers were acked (of
        // every process, once the final seqs are known), not against what
        // members happened to see: a message acked and never delivered to
        // anyone is missing too.
        for (room, r) in rooms.iter_mut().enumerate() {
            r.0 = self.rooms_max[room].max(self.shared.room_acked[room].load(Ordering::SeqCst));
        }
        self.result.rooms = rooms;
        self.result.hist = Some(std::mem::replace(
            &mut self.hist,
            Histogram::new(3).expect("histogram"),
        ));
        self.result.ack_hist = Some(std::mem::replace(
            &mut self.ack_hist,
            Histogram::new(3).expect("histogram"),
        ));
        self.result.lag_hist = Some(std::mem::replace(
            &mut self.lag_hist,
            Histogram::new(3).expect("histogram"),
        ));
        let _ = self.id;
    }

    /// First sends of the measured phase (rate mode: who will send).
    fn kick_off(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        if self.plan.rate_per_sender > 0.0 {
            self.pacers = keys
                .iter()
                .copied()
                .filter(|&k| matches!(self.conns[k].role, Role2::Publisher { .. } | Role2::Echo))
                .collect();
        }
        match self.scenario {
            Scenario::Echo if self.plan.rate_per_sender == 0.0 => {
                for k in keys {
                    for _ in 0..self.plan.inflight {
                        self.send_echo(k);
                    }
                }
            }
            Scenario::Fanout if self.plan.rate_per_sender == 0.0 => {
                for k in keys {
                    if matches!(self.conns[k].role, Role2::Publisher { .. }) {
                        for _ in 0..self.plan.inflight {
                            self.publish(k);
                        }
                    }
                }
            }
            Scenario::Connect => {
                for _ in 0..self.plan.conns {
                    self.open_conn(Role2::Dialer, "/ws");
                }
            }
            _ => {}
        }
        self.flush();
    }

    /// Rate mode: sends what each publisher (fan-out) or connection (echo)
    /// owes by now — open loop: a send waits for its time, never for an
    /// answer. The message carries its actual send time, from which its
    /// latency is measured; how late it left against its schedule goes to
    /// `lag_hist` (the generator falling behind shows there).
    fn pace(&mut self) {
        let Some(started) = self.started else { return };
        let elapsed = started.elapsed().as_secs_f64();
        let rate = self.plan.rate_per_sender;
        let ticks = elapsed * rate;
        let measuring = self.measuring();
        // Senders are phase-shifted evenly over one period, so the total
        // rate is smooth instead of a burst of every sender at once: sender
        // i's j-th message (1-based) is due at (j - i/n) / rate.
        let n = self.pacers.len().max(1) as f64;
        for i in 0..self.pacers.len() {
            let k = self.pacers[i];
            let phase = i as f64 / n;
            let due = (ticks + phase) as u64;
            while let Some(c) = self.conns.get(k)
                && c.sent < due
            {
                if measuring {
                    let at = (c.sent + 1) as f64 - phase;
                    let late = ((elapsed - at / rate) * 1e6).max(1.0) as u64;
                    let _ = self.lag_hist.record(late.min(60_000_000));
                }
                if self.scenario == Scenario::Echo {
                    self.conns[k].sent += 1;
                    self.send_echo(k);
                } else {
                    self.publish(k);
                }
            }
        }
        self.flush();
    }

    fn turn(&mut self, events: &mut Events, timeout: Duration) {
        if let Err(e) = self.poll.poll(events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                self.error(e);
            }
            return;
        }
        for ev in events.iter() {
            let key = ev.token().0;
            if ev.is_writable() {
                self.on_writable(key);
            }
            let hangup = ev.is_read_closed() || ev.is_error();
            if ev.is_readable() || hangup {
                self.on_readable(key, !hangup);
            }
        }
        self.flush();
    }

    fn on_writable(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        match &mut c.phase {
            Phase::Connecting => {
                if let Ok(Some(e)) | Err(e) = c.stream.tcp.take_error() {
                    return self.fail(key, format!("connect: {e}"));
                }
                if c.stream.tcp.peer_addr().is_err() {
                    return; // not connected yet
                }
                let query = match &self.plan.token {
                    Some(t) if c.path == "/ws" => format!("?token={t}"),
                    _ => String::new(),
                };
                let req = format!(
                    "GET {}{query} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                    c.path, self.plan.addrs[0].1
                );
                c.phase = Phase::Handshake {
                    out: req.into_bytes(),
                    written: 0,
                    input: Vec::new(),
                };
                self.on_writable(key);
            }
            Phase::Handshake { out, written, .. } => {
                // TLS handshake records the socket did not take at once.
                if let Err(e) = c.stream.flush_tls() {
                    return self.fail(key, format!("TLS write: {e}"));
                }
                while *written < out.len() {
                    match c.stream.write(&out[*written..]) {
                        Ok(n) => *written += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                        Err(e) => return self.fail(key, format!("handshake write: {e}")),
                    }
                }
            }
            Phase::Open(ws) => match ws.flush(&mut c.stream) {
                Ok(()) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => self.fail(key, format!("flush: {e}")),
            },
        }
    }

    fn fail(&mut self, key: usize, why: String) {
        if self.conns.contains(key) {
            let c = self.conns.remove(key);
            if matches!(c.phase, Phase::Open(_)) {
                self.shared.open.fetch_sub(1, Ordering::Relaxed);
            }
            // A closing dialer ending is the normal end of its cycle.
            if !(c.role == Role2::Dialer && c.closing) {
                self.error(why);
            }
        }
    }

    fn on_readable(&mut self, key: usize, may_skip_eagain: bool) {
        // Handshake response.
        if let Some(Conn {
            phase: Phase::Handshake { input, .. },
            stream,
            ..
        }) = self.conns.get_mut(key)
        {
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf) {
                    // An answer, then EOF (a refusal): said below.
                    Ok(0) if input.windows(4).any(|w| w == b"\r\n\r\n") => break,
                    Ok(0) => return self.fail(key, "closed during handshake".into()),
                    Ok(n) => input.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return self.fail(key, format!("handshake read: {e}")),
                }
            }
            let Some(end) = input.windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            if !input.starts_with(b"HTTP/1.1 101") {
                let head = String::from_utf8_lossy(&input[..end]).into_owned();
                return self.fail(
                    key,
                    format!("upgrade refused: {}", head.lines().next().unwrap_or("")),
                );
            }
            let rest = input[end + 4..].to_vec();
            let ws = WebSocketContext::new(Role::Client, Some(self.cfg));
            let c = &mut self.conns[key];
            if let Some(t) = c.stream.tls.as_deref() {
                let kind = if t.handshake_kind() == Some(HandshakeKind::Resumed) {
                    &self.shared.tls_resumed
                } else {
                    &self.shared.tls_full
                };
                kind.fetch_add(1, Ordering::Relaxed);
            }
            c.phase = Phase::Open(Box::new(ws));
            c.pending = rest; // frames that came with the 101 (the welcome)
            self.shared.open.fetch_add(1, Ordering::Relaxed);
        }
        self.read_frames(key, may_skip_eagain);
    }

    /// Reads server frames straight out of a per-thread buffer: one `read`
    /// per burst, frames parsed in place (server frames are unmasked and
    /// unfragmented), no copy or UTF-8 check per frame. This is the tool's
    /// hot path — at millions of deliveries per second the generator must
    /// cost less per delivery than the server it measures. Writes still go
    /// through tungstenite (clients must mask).
    fn read_frames(&mut self, key: usize, may_skip_eagain: bool) {
        self.now_cache = now_us();
        if !self.drain_pending(key) {
            return;
        }
        // A short TLS read is one record's plaintext, not a drained socket.
        let may_skip_eagain =
            may_skip_eagain && self.conns.get(key).is_some_and(|c| c.stream.tls.is_none());
        let mut buf = std::mem::take(&mut self.rbuf);
        while let Some(c) = self.conns.get_mut(key) {
            let n = match c.stream.read(&mut buf) {
                Ok(0) => {
                    self.closed(key);
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.fail(key, format!("read: {e}"));
                    break;
                }
            };
            let mut at = 0;
            // Finish a frame left incomplete by the previous read.
            let mut partial = std::mem::take(&mut c.pending);
            if !partial.is_empty() {
                loop {
                    match frame_extent(&partial) {
                        Some((h, len)) if partial.len() >= h + len => break,
                        Some((h, len)) => {
                            let take = (h + len - partial.len()).min(n - at);
                            partial.extend_from_slice(&buf[at..at + take]);
                            at += take;
                        }
                        None => {
                            // Header still incomplete: one byte at a time,
                            // so nothing of the next frame is taken.
                            partial.push(buf[at]);
                            at += 1;
                        }
                    }
                    if at == n {
                        break;
                    }
                }
                match frame_extent(&partial) {
                    Some((h, len)) if partial.len() >= h + len => {
                        if !self.on_frame(key, partial[0], &partial[h..h + len]) {
                            break;
                        }
                        partial.clear();
                    }
                    _ => {} // still incomplete
                }
            }
            // Whole frames in this read, then keep any incomplete tail.
            let mut alive = true;
            while let Some((h, len)) = frame_extent(&buf[at..n]) {
                if n - at < h + len {
                    break;
                }
                if !self.on_frame(key, buf[at], &buf[at + h..at + h + len]) {
                    alive = false;
                    break;
                }
                at += h + len;
            }
            if !alive {
                break;
            }
            partial.extend_from_slice(&buf[at..n]);
            let Some(c) = self.conns.get_mut(key) else {
                break;
            };
            c.pending = partial;
            if may_skip_eagain && n < buf.len() {
                break; // drained; a later arrival is a new event
            }
        }
        self.rbuf = buf;
    }

    /// Handles the complete frames in a connection's `pending` bytes (kept
    /// from the handshake read); false when the connection is gone.
    fn drain_pending(&mut self, key: usize) -> bool {
        let Some(c) = self.conns.get_mut(key) else {
            return false;
        };
        let pending = std::mem::take(&mut c.pending);
        let mut at = 0;
        while let Some((h, len)) = frame_extent(&pending[at..]) {
            if pending.len() - at < h + len {
                break;
            }
            if !self.on_frame(key, pending[at], &pending[at + h..at + h + len]) {
                return false;
            }
            at += h + len;
        }
        match self.conns.get_mut(key) {
            Some(c) => {
                c.pending = pending[at..].to_vec();
                true
            }
            None => false,
        }
    }

    /// Handles one frame; false when the connection is gone.
    fn on_frame(&mut self, key: usize, b0: u8, payload: &[u8]) -> bool {
        match b0 & 0x0f {
            0x1 | 0x2 => self.on_text(key, payload),
            0x8 => {
                self.closed(key);
                return false;
            }
            0x9 => {
                let c = &mut self.conns[key];
                if let Phase::Open(ws) = &mut c.phase {
                    let _ = ws.write(&mut c.stream, Message::Pong(payload.to_vec().into()));
                }
                self.mark_dirty(key);
            }
            0xa => {}
            op => {
                self.fail(key, format!("unexpected frame opcode {op}"));
                return false;
            }
        }
        self.conns.contains(key)
    }

    fn closed(&mut self, key: usize) {
        let Some(c) = self.conns.try_remove(key) else {
            return;
        };
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
        if c.role == Role2::Dialer && c.closing {
            self.shared.ops.fetch_add(1, Ordering::Relaxed);
            if !self.shared.stop.load(Ordering::Relaxed) {
                self.open_conn(Role2::Dialer, "/ws");
            }
        } else if !self.shared.stop.load(Ordering::Relaxed) {
            self.error("server closed a connection");
        }
    }

    fn measuring(&self) -> bool {
        self.shared.measuring.load(Ordering::Relaxed)
    }

    fn record(&mut self, sent_us: u64) {
        if self.measuring() {
            let lat = self.now_cache.saturating_sub(sent_us).max(1);
            let _ = self.hist.record(lat.min(60_000_000));
        }
    }

    fn on_text(&mut self, key: usize, b: &[u8]) {
        let role = self.conns[key].role;
        match role {
            Role2::Echo => {
                let sent = parse_num(&b[..b.len().min(20)]);
                self.record(sent);
                self.shared.ops.fetch_add(1, Ordering::Relaxed);
                self.conns[key].inflight -= 1;
                if self.plan.rate_per_sender == 0.0 && !self.shared.stop.load(Ordering::Relaxed) {
                    self.send_echo(key);
                }
            }
            Role2::Idle => {
                // One round trip after the welcome, so the server has read
                // from every connection (steady state), then silence.
                if is_type(b, b"welcome") {
                    self.send(key, "{\"type\":\"ping\",\"id\":1}".to_string());
                } else {
                    self.conns[key].joined = true; // the pong
                }
            }
            Role2::Dialer => {
                if is_type(b, b"welcome") {
                    let c = &mut self.conns[key];
                    c.closing = true;
                    if let Phase::Open(ws) = &mut c.phase {
                        let _ = ws.close(&mut c.stream, None);
                    }
                    self.mark_dirty(key);
                }
            }
            Role2::Member { room } | Role2::Publisher { room } => {
                if is_type(b, b"message") {
                    let seq = self
                        .f
                        .seq
                        .find(b)
                        .map(|i| parse_num(&b[i + 6..]))
                        .unwrap_or(0);
                    let c = &mut self.conns[key];
                    if seq <= c.last_seq {
                        self.result.out_of_order += 1;
                    } else {
                        self.result.missing += seq - c.last_seq - 1;
                        c.last_seq = seq;
                    }
                    if seq > self.rooms_max[room] {
                        self.rooms_max[room] = seq;
                    }
                    self.shared.ops.fetch_add(1, Ordering::Relaxed);
                    if let Some(i) = self.f.t.rfind(b) {
                        let sent = parse_num(&b[i + 4..]);
                        self.record(sent);
                        if self.plan.reach {
                            // Every delivery, window or not: which
                            // publishes count is decided at the end, by
                            // their send time.
                            self.result
                                .reach
                                .entry((room, seq))
                                .or_default()
                                .merge(Reach {
                                    sent_us: sent,
                                    last_us: self.now_cache,
                                    count: 1,
                                });
                        }
                    }
                } else if is_type(b, b"ack") {
                    let c = &mut self.conns[key];
                    if !c.joined {
                        // The join ack: messages after this seq are ours.
                        c.joined = true;
                        c.last_seq = self
                            .f
                            .seq
                            .find(b)
                            .map(|i| parse_num(&b[i + 6..]))
                            .unwrap_or(0);
                    } else if matches!(role, Role2::Publisher { .. }) {
                        c.inflight = c.inflight.saturating_sub(1);
                        if let Some(i) = self.f.id.find(b)
                            && self.shared.measuring.load(Ordering::Relaxed)
                        {
                            let sent = parse_num(&b[i + 5..]);
                            let lat = self.now_cache.saturating_sub(sent).max(1);
                            let _ = self.ack_hist.record(lat.min(60_000_000));
                        }
                        let seq = self
                            .f
                            .seq
                            .find(b)
                            .map(|i| parse_num(&b[i + 6..]))
                            .unwrap_or(0);
                        self.shared.room_acked[room].fetch_max(seq, Ordering::SeqCst);
                        self.shared.unacked.fetch_sub(1, Ordering::SeqCst);
                        self.shared.published.fetch_add(1, Ordering::Relaxed);
                        if self.plan.rate_per_sender == 0.0
                            && !self.shared.stop.load(Ordering::Relaxed)
                        {
                            self.publish(key);
                        }
                    }
                } else if is_type(b, b"welcome") {
                    let msg =
                        format!("{{\"type\":\"join\",\"id\":\"j\",\"room\":\"bench-{room}\"}}");
                    self.send(key, msg);
                } else if is_type(b, b"joined") || is_type(b, b"left") || is_type(b, b"presence") {
                    // Other users' membership and presence (an earlier
                    // run's members going offline, say): not ours to judge.
                } else {
                    self.error(format!(
                        "unexpected: {}",
                        String::from_utf8_lossy(&b[..b.len().min(200)])
                    ));
                }
            }
        }
    }

    fn mark_dirty(&mut self, key: usize) {
        let c = &mut self.conns[key];
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(key);
        }
    }

    fn send(&mut self, key: usize, text: String) {
        let c = &mut self.conns[key];
        let Phase::Open(ws) = &mut c.phase else {
            return;
        };
        match ws.write(&mut c.stream, Message::text(text)) {
            Ok(()) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return self.fail(key, format!("write: {e}")),
        }
        self.mark_dirty(key);
    }

    fn send_echo(&mut self, key: usize) {
        let mut s = format!("{:020}", now_us());
        let size = self.plan.size.max(20);
        s.extend(std::iter::repeat_n('x', size - 20));
        self.conns[key].inflight += 1;
        self.send(key, s);
    }

    fn publish(&mut self, key: usize) {
        let Role2::Publisher { room } = self.conns[key].role else {
            return;
        };
        let c = &mut self.conns[key];
        c.inflight += 1;
        c.sent += 1;
        self.shared.unacked.fetch_add(1, Ordering::SeqCst);
        // The id is the send time: the ack carries it back (publish→ack).
        let now = now_us();
        let idem = if self.plan.keys {
            // Unique over processes, workers, connections and sends.
            format!(
                ",\"key\":\"{}-{}-{key}-{}\"",
                std::process::id(),
                self.plan.offset,
                c.sent
            )
        } else {
            String::new()
        };
        let msg = format!(
            "{{\"type\":\"publish\",\"id\":{now},\"room\":\"bench-{room}\"{idem},\"data\":{{\"t\":{now},\"pad\":\"{}\"}}}}",
            self.payload_pad
        );
        self.send(key, msg);
    }

    fn flush(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for key in dirty {
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            c.dirty = false;
            let Phase::Open(ws) = &mut c.phase else {
                continue;
            };
            match ws.flush(&mut c.stream) {
                Ok(()) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(tungstenite::Error::ConnectionClosed) => self.closed(key),
                Err(e) => self.fail(key, format!("flush: {e}")),
            }
        }
    }
}
