//! A connection's bytes on the wire: plain TCP, or TLS over it (rustls, one
//! session per connection, driven by the core's own loop).
//!
//! Everything above reads and writes plaintext through [`Stream`]'s `Read`
//! and `Write`, so HTTP, SSE and WebSocket code is the same with and without
//! TLS. With TLS:
//! - a read takes the plaintext rustls already holds, and only when there is
//!   none reads the socket (one `read` of up to 4 KiB, rustls's record
//!   buffer) and decrypts; handshake and alert records it produces are sent
//!   at once;
//! - a write first pushes out records still waiting from an earlier write;
//!   when the socket takes them all it hands rustls the plaintext (the
//!   iovecs of the shared, pre-framed frames are encrypted straight into
//!   records: the broadcast is shared up to this step, and this is its one
//!   copy) and sends the records. Records the socket did not take stay in
//!   rustls (at most one write's worth, 64 KiB) and go out on the next
//!   writable event ([`Stream::flush_tls`]); until then a write answers
//!   WouldBlock, so the connection's own queue keeps the backlog, and its
//!   bound, as without TLS;
//! - the start of the stream is looked at before rustls sees it: a PROXY
//!   protocol header from a trusted proxy comes before the ClientHello, and
//!   a plain HTTP request sent to the TLS port is recognised
//!   ([`is_plain_http`]) so the front door can answer it in plain text
//!   instead of with a TLS alert no browser shows.
//!
//! Every write syscall on a socket goes through here, and is counted per
//! thread ([`write_syscalls`]: one core each) for the headroom metrics.
//!
//! It must not parse HTTP or WebSocket frames; the PROXY header is parsed by
//! [`super::proxy`].

use super::proxy;
use mio::net::TcpStream;
use rustls::{ServerConfig, ServerConnection};
use std::cell::Cell;
use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

thread_local! {
    /// Write syscalls made on this thread's sockets (a thread-local: each
    /// core counts its own without sharing a cache line).
    static WRITES: Cell<u64> = const { Cell::new(0) };
}

/// Write syscalls made on this thread's sockets so far.
pub(super) fn write_syscalls() -> u64 {
    WRITES.with(Cell::get)
}

/// The socket, counting each write syscall.
struct Counted<'a>(&'a mut TcpStream);

impl Write for Counted<'_> {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        WRITES.with(|c| c.set(c.get() + 1));
        self.0.write(buf)
    }

    #[inline]
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        WRITES.with(|c| c.set(c.get() + 1));
        self.0.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Most bytes looked at before deciding what the stream starts with (a
/// PROXY v2 header with TLVs plus the record header).
const MAX_START: usize = 16 * 1024;
/// First byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// A connection's socket, with its TLS session if the listener speaks TLS.
pub(super) struct Stream {
    pub(super) tcp: TcpStream,
    tls: Option<Box<Tls>>,
}

struct Tls {
    conn: ServerConnection,
    start: Start,
    /// The client address a trusted proxy's PROXY header gave.
    proxy_source: Option<IpAddr>,
    /// close_notify was queued.
    closed: bool,
}

enum Start {
    /// Nothing decided yet: the bytes read so far, and whether a PROXY
    /// header may come first (the peer is a trusted proxy).
    Fresh { head: Vec<u8>, expect_proxy: bool },
    /// TLS records.
    Tls,
    /// The client spoke plain HTTP: what is written goes out unencrypted
    /// (the error response), what is read is the client's raw bytes.
    Plain,
}

/// The error a read returns when a TLS stream started with plain HTTP.
#[derive(Debug)]
struct PlainHttp;

impl std::fmt::Display for PlainHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("plain HTTP on the TLS port")
    }
}

impl std::error::Error for PlainHttp {}

/// Whether a read failed because the client sent plain HTTP to the TLS
/// port (answer in plain text, then close).
pub(super) fn is_plain_http(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<PlainHttp>())
}

impl Stream {
    /// A plain TCP stream.
    pub(super) fn plain(tcp: TcpStream) -> Stream {
        Stream { tcp, tls: None }
    }

    /// A TLS stream on `tcp`; `expect_proxy`: the peer is a trusted proxy
    /// that may send a PROXY header first.
    pub(super) fn tls(
        tcp: TcpStream,
        config: Arc<ServerConfig>,
        expect_proxy: bool,
    ) -> Result<Stream, rustls::Error> {
        Ok(Stream {
            tcp,
            tls: Some(Box::new(Tls {
                conn: ServerConnection::new(config)?,
                start: Start::Fresh {
                    head: Vec::new(),
                    expect_proxy,
                },
                proxy_source: None,
                closed: false,
            })),
        })
    }

    /// Whether this stream is TLS.
    #[inline]
    pub(super) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The client address from a PROXY header read before TLS.
    pub(super) fn proxy_source(&self) -> Option<IpAddr> {
        self.tls.as_ref().and_then(|t| t.proxy_source)
    }

