//! Connections to Redis: where to reach it ([`Target`], from the URL) and
//! one non-blocking connection on the bridge's loop ([`RespConn`]).
//!
//! The `redis` crate parses the URL, encodes commands and parses replies
//! (its `Parser` resumes across `WouldBlock`); the socket is ours, on mio,
//! so one bridge thread holds the command and pub/sub connections without
//! blocking on either, pipelines without waiting, and subscribes while
//! messages keep arriving. This module must not interpret replies.

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use std::io::{self, Read, Write};
use std::net::ToSocketAddrs;

/// Where and how to reach Redis, from a `redis://` or `rediss://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS (`rediss://`).
    pub tls: bool,
    /// TLS without verifying the server's certificate (`#insecure`).
    pub insecure: bool,
    /// Database index (`/DB`).
    pub db: i64,
    /// ACL user name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
}

impl Target {
    /// Parses a Redis URL (with the `redis` crate's rules; `rediss://`
    /// is read as `redis://` plus TLS, since the TLS is ours).
    pub fn parse(url: &str) -> Result<Target, String> {
        use redis::IntoConnectionInfo;
        let (plain, tls, insecure) = match url.strip_prefix("rediss://") {
            Some(rest) => match rest.split_once('#') {
                Some((rest, "insecure")) => (format!("redis://{rest}"), true, true),
                Some((_, f)) => {
                    return Err(format!("{url:?}: unknown fragment #{f} (only #insecure)"));
                }
                None => (format!("redis://{rest}"), true, false),
            },
            None => (url.to_string(), false, false),
        };
        let info = plain
            .as_str()
            .into_connection_info()
            .map_err(|e| format!("{url:?} is not a Redis URL: {e}"))?;
        let (host, port) = match info.addr() {
            redis::ConnectionAddr::Tcp(h, p) => (h.clone(), *p),
            other => return Err(format!("{url:?}: {other:?} is not a TCP address")),
        };
        let r = info.redis_settings();
        Ok(Target {
            host,
            port,
            tls,
            insecure,
            db: r.db(),
            username: r.username().map(String::from),
            password: r.password().map(String::from),
        })
    }
}

/// A non-blocking connection to Redis on the bridge's mio loop: bytes out
/// (commands appended with `redis::Cmd::write_packed_command`, so every
/// command queued during one iteration goes out in one write — pipelining
/// without waiting for replies), values in (parsed with `redis::Parser`,
/// which keeps its partial state across `WouldBlock`), and the handshake
/// (AUTH, SELECT, CLIENT SETNAME, SCRIPT LOAD) whose replies it consumes
/// itself. It knows nothing of what the commands mean: the bridge matches
/// replies to commands in order.
pub struct RespConn {
    name: &'static str,
    target: Target,
    token: Token,
    stream: Option<TcpStream>,
    state: ConnState,
    out: Vec<u8>,
    written: usize,
    parser: redis::Parser,
    /// Handshake replies still to come.
    handshake: usize,
    backoff_ms: u64,
    /// When the next connection attempt may start (monotonic ms).
    retry_at_ms: u64,
    /// When the current attempt must have completed its handshake.
    deadline_ms: u64,
    /// Bytes read from Redis (metrics, interest tests).
    pub bytes_in: u64,
    /// Successful connects.
    pub connects: u64,
    /// Reading stopped at [`MAX_VALUES_PER_EVENT`] with more to read: the
    /// bridge calls [`RespConn::on_event`] again without waiting for
    /// readiness (edge-triggered epoll would not report it again).
    pub more: bool,
    /// Which of the resolved addresses the next attempt uses.
    next_addr: usize,
}

/// Where a [`RespConn`] is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Not connected; retrying at `retry_at_ms`.
    Down,
    /// TCP connect or handshake in progress.
    Connecting,
    /// Handshake done: commands may be sent.
    Ready,
}

/// What happened on a connection during [`RespConn::on_event`].
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Nothing changed state.
    Same,
    /// The handshake finished: the connection is ready.
    Ready,
    /// The connection failed (it is down now; the error text says why).
    Failed(String),
}

