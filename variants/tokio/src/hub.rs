//! Rooms and fan-out: one `tokio::sync::broadcast` channel per room.
//!
//! A room's `seq` lives under a small mutex, and a publish assigns the seq,
//! encodes the `message` event once and `send`s it to the channel while
//! holding that mutex, so the channel's order is seq order. Every member
//! connection holds a `broadcast::Receiver` and gets a clone of the encoded
//! frame (`F` is a reference-counted bytes type: a clone is a refcount bump).
//! A join subscribes under the same mutex, so the joiner receives exactly the
//! messages with a seq greater than the one its `ack` reports.

use crate::proto;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast;

/// All rooms of the server.
pub struct Hub<F> {
    rooms: Mutex<HashMap<Arc<str>, Arc<Room<F>>>>,
    capacity: usize,
    membership_events: bool,
}

/// One room.
pub struct Room<F> {
    name: Arc<str>,
    epoch: Box<str>,
    tx: broadcast::Sender<F>,
    state: Mutex<RoomState>,
}

struct RoomState {
    /// Latest seq (0 before the first message).
    seq: u64,
    /// Member connections per user.
    users: HashMap<Arc<str>, u32>,
}

/// A connection's membership of one room.
pub struct Sub<F> {
    /// The room.
    pub room: Arc<Room<F>>,
    /// Its messages, in seq order.
    pub rx: broadcast::Receiver<F>,
}

/// What a join reports.
pub struct Joined<F> {
    /// The membership.
    pub sub: Sub<F>,
    /// Latest seq at the moment of the join.
    pub seq: u64,
    /// Distinct users in the room, the joiner included.
    pub members: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<F: Clone + From<String>> Hub<F> {
    /// A hub whose room channels hold `capacity` frames: a member that falls
    /// further behind than that is a slow consumer (close 4009). With
    /// `membership_events`, a user's first join and last leave are announced
    /// to the room (`joined` / `left`, as corecast does).
    pub fn new(capacity: usize, membership_events: bool) -> Self {
        Hub {
            rooms: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            membership_events,
        }
    }

    /// Adds a member connection of `user` to `room`, creating the room (with
    /// a new epoch) when it has none.
    pub fn join(&self, room: &str, user: &Arc<str>) -> Joined<F> {
        let mut rooms = lock(&self.rooms);
        let room = match rooms.get(room) {
            Some(r) => r.clone(),
            None => {
                let name: Arc<str> = room.into();
                let (tx, _) = broadcast::channel(self.capacity);
                let r = Arc::new(Room {
                    name: name.clone(),
                    epoch: format!("{:08x}", fastrand::u32(..)).into(),
                    tx,
                    state: Mutex::new(RoomState {
                        seq: 0,
                        users: HashMap::new(),
                    }),
                });
                rooms.insert(name, r.clone());
                r
            }
        };
        let mut st = lock(&room.state);
        let rx = room.tx.subscribe();
        let n = st.users.entry(user.clone()).or_insert(0);
        *n += 1;
        if *n == 1 && self.membership_events {
            // The joiner gets it too, right after its ack.
            let _ = room
                .tx
                .send(F::from(proto::membership("joined", &room.name, user)));
        }
        let (seq, members) = (st.seq, st.users.len());
        drop(st);
        drop(rooms);
        Joined {
            sub: Sub { room, rx },
            seq,
            members,
        }
    }

    /// Removes a member connection of `user`; a room left without members
    /// is forgotten (it comes back under a new epoch).
    pub fn leave(&self, sub: Sub<F>, user: &Arc<str>) {
        let Sub { room, rx } = sub;
        drop(rx);
        let mut rooms = lock(&self.rooms);
        let mut st = lock(&room.state);
        if let Some(n) = st.users.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                st.users.remove(user);
                if self.membership_events {
                    let _ = room
                        .tx
                        .send(F::from(proto::membership("left", &room.name, user)));
                }
            }
        }
        if st.users.is_empty() && rooms.get(&room.name).is_some_and(|r| Arc::ptr_eq(r, &room)) {
            rooms.remove(&room.name);
        }
    }
}

impl<F: Clone + From<String>> Room<F> {
    /// The room's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The room's epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Latest seq and distinct users.
    pub fn snapshot(&self) -> (u64, usize) {
        let st = lock(&self.state);
        (st.seq, st.users.len())
    }

    /// Sequences a message from `user` and sends it, encoded once, to every
    /// member. Returns its seq and ts.
    pub fn publish(&self, user: &str, data: &RawValue) -> (u64, u64) {
        let mut st = lock(&self.state);
        st.seq += 1;
        let seq = st.seq;
        let ts = proto::unix_ms();
        let frame = proto::message(&self.name, seq, &self.epoch, ts, user, data);
        // Err only when there is no receiver; the publisher is a member.
        let _ = self.tx.send(F::from(frame));
        drop(st);
        (seq, ts)
    }
}
