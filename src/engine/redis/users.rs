//! A node's users in the Redis engine: presence over all nodes, direct
//! messages and notifications, statuses.
//!
//! Locally a [`UserTable`] holds the users with connections on this node
//! (their connections per core, local rooms, status, grace). In Redis a
//! user's hash counts connections per node; the node whose count made the
//! total reach 0 starts a grace under a token of its own, and when it ends
//! a script confirms the user is still gone everywhere with that token
//! still set before `offline` goes to the rooms the user was last in.
//! A status change is published on the user's channel; every node with
//! connections of the user republishes it to the user's rooms there (each
//! node knows only its own), and every node delivers it to its members of
//! those rooms once per change (a nonce, remembered for a while); the
//! republishing node also notes the status in the room (for `members`).
//!
//! This module decides; Redis and cores are reached through [`Io`].

use super::io::{BTimer, Io, Want};
use super::rooms::NodeRooms;
use super::wire::{as_array, as_int};
use crate::engine::presence::{UserTable, presence_frame};
use crate::engine::{AggRef, ConnRef, Event};
use crate::proto::Status;
use bytes::Bytes;
use redis::Value;
use serde::{Deserialize, Serialize};
use slab::Slab;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tracing::{debug, warn};

/// Presence changes already delivered are remembered this long, ms.
const SEEN_MS: u64 = 30_000;

/// A presence change on a room channel (`p` + this JSON).
#[derive(Debug, Serialize, Deserialize)]
struct PresenceMsg {
    /// Nonce of the change (the same on every room it is published to).
    n: u64,
    /// User.
    u: String,
    /// Status.
    s: String,
    /// Every room of the user the publisher knows.
    r: Vec<String>,
}

/// A presence change delivered here: until when it is remembered (ms),
/// and the rooms whose members got it.
type Seen = (u64, Vec<Arc<str>>);

/// A grace running on this node.
#[derive(Debug)]
struct Grace {
    user: Arc<str>,
    generation: u32,
    token: String,
}

/// The users with connections (or a running grace) on this node.
#[derive(Debug)]
pub struct NodeUsers {
    table: UserTable,
    graces: Slab<Grace>,
    /// Users whose channel this node subscribed to.
    subscribed: HashSet<Arc<str>>,
    /// Grace tokens by user (while a grace runs here).
    tokens: HashMap<Arc<str>, String>,
    /// Presence changes delivered here: (user, nonce) → (until ms, rooms).
    seen: HashMap<(Arc<str>, u64), Seen>,
    grace_ms: u64,
    /// Dead nodes being reaped by this node.
    pub(super) reaps: HashMap<String, super::nodes::Reap>,
    /// Offline checks that could not run (Redis away): user → (grace
    /// token, rooms), run again once Redis is back.
    pending_offline: HashMap<Arc<str>, (String, Vec<Arc<str>>)>,
}

impl NodeUsers {
    /// Users of a node whose presence grace is `grace_ms`.
    pub fn new(grace_ms: u64) -> NodeUsers {
        NodeUsers {
            table: UserTable::new(),
            graces: Slab::new(),
            subscribed: HashSet::new(),
            tokens: HashMap::new(),
            seen: HashMap::new(),
            grace_ms,
            reaps: HashMap::new(),
            pending_offline: HashMap::new(),
        }
    }

    /// Users with a connection on this node.
    pub fn online(&self) -> usize {
        self.table.online()
    }

    /// A local user's status (online when unknown).
    pub fn status_of(&self, user: &str) -> Status {
        self.table.get(user).map_or(Status::Online, |u| u.status())
    }

