//! storebench: redb vs fjall on corecast's room-history workload.
//!
//! `storebench suite [quick]` runs everything (each measurement in a child
//! process of this same binary) and writes results/summary.md and
//! results/raw.txt. The other subcommands are the individual measurements.

mod store;

use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::{disk_usage, open_store, Mode, OpenOpts, Store, Trim, R};

const ROOT: &str = "/tmp/storebench";
const T0: u64 = 1_780_000_000_000;

// ---------------------------------------------------------------- workload

pub fn room_name(r: u32) -> String {
    format!("room-{r}")
}
pub fn key(room: u32, seq: u64) -> Vec<u8> {
    let name = room_name(room);
    let mut k = Vec::with_capacity(name.len() + 9);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}
/// first possible key of a room (seq 0)
pub fn room_lo(room: u32) -> Vec<u8> {
    key(room, 0)
}
/// exclusive upper bound of a room: name + 0x01
pub fn room_hi(room: u32) -> Vec<u8> {
    let mut k = room_name(room).into_bytes();
    k.push(1);
    k
}
pub fn parse_key(k: &[u8]) -> Option<(u32, u64)> {
    if k.len() < 9 || k[k.len() - 9] != 0 {
        return None;
    }
    let name = std::str::from_utf8(&k[..k.len() - 9]).ok()?;
    let room = name.strip_prefix("room-")?.parse().ok()?;
    let seq = u64::from_be_bytes(k[k.len() - 8..].try_into().ok()?);
    Some((room, seq))
}
pub fn ts_of(v: &[u8]) -> u64 {
    u64::from_be_bytes(v[..8].try_into().unwrap())
}
/// ts (8 bytes BE) + a message JSON of exactly `vsize` bytes, deterministic in
/// (room, seq, ts) so a reader can check every byte. Text is pseudo-random
/// letters so block compression (fjall lz4) doesn't get an unrealistic win.
pub fn value(room: u32, seq: u64, ts: u64, vsize: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + vsize);
    v.extend_from_slice(&ts.to_be_bytes());
    let head = format!(
        r#"{{"type":"message","room":"room-{room}","seq":{seq},"ts":{ts},"from":{{"user":"u{}"}},"data":{{"text":""#,
        (room as u64 * 7 + seq) % 1000
    );
    v.extend_from_slice(head.as_bytes());
    let tail = br#""}}"#;
    let mut x = (room as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seq.wrapping_mul(0xBF58_476D_1CE4_E5B9) ^ 1;
    const ALPHA: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz .,!?e";
    while v.len() < 8 + vsize - tail.len() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(ALPHA[(x & 31) as usize]);
    }
    v.extend_from_slice(tail);
    v
}
fn populate_ts(room: u32, seq: u64) -> u64 {
    T0 + seq * 60_000 + room as u64
}

/// kill-9 / disk-full schedule: global record g of batch k -> (room, seq)
fn sched(g: u64, rooms: u64) -> (u32, u64) {
    ((g % rooms) as u32, g / rooms + 1)
}
fn sched_rec(g: u64, rooms: u64, vsize: usize) -> (Vec<u8>, Vec<u8>) {
    let (r, s) = sched(g, rooms);
    (key(r, s), value(r, s, T0 + g, vsize))
}

// ---------------------------------------------------------------- helpers

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap()
}
fn us(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}
fn p(h: &Histogram<u64>, q: f64) -> u64 {
    h.value_at_quantile(q)
}
fn out(kv: &[(&str, String)]) {
    let mut s = String::from("RESULT");
    for (k, v) in kv {
        s.push('\t');
        s.push_str(k);
        s.push('=');
        s.push_str(&v.replace(['\t', '\n'], " "));
    }
    println!("{s}");
    std::io::stdout().flush().ok();
}
fn drop_caches() {
    unsafe { libc::sync() };
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}
fn fresh_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
}
fn arg<T: std::str::FromStr>(a: &[String], i: usize) -> T
where
    T::Err: std::fmt::Debug,
{
    a.get(i).unwrap_or_else(|| panic!("missing argument {i}")).parse().unwrap()
}

// ---------------------------------------------------------------- append

