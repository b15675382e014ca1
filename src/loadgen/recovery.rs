//! The `recovery` scenario: how long a reconnecting client waits for the
//! messages it missed. Each round: a member joins a fresh room and leaves,
//! a publisher puts `--missed` messages into the room (acknowledged), then
//! the member comes back with `join` + `since` and the time from sending
//! that join to receiving its `ack` (after the whole replay) is recorded.
//! Every replay is checked: exactly the missed seqs, in order, and
//! `recovered: true`.
//!
//! Rounds run one after another on blocking sockets (tungstenite's client):
//! the figure is a latency, not a throughput, and the publishing between
//! rounds is not measured.

use crate::TlsClient;
use crate::report::{CpuSample, Outcome};
use hdrhistogram::Histogram;
use rustls::{ClientConnection, StreamOwned};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

/// A blocking stream, plain or TLS.
trait Rw: Read + Write {}
impl<T: Read + Write> Rw for T {}

type Ws = WebSocket<Box<dyn Rw>>;

/// What one run is asked to do.
pub struct Params {
    /// Server address.
    pub addr: SocketAddr,
    /// Host header value.
    pub host: String,
    /// Messages missed per round.
    pub missed: usize,
    /// Approximate message size, bytes.
    pub size: usize,
    /// Warm-up and measured time.
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
    /// Server PID for CPU figures.
    pub server_pid: Vec<u32>,
    /// Print progress.
    pub quiet: bool,
    /// TLS client side (`--tls`).
    pub tls: TlsClient,
}

fn connect(p: &Params) -> Result<Ws, String> {
    let stream = TcpStream::connect(p.addr).map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).ok();
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let stream: Box<dyn Rw> = match &p.tls {
        None => Box::new(stream),
        Some((config, name)) => {
            let conn = ClientConnection::new(config.clone(), name.clone())
                .map_err(|e| format!("TLS: {e}"))?;
            Box::new(StreamOwned::new(conn, stream))
        }
    };
    let url = format!("ws://{}/ws", p.host);
    let (mut ws, _) = tungstenite::client(url, stream).map_err(|e| format!("handshake: {e}"))?;
    let welcome = next(&mut ws)?;
    if welcome["type"] != "welcome" {
        return Err(format!("expected welcome, got {welcome}"));
    }
    Ok(ws)
}

fn next(ws: &mut Ws) -> Result<serde_json::Value, String> {
    loop {
        match ws.read().map_err(|e| format!("read: {e}"))? {
            Message::Text(t) => return serde_json::from_str(&t).map_err(|e| format!("{e}: {t}")),
            Message::Ping(_) | Message::Pong(_) => {}
            other => return Err(format!("unexpected frame {other:?}")),
        }
    }
}

/// Reads until the reply with `id`, skipping room events (and returning
/// the `message` events seen on the way).
fn until_id(ws: &mut Ws, id: &str) -> Result<(serde_json::Value, Vec<serde_json::Value>), String> {
    let mut msgs = Vec::new();
    loop {
        let v = next(ws)?;
        if v["id"] == id {
            return Ok((v, msgs));
        }
        if v["type"] == "message" {
            msgs.push(v);
        } else if v["type"] == "error" {
            return Err(format!("error: {v}"));
        }
    }
}

fn send(ws: &mut Ws, v: serde_json::Value) -> Result<(), String> {
    ws.send(Message::text(v.to_string()))
        .map_err(|e| format!("send: {e}"))
}

/// One round; returns the rejoin→ack time.
fn round(p: &Params, publisher: &mut Ws, n: u64, pad: &str) -> Result<Duration, String> {
    let room = format!("recovery-{}-{n}", std::process::id());
    let mut member = connect(p)?;
    send(
        &mut member,
        serde_json::json!({"type":"join","id":"j","room":room}),
    )?;
    let (ack, _) = until_id(&mut member, "j")?;
    let epoch = ack["epoch"].as_str().ok_or("no epoch")?.to_string();
    let seq = ack["seq"].as_u64().ok_or("no seq")?;
    let _ = member.close(None);
    drop(member);
    send(
        publisher,
        serde_json::json!({"type":"join","id":"j","room":room}),
    )?;
    until_id(publisher, "j")?;
    for i in 0..p.missed {
        send(
            publisher,
            serde_json::json!({"type":"publish","id":i,"room":room,"data":{"i":i,"pad":pad}}),
        )?;
    }
    let mut acks = 0;
    while acks < p.missed {
        let v = next(publisher)?;
        match v["type"].as_str() {
            Some("ack") => acks += 1,
            Some("error") => return Err(format!("publish: {v}")),
            _ => {}
        }
    }
    send(
        publisher,
        serde_json::json!({"type":"leave","id":"l","room":room}),
    )?;
    until_id(publisher, "l")?;
    let mut member = connect(p)?;
    let join =
        serde_json::json!({"type":"join","id":"r","room":room,"since":{"epoch":epoch,"seq":seq}});
    let t0 = Instant::now();
    send(&mut member, join)?;
    let (ack, replay) = until_id(&mut member, "r")?;
    let took = t0.elapsed();
    if ack["recovered"] != true {
        return Err(format!("not recovered: {ack}"));
    }
    let seqs: Vec<u64> = replay.iter().filter_map(|m| m["seq"].as_u64()).collect();
    let want: Vec<u64> = (seq + 1..=seq + p.missed as u64).collect();
    if seqs != want {
        return Err(format!(
            "replay had {} messages (seqs {:?}..), expected {}",
            seqs.len(),
            seqs.first(),
            p.missed
        ));
    }
    let _ = member.close(None);
    Ok(took)
}

/// Runs rounds for warm-up + duration.
pub fn run(p: &Params) -> Outcome {
    let mut o = Outcome::default();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let pad = "x".repeat(p.size.saturating_sub(30));
    let mut publisher = match connect(p) {
        Ok(ws) => ws,
        Err(e) => {
            o.errors = 1;
            o.first_error = Some(e);
            return o;
        }
    };
    let start = Instant::now();
    let mut window: Option<(Instant, Option<CpuSample>)> = None;
    let mut n = 0;
    loop {
        let now = Instant::now();
        if window.is_none() && now >= start + p.warmup {
            window = Some((now, CpuSample::take_all(&p.server_pid)));
        }
        if let Some((w0, _)) = &window
            && now >= *w0 + p.duration
        {
            break;
        }
        n += 1;
        match round(p, &mut publisher, n, &pad) {
            Ok(took) => {
                if window.is_some() {
                    let _ = hist.record((took.as_micros() as u64).max(1));
                    o.ops += 1;
                }
                if !p.quiet {
                    eprintln!("[round {n}] {} missed replayed in {:?}", p.missed, took);
                }
            }
            Err(e) => {
                o.errors += 1;
                o.first_error.get_or_insert(e);
                if o.errors > 10 {
                    break;
                }
            }
        }
    }
    if let Some((w0, cpu0)) = window {
        o.window_s = w0.elapsed().as_secs_f64();
        let cpu1 = CpuSample::take_all(&p.server_pid);
        o.server_cpu = cpu0.zip(cpu1).map(|(a, b)| b.minus(a));
    }
    o.hist = Some(hist);
    o.open_after_setup = 1;
    o.open_at_end = 1;
    o
}
