//! `corecast-load`: a load generator for corecast (and the async variants)
//! on the same non-blocking stack as the server (mio + tungstenite).
//!
//! Scenarios: `echo` (round trips on `/echo`), `fanout` (rooms, members and
//! publishers on `/ws`, checking seq order), `connect` (handshakes per
//! second) and `idle` (memory per held connection). Every run is bounded in
//! time and count. Connections are spread over source addresses 127.0.0.x
//! so ephemeral ports never run out; `--procs` fans out over processes
//! (each under the 20000 open-files limit) and merges their results.
//!
//! Fan-out is complete when every member received every seq of its room
//! up to the highest one any publisher had acknowledged (gaps and a short
//! tail count as `missing`). Publishes still unacknowledged, or members
//! still short, when `--drain` runs out are reported (`unacked`,
//! `drain_timeouts`) and fail the run (exit 1), like anything missing.
//!
//! `--reach` (fan-out, paced with `--rate`) measures, per publish, the
//! time until the last member of its room received it, over every worker
//! and process: publish → last delivery, from the publisher's send time
//! to the moment the last member's read began (wall clock, so it holds
//! across processes on one machine). Only publishes sent inside the
//! measured window count; each must have reached every member of its room
//! or the run fails. Space the publishes (a low `--rate`) so one has
//! reached everybody before the next leaves, or the figure includes
//! queueing behind the previous one.
//!
//! The server's CPU time over the measured window (user and system, from
//! `/proc/PID/stat`) is reported per operation when `--server-pid` is given:
//! the figure that carries over to bigger machines; `--perf-syscalls` adds
//! the server's syscalls over the same window (see `perf.rs`).
//!
//! `--rate` makes fan-out and echo open loop: publishes or echoes leave on
//! a schedule (the total rate spread evenly over the senders), not when an
//! answer arrives; latency is measured from each message's actual send
//! time, and how late sends left against the schedule is reported apart
//! (`send_lag_us`: large when the generator itself falls behind).
//!
//! `--tls` speaks wss (rustls on ring, SNI `--tls-name`, ALPN http/1.1),
//! every scenario alike; the generator then pays rustls on its side too.
//! The certificate is not verified (a load generator on loopback) unless
//! `--tls-ca` names the CA to verify it against. Every handshake is a full
//! one unless `--tls-resume` lets connections resume sessions; the JSON
//! counts both kinds (`tls_handshakes`), so `connect` over TLS reports
//! TLS handshakes per second.

mod perf;
mod recovery;
mod report;
mod sock;
mod worker;

use clap::{Parser, ValueEnum};
use corecast::tls::ClientFiles;
use report::{CpuSample, Outcome};
use rustls::ClientConfig;
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use worker::{Plan, Shared};

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// N connections to /echo, K messages in flight each: round trips.
    Echo,
    /// R rooms x M members on /ws, P publishers: deliveries and latency.
    Fanout,
    /// C concurrent dialers: open + welcome + close cycles per second.
    Connect,
    /// Hold N idle connections: server memory per connection.
    Idle,
    /// Rejoin with `since` after --missed messages: time until the ack.
    Recovery,
}