fn cmd_append(a: &[String]) -> R<()> {
    let engine = a[0].as_str();
    let (b, rooms, vsize): (usize, u32, usize) = (arg(a, 1), arg(a, 2), arg(a, 3));
    let mode = Mode::parse(&a[4]);
    let secs: f64 = arg(a, 5);
    let dir = PathBuf::from(format!("{ROOT}/data-{engine}-append"));
    fresh_dir(&dir);
    let mut st = open_store(engine, &dir, &OpenOpts::default())?;
    let mut seqs = vec![0u64; rooms as usize];
    let mut rng = fastrand::Rng::with_seed(42);
    let mut h = hist();
    let (mut n, mut busy) = (0u64, Duration::ZERO);
    let mut g = 0u64;
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        let batch: Vec<_> = (0..b)
            .map(|_| {
                let r = rng.u32(0..rooms);
                seqs[r as usize] += 1;
                g += 1;
                (key(r, seqs[r as usize]), value(r, seqs[r as usize], T0 + g, vsize))
            })
            .collect();
        let t = Instant::now();
        st.write(&batch, &[], mode)?;
        let d = t.elapsed();
        busy += d;
        h.record(us(d))?;
        n += b as u64;
    }
    let wall = start.elapsed();
    st.close()?;
    let disk = disk_usage(&dir);
    out(&[
        ("kind", "append".into()),
        ("engine", engine.into()),
        ("B", b.to_string()),
        ("R", rooms.to_string()),
        ("vsize", vsize.to_string()),
        ("mode", a[4].clone()),
        ("batches", h.len().to_string()),
        ("appends_per_s", format!("{:.0}", n as f64 / busy.as_secs_f64())),
        ("appends_per_s_wall", format!("{:.0}", n as f64 / wall.as_secs_f64())),
        ("p50_us", p(&h, 0.5).to_string()),
        ("p99_us", p(&h, 0.99).to_string()),
        ("max_us", h.max().to_string()),
        ("disk_per_rec", format!("{:.0}", disk as f64 / n as f64)),
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

// ---------------------------------------------------------------- populate

fn cmd_populate(a: &[String]) -> R<()> {
    let engine = a[0].as_str();
    let dir = PathBuf::from(&a[1]);
    let (rooms, per_room, vsize): (u32, u64, usize) = (arg(a, 2), arg(a, 3), arg(a, 4));
    let mode = Mode::parse(&a[5]);
    let flush_at: u64 = a.get(6).map(|s| s.parse().unwrap()).unwrap_or(u64::MAX);
    fresh_dir(&dir);
    let mut st = open_store(engine, &dir, &OpenOpts::default())?;
    let t = Instant::now();
    let mut batch = Vec::with_capacity(1000);
    let mut n = 0u64;
    let mut h = hist();
    for seq in 1..=per_room {
        for r in 0..rooms {
            batch.push((key(r, seq), value(r, seq, populate_ts(r, seq), vsize)));
            n += 1;
            if batch.len() == 1000 {
                let t1 = Instant::now();
                st.write(&batch, &[], mode)?;
                h.record(us(t1.elapsed()))?;
                batch.clear();
            }
            if n == flush_at {
                if !batch.is_empty() {
                    st.write(&batch, &[], mode)?;
                    batch.clear();
                }
                st.flush()?;
            }
        }
    }
    if !batch.is_empty() {
        st.write(&batch, &[], mode)?;
    }
    let load = t.elapsed();
    st.close()?;
    out(&[
        ("kind", "populate".into()),
        ("engine", engine.into()),
        ("records", n.to_string()),
        ("load_s", format!("{:.2}", load.as_secs_f64())),
        ("batch_p50_us", p(&h, 0.5).to_string()),
        ("batch_p99_us", p(&h, 0.99).to_string()),
        ("disk_mb", format!("{:.1}", disk_usage(&dir) as f64 / 1048576.0)),
    ]);
    Ok(())
}

// ---------------------------------------------------------------- open + range read (+ crash)

fn read_hist(st: &dyn Store, rooms: u32, from_seq: u64, n: usize, seed: u64, expect: usize) -> R<Histogram<u64>> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut h = hist();
    for _ in 0..n {
        let r = rng.u32(0..rooms);
        let t = Instant::now();
        let (cnt, _) = st.read_range(&key(r, from_seq), &room_hi(r), &mut |_, _| {})?;
        h.record(us(t.elapsed()))?;
        if cnt != expect {
            return Err(format!("room {r}: read {cnt} records, expected {expect}").into());
        }
    }
    Ok(h)
}

fn cmd_openread(a: &[String]) -> R<()> {
    let engine = a[0].as_str();
    let dir = PathBuf::from(&a[1]);
    let (rooms, per_room): (u32, u64) = (arg(a, 2), arg(a, 3));
    let crash_mode = Mode::parse(a.get(4).map(|s| s.as_str()).unwrap_or("durable"));
    drop_caches();
    let t = Instant::now();
    let st = open_store(engine, &dir, &OpenOpts::default())?;
    let open_cold = t.elapsed();
    // cold: first reads after a cold open
    let hc = read_hist(&*st, rooms, 1, 100, 1, per_room as usize)?;
    // warm: last 1000 (whole room, seq > 0) and last 100 (seq > per_room-100)
    let h1000 = read_hist(&*st, rooms, 1, 1000, 2, per_room as usize)?;
    let h100 = read_hist(&*st, rooms, per_room - 99, 1000, 3, 100)?;
    st.close()?;
    let t = Instant::now();
    let mut st = open_store(engine, &dir, &OpenOpts::default())?;
    let open_warm = t.elapsed();
    let mut open_checked = String::from("n/a");
    if engine == "redb" {
        st.close()?;
        drop_caches();
        let t = Instant::now();
        st = open_store(engine, &dir, &OpenOpts { check_integrity: true, ..Default::default() })?;
        open_checked = format!("{:.1}", t.elapsed().as_secs_f64() * 1e3);
    }
    out(&[
        ("kind", "read".into()),
        ("engine", engine.into()),
        ("open_cold_ms", format!("{:.1}", open_cold.as_secs_f64() * 1e3)),
        ("open_warm_ms", format!("{:.1}", open_warm.as_secs_f64() * 1e3)),
        ("open_check_integrity_cold_ms", open_checked),
        ("cold_read1000_p50_us", p(&hc, 0.5).to_string()),
        ("cold_read1000_p99_us", p(&hc, 0.99).to_string()),
        ("read1000_p50_us", p(&h1000, 0.5).to_string()),
        ("read1000_p99_us", p(&h1000, 0.99).to_string()),
        ("read100_p50_us", p(&h100, 0.5).to_string()),
        ("read100_p99_us", p(&h100, 0.99).to_string()),
    ]);
    // one more acknowledged batch, then die like kill -9 (no close, no destructors)
    let batch: Vec<_> = (0..rooms.min(1000))
        .map(|r| (key(r, per_room + 1), value(r, per_room + 1, populate_ts(r, per_room + 1), 200)))
        .collect();
    st.write(&batch, &[], crash_mode)?;
    println!("ACKED");
    std::io::stdout().flush().ok();
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    unreachable!()
}

fn cmd_crashopen(a: &[String]) -> R<()> {
    let engine = a[0].as_str();
    let dir = PathBuf::from(&a[1]);
    let (rooms, per_room): (u32, u64) = (arg(a, 2), arg(a, 3));
    drop_caches();
    let t = Instant::now();
    let st = open_store(engine, &dir, &OpenOpts::default())?;
    let open = t.elapsed();
    let mut total = 0;
    let mut acked_ok = 0;
    for r in 0..rooms {
        let (n, _) = st.read_range(&room_lo(r), &room_hi(r), &mut |k, _| {
            if parse_key(k).map(|x| x.1) == Some(per_room + 1) {
                acked_ok += 1;
            }
        })?;
        total += n;
    }
    st.close()?;
    out(&[
        ("kind", "crashopen".into()),
        ("engine", engine.into()),
        ("open_after_kill9_cold_ms", format!("{:.1}", open.as_secs_f64() * 1e3)),
        ("records", total.to_string()),
        ("last_acked_batch_present", format!("{acked_ok}/{}", rooms.min(1000))),
    ]);
    Ok(())
}

// ---------------------------------------------------------------- trim

fn cmd_trim(a: &[String]) -> R<()> {
    let engine = a[0].as_str();
    let dir = PathBuf::from(&a[1]);
    let (rooms, per_room, vsize): (u32, u64, usize) = (arg(a, 2), arg(a, 3), arg(a, 4));
    let secs: f64 = arg(a, 5);
    let mut st = open_store(engine, &dir, &OpenOpts::default())?;
    let size_before = disk_usage(&dir);
    let half = per_room / 2; // trim rooms 0..100 below half+1
    let ntrim = 100.min(rooms);

    // (1) retention by count: delete seq <= half in 100 rooms, one durable txn each
    let mut ht = hist();
    let mut deleted = 0;
    for r in 0..ntrim {
        let t = Instant::now();
        deleted += st.write(&[], &[(room_lo(r), key(r, half + 1))], Mode::Durable)?;
        ht.record(us(t.elapsed()))?;
    }
    // (2) read after trim: whole trimmed room (range starts below the trimmed
    // part, so an LSM walks the tombstones) vs the same number of live
    // records in an untrimmed room read from seq > half
    let mut hr_t = hist();
    let mut hr_u = hist();
    let live = (per_room + 1 - half) as usize; // +1: the batch acked before kill -9
    for rep in 0..10 {
        for r in 0..ntrim {
            let t = Instant::now();
            let (n, _) = st.read_range(&room_lo(r), &room_hi(r), &mut |_, _| {})?;
            hr_t.record(us(t.elapsed()))?;
            assert_eq!(n, live, "trimmed room {r} rep {rep}");
            let u = ntrim + r;
            let t = Instant::now();
            let (n, _) = st.read_range(&key(u, half + 1), &room_hi(u), &mut |_, _| {})?;
            hr_u.record(us(t.elapsed()))?;
            assert_eq!(n, live);
        }
    }
    // (3) retention by age across every room, one durable txn: find each
    // room's first record with ts >= cutoff (scan from the room's start, stop
    // early: ts grows with seq), delete below it.
    let cutoff_seq = per_room * 3 / 10 + 1;
    let cutoff = T0 + cutoff_seq * 60_000;
    let t = Instant::now();
    let mut trims: Vec<Trim> = Vec::new();
    for r in 0..rooms {
        match st.first_key_ts_ge(&room_lo(r), &room_hi(r), cutoff)? {
            Some(k) if k > room_lo(r) => trims.push((room_lo(r), k)),
            Some(_) => {}
            None => trims.push((room_lo(r), room_hi(r))),
        }
    }
    let age_scan = t.elapsed();
    let t = Instant::now();
    let age_deleted = st.write(&[], &trims, Mode::Durable)?;
    let age_commit = t.elapsed();

    let size_after = disk_usage(&dir);
    let t = Instant::now();
    st.compact()?;
    let compact = t.elapsed();
    let size_compacted = disk_usage(&dir);
    // (4) appends interleaved with trims (single store thread)
    let mut seqs = vec![per_room + 1; rooms as usize];
    let mut floor: Vec<u64> = (0..rooms).map(|r| if r < ntrim { half + 1 } else { cutoff_seq }).collect();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut g = 0;
    let mut mk_batch = |seqs: &mut Vec<u64>| -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..100)
            .map(|_| {
                let r = rng.u32(0..rooms);
                seqs[r as usize] += 1;
                g += 1;
                let s = seqs[r as usize];
                (key(r, s), value(r, s, T0 + 10_000_000_000 + g, vsize))
            })
            .collect()
    };
    let mut next_trim_room = 0u32;
    let mut next_trim = |floor: &mut Vec<u64>| -> Trim {
        let r = next_trim_room % rooms;
        next_trim_room += 1;
        let f = floor[r as usize];
        floor[r as usize] = f + 100;
        (room_lo(r), key(r, f + 100))
    };
    let (mut ha, mut hb, mut hbt, mut hc) = (hist(), hist(), hist(), hist());
    for phase in 0..3 {
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < secs {
            let batch = mk_batch(&mut seqs);
            match phase {
                0 => {
                    let t = Instant::now();
                    st.write(&batch, &[], Mode::Durable)?;
                    ha.record(us(t.elapsed()))?;
                }
                1 => {
                    let t = Instant::now();
                    st.write(&batch, &[], Mode::Durable)?;
                    hb.record(us(t.elapsed()))?;
                    let tr = next_trim(&mut floor);
                    let t = Instant::now();
                    st.write(&[], &[tr], Mode::Durable)?;
                    hbt.record(us(t.elapsed()))?;
                }
                _ => {
                    let tr = next_trim(&mut floor);
                    let t = Instant::now();
                    st.write(&batch, &[tr], Mode::Durable)?;
                    hc.record(us(t.elapsed()))?;
                }
            }
        }
    }
    st.close()?;
    let mb = |b: u64| format!("{:.1}", b as f64 / 1048576.0);
    out(&[
        ("kind", "trim".into()),
        ("engine", engine.into()),
        ("count_trim500_p50_us", p(&ht, 0.5).to_string()),
        ("count_trim500_p99_us", p(&ht, 0.99).to_string()),
        ("count_trim_deleted_reported", deleted.to_string()),
        ("read_trimmed_room_p50_us", p(&hr_t, 0.5).to_string()),
        ("read_untrimmed_same_n_p50_us", p(&hr_u, 0.5).to_string()),
        ("age_sweep_rooms", rooms.to_string()),
        ("age_sweep_scan_ms", format!("{:.1}", age_scan.as_secs_f64() * 1e3)),
        ("age_sweep_commit_ms", format!("{:.1}", age_commit.as_secs_f64() * 1e3)),
        ("age_sweep_deleted_reported", age_deleted.to_string()),
        ("append_only_p50_us", p(&ha, 0.5).to_string()),
        ("append_only_p99_us", p(&ha, 0.99).to_string()),
        ("append_then_trim_txn_append_p50_us", p(&hb, 0.5).to_string()),
        ("append_then_trim_txn_append_p99_us", p(&hb, 0.99).to_string()),
        ("trim100_txn_p50_us", p(&hbt, 0.5).to_string()),
        ("trim100_txn_p99_us", p(&hbt, 0.99).to_string()),
        ("append_with_trim_same_txn_p50_us", p(&hc, 0.5).to_string()),
        ("append_with_trim_same_txn_p99_us", p(&hc, 0.99).to_string()),
        ("disk_before_mb", mb(size_before)),
        ("disk_after_trims_mb", mb(size_after)),
        ("compact_ms", format!("{:.0}", compact.as_secs_f64() * 1e3)),
        ("disk_after_compact_mb", mb(size_compacted)),
    ]);
    Ok(())
}

