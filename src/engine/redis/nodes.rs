//! Keeping Redis true to the nodes: reconciling what this node holds after
//! every (re)connect of its command connection (at start, removing what an
//! earlier run of it left), and reaping a node whose registration expired
//! (its members leave, its users go offline unless connected elsewhere).
//!
//! Each step is a command whose reply continues the work
//! ([`ReapStep`]); this module decides the steps and must not do I/O
//! itself.

use super::io::{Io, Want};
use super::rooms::{Member, NodeRooms};
use super::users::{NodeUsers, publish_presence};
use super::wire::{as_array, as_int, as_str};
use crate::proto::Status;
use redis::Value;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tracing::info;

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
pub struct Reap {
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
        let with_status: Vec<(Member, Status)> = members
            .into_iter()
            .map(|m| {
                let st = users.status_of(&m.0);
                (m, st)
            })
            .collect();
        sync_room(io, &node, &room, &with_status, Want::Ignore("sync_room"));
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
    users.retry_offline(io);
}

fn sync_room(io: &mut Io<'_>, node: &str, room: &str, members: &[(Member, Status)], want: Want) {
    let k = io.keys;
    let mut c = io.script(
        &io.scripts.sync_room,
        &[
            &k.room(room, "m"),
            &k.room(room, "u"),
            &k.room(room, "nm"),
            &k.room(room, "st"),
            &k.room_node(room, node),
        ],
    );
    c.arg(k.room_channel(room))
        .arg(room)
        .arg(io.cfg.idle_ms)
        .arg(members.len());
    for ((u, n), st) in members {
        c.arg(&**u).arg(n.as_deref().unwrap_or("")).arg(st.as_str());
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
        // One key per DEL: the two sets may live in different hash slots.
        redis::cmd("DEL")
            .arg(io.keys.node_set(node, "rooms"))
            .to_owned(),
        redis::cmd("DEL")
            .arg(io.keys.node_set(node, "users"))
            .to_owned(),
        redis::cmd("ZREM").arg(nodes).arg(node).to_owned(),
        redis::cmd("HDEL").arg(stats).arg(node).to_owned(),
    ] {
        io.call(&cmd, Want::Ignore("reap"));
    }
    info!(node = %node, "dead node reaped");
}