/// Load generator for corecast.
#[derive(Parser, Debug, Clone)]
#[command(name = "corecast-load", version, about)]
struct Args {
    /// Scenario to run.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Server address (host:port); several, comma-separated, spread the
    /// connections over them round-robin (the nodes of a cluster).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Generator threads per process.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Generator processes (each runs --threads threads).
    #[arg(long, default_value_t = 1)]
    procs: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up seconds before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Connections (echo, idle) or concurrent dialers (connect).
    #[arg(long, default_value_t = 100)]
    conns: usize,
    /// Payload bytes (echo message; fan-out data is about this size).
    #[arg(long, default_value_t = 20)]
    size: usize,
    /// Messages in flight per connection (echo) or per publisher (fan-out, flat out).
    #[arg(long, default_value_t = 1)]
    inflight: usize,
    /// Rooms (fan-out).
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Members per room (fan-out).
    #[arg(long, default_value_t = 100)]
    members: usize,
    /// Publishers in total (fan-out); each also joins its room.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Messages missed per round (recovery).
    #[arg(long, default_value_t = 1000)]
    missed: usize,
    /// Total send rate per second, open loop: publishes (fan-out) or
    /// echoes (echo) over all connections, evenly spread; 0 = flat out
    /// (--inflight per publisher or connection). Latency is measured from
    /// each message's actual send time.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Source addresses 127.0.0.2.. to spread connections over.
    #[arg(long, default_value_t = 8)]
    sources: usize,
    /// Fan-out: publishers connect here instead of round-robin over
    /// --addr (e.g. one cluster node, members on the others).
    #[arg(long)]
    pub_addr: Option<String>,
    /// Fan-out: every publish carries a unique idempotency `key` (what
    /// the JavaScript client does), to measure the cost of remembering them.
    #[arg(long)]
    keys: bool,
    /// A token for /ws (sent as `?token=`; fan-out, idle, connect): every
    /// connection is then that one user. The server announces `joined`,
    /// `left` and presence per user, so N members that are N users cost
    /// about N²/2 `joined` frames while they join; one user costs one.
    #[arg(long, value_name = "JWT")]
    token: Option<String>,
    /// Fan-out: per publish, the time until the last member of its room
    /// (over all processes) received it; needs --rate (at most 10 000
    /// publishes in the run). Space the publishes so they do not overlap.
    #[arg(long)]
    reach: bool,
    /// Fan-out: seconds to wait after publishing stopped for the last acks
    /// (members then get twice that to receive every acked message); a
    /// timeout is reported and fails the run.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// PID of the server, for CPU time and memory figures; several,
    /// comma-separated, add up their CPU time (cluster nodes and Redis).
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Connect with TLS (wss); the server's certificate is not verified
    /// unless --tls-ca is given.
    #[arg(long)]
    tls: bool,
    /// Verify the server's certificate against the CA(s) in this PEM file
    /// (implies --tls).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<String>,
    /// TLS server name: the SNI sent, and the name --tls-ca verifies.
    #[arg(long, default_value = "localhost")]
    tls_name: String,
    /// Let connections resume TLS sessions (tickets); by default every
    /// handshake is a full one (no session cache), the cost of a new client.
    #[arg(long)]
    tls_resume: bool,
    /// Count the server's write, read and epoll-wait syscalls over the
    /// measured window with `perf stat` on syscall tracepoints (needs
    /// --server-pid and perf; reported per operation).
    #[arg(long)]
    perf_syscalls: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Less progress output.
    #[arg(long)]
    quiet: bool,
    /// Internal: run as shard I of --procs (talks READY/GO on stdio).
    #[arg(long, hide = true)]
    shard: Option<usize>,
}

fn split(total: usize, parts: usize, i: usize) -> usize {
    total / parts + usize::from(i < total % parts)
}

fn main() {
    let args = Args::parse();
    if let Err(e) = validate(&args) {
        eprintln!("corecast-load: {e}");
        std::process::exit(2);
    }
    let tls = match tls_config(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("corecast-load: {e}");
            std::process::exit(2);
        }
    };
    let outcome = if args.scenario == Scenario::Recovery {
        let addr = resolve(&args.addr)[0].0;
        recovery::run(&recovery::Params {
            tls,
            addr,
            host: args.addr.split(',').next().unwrap_or_default().to_string(),
            missed: args.missed,
            size: args.size,
            warmup: Duration::from_secs_f64(args.warmup),
            duration: Duration::from_secs_f64(args.duration),
            server_pid: args.server_pid.clone(),
            quiet: args.quiet,
        })
    } else if args.procs > 1 && args.shard.is_none() {
        run_procs(&args)
    } else {
        run_local(&args, tls)
    };
    let ok = outcome.ok();
    if args.shard.is_some() || args.json {
        println!(
            "{}",
            serde_json::to_string(&outcome.to_json(&args_json(&args))).unwrap()
        );
    } else {
        println!("{}", outcome.table(&args_json(&args)));
    }
    std::process::exit(if ok { 0 } else { 1 });
}

