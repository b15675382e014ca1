//! corecast: a real-time WebSocket messaging server.
//!
//! # Architecture
//!
//! One [`core::Core`] event loop per CPU, each pinned to its CPU, each with
//! its own SO_REUSEPORT listener, `mio::Poll` and `Slab` of connections. A
//! connection lives its whole life on the core that accepted it; nothing on
//! the message path takes a lock.
//!
//! Sequencing, history, membership and presence sit behind one seam, the
//! [`engine`]: a core turns what its connections want into engine commands
//! and carries out the events the engine sends back. With the memory
//! engine every room has a *home core* (`hash(room) % cores`,
//! [`engine::home_core`]) that assigns its `seq` and keeps the set of cores
//! with members; a publish travels `sender core -> home core -> every core
//! with members`, over the [`bus`] (one crossbeam channel of batches plus a
//! `mio::Waker` per core). With the Redis engine (`[cluster]`) a bridge
//! thread per node sequences through a Lua script in Redis and receives
//! only the rooms the node has members in. Either way the `message` event
//! is framed once; the frame is shared by reference across cores and
//! connections, and each connection that got output is flushed once per
//! loop iteration.
//!
//! Layers, from the wire inwards:
//! - [`core`]: sockets, HTTP front door, WebSocket frames (tungstenite),
//!   timers, the loop, delivery to local connections. The only code that
//!   does socket I/O with clients.
//! - [`proto`]: the protocol without I/O: command parsing (simd-json), event
//!   encoding, the per-connection [`proto::session::Session`], rate limiting.
//! - [`engine`]: the seam and its two engines ([`engine::memory`],
//!   [`engine::redis`]).
//! - [`frame`], [`timer`], [`bus`]: framing, the timer wheel, cross-core
//!   messages.
//! - [`auth`], [`config`], [`tls`]: JWT, configuration, TLS setups.
//!
//! See `docs/ARCHITECTURE.md` for the data path and the reasons behind each
//! hot-path choice.
#![deny(missing_docs)]

pub mod auth;
pub mod bus;
pub mod config;
pub mod core;
pub mod engine;
pub mod frame;
pub mod metrics;
pub mod proto;
pub mod server;
pub mod timer;
pub mod tls;

pub use config::Config;
pub use server::{Server, ShutdownHandle};
