//! Listening sockets: one per core on the same address with SO_REUSEPORT,
//! so the kernel spreads accepted connections over the cores.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;

/// Accept backlog requested; the kernel caps it at `net.core.somaxconn`.
pub const BACKLOG: i32 = 65_535;

/// Binds a non-blocking listener on `addr` with SO_REUSEADDR and
/// SO_REUSEPORT; an error names the address (`listen` in the config).
pub fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr} (listen): {e}")))
}

fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}