    /// A connection of `user` authenticated on `core`.
    pub fn connect(&mut self, io: &mut Io<'_>, user: Arc<str>, core: usize, conn: ConnRef) {
        self.table.connect(&user, core, conn);
        self.tokens.remove(&user);
        self.pending_offline.remove(&user);
        if self.subscribed.insert(user.clone()) {
            io.subscribe(io.keys.user(&user));
            let set = io.keys.node_set(io.keys.node(), "users");
            io.call(
                redis::cmd("SADD").arg(set).arg(&*user),
                Want::Ignore("SADD"),
            );
        }
        let field = format!("n:{}", io.keys.node());
        let mut c = io.script(&io.scripts.user_conn, &[&io.keys.user(&user)]);
        c.arg(field).arg(1).arg("");
        io.call(&c, Want::UserConn { user });
    }

    /// A connection of `user` went away; the last one here starts a grace.
    pub fn disconnect(
        &mut self,
        io: &mut Io<'_>,
        user: Arc<str>,
        core: usize,
        conn: ConnRef,
        rooms: &[Arc<str>],
    ) {
        let known = self.table.get(&user).is_some_and(|u| u.connections() > 0);
        if !known {
            return;
        }
        let grace = self.table.disconnect(&user, core, conn, rooms, io.now_ms);
        let token = match grace {
            Some(generation) => {
                let slot = self.graces.vacant_key() as u32;
                let token = format!("{}|{slot}|{generation}|{:x}", io.keys.node(), io.nonce());
                self.graces.insert(Grace {
                    user: user.clone(),
                    generation,
                    token: token.clone(),
                });
                self.tokens.insert(user.clone(), token.clone());
                io.timer(
                    io.now_ms + self.grace_ms,
                    BTimer::Grace { slot, generation },
                );
                token
            }
            None => String::new(),
        };
        let field = format!("n:{}", io.keys.node());
        let mut c = io.script(&io.scripts.user_conn, &[&io.keys.user(&user)]);
        c.arg(field).arg(-1).arg(token);
        io.call(&c, Want::Ignore("user_conn"));
    }

    /// `{total, came online}` of a connect.
    pub fn on_conn_reply(&mut self, io: &mut Io<'_>, user: &str, v: &Value) {
        let online = as_array(v).and_then(|a| as_int(a.get(1)?)) == Some(1);
        if online {
            io.call(
                redis::cmd("SADD").arg(io.keys.online()).arg(user),
                Want::Ignore("SADD online"),
            );
        }
    }

    /// The grace of a user ended on this node: offline if Redis agrees.
    pub fn grace_timer(&mut self, io: &mut Io<'_>, slot: u32, generation: u32) {
        let Some(g) = self.graces.try_remove(slot as usize) else {
            return;
        };
        if g.generation != generation {
            return;
        }
        let Some(change) = self.table.grace_expired(&g.user, g.generation) else {
            return; // came back meanwhile
        };
        self.tokens.remove(&g.user);
        confirm_offline(io, g.user, g.token, change.rooms);
    }

    /// `1` = the user is offline everywhere: tell the rooms.
    pub fn on_offline_reply(
        &mut self,
        io: &mut Io<'_>,
        user: &str,
        rooms: Vec<Arc<str>>,
        v: &Value,
    ) {
        if as_int(v) == Some(1) {
            publish_presence(io, user, Status::Offline, &rooms);
            io.call(
                redis::cmd("SREM").arg(io.keys.online()).arg(user),
                Want::Ignore("SREM online"),
            );
        }
        self.forget(io, user);
    }

    /// The confirmation never came (Redis away): it runs again, with the
    /// same token, once Redis is back.
    pub fn offline_failed(&mut self, user: Arc<str>, token: String, rooms: Vec<Arc<str>>) {
        if self.table.get(&user).is_none() {
            self.pending_offline.insert(user, (token, rooms));
        }
    }

    /// Redis is reachable again: the offline checks that could not run.
    pub fn retry_offline(&mut self, io: &mut Io<'_>) {
        for (user, (token, rooms)) in std::mem::take(&mut self.pending_offline) {
            confirm_offline(io, user, token, rooms);
        }
    }

