//! A node's users in the Redis engine: presence over all nodes, direct
//! messages and notifications, statuses; and keeping Redis true to what
//! this node holds (reconciling after a connect) or what a dead node held
//! (reaping it).
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
//! those rooms once per change (a nonce, remembered for a while).
//!
//! This module decides; Redis and cores are reached through [`Io`].

use super::bridge::{BTimer, Io, Want, as_array, as_int, as_str};
use super::rooms::NodeRooms;
use crate::engine::presence::{UserTable, presence_frame};
use crate::engine::{AggRef, ConnRef, Event};
use crate::proto::Status;
use bytes::Bytes;
use redis::Value;
use serde::{Deserialize, Serialize};
use slab::Slab;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tracing::{debug, info, warn};

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
    reaps: HashMap<String, Reap>,
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
        }
    }

    /// Users with a connection on this node.
    pub fn online(&self) -> usize {
        self.table.online()
    }

    /// A connection of `user` authenticated on `core`.
    pub fn connect(&mut self, io: &mut Io<'_>, user: Arc<str>, core: usize, conn: ConnRef) {
        self.table.connect(&user, core, conn);
        self.tokens.remove(&user);
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
        let mut c = io.script(&io.scripts.user_offline, &[&io.keys.user(&g.user)]);
        c.arg(&g.token);
        io.call(
            &c,
            Want::UserOffline {
                user: g.user,
                rooms: change.rooms,
            },
        );
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

    /// The confirmation never came (Redis down): the user is forgotten
    /// here; reconciliation settles Redis.
    pub fn offline_failed(&mut self, user: &str, _rooms: Vec<Arc<str>>) {
        if self.table.get(user).is_none() {
            self.subscribed.remove(user);
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

    /// The pub/sub connection is back: the users' channels again.
    pub fn resubscribe(&mut self, io: &mut Io<'_>) {
        for u in &self.subscribed {
            io.subscribe(io.keys.user(u));
        }
    }

    /// Local connection counts per user, with the grace token of users
    /// whose grace runs here (count 0).
    fn counts(&self) -> Vec<(Arc<str>, u32, String)> {
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

fn publish_presence(io: &mut Io<'_>, user: &str, status: Status, rooms: &[Arc<str>]) {
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
        let c = redis::cmd("PUBLISH")
            .arg(io.keys.room_channel(r))
            .arg(&payload)
            .to_owned();
        io.call(&c, Want::Ignore("presence"));
    }
}

// ---- reconciling this node, reaping dead ones ---------------------------

/// A step of [`reconcile`] or of reaping a dead node.
#[derive(Debug)]
pub enum ReapStep {
    /// The lock for reaping `node` (OK = ours).
    Lock {
        /// The dead node.
        node: String,
    },
    /// The rooms `node` had members in (SMEMBERS).
    Rooms {
        /// The node (this one when reconciling).
        node: String,
    },
    /// One room's members of `node` removed (the users removed).
    Room {
        /// The node.
        node: String,
        /// Room.
        room: String,
    },
    /// The users `node` had connections of (SMEMBERS).
    Users {
        /// The node.
        node: String,
    },
    /// One user's count on `node` set (`{total, online, offline}`).
    User {
        /// The node.
        node: String,
        /// User.
        user: String,
    },
}

/// Reaping in progress: which users were in which rooms on the dead node
/// (for their `offline`), and how many steps are out.
#[derive(Debug, Default)]
struct Reap {
    rooms_left: usize,
    users_left: usize,
    user_rooms: HashMap<String, Vec<Arc<str>>>,
}

/// After the command connection (re)connected: makes Redis hold exactly
/// what this node holds — its members per room and its users' connection
/// counts — whatever happened while it could not reach Redis (at start,
/// what an earlier run of this node left behind is removed).
pub fn reconcile(io: &mut Io<'_>, rooms: &mut NodeRooms, users: &mut NodeUsers) {
    let node = io.keys.node().to_string();
    // Local state first, then what Redis has that is no longer local.
    for (room, members) in rooms.members() {
        sync_room(io, &node, &room, &members, Want::Ignore("sync_room"));
        let set = io.keys.node_set(&node, "rooms");
        io.call(
            redis::cmd("SADD").arg(set).arg(&*room),
            Want::Ignore("SADD"),
        );
    }
    for (user, count, token) in users.counts() {
        set_user(io, &node, &user, count, &token, Want::Ignore("user_set"));
        if count > 0 {
            let set = io.keys.node_set(&node, "users");
            io.call(
                redis::cmd("SADD").arg(set).arg(&*user),
                Want::Ignore("SADD"),
            );
        }
    }
    let rooms_key = io.keys.node_set(&node, "rooms");
    io.call(
        redis::cmd("SMEMBERS").arg(rooms_key),
        Want::Reap(ReapStep::Rooms { node: node.clone() }),
    );
    let users_key = io.keys.node_set(&node, "users");
    io.call(
        redis::cmd("SMEMBERS").arg(users_key),
        Want::Reap(ReapStep::Users { node }),
    );
}

fn sync_room(
    io: &mut Io<'_>,
    node: &str,
    room: &str,
    members: &[super::rooms::Member],
    want: Want,
) {
    let k = io.keys;
    let mut c = io.script(
        &io.scripts.sync_room,
        &[
            &k.room(room, "m"),
            &k.room(room, "u"),
            &k.room(room, "nm"),
            &k.room_node(room, node),
        ],
    );
    c.arg(k.room_channel(room))
        .arg(room)
        .arg(io.cfg.idle_ms)
        .arg(members.len());
    for (u, n) in members {
        c.arg(&**u).arg(n.as_deref().unwrap_or(""));
    }
    io.call(&c, want);
}

fn set_user(io: &mut Io<'_>, node: &str, user: &str, count: u32, token: &str, want: Want) {
    let mut c = io.script(&io.scripts.user_set, &[&io.keys.user(user)]);
    c.arg(format!("n:{node}")).arg(count).arg(token);
    io.call(&c, want);
}

/// A node's registration expired: take the lock and reap it.
pub fn start_reap(io: &mut Io<'_>, dead: &str) {
    let c = redis::cmd("SET")
        .arg(io.keys.reap_lock(dead))
        .arg(io.keys.node())
        .arg("NX")
        .arg("PX")
        .arg(60_000)
        .to_owned();
    io.call(
        &c,
        Want::Reap(ReapStep::Lock {
            node: dead.to_string(),
        }),
    );
}

/// The next step of reaping (or reconciling) after `step`'s reply.
pub fn on_reap_reply(
    io: &mut Io<'_>,
    rooms: &mut NodeRooms,
    users: &mut NodeUsers,
    step: ReapStep,
    v: Value,
) {
    let me = io.keys.node().to_string();
    match step {
        ReapStep::Lock { node } => {
            if !matches!(v, Value::Okay) && as_str(&v) != Some("OK") {
                return; // another node reaps it
            }
            info!(node = %node, "reaping a node whose registration expired");
            users.reaps.insert(node.clone(), Reap::default());
            let key = io.keys.node_set(&node, "rooms");
            io.call(
                redis::cmd("SMEMBERS").arg(key),
                Want::Reap(ReapStep::Rooms { node }),
            );
        }
        ReapStep::Rooms { node } => {
            let listed: Vec<String> = as_array(&v)
                .unwrap_or(&[])
                .iter()
                .filter_map(as_str)
                .map(String::from)
                .collect();
            if node == me {
                // Reconciling: rooms Redis has for this node but it no
                // longer holds.
                let local: HashSet<Arc<str>> =
                    rooms.members().into_iter().map(|(r, _)| r).collect();
                for room in listed.iter().filter(|r| !local.contains(r.as_str())) {
                    sync_room(io, &me, room, &[], Want::Ignore("sync_room"));
                    let set = io.keys.node_set(&me, "rooms");
                    io.call(redis::cmd("SREM").arg(set).arg(room), Want::Ignore("SREM"));
                }
                return;
            }
            if let Some(reap) = users.reaps.get_mut(&node) {
                reap.rooms_left = listed.len();
            }
            for room in &listed {
                let want = Want::Reap(ReapStep::Room {
                    node: node.clone(),
                    room: room.clone(),
                });
                sync_room(io, &node, room, &[], want);
            }
            if listed.is_empty() {
                reap_users(io, &node);
            }
        }
        ReapStep::Room { node, room } => {
            let removed: Vec<String> = as_array(&v)
                .unwrap_or(&[])
                .iter()
                .filter_map(as_str)
                .map(String::from)
                .collect();
            let done = match users.reaps.get_mut(&node) {
                Some(reap) => {
                    for u in removed {
                        reap.user_rooms
                            .entry(u)
                            .or_default()
                            .push(room.as_str().into());
                    }
                    reap.rooms_left = reap.rooms_left.saturating_sub(1);
                    reap.rooms_left == 0
                }
                None => false,
            };
            if done {
                reap_users(io, &node);
            }
        }
        ReapStep::Users { node } => {
            let listed: Vec<String> = as_array(&v)
                .unwrap_or(&[])
                .iter()
                .filter_map(as_str)
                .map(String::from)
                .collect();
            if node == me {
                let local: HashSet<Arc<str>> =
                    users.counts().into_iter().map(|(u, _, _)| u).collect();
                for user in listed.iter().filter(|u| !local.contains(u.as_str())) {
                    let want = Want::Reap(ReapStep::User {
                        node: me.clone(),
                        user: user.clone(),
                    });
                    set_user(io, &me, user, 0, "", want);
                    let set = io.keys.node_set(&me, "users");
                    io.call(redis::cmd("SREM").arg(set).arg(user), Want::Ignore("SREM"));
                }
                return;
            }
            if let Some(reap) = users.reaps.get_mut(&node) {
                reap.users_left = listed.len();
            }
            for user in &listed {
                let want = Want::Reap(ReapStep::User {
                    node: node.clone(),
                    user: user.clone(),
                });
                set_user(io, &node, user, 0, "", want);
            }
            if listed.is_empty() {
                finish_reap(io, users, &node);
            }
        }
        ReapStep::User { node, user } => {
            let offline = as_array(&v).and_then(|a| as_int(a.get(2)?)) == Some(1);
            let rooms_of = users
                .reaps
                .get(&node)
                .and_then(|reap| reap.user_rooms.get(&user).cloned())
                .unwrap_or_default();
            if offline {
                publish_presence(io, &user, Status::Offline, &rooms_of);
                io.call(
                    redis::cmd("SREM").arg(io.keys.online()).arg(&user),
                    Want::Ignore("SREM online"),
                );
            }
            if node == me {
                return;
            }
            let done = match users.reaps.get_mut(&node) {
                Some(reap) => {
                    reap.users_left = reap.users_left.saturating_sub(1);
                    reap.users_left == 0
                }
                None => false,
            };
            if done {
                finish_reap(io, users, &node);
            }
        }
    }
}

fn reap_users(io: &mut Io<'_>, node: &str) {
    let key = io.keys.node_set(node, "users");
    io.call(
        redis::cmd("SMEMBERS").arg(key),
        Want::Reap(ReapStep::Users {
            node: node.to_string(),
        }),
    );
}

fn finish_reap(io: &mut Io<'_>, users: &mut NodeUsers, node: &str) {
    users.reaps.remove(node);
    let (nodes, stats) = io.keys.nodes();
    for cmd in [
        redis::cmd("DEL")
            .arg(io.keys.node_set(node, "rooms"))
            .arg(io.keys.node_set(node, "users"))
            .to_owned(),
        redis::cmd("ZREM").arg(nodes).arg(node).to_owned(),
        redis::cmd("HDEL").arg(stats).arg(node).to_owned(),
    ] {
        io.call(&cmd, Want::Ignore("reap"));
    }
    info!(node = %node, "dead node reaped");
}
