//! Results of a load run: merging workers and shard processes, server CPU
//! and memory samples from /proc, and the printed table / JSON.

use crate::perf::{READS, Syscalls, WAITS, WRITES};
use crate::worker::{Reach, WorkerResult};
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// CPU time of a process, seconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuSample {
    /// User-space seconds.
    pub user: f64,
    /// Kernel seconds.
    pub sys: f64,
}

impl CpuSample {
    /// Reads `/proc/PID/stat` (utime and stime, fields 14 and 15).
    pub fn take(pid: u32) -> Option<CpuSample> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may contain spaces: split after ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // SAFETY: sysconf has no memory-safety preconditions.
        let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Some(CpuSample {
            user: f.get(11)?.parse::<f64>().ok()? / tick,
            sys: f.get(12)?.parse::<f64>().ok()? / tick,
        })
    }

    /// The sum over `pids` (`None` without any, or when one is gone).
    pub fn take_all(pids: &[u32]) -> Option<CpuSample> {
        if pids.is_empty() {
            return None;
        }
        let mut sum = CpuSample::default();
        for &pid in pids {
            let s = CpuSample::take(pid)?;
            sum.user += s.user;
            sum.sys += s.sys;
        }
        Some(sum)
    }

    /// The whole machine's busy time, all CPUs (`/proc/stat`): user + nice,
    /// and system + irq + softirq; idle, iowait and steal left out.
    pub fn machine() -> Option<CpuSample> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let f: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(0.0))
            .collect();
        // SAFETY: sysconf has no memory-safety preconditions.
        let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let at = |i: usize| f.get(i).copied().unwrap_or(0.0);
        Some(CpuSample {
            user: (at(0) + at(1)) / tick,
            sys: (at(2) + at(5) + at(6)) / tick,
        })
    }

    /// `self - earlier`.
    pub fn minus(self, earlier: CpuSample) -> CpuSample {
        CpuSample {
            user: self.user - earlier.user,
            sys: self.sys - earlier.sys,
        }
    }
}

/// Server memory and kernel slab, KiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemSample {
    /// Server resident set.
    pub rss_kib: u64,
    /// Kernel slab (`Slab:` of /proc/meminfo), whole machine.
    pub slab_kib: u64,
}

fn kib_field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl MemSample {
    /// Samples the server `pid` and the machine's slab.
    pub fn take(pid: u32) -> MemSample {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        MemSample {
            rss_kib: kib_field(&status, "VmRSS:"),
            slab_kib: kib_field(&meminfo, "Slab:"),
        }
    }
}

/// Everything a run measured.
#[derive(Default)]
pub struct Outcome {
    /// Measured window, seconds.
    pub window_s: f64,
    /// The measured window on the wall clock (µs since the epoch), as
    /// the process that reports saw it: which publishes `--reach` counts.
    pub window_wall_us: (u64, u64),
    /// Operations in the window (echoes, deliveries, handshakes).
    pub ops: u64,
    /// Publishes acknowledged in the window.
    pub published: u64,
    /// Server CPU over the window.
    pub server_cpu: Option<CpuSample>,
    /// The generator's own CPU over the window (all its processes).
    pub gen_cpu: Option<CpuSample>,
    /// The whole machine's busy CPU over the window.
    pub machine_cpu: Option<CpuSample>,
    /// Latencies, µs.
    pub hist: Option<Histogram<u64>>,
    /// Fan-out: publish→ack latencies, µs.
    pub ack_hist: Option<Histogram<u64>>,
    /// Rate mode: how late sends left against their schedule, µs.
    pub lag_hist: Option<Histogram<u64>>,
    /// `--perf-syscalls`: the server's syscalls over the window.
    pub syscalls: Option<Syscalls>,
    /// `--perf-syscalls`: why there are no counts.
    pub perf_error: Option<String>,
    /// Fan-out: messages missing (gaps and tail).
    pub missing: u64,
    /// Fan-out: messages out of order.
    pub out_of_order: u64,
    /// Fan-out per room: (the seq every member must reach — the highest
    /// acked, or seen if higher —, members, sum of last seqs).
    pub rooms: Vec<(u64, u64, u64)>,
    /// Fan-out: publishes never acknowledged by the end of the drain.
    pub unacked: u64,
    /// Fan-out: workers whose drain ended at its deadline, members short.
    pub drain_timeouts: u64,
    /// Errors counted.
    pub errors: u64,
    /// Connections that failed to open or join.
    pub setup_failures: u64,
    /// Connections open after setup / at the end.
    pub open_after_setup: u64,
    /// Connections open when the window closed.
    pub open_at_end: u64,
    /// Idle: memory (before connecting, after connecting).
    pub idle_mem: Option<(MemSample, MemSample)>,
    /// First error text.
    pub first_error: Option<String>,
    /// TLS: full handshakes completed over the whole run.
    pub tls_full: u64,
    /// TLS: resumed handshakes completed over the whole run.
    pub tls_resumed: u64,
    /// `--reach`: every publish of the run, (room, seq) → how far it got.
    pub reach: BTreeMap<(usize, u64), Reach>,
}