fn validate(a: &Args) -> Result<(), String> {
    if a.threads == 0 || a.procs == 0 {
        return Err("--threads and --procs must be at least 1".into());
    }
    if !(a.duration > 0.0 && a.duration <= 3600.0 && (0.0..=600.0).contains(&a.warmup)) {
        return Err("--duration must be in (0, 3600] and --warmup in [0, 600]".into());
    }
    if !(a.drain > 0.0 && a.drain <= 600.0) {
        return Err("--drain must be in (0, 600]".into());
    }
    if a.sources == 0 || a.sources > 250 {
        return Err("--sources must be 1..=250".into());
    }
    let per_proc = match a.scenario {
        Scenario::Fanout => (a.rooms * a.members + a.publishers).div_ceil(a.procs),
        _ => a.conns.div_ceil(a.procs),
    };
    if per_proc > 18_000 {
        return Err(format!(
            "{per_proc} connections per process is over the ~18000 a process may hold here; use --procs"
        ));
    }
    if !(a.rate.is_finite() && a.rate >= 0.0) {
        return Err("--rate must be a number >= 0".into());
    }
    if a.perf_syscalls && a.server_pid.is_empty() {
        return Err("--perf-syscalls needs --server-pid".into());
    }
    if a.perf_syscalls && a.scenario == Scenario::Recovery {
        return Err("--perf-syscalls is not available for recovery".into());
    }
    if a.scenario == Scenario::Fanout && (a.rooms == 0 || a.publishers == 0) {
        return Err("fan-out needs at least one room and one publisher".into());
    }
    if a.token.is_some() && matches!(a.scenario, Scenario::Echo | Scenario::Recovery) {
        return Err("--token is for fan-out, idle and connect (/ws)".into());
    }
    if a.reach {
        if a.scenario != Scenario::Fanout || a.rate == 0.0 {
            return Err("--reach is for fan-out with --rate".into());
        }
        // Every publish is kept until the end (a few dozen bytes each).
        if a.rate * (a.warmup + a.duration + a.drain) > 10_000.0 {
            return Err("--reach keeps every publish: at most 10 000 in the run".into());
        }
    }
    Ok(())
}

/// The TLS client side of `--tls` / `--tls-ca`: one configuration for the
/// process, and the server name every connection asks for.
pub type TlsClient = Option<(Arc<ClientConfig>, ServerName<'static>)>;

fn tls_config(a: &Args) -> Result<TlsClient, String> {
    if !a.tls && a.tls_ca.is_none() {
        return Ok(None);
    }
    let files = ClientFiles {
        ca: a.tls_ca.clone(),
        insecure: a.tls_ca.is_none(),
        ..Default::default()
    };
    let mut config = Arc::unwrap_or_clone(corecast::tls::client_config(&files)?);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !a.tls_resume {
        config.resumption = Resumption::disabled();
    }
    let name = ServerName::try_from(a.tls_name.clone())
        .map_err(|e| format!("--tls-name {}: {e}", a.tls_name))?;
    Ok(Some((Arc::new(config), name)))
}

fn args_json(a: &Args) -> serde_json::Value {
    serde_json::json!({
        "scenario": format!("{:?}", a.scenario).to_lowercase(),
        "addr": a.addr, "threads": a.threads, "procs": a.procs,
        "duration": a.duration, "warmup": a.warmup, "conns": a.conns,
        "size": a.size, "inflight": a.inflight, "rooms": a.rooms, "keys": a.keys,
        "reach": a.reach, "token": a.token.is_some(),
        "members": a.members, "publishers": a.publishers, "rate": a.rate,
        "missed": a.missed, "drain": a.drain, "perf_syscalls": a.perf_syscalls,
        "tls": a.tls || a.tls_ca.is_some(), "tls_verify": a.tls_ca.is_some(),
        "tls_resume": a.tls_resume,
    })
}

/// The addresses of `--addr`, resolved (exits when one does not resolve).
fn resolve(list: &str) -> Vec<(SocketAddr, String)> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(
            |s| match s.to_socket_addrs().ok().and_then(|mut i| i.next()) {
                Some(a) => (a, s.to_string()),
                None => {
                    eprintln!("corecast-load: cannot resolve {s}");
                    std::process::exit(2);
                }
            },
        )
        .collect()
}