    /// Drops a user who has no connection here any more.
    fn forget(&mut self, io: &mut Io<'_>, user: &str) {
        if self.table.get(user).is_some() {
            return; // reconnected meanwhile
        }
        if self.subscribed.remove(user) {
            io.unsubscribe(io.keys.user(user));
            let set = io.keys.node_set(io.keys.node(), "users");
            io.call(redis::cmd("SREM").arg(set).arg(user), Want::Ignore("SREM"));
        }
    }

    /// A connection of `user` joined or left a room (the local rooms the
    /// user's presence goes to).
    pub fn room_changed(&mut self, user: &str, room: &Arc<str>, joined: bool) {
        if joined {
            self.table.room_joined(user, room);
        } else {
            self.table.room_left(user, room);
        }
    }

    /// The user set a status: changed in Redis and announced on the user's
    /// channel (every node with the user's connections takes it from there).
    pub fn set_status(&mut self, io: &mut Io<'_>, user: &str, status: Status) {
        let payload = format!("s{},{}", io.nonce(), status.as_str());
        let mut c = io.script(&io.scripts.status, &[&io.keys.user(user)]);
        c.arg(status.as_str()).arg(io.keys.user(user)).arg(payload);
        io.call(&c, Want::Ignore("status"));
    }

    /// A direct message or notification for `user`, on every node.
    pub fn to_user(&mut self, io: &mut Io<'_>, user: &str, frame: &Bytes, agg: AggRef) {
        let json = crate::frame::payload(frame);
        let mut payload = Vec::with_capacity(json.len() + 1);
        payload.push(b'd');
        payload.extend_from_slice(json);
        let mut c = io.script(&io.scripts.direct, &[&io.keys.user(user)]);
        c.arg(io.keys.user(user)).arg(payload);
        io.call(&c, Want::Direct { agg });
    }

    /// A message on a user's channel.
    pub fn on_user_payload(&mut self, io: &mut Io<'_>, rooms: &NodeRooms, user: &str, p: &[u8]) {
        match p.first() {
            Some(b'd') => {
                let Some(u) = self.table.get(user) else {
                    return;
                };
                let frame = crate::frame::text_frame(&p[1..]);
                for (core, conns) in u.by_core() {
                    let ev = Event::UserDeliver {
                        conns,
                        frame: frame.clone(),
                        agg: None,
                    };
                    io.event(core, ev);
                }
            }
            Some(b's') => {
                let text = std::str::from_utf8(&p[1..]).unwrap_or("");
                let Some((nonce, status)) = text.split_once(',') else {
                    return;
                };
                let (Ok(nonce), Some(status)) =
                    (nonce.parse::<u64>(), Status::parse_settable(status))
                else {
                    return;
                };
                let Some(change) = self.table.set_status(user, status) else {
                    return;
                };
                let mine: Vec<Arc<str>> = change
                    .rooms
                    .into_iter()
                    .filter(|r| rooms.has_member(r, user))
                    .collect();
                for room in &mine {
                    // For `members` on any node.
                    let key = io.keys.room(room, "st");
                    let c = match status {
                        Status::Online => redis::cmd("HDEL").arg(key).arg(user).to_owned(),
                        s => redis::cmd("HSET")
                            .arg(key)
                            .arg(user)
                            .arg(s.as_str())
                            .to_owned(),
                    };
                    io.call(&c, Want::Ignore("room status"));
                }
                publish_presence_nonce(io, user, status, &mine, nonce);
            }
            _ => debug!(user, "unknown user payload"),
        }
    }