/// `--reach` over the publishes sent inside the measured window.
#[derive(Debug, Default, PartialEq)]
pub struct ReachSummary {
    /// Publishes sent inside the window.
    pub publishes: u64,
    /// Of those, how many did not reach every member of their room.
    pub incomplete: u64,
    /// Publish → last member, µs, of each complete publish in seq order.
    pub times_us: Vec<u64>,
}

impl ReachSummary {
    /// The `q` quantile (nearest rank) of the complete publishes' times.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let mut t = self.times_us.clone();
        t.sort_unstable();
        let rank = ((q * t.len() as f64).ceil() as usize).clamp(1, t.len().max(1));
        t.get(rank - 1).copied()
    }
}

fn add_reach(into: &mut BTreeMap<(usize, u64), Reach>, from: BTreeMap<(usize, u64), Reach>) {
    for (k, r) in from {
        into.entry(k).or_default().merge(r);
    }
}

fn pct(h: &Option<Histogram<u64>>, q: f64) -> Option<u64> {
    h.as_ref()
        .filter(|h| !h.is_empty())
        .map(|h| h.value_at_quantile(q))
}

fn hist_to_hex(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut buf)
        .expect("serialize histogram");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn hist_from_hex(s: &str) -> Option<Histogram<u64>> {
    let bytes: Vec<u8> = (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16))
        .collect::<Result<_, _>>()
        .ok()?;
    Deserializer::new().deserialize(&mut &bytes[..]).ok()
}

fn add_hist(into: &mut Option<Histogram<u64>>, h: Option<Histogram<u64>>) {
    match (into.as_mut(), h) {
        (Some(a), Some(b)) => {
            let _ = a.add(b);
        }
        (None, Some(b)) => *into = Some(b),
        _ => {}
    }
}

fn add_rooms(into: &mut Vec<(u64, u64, u64)>, rooms: &[(u64, u64, u64)]) {
    if into.len() < rooms.len() {
        into.resize(rooms.len(), (0, 0, 0));
    }
    for (a, b) in into.iter_mut().zip(rooms) {
        a.0 = a.0.max(b.0);
        a.1 += b.1;
        a.2 += b.2;
    }
}

impl Outcome {
    /// Combines the workers of one process.
    pub fn merge_workers(results: Vec<WorkerResult>) -> Outcome {
        let mut o = Outcome::default();
        for r in results {
            add_hist(&mut o.hist, r.hist);
            add_hist(&mut o.ack_hist, r.ack_hist);
            add_hist(&mut o.lag_hist, r.lag_hist);
            o.missing += r.missing;
            o.out_of_order += r.out_of_order;
            o.setup_failures += r.setup_failures;
            o.drain_timeouts += u64::from(r.drain_timed_out);
            add_rooms(&mut o.rooms, &r.rooms);
            add_reach(&mut o.reach, r.reach);
            if o.first_error.is_none() {
                o.first_error = r.first_error;
            }
        }
        o
    }

    /// Combines shard processes (their windows ran in lock step).
    pub fn merge(shards: Vec<Outcome>) -> Outcome {
        let mut o = Outcome::default();
        let n = shards.len().max(1) as f64;
        for s in shards {
            o.window_s += s.window_s / n;
            o.ops += s.ops;
            o.published += s.published;
            add_hist(&mut o.hist, s.hist);
            add_hist(&mut o.ack_hist, s.ack_hist);
            add_hist(&mut o.lag_hist, s.lag_hist);
            o.missing += s.missing;
            o.out_of_order += s.out_of_order;
            add_rooms(&mut o.rooms, &s.rooms);
            add_reach(&mut o.reach, s.reach);
            o.errors += s.errors;
            o.setup_failures += s.setup_failures;
            o.unacked += s.unacked;
            o.drain_timeouts += s.drain_timeouts;
            o.open_after_setup += s.open_after_setup;
            o.open_at_end += s.open_at_end;
            o.tls_full += s.tls_full;
            o.tls_resumed += s.tls_resumed;
            if o.first_error.is_none() {
                o.first_error = s.first_error;
            }
        }
        o
    }

