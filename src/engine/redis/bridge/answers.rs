//! What the bridge does with each Redis reply (matched to its [`Want`]),
//! and with a command that failed or was never answered: acks, join
//! replies, positions and fills, history pages, counts, heartbeats, the
//! slot map. Part of the bridge (its state is the bridge's); it must not
//! touch client connections.

use super::*;
use crate::engine::replies;

impl Bridge {
    pub(super) fn on_reply(&mut self, now: u64, shard: usize, want: Want, v: Value) {
        if let Value::ServerError(e) = &v {
            match e.code() {
                "NOSCRIPT" => {
                    // Scripts were flushed behind our back: reload them
                    // (reconnect).
                    warn!("redis lost our scripts (SCRIPT FLUSH?); reconnecting");
                    self.shards[shard].cmd.reset(now, "NOSCRIPT");
                    self.failed.push(want);
                    return self.cmd_lost(now, shard, "redis command connection: NOSCRIPT");
                }
                "MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN" if !self.route.single => {
                    // The slot is elsewhere (or moving): the command did not
                    // run, so it fails honestly (`unavailable`, a join is
                    // refused, a read retried) and the map is read again.
                    debug!(error = ?e, "redis cluster redirection");
                    self.topology_wanted = true;
                    // What this node wrote may be missing in Redis now:
                    // reconcile at the next heartbeat with every master up
                    // (not at once: during an election every command gets
                    // CLUSTERDOWN, and reconciling on each would loop).
                    self.redirected = true;
                    return self.failed.push(want);
                }
                _ => {}
            }
        }
        if let Want::Topology = want {
            return self.apply_topology(now, shard, &v);
        }
        let cutoff = crate::auth::unix_now_ms().saturating_sub(self.cfg.ttl_ms);
        let (mut io, rooms, users, gathers) = self.io(now);
        match want {
            Want::Ignore(what) => {
                if let Value::ServerError(e) = &v {
                    warn!(what, error = ?e, "redis command failed");
                }
            }
            Want::Publish { items } => {
                let a = as_array(&v).unwrap_or(&[]);
                let ts = a.first().and_then(as_int).map(|t| t as u64);
                if ts.is_none() {
                    warn!(rooms = items.len(), reply = ?v, "publish script failed");
                }
                // Per room: its epoch, then a seq per message (a string
                // among them is a new epoch for what follows; `[seq, ts]`
                // a duplicate of the message with that seq).
                let mut vals = a.iter().skip(1).peekable();
                for (room, replies_of) in items {
                    let mut epoch = vals.next().and_then(as_str).unwrap_or("");
                    for reply in replies_of {
                        if let Some(e) = vals.next_if(|x| as_str(x).is_some()) {
                            epoch = as_str(e).unwrap_or("");
                        }
                        let seq = match (vals.next(), ts) {
                            (Some(Value::Int(s)), Some(ts)) => Some((*s as u64, ts, false)),
                            (Some(Value::Array(d)), Some(_)) => match d.as_slice() {
                                [Value::Int(s), Value::Int(t)] => {
                                    Some((*s as u64, *t as u64, true))
                                }
                                _ => None,
                            },
                            _ => None,
                        };
                        let Some(reply) = reply else { continue };
                        match seq {
                            Some((seq, ts, dup)) => {
                                let (core, ev) =
                                    replies::publish_ack(reply, &room, seq, epoch, ts, dup);
                                rooms.publish_acked(&mut io, &room, seq, core, ev);
                            }
                            _ => {
                                let msg = "the cluster engine failed; retry";
                                let (core, ev) =
                                    replies::refuse(reply, ErrorCode::Unavailable, msg);
                                io.event(core, ev);
                            }
                        }
                    }
                }
            }
            Want::Join { room, req } => rooms.on_join_reply(&mut io, room, req, v),
            Want::Position { room } => rooms.on_position(&mut io, room, v),
            Want::Fill { room, from, to } => rooms.on_fill(&mut io, room, from, to, v),
            Want::History { room, reply } => {
                let text = history_reply(&room, &reply, &v, cutoff);
                io.event(reply.core, replies::reply(reply.conn, &text));
            }
            Want::RoomInfo { room, id, answer } => {
                let (core, ev) = members_answer(&room, id, answer, &v);
                io.event(core, ev);
            }
            Want::UserConn { user } => users.on_conn_reply(&mut io, &user, &v),
            Want::UserOffline {
                user, rooms: last, ..
            } => users.on_offline_reply(&mut io, &user, last, &v),
            Want::Direct { agg } => {
                let n = as_int(&v).unwrap_or(0).max(0) as u64;
                io.event(
                    agg.core,
                    Event::AggExpect {
                        token: agg.token,
                        parts: 1,
                    },
                );
                io.event(
                    agg.core,
                    Event::AggDone {
                        token: agg.token,
                        delivered: n,
                    },
                );
            }
            Want::Broadcast { token } => {
                let n = as_int(&v).unwrap_or(0).max(0) as u32;
                gathers.expect(&mut io, token, n);
            }
            Want::Heartbeat => {
                let a = as_array(&v).unwrap_or(&[]);
                let was_registered = a.first().and_then(as_int) == Some(1);
                let dead: Vec<String> = a
                    .iter()
                    .skip(1)
                    .filter_map(as_str)
                    .filter(|n| *n != io.keys.node())
                    .map(String::from)
                    .collect();
                for node in dead {
                    nodes::start_reap(&mut io, &node);
                }
                if !was_registered && self.registered {
                    // Another node reaped this one while it was alive (it
                    // could not reach Redis, or stalled): put back what it
                    // holds.
                    warn!(
                        node = self.keys.node(),
                        "this node was reaped while alive; reconciling"
                    );
                    let (mut io, rooms, users, _) = self.io(now);
                    nodes::reconcile(&mut io, rooms, users);
                }
                self.registered = true;
            }
            Want::Probe => {
                let channel = self.keys.node_channel(self.keys.node());
                if as_int(&v) == Some(0)
                    && let Some(i) = self.shard_of(&channel)
                    && self.shards[i].sub.ready()
                {
                    self.probe = None;
                    self.shards[i].sub.reset(now, "not subscribed");
                    self.sub_lost(i, "redis pub/sub connection: not subscribed to our channel");
                }
            }
            Want::ClusterStats { agg } => {
                let json = cluster_json(&v);
                io.event(
                    agg.core,
                    Event::AggInfo {
                        token: agg.token,
                        json,
                    },
                );
            }
            Want::Reap(step) => nodes::on_reap_reply(&mut io, rooms, users, step, v),
            Want::Topology => {}
        }
    }

