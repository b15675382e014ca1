//! Per-core counters and latency histograms, and their merge at scrape time.
//!
//! Each core owns a [`CoreMetrics`] and bumps plain integers in it on its
//! own thread: no atomics, no locks on the hot path. A scrape (`/metrics`,
//! `/api/stats`) asks every core over the bus for a [`Snapshot`] (a copy)
//! and the core serving the request merges them: counters are summed or
//! labelled by core, hdrhistograms are added and exported as Prometheus
//! histograms with fixed buckets, encoded by the prometheus-client crate
//! (OpenMetrics text).
//!
//! This module must not reach into other cores: it only counts and merges.

use crate::proto::ErrorCode;
use hdrhistogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeMetric,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;

/// Every error code, in a fixed order (index = [`code_index`]).
pub const ERROR_CODES: [ErrorCode; 15] = [
    ErrorCode::BadJson,
    ErrorCode::UnknownType,
    ErrorCode::MissingField,
    ErrorCode::InvalidRoom,
    ErrorCode::Unauthorized,
    ErrorCode::TokenExpired,
    ErrorCode::Forbidden,
    ErrorCode::NotMember,
    ErrorCode::RoomLimit,
    ErrorCode::TooLarge,
    ErrorCode::RateLimited,
    ErrorCode::Unsupported,
    ErrorCode::Overloaded,
    ErrorCode::Unavailable,
    ErrorCode::Internal,
];

/// Index of `code` in [`ERROR_CODES`].
pub fn code_index(code: ErrorCode) -> usize {
    ERROR_CODES.iter().position(|&c| c == code).unwrap_or(0)
}

/// Histogram bucket bounds exported, seconds.
const BUCKETS_S: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("histogram bounds")
}

/// What one core counts (totals since start).
#[derive(Debug, Clone)]
pub struct CoreMetrics {
    /// Text frames received on `/ws`.
    pub messages_in: u64,
    /// Frames queued to WebSocket connections (deliveries, replies).
    pub messages_out: u64,
    /// Bytes read from sockets.
    pub bytes_in: u64,
    /// Bytes written to sockets.
    pub bytes_out: u64,
    /// Messages published into rooms homed here.
    pub published: u64,
    /// `error` events sent, by code ([`ERROR_CODES`] order).
    pub errors: [u64; ERROR_CODES.len()],
    /// Connections closed by the server, by close code.
    pub closes: BTreeMap<u16, u64>,
    /// HTTP requests answered with an error status (upgrades refused
    /// included), by status.
    pub http_errors: BTreeMap<u16, u64>,
    /// Upgrades completed.
    pub upgrades: u64,
    /// HTTP API requests served.
    pub api_requests: u64,
    /// Publish → delivery latency at this core (the home core's sequencing
    /// time to the moment the message is queued to this core's members), µs.
    pub delivery_us: Histogram<u64>,
    /// Duration of one loop iteration's work (after poll returns), µs.
    pub loop_us: Histogram<u64>,
    /// Time the loop spent outside `epoll_wait`, µs.
    pub busy_us: u64,
    /// Write syscalls made on this core's sockets (`write`, `writev`,
    /// TLS records included).
    pub write_syscalls: u64,
    /// Frames queued to WebSocket connections for writing (deliveries,
    /// replies, replays).
    pub frames_queued: u64,
    /// Sleeps (`epoll_wait` with a timeout) taken while holding deliveries
    /// for `limits.max_write_delay_ms` (never with the dial at 0).
    pub write_delay_waits: u64,
    /// Duration of a flush pass (writing every connection with output),
    /// µs.
    pub flush_us: Histogram<u64>,
}

impl Default for CoreMetrics {
    fn default() -> Self {
        CoreMetrics {
            messages_in: 0,
            messages_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            published: 0,
            errors: [0; ERROR_CODES.len()],
            closes: BTreeMap::new(),
            http_errors: BTreeMap::new(),
            upgrades: 0,
            api_requests: 0,
            delivery_us: histogram(),
            loop_us: histogram(),
            busy_us: 0,
            write_syscalls: 0,
            frames_queued: 0,
            write_delay_waits: 0,
            flush_us: histogram(),
        }
    }
}

impl CoreMetrics {
    /// Counts an `error` event.
    pub fn error(&mut self, code: ErrorCode) {
        self.errors[code_index(code)] += 1;
    }

    /// Counts a server-initiated close.
    pub fn close(&mut self, code: u16) {
        *self.closes.entry(code).or_default() += 1;
    }