// ---------------------------------------------------------------- kill -9 writer + verify

fn cmd_writer(a: &[String]) -> R<()> {
    let engine = a[0].as_str();
    let dir = PathBuf::from(&a[1]);
    let (b, rooms, vsize): (u64, u64, usize) = (arg(a, 2), arg(a, 3), arg(a, 4));
    let mode = Mode::parse(&a[5]);
    let mut st = open_store(engine, &dir, &OpenOpts::default())?;
    println!("OPEN");
    for k in 0u64.. {
        let batch: Vec<_> = (k * b..(k + 1) * b).map(|g| sched_rec(g, rooms, vsize)).collect();
        st.write(&batch, &[], mode)?;
        println!("C {k}"); // "acknowledged"
    }
    Ok(())
}

#[derive(Default, Debug)]
struct KillCheck {
    acked_missing: u64,
    acked_bad: u64,
    next_batch_present: u64,
    beyond: u64,
    total: u64,
    err: Option<String>,
}

fn check_schedule(st: &dyn Store, b: u64, rooms: u64, vsize: usize, k_acked: i64) -> KillCheck {
    let acked_end = ((k_acked + 1) as u64) * b; // g < acked_end must be present
    let mut c = KillCheck::default();
    let mut seen = vec![false; (acked_end + b) as usize];
    for r in 0..rooms as u32 {
        let res = st.read_range(&room_lo(r), &room_hi(r), &mut |k, v| {
            c.total += 1;
            let Some((room, seq)) = parse_key(k) else {
                c.acked_bad += 1;
                return;
            };
            let g = (seq - 1) * rooms + room as u64;
            if g >= acked_end + b {
                c.beyond += 1;
            } else {
                seen[g as usize] = true;
                if g >= acked_end {
                    c.next_batch_present += 1;
                }
                if v != value(room, seq, T0 + g, vsize).as_slice() {
                    c.acked_bad += 1;
                }
            }
        });
        if let Err(e) = res {
            c.err.get_or_insert(format!("room {r}: {e}"));
        }
    }
    c.acked_missing = seen[..acked_end as usize].iter().filter(|x| !**x).count() as u64;
    c
}