    /// The TCP peer's address.
    pub(super) fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.peer_addr()
    }

    /// Sends records still waiting in the TLS session. `Ok(true)`: nothing
    /// is left (always, without TLS); `Ok(false)`: the socket is full, the
    /// next writable event continues.
    #[inline]
    pub(super) fn flush_tls(&mut self) -> io::Result<bool> {
        match self.tls.as_deref_mut() {
            Some(t) if matches!(t.start, Start::Tls) => t.flush(&mut self.tcp),
            _ => Ok(true),
        }
    }

    /// Ends our side: close_notify (TLS), then the TCP half-close. Callers
    /// first see [`Stream::flush_tls`] return `Ok(true)`, so no data is cut.
    /// When the socket does not take the close_notify at once, the TCP
    /// half-close is left out: the alert goes on the next writable event,
    /// and a TLS peer takes it as the end.
    pub(super) fn shutdown_write(&mut self) {
        if self.close_notify() {
            let _ = self.tcp.shutdown(std::net::Shutdown::Write);
        }
    }

    /// Queues and tries once to send the TLS close_notify (when the stream
    /// is going away; nothing without TLS or before the handshake is done:
    /// a handshake cut short by its deadline just ends).
    /// `false`: the socket did not take all of it.
    pub(super) fn close_notify(&mut self) -> bool {
        if let Some(t) = self.tls.as_deref_mut()
            && matches!(t.start, Start::Tls)
            && !t.conn.is_handshaking()
            && !t.closed
        {
            t.closed = true;
            t.conn.send_close_notify();
            return t.flush(&mut self.tcp).unwrap_or(true);
        }
        true
    }
}

impl Tls {
    /// `Ok(true)` when no record is left to send.
    fn flush(&mut self, tcp: &mut TcpStream) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut Counted(tcp)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Decrypts what was read, sends what the session wants to send.
    fn process(&mut self, tcp: &mut TcpStream) -> io::Result<()> {
        if let Err(e) = self.conn.process_new_packets() {
            // rustls queued an alert saying why: best effort.
            let _ = self.conn.write_tls(&mut Counted(tcp));
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        self.flush(tcp).map(|_| ())
    }

    /// Reads the stream's first bytes and decides what it is. `Ok(None)`:
    /// decided (read on); `Ok(Some(0))`: EOF before anything.
    fn start(&mut self, tcp: &mut TcpStream) -> io::Result<Option<usize>> {
        let Start::Fresh { head, expect_proxy } = &mut self.start else {
            return Ok(None);
        };
        if head.len() >= MAX_START {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no TLS record in the first 16 KiB",
            ));
        }
        let old = head.len();
        head.resize(old + 4096, 0);
        let got = tcp.read(&mut head[old..]);
        head.truncate(old + *got.as_ref().unwrap_or(&0));
        if got? == 0 {
            return Ok(Some(0));
        }
        if *expect_proxy {
            match proxy::parse_header(head) {
                proxy::Header::Incomplete => return Ok(None),
                proxy::Header::None => {}
                proxy::Header::Proxy { len, source } => {
                    head.drain(..len);
                    self.proxy_source = source;
                }
                proxy::Header::Bad(m) => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, m));
                }
            }
            *expect_proxy = false;
            if head.is_empty() {
                return Ok(None);
            }
        }
        match head[0] {
            TLS_HANDSHAKE => {}
            b if b.is_ascii_uppercase() => {
                self.start = Start::Plain;
                return Err(io::Error::new(io::ErrorKind::InvalidData, PlainHttp));
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "not a TLS handshake",
                ));
            }
        }
        let head = std::mem::take(head);
        self.start = Start::Tls;
        let mut rest = &head[..];
        while !rest.is_empty() {
            if self.conn.read_tls(&mut rest)? == 0 {
                break;
            }
            self.process(tcp)?;
        }
        Ok(None)
    }

    fn read(&mut self, tcp: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.start {
                Start::Tls => {}
                Start::Plain => return tcp.read(buf),
                Start::Fresh { .. } => {
                    if let Some(n) = self.start(tcp)? {
                        return Ok(n);
                    }
                    continue;
                }
            }
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n), // 0: close_notify received
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            let n = self.conn.read_tls(tcp)?;
            self.process(tcp)?;
            if n == 0 {
                // EOF: what was decrypted before it still counts.
                return match self.conn.reader().read(buf) {
                    Ok(n) => Ok(n),
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::UnexpectedEof
                        ) =>
                    {
                        Ok(0)
                    }
                    Err(e) => Err(e),
                };
            }
        }
    }

    fn write(&mut self, tcp: &mut TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self.start {
            Start::Tls => {}
            Start::Plain => return Counted(tcp).write_vectored(bufs),
            Start::Fresh { .. } => {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "TLS has not started",
                ));
            }
        }
        if !self.flush(tcp)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.conn.writer().write_vectored(bufs)?;
        // Records the socket does not take now wait for the writable event.
        self.flush(tcp)?;
        Ok(n)
    }
}

impl Read for Stream {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.tls.as_deref_mut() {
            None => self.tcp.read(buf),
            Some(t) => t.read(&mut self.tcp, buf),
        }
    }
}

impl Write for Stream {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.tls.as_deref_mut() {
            None => Counted(&mut self.tcp).write(buf),
            Some(t) => t.write(&mut self.tcp, &[IoSlice::new(buf)]),
        }
    }

    #[inline]
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self.tls.as_deref_mut() {
            None => Counted(&mut self.tcp).write_vectored(bufs),
            Some(t) => t.write(&mut self.tcp, bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
