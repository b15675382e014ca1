//! One generator thread: a mio loop driving many non-blocking WebSocket
//! client connections through a scenario.
//!
//! Owns its connections, its histogram and its share of the scenario; it
//! reports progress through the shared atomic counters in [`Shared`] and
//! its final numbers as a [`WorkerResult`]. It must not block: every wait
//! is a poll timeout, and every phase has a deadline.

use crate::Scenario;
use corecast::core::outq::OutQueue;
use corecast::core::sockio::{Io, ReadScratch};
use hdrhistogram::Histogram;
use memchr::memmem::Finder;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Message, Utf8Bytes};

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
    /// Fan-out: seq gaps seen (messages skipped).
    pub missing: u64,
    /// Fan-out: seq going backwards or repeating.
    pub out_of_order: u64,
    /// Fan-out, per room: (highest seq seen, members, sum of members' last seq).
    pub rooms: Vec<(u64, u64, u64)>,
    /// Connections that could not be opened or joined in setup.
    pub setup_failures: u64,
    /// First error text, for the report.
    pub first_error: Option<String>,
}

/// This worker's share of the work.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Server address.
    pub addr: SocketAddr,
    /// Host header.
    pub host: String,
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
    /// Fan-out: messages per second per publisher (0 = flat out).
    pub rate_per_publisher: f64,
    /// Number of rooms (fan-out).
    pub rooms: usize,
    /// Connection index offset (source address spreading).
    pub offset: usize,
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
    stream: TcpStream,
    phase: Phase,
    role: Role2,
    path: &'static str,
    /// Fan-out: joined (ack seen).
    joined: bool,
    /// Fan-out: last seq seen in its room.
    last_seq: u64,
    /// Echo / publisher: messages in flight.
    inflight: usize,
    /// Publisher: messages sent so far (rate mode).
    sent: u64,
    /// Connect scenario: close sent.
    closing: bool,
    dirty: bool,
    /// Input stashed when a read burst stopped early.
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

fn dial(addr: SocketAddr, src: Ipv4Addr) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&SocketAddr::V4(SocketAddrV4::new(src, 0)).into())?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