fn cmd_verifykill(a: &[String]) -> R<()> {
    let engine = a[0].as_str();
    let dir = PathBuf::from(&a[1]);
    let (b, rooms, vsize): (u64, u64, usize) = (arg(a, 2), arg(a, 3), arg(a, 4));
    let k: i64 = arg(a, 5);
    let t = Instant::now();
    let st = match open_store(engine, &dir, &OpenOpts::default()) {
        Ok(s) => s,
        Err(e) => {
            out(&[("kind", "verifykill".into()), ("open", format!("ERR {e}"))]);
            return Ok(());
        }
    };
    let open = t.elapsed();
    let c = check_schedule(&*st, b, rooms, vsize, k);
    out(&[
        ("kind", "verifykill".into()),
        ("open", "ok".into()),
        ("open_ms", format!("{:.1}", open.as_secs_f64() * 1e3)),
        ("acked_batches", (k + 1).to_string()),
        ("acked_records_missing", c.acked_missing.to_string()),
        ("bad_values", c.acked_bad.to_string()),
        ("inflight_batch_records_present", format!("{}/{}", c.next_batch_present, b)),
        ("records_beyond", c.beyond.to_string()),
        ("read_err", c.err.unwrap_or_else(|| "none".into())),
    ]);
    Ok(())
}

// ---------------------------------------------------------------- corruption verify

fn cmd_verifyall(a: &[String]) -> R<()> {
    let engine = a[0].as_str();
    let dir = PathBuf::from(&a[1]);
    let (rooms, per_room, vsize): (u32, u64, usize) = (arg(a, 2), arg(a, 3), arg(a, 4));
    let check: u8 = arg(a, 5);
    let opts = OpenOpts { check_integrity: check == 1, ..Default::default() };
    let t = Instant::now();
    let st = match open_store(engine, &dir, &opts) {
        Ok(s) => s,
        Err(e) => {
            out(&[("open", "ERR".into()), ("err", format!("{e} / {e:?}"))]);
            return Ok(());
        }
    };
    let open = t.elapsed();
    let (mut good, mut bad, mut errs) = (0u64, 0u64, 0u64);
    let mut first_err = String::from("none");
    let mut seen = vec![false; (rooms as u64 * per_room) as usize];
    for r in 0..rooms {
        let res = st.read_range(&room_lo(r), &room_hi(r), &mut |k, v| match parse_key(k) {
            Some((room, seq)) if room == r && seq >= 1 && seq <= per_room => {
                if v == value(room, seq, populate_ts(room, seq), vsize).as_slice() {
                    good += 1;
                    seen[(room as u64 * per_room + seq - 1) as usize] = true;
                } else {
                    bad += 1;
                }
            }
            _ => bad += 1,
        });
        if let Err(e) = res {
            errs += 1;
            if first_err == "none" {
                first_err = format!("room {r}: {e} / {e:?}");
            }
        }
    }
    let missing = seen.iter().filter(|x| !**x).count();
    // can it still commit?
    let mut st = st;
    let w = st.write(&[(key(0, per_room + 1), value(0, per_room + 1, 0, vsize))], &[], Mode::Durable);
    out(&[
        ("open", "ok".into()),
        ("open_ms", format!("{:.0}", open.as_secs_f64() * 1e3)),
        ("good", good.to_string()),
        ("bad_values", bad.to_string()),
        ("missing", missing.to_string()),
        ("rooms_with_read_error", errs.to_string()),
        ("first_err", first_err),
        ("write_after", match w {
            Ok(_) => "ok".into(),
            Err(e) => format!("ERR {e}"),
        }),
    ]);
    Ok(())
}

// ---------------------------------------------------------------- disk full

