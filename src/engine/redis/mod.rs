//! The Redis engine: several nodes joined through Redis behave as one
//! server. (Being built; see `bridge`.)

pub mod conn;

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
}