/// First retry after a failure, ms; doubled up to [`MAX_BACKOFF_MS`].
const MIN_BACKOFF_MS: u64 = 100;
/// Longest wait between connection attempts, ms.
const MAX_BACKOFF_MS: u64 = 2000;
/// A connect plus handshake that takes longer fails, ms.
const CONNECT_TIMEOUT_MS: u64 = 3000;
/// Values read per readiness event before others get a turn (a pub/sub
/// flood must not starve the command replies).
const MAX_VALUES_PER_EVENT: usize = 8192;
/// Written bytes at the front of the out buffer kept before it is
/// compacted (under steady backpressure it would otherwise only grow).
const COMPACT_AFTER: usize = 256 * 1024;

/// A reader that notes why it stopped (the parser only says "error").
struct Reader<'a> {
    stream: &'a mut TcpStream,
    would_block: bool,
    bytes: u64,
}

impl Read for Reader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.stream.read(buf) {
                Ok(n) => {
                    self.bytes += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if e.kind() == io::ErrorKind::WouldBlock {
                        self.would_block = true;
                    }
                    return Err(e);
                }
            }
        }
    }
}

impl RespConn {
    /// A connection (not yet started) to `target`, registered as `token`.
    pub fn new(name: &'static str, target: Target, token: Token) -> RespConn {
        RespConn {
            name,
            target,
            token,
            stream: None,
            state: ConnState::Down,
            out: Vec::with_capacity(64 * 1024),
            written: 0,
            parser: redis::Parser::new(),
            handshake: 0,
            backoff_ms: MIN_BACKOFF_MS,
            retry_at_ms: 0,
            deadline_ms: 0,
            bytes_in: 0,
            connects: 0,
            more: false,
            next_addr: 0,
        }
    }

    /// Its state.
    pub fn state(&self) -> ConnState {
        self.state
    }

    /// Whether commands may be sent.
    pub fn ready(&self) -> bool {
        self.state == ConnState::Ready
    }

    /// When a down connection should try again, or a connecting one gives
    /// up (monotonic ms); `None` when ready.
    pub fn next_deadline(&self) -> Option<u64> {
        match self.state {
            ConnState::Down => Some(self.retry_at_ms),
            ConnState::Connecting => Some(self.deadline_ms),
            ConnState::Ready => None,
        }
    }

