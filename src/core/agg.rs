//! Counts gathered on the asking core from several parts: the `delivered`
//! of a `direct` or an API notification (one report per core holding the
//! recipient's connections), broadcasts (one per core), and stats or
//! metrics (one snapshot per core). A gathering is finished when every
//! expected part reported, or after [`AGG_TIMEOUT_MS`] with what it has.
//!
//! [`Aggs`] owns the gatherings in progress; the core answers a finished
//! one (an `ack`, an HTTP body). This module must not deliver anything.

use super::conn::State;
use super::{Core, http};
use crate::engine::{AggRef, ConnRef};
use crate::proto::command::Id;
use crate::proto::event::Event;
use std::collections::HashMap;

/// A gathering that has not completed by then answers with what it has.
pub(super) const AGG_TIMEOUT_MS: u64 = 5000;

/// Where a gathered count goes when complete.
#[derive(Debug)]
pub(super) enum AggTarget {
    /// `ack` of a `direct` with `delivered`.
    Direct { conn: ConnRef, id: Option<Id> },
    /// HTTP `{"delivered": N}` (`/api/notify`, `/api/broadcast`).
    Delivered { conn: ConnRef },
    /// HTTP stats or metrics from every core's snapshot.
    /// `metrics`: `/metrics` (else `/api/stats`), in OpenMetrics when
    /// `openmetrics` (the scraper asked for it), else Prometheus text 0.0.4.
    Stats {
        conn: ConnRef,
        metrics: bool,
        openmetrics: bool,
    },
}

/// A count being gathered on this core.
#[derive(Debug)]
pub(super) struct Agg {
    target: AggTarget,
    /// `AggExpect`s still to come (one per user's home asked).
    waiting_expects: u32,
    /// Reports expected so far.
    parts: u32,
    /// Reports received.
    got: u32,
    delivered: u64,
    snapshots: Vec<crate::metrics::Snapshot>,
    /// The cluster's part of stats (Redis engine).
    cluster: Option<String>,
    /// The engine could not complete it.
    failed: Option<crate::proto::ErrorCode>,
    started_ms: u64,
}

impl Agg {
    fn complete(&self) -> bool {
        self.waiting_expects == 0 && self.got >= self.parts
    }
}

/// The gatherings in progress on one core.
#[derive(Debug, Default)]
pub(super) struct Aggs {
    aggs: HashMap<u64, Agg>,
    next_token: u64,
}

impl Aggs {
    /// Starts a gathering; returns its token.
    fn start(&mut self, target: AggTarget, waiting_expects: u32, parts: u32, now_ms: u64) -> u64 {
        self.next_token += 1;
        let token = self.next_token;
        let agg = Agg {
            target,
            waiting_expects,
            parts,
            got: 0,
            delivered: 0,
            snapshots: Vec::new(),
            cluster: None,
            failed: None,
            started_ms: now_ms,
        };
        self.aggs.insert(token, agg);
        token
    }

    /// Applies `f` to the gathering and takes it out when it is complete.
    fn update(&mut self, token: u64, f: impl FnOnce(&mut Agg)) -> Option<Agg> {
        let a = self.aggs.get_mut(&token)?;
        f(a);
        if a.complete() {
            self.aggs.remove(&token)
        } else {
            None
        }
    }

    /// Takes out the gatherings that waited too long.
    fn expired(&mut self, now_ms: u64) -> Vec<Agg> {
        let late: Vec<u64> = self
            .aggs
            .iter()
            .filter(|(_, a)| now_ms.saturating_sub(a.started_ms) >= AGG_TIMEOUT_MS)
            .map(|(&t, _)| t)
            .collect();
        late.into_iter()
            .filter_map(|t| self.aggs.remove(&t))
            .collect()
    }
}

impl Core {
    /// Starts a gathering; returns its reference.
    pub(super) fn agg_start(
        &mut self,
        target: AggTarget,
        waiting_expects: u32,
        parts: u32,
    ) -> AggRef {
        let token = self.aggs.start(target, waiting_expects, parts, self.now_ms);
        if let Some(a) = self.aggs.update(token, |_| {}) {
            self.agg_finish(a, false);
        }
        AggRef {
            core: self.id,
            token,
        }
    }

    /// `parts` more reports are coming for `token`.
    pub(super) fn aggs_expect(&mut self, token: u64, parts: u32) {
        let done = self.aggs.update(token, |a| {
            a.waiting_expects = a.waiting_expects.saturating_sub(1);
            a.parts += parts;
        });
        if let Some(a) = done {
            self.agg_finish(a, false);
        }
    }