fn cmd_fillup(a: &[String]) -> R<()> {
    let engine = a[0].as_str();
    let dir = PathBuf::from(&a[1]);
    let ballast = PathBuf::from(&a[2]);
    let memtable: Option<u64> = a.get(3).map(|s| s.parse().unwrap());
    let (b, rooms, vsize) = (100u64, 37u64, 200usize);
    let opts = OpenOpts { fjall_memtable: memtable, ..Default::default() };
    let mut st = open_store(engine, &dir, &opts)?;
    let batch = |k: u64| -> Vec<_> { (k * b..(k + 1) * b).map(|g| sched_rec(g, rooms, vsize)).collect() };
    let mut k = 0u64;
    let first_err = loop {
        match st.write(&batch(k), &[], Mode::Durable) {
            Ok(_) => k += 1,
            Err(e) => break format!("{e} / {e:?}"),
        }
        if k > 1_000_000 {
            break "never failed".into();
        }
    };
    let acked_at_full = k;
    let retry_full = match st.write(&batch(k), &[], Mode::Durable) {
        Ok(_) => {
            k += 1;
            "ok".to_string()
        }
        Err(e) => format!("ERR {e}"),
    };
    std::fs::remove_file(&ballast)?;
    let mut after_free = Vec::new();
    for _ in 0..3 {
        match st.write(&batch(k), &[], Mode::Durable) {
            Ok(_) => {
                k += 1;
                after_free.push("ok".to_string())
            }
            Err(e) => after_free.push(format!("ERR {e}")),
        }
    }
    let read_live = match st.read_range(&room_lo(0), &room_hi(0), &mut |_, _| {}) {
        Ok((n, _)) => format!("ok {n} records in room 0"),
        Err(e) => format!("ERR {e}"),
    };
    let close = match st.close() {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("ERR {e}"),
    };
    let (reopen, check, write_after_reopen) = match open_store(engine, &dir, &opts) {
        Err(e) => (format!("ERR {e} / {e:?}"), String::new(), String::new()),
        Ok(mut st) => {
            let c = check_schedule(&*st, b, rooms, vsize, k as i64 - 1);
            let w = match st.write(&batch(k), &[], Mode::Durable) {
                Ok(_) => "ok".to_string(),
                Err(e) => format!("ERR {e}"),
            };
            let _ = st.close();
            ("ok".to_string(), format!("{c:?}"), w)
        }
    };
    out(&[
        ("kind", "diskfull".into()),
        ("engine", engine.into()),
        ("memtable", format!("{memtable:?}")),
        ("batches_acked_before_full", acked_at_full.to_string()),
        ("first_error", first_err),
        ("retry_while_full", retry_full),
        ("after_freeing_space_3_commits", after_free.join(",")),
        ("read_same_handle", read_live),
        ("close", close),
        ("reopen", reopen),
        ("acked_total", k.to_string()),
        ("check_after_reopen", check),
        ("write_after_reopen", write_after_reopen),
    ]);
    Ok(())
}

// ---------------------------------------------------------------- suite (orchestration)

struct Runner {
    exe: PathBuf,
    raw: std::fs::File,
}

impl Runner {
    /// run a child measurement; returns its RESULT lines as maps plus a status string
    fn run(&mut self, args: &[&str], timeout: Duration) -> (Vec<BTreeMap<String, String>>, String) {
        let mut child = Command::new(&self.exe)
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let o = std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).collect::<Vec<_>>());
        let e = std::thread::spawn(move || BufReader::new(stderr).lines().map_while(Result::ok).collect::<Vec<_>>());
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break format!("{s}");
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                break "TIMEOUT(killed)".into();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let lines = o.join().unwrap();
        let errs = e.join().unwrap();
        writeln!(self.raw, "# {} -> {status}", args.join(" ")).ok();
        for l in &lines {
            writeln!(self.raw, "{l}").ok();
        }
        let tail: Vec<_> = errs.iter().rev().take(6).rev().cloned().collect();
        for l in &tail {
            writeln!(self.raw, "stderr: {l}").ok();
        }
        let res = lines
            .iter()
            .filter_map(|l| l.strip_prefix("RESULT\t"))
            .map(|l| {
                l.split('\t')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .collect();
        let st = if let Some(i) = errs.iter().position(|l| l.contains("panicked at")) {
            let msg = errs.get(i + 1).cloned().unwrap_or_default();
            writeln!(self.raw, "stderr: {} {}", errs[i], msg).ok();
            format!("{status}; PANIC {} {}", errs[i].split("panicked at ").nth(1).unwrap_or(""), msg)
        } else if !status.contains("exit status: 0") {
            format!("{status}; stderr: {}", tail.join(" | "))
        } else {
            status
        };
        (res, st)
    }
}

fn median_str(vals: &[String]) -> String {
    let mut nums: Vec<f64> = vals.iter().filter_map(|v| v.parse().ok()).collect();
    if nums.len() != vals.len() || nums.is_empty() {
        return vals.join(" / ");
    }
    nums.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let m = nums[nums.len() / 2];
    if m.fract() == 0.0 { format!("{m:.0}") } else { format!("{m:.1}") }
}

fn medians(rs: &[BTreeMap<String, String>], fields: &[&str]) -> Vec<String> {
    fields
        .iter()
        .map(|f| median_str(&rs.iter().filter_map(|r| r.get(*f).cloned()).collect::<Vec<_>>()))
        .collect()
}

fn flip(path: &Path, off: u64, len: usize) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut buf = vec![0u8; len];
    f.read_at(&mut buf, off).unwrap();
    for x in &mut buf {
        *x ^= 0xFF;
    }
    f.write_at(&buf, off).unwrap();
    f.sync_all().unwrap();
}
fn zero(path: &Path, off: u64, len: usize) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_at(&vec![0u8; len], off / 4096 * 4096).unwrap();
    f.sync_all().unwrap();
}
fn journal_written(dir: &Path) -> u64 {
    let mut fl = Vec::new();
    files(dir, &mut fl);
    fl.iter().filter(|(p, _)| p.extension().is_some_and(|e| e == "jnl")).map(|(p, _)| written_len(p)).sum()
}
fn truncate(path: &Path, len: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(len).unwrap();
    f.sync_all().unwrap();
}
/// end of the written part of a file (fjall preallocates its journal with zeros)
fn written_len(path: &Path) -> u64 {
    let data = std::fs::read(path).unwrap();
    data.iter().rposition(|b| *b != 0).map(|i| i as u64 + 1).unwrap_or(0)
}
fn files(dir: &Path, out: &mut Vec<(PathBuf, u64)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push((p.clone(), e.metadata().unwrap().len()));
        }
    }
}
fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let st = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(st.success());
}

