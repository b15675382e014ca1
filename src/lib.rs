//! corecast: a real-time WebSocket messaging server.
//!
//! # Architecture
//!
//! One [`core::Core`] event loop per CPU, each pinned to its CPU, each with
//! its own SO_REUSEPORT listener, `mio::Poll` and `Slab` of connections. A
//! connection lives its whole life on the core that accepted it; nothing on
//! the message path takes a lock.
//!
//! Every room has a *home core* (`hash(room) % cores`, [`bus::home_core`])
//! that assigns its `seq` and keeps the set of cores with members. A publish
//! travels `sender core -> home core -> every core with members`, over the
//! [`bus`] (one crossbeam channel of batches plus a `mio::Waker` per core).
//! The home core encodes the `message` event once; the encoded frame is
//! shared by reference across cores and connections, and each connection
//! that got output is flushed once per loop iteration.
//!
//! Layers, from the wire inwards:
//! - [`core`]: sockets, HTTP front door, WebSocket frames (tungstenite),
//!   timers, the loop. The only code that does I/O.
//! - [`proto`]: the protocol without I/O: command parsing (simd-json), event
//!   encoding, the per-connection [`proto::session::Session`], rate limiting.
//! - [`rooms`], [`timer`], [`bus`]: per-core data structures.
//! - [`auth`], [`config`]: JWT and configuration.
//!
//! See `docs/ARCHITECTURE.md` for the data path and the reasons behind each
//! hot-path choice.
#![deny(missing_docs)]

pub mod auth;
pub mod bus;
pub mod config;
pub mod core;
pub mod history;
pub mod metrics;
pub mod presence;
pub mod proto;
pub mod rooms;
pub mod server;
pub mod store;
pub mod timer;

pub use config::Config;
pub use server::{Server, ShutdownHandle};