    /// A presence change on a room channel: delivered to this node's
    /// members of the change's rooms, once per change.
    pub fn on_presence(&mut self, io: &mut Io<'_>, rooms: &NodeRooms, json: &[u8]) {
        let Ok(m) = serde_json::from_slice::<PresenceMsg>(json) else {
            return warn!("unreadable presence payload");
        };
        let Some(status) = parse_status(&m.s) else {
            return;
        };
        let now = io.now_ms;
        self.seen.retain(|_, (until, _)| *until > now);
        let user: Arc<str> = m.u.as_str().into();
        let entry = self
            .seen
            .entry((user.clone(), m.n))
            .or_insert_with(|| (now + SEEN_MS, Vec::new()));
        let fresh: Vec<Arc<str>> =
            m.r.iter()
                .filter(|r| !entry.1.iter().any(|d| &**d == r.as_str()))
                .map(|r| Arc::<str>::from(r.as_str()))
                .collect();
        if fresh.is_empty() {
            return;
        }
        let skip: Arc<[Arc<str>]> = entry.1.clone().into();
        entry.1.extend(fresh.iter().cloned());
        let mut cores: Vec<usize> = fresh.iter().flat_map(|r| rooms.cores_of(r)).collect();
        cores.sort_unstable();
        cores.dedup();
        if cores.is_empty() {
            return;
        }
        let frame = presence_frame(&user, status);
        let fresh: Arc<[Arc<str>]> = fresh.into();
        for c in cores {
            let ev = Event::Presence {
                user: user.clone(),
                rooms: fresh.clone(),
                skip: skip.clone(),
                frame: frame.clone(),
            };
            io.event(c, ev);
        }
    }

    /// A pub/sub connection is back (or the slot map moved users): the
    /// channels of the users `on` says (by channel) again.
    pub fn resubscribe(&mut self, io: &mut Io<'_>, on: &dyn Fn(&str) -> bool) {
        for u in &self.subscribed {
            let channel = io.keys.user(u);
            if on(&channel) {
                io.subscribe(channel);
            }
        }
    }

    /// Whether this node follows `user`'s channel.
    pub fn follows(&self, user: &str) -> bool {
        self.subscribed.contains(user)
    }

    /// Local connection counts per user, with the grace token of users
    /// whose grace runs here (count 0).
    pub(super) fn counts(&self) -> Vec<(Arc<str>, u32, String)> {
        let mut out: Vec<(Arc<str>, u32, String)> = self
            .table
            .users()
            .map(|(u, h)| (u.clone(), h.connections(), String::new()))
            .collect();
        for (u, _, token) in out.iter_mut() {
            if let Some(t) = self.tokens.get(u) {
                *token = t.clone();
            }
        }
        out
    }
}

fn parse_status(s: &str) -> Option<Status> {
    match s {
        "offline" => Some(Status::Offline),
        other => Status::parse_settable(other),
    }
}

/// Asks Redis whether `user`, whose grace under `token` ended here, is gone
/// everywhere.
fn confirm_offline(io: &mut Io<'_>, user: Arc<str>, token: String, rooms: Vec<Arc<str>>) {
    let mut c = io.script(&io.scripts.user_offline, &[&io.keys.user(&user)]);
    c.arg(&token);
    io.call(&c, Want::UserOffline { user, token, rooms });
}

/// Publishes `offline` (or another status) to `rooms`.
pub(super) fn publish_presence(io: &mut Io<'_>, user: &str, status: Status, rooms: &[Arc<str>]) {
    let nonce = io.nonce();
    publish_presence_nonce(io, user, status, rooms, nonce);
}

/// Publishes a presence change to each of `rooms` (every copy names all
/// of them, so a node hearing it on one room delivers it to all).
fn publish_presence_nonce(io: &mut Io<'_>, user: &str, status: Status, rooms: &[Arc<str>], n: u64) {
    if rooms.is_empty() {
        return;
    }
    let m = PresenceMsg {
        n,
        u: user.to_string(),
        s: status.as_str().to_string(),
        r: rooms.iter().map(|r| r.to_string()).collect(),
    };
    let mut payload = b"p".to_vec();
    payload.extend_from_slice(&serde_json::to_vec(&m).expect("plain struct"));
    for r in rooms {
        let c = io
            .keys
            .publish_cmd()
            .arg(io.keys.room_channel(r))
            .arg(&payload)
            .to_owned();
        io.call(&c, Want::Ignore("presence"));
    }
}