    /// One report for `token`.
    pub(super) fn aggs_done(&mut self, token: u64, delivered: u64) {
        let done = self.aggs.update(token, |a| {
            a.got += 1;
            a.delivered += delivered;
        });
        if let Some(a) = done {
            self.agg_finish(a, false);
        }
    }

    /// The engine cannot complete `token`: it is answered with the error.
    pub(super) fn aggs_failed(&mut self, token: u64, code: crate::proto::ErrorCode) {
        let done = self.aggs.update(token, |a| {
            a.failed = Some(code);
            a.waiting_expects = 0;
            a.got = a.parts;
        });
        if let Some(a) = done {
            self.agg_finish(a, false);
        }
    }

    /// The cluster's part of stats for `token`.
    pub(super) fn aggs_info(&mut self, token: u64, json: String) {
        let done = self.aggs.update(token, |a| {
            a.got += 1;
            a.cluster = Some(json);
        });
        if let Some(a) = done {
            self.agg_finish(a, false);
        }
    }

    /// One core's snapshot for `token`.
    pub(super) fn on_stats_reply(&mut self, token: u64, snapshot: crate::metrics::Snapshot) {
        let done = self.aggs.update(token, |a| {
            a.got += 1;
            a.snapshots.push(snapshot);
        });
        if let Some(a) = done {
            self.agg_finish(a, false);
        }
    }

    pub(super) fn agg_finish(&mut self, a: Agg, timed_out: bool) {
        if let Some(code) = a.failed {
            let msg = "the cluster engine (Redis) is unreachable; retry later";
            return match a.target {
                AggTarget::Direct { conn, id } => {
                    if self.live(conn.key as usize, conn.generation) {
                        let err = crate::proto::event::error(id.as_ref(), code, msg);
                        self.reply(conn.key as usize, &err);
                    }
                }
                AggTarget::Delivered { conn } | AggTarget::Stats { conn, .. } => {
                    let body = http::error_body(code.as_str(), msg);
                    self.http_answer(conn, code.http_status(), body);
                }
            };
        }
        match a.target {
            AggTarget::Direct { conn, id } => {
                let ack = Event::new("ack")
                    .id(id.as_ref())
                    .num("delivered", a.delivered)
                    .finish();
                if self.live(conn.key as usize, conn.generation) {
                    self.reply(conn.key as usize, &ack);
                }
            }
            AggTarget::Delivered { conn } => {
                let body = format!("{{\"delivered\":{}}}", a.delivered);
                self.http_answer(conn, 200, body);
            }
            AggTarget::Stats {
                conn,
                metrics,
                openmetrics,
            } => {
                let mut snaps = a.snapshots;
                snaps.sort_by_key(|s| s.core);
                if metrics && timed_out {
                    // Partial sums would look like counter resets.
                    let body = http::error_body("unavailable", "a core did not answer in time");
                    self.http_answer(conn, 503, body);
                } else if metrics {
                    let node = crate::metrics::NodeStats {
                        redis: self.shared.node.as_ref().map(|_| {
                            (
                                !self
                                    .shared
                                    .redis_down
                                    .load(std::sync::atomic::Ordering::Relaxed),
                                self.shared
                                    .redis_bytes_in
                                    .load(std::sync::atomic::Ordering::Relaxed),
                            )
                        }),
                    };
                    let text = crate::metrics::encode_prometheus(snaps, node);
                    if openmetrics {
                        self.http_answer_raw(
                            conn,
                            200,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            text,
                        );
                    } else {
                        self.http_answer_raw(
                            conn,
                            200,
                            "text/plain; version=0.0.4; charset=utf-8",
                            crate::metrics::openmetrics_to_text(&text),
                        );
                    }
                } else {
                    let status = if timed_out { 503 } else { 200 };
                    let mut body = stats_json(&snaps, self.bus.cores(), self.now_ms);
                    if let Some(node) = &self.shared.node {
                        // `{..., "node": name, "cluster": {...}}`
                        body.pop();
                        body.push_str(",\"node\":");
                        crate::proto::event::push_json_str(&mut body, node);
                        body.push_str(",\"cluster\":");
                        body.push_str(a.cluster.as_deref().unwrap_or("null"));
                        body.push('}');
                    }
                    self.http_answer(conn, status, body);
                }
            }
        }
    }

