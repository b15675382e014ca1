//! The Redis engine: several nodes joined through Redis behave as one
//! server.
//!
//! Each node runs one **bridge** thread ([`bridge`]) that owns the node's
//! two Redis connections, on its own mio loop: a command connection
//! (every command queued during one loop iteration goes out in one write,
//! replies are matched in order) and a pub/sub connection. Cores hand it
//! [`Command`]s over a channel with a waker, exactly as they reach each
//! other; it answers over the bus with [`crate::engine::Event`]s. No Redis
//! I/O ever runs on a core thread.
//!
//! - **Rooms** ([`rooms`]): a publish runs in one Lua script (all the
//!   publishes of one bridge iteration together) that assigns the room's
//!   next seq under its epoch, appends to the room's stream and PUBLISHes
//!   the event on the room's channel; the `ack` goes out once the script
//!   returned and, when this node delivers the room, once it delivered that
//!   seq. A node subscribes to a room's channel while it has members there
//!   (and a short while after), so a node without members receives none of
//!   the room's traffic; it keeps the room's delivered position, fills gaps
//!   from the stream, and hands each message, framed once, to the cores
//!   with members.
//! - **Users** ([`users`]): presence over all nodes (connection counts per
//!   node in the user's hash, a grace per node, offline confirmed by a
//!   script), direct messages and notifications on the user's channel
//!   (subscribed while the user has local connections), statuses.
//! - **Nodes** ([`nodes`]): a heartbeat registers the node with an expiry;
//!   a node whose registration expired is reaped by another (its members
//!   leave, its users go offline). After every (re)connect a node makes
//!   Redis match what it holds. A probe on the pub/sub connection detects
//!   one that silently stopped delivering.
//!
//! What is stored where is in [`scripts`], the payload formats in
//! [`wire`], what rooms and users reach Redis and cores through in [`io`].
//! This module must not touch client sockets or connections; it knows them
//! only as `ConnRef`s.

pub mod bridge;
pub mod conn;
pub mod gather;
pub mod io;
pub mod joins;
pub mod nodes;
pub mod rooms;
pub mod scripts;
pub mod topology;
pub mod users;
pub mod wire;

use crate::engine::Command;
use crossbeam_channel::Sender;
use mio::Waker;
use std::sync::Arc;

/// The cores' end of this node's bridge: a channel of command batches and
/// the bridge's waker; cheap to clone.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: Sender<Vec<Command>>,
    waker: Arc<Waker>,
}

impl Handle {
    /// Sends one batch of commands and wakes the bridge once.
    pub fn send(&self, batch: Vec<Command>) {
        if self.tx.send(batch).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// Asks the bridge to stop (after the cores have drained).
    pub fn stop(&self) {
        self.send(Vec::new());
    }
}

/// What the bridge needs from the configuration, resolved once.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Messages kept per room (`history.size`).
    pub size: usize,
    /// Age limit of history, ms (`history.ttl`).
    pub ttl_ms: u64,
    /// A room without members is forgotten after this long, ms.
    pub idle_ms: u64,
    /// Presence grace, ms.
    pub grace_ms: u64,
    /// Largest `history` page.
    pub max_history: u64,
}