    /// Messages members never got at the end (their last seq short of the
    /// room's last acknowledged one), plus gaps seen on the way.
    pub fn total_missing(&self) -> u64 {
        let tail: u64 = self
            .rooms
            .iter()
            .map(|&(max, members, sum)| max * members - sum.min(max * members))
            .sum();
        self.missing + tail
    }

    /// `--reach`: the publishes sent inside the window, how long each
    /// took to reach the last member of its room (`None` without
    /// `--reach` data). A publish reached everybody when as many members
    /// received it as the room has.
    pub fn reach_summary(&self) -> Option<ReachSummary> {
        if self.reach.is_empty() {
            return None;
        }
        let (from, to) = self.window_wall_us;
        let mut s = ReachSummary::default();
        for (&(room, _), r) in &self.reach {
            if r.sent_us < from || r.sent_us > to {
                continue;
            }
            s.publishes += 1;
            let members = self.rooms.get(room).map_or(0, |r| r.1);
            if r.count == members {
                s.times_us.push(r.last_us.saturating_sub(r.sent_us));
            } else {
                s.incomplete += 1;
            }
        }
        Some(s)
    }

    /// No errors, nothing missing or out of order, everything opened,
    /// every publish acknowledged and the drain finished in time (and,
    /// with `--reach`, every publish of the window reached every member).
    pub fn ok(&self) -> bool {
        self.reach_summary().is_none_or(|r| r.incomplete == 0)
            && self.errors == 0
            && self.total_missing() == 0
            && self.out_of_order == 0
            && self.setup_failures == 0
            && self.unacked == 0
            && self.drain_timeouts == 0
    }

    fn rate(&self, n: u64) -> f64 {
        if self.window_s > 0.0 {
            n as f64 / self.window_s
        } else {
            0.0
        }
    }

    fn pct(&self, q: f64) -> Option<u64> {
        pct(&self.hist, q)
    }

    /// Counts of the syscalls `names` over the window, their total, per
    /// operation and per second.
    fn syscall_json(&self, s: &Syscalls, names: &[&str]) -> Value {
        let mut v = serde_json::Map::new();
        for n in names {
            v.insert((*n).into(), s.get(n).into());
        }
        let total = s.sum(names);
        v.insert("total".into(), total.into());
        let per_op = (self.ops > 0).then(|| total as f64 / self.ops as f64);
        v.insert("per_op".into(), json!(per_op));
        v.insert("per_s".into(), json!(self.rate(total)));
        Value::Object(v)
    }

