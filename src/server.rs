//! Starting and stopping a server: binds one SO_REUSEPORT listener per core,
//! builds the bus, spawns the pinned core threads, and offers a handle to
//! drain them. Used by the binary and, in-process, by the tests.
//!
//! Owns thread lifecycle only; it must not do any per-connection work.

use crate::bus::{Bus, BusMsg};
use crate::config::{Config, ConfigError};
use crate::core::{Core, CoreInit, Shared, WAKER, listener};
use crate::engine::memory::history::Retention;
use crate::engine::memory::store::{Store, StoreError, StoreHandle, StoreMsg};
use crate::engine::memory::{self, Home};
use crate::engine::{Link, home_core};
use mio::{Poll, Waker};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use tracing::{info, warn};

/// A running server.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    bus: Bus,
    threads: Vec<JoinHandle<()>>,
    store: Option<(StoreHandle, JoinHandle<()>)>,
    bridge: Option<(crate::engine::redis::Handle, JoinHandle<()>)>,
}

/// Triggers a graceful drain of a running server; cheap to clone.
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    bus: Bus,
}

impl ShutdownHandle {
    /// Asks every core to drain: stop accepting, send `reconnect`, close
    /// with 1001, exit once its connections are gone or the deadline passes.
    pub fn shutdown(&self) {
        for core in 0..self.bus.cores() {
            self.bus.send(core, vec![BusMsg::Shutdown]);
        }
    }
}

/// Why a server could not start.
#[derive(Debug)]
pub enum StartError {
    /// The configuration is invalid.
    Config(ConfigError),
    /// Binding or polling failed.
    Io(io::Error),
    /// The history store cannot be opened (or is corrupt).
    Store(StoreError),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "{e}"),
            StartError::Io(e) => write!(f, "{e}"),
            StartError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

impl From<io::Error> for StartError {
    fn from(e: io::Error) -> Self {
        StartError::Io(e)
    }
}