    /// Counts an HTTP error response.
    pub fn http_error(&mut self, status: u16) {
        *self.http_errors.entry(status).or_default() += 1;
    }

    /// Records a latency, µs.
    pub fn record(h: &mut Histogram<u64>, us: u64) {
        let _ = h.record(us.clamp(1, 60_000_000));
    }
}

/// One core's state at a scrape.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Core index.
    pub core: usize,
    /// WebSocket connections open on the core.
    pub connections: u64,
    /// SSE streams open on the core.
    pub sse: u64,
    /// Distinct users connected whose home is this core.
    pub users: u64,
    /// Rooms homed on this core.
    pub rooms: u64,
    /// Messages in per second over the last full second.
    pub in_per_s: u64,
    /// Messages out per second over the last full second.
    pub out_per_s: u64,
    /// Monotonic ms of the core's last loop iteration.
    pub last_loop_ms: u64,
    /// Fraction of the last full second the loop spent outside
    /// `epoll_wait`.
    pub busy_ratio: f64,
    /// Frames queued per write syscall over the last full second (0 when
    /// nothing was written).
    pub frames_per_write: f64,
    /// The counters.
    pub metrics: CoreMetrics,
}

/// What the node (not one core) reports: the Redis bridge's state in
/// cluster mode.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeStats {
    /// `Some` in cluster mode: (Redis reachable, bytes read from Redis).
    pub redis: Option<(bool, u64)>,
}

/// Per-core snapshots merged into Prometheus metrics.
#[derive(Debug)]
struct Merged(Vec<Snapshot>, NodeStats);

fn core_label(core: usize) -> Vec<(String, String)> {
    vec![("core".to_string(), core.to_string())]
}

impl Merged {
    fn gauge_per_core(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        f: impl Fn(&Snapshot) -> u64,
    ) -> Result<(), std::fmt::Error> {
        self.per_core(encoder, MetricType::Gauge, (name, help), f)
    }

    fn counter(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        f: impl Fn(&CoreMetrics) -> u64,
    ) -> Result<(), std::fmt::Error> {
        let total: u64 = self.0.iter().map(|s| f(&s.metrics)).sum();
        let m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        ConstCounter::new(total).encode(m)
    }

