//! A generator connection's socket: plain TCP or TCP carrying a rustls
//! client session ([`Sock`]), and dialing from a chosen source address.
//! It must not know about WebSocket or the scenarios.

use mio::net::TcpStream;
use rustls::ClientConnection;
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// A connection's bytes on the wire: plain TCP, or TLS over it. `Read`
/// and `Write` are plaintext either way, so tungstenite and the frame
/// parser do not know the difference.
///
/// With TLS a read hands out the plaintext rustls already holds, and only
/// when there is none reads the socket (one `read_tls`, up to 4 KiB) and
/// decrypts; it answers WouldBlock only once the socket is drained, so a
/// short read says nothing (see `Worker::read_frames` in worker.rs). A write first
/// pushes out records still waiting; if the socket does not take them it
/// answers WouldBlock (the backlog stays in tungstenite's buffer, bounded
/// as without TLS), else rustls encrypts the plaintext and the records go
/// out; those the socket does not take wait for the writable event
/// ([`Sock::flush_tls`]).
pub(crate) struct Sock {
    pub(crate) tcp: TcpStream,
    pub(crate) tls: Option<Box<ClientConnection>>,
}

impl Sock {
    /// Sends the TLS records waiting in the session; `Ok(true)` when
    /// nothing is left (always without TLS).
    pub(crate) fn flush_tls(&mut self) -> io::Result<bool> {
        match self.tls.as_deref_mut() {
            None => Ok(true),
            Some(t) => tls_flush(t, &mut self.tcp),
        }
    }
}

fn tls_flush(t: &mut ClientConnection, tcp: &mut TcpStream) -> io::Result<bool> {
    while t.wants_write() {
        match t.write_tls(tcp) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn tls_read(t: &mut ClientConnection, tcp: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match t.reader().read(buf) {
            Ok(n) => return Ok(n), // 0: close_notify received
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(e),
        }
        let n = t.read_tls(tcp)?;
        if let Err(e) = t.process_new_packets() {
            // rustls queued an alert saying why: best effort.
            let _ = t.write_tls(tcp);
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        // Handshake records (and, once it is done, the request rustls held).
        tls_flush(t, tcp)?;
        if n == 0 {
            // EOF: what was decrypted before it still counts.
            return match t.reader().read(buf) {
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

impl Read for Sock {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.tls.as_deref_mut() {
            None => self.tcp.read(buf),
            Some(t) => tls_read(t, &mut self.tcp, buf),
        }
    }
}

impl Write for Sock {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.tls.as_deref_mut() {
            None => self.tcp.write(buf),
            Some(t) => {
                if !tls_flush(t, &mut self.tcp)? {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                // Before the handshake is done rustls holds the plaintext
                // (the upgrade request) and sends it after the Finished.
                let n = t.writer().write(buf)?;
                tls_flush(t, &mut self.tcp)?;
                if n == 0 && !buf.is_empty() {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.flush_tls()? {
            true => Ok(()),
            false => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

pub(crate) fn dial(addr: SocketAddr, src: Ipv4Addr) -> io::Result<TcpStream> {
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