struct Finders {
    message: Finder<'static>,
    ack: Finder<'static>,
    seq: Finder<'static>,
    t: Finder<'static>,
    welcome: Finder<'static>,
    joined: Finder<'static>,
    left: Finder<'static>,
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
    result: WorkerResult,
    f: Finders,
    cfg: WebSocketConfig,
    dialed: usize,
    payload_pad: String,
    rooms_max: Vec<u64>,
    started: Option<Instant>,
    id: usize,
    scratch: ReadScratch,
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
            result: WorkerResult::default(),
            f: Finders {
                message: Finder::new(b"\"type\":\"message\"").into_owned(),
                ack: Finder::new(b"\"type\":\"ack\"").into_owned(),
                seq: Finder::new(b"\"seq\":").into_owned(),
                t: Finder::new(b"\"t\":").into_owned(),
                welcome: Finder::new(b"\"type\":\"welcome\"").into_owned(),
                joined: Finder::new(b"\"type\":\"joined\"").into_owned(),
                left: Finder::new(b"\"type\":\"left\"").into_owned(),
            },
            cfg: client_config(scenario),
            dialed: 0,
            payload_pad: "x".repeat(pad_len),
            rooms_max: vec![0; rooms],
            started: None,
            id,
            scratch: ReadScratch::default(),
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
        let mut stream = match dial(self.plan.addr, src) {
            Ok(s) => s,
            Err(e) => return self.error(format!("connect from {src}: {e}")),
        };
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut stream,
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
            Scenario::Connect => {} // dialers start at GO
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
            let timeout = if self.plan.rate_per_publisher > 0.0 {
                Duration::from_millis(1)
            } else {
                Duration::from_millis(20)
            };
            self.turn(&mut events, timeout);
            if self.plan.rate_per_publisher > 0.0 {
                self.pace();
            }
        }
        // Drain: every member catches up with the final seq of its room
        // (known once all publishers, of every process, are acknowledged).
        if self.scenario == Scenario::Fanout {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && !self.caught_up() {
                self.turn(&mut events, Duration::from_millis(10));
            }
        }
        self.finish();
    }

    fn expected_conns(&self) -> usize {
        match self.scenario {
            Scenario::Echo | Scenario::Idle => self.plan.conns,
            Scenario::Fanout => {
                self.plan.members.iter().map(|(_, n)| n).sum::<usize>() + self.plan.publishers.len()
            }
            Scenario::Connect => 0,
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
        for (room, r) in rooms.iter_mut().enumerate() {
            r.0 = self.rooms_max[room];
        }
        self.result.rooms = rooms;
        self.result.hist = Some(std::mem::replace(
            &mut self.hist,
            Histogram::new(3).expect("histogram"),
        ));
        let _ = self.id;
    }

    /// First sends of the measured phase.
    fn kick_off(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        match self.scenario {
            Scenario::Echo => {
                for k in keys {
                    for _ in 0..self.plan.inflight {
                        self.send_echo(k);
                    }
                }
            }
            Scenario::Fanout if self.plan.rate_per_publisher == 0.0 => {
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

    /// Rate mode: sends what each publisher owes by now.
    fn pace(&mut self) {
        let Some(started) = self.started else { return };
        let due = (started.elapsed().as_secs_f64() * self.plan.rate_per_publisher) as u64;
        let keys: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.role, Role2::Publisher { .. }))
            .map(|(k, _)| k)
            .collect();
        for k in keys {
            while self.conns.get(k).is_some_and(|c| c.sent < due) {
                self.publish(k);
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
                if let Ok(Some(e)) | Err(e) = c.stream.take_error() {
                    return self.fail(key, format!("connect: {e}"));
                }
                if c.stream.peer_addr().is_err() {
                    return; // not connected yet
                }
                let req = format!(
                    "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                    c.path, self.plan.host
                );
                c.phase = Phase::Handshake {
                    out: req.into_bytes(),
                    written: 0,
                    input: Vec::new(),
                };
                self.on_writable(key);
            }
            Phase::Handshake { out, written, .. } => {
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
        self.scratch.stash(None); // unread input of a dead connection
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
            let ws = WebSocketContext::from_partially_read(rest, Role::Client, Some(self.cfg));
            let c = &mut self.conns[key];
            c.phase = Phase::Open(Box::new(ws));
            self.shared.open.fetch_add(1, Ordering::Relaxed);
        }
        // Frames: read through the thread's scratch (one syscall per burst;
        // tungstenite's own buffer stays small), with the clock read once
        // per burst for latencies.
        self.now_cache = now_us();
        self.scratch.begin(may_skip_eagain);
        loop {
            let Some(c) = self.conns.get_mut(key) else {
                self.scratch.stash(None);
                return;
            };
            let Phase::Open(ws) = &mut c.phase else {
                self.scratch.stash(None);
                return;
            };
            let mut no_queue = OutQueue::default(); // client writes go through tungstenite
            let mut io = Io {
                tcp: &mut c.stream,
                scratch: &mut self.scratch,
                pending: &mut c.pending,
                out: &mut no_queue,
            };
            match ws.read(&mut io) {
                Ok(Message::Text(t)) => self.on_text(key, t),
                Ok(Message::Binary(_)) => {}
                Ok(Message::Close(_)) => {
                    if !c.dirty {
                        c.dirty = true;
                        self.dirty.push(key);
                    }
                }
                Ok(_) => {
                    // Pings: tungstenite queued the pong; make sure it goes out.
                    if !c.dirty {
                        c.dirty = true;
                        self.dirty.push(key);
                    }
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return self.closed(key);
                }
                Err(e) => return self.fail(key, format!("read: {e}")),
            }
        }
    }

    fn closed(&mut self, key: usize) {
        self.scratch.stash(None);
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

    fn on_text(&mut self, key: usize, t: Utf8Bytes) {
        let b = t.as_bytes();
        let role = self.conns[key].role;
        match role {
            Role2::Echo => {
                let sent = parse_num(&b[..b.len().min(20)]);
                self.record(sent);
                self.shared.ops.fetch_add(1, Ordering::Relaxed);
                self.conns[key].inflight -= 1;
                if !self.shared.stop.load(Ordering::Relaxed) {
                    self.send_echo(key);
                }
            }
            Role2::Idle => {
                // One round trip after the welcome, so the server has read
                // from every connection (steady state), then silence.
                if self.f.welcome.find(b).is_some() {
                    self.send(key, "{\"type\":\"ping\",\"id\":1}".to_string());
                } else {
                    self.conns[key].joined = true; // the pong
                }
            }
            Role2::Dialer => {
                if self.f.welcome.find(b).is_some() {
                    let c = &mut self.conns[key];
                    c.closing = true;
                    if let Phase::Open(ws) = &mut c.phase {
                        let _ = ws.close(&mut c.stream, None);
                    }
                    self.mark_dirty(key);
                }
            }
            Role2::Member { room } | Role2::Publisher { room } => {
                if self.f.message.find(b).is_some() {
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
                    if let Some(i) = self.f.t.find(b) {
                        self.record(parse_num(&b[i + 4..]));
                    }
                } else if self.f.ack.find(b).is_some() {
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
                        let seq = self
                            .f
                            .seq
                            .find(b)
                            .map(|i| parse_num(&b[i + 6..]))
                            .unwrap_or(0);
                        self.shared.room_acked[room].fetch_max(seq, Ordering::SeqCst);
                        self.shared.unacked.fetch_sub(1, Ordering::SeqCst);
                        self.shared.published.fetch_add(1, Ordering::Relaxed);
                        if self.plan.rate_per_publisher == 0.0
                            && !self.shared.stop.load(Ordering::Relaxed)
                        {
                            self.publish(key);
                        }
                    }
                } else if self.f.welcome.find(b).is_some() {
                    let msg =
                        format!("{{\"type\":\"join\",\"id\":\"j\",\"room\":\"bench-{room}\"}}");
                    self.send(key, msg);
                } else if self.f.joined.find(b).is_none() && self.f.left.find(b).is_none() {
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
        let n = c.sent;
        self.shared.unacked.fetch_add(1, Ordering::SeqCst);
        let msg = format!(
            "{{\"type\":\"publish\",\"id\":{n},\"room\":\"bench-{room}\",\"data\":{{\"t\":{},\"pad\":\"{}\"}}}}",
            now_us(),
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