fn cmd_suite(a: &[String]) -> R<()> {
    let quick = a.first().map(|s| s == "quick").unwrap_or(false);
    let only: Vec<String> = a.iter().skip(1).cloned().collect();
    let want = |s: &str| only.is_empty() || only.iter().any(|o| o == s);
    let reps = if quick { 1 } else { 3 };
    let secs = if quick { "0.5" } else { "2" };
    let resdir = PathBuf::from(format!("{ROOT}/results"));
    std::fs::create_dir_all(&resdir)?;
    let mut run = Runner {
        exe: std::env::current_exe()?,
        raw: std::fs::OpenOptions::new().create(true).append(true).open(resdir.join("raw.txt"))?,
    };
    let mut md = String::new();
    let section = |md: &mut String, s: String| {
        print!("{s}");
        std::io::stdout().flush().ok();
        md.push_str(&s);
        let _ = std::fs::write(resdir.join(if quick { "summary-quick.md" } else { "summary.md" }), &*md);
    };
    section(&mut md, format!("# storebench results ({})\n\nredb {} / fjall {}; medians of {reps} runs\n\n", if quick { "quick" } else { "full" }, "4.6.0", "3.1.13"));

    // ---- append matrix
    if want("append") {
        let engines = [("redb", "durable"), ("redb", "async"), ("fjall", "durable"), ("fjall", "durable-data"), ("fjall", "async")];
        let shapes: &[(u32, usize)] = &[(1, 200), (1000, 200), (1000, 2048)];
        let bs = [1usize, 10, 100, 1000];
        let mut results: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
        let mut fails = Vec::new();
        for rep in 0..reps {
            for &(rooms, vsize) in shapes {
                for b in bs {
                    for (engine, mode) in engines {
                        let args = ["append", engine, &b.to_string(), &rooms.to_string(), &vsize.to_string(), mode, secs].map(|s| s.to_string());
                        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
                        let (res, status) = run.run(&args, Duration::from_secs(120));
                        let id = format!("{rooms:05}|{vsize:05}|{b:05}|{engine}|{mode}");
                        if res.is_empty() {
                            fails.push(format!("{id} rep {rep}: {status}"));
                        }
                        results.entry(id).or_default().extend(res);
                    }
                }
            }
            eprintln!("append rep {rep} done");
        }
        let mut s = String::from("## Append with group commit (appends/s = appends / time inside commit; latency = one batch's txn incl. fsync)\n\n| R | value | B | engine | mode | appends/s | p50 µs | p99 µs | disk B/rec |\n|---|---|---|---|---|---|---|---|---|\n");
        for (id, rs) in &results {
            let parts: Vec<&str> = id.split('|').collect();
            let m = medians(rs, &["appends_per_s", "p50_us", "p99_us", "disk_per_rec"]);
            s += &format!("| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n", parts[0].trim_start_matches('0'), parts[1].trim_start_matches('0'), parts[2].trim_start_matches('0'), parts[3], parts[4], m[0], m[1], m[2], m[3]);
        }
        for f in fails {
            s += &format!("\nFAILED: {f}\n");
        }
        section(&mut md, s + "\n");
    }

    // ---- populate / open / range read / crash-open / trim
    if want("read") {
        let (rooms, per_room) = if quick { ("1000", "100") } else { ("1000", "1000") };
        let mut s = String::from("## 1000 rooms store: load, open, range read, kill -9 reopen, trim\n\n");
        for engine in ["redb", "fjall"] {
            let dir = format!("{ROOT}/data-{engine}-read");
            let mut pops = Vec::new();
            let mut reads = Vec::new();
            let mut crashes = Vec::new();
            let mut trims = Vec::new();
            let mut notes = Vec::new();
            for _ in 0..reps {
                let (r, st) = run.run(&["populate", engine, &dir, rooms, per_room, "200", "durable"], Duration::from_secs(1200));
                if r.is_empty() { notes.push(format!("populate: {st}")); }
                pops.extend(r);
                let (r, st) = run.run(&["openread", engine, &dir, rooms, per_room], Duration::from_secs(600));
                if r.is_empty() { notes.push(format!("openread: {st}")); }
                reads.extend(r);
                let (r, st) = run.run(&["crashopen", engine, &dir, rooms, per_room], Duration::from_secs(600));
                if r.is_empty() { notes.push(format!("crashopen: {st}")); }
                crashes.extend(r);
                let (r, st) = run.run(&["trim", engine, &dir, rooms, per_room, "200", secs], Duration::from_secs(900));
                if r.is_empty() { notes.push(format!("trim: {st}")); }
                trims.extend(r);
                let _ = std::fs::remove_dir_all(&dir);
            }
            s += &format!("### {engine}\n\n| metric | median |\n|---|---|\n");
            for (rs, fields) in [
                (&pops, &["records", "load_s", "batch_p50_us", "batch_p99_us", "disk_mb"][..]),
                (&reads, &["open_cold_ms", "open_warm_ms", "open_check_integrity_cold_ms", "cold_read1000_p50_us", "cold_read1000_p99_us", "read1000_p50_us", "read1000_p99_us", "read100_p50_us", "read100_p99_us"][..]),
                (&crashes, &["open_after_kill9_cold_ms", "records", "last_acked_batch_present"][..]),
                (&trims, &["count_trim500_p50_us", "count_trim500_p99_us", "count_trim_deleted_reported", "read_trimmed_room_p50_us", "read_untrimmed_same_n_p50_us", "age_sweep_rooms", "age_sweep_scan_ms", "age_sweep_commit_ms", "age_sweep_deleted_reported", "append_only_p50_us", "append_only_p99_us", "append_then_trim_txn_append_p50_us", "append_then_trim_txn_append_p99_us", "trim100_txn_p50_us", "trim100_txn_p99_us", "append_with_trim_same_txn_p50_us", "append_with_trim_same_txn_p99_us", "disk_before_mb", "disk_after_trims_mb", "compact_ms", "disk_after_compact_mb"][..]),
            ] {
                let m = medians(rs, fields);
                for (f, v) in fields.iter().zip(m) {
                    s += &format!("| {f} | {v} |\n");
                }
            }
            for n in notes {
                s += &format!("\nFAILED: {n}\n");
            }
            s += "\n";
        }
        section(&mut md, s);
    }

    // ---- kill -9 mid-run
    if want("kill") {
        let mut s = String::from("## kill -9 of a writer mid-run (B=200 appends of 2 KiB over 37 rooms per batch; verify every acknowledged batch after reopen)\n\n| engine | mode | trial | killed after | acked batches | acked records missing | bad values | in-flight batch present | beyond | read err | reopen ms |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
        let trials = if quick { 2 } else { 5 };
        for engine in ["redb", "fjall"] {
            for (mode, n) in [("durable", trials), ("async", 2)] {
                for trial in 0..n {
                    let dir = format!("{ROOT}/data-{engine}-kill");
                    fresh_dir(Path::new(&dir));
                    let mut child = Command::new(&run.exe)
                        .args(["writer", engine, &dir, "200", "37", "2048", mode])
                        .stdout(Stdio::piped())
                        .stderr(Stdio::null())
                        .spawn()?;
                    let stdout = child.stdout.take().unwrap();
                    let last = Arc::new(Mutex::new(-1i64));
                    let l2 = last.clone();
                    let rd = std::thread::spawn(move || {
                        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                            if let Some(k) = line.strip_prefix("C ") {
                                *l2.lock().unwrap() = k.parse().unwrap();
                            }
                        }
                    });
                    let wait_ms = 1000 + fastrand::u64(0..2000);
                    std::thread::sleep(Duration::from_millis(wait_ms));
                    child.kill()?; // SIGKILL
                    child.wait()?;
                    rd.join().unwrap();
                    let k = *last.lock().unwrap();
                    let (r, st) = run.run(&["verifykill", engine, &dir, "200", "37", "2048", &k.to_string()], Duration::from_secs(300));
                    let r = r.into_iter().next().unwrap_or_default();
                    let g = |f: &str| r.get(f).cloned().unwrap_or_else(|| format!("? ({st})"));
                    s += &format!(
                        "| {engine} | {mode} | {trial} | {wait_ms} ms | {} | {} | {} | {} | {} | {} | {} |\n",
                        k + 1, g("acked_records_missing"), g("bad_values"), g("inflight_batch_records_present"), g("records_beyond"), g("read_err"),
                        r.get("open_ms").cloned().unwrap_or_else(|| g("open")),
                    );
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
        section(&mut md, s + "\n");
    }

    // ---- corruption / truncation
    if want("corrupt") {
        let (rooms, per_room) = ("100", "1000");
        let mut s = String::from("## Corruption and truncation (store: 100 rooms x 1000 msgs, 200 B, closed cleanly; fjall: first 70k records flushed to SSTs, last 30k only in the journal)\n\n| engine | scenario | open check | result |\n|---|---|---|---|\n");
        for engine in ["redb", "fjall"] {
            let pristine = format!("{ROOT}/data-{engine}-pristine");
            let work = format!("{ROOT}/data-{engine}-corrupt");
            let flush_at = if engine == "fjall" { "70000" } else { "18446744073709551615" };
            let (_, st) = run.run(&["populate", engine, &pristine, rooms, per_room, "200", "durable", flush_at], Duration::from_secs(600));
            writeln!(run.raw, "# pristine {engine}: {st}").ok();
            let mut fl = Vec::new();
            files(Path::new(&pristine), &mut fl);
            fl.sort();
            writeln!(run.raw, "# files {engine}: {fl:?}").ok();
            let rel = |p: &Path| p.strip_prefix(&pristine).unwrap().to_path_buf();
            type Mutate = Box<dyn Fn(&Path)>;
            let mut scenarios: Vec<(String, Mutate)> = Vec::new();
            let rng_offsets = |len: u64, n: usize, seed: u64| -> Vec<u64> {
                let mut r = fastrand::Rng::with_seed(seed);
                (0..n).map(|_| r.u64(4096..len.max(4097))).collect()
            };
            if engine == "redb" {
                let (f, len) = fl.iter().find(|(p, _)| p.extension().is_some_and(|e| e == "redb")).cloned().unwrap();
                let f = rel(&f);
                for pct in [25u64, 50, 75] {
                    let f = f.clone();
                    scenarios.push((format!("flip 64 B at {pct}% of history.redb ({} MB)", len / 1048576), Box::new(move |d: &Path| flip(&d.join(&f), len * pct / 100, 64))));
                }
                for (i, off) in rng_offsets(len, 5, 11).into_iter().enumerate() {
                    let f = f.clone();
                    scenarios.push((format!("flip 1 byte at random offset #{i} ({off})"), Box::new(move |d: &Path| flip(&d.join(&f), off, 1))));
                }
                {
                    let f = f.clone();
                    scenarios.push(("zero a 4 KiB page at 50% (lost write)".into(), Box::new(move |d: &Path| zero(&d.join(&f), len / 2, 4096))));
                }
                {
                    let f = f.clone();
                    scenarios.push(("flip 4 KiB at offset 0 (header)".into(), Box::new(move |d: &Path| flip(&d.join(&f), 0, 4096))));
                }
                for cut in [4096u64, len / 4] {
                    let f = f.clone();
                    scenarios.push((format!("truncate last {} KiB", cut / 1024), Box::new(move |d: &Path| truncate(&d.join(&f), len - cut))));
                }
            } else {
                let jnl = fl.iter().filter(|(p, _)| p.extension().is_some_and(|e| e == "jnl")).max_by_key(|(_, l)| *l).cloned().unwrap();
                let sst = fl.iter().filter(|(p, _)| p.to_string_lossy().contains("/keyspaces/") && !p.to_string_lossy().contains("/keyspaces/0/")).max_by_key(|(_, l)| *l).cloned().unwrap();
                let jw = written_len(&jnl.0);
                let (jf, sf, slen) = (rel(&jnl.0), rel(&sst.0), sst.1);
                for pct in [25u64, 50, 90] {
                    let jf = jf.clone();
                    scenarios.push((format!("flip 64 B at {pct}% of journal's written part ({} KB written)", jw / 1024), Box::new(move |d: &Path| flip(&d.join(&jf), jw * pct / 100, 64))));
                }
                {
                    let jf = jf.clone();
                    scenarios.push(("zero a 4 KiB page at 50% of journal (lost write)".into(), Box::new(move |d: &Path| zero(&d.join(&jf), jw / 2, 4096))));
                }
                for (i, off) in rng_offsets(jw, 5, 12).into_iter().enumerate() {
                    let jf = jf.clone();
                    scenarios.push((format!("flip 1 byte in journal at random offset #{i} ({off})"), Box::new(move |d: &Path| flip(&d.join(&jf), off, 1))));
                }
                {
                    let jf1 = jf.clone();
                    scenarios.push(("truncate journal's written part by 4 KiB (tail)".into(), Box::new(move |d: &Path| truncate(&d.join(&jf1), jw - 4096))));
                    let jf = jf.clone();
                    scenarios.push(("truncate journal to 50% of its written part".into(), Box::new(move |d: &Path| truncate(&d.join(&jf), jw / 2))));
                }
                for pct in [25u64, 50, 75] {
                    let sf = sf.clone();
                    scenarios.push((format!("flip 64 B at {pct}% of largest SST {} ({} KB)", sf.display(), slen / 1024), Box::new(move |d: &Path| flip(&d.join(&sf), slen * pct / 100, 64))));
                }
                for (i, off) in rng_offsets(slen, 3, 13).into_iter().enumerate() {
                    let sf = sf.clone();
                    scenarios.push((format!("flip 1 byte in SST at random offset #{i} ({off})"), Box::new(move |d: &Path| flip(&d.join(&sf), off, 1))));
                }
                {
                    let sf = sf.clone();
                    scenarios.push(("truncate last 4 KiB of SST".into(), Box::new(move |d: &Path| truncate(&d.join(&sf), slen - 4096))));
                }
            }
            scenarios.insert(0, ("untouched (control)".into(), Box::new(|_: &Path| {})));
            let checks: &[&str] = if engine == "redb" { &["0", "1"] } else { &["0"] };
            for (name, m) in &scenarios {
                for check in checks {
                    copy_dir(Path::new(&pristine), Path::new(&work));
                    m(Path::new(&work));
                    let jbefore = journal_written(Path::new(&work));
                    let (r, st) = run.run(&["verifyall", engine, &work, rooms, per_room, "200", check], Duration::from_secs(120));
                    let jafter = journal_written(Path::new(&work));
                    let res = match r.first() {
                        Some(r) if r.get("open").map(|s| s.as_str()) == Some("ERR") => format!("**open fails**: {}", r.get("err").cloned().unwrap_or_default()),
                        Some(r) => format!(
                            "opens; {} good, {} bad values, {} missing, {} rooms w/ read error{}; write after: {}",
                            r["good"], r["bad_values"], r["missing"], r["rooms_with_read_error"],
                            if r["first_err"] == "none" { String::new() } else { format!(" (first: {})", r["first_err"]) },
                            r["write_after"]
                        ),
                        None => format!("**process died**: {st}"),
                    };
                    let res = if engine == "fjall" && jafter < jbefore {
                        format!("{res}; journal's written bytes {jbefore} -> {jafter} after open (recovery truncated it)")
                    } else {
                        res
                    };
                    let chk = if engine == "redb" { if *check == "1" { "check_integrity_on_open" } else { "default" } } else { "default" };
                    s += &format!("| {engine} | {name} | {chk} | {} |\n", res.replace('|', "/"));
                }
            }
            let _ = std::fs::remove_dir_all(&pristine);
            let _ = std::fs::remove_dir_all(&work);
        }
        section(&mut md, s + "\n");
    }

    // ---- disk full
    if want("diskfull") {
        let small = format!("{ROOT}/small");
        let mut s = String::from("## Disk full (tmpfs size=8m, 1 MiB ballast file freed after the first error; durable batches of 100 x 200 B)\n\n");
        for (engine, mem) in [("redb", None), ("fjall", None), ("fjall", Some("1048576"))] {
            std::fs::create_dir_all(&small)?;
            let _ = Command::new("umount").arg(&small).status();
            let st = Command::new("mount").args(["-t", "tmpfs", "-o", "size=8m", "tmpfs", &small]).status()?;
            if !st.success() {
                s += "could not mount tmpfs\n";
                break;
            }
            let ballast = format!("{small}/ballast");
            std::fs::write(&ballast, vec![1u8; 1 << 20])?;
            let dir = format!("{small}/data-{engine}");
            let mut args = vec!["fillup", engine, &dir, &ballast];
            if let Some(m) = mem {
                args.push(m);
            }
            let (r, st) = run.run(&args, Duration::from_secs(300));
            s += &format!("### {engine}{}\n\n", mem.map(|m| format!(" (max_memtable_size {m})")).unwrap_or_default());
            match r.first() {
                Some(r) => {
                    for (k, v) in r {
                        if k != "kind" {
                            s += &format!("- {k}: {v}\n");
                        }
                    }
                }
                None => s += &format!("- process died: {st}\n"),
            }
            s += "\n";
            let _ = Command::new("umount").arg(&small).status();
        }
        section(&mut md, s);
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        eprintln!("usage: storebench suite [quick|full] [append|read|kill|corrupt|diskfull ...]");
        std::process::exit(2);
    };
    let rest = &args[1..];
    let r = match cmd.as_str() {
        "append" => cmd_append(rest),
        "populate" => cmd_populate(rest),
        "openread" => cmd_openread(rest),
        "crashopen" => cmd_crashopen(rest),
        "trim" => cmd_trim(rest),
        "writer" => cmd_writer(rest),
        "verifykill" => cmd_verifykill(rest),
        "verifyall" => cmd_verifyall(rest),
        "fillup" => cmd_fillup(rest),
        "suite" => cmd_suite(rest),
        _ => Err(format!("unknown command {cmd}").into()),
    };
    if let Err(e) = r {
        eprintln!("error: {e} / {e:?}");
        std::process::exit(1);
    }
}