    /// Starts a connection attempt when one is due: TCP connect, then the
    /// handshake (AUTH, SELECT, CLIENT SETNAME, then `extra`, whose
    /// replies are consumed too). Name resolution blocks this (bridge)
    /// thread, never a core.
    pub fn try_connect(
        &mut self,
        registry: &Registry,
        now_ms: u64,
        client_name: &str,
        extra: &[redis::Cmd],
    ) -> Progress {
        if self.state != ConnState::Down || now_ms < self.retry_at_ms {
            return Progress::Same;
        }
        let addrs: Vec<std::net::SocketAddr> =
            match (self.target.host.as_str(), self.target.port).to_socket_addrs() {
                Ok(a) => a.collect(),
                Err(e) => return self.fail(now_ms, format!("cannot resolve the Redis host: {e}")),
            };
        if addrs.is_empty() {
            return self.fail(now_ms, "no address for the Redis host".into());
        }
        // Each attempt takes the next address (a name with an IPv6 and an
        // IPv4 address, of which Redis listens on one).
        let addr = addrs[self.next_addr % addrs.len()];
        self.next_addr = self.next_addr.wrapping_add(1);
        if self.target.tls {
            return self.fail(
                now_ms,
                "rediss:// (TLS to Redis) is not built yet; use redis://".into(),
            );
        }
        let mut stream = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => return self.fail(now_ms, format!("connect {addr}: {e}")),
        };
        let _ = stream.set_nodelay(true);
        if let Err(e) = registry.register(
            &mut stream,
            self.token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return self.fail(now_ms, format!("register: {e}"));
        }
        self.stream = Some(stream);
        self.state = ConnState::Connecting;
        self.deadline_ms = now_ms + CONNECT_TIMEOUT_MS;
        self.parser = redis::Parser::new();
        self.out.clear();
        self.written = 0;
        self.handshake = 0;
        let t = self.target.clone();
        if let Some(password) = &t.password {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = &t.username {
                auth.arg(user);
            }
            auth.arg(password);
            self.push_handshake(&auth);
        }
        if t.db != 0 {
            self.push_handshake(redis::cmd("SELECT").arg(t.db));
        }
        self.push_handshake(redis::cmd("CLIENT").arg("SETNAME").arg(client_name));
        for c in extra {
            self.push_handshake(c);
        }
        Progress::Same
    }

    fn push_handshake(&mut self, cmd: &redis::Cmd) {
        cmd.write_packed_command(&mut self.out);
        self.handshake += 1;
    }

    fn fail(&mut self, now_ms: u64, why: String) -> Progress {
        self.stream = None; // dropping closes the socket and leaves epoll
        if self.state == ConnState::Ready {
            self.backoff_ms = MIN_BACKOFF_MS;
        }
        self.state = ConnState::Down;
        // Jittered, so several nodes do not reconnect in lockstep.
        let jitter = fastrand::u64(0..=self.backoff_ms / 2);
        self.retry_at_ms = now_ms + self.backoff_ms + jitter;
        self.backoff_ms = (self.backoff_ms * 2).min(MAX_BACKOFF_MS);
        self.out.clear();
        self.written = 0;
        Progress::Failed(format!("redis {} connection: {why}", self.name))
    }

    /// Gives up on the connection (a reply timed out, a probe was lost).
    pub fn reset(&mut self, now_ms: u64, why: &str) -> Progress {
        if self.state == ConnState::Down {
            return Progress::Same;
        }
        self.fail(now_ms, why.to_string())
    }

    /// A connect or handshake that took too long fails.
    pub fn check_deadline(&mut self, now_ms: u64) -> Progress {
        if self.state == ConnState::Connecting && now_ms >= self.deadline_ms {
            return self.fail(now_ms, "connect/handshake timed out".into());
        }
        Progress::Same
    }

    /// Appends a command (sent at the next [`RespConn::flush`]).
    pub fn send(&mut self, cmd: &redis::Cmd) {
        cmd.write_packed_command(&mut self.out);
    }

    /// Whether bytes wait to be written.
    pub fn pending_out(&self) -> bool {
        self.written < self.out.len()
    }

    /// Writes what is queued, until done or the socket is full.
    pub fn flush(&mut self, now_ms: u64) -> Progress {
        let Some(stream) = self.stream.as_mut() else {
            return Progress::Same;
        };
        while self.written < self.out.len() {
            match stream.write(&self.out[self.written..]) {
                Ok(0) => return self.fail(now_ms, "write returned 0".into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.compact();
                    return Progress::Same;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Still connecting: the writable event retries.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Progress::Same,
                Err(e) => return self.fail(now_ms, format!("write: {e}")),
            }
        }
        self.out.clear();
        self.written = 0;
        Progress::Same
    }

    /// Drops the written front of the out buffer once it is large.
    fn compact(&mut self) {
        if self.written >= COMPACT_AFTER && self.written * 2 >= self.out.len() {
            self.out.drain(..self.written);
            self.written = 0;
        }
    }

    /// Handles readiness: writes what is queued, reads every complete value
    /// into `values` (handshake replies are consumed here).
    pub fn on_event(&mut self, now_ms: u64, values: &mut Vec<redis::Value>) -> Progress {
        if self.stream.is_none() {
            return Progress::Same;
        }
        if let Progress::Failed(e) = self.flush(now_ms) {
            return Progress::Failed(e);
        }
        let mut progress = Progress::Same;
        self.more = false;
        let mut taken = 0;
        loop {
            if taken >= MAX_VALUES_PER_EVENT {
                self.more = true;
                return progress;
            }
            let stream = self.stream.as_mut().expect("checked");
            let mut reader = Reader {
                stream,
                would_block: false,
                bytes: 0,
            };
            let result = self.parser.parse_value(&mut reader);
            self.bytes_in += reader.bytes;
            match result {
                Ok(v) => {
                    if self.handshake > 0 {
                        self.handshake -= 1;
                        if let redis::Value::ServerError(e) = &v {
                            return self.fail(now_ms, format!("handshake refused: {e:?}"));
                        }
                        if self.handshake == 0 {
                            self.state = ConnState::Ready;
                            self.backoff_ms = MIN_BACKOFF_MS;
                            self.connects += 1;
                            progress = Progress::Ready;
                        }
                        continue;
                    }
                    taken += 1;
                    values.push(v);
                }
                Err(_) if reader.would_block => return progress,
                Err(e) => {
                    let why = if e.is_io_error() {
                        format!("closed: {e}")
                    } else {
                        format!("unreadable reply: {e}")
                    };
                    return self.fail(now_ms, why);
                }
            }
        }
    }
}