/// Splits this process's share of the work over its threads.
fn plans(
    a: &Args,
    addrs: &[(SocketAddr, String)],
    tls: &TlsClient,
    shard: usize,
    procs: usize,
) -> Vec<Plan> {
    let sources: Vec<Ipv4Addr> = (0..a.sources)
        .map(|i| Ipv4Addr::new(127, 0, 0, 2 + i as u8))
        .collect();
    let workers = a.threads * procs;
    (0..a.threads)
        .map(|t| {
            let w = shard * a.threads + t; // global worker index
            let mut members = Vec::new();
            if a.scenario == Scenario::Fanout {
                for room in 0..a.rooms {
                    let n = split(a.members, workers, (w + room) % workers);
                    if n > 0 {
                        members.push((room, n));
                    }
                }
            }
            let publishers: Vec<usize> = (0..a.publishers)
                .filter(|p| p % workers == w)
                .map(|p| p % a.rooms)
                .collect();
            let senders = match a.scenario {
                Scenario::Echo => a.conns,
                _ => a.publishers,
            };
            let rate_per_sender = if a.rate > 0.0 && senders > 0 {
                a.rate / senders as f64
            } else {
                0.0
            };
            Plan {
                addrs: addrs.to_vec(),
                pub_addr: a.pub_addr.as_deref().map(|p| resolve(p)[0].0),
                sources: sources.clone(),
                conns: split(a.conns, workers, w),
                members,
                publishers,
                size: a.size,
                inflight: a.inflight.max(1),
                rate_per_sender,
                keys: a.keys,
                reach: a.reach,
                token: a.token.clone(),
                rooms: a.rooms,
                offset: w * 7919,
                drain: Duration::from_secs_f64(a.drain),
                tls: tls.clone(),
            }
        })
        .collect()
}

