//! The durable history store: one thread that owns an embedded fjall
//! database and writes every room message into it with group commit.
//!
//! Home cores send [`StoreMsg::Append`] over a crossbeam channel (one send
//! per publish, no lock). The store thread takes everything queued, writes
//! it as one batch, and (when any message in it asked for `sync`) makes the
//! batch durable with one `fdatasync` before it tells the home cores, over
//! the bus, which seqs are safe ([`HomeMsg::Stored`]). While that fsync runs
//! the next messages queue up, so one fsync covers every message that
//! arrived during the previous one: throughput grows with load instead of
//! being capped at one fsync per message.
//!
//! Layout (three fjall keyspaces):
//! - `msgs`: `room 0x00 seq(u64 BE)` → `ts(u64 BE) ++ [0x00 len(u8) key]
//!   ++ message event JSON`, the bracket present when the publish had an
//!   idempotency key (JSON never starts with 0x00, so records written
//!   before keys existed read the same). Room names never contain 0x00, so
//!   one room's keys are one range.
//! - `rooms`: `room` → `mode u8 ('s' sync / 'a' async) ++ len(epoch) u8 ++
//!   epoch ++ last seq(u64 BE)`, so seq and epoch survive even when
//!   retention has emptied the room.
//! - `meta`: `state` → `clean` after an orderly stop, `run` while running.
//!   Starting after an unclean stop gives every room last written in async
//!   mode a new epoch: background writes may have lost acknowledged
//!   messages, so old positions must not claim to recover. Sync rooms keep
//!   theirs: nothing was acknowledged before it was on disk.
//!
//! Retention is applied here too, in the background: the count bound with
//! each append (a tombstone per message beyond `history.size`), the age
//! bound in a periodic sweep. Loading at start keeps the same bounds, so
//! recovery reaches back equally far before and after a restart.
//!
//! A failed write (disk full, I/O error) is never reported as stored: the
//! rooms of that batch get [`HomeMsg::StoreFailed`] (their publishers get
//! `error internal` and the home core rolls the seq back) and the store
//! ignores their further appends until the home core sends
//! [`StoreMsg::Reset`]. fjall refuses every write after a failed fsync
//! (it cannot know what reached the disk), so from then on sync publishes
//! fail until a restart; `/health` reports the store as failed.
//!
//! This module must not touch connections or frames on the wire; it only
//! stores and loads what the home cores give it.

use super::HomeMsg;
use super::history::{Entry, Retention};
use crate::frame::{header_len, text_frame};
use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use fjall::{Database, Keyspace, PersistMode};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// Most messages written in one batch (one fsync).
const MAX_BATCH: usize = 8192;
/// Most messages queued for the store; beyond it publishes are refused
/// with `overloaded` (memory stays bounded when the disk stalls).
pub const QUEUE_BOUND: usize = 131_072;
/// Rooms handled per step of the age sweep.
const SWEEP_ROOMS_PER_PASS: usize = 256;
/// How often async mode fsyncs what it has written (bounds the loss on a
/// power failure; a process crash loses only what was still queued).
const ASYNC_SYNC_EVERY: Duration = Duration::from_secs(1);

/// A message for the store thread.
#[derive(Debug)]
pub enum StoreMsg {
    /// Store one sequenced message.
    Append(Append),
    /// The home core has failed the room's pending messages and rolled its
    /// seq back: accept appends for it again, from what is on disk.
    Reset {
        /// Room.
        room: Arc<str>,
    },
    /// Write everything queued, mark the store clean and exit.
    Shutdown,
}

/// One sequenced message.
#[derive(Debug)]
pub struct Append {
    /// Home core of the room (where [`HomeMsg::Stored`] goes).
    pub home: usize,
    /// Room.
    pub room: Arc<str>,
    /// The room's epoch.
    pub epoch: Arc<str>,
    /// The message's seq.
    pub seq: u64,
    /// Its timestamp, Unix ms.
    pub ts: u64,
    /// The `message` event, framed.
    pub frame: Bytes,
    /// Length of the WebSocket header in `frame`.
    pub header_len: u8,
    /// The ack waits for this message to be durable.
    pub sync: bool,
    /// The publish's idempotency key.
    pub key: Option<Arc<str>>,
}

