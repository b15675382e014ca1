//! What both binaries share around the connection code: flags, runtime,
//! listener, signals.

use clap::Parser;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpSocket};

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "corecast protocol subset on tokio (benchmark baseline)"
)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// Worker threads of the tokio multi-thread runtime (default: all CPUs).
    #[arg(long)]
    pub cores: Option<usize>,
    /// Frames each room's broadcast channel holds; a member further behind
    /// is a slow consumer and is closed with 4009. The channel allocates its
    /// slots up front (about 64 bytes each per room).
    #[arg(long, default_value_t = 4096)]
    pub room_capacity: usize,
    /// Announce a user's first join and last leave to the room (`joined` /
    /// `left` events), as corecast does. Off by default: the benchmark
    /// protocol subset has no membership events.
    #[arg(long)]
    pub membership_events: bool,
}

impl Args {
    /// Worker threads to run.
    pub fn workers(&self) -> usize {
        match self.cores {
            Some(n) if n > 0 => n,
            _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// A multi-thread runtime with exactly `workers` worker threads.
pub fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
}

/// Accept backlog requested, as corecast (the kernel caps it at somaxconn).
const BACKLOG: u32 = 65_535;

/// Binds `addr` with SO_REUSEADDR and a large backlog.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// The line benchmark scripts wait for.
pub fn announce(name: &str, listener: &TcpListener, workers: usize) {
    let addr = listener
        .local_addr()
        .map_or_else(|e| format!("?({e})"), |a| a.to_string());
    eprintln!("{name} listening addr={addr} workers={workers}");
}

/// Installs the SIGTERM and SIGINT handlers now (call it before announcing,
/// so a signal sent right after the listening line is not fatal) and
/// returns a future that resolves on either.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

/// Logs an accept error at most once a second (EMFILE can repeat fast).
pub fn accept_error(e: &std::io::Error, last: &mut Option<std::time::Instant>) {
    let now = std::time::Instant::now();
    if last.is_none_or(|t| now.duration_since(t).as_secs() >= 1) {
        eprintln!("accept failed: {e}");
        *last = Some(now);
    }
}
