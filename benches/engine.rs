//! Micro-benchmarks of the engine's hot paths without sockets: writing frames
//! with tungstenite into memory, one broadcast to 10 000 connections, and the
//! timer wheel.
//!
//! ```sh
//! cargo bench --bench engine                  # everything
//! cargo bench --bench engine -- broadcast     # one group
//! ```
//!
//! Groups:
//! - `frame_write/<op>/<size>`: one `WebSocketContext` configured like
//!   corecast's (`Shared::new`: 4 KiB read buffer, write buffer = backlog - 1
//!   so `write` never touches the stream, backlog 1 MiB), writing a shared
//!   `Message::Text(Utf8Bytes)` (a refcount clone) to an in-memory stream.
//!   `write` = per-frame cost of `write` alone (the frames are flushed every
//!   512 writes, outside the timing); `write+flush` = one `write` and one
//!   `flush` per frame. Throughput is the payload size.
//! - `broadcast_10k/<variant>`: 10 000 contexts, each with its own in-memory
//!   stream. `write+flush_each`: one iteration encodes one `message` event
//!   once (`event::message` + `Utf8Bytes::from`, as the home core does) and
//!   writes + flushes it on every connection. `corked16_msg_major`: one
//!   iteration encodes 16 messages; each is written to every connection in
//!   turn (the order a core delivers a batch of `Deliver`s in), then every
//!   connection is flushed once. `corked16_conn_major`: the same 16 frames,
//!   but each connection gets all 16 and its flush before the next one (same
//!   bytes, one pass over the connections instead of 17). Throughput is
//!   deliveries, so elem/s gives the per-delivery cost. No syscall is
//!   counted: a real flush is one `write(2)` per connection, which corking
//!   saves 15 of per 16 frames.
//! - `timer_wheel/<op>`: `TimerWheel::new(1024, 100, 0)` (corecast's wheel:
//!   1024 slots of 100 ms) holding `(u32, u32, u8)` items like the core's
//!   `(slab key, generation, kind)`, with 100 000 deadlines spread uniformly
//!   over 60 s (within one turn of the wheel, like heartbeats).
//!   `insert_100k`: insert them all into an empty wheel. `expire_100k`:
//!   advance tick by tick (100 ms) through 60 s, expiring all of them.
//!   `steady_tick_100k_pending`: one 100 ms tick with 100 000 pending: advance,
//!   and re-arm every expired item 60 s later (≈167 per tick).
//!
//! The in-memory stream stands in for a non-blocking socket: `read` always
//! says `WouldBlock`; `write` copies into a `Vec` that `flush` empties (as if
//! the kernel took the bytes), so the copy a socket write implies is counted
//! but no syscall is.

use corecast::core::outq::{self, OutQueue};
use corecast::proto::event;
use corecast::timer::TimerWheel;
use criterion::{
    BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use std::hint::black_box;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Message, Utf8Bytes};

// ---------------------------------------------------------------------------
// In-memory stream and corecast's WebSocket settings
// ---------------------------------------------------------------------------

/// A non-blocking socket stand-in: reads would block, writes are copied into
/// `buf`, which `flush` empties.
#[derive(Default)]
struct MemStream {
    buf: Vec<u8>,
    written: u64,
}

impl Read for MemStream {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

impl Write for MemStream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        self.written += data.len() as u64;
        Ok(data.len())
    }

    /// Takes every slice, as `writev` on a socket with room does.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut n = 0;
        for b in bufs {
            n += self.write(b)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.buf.clear();
        Ok(())
    }
}

/// corecast's default `limits.max_backlog`.
const BACKLOG: usize = 1 << 20;

/// The WebSocket settings `core::Shared::new` derives from the defaults.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(BACKLOG - 1)
        .max_write_buffer_size(BACKLOG)
}

fn server_ctx() -> WebSocketContext {
    WebSocketContext::new(Role::Server, Some(ws_config()))
}