    /// JSON form (also how shards report to the parent).
    pub fn to_json(&self, args: &Value) -> Value {
        let cpu = self.server_cpu.map(|c| {
            let per = |s: f64| {
                if self.ops > 0 {
                    s * 1e6 / self.ops as f64
                } else {
                    0.0
                }
            };
            json!({"user_s": c.user, "sys_s": c.sys,
                   "user_us_per_op": per(c.user), "sys_us_per_op": per(c.sys),
                   "total_us_per_op": per(c.user + c.sys),
                   "cores_busy": (c.user + c.sys) / self.window_s.max(1e-9)})
        });
        let busy = |c: CpuSample| (c.user + c.sys) / self.window_s.max(1e-9);
        let gen_cpu = self
            .gen_cpu
            .map(|c| json!({"user_s": c.user, "sys_s": c.sys, "cores_busy": busy(c)}));
        // What else ran: the machine minus the server and the generator.
        let machine_cpu = self.machine_cpu.map(|m| {
            let known = self.server_cpu.map_or(0.0, busy) + self.gen_cpu.map_or(0.0, busy);
            json!({"cores_busy": busy(m),
                   "other_cores_busy": (busy(m) - known).max(0.0)})
        });
        let mem = self.idle_mem.map(|(a, b)| {
            let n = self.open_after_setup.max(1) as f64;
            json!({"rss_before_kib": a.rss_kib, "rss_after_kib": b.rss_kib,
                   "rss_per_conn_kib": (b.rss_kib as f64 - a.rss_kib as f64) / n,
                   "slab_before_kib": a.slab_kib, "slab_after_kib": b.slab_kib,
                   "slab_per_conn_kib": (b.slab_kib as f64 - a.slab_kib as f64) / n})
        });
        let reach = self.reach_summary().map(|r| {
            json!({"publishes": r.publishes, "incomplete": r.incomplete,
                   "p50": r.quantile(0.5), "p90": r.quantile(0.9),
                   "min": r.times_us.iter().min(), "max": r.times_us.iter().max(),
                   "times": r.times_us})
        });
        // Shards hand every publish to the parent, which merges them.
        let reach_raw: Vec<[u64; 5]> = self
            .reach
            .iter()
            .map(|(&(room, seq), r)| [room as u64, seq, r.sent_us, r.last_us, r.count])
            .collect();
        json!({
            "args": args,
            "window_s": self.window_s,
            "window_wall_us": [self.window_wall_us.0, self.window_wall_us.1],
            "reach_us": reach,
            "reach_raw": (!reach_raw.is_empty()).then_some(reach_raw),
            "ops": self.ops,
            "ops_per_s": self.rate(self.ops),
            "published": self.published,
            "published_per_s": self.rate(self.published),
            "latency_us": {
                "p50": self.pct(0.5), "p99": self.pct(0.99), "p999": self.pct(0.999),
                "max": self.hist.as_ref().filter(|h| !h.is_empty()).map(|h| h.max()),
                "count": self.hist.as_ref().map(|h| h.len()).unwrap_or(0),
            },
            "hist_hex": self.hist.as_ref().map(hist_to_hex),
            "ack_latency_us": {
                "p50": pct(&self.ack_hist, 0.5), "p99": pct(&self.ack_hist, 0.99),
                "p999": pct(&self.ack_hist, 0.999),
                "max": self.ack_hist.as_ref().filter(|h| !h.is_empty()).map(|h| h.max()),
                "count": self.ack_hist.as_ref().map(|h| h.len()).unwrap_or(0),
            },
            "ack_hist_hex": self.ack_hist.as_ref().map(hist_to_hex),
            "send_lag_us": {
                "p50": pct(&self.lag_hist, 0.5), "p99": pct(&self.lag_hist, 0.99),
                "max": self.lag_hist.as_ref().filter(|h| !h.is_empty()).map(|h| h.max()),
                "count": self.lag_hist.as_ref().map(|h| h.len()).unwrap_or(0),
            },
            "lag_hist_hex": self.lag_hist.as_ref().map(hist_to_hex),
            "write_syscalls": self.syscalls.as_ref().map(|s| self.syscall_json(s, &WRITES)),
            "read_syscalls": self.syscalls.as_ref().map(|s| self.syscall_json(s, &READS)),
            "epoll_waits": self.syscalls.as_ref().map(|s| self.syscall_json(s, &WAITS)),
            "perf_error": self.perf_error,
            "server_cpu": cpu,
            "generator_cpu": gen_cpu,
            "machine_cpu": machine_cpu,
            "memory": mem,
            "missing": self.total_missing(),
            "gaps": self.missing,
            "out_of_order": self.out_of_order,
            "rooms": self.rooms,
            "unacked": self.unacked,
            "drain_timeouts": self.drain_timeouts,
            "errors": self.errors,
            "first_error": self.first_error,
            "setup_failures": self.setup_failures,
            "open_after_setup": self.open_after_setup,
            "open_at_end": self.open_at_end,
            "tls_handshakes": {"full": self.tls_full, "resumed": self.tls_resumed},
            "ok": self.ok(),
        })
    }