/// Runs this process's workers; as a shard, synchronises with the parent.
fn run_local(a: &Args, tls: TlsClient) -> Outcome {
    let addrs = resolve(&a.addr);
    let (shard, procs) = (a.shard.unwrap_or(0), a.shard.map_or(1, |_| a.procs));
    let mem_before = match (a.scenario, a.server_pid.first()) {
        (Scenario::Idle, Some(&pid)) => Some(report::MemSample::take(pid)),
        _ => None,
    };
    let shared = Arc::new(Shared::new(a.rooms));
    // Started now so it has attached by the window's start.
    let mut perf = PerfRun::start(a);
    let handles: Vec<_> = plans(a, &addrs, &tls, shard, procs)
        .into_iter()
        .enumerate()
        .map(|(i, plan)| {
            let shared = shared.clone();
            let scenario = a.scenario;
            std::thread::Builder::new()
                .name(format!("load-{i}"))
                .spawn(move || worker::run(i, scenario, plan, shared))
                .expect("spawn worker")
        })
        .collect();
    // Setup phase.
    let setup_start = Instant::now();
    while shared.ready.load(Ordering::SeqCst) < a.threads {
        std::thread::sleep(Duration::from_millis(20));
        if setup_start.elapsed() > Duration::from_secs(90) {
            eprintln!("corecast-load: setup did not finish in 90 s");
            shared.stop.store(true, Ordering::SeqCst);
            break;
        }
    }
    let open_after_setup = shared.open.load(Ordering::Relaxed);
    if !a.quiet {
        eprintln!(
            "[setup] {open_after_setup} connections open in {:.1}s, errors {}",
            setup_start.elapsed().as_secs_f64(),
            shared.errors.load(Ordering::Relaxed)
        );
    }
    // Idle: the "after" sample is taken at the end of the hold, so every
    // connection has been through heartbeats (steady state), not just opened.
    let mut idle_mem = None;
    if a.shard.is_some() {
        // READY to the parent, then wait for GO.
        println!("READY");
        std::io::stdout().flush().ok();
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    }
    shared.go.store(true, Ordering::SeqCst);
    let go = Instant::now();
    let warm = Duration::from_secs_f64(a.warmup);
    let dur = Duration::from_secs_f64(a.duration);
    type Window = (Instant, u64, u64, Option<CpuSample>, [Option<CpuSample>; 2]);
    let mut window: Option<Window> = None;
    let own = || [CpuSample::take(std::process::id()), CpuSample::machine()];
    let mut last_print = Instant::now();
    let mut last_ops = 0;
    let mut wall = (0, 0);
    let result_window;
    let gen_machine;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let mut now = Instant::now();
        if window.is_none() && now >= go + warm {
            perf.enable();
            now = Instant::now();
            shared.measuring.store(true, Ordering::SeqCst);
            wall.0 = worker::now_us();
            window = Some((
                now,
                shared.ops.load(Ordering::Relaxed),
                shared.published.load(Ordering::Relaxed),
                CpuSample::take_all(&a.server_pid),
                own(),
            ));
        }
        if !a.quiet && a.shard.is_none() && now.duration_since(last_print) >= Duration::from_secs(1)
        {
            let ops = shared.ops.load(Ordering::Relaxed);
            eprintln!(
                "[{:5.1}s] {:?}: {:>10.0} ops/s  open {}  errors {}",
                now.duration_since(go).as_secs_f64(),
                a.scenario,
                (ops - last_ops) as f64 / now.duration_since(last_print).as_secs_f64(),
                shared.open.load(Ordering::Relaxed),
                shared.errors.load(Ordering::Relaxed)
            );
            last_ops = ops;
            last_print = now;
        }
        if let Some((start, ops0, pub0, cpu0, [gen0, mach0])) = &window
            && now >= *start + dur
        {
            shared.measuring.store(false, Ordering::SeqCst);
            wall.1 = worker::now_us();
            let cpu1 = CpuSample::take_all(&a.server_pid);
            perf.disable();
            let [gen1, mach1] = own();
            gen_machine = [gen0.zip(gen1), mach0.zip(mach1)].map(|d| d.map(|(a, b)| b.minus(a)));
            if let (Some(before), Some(&pid)) = (mem_before, a.server_pid.first()) {
                idle_mem = Some((before, report::MemSample::take(pid)));
            }
            result_window = (
                now.duration_since(*start),
                shared.ops.load(Ordering::Relaxed) - ops0,
                shared.published.load(Ordering::Relaxed) - pub0,
                cpu0.zip(cpu1).map(|(a, b)| b.minus(a)),
            );
            break;
        }
    }
    let open_at_end = shared.open.load(Ordering::Relaxed);
    shared.stop.store(true, Ordering::SeqCst);
    if a.scenario == Scenario::Fanout {
        settle_final_seqs(
            &shared,
            a.shard.is_some(),
            a.threads,
            Duration::from_secs_f64(a.drain),
        );
    }
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("worker"))
        .collect();
    let mut o = Outcome::merge_workers(results);
    o.window_s = result_window.0.as_secs_f64();
    o.window_wall_us = wall;
    o.ops = result_window.1;
    o.published = result_window.2;
    o.server_cpu = result_window.3;
    [o.gen_cpu, o.machine_cpu] = gen_machine;
    o.errors = shared.errors.load(Ordering::Relaxed);
    o.unacked = shared.unacked.load(Ordering::SeqCst);
    o.open_after_setup = open_after_setup;
    o.open_at_end = open_at_end;
    o.idle_mem = idle_mem;
    o.tls_full = shared.tls_full.load(Ordering::Relaxed);
    o.tls_resumed = shared.tls_resumed.load(Ordering::Relaxed);
    (o.syscalls, o.perf_error) = perf.finish();
    o
}