    fn labelled_counter(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        label: &str,
        values: BTreeMap<String, u64>,
    ) -> Result<(), std::fmt::Error> {
        let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (v, n) in values {
            let labels = vec![(label.to_string(), v)];
            ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// A counter or gauge (`ty`) with one sample per core.
    fn per_core<N: EncodeCounterValue + EncodeGaugeValue>(
        &self,
        encoder: &mut DescriptorEncoder,
        ty: MetricType,
        (name, help): (&str, &str),
        f: impl Fn(&Snapshot) -> N,
    ) -> Result<(), std::fmt::Error> {
        let mut m = encoder.encode_descriptor(name, help, None, ty)?;
        for s in &self.0 {
            let labels = core_label(s.core);
            let family = m.encode_family(&labels)?;
            match ty {
                MetricType::Counter => ConstCounter::new(f(s)).encode(family)?,
                _ => ConstGauge::new(f(s)).encode(family)?,
            }
        }
        Ok(())
    }

    fn histogram(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        f: impl Fn(&CoreMetrics) -> &Histogram<u64>,
    ) -> Result<(), std::fmt::Error> {
        let mut all = histogram();
        for s in &self.0 {
            let _ = all.add(f(&s.metrics));
        }
        let mut m = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
        let (sum_s, count, buckets) = buckets(&all);
        m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum_s, count, &buckets, None)
    }

    /// A histogram with one series per core.
    fn histogram_per_core(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        f: impl Fn(&CoreMetrics) -> &Histogram<u64>,
    ) -> Result<(), std::fmt::Error> {
        let mut m = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
        for s in &self.0 {
            let labels = core_label(s.core);
            let (sum_s, count, buckets) = buckets(f(&s.metrics));
            m.encode_family(&labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    sum_s, count, &buckets, None,
                )?;
        }
        Ok(())
    }
}

/// A µs histogram as (sum in seconds, count, per-bucket counts for
/// [`BUCKETS_S`] then the rest in +Inf); the encoder makes them
/// cumulative.
fn buckets(h: &Histogram<u64>) -> (f64, u64, Vec<(f64, u64)>) {
    let mut buckets = Vec::with_capacity(BUCKETS_S.len() + 1);
    let mut seen = 0u64;
    let mut iter = h.iter_recorded().peekable();
    for bound in BUCKETS_S {
        let bound_us = (bound * 1e6) as u64;
        let mut n = 0;
        while let Some(v) = iter.peek() {
            if h.lowest_equivalent(v.value_iterated_to()) > bound_us {
                break;
            }
            n += v.count_at_value();
            iter.next();
        }
        seen += n;
        buckets.push((bound, n));
    }
    buckets.push((f64::INFINITY, h.len() - seen));
    (h.mean() * h.len() as f64 / 1e6, h.len(), buckets)
}

impl Collector for Merged {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.gauge_per_core(
            &mut e,
            "corecast_connections",
            "WebSocket connections open, per core",
            |s| s.connections,
        )?;
        self.gauge_per_core(
            &mut e,
            "corecast_sse_streams",
            "SSE streams open, per core",
            |s| s.sse,
        )?;
        self.gauge_per_core(
            &mut e,
            "corecast_users",
            "Connected users, per home core",
            |s| s.users,
        )?;
        self.gauge_per_core(&mut e, "corecast_rooms", "Rooms, per home core", |s| {
            s.rooms
        })?;
        self.counter(
            &mut e,
            "corecast_messages_in",
            "Text frames received from clients",
            |m| m.messages_in,
        )?;
        self.counter(
            &mut e,
            "corecast_messages_out",
            "Frames queued to clients (deliveries and replies)",
            |m| m.messages_out,
        )?;
        self.counter(
            &mut e,
            "corecast_bytes_in",
            "Bytes read from sockets",
            |m| m.bytes_in,
        )?;
        self.counter(
            &mut e,
            "corecast_bytes_out",
            "Bytes written to sockets",
            |m| m.bytes_out,
        )?;
        self.counter(
            &mut e,
            "corecast_published",
            "Messages sequenced into rooms",
            |m| m.published,
        )?;
        self.counter(
            &mut e,
            "corecast_upgrades",
            "WebSocket upgrades completed",
            |m| m.upgrades,
        )?;
        self.counter(
            &mut e,
            "corecast_api_requests",
            "HTTP API requests served",
            |m| m.api_requests,
        )?;
        let mut errors = BTreeMap::new();
        for (i, code) in ERROR_CODES.iter().enumerate() {
            let n: u64 = self.0.iter().map(|s| s.metrics.errors[i]).sum();
            errors.insert(code.as_str().to_string(), n);
        }
        self.labelled_counter(
            &mut e,
            "corecast_errors",
            "error events sent, by code (rate_limited = rate-limit hits)",
            "code",
            errors,
        )?;
        let mut closes = BTreeMap::new();
        for s in &self.0 {
            for (code, n) in &s.metrics.closes {
                *closes.entry(code.to_string()).or_default() += n;
            }
        }
        let slow: u64 = closes.get("4009").copied().unwrap_or(0);
        self.labelled_counter(
            &mut e,
            "corecast_closes",
            "Connections closed by the server, by close code",
            "code",
            closes,
        )?;
        let m = e.encode_descriptor(
            "corecast_slow_consumer_closes",
            "Connections closed for not reading (4009)",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(slow).encode(m)?;
        let mut http = BTreeMap::new();
        for s in &self.0 {
            for (status, n) in &s.metrics.http_errors {
                *http.entry(status.to_string()).or_default() += n;
            }
        }
        self.labelled_counter(
            &mut e,
            "corecast_http_errors",
            "HTTP error responses (failed handshakes included), by status",
            "status",
            http,
        )?;
        self.histogram(
            &mut e,
            "corecast_delivery_latency_seconds",
            "Publish (sequencing at the home core) to delivery (queued to the members of a core)",
            |m| &m.delivery_us,
        )?;
        self.histogram(
            &mut e,
            "corecast_loop_iteration_seconds",
            "Work of one core loop iteration",
            |m| &m.loop_us,
        )?;
        // Headroom: "busy because saturated" (high busy ratio, many frames
        // per write) against "busy because unbatched" (high busy ratio,
        // about one frame per write: see limits.max_write_delay_ms).
        self.per_core(
            &mut e,
            MetricType::Counter,
            (
                "corecast_core_busy_seconds",
                "Time the core loop spent outside epoll_wait",
            ),
            |s| s.metrics.busy_us as f64 / 1e6,
        )?;
        self.per_core(
            &mut e,
            MetricType::Gauge,
            (
                "corecast_core_busy_ratio",
                "Fraction of the last full second the core loop spent outside epoll_wait",
            ),
            |s| s.busy_ratio,
        )?;
        self.per_core(
            &mut e,
            MetricType::Counter,
            (
                "corecast_write_syscalls",
                "Write syscalls on the core's sockets",
            ),
            |s| s.metrics.write_syscalls,
        )?;
        self.per_core(
            &mut e,
            MetricType::Counter,
            (
                "corecast_frames_queued",
                "Frames queued to WebSocket connections for writing",
            ),
            |s| s.metrics.frames_queued,
        )?;
        self.per_core(
            &mut e,
            MetricType::Gauge,
            (
                "corecast_frames_per_write",
                "Frames queued per write syscall over the last full second",
            ),
            |s| s.frames_per_write,
        )?;
        self.per_core(
            &mut e,
            MetricType::Counter,
            (
                "corecast_write_delay_waits",
                "Sleeps taken while holding deliveries for limits.max_write_delay_ms",
            ),
            |s| s.metrics.write_delay_waits,
        )?;
        self.histogram_per_core(
            &mut e,
            "corecast_flush_pass_seconds",
            "Duration of a flush pass (writing every connection with output)",
            |m| &m.flush_us,
        )?;
        if let Some((up, read)) = self.1.redis {
            let m = e.encode_descriptor(
                "corecast_redis_up",
                "1 while both Redis connections of the node are up",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(i64::from(up)).encode(m)?;
            let m = e.encode_descriptor(
                "corecast_redis_read_bytes",
                "Bytes the node read from Redis (commands and pub/sub)",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(read).encode(m)?;
        }
        Ok(())
    }
}

/// The Prometheus text format 0.0.4 of an OpenMetrics text: counters'
/// `# HELP`/`# TYPE` name the `_total` series their samples carry,
/// `# UNIT` and `# EOF` go (0.0.4 has neither). Gauges and histograms are
/// written the same in both.
pub fn openmetrics_to_text(om: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for l in om.lines() {
        if let Some(name) = l
            .strip_prefix("# TYPE ")
            .and_then(|r| r.strip_suffix(" counter"))
        {
            counters.insert(name.to_string());
        }
    }
    let mut out = String::with_capacity(om.len());
    for l in om.lines() {
        if l == "# EOF" || l.starts_with("# UNIT ") {
            continue;
        }
        let meta = l
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| l.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        match meta {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) && !name.ends_with("_total") {
                    out.push_str(&format!("{kind}{name}_total {tail}"));
                } else {
                    out.push_str(l);
                }
            }
            None => out.push_str(l),
        }
        out.push('\n');
    }
    out
}

/// The OpenMetrics text of the merged snapshots and the node's figures.
pub fn encode_prometheus(snapshots: Vec<Snapshot>, node: NodeStats) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Merged(snapshots, node)));
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_cores_into_openmetrics_text() {
        let mut a = CoreMetrics {
            messages_in: 3,
            ..Default::default()
        };
        a.error(ErrorCode::RateLimited);
        a.close(4009);
        CoreMetrics::record(&mut a.delivery_us, 80);
        let mut b = CoreMetrics {
            messages_in: 4,
            ..Default::default()
        };
        b.close(4009);
        CoreMetrics::record(&mut b.delivery_us, 3000);
        let snap = |core, metrics| Snapshot {
            core,
            connections: core as u64 + 1,
            sse: 0,
            users: 1,
            rooms: 2,
            in_per_s: 0,
            out_per_s: 0,
            last_loop_ms: 0,
            busy_ratio: 0.25,
            frames_per_write: 8.0,
            metrics,
        };
        let node = NodeStats {
            redis: Some((false, 12)),
        };
        let text = encode_prometheus(vec![snap(0, a), snap(1, b)], node);
        assert!(text.contains("corecast_redis_up 0\n"), "{text}");
        assert!(
            text.contains("corecast_redis_read_bytes_total 12\n"),
            "{text}"
        );
        assert!(text.contains("corecast_messages_in_total 7\n"), "{text}");
        assert!(
            text.contains("corecast_connections{core=\"1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("corecast_errors_total{code=\"rate_limited\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("corecast_slow_consumer_closes_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains("corecast_delivery_latency_seconds_bucket{le=\"0.0001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("corecast_delivery_latency_seconds_count 2\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