    /// Reads a shard's JSON.
    pub fn from_json(v: &Value) -> Outcome {
        let u = |k: &str| v[k].as_u64().unwrap_or(0);
        Outcome {
            window_s: v["window_s"].as_f64().unwrap_or(0.0),
            ops: u("ops"),
            published: u("published"),
            hist: v["hist_hex"].as_str().and_then(hist_from_hex),
            ack_hist: v["ack_hist_hex"].as_str().and_then(hist_from_hex),
            lag_hist: v["lag_hist_hex"].as_str().and_then(hist_from_hex),
            missing: u("gaps"),
            out_of_order: u("out_of_order"),
            rooms: serde_json::from_value(v["rooms"].clone()).unwrap_or_default(),
            errors: u("errors"),
            setup_failures: u("setup_failures"),
            unacked: u("unacked"),
            drain_timeouts: u("drain_timeouts"),
            open_after_setup: u("open_after_setup"),
            open_at_end: u("open_at_end"),
            first_error: v["first_error"].as_str().map(String::from),
            tls_full: v["tls_handshakes"]["full"].as_u64().unwrap_or(0),
            tls_resumed: v["tls_handshakes"]["resumed"].as_u64().unwrap_or(0),
            reach: serde_json::from_value::<Vec<[u64; 5]>>(v["reach_raw"].clone())
                .unwrap_or_default()
                .into_iter()
                .map(|[room, seq, sent_us, last_us, count]| {
                    let r = Reach {
                        sent_us,
                        last_us,
                        count,
                    };
                    ((room as usize, seq), r)
                })
                .collect(),
            ..Default::default()
        }
    }