impl Server {
    /// Validates `config`, binds and starts the core threads.
    pub fn start(config: Config) -> Result<Server, StartError> {
        config.validate().map_err(StartError::Config)?;
        let cores = config.core_count();
        // Certificates before anything binds: a bad file stops the start.
        let tls = match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) => Some(Arc::new(
                crate::tls::ServerTls::load(cert, key)
                    .map_err(|e| StartError::Config(ConfigError(format!("tls: {e}"))))?,
            )),
            _ => None,
        };
        // The store loads before anything listens: a corrupt store stops
        // the start, and every room's history is in place for the first
        // client.
        let h = &config.history;
        let opened = if h.uses_store() && !config.cluster.enabled() {
            let retention = Retention {
                size: h.size,
                ttl_ms: h.ttl.saturating_mul(1000),
            };
            let mut rng = fastrand::Rng::new();
            let new_epoch = || format!("{:08x}", rng.u32(..)).into();
            let path = std::path::Path::new(&h.path);
            Some(Store::open(path, retention, new_epoch).map_err(StartError::Store)?)
        } else {
            None
        };
        let requested = config.listen_addr();
        // The first bind resolves port 0; the other cores join its port.
        let first = listener::bind_reuseport(requested)?;
        let addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..cores {
            listeners.push(listener::bind_reuseport(addr)?);
        }
        let mut polls = Vec::with_capacity(cores);
        let mut senders = Vec::with_capacity(cores);
        let mut inboxes = Vec::with_capacity(cores);
        let mut wakers = Vec::with_capacity(cores);
        for _ in 0..cores {
            let poll = Poll::new()?;
            wakers.push(Arc::new(Waker::new(poll.registry(), WAKER)?));
            let (tx, rx) = crossbeam_channel::unbounded();
            senders.push(tx);
            inboxes.push(rx);
            polls.push(poll);
        }
        let bus = Bus::new(senders, wakers);
        let node = config.node_name(addr);
        let mut shared = Shared::new(config, cores, node);
        shared.tls = tls;
        let shared = Arc::new(shared);
        let mut loaded: Vec<Vec<_>> = (0..cores).map(|_| Vec::new()).collect();
        let store = match opened {
            None => None,
            Some((store, rooms)) => {
                for room in rooms {
                    loaded[home_core(&room.room, cores)].push(room);
                }
                Some(store.spawn(bus.clone(), shared.store_failed.clone())?)
            }
        };
        let bridge = match &shared.config.cluster {
            c if c.enabled() => {
                let targets = c
                    .redis
                    .iter()
                    .map(|u| crate::engine::redis::conn::Target::parse(u))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| StartError::Config(ConfigError(format!("cluster.redis: {e}"))))?;
                let target = targets[0].clone();
                let tls = match target.tls {
                    false => None,
                    true => Some(
                        crate::tls::client_config(&crate::tls::ClientFiles {
                            ca: c.tls_ca.clone(),
                            cert: c.tls_cert.clone(),
                            key: c.tls_key.clone(),
                            insecure: target.insecure,
                        })
                        .map_err(|e| {
                            StartError::Config(ConfigError(format!("cluster (rediss://): {e}")))
                        })?,
                    ),
                };
                let h = &shared.config.history;
                let ttl_ms = h.ttl.saturating_mul(1000);
                let settings = crate::engine::redis::Settings {
                    size: h.size,
                    ttl_ms,
                    idle_ms: ttl_ms.max(memory::ROOM_IDLE_MS),
                    grace_ms: shared.config.presence.grace.saturating_mul(1000),
                    max_history: crate::proto::command::HISTORY_LIMIT.1,
                };
                let node = shared.node.clone().expect("a node name in cluster mode");
                let sharded = c.mode == crate::config::ClusterMode::Cluster;
                info!(node = %node, redis = %format!("{}:{}", target.host, target.port), seeds = targets.len(), tls = target.tls, mode = ?c.mode, "cluster mode: joining through Redis");
                Some(crate::engine::redis::bridge::spawn(
                    shared.clone(),
                    bus.clone(),
                    targets,
                    sharded,
                    tls,
                    &node,
                    &c.prefix,
                    settings,
                )?)
            }
            _ => None,
        };
        let cpus = core_affinity::get_core_ids().unwrap_or_default();
        let pin = shared.config.pin && !cpus.is_empty();
        let mut threads = Vec::with_capacity(cores);
        for (id, (((poll, listener), inbox), loaded)) in polls
            .into_iter()
            .zip(listeners)
            .zip(inboxes)
            .zip(loaded)
            .enumerate()
        {
            let now_ms = shared.now_ms();
            let clock = memory::Clock {
                now_ms,
                now_us: now_ms * 1000,
            };
            let (link, home) = match &bridge {
                Some((handle, _)) => (Link::Redis(handle.clone()), None),
                None => {
                    let home = Home::new(
                        id,
                        cores,
                        &shared.config,
                        store.as_ref().map(|(h, _)| h.clone()),
                        loaded,
                        clock,
                    );
                    (Link::Memory, Some(home))
                }
            };
            let init = CoreInit {
                id,
                poll,
                listener,
                inbox,
                bus: bus.clone(),
                shared: shared.clone(),
                link,
                home,
            };
            let cpu = pin.then(|| cpus[id % cpus.len()]);
            let handle = std::thread::Builder::new()
                .name(format!("corecast-core-{id}"))
                .spawn(move || {
                    if let Some(cpu) = cpu
                        && !core_affinity::set_for_current(cpu)
                    {
                        warn!(core = id, cpu = cpu.id, "could not pin core thread");
                    }
                    match Core::new(init) {
                        Ok(core) => core.run(),
                        Err(e) => warn!(core = id, error = %e, "core failed to start"),
                    }
                })?;
            threads.push(handle);
        }
        info!(%addr, cores, pinned = pin, tls = shared.tls.is_some(), "listening");
        Ok(Server {
            addr,
            shared,
            bus,
            threads,
            store,
            bridge,
        })
    }

    /// The bound address (resolves a requested port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listener's TLS, to reload its certificate (SIGHUP); `None`
    /// without `[tls]`.
    pub fn tls(&self) -> Option<Arc<crate::tls::ServerTls>> {
        self.shared.tls.clone()
    }

    /// Number of core loops.
    pub fn cores(&self) -> usize {
        self.threads.len()
    }

    /// A handle that can drain the server from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            bus: self.bus.clone(),
        }
    }

    /// Whether every core loop is alive (what `/health` reports).
    pub fn healthy(&self) -> bool {
        self.shared.all_cores_alive()
    }

    /// Drains and waits for every core to exit.
    pub fn shutdown(self) {
        self.shutdown_handle().shutdown();
        self.join();
    }

    /// Waits for every core to exit (after a drain was triggered), then
    /// for the store to write what is queued and close cleanly.
    pub fn join(self) {
        for t in self.threads {
            if t.join().is_err() {
                warn!("a core thread panicked");
            }
        }
        if let Some((handle, thread)) = self.store {
            handle.send(StoreMsg::Shutdown);
            if thread.join().is_err() {
                warn!("the store thread panicked");
            }
        }
        if let Some((handle, thread)) = self.bridge {
            handle.stop();
            if thread.join().is_err() {
                warn!("the redis bridge thread panicked");
            }
        }
    }
}
