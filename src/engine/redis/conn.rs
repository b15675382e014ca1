//! Connections to Redis: where to reach it ([`Target`], from the URL) and
//! one non-blocking connection on the bridge's loop ([`RespConn`]).
//!
//! The `redis` crate parses the URL, encodes commands and parses replies
//! (its `Parser` resumes across `WouldBlock`); the socket is ours, on mio,
//! so one bridge thread holds the command and pub/sub connections without
//! blocking on either, pipelines without waiting, and subscribes while
//! messages keep arriving. With `rediss://` the bytes go through rustls
//! over the same non-blocking socket ([`Stream`]). This module must not
//! interpret replies.

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use std::io::{self, Read, Write};
use std::net::ToSocketAddrs;
use std::sync::Arc;

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
    /// The TLS configuration (`rediss://`).
    tls: Option<Arc<ClientConfig>>,
    token: Token,
    stream: Option<Stream>,
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
    /// Why the last attempt failed, while none succeeded since.
    last_failure: Option<String>,
    /// The last failure said what the one before it said (log it quietly).
    pub repeated: bool,
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

/// The socket under a connection: plain TCP, or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

/// A TLS client session over a non-blocking socket. Plaintext written is
/// taken whole into the session (its buffer limit is off: the bridge
/// bounds what it has in flight) and records go out as the socket takes
/// them; commands written during the handshake wait in the session until
/// it completes.
struct TlsStream {
    tcp: TcpStream,
    tls: rustls::ClientConnection,
}

impl Stream {
    /// Whether TLS records wait for the socket.
    fn wants_write(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(t) => t.tls.wants_write(),
        }
    }
}

/// Whether an error only means "not now" on a non-blocking socket (still
/// connecting counts: the writable event comes once connected).
fn not_now(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
    )
}

impl TlsStream {
    /// Writes pending TLS records until done or the socket is full.
    fn write_tls(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.tcp) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return other,
            }
            if self.tls.read_tls(&mut self.tcp)? == 0 {
                return Ok(0);
            }
            if let Err(e) = self.tls.process_new_packets() {
                let _ = self.write_tls(); // the alert, if it goes
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("TLS: {e}"),
                ));
            }
            // Handshake messages, and what waited for the handshake.
            match self.write_tls() {
                Err(e) if !not_now(&e) => return Err(e),
                _ => {}
            }
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.tls.writer().write(buf)?;
        match self.write_tls() {
            Err(e) if !not_now(&e) => Err(e),
            _ => Ok(n),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_tls()
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(_) => Ok(()),
            Stream::Tls(t) => t.flush(),
        }
    }
}

/// A reader that notes why it stopped (the parser only says "error").
struct Reader<'a> {
    stream: &'a mut Stream,
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
    /// A connection (not yet started) to `target`, registered as `token`;
    /// `tls` is the configuration for `rediss://` targets.
    pub fn new(
        name: &'static str,
        target: Target,
        tls: Option<Arc<ClientConfig>>,
        token: Token,
    ) -> RespConn {
        RespConn {
            name,
            target,
            tls,
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
            last_failure: None,
            repeated: false,
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
        let tls = match (&self.tls, self.target.tls) {
            (Some(config), true) => {
                let name = match ServerName::try_from(self.target.host.clone()) {
                    Ok(n) => n,
                    Err(e) => return self.fail(now_ms, format!("TLS server name: {e}")),
                };
                match rustls::ClientConnection::new(config.clone(), name) {
                    Ok(mut c) => {
                        c.set_buffer_limit(None);
                        Some(c)
                    }
                    Err(e) => return self.fail(now_ms, format!("TLS: {e}")),
                }
            }
            (None, true) => return self.fail(now_ms, "rediss:// without a TLS setup".into()),
            (_, false) => None,
        };
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
        self.stream = Some(match tls {
            None => Stream::Plain(stream),
            Some(tls) => Stream::Tls(Box::new(TlsStream { tcp: stream, tls })),
        });
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
        // Ports differ between attempts; the reason without them repeats.
        let gist: String = why.chars().filter(|c| !c.is_ascii_digit()).collect();
        self.repeated = self.last_failure.as_deref() == Some(gist.as_str());
        self.last_failure = Some(gist);
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
        self.written < self.out.len() || self.stream.as_ref().is_some_and(Stream::wants_write)
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
        // TLS records the socket did not take yet.
        match stream.flush() {
            Err(e) if !not_now(&e) && e.kind() != io::ErrorKind::Interrupted => {
                self.fail(now_ms, format!("write: {e}"))
            }
            _ => Progress::Same,
        }
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
                            self.last_failure = None;
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