/// A text payload of exactly `len` bytes (JSON-looking, ASCII).
fn text_payload(len: usize) -> Utf8Bytes {
    let mut s = String::from(r#"{"type":"message","data":""#);
    while s.len() < len - 2 {
        s.push('x');
    }
    s.push_str("\"}");
    assert_eq!(s.len(), len);
    Utf8Bytes::from(s)
}

// ---------------------------------------------------------------------------
// Frame write
// ---------------------------------------------------------------------------

fn bench_frame_write(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_write");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    for (name, len) in [("100B", 100usize), ("1KiB", 1024)] {
        let frame = text_payload(len);
        g.throughput(Throughput::Bytes(len as u64));

        g.bench_function(BenchmarkId::new("write", name), |b| {
            let mut ctx = server_ctx();
            let mut stream = MemStream::default();
            // 512 frames of ≤ 1 KiB stay well under the 1 MiB write buffer.
            const CHUNK: u64 = 512;
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(CHUNK);
                    let start = Instant::now();
                    for _ in 0..n {
                        ctx.write(&mut stream, Message::Text(black_box(&frame).clone()))
                            .expect("write");
                    }
                    timed += start.elapsed();
                    ctx.flush(&mut stream).expect("flush");
                    left -= n;
                }
                timed
            });
            assert!(stream.written >= len as u64);
        });

        g.bench_function(BenchmarkId::new("write+flush", name), |b| {
            let mut ctx = server_ctx();
            let mut stream = MemStream::default();
            b.iter(|| {
                ctx.write(&mut stream, Message::Text(black_box(&frame).clone()))
                    .expect("write");
                ctx.flush(&mut stream).expect("flush");
            });
            assert!(stream.written >= len as u64);
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------
// Broadcast to 10 000 connections
// ---------------------------------------------------------------------------

const CONNS: usize = 10_000;
const CORK: usize = 16;

/// The pre-encoded sender part of the broadcast message (~100 B of data).
fn broadcast_tail() -> String {
    event::message_tail(
        "u:7f3a9c21",
        Some("Ann Example"),
        r#"{"text":"Hello team, the build is green again","kind":"chat","reply_to":48213,"mentions":["u:ann"]}"#,
    )
}

fn bench_broadcast(c: &mut Criterion) {
    let tail = broadcast_tail();
    let mut conns: Vec<(WebSocketContext, MemStream)> = (0..CONNS)
        .map(|_| (server_ctx(), MemStream::default()))
        .collect();
    let frame_len = event::message("team:engineering", 1, "k3J9xq2LmP", 0, &tail).len();

    let mut g = c.benchmark_group("broadcast_10k");
    g.sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sample_size(20);

    let mut seq = 0u64;
    g.throughput(Throughput::Elements(CONNS as u64));
    g.bench_function(
        BenchmarkId::new("tungstenite_write+flush_each", format!("{frame_len}B")),
        |b| {
            b.iter(|| {
                seq += 1;
                // Encoded once at the home core.
                let frame = Utf8Bytes::from(event::message(
                    "team:engineering",
                    seq,
                    "k3J9xq2LmP",
                    1_767_225_600_000 + seq,
                    &tail,
                ));
                for (ctx, stream) in conns.iter_mut() {
                    ctx.write(stream, Message::Text(frame.clone()))
                        .expect("write");
                    ctx.flush(stream).expect("flush");
                }
            })
        },
    );

    g.throughput(Throughput::Elements((CONNS * CORK) as u64));
    g.bench_function(
        BenchmarkId::new("tungstenite_corked16_msg_major", format!("{frame_len}B")),
        |b| {
            b.iter(|| {
                for _ in 0..CORK {
                    seq += 1;
                    let frame = Utf8Bytes::from(event::message(
                        "team:engineering",
                        seq,
                        "k3J9xq2LmP",
                        1_767_225_600_000 + seq,
                        &tail,
                    ));
                    for (ctx, stream) in conns.iter_mut() {
                        ctx.write(stream, Message::Text(frame.clone()))
                            .expect("write");
                    }
                }
                for (ctx, stream) in conns.iter_mut() {
                    ctx.flush(stream).expect("flush");
                }
            })
        },
    );
    g.bench_function(
        BenchmarkId::new("tungstenite_corked16_conn_major", format!("{frame_len}B")),
        |b| {
            b.iter(|| {
                let frames: Vec<Utf8Bytes> = (0..CORK)
                    .map(|_| {
                        seq += 1;
                        Utf8Bytes::from(event::message(
                            "team:engineering",
                            seq,
                            "k3J9xq2LmP",
                            1_767_225_600_000 + seq,
                            &tail,
                        ))
                    })
                    .collect();
                for (ctx, stream) in conns.iter_mut() {
                    for frame in &frames {
                        ctx.write(stream, Message::Text(frame.clone()))
                            .expect("write");
                    }
                    ctx.flush(stream).expect("flush");
                }
            })
        },
    );

    // What the server does now (core::outq): the frame is framed once and
    // shared (an `Rc` per core); each connection queues a reference and
    // `writev`s it.
    let mut queues: Vec<(OutQueue, MemStream)> = (0..CONNS)
        .map(|_| (OutQueue::default(), MemStream::default()))
        .collect();
    g.throughput(Throughput::Elements(CONNS as u64));
    g.bench_function(
        BenchmarkId::new("outq_push+write_each", format!("{frame_len}B")),
        |b| {
            b.iter(|| {
                seq += 1;
                let frame = outq::text_frame(
                    event::message(
                        "team:engineering",
                        seq,
                        "k3J9xq2LmP",
                        1_767_225_600_000 + seq,
                        &tail,
                    )
                    .as_bytes(),
                );
                let frame = outq::Frame::new(frame);
                for (q, stream) in queues.iter_mut() {
                    q.push(frame.clone());
                    assert!(q.write_to(stream).expect("write"));
                    stream.flush().expect("flush");
                }
            })
        },
    );
    g.throughput(Throughput::Elements((CONNS * CORK) as u64));
    g.bench_function(
        BenchmarkId::new("outq_corked16_msg_major", format!("{frame_len}B")),
        |b| {
            b.iter(|| {
                for _ in 0..CORK {
                    seq += 1;
                    let frame = outq::text_frame(
                        event::message(
                            "team:engineering",
                            seq,
                            "k3J9xq2LmP",
                            1_767_225_600_000 + seq,
                            &tail,
                        )
                        .as_bytes(),
                    );
                    let frame = outq::Frame::new(frame);
                    for (q, _) in queues.iter_mut() {
                        q.push(frame.clone());
                    }
                }
                for (q, stream) in queues.iter_mut() {
                    assert!(q.write_to(stream).expect("write"));
                    stream.flush().expect("flush");
                }
            })
        },
    );
    g.finish();
    let expected = queues[0].1.written;
    assert!(
        expected > 0
            && queues
                .iter()
                .all(|(q, s)| s.written == expected && q.is_empty())
    );

    // Every connection got every frame and nothing is left unflushed.
    let expected = conns[0].1.written;
    assert!(expected > 0);
    assert!(
        conns
            .iter()
            .all(|(_, s)| s.written == expected && s.buf.is_empty())
    );
}

// ---------------------------------------------------------------------------
// Timer wheel
// ---------------------------------------------------------------------------

const TIMERS: usize = 100_000;
const SPREAD_MS: u64 = 60_000;
const TICK_MS: u64 = 100;

type Item = (u32, u32, u8);

fn wheel() -> TimerWheel<Item> {
    TimerWheel::new(1024, TICK_MS, 0)
}

/// 100 000 deadlines spread uniformly over [1, 60 000] ms (fixed seed).
fn deadlines() -> Vec<u64> {
    let mut rng = fastrand::Rng::with_seed(0x0c0ec457);
    (0..TIMERS).map(|_| rng.u64(1..=SPREAD_MS)).collect()
}

fn filled(deadlines: &[u64]) -> TimerWheel<Item> {
    let mut w = wheel();
    for (i, &at) in deadlines.iter().enumerate() {
        w.insert(at, (i as u32, 1, (i % 7) as u8));
    }
    w
}

fn bench_timer_wheel(c: &mut Criterion) {
    let deadlines = deadlines();
    let mut g = c.benchmark_group("timer_wheel");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);

    g.throughput(Throughput::Elements(TIMERS as u64));
    g.bench_function("insert_100k", |b| {
        b.iter_batched(
            wheel,
            |mut w| {
                for (i, &at) in deadlines.iter().enumerate() {
                    w.insert(black_box(at), (i as u32, 1, (i % 7) as u8));
                }
                w
            },
            BatchSize::LargeInput,
        )
    });

    g.bench_function("expire_100k", |b| {
        let mut expired = Vec::with_capacity(4096);
        b.iter_batched(
            || filled(&deadlines),
            |mut w| {
                let mut n = 0;
                let mut now = 0;
                while now <= SPREAD_MS + TICK_MS {
                    now += TICK_MS;
                    w.advance(now, &mut expired);
                    n += expired.len();
                    expired.clear();
                }
                assert_eq!(n, TIMERS);
                w
            },
            BatchSize::LargeInput,
        )
    });

    g.throughput(Throughput::Elements(1));
    g.bench_function("steady_tick_100k_pending", |b| {
        let mut w = filled(&deadlines);
        let mut expired = Vec::with_capacity(4096);
        let mut now = 0u64;
        b.iter(|| {
            now += TICK_MS;
            w.advance(now, &mut expired);
            for item in expired.drain(..) {
                w.insert(now + SPREAD_MS, item);
            }
        });
        assert_eq!(w.len(), TIMERS);
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_frame_write,
    bench_broadcast,
    bench_timer_wheel
);
criterion_main!(benches);
