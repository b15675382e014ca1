//! The cross-core bus: one unbounded crossbeam channel of message batches
//! per core, paired with that core's `mio::Waker`.
//!
//! A core collects everything it has for another core during one loop
//! iteration in its [`Outbox`] and sends it as one batch with one wake-up.
//! Payloads are already encoded as complete WebSocket frames and
//! reference-counted (`Bytes`), so a broadcast crosses cores and reaches
//! every connection without being copied. Side threads (the store, the
//! Redis bridge) reach the cores the same way. The bus must not hold
//! protocol logic: it only names the messages and moves them.

use crate::engine::memory::HomeMsg;
use crate::engine::memory::store::HomeSink;
use crate::engine::{AggRef, Event};
use crossbeam_channel::{Receiver, Sender};
use mio::Waker;
use std::sync::Arc;

/// One message between cores (or from a side thread to a core).
#[derive(Debug)]
pub enum BusMsg {
    /// For the memory engine's home part of the receiving core.
    Home(HomeMsg),
    /// For the receiving core's socket layer.
    Event(Event),
    /// Send a snapshot of your counters to `agg`.
    StatsRequest {
        /// Where it goes.
        agg: AggRef,
    },
    /// A core's snapshot, to a gathering core.
    StatsReply {
        /// The gathering.
        token: u64,
        /// The snapshot.
        snapshot: Box<crate::metrics::Snapshot>,
    },
    /// Start draining: stop accepting, tell clients to reconnect, exit.
    Shutdown,
}

/// Senders and wakers of every core; cheap to clone.
#[derive(Clone, Debug)]
pub struct Bus {
    senders: Arc<[Sender<Vec<BusMsg>>]>,
    wakers: Arc<[Arc<Waker>]>,
}

impl Bus {
    /// A bus over the given per-core senders and wakers (same order).
    pub fn new(senders: Vec<Sender<Vec<BusMsg>>>, wakers: Vec<Arc<Waker>>) -> Self {
        assert_eq!(senders.len(), wakers.len());
        Bus {
            senders: senders.into(),
            wakers: wakers.into(),
        }
    }

    /// Number of cores.
    pub fn cores(&self) -> usize {
        self.senders.len()
    }

    /// Sends a batch to `core` and wakes it. A core that has exited is
    /// ignored (shutdown).
    pub fn send(&self, core: usize, batch: Vec<BusMsg>) {
        if self.senders[core].send(batch).is_ok() {
            let _ = self.wakers[core].wake();
        }
    }
}

/// Per-core batching of outgoing bus messages.
#[derive(Debug)]
pub struct Outbox {
    pending: Vec<Vec<BusMsg>>,
}

impl Outbox {
    /// An outbox for `cores` destinations.
    pub fn new(cores: usize) -> Self {
        Outbox {
            pending: (0..cores).map(|_| Vec::new()).collect(),
        }
    }

    /// Queues `msg` for `core`.
    pub fn push(&mut self, core: usize, msg: BusMsg) {
        self.pending[core].push(msg);
    }

    /// Sends every non-empty batch (one wake-up per destination).
    pub fn flush(&mut self, bus: &Bus) {
        for (core, batch) in self.pending.iter_mut().enumerate() {
            if !batch.is_empty() {
                let cap = batch.capacity();
                bus.send(
                    core,
                    std::mem::replace(batch, Vec::with_capacity(cap.min(256))),
                );
            }
        }
    }
}

/// Receiving end of a core: its channel.
pub type Inbox = Receiver<Vec<BusMsg>>;

impl HomeSink for Bus {
    fn send_home(&self, home: usize, msgs: Vec<HomeMsg>) {
        self.send(home, msgs.into_iter().map(BusMsg::Home).collect());
    }
}