/// `--perf-syscalls` over one window; a failure is reported in the result
/// (`perf_error`) and does not stop the run.
struct PerfRun {
    perf: Option<perf::Perf>,
    error: Option<String>,
}

impl PerfRun {
    fn start(a: &Args) -> PerfRun {
        let mut run = PerfRun {
            perf: None,
            error: None,
        };
        if a.perf_syscalls {
            match perf::Perf::start(&a.server_pid) {
                Ok(p) => run.perf = Some(p),
                Err(e) => run.fail(e),
            }
        }
        run
    }

    fn fail(&mut self, e: String) {
        eprintln!("corecast-load: --perf-syscalls: {e}");
        self.perf = None;
        self.error.get_or_insert(e);
    }

    fn enable(&mut self) {
        if let Some(Err(e)) = self.perf.as_mut().map(perf::Perf::enable) {
            self.fail(e);
        }
    }

    fn disable(&mut self) {
        if let Some(Err(e)) = self.perf.as_mut().map(perf::Perf::disable) {
            self.fail(e);
        }
    }

    fn finish(mut self) -> (Option<perf::Syscalls>, Option<String>) {
        match self.perf.take().map(perf::Perf::finish) {
            Some(Ok(s)) => (Some(s), None),
            Some(Err(e)) => {
                self.fail(e);
                (None, self.error)
            }
            None => (None, self.error),
        }
    }
}

/// After publishing stopped: waits for this process's publishes to be
/// acknowledged, then makes the final seq of every room known to the
/// workers (as a shard: reports its own to the parent and takes the
/// parent's answer, the maximum over all shards).
fn settle_final_seqs(shared: &Shared, shard: bool, threads: usize, drain: Duration) {
    let deadline = Instant::now() + drain;
    // First every worker must be out of its publishing loop (a publish
    // racing with the stop flag would otherwise be missed), then every
    // publish acknowledged (publishes still unacknowledged at the deadline
    // are reported as `unacked` and fail the run).
    while shared.done_publishing.load(Ordering::SeqCst) < threads && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    while shared.unacked.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if shard {
        let ours: Vec<String> = shared
            .room_acked
            .iter()
            .map(|s| s.load(Ordering::SeqCst).to_string())
            .collect();
        println!("STOPPED {}", ours.join(","));
        std::io::stdout().flush().ok();
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        if let Some(list) = line.trim().strip_prefix("FINAL ") {
            for (slot, v) in shared.room_acked.iter().zip(list.split(',')) {
                slot.fetch_max(v.parse().unwrap_or(0), Ordering::SeqCst);
            }
        }
    }
    shared.final_known.store(true, Ordering::SeqCst);
}

