//! Following a Redis Cluster's slot map: asking a reachable master (or
//! the seeds) for `CLUSTER SLOTS`, giving new masters a shard and retiring
//! those that left, and moving the subscriptions of rooms, users and the
//! base channels whose slot changed master. Part of the bridge (its state
//! is the bridge's); it must not touch client connections.

use super::*;

impl Bridge {
    /// Asks a reachable master for the slot map when it is wanted (at
    /// start, after a redirection or a lost shard, at every heartbeat).
    pub(super) fn ask_topology(&mut self, now: u64) {
        if !self.topology_wanted
            || self.topology_out
            || now.saturating_sub(self.topology_at) < TOPOLOGY_MIN_MS
        {
            return;
        }
        let Some(i) = self
            .shards
            .iter()
            .position(|s| !s.retired && s.cmd.ready() && s.fifo.len() < MAX_IN_FLIGHT)
        else {
            // No master reachable: try the seeds as well.
            if self
                .shards
                .iter()
                .all(|s| s.retired || s.cmd.state() == ConnState::Down)
            {
                for t in self.seeds.clone() {
                    let m = Master {
                        host: t.host.clone(),
                        port: t.port,
                    };
                    match self.shards.iter().position(|s| s.master == m) {
                        Some(j) => self.shards[j].retired = false,
                        None => {
                            let j = self.shards.len();
                            self.shards.push(new_shard(j, m, &t, &self.tls));
                        }
                    }
                }
            }
            return;
        };
        self.topology_wanted = false;
        self.topology_out = true;
        self.topology_at = now;
        let s = &mut self.shards[i];
        s.cmd.send(redis::cmd("CLUSTER").arg("SLOTS"));
        s.fifo.push_back((Want::Topology, now));
    }

    /// A `CLUSTER SLOTS` reply from shard `from`: routes by the new map;
    /// masters new to it get shards, masters no longer in it are retired,
    /// and every room and user whose channel moved to another master
    /// subscribes there (rooms then re-check their position and fill the
    /// gap from their stream, as after any lost subscription).
    pub(super) fn apply_topology(&mut self, now: u64, from: usize, v: &redis::Value) {
        self.topology_out = false;
        let map = match SlotMap::parse(v, &self.shards[from].master.host) {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "redis cluster: bad slot map");
                self.topology_wanted = true;
                return;
            }
        };
        if map.unowned() > 0 {
            warn!(
                unowned = map.unowned(),
                "redis cluster: slots without a master"
            );
        }
        let template = self.seeds[0].clone();
        let mut index = Vec::with_capacity(map.masters.len());
        for m in &map.masters {
            let i = match self.shards.iter().position(|s| s.master == *m) {
                Some(i) => {
                    self.shards[i].retired = false;
                    i
                }
                None => {
                    let i = self.shards.len();
                    info!(master = %format!("{}:{}", m.host, m.port), "redis cluster: new master");
                    self.shards
                        .push(new_shard(i, m.clone(), &template, &self.tls));
                    i
                }
            };
            index.push(i as u16);
        }
        let owner: Vec<u16> = map
            .owner
            .iter()
            .map(|&o| {
                if o == UNOWNED {
                    UNOWNED
                } else {
                    index[o as usize]
                }
            })
            .collect();
        // Masters no longer in the map (or seeds that are not masters) are
        // retired, whether or not the slots moved.
        for i in 0..self.shards.len() {
            if !self.shards[i].retired && !index.contains(&(i as u16)) {
                let m = &self.shards[i].master;
                info!(master = %format!("{}:{}", m.host, m.port), "redis cluster: not a master any more");
                self.shards[i].retired = true;
                self.shards[i].cmd.reset(now, "retired");
                self.shards[i].sub.reset(now, "retired");
                self.cmd_lost(now, i, "redis cluster: a master was retired");
                self.shards[i].subs.clear();
            }
        }
        if owner == self.route.owner {
            self.after_topology(now, false);
            return;
        }
        let old = std::mem::replace(
            &mut self.route,
            Route {
                single: false,
                owner,
            },
        );
        let first = old.owner.is_empty();
        if !first {
            let new = self.route.clone();
            let moved = |ch: &str| old.shard_of(ch.as_bytes()) != new.shard_of(ch.as_bytes());
            let keys = self.keys.clone();
            if moved(&keys.bcast()) {
                self.base_subscribed = false;
            }
            if moved(&keys.node_channel(keys.node())) {
                self.node_subscribed = false;
                self.probe = None;
            }
            let (mut io, rooms, _, _) = self.io(now);
            rooms.on_sub_lost(&mut io, &|name| moved(&keys.room_channel(name)));
            self.resubscribe_moved(now, &old);
        }
        self.after_topology(now, first);
    }

    /// Subscribes the base channels and users that moved to another shard.
    pub(super) fn resubscribe_moved(&mut self, now: u64, old: &Route) {
        let route = self.route.clone();
        let moved = |ch: &str| old.shard_of(ch.as_bytes()) != route.shard_of(ch.as_bytes());
        self.subscribe_base();
        let (mut io, _, users, _) = self.io(now);
        users.resubscribe(&mut io, &moved);
    }

    /// Rooms without a confirmed subscription subscribe again (and, after
    /// Redis dropped one, the base channels and users); the first map also
    /// puts this node's state into Redis.
    pub(super) fn after_topology(&mut self, now: u64, first: bool) {
        if std::mem::take(&mut self.resubscribe_pending) && !first {
            self.subscribe_base();
            let (mut io, _, users, _) = self.io(now);
            users.resubscribe(&mut io, &|_| true);
        }
        if first {
            info!(
                node = self.keys.node(),
                masters = self.shards.iter().filter(|s| !s.retired).count(),
                "redis cluster: slot map known"
            );
        }
        let (mut io, rooms, users, _) = self.io(now);
        rooms.resubscribe(&mut io, &|_| true, true);
        if first {
            users.resubscribe(&mut io, &|_| true);
            nodes::reconcile(&mut io, rooms, users);
            rooms.on_cmd_back(&mut io);
            self.subscribe_base();
            self.heartbeat(now);
        }
        self.update_health();
    }

    /// Subscribes the node's own channel and the broadcast channel, each
    /// unless Redis confirmed it already (the node channel first).
    pub(super) fn subscribe_base(&mut self) {
        let node_channel = self.keys.node_channel(self.keys.node());
        let bcast = self.keys.bcast();
        let todo = [
            (!self.node_subscribed).then_some(node_channel),
            (!self.base_subscribed).then_some(bcast),
        ];
        for ch in todo.into_iter().flatten() {
            if let Some(s) = self.shard_of(&ch).and_then(|i| self.shards.get_mut(i))
                && s.sub.ready()
            {
                s.subs.push((true, ch));
            }
        }
    }
}