    /// Human-readable table.
    pub fn table(&self, args: &Value) -> String {
        let j = self.to_json(args);
        let scenario = args["scenario"].as_str().unwrap_or("?");
        let mut out = String::new();
        let mut line = |k: &str, v: String| out.push_str(&format!("{k:<14}{v}\n"));
        line("scenario", format!("{scenario}  {}", args));
        line("window", format!("{:.2} s", self.window_s));
        let (what, one) = match scenario {
            "echo" => ("echoes", "echo"),
            "fanout" => ("deliveries", "delivery"),
            "connect" => ("handshakes", "handshake"),
            "recovery" => ("recoveries", "recovery"),
            _ => ("ops", "op"),
        };
        line(
            "throughput",
            format!(
                "{:.0} {what}/s ({} in the window)",
                self.rate(self.ops),
                self.ops
            ),
        );
        if scenario == "fanout" {
            line(
                "published",
                format!("{:.0} msg/s", self.rate(self.published)),
            );
            line(
                "order",
                format!(
                    "missing {}  out of order {}",
                    self.total_missing(),
                    self.out_of_order
                ),
            );
            if self.unacked > 0 || self.drain_timeouts > 0 {
                line(
                    "drain",
                    format!(
                        "TIMED OUT: {} publishes never acked, {} worker(s) with members short",
                        self.unacked, self.drain_timeouts
                    ),
                );
            }
        }
        if let Some(p50) = self.pct(0.5) {
            line(
                "latency",
                format!(
                    "p50 {} µs  p99 {} µs  p99.9 {} µs  max {} µs",
                    p50,
                    self.pct(0.99).unwrap_or(0),
                    self.pct(0.999).unwrap_or(0),
                    j["latency_us"]["max"]
                ),
            );
        }
        if let Some(r) = self.reach_summary() {
            line(
                "reach",
                format!(
                    "p50 {} µs  p90 {} µs  max {} µs  over {} publishes, {} incomplete  (publish → last member)",
                    j["reach_us"]["p50"],
                    j["reach_us"]["p90"],
                    j["reach_us"]["max"],
                    r.publishes,
                    r.incomplete
                ),
            );
        }
        if let Some(p99) = pct(&self.lag_hist, 0.99) {
            line(
                "send lag",
                format!(
                    "p50 {} µs  p99 {p99} µs  max {} µs  (paced sends, against their schedule)",
                    pct(&self.lag_hist, 0.5).unwrap_or(0),
                    j["send_lag_us"]["max"]
                ),
            );
        }
        if let Some(p50) = pct(&self.ack_hist, 0.5) {
            line(
                "ack latency",
                format!(
                    "p50 {} µs  p99 {} µs  p99.9 {} µs  (publish→ack)",
                    p50,
                    pct(&self.ack_hist, 0.99).unwrap_or(0),
                    pct(&self.ack_hist, 0.999).unwrap_or(0),
                ),
            );
        }
        if let Some(c) = self.server_cpu {
            line(
                "server CPU",
                format!(
                    "user {:.2} s  sys {:.2} s  = {:.2} µs user + {:.2} µs sys per {}  ({:.2} cores busy)",
                    c.user,
                    c.sys,
                    j["server_cpu"]["user_us_per_op"].as_f64().unwrap_or(0.0),
                    j["server_cpu"]["sys_us_per_op"].as_f64().unwrap_or(0.0),
                    one,
                    j["server_cpu"]["cores_busy"].as_f64().unwrap_or(0.0)
                ),
            );
        }
        if self.syscalls.is_some() {
            let per = |k: &str| j[k]["per_op"].as_f64().unwrap_or(0.0);
            line(
                "syscalls",
                format!(
                    "server per {one}: {:.4} writes (writev {} write {} sendto {} sendmsg {}), {:.4} reads, {:.4} epoll waits",
                    per("write_syscalls"),
                    j["write_syscalls"]["writev"],
                    j["write_syscalls"]["write"],
                    j["write_syscalls"]["sendto"],
                    j["write_syscalls"]["sendmsg"],
                    per("read_syscalls"),
                    per("epoll_waits"),
                ),
            );
        } else if let Some(e) = &self.perf_error {
            line("syscalls", format!("not counted: {e}"));
        }
        if let (Some(g), Some(m)) = (
            &j["generator_cpu"].as_object(),
            &j["machine_cpu"].as_object(),
        ) {
            line(
                "CPU",
                format!(
                    "generator {:.2} cores busy, machine {:.2} (other processes {:.2})",
                    g["cores_busy"].as_f64().unwrap_or(0.0),
                    m["cores_busy"].as_f64().unwrap_or(0.0),
                    m["other_cores_busy"].as_f64().unwrap_or(0.0)
                ),
            );
        }
        if let Some((a, b)) = self.idle_mem {
            let n = self.open_after_setup.max(1) as f64;
            line(
                "memory",
                format!(
                    "server RSS {} -> {} KiB = {:.2} KiB/conn; kernel slab {} -> {} KiB = {:.2} KiB/conn (both ends on loopback)",
                    a.rss_kib,
                    b.rss_kib,
                    (b.rss_kib as f64 - a.rss_kib as f64) / n,
                    a.slab_kib,
                    b.slab_kib,
                    (b.slab_kib as f64 - a.slab_kib as f64) / n
                ),
            );
        }
        if self.tls_full + self.tls_resumed > 0 {
            line(
                "TLS",
                format!(
                    "{} full + {} resumed handshakes (whole run)",
                    self.tls_full, self.tls_resumed
                ),
            );
        }
        line(
            "connections",
            format!(
                "{} open after setup, {} at the end, {} failed setup",
                self.open_after_setup, self.open_at_end, self.setup_failures
            ),
        );
        line(
            "errors",
            format!(
                "{}{}",
                self.errors,
                self.first_error
                    .as_ref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            ),
        );
        line(
            "result",
            if self.ok() {
                "OK".into()
            } else {
                "FAILED".into()
            },
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reach(sent_us: u64, last_us: u64, count: u64) -> Reach {
        Reach {
            sent_us,
            last_us,
            count,
        }
    }

    #[test]
    fn reach_counts_the_windows_publishes_merged_over_shards() {
        // Two shards, each with half of a room of 4 members (3 + the publisher).
        let mut a = Outcome {
            rooms: vec![(3, 2, 6)],
            ..Default::default()
        };
        a.reach.insert((0, 1), reach(1_000, 1_500, 2)); // before the window
        a.reach.insert((0, 2), reach(10_000, 10_300, 2));
        a.reach.insert((0, 3), reach(20_000, 20_100, 2));
        let mut b = Outcome {
            rooms: vec![(3, 2, 5)],
            ..Default::default()
        };
        b.reach.insert((0, 2), reach(10_000, 10_900, 2));
        b.reach.insert((0, 3), reach(20_000, 20_050, 1)); // one member short
        let mut o = Outcome::merge(vec![a, b]);
        o.window_wall_us = (5_000, 30_000);
        let r = o.reach_summary().expect("reach data");
        assert_eq!(r.publishes, 2);
        assert_eq!(r.incomplete, 1);
        // seq 2: sent at 10 000, the last of its 4 members read it at 10 900.
        assert_eq!(r.times_us, vec![900]);
        assert!(!o.ok());
        // Through the JSON a shard hands to its parent, and back.
        let back = Outcome::from_json(&o.to_json(&Value::Null));
        assert_eq!(back.reach, o.reach);
    }

    #[test]
    fn reach_quantiles_are_nearest_rank() {
        let r = ReachSummary {
            publishes: 5,
            incomplete: 0,
            times_us: vec![50, 10, 40, 20, 30],
        };
        assert_eq!(r.quantile(0.5), Some(30));
        assert_eq!(r.quantile(0.9), Some(50));
        assert_eq!(r.quantile(0.0), Some(10));
        assert_eq!(ReachSummary::default().quantile(0.5), None);
    }
}