/// A room as loaded at start.
#[derive(Debug)]
pub struct LoadedRoom {
    /// Room.
    pub room: Arc<str>,
    /// Its epoch.
    pub epoch: Arc<str>,
    /// Its last seq.
    pub seq: u64,
    /// Its retained messages, oldest first, contiguous, ending at `seq`
    /// (or empty).
    pub entries: Vec<Entry>,
    /// The idempotency keys of those messages: (key, seq, ts), oldest
    /// first.
    pub keys: Vec<(Arc<str>, u64, u64)>,
}

/// Why the store could not be opened.
#[derive(Debug)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

/// Where the store thread tells home cores what became durable (the bus).
pub trait HomeSink: Send + 'static {
    /// Sends `msgs` to the home part of core `home`.
    fn send_home(&self, home: usize, msgs: Vec<HomeMsg>);
}

/// The cores' end of the store: a sender, cheap to clone.
#[derive(Debug, Clone)]
pub struct StoreHandle {
    tx: Sender<StoreMsg>,
}

/// Why a message could not be queued for the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// [`QUEUE_BOUND`] messages are waiting: the disk is not keeping up.
    Full,
    /// The store thread is gone.
    Gone,
}

impl StoreHandle {
    /// Queues an append without waiting; a full queue is refused (the
    /// publisher gets `overloaded`) rather than grown without bound.
    pub fn try_send(&self, msg: StoreMsg) -> Result<(), QueueError> {
        self.tx.try_send(msg).map_err(|e| match e {
            crossbeam_channel::TrySendError::Full(_) => QueueError::Full,
            crossbeam_channel::TrySendError::Disconnected(_) => QueueError::Gone,
        })
    }

    /// Queues a control message, waiting for room if needed.
    pub fn send(&self, msg: StoreMsg) -> bool {
        self.tx.send(msg).is_ok()
    }
}

/// An opened store, before its thread runs.
pub struct Store {
    db: Database,
    msgs: Keyspace,
    rooms: Keyspace,
    meta: Keyspace,
    retention: Retention,
    state: HashMap<Arc<str>, RoomDisk>,
}

/// What the store knows of a room on disk.
#[derive(Debug, Clone)]
struct RoomDisk {
    epoch: Arc<str>,
    /// Oldest seq held (== last + 1 when none).
    first: u64,
    /// Last seq written.
    last: u64,
    /// Newest message's ts (for forgetting rooms that expired entirely).
    last_ts: u64,
    /// Last written in sync mode.
    sync: bool,
}