    /// A command that could not be sent or was never answered.
    pub(super) fn fail(&mut self, now: u64, want: Want) {
        let (mut io, rooms, users, gathers) = self.io(now);
        let unavailable = "the cluster engine (Redis) is unreachable; retry later";
        match want {
            Want::Publish { items } => {
                for reply in items.into_iter().flat_map(|(_, r)| r).flatten() {
                    let (core, ev) = replies::refuse(reply, ErrorCode::Unavailable, unavailable);
                    io.event(core, ev);
                }
            }
            Want::Join { room, req } => rooms.join_failed(&mut io, room, req),
            Want::History { reply, .. } => {
                let (core, ev) = replies::refuse(reply, ErrorCode::Unavailable, unavailable);
                io.event(core, ev);
            }
            Want::RoomInfo { answer, .. } => {
                let (core, ev) = match answer {
                    Answer::Ws(reply) => {
                        replies::refuse(reply, ErrorCode::Unavailable, unavailable)
                    }
                    Answer::Http { core, conn } => (
                        core,
                        Event::HttpReply {
                            conn,
                            status: 503,
                            body: crate::core::http::error_body("unavailable", unavailable),
                        },
                    ),
                };
                io.event(core, ev);
            }
            Want::Direct { agg } | Want::ClusterStats { agg } => io.event(
                agg.core,
                Event::AggFailed {
                    token: agg.token,
                    code: ErrorCode::Unavailable,
                },
            ),
            Want::Broadcast { token } => gathers.failed(&mut io, token),
            Want::Position { room } | Want::Fill { room, .. } => rooms.retry_later(&room),
            Want::UserOffline { user, token, rooms } => users.offline_failed(user, token, rooms),
            Want::Probe => self.probe = None,
            Want::Topology => {
                self.topology_out = false;
                self.topology_wanted = true;
            }
            Want::Ignore(_) | Want::UserConn { .. } | Want::Heartbeat | Want::Reap(_) => {
                // Redis is reconciled with this node's state when the
                // connection is back, or (commands dropped while the queue
                // was full) once the queue drained.
            }
        }
    }
}