/// Runs `--procs` shard processes in lock step and merges their results.
fn run_procs(a: &Args) -> Outcome {
    let exe = std::env::current_exe().expect("own path");
    let mem_before = match (a.scenario, a.server_pid.first()) {
        (Scenario::Idle, Some(&pid)) => Some(report::MemSample::take(pid)),
        _ => None,
    };
    let mut perf = PerfRun::start(a);
    let mut children = Vec::new();
    for i in 0..a.procs {
        let mut cmd = Command::new(&exe);
        // The parent counts syscalls (one perf for the whole window).
        cmd.args(
            std::env::args()
                .skip(1)
                .filter(|a| a != "--quiet" && a != "--perf-syscalls"),
        )
        .arg("--shard")
        .arg(i.to_string())
        .arg("--quiet")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
        children.push(cmd.spawn().expect("spawn shard"));
    }
    let mut readers: Vec<_> = children
        .iter_mut()
        .map(|c| BufReader::new(c.stdout.take().expect("stdout")))
        .collect();
    let setup_start = Instant::now();
    for r in readers.iter_mut() {
        let mut line = String::new();
        r.read_line(&mut line).expect("shard READY");
        if line.trim() != "READY" {
            eprintln!("corecast-load: a shard failed during setup: {line}");
        }
    }
    if !a.quiet {
        // The shards count their connections at the end; here they are
        // all open (and joined), or given up on.
        eprintln!(
            "[setup] {} processes done with setup in {:.1}s",
            a.procs,
            setup_start.elapsed().as_secs_f64()
        );
    }
    for c in children.iter_mut() {
        let stdin = c.stdin.as_mut().expect("stdin");
        let _ = stdin.write_all(b"GO\n");
        let _ = stdin.flush();
    }
    let go = Instant::now();
    let warm = Duration::from_secs_f64(a.warmup);
    std::thread::sleep(warm);
    perf.enable();
    let cpu0 = CpuSample::take_all(&a.server_pid);
    let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
    let (gen0, mach0) = (CpuSample::take_all(&pids), CpuSample::machine());
    let window_start = Instant::now();
    let wall_start = worker::now_us();
    std::thread::sleep(
        (go + warm + Duration::from_secs_f64(a.duration)).saturating_duration_since(Instant::now()),
    );
    let cpu1 = CpuSample::take_all(&a.server_pid);
    let wall_end = worker::now_us();
    perf.disable();
    let (gen1, mach1) = (CpuSample::take_all(&pids), CpuSample::machine());
    let idle_mem = mem_before.zip(a.server_pid.first().map(|&p| report::MemSample::take(p)));
    let sampled = window_start.elapsed().as_secs_f64();
    // Fan-out: every shard reports the final seqs its publishers got; all
    // of them then drain to the maximum.
    if a.scenario == Scenario::Fanout {
        let mut max = vec![0u64; a.rooms];
        for r in readers.iter_mut() {
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 && !line.starts_with("STOPPED") {
                line.clear();
            }
            if let Some(list) = line.trim().strip_prefix("STOPPED ") {
                for (m, v) in max.iter_mut().zip(list.split(',')) {
                    *m = (*m).max(v.parse().unwrap_or(0));
                }
            }
        }
        let list: Vec<String> = max.iter().map(u64::to_string).collect();
        for c in children.iter_mut() {
            let stdin = c.stdin.as_mut().expect("stdin");
            let _ = writeln!(stdin, "FINAL {}", list.join(","));
            let _ = stdin.flush();
        }
    }
    let mut outcomes = Vec::new();
    let mut failed_shards = 0;
    for (r, mut child) in readers.into_iter().zip(children) {
        let mut out = String::new();
        for line in r.lines().map_while(Result::ok) {
            out = line;
        }
        let _ = child.wait();
        match serde_json::from_str::<serde_json::Value>(&out) {
            Ok(v) => outcomes.push(Outcome::from_json(&v)),
            Err(e) => {
                eprintln!("corecast-load: bad shard output ({e}): {out}");
                failed_shards += 1;
            }
        }
    }
    let mut o = Outcome::merge(outcomes);
    if failed_shards > 0 {
        o.errors += failed_shards;
        o.first_error
            .get_or_insert_with(|| format!("{failed_shards} shard process(es) failed"));
    }
    if o.window_s <= 0.0 {
        o.window_s = sampled;
    }
    o.window_wall_us = (wall_start, wall_end);
    o.server_cpu = cpu0.zip(cpu1).map(|(a, b)| b.minus(a));
    o.gen_cpu = gen0.zip(gen1).map(|(a, b)| b.minus(a));
    o.machine_cpu = mach0.zip(mach1).map(|(a, b)| b.minus(a));
    o.idle_mem = idle_mem;
    (o.syscalls, o.perf_error) = perf.finish();
    o
}