    /// Asks every core for its counters; answers `/api/stats` or `/metrics`.
    pub(super) fn gather_stats(&mut self, conn: ConnRef, metrics: bool, openmetrics: bool) {
        let cores = self.bus.cores();
        // With Redis, `/api/stats` also reports the cluster (from the bridge).
        let cluster = !metrics && matches!(self.link, crate::engine::Link::Redis(_));
        let parts = cores as u32 + u32::from(cluster);
        let target = AggTarget::Stats {
            conn,
            metrics,
            openmetrics,
        };
        let agg = self.agg_start(target, 0, parts);
        for core in 0..cores {
            self.route(core, crate::bus::BusMsg::StatsRequest { agg });
        }
        if cluster {
            self.submit(crate::engine::Command::ClusterStats { agg });
        }
    }

    /// This core's counters, for a scrape.
    pub(super) fn snapshot(&self) -> crate::metrics::Snapshot {
        let (mut conns, mut sse) = (0, 0);
        for (_, c) in self.conns.iter() {
            match c.state {
                State::Ws(_) => conns += 1,
                State::Sse(_) => sse += 1,
                State::Http(_) => {}
            }
        }
        crate::metrics::Snapshot {
            core: self.id,
            connections: conns,
            sse,
            users: self.home.as_ref().map_or(0, |h| h.users.online() as u64),
            rooms: self.home.as_ref().map_or(0, |h| h.rooms.len() as u64),
            in_per_s: self.rates.2,
            out_per_s: self.rates.3,
            last_loop_ms: self.now_ms,
            busy_ratio: self.headroom.busy_ratio,
            frames_per_write: self.headroom.frames_per_write,
            metrics: {
                let mut m = self.metrics.clone();
                m.write_syscalls = super::stream::write_syscalls();
                m.frames_queued = self.flush.frames;
                m.bytes_in = self.scratch.bytes;
                m.published = self.home.as_ref().map_or(0, |h| h.published());
                m
            },
        }
    }

    /// Once a second: message rates, the headroom ratios, late gatherings.
    pub(super) fn tick(&mut self) {
        let (in0, out0) = (self.rates.0, self.rates.1);
        self.rates = (
            self.metrics.messages_in,
            self.metrics.messages_out,
            self.metrics.messages_in - in0,
            self.metrics.messages_out - out0,
        );
        let now = (
            self.metrics.busy_us,
            self.now_us,
            self.flush.frames,
            super::stream::write_syscalls(),
        );
        let (busy0, at0, frames0, writes0) = self.headroom.mark;
        let wall = now.1.saturating_sub(at0).max(1);
        let busy = (now.0 - busy0) as f64 / wall as f64;
        let writes = now.3 - writes0;
        let per_write = if writes == 0 {
            0.0
        } else {
            (now.2 - frames0) as f64 / writes as f64
        };
        self.headroom = super::Headroom {
            mark: now,
            busy_ratio: busy.min(1.0),
            frames_per_write: per_write,
        };
        for a in self.aggs.expired(self.now_ms) {
            self.agg_finish(a, true);
        }
    }
}

/// The `/api/stats` body.
fn stats_json(snaps: &[crate::metrics::Snapshot], cores: usize, now_ms: u64) -> String {
    let sum = |f: &dyn Fn(&crate::metrics::Snapshot) -> u64| -> u64 { snaps.iter().map(f).sum() };
    let mut per_core = String::from("[");
    for (i, s) in snaps.iter().enumerate() {
        if i > 0 {
            per_core.push(',');
        }
        per_core.push_str(
            &Event::object()
                .num("core", s.core as u64)
                .num("connections", s.connections)
                .num("sse", s.sse)
                .num("users", s.users)
                .num("rooms", s.rooms)
                .num("messages_in_per_s", s.in_per_s)
                .num("messages_out_per_s", s.out_per_s)
                .bool("alive", now_ms.saturating_sub(s.last_loop_ms) <= 1000)
                .finish(),
        );
    }
    per_core.push(']');
    Event::object()
        .num("cores", cores as u64)
        .num("cores_answered", snaps.len() as u64)
        .num("connections", sum(&|s| s.connections))
        .num("sse", sum(&|s| s.sse))
        .num("users", sum(&|s| s.users))
        .num("rooms", sum(&|s| s.rooms))
        .num("messages_in_per_s", sum(&|s| s.in_per_s))
        .num("messages_out_per_s", sum(&|s| s.out_per_s))
        .num("messages_in", sum(&|s| s.metrics.messages_in))
        .num("messages_out", sum(&|s| s.metrics.messages_out))
        .num("published", sum(&|s| s.metrics.published))
        .raw("per_core", &per_core)
        .finish()
}