fn msg_key(room: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(room.len() + 9);
    k.extend_from_slice(room.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn room_range(room: &str) -> (Vec<u8>, Vec<u8>) {
    let mut lo = room.as_bytes().to_vec();
    lo.push(0);
    let mut hi = room.as_bytes().to_vec();
    hi.push(1);
    (lo, hi)
}

fn seq_of_key(k: &[u8]) -> Option<u64> {
    let n = k.len().checked_sub(8)?;
    Some(u64::from_be_bytes(k[n..].try_into().ok()?))
}

fn room_meta(sync: bool, epoch: &str, last: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + epoch.len() + 8);
    v.push(if sync { b's' } else { b'a' });
    v.push(epoch.len() as u8);
    v.extend_from_slice(epoch.as_bytes());
    v.extend_from_slice(&last.to_be_bytes());
    v
}

fn parse_room_meta(v: &[u8]) -> Option<(bool, &str, u64)> {
    let sync = match *v.first()? {
        b's' => true,
        b'a' => false,
        _ => return None,
    };
    let n = *v.get(1)? as usize;
    if v.len() != 2 + n + 8 {
        return None;
    }
    let epoch = std::str::from_utf8(&v[2..2 + n]).ok()?;
    let last = u64::from_be_bytes(v[2 + n..].try_into().ok()?);
    Some((sync, epoch, last))
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> StoreError {
    StoreError(format!(
        "history store at {} is unreadable ({what}); refusing to start rather than drop \
         history. Move the directory aside (or set history.durability = \"memory\") to start \
         without it.",
        path.display()
    ))
}

impl Store {
    /// Opens (or creates) the store at `path` and loads every room's
    /// retained window. `new_epoch` makes the epochs given to rooms after
    /// an unclean async run.
    pub fn open(
        path: &Path,
        retention: Retention,
        mut new_epoch: impl FnMut() -> Arc<str>,
    ) -> Result<(Store, Vec<LoadedRoom>), StoreError> {
        std::fs::create_dir_all(path).map_err(|e| {
            StoreError(format!(
                "cannot create history store directory {}: {e}",
                path.display()
            ))
        })?;
        let db = Database::builder(path)
            .worker_threads(1)
            .open()
            .map_err(|e| corrupt(path, e))?;
        let open_ks = |name: &str| {
            db.keyspace(name, fjall::KeyspaceCreateOptions::default)
                .map_err(|e| corrupt(path, e))
        };
        let (msgs, rooms, meta) = (open_ks("msgs")?, open_ks("rooms")?, open_ks("meta")?);
        let previous = meta
            .get("state")
            .map_err(|e| corrupt(path, e))?
            .map(|v| String::from_utf8_lossy(&v).into_owned());
        // A store that was never opened has no state; one that was opened
        // and not closed cleanly may lack acknowledged async messages.
        let unclean = previous.as_deref().is_some_and(|p| p != "clean");
        let now = now_unix_ms();
        let cutoff = now.saturating_sub(retention.ttl_ms);
        let mut loaded = Vec::new();
        let mut state = HashMap::new();
        let mut bumped = Vec::new();
        let mut messages = 0usize;
        for g in rooms.iter() {
            let (k, v) = g.into_inner().map_err(|e| corrupt(path, e))?;
            let room = std::str::from_utf8(&k)
                .ok()
                .filter(|r| crate::proto::valid_room(r))
                .ok_or_else(|| corrupt(path, "bad room key"))?;
            let (sync, epoch, last) =
                parse_room_meta(&v).ok_or_else(|| corrupt(path, format!("bad meta of {room}")))?;
            let room: Arc<str> = room.into();
            let mut epoch: Arc<str> = epoch.into();
            let bump_to: Option<Arc<str>> = (unclean && !sync).then(&mut new_epoch);
            // Newest first: the contiguous run ending at `last`, inside
            // the count and age bounds.
            let (lo, hi) = room_range(&room);
            let mut entries = Vec::new();
            let mut keys = Vec::new();
            let mut expect = last;
            let mut last_ts = 0;
            for g in msgs.range(lo..hi).rev() {
                let (k, v) = g.into_inner().map_err(|e| corrupt(path, e))?;
                let seq = seq_of_key(&k).ok_or_else(|| corrupt(path, "bad message key"))?;
                if v.len() < 8 {
                    return Err(corrupt(path, format!("short message {room}#{seq}")));
                }
                let ts = u64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
                if seq > last {
                    // Written past the room's record (a batch whose record
                    // update was lost cannot exist, but a stray key must
                    // not hide the window).
                    continue;
                }
                last_ts = last_ts.max(ts);
                if seq != expect || entries.len() >= retention.size || ts < cutoff {
                    break;
                }
                let mut json = &v[8..];
                if json.first() == Some(&0) {
                    let len = *json.get(1).unwrap_or(&0) as usize;
                    let key = json
                        .get(2..2 + len)
                        .and_then(|k| std::str::from_utf8(k).ok())
                        .filter(|k| !k.is_empty())
                        .ok_or_else(|| corrupt(path, format!("bad key of {room}#{seq}")))?;
                    keys.push((Arc::from(key), seq, ts));
                    json = &json[2 + len..];
                }
                // fjall checksums every block; this only catches a record
                // that was never one of ours.
                if json.first() != Some(&b'{')
                    || json.last() != Some(&b'}')
                    || std::str::from_utf8(json).is_err()
                {
                    return Err(corrupt(path, format!("bad message {room}#{seq}")));
                }
                let frame = match &bump_to {
                    // Replayed under the room's new epoch, so a client's
                    // position from these messages names the live epoch.
                    Some(e) => text_frame(&with_epoch(json, e)),
                    None => text_frame(json),
                };
                let header_len = header_len(frame.len());
                entries.push(Entry {
                    seq,
                    ts,
                    header_len,
                    frame,
                });
                expect = seq.saturating_sub(1);
            }
            entries.reverse();
            keys.reverse();
            messages += entries.len();
            if let Some(e) = bump_to {
                epoch = e;
                bumped.push((room.clone(), room_meta(sync, &epoch, last)));
            }
            let first = entries.first().map_or(last + 1, |e| e.seq);
            state.insert(
                room.clone(),
                RoomDisk {
                    epoch: epoch.clone(),
                    first,
                    last,
                    last_ts,
                    sync,
                },
            );
            loaded.push(LoadedRoom {
                room,
                epoch,
                seq: last,
                entries,
                keys,
            });
        }
        if !bumped.is_empty() {
            warn!(
                rooms = bumped.len(),
                "history store was not shut down cleanly: rooms written in async mode get a new \
                 epoch (their clients reload instead of recovering a possible gap)"
            );
        }
        if !bumped.is_empty() {
            let mut b = db.batch().durability(Some(PersistMode::SyncAll));
            for (room, v) in bumped {
                b.insert(&rooms, room.as_bytes(), v);
            }
            b.commit()
                .map_err(|e| StoreError(format!("cannot write to history store: {e}")))?;
        }
        info!(
            path = %path.display(),
            rooms = loaded.len(),
            messages,
            clean = !unclean,
            "history store opened"
        );
        Ok((
            Store {
                db,
                msgs,
                rooms,
                meta,
                retention,
                state,
            },
            loaded,
        ))
    }

    /// Starts the store thread; home cores hear back over `bus`.
    /// `failed` is set when a write fails.
    pub fn spawn(
        self,
        bus: impl HomeSink,
        failed: Arc<AtomicBool>,
    ) -> std::io::Result<(StoreHandle, JoinHandle<()>)> {
        // From here until the orderly stop writes `clean`, a crash leaves
        // `run` behind (written now, not at open: a start that fails before
        // serving must not make the next start think it crashed).
        let mut b = self.db.batch().durability(Some(PersistMode::SyncAll));
        b.insert(&self.meta, "state", "run");
        b.commit().map_err(std::io::Error::other)?;
        let (tx, rx) = crossbeam_channel::bounded(QUEUE_BOUND);
        let handle = StoreHandle { tx };
        let thread = std::thread::Builder::new()
            .name("corecast-store".into())
            .spawn(move || self.run(rx, bus, failed))?;
        Ok((handle, thread))
    }

    fn run(mut self, rx: Receiver<StoreMsg>, bus: impl HomeSink, failed_flag: Arc<AtomicBool>) {
        let mut guard = ExitGuard {
            flag: &failed_flag,
            orderly: false,
        };
        let sweep_every = Duration::from_millis((self.retention.ttl_ms / 4).clamp(1000, 60_000));
        let mut next_sweep = Instant::now() + sweep_every;
        let mut sweep_queue: VecDeque<Arc<str>> = VecDeque::new();
        let mut last_sync = Instant::now();
        let mut unsynced = false;
        let mut failed_rooms: HashSet<Arc<str>> = HashSet::new();
        let mut batch = Vec::with_capacity(1024);
        loop {
            let timeout = if sweep_queue.is_empty() {
                next_sweep.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            let timeout = if unsynced {
                timeout.min(ASYNC_SYNC_EVERY.saturating_sub(last_sync.elapsed()))
            } else {
                timeout
            };
            let mut shutdown = false;
            match rx.recv_timeout(timeout) {
                Ok(StoreMsg::Shutdown) => shutdown = true,
                Ok(m) => batch.push(m),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => shutdown = true,
            }
            while !shutdown && batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(StoreMsg::Shutdown) => shutdown = true,
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                let wrote = self.write_batch(&mut batch, &bus, &mut failed_rooms, guard.flag);
                unsynced |= wrote;
            }
            if unsynced && (last_sync.elapsed() >= ASYNC_SYNC_EVERY || shutdown) {
                if let Err(e) = self.db.persist(PersistMode::SyncData) {
                    error!(error = %e, "history store fsync failed");
                    failed_flag.store(true, Ordering::Relaxed);
                }
                unsynced = false;
                last_sync = Instant::now();
            }
            if Instant::now() >= next_sweep {
                if sweep_queue.is_empty() {
                    sweep_queue.extend(self.state.keys().cloned());
                }
                next_sweep = Instant::now() + sweep_every;
            }
            if !sweep_queue.is_empty() {
                self.sweep_step(&mut sweep_queue, &failed_flag);
            }
            if shutdown {
                // Anything still queued (cores are gone by now) is written
                // before the store is marked clean.
                while let Ok(m) = rx.try_recv() {
                    batch.push(m);
                }
                if !batch.is_empty() {
                    self.write_batch(&mut batch, &bus, &mut failed_rooms, &failed_flag);
                }
                let mut b = self.db.batch().durability(Some(PersistMode::SyncAll));
                b.insert(&self.meta, "state", "clean");
                match b.commit() {
                    Ok(()) => info!("history store closed cleanly"),
                    Err(e) => error!(error = %e, "history store: could not mark clean"),
                }
                guard.orderly = true;
                return;
            }
        }
    }

    /// Loads what the disk says of `room` (after a reset or for a room
    /// first seen since start).
    fn disk_state(&self, room: &str) -> Result<Option<RoomDisk>, String> {
        let Some(meta) = self.rooms.get(room).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let (sync, epoch, last) =
            parse_room_meta(&meta).ok_or_else(|| format!("bad record of room {room}"))?;
        let (lo, hi) = room_range(room);
        let first = self
            .msgs
            .range(lo..hi)
            .next()
            .and_then(|g| g.key().ok())
            .and_then(|k| seq_of_key(&k))
            .unwrap_or(last + 1);
        Ok(Some(RoomDisk {
            epoch: epoch.into(),
            first,
            last,
            last_ts: now_unix_ms(),
            sync,
        }))
    }

    /// Writes one batch; returns whether it was written without fsync
    /// (async only).
    fn write_batch(
        &mut self,
        batch: &mut Vec<StoreMsg>,
        bus: &impl HomeSink,
        failed_rooms: &mut HashSet<Arc<str>>,
        failed_flag: &AtomicBool,
    ) -> bool {
        let mut b = self.db.batch();
        let mut dirty: HashSet<Arc<str>> = HashSet::new();
        // Per home core: rooms and the highest seq that needs a confirmation.
        let mut confirm: HashMap<usize, HashMap<Arc<str>, u64>> = HashMap::new();
        let mut any_sync = false;
        let mut any = false;
        let mut refused: Vec<(usize, Arc<str>)> = Vec::new();
        for msg in batch.drain(..) {
            let a = match msg {
                StoreMsg::Append(a) => a,
                StoreMsg::Reset { room } => {
                    failed_rooms.remove(&room);
                    self.state.remove(&room);
                    continue;
                }
                StoreMsg::Shutdown => continue,
            };
            if failed_rooms.contains(&a.room) {
                continue;
            }
            if !self.state.contains_key(&a.room) {
                let disk = match self.disk_state(&a.room) {
                    Ok(d) => d,
                    Err(e) => {
                        error!(room = %a.room, error = %e, "history store: cannot read room record");
                        failed_flag.store(true, Ordering::Relaxed);
                        if a.sync && failed_rooms.insert(a.room.clone()) {
                            bus.send_home(a.home, vec![HomeMsg::StoreFailed { room: a.room }]);
                        }
                        continue;
                    }
                };
                self.state.insert(
                    a.room.clone(),
                    disk.unwrap_or(RoomDisk {
                        epoch: a.epoch.clone(),
                        first: a.seq,
                        last: a.seq.saturating_sub(1),
                        last_ts: a.ts,
                        sync: a.sync,
                    }),
                );
            }
            let st = self.state.get_mut(&a.room).expect("inserted above");
            if *st.epoch == *a.epoch && a.seq <= st.last {
                // A seq the store already holds under the same epoch: never
                // overwrite history; fail the append instead.
                error!(room = %a.room, seq = a.seq, last = st.last, "history store: seq already stored; append refused");
                if a.sync {
                    refused.push((a.home, a.room.clone()));
                }
                continue;
            }
            if *st.epoch != *a.epoch {
                // The room was forgotten and came back under a new epoch:
                // its old messages no longer belong to any position.
                for seq in st.first..=st.last {
                    b.remove(&self.msgs, msg_key(&a.room, seq));
                }
                *st = RoomDisk {
                    epoch: a.epoch.clone(),
                    first: a.seq,
                    last: a.seq.saturating_sub(1),
                    last_ts: a.ts,
                    sync: a.sync,
                };
            }
            let json = &a.frame[a.header_len as usize..];
            let key = a.key.as_deref().map_or(&[][..], str::as_bytes);
            let mut v = Vec::with_capacity(10 + key.len() + json.len());
            v.extend_from_slice(&a.ts.to_be_bytes());
            if !key.is_empty() {
                // At most MAX_KEY_LEN (64) bytes: the length fits a u8.
                v.extend_from_slice(&[0, key.len() as u8]);
                v.extend_from_slice(key);
            }
            v.extend_from_slice(json);
            b.insert(&self.msgs, msg_key(&a.room, a.seq), v);
            if st.first > st.last {
                st.first = a.seq;
            }
            st.last = a.seq;
            st.last_ts = a.ts;
            st.sync = a.sync;
            while st.last - st.first + 1 > self.retention.size as u64 {
                b.remove(&self.msgs, msg_key(&a.room, st.first));
                st.first += 1;
            }
            dirty.insert(a.room.clone());
            any = true;
            if a.sync {
                any_sync = true;
                let e = confirm.entry(a.home).or_default();
                let upto = e.entry(a.room).or_insert(0);
                *upto = (*upto).max(a.seq);
            }
        }
        for (home, room) in refused {
            if failed_rooms.insert(room.clone()) {
                bus.send_home(home, vec![HomeMsg::StoreFailed { room }]);
            }
        }
        if !any {
            return false;
        }
        for room in &dirty {
            let Some(st) = self.state.get(room) else {
                continue;
            };
            b.insert(
                &self.rooms,
                room.as_bytes(),
                room_meta(st.sync, &st.epoch, st.last),
            );
        }
        let mode = if any_sync {
            PersistMode::SyncData
        } else {
            PersistMode::Buffer
        };
        match b.durability(Some(mode)).commit() {
            Ok(()) => {
                for (home, rooms) in confirm {
                    let msgs = rooms
                        .into_iter()
                        .map(|(room, upto)| HomeMsg::Stored { room, upto })
                        .collect();
                    bus.send_home(home, msgs);
                }
                !any_sync
            }
            Err(e) => {
                error!(error = %e, rooms = dirty.len(), "history store write failed");
                failed_flag.store(true, Ordering::Relaxed);
                for room in &dirty {
                    self.state.remove(room);
                }
                for (home, rooms) in confirm {
                    let mut msgs = Vec::with_capacity(rooms.len());
                    for (room, _) in rooms {
                        failed_rooms.insert(room.clone());
                        msgs.push(HomeMsg::StoreFailed { room });
                    }
                    bus.send_home(home, msgs);
                }
                false
            }
        }
    }

    /// One step of the age sweep: up to [`SWEEP_ROOMS_PER_PASS`] rooms from
    /// the sweep queue lose their messages older than the age bound, and
    /// rooms whose newest message expired are forgotten (their seq and
    /// epoch go with them, as a room forgotten in memory starts a new
    /// epoch). Small steps between batches keep appends from waiting long;
    /// state changes apply only once the deletions are committed.
    fn sweep_step(&mut self, queue: &mut VecDeque<Arc<str>>, failed_flag: &AtomicBool) {
        let cutoff = now_unix_ms().saturating_sub(self.retention.ttl_ms);
        let mut b = self.db.batch().durability(Some(PersistMode::Buffer));
        let mut firsts = Vec::new();
        let mut forget = Vec::new();
        let mut deleted = 0usize;
        for _ in 0..SWEEP_ROOMS_PER_PASS {
            let Some(room) = queue.pop_front() else { break };
            let Some(st) = self.state.get(&room) else {
                continue;
            };
            let (_, hi) = room_range(&room);
            let mut first = st.first;
            for g in self.msgs.range(msg_key(&room, st.first)..hi) {
                let Ok((k, v)) = g.into_inner() else { break };
                let ts = v
                    .get(..8)
                    .map_or(0, |t| u64::from_be_bytes(t.try_into().expect("8 bytes")));
                if ts >= cutoff {
                    break;
                }
                if let Some(seq) = seq_of_key(&k) {
                    first = first.max(seq + 1);
                }
                b.remove(&self.msgs, k);
                deleted += 1;
            }
            if st.last_ts < cutoff && first > st.last {
                forget.push(room);
            } else if first != st.first {
                firsts.push((room, first));
            }
        }
        for room in &forget {
            b.remove(&self.rooms, room.as_bytes());
        }
        if deleted == 0 && forget.is_empty() {
            return;
        }
        match b.commit() {
            Ok(()) => {
                for (room, first) in firsts {
                    if let Some(st) = self.state.get_mut(&room) {
                        st.first = st.first.max(first);
                    }
                }
                for room in &forget {
                    self.state.remove(room);
                }
                debug!(
                    deleted,
                    forgotten = forget.len(),
                    "history store: age sweep step"
                );
            }
            Err(e) => {
                error!(error = %e, "history store: age sweep failed");
                failed_flag.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// `json` (a `message` event of ours) with its `epoch` field replaced.
fn with_epoch(json: &[u8], epoch: &str) -> Vec<u8> {
    const KEY: &[u8] = b",\"epoch\":\"";
    let Some(i) = memchr::memmem::find(json, KEY).map(|i| i + KEY.len()) else {
        return json.to_vec();
    };
    let Some(end) = memchr::memchr(b'"', &json[i..]).map(|e| i + e) else {
        return json.to_vec();
    };
    let mut out = Vec::with_capacity(json.len() + epoch.len());
    out.extend_from_slice(&json[..i]);
    out.extend_from_slice(epoch.as_bytes());
    out.extend_from_slice(&json[end..]);
    out
}

/// Sets the store's failure flag if the store thread ends without an
/// orderly stop (a panic): `/health` must not say ok while every sync
/// publish fails.
struct ExitGuard<'a> {
    flag: &'a AtomicBool,
    orderly: bool,
}

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        if !self.orderly {
            self.flag.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_order_by_room_then_seq() {
        let a1 = msg_key("a", 1);
        let a2 = msg_key("a", 256);
        let ab = msg_key("a-b", 0);
        let (lo, hi) = room_range("a");
        assert!(lo <= a1 && a1 < a2 && a2 < hi);
        assert!(!(lo <= ab && ab < hi), "another room is outside the range");
        assert_eq!(seq_of_key(&a2), Some(256));
    }

    #[test]
    fn room_meta_round_trips() {
        let v = room_meta(true, "0badc0de", 42);
        assert_eq!(parse_room_meta(&v), Some((true, "0badc0de", 42)));
        let v = room_meta(false, "e", 1);
        assert_eq!(parse_room_meta(&v), Some((false, "e", 1)));
        assert_eq!(parse_room_meta(&v[..v.len() - 1]), None);
    }
}
