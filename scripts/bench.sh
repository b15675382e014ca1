#!/usr/bin/env bash
# Benchmarks corecast against the async variant(s), side by side in one run,
# and writes docs/BENCHMARKS.md (machine, commands, medians, ratios).
#
#   scripts/bench.sh                 # full matrix, 3 repetitions (~45 min)
#   REPS=1 DURATION=3 scripts/bench.sh   # quick look
#   CASES='curve-*' scripts/bench.sh     # only the load curves
#
# Cases: echo-20 echo-512 fanout-1x1000 fanout-100x50 fanout-1x1000-half
# connect idle-15000 (every server); the load curves (every server, the
# server's write syscalls counted with perf): curve-fanout-50k -100k -300k
# -1m -3m -max (1 room x 1000 members, 100 B, at that many deliveries/s
# offered: rate/1000 publishes/s from 4 publishers; max: flat out) and
# curve-echo-20k -50k -max (100 connections x 20 B); corecast only:
# publish-flat publish-2k recovery-1000 (history modes) and
# dial-write-delay (fan-out 1 x 1000 at 1M deliveries/s offered with
# limits.max_write_delay_ms 0 2 5 10 20 50, labels corecast-d0 ...).
#
# Environment:
#   REPS        repetitions per case and server (default 3; medians reported)
#   DURATION    measured seconds per run (default 10), WARMUP (default 2)
#   SERVERS     servers to compare (default: "corecast tokio", plus "axum"
#               when the variant builds it, plus "uws" when UWS_BIN is set)
#   UWS_BIN     a uWebSockets server speaking the same protocol subset, run
#               as `$UWS_BIN --listen 127.0.0.1:PORT --cores N` (server
#               "uws"; skipped, and said so, when unset)
#   DIAL_DELAYS the dial's max_write_delay_ms values (default
#               "0 2 5 10 20 50")
#   SERVER_CPUS CPUs the server may use (default 0), GEN_CPUS the load
#               generator's (default 1); every server gets the same
#   SERVER_CORES  corecast cores / tokio worker threads (default: the
#               number of CPUs in SERVER_CPUS)
#   GEN_THREADS load generator threads (default: CPUs in GEN_CPUS)
#   OUT         report path (default docs/BENCHMARKS.md)
#   CASES       cases to run, names or globs (default: all), e.g.
#               CASES="echo-20 curve-fanout-*"; the report rewrites only
#               the sections of docs/BENCHMARKS.md whose cases ran
#   BASE_BIN    another corecast binary; SERVERS="corecast base" then
#               compares this build against it (A/B of a change)
#
# Each run starts a fresh server pinned with taskset, drives it with
# corecast-load (pinned to the other CPUs) and reads the server's CPU time
# from /proc over the measured window (curve and dial runs also its
# syscalls, corecast-load --perf-syscalls). Runs are bounded in time;
# servers are stopped at exit. The report (scripts/bench_report.py) also
# plots the curves to docs/bench-curve-*.png and docs/bench-dial.png when
# matplotlib is installed (pip install matplotlib).
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
SERVER_CPUS=${SERVER_CPUS:-0}
GEN_CPUS=${GEN_CPUS:-1}
OUT=${OUT:-docs/BENCHMARKS.md}
PORT=${PORT:-18400}
RAW=${RAW:-target/bench}
count_cpus() { python3 -c "import sys
n=0
for part in sys.argv[1].split(','):
    a,_,b=part.partition('-'); n+= (int(b)-int(a)+1) if b else 1
print(n)" "$1"; }
SERVER_CORES=${SERVER_CORES:-$(count_cpus "$SERVER_CPUS")}
GEN_THREADS=${GEN_THREADS:-$(count_cpus "$GEN_CPUS")}

echo "== building (release)"
cargo build --release --bins
cargo build --release -p corecast-tokio
DEFAULT_SERVERS="corecast tokio"
[ -x target/release/corecast-axum ] && DEFAULT_SERVERS="$DEFAULT_SERVERS axum"
if [ -n "${UWS_BIN:-}" ] && [ -x "$UWS_BIN" ]; then
    DEFAULT_SERVERS="$DEFAULT_SERVERS uws"
    echo "== uws: $UWS_BIN"
elif [ -n "${UWS_BIN:-}" ]; then
    echo "== uws: skipped (UWS_BIN=$UWS_BIN is not an executable)"
else
    echo "== uws: skipped (UWS_BIN not set)"
fi
SERVERS=${SERVERS:-$DEFAULT_SERVERS}
if [[ " $SERVERS " == *" uws "* ]] && ! [ -x "${UWS_BIN:-}" ]; then
    echo "== uws: left out of SERVERS (no executable UWS_BIN)"
    SERVERS=$(echo " $SERVERS " | sed 's/ uws / /; s/^ *//; s/ *$//')
fi
# Syscall counts for the curve and the dial, when perf can count
# tracepoints here (root, or perf_event_paranoid <= -1).
PERF=()
if perf stat -x, -e syscalls:sys_enter_writev true >/dev/null 2>&1; then
    PERF=(--perf-syscalls)
else
    echo "== perf cannot count syscall tracepoints here: curve runs without syscall counts"
fi
LOAD=target/release/corecast-load
rm -rf "$RAW" && mkdir -p "$RAW"

# Server lifecycle (stop_server, await_server).
source scripts/bench_lib.sh

# start_server NAME [ENV=VALUE ...]
start_server() {
    local name=$1; shift
    local log="$RAW/server-$name.log"
    case "$name" in
        corecast|base)
            # Engine comparisons run with history in memory (the variants
            # keep none); the durability cases pass their own mode.
            local bin=target/release/corecast
            [ "$name" = base ] && bin=${BASE_BIN:?BASE_BIN names the binary to compare with}
            env CORECAST_HISTORY__DURABILITY=memory "$@" \
                CORECAST_LISTEN="127.0.0.1:$PORT" CORECAST_ECHO=true CORECAST_LOG=warn \
                CORECAST_LIMITS__RATE_PER_SEC=1000000000 CORECAST_LIMITS__RATE_BURST=1000000000 \
                CORECAST_LIMITS__MAX_ROOMS=1000 \
                taskset -c "$SERVER_CPUS" "$bin" --cores "$SERVER_CORES" 2>"$log" &
            ;;
        tokio|axum)
            taskset -c "$SERVER_CPUS" "target/release/corecast-$name" \
                --listen "127.0.0.1:$PORT" --cores "$SERVER_CORES" 2>"$log" &
            ;;
        uws)
            taskset -c "$SERVER_CPUS" "$UWS_BIN" \
                --listen "127.0.0.1:$PORT" --cores "$SERVER_CORES" 2>"$log" &
            ;;
        *) echo "unknown server $name" >&2; exit 2 ;;
    esac
    await_server "server $name" "$log"
}

# run CASE SERVER REP [SERVER_ENV...] -- LOAD_ARGS...
run() {
    local case=$1 server=$2 rep=$3; shift 3
    local senv=()
    while [ "$1" != "--" ]; do senv+=("$1"); shift; done
    shift
    start_server "$server" "${senv[@]}"
    local label=${LABEL:-$server}
    local out="$RAW/$case.$label.$rep.json"
    taskset -c "$GEN_CPUS" "$LOAD" "$@" --addr "127.0.0.1:$PORT" --threads "$GEN_THREADS" \
        --server-pid "$SPID" --json --quiet >"$out" || true
    stop_server
    python3 - "$out" "$case" "$label" "$rep" <<'EOF'
import json, sys
p, case, server, rep = sys.argv[1:]
try:
    r = json.load(open(p))
except Exception as e:
    print(f"   {case:<20} {server:<9} #{rep}: no result ({e})"); sys.exit(0)
cpu = r.get("server_cpu") or {}
mem = r.get("memory") or {}
lat = r.get("latency_us") or {}
extra = f"  rss/conn {mem['rss_per_conn_kib']:.2f} KiB" if mem else ""
ack = (r.get("ack_latency_us") or {}).get("p99")
extra += f"  ack p99 {ack} us" if ack else ""
ws = (r.get("write_syscalls") or {}).get("per_op")
extra += f"  writes/op {ws:.4f}" if ws is not None else ""
extra += f"  perf: {r['perf_error']}" if r.get("perf_error") else ""
print(f"   {case:<20} {server:<9} #{rep}: {r['ops_per_s']:>11.0f} ops/s  p99 {lat.get('p99')} us"
      f"  cpu/op {cpu.get('total_us_per_op', 0):.3f} us  missing {r['missing']}  ooo {r['out_of_order']}"
      f"  errors {r['errors']}{extra}")
EOF
}

# wanted NAME: the case is in CASES (a name or a glob), or CASES is unset.
wanted() {
    [ -z "${CASES:-}" ] && return 0
    local pats p
    read -ra pats <<<"$CASES"
    for p in "${pats[@]}"; do
        # shellcheck disable=SC2053 # $p is a glob on purpose
        [[ $1 == $p ]] && return 0
    done
    return 1
}

# case NAME LOAD_ARGS... : every server, REPS times, servers interleaved
case_all() {
    local name=$1; shift
    wanted "$name" || return 0
    echo "== $name: corecast-load $*"
    echo "$*" >"$RAW/$name.args"
    for rep in $(seq "$REPS"); do
        for server in $SERVERS; do
            run "$name" "$server" "$rep" -- "$@"
        done
    done
}

D=(--duration "$DURATION" --warmup "$WARMUP")
case_all echo-20 echo --conns 100 --size 20 "${D[@]}"
case_all echo-512 echo --conns 100 --size 512 "${D[@]}"
case_all fanout-1x1000 fanout --rooms 1 --members 1000 --publishers 4 --inflight 8 --size 100 "${D[@]}"
case_all fanout-100x50 fanout --rooms 100 --members 50 --publishers 100 --inflight 2 --size 100 "${D[@]}"
# Latency at half of each server's own saturated publish rate.
if wanted fanout-1x1000-half; then
    echo "== fanout-1x1000-half: 1000 members at half of the saturated publish rate"
    for rep in $(seq "$REPS"); do
        for server in $SERVERS; do
            rate=$(python3 - "$RAW" "$server" <<'EOF'
import glob, json, statistics, sys
raw, server = sys.argv[1:]
rates = [json.load(open(p))["published_per_s"] for p in glob.glob(f"{raw}/fanout-1x1000.{server}.*.json")]
print(max(1, int(statistics.median(rates) / 2)) if rates else 1000)
EOF
)
            echo "fanout --rooms 1 --members 1000 --publishers 4 --rate RATE/2 --size 100" >"$RAW/fanout-1x1000-half.args"
            run fanout-1x1000-half "$server" "$rep" -- fanout --rooms 1 --members 1000 --publishers 4 \
                --rate "$rate" --size 100 "${D[@]}"
        done
    done
fi
case_all connect connect --conns 50 "${D[@]}"
case_all idle-15000 idle --conns 15000 --duration 15 --warmup 0

# Load curves (issue 12): CPU, latency and write syscalls per operation
# against the offered load, open loop (--rate), every server.
# Fan-out 1 x 1000: R deliveries/s offered = R/1000 publishes/s.
for r in 50k:50 100k:100 300k:300 1m:1000 3m:3000; do
    case_all "curve-fanout-${r%%:*}" fanout --rooms 1 --members 1000 --publishers 4 \
        --rate "${r#*:}" --size 100 "${D[@]}" "${PERF[@]}"
done
case_all curve-fanout-max fanout --rooms 1 --members 1000 --publishers 4 --inflight 8 \
    --size 100 "${D[@]}" "${PERF[@]}"
for r in 20k:20000 50k:50000; do
    case_all "curve-echo-${r%%:*}" echo --conns 100 --size 20 --rate "${r#*:}" "${D[@]}" "${PERF[@]}"
done
case_all curve-echo-max echo --conns 100 --size 20 "${D[@]}" "${PERF[@]}"

# History and durability (corecast only): publish throughput and
# publish→ack latency per mode, and recovery of 1000 missed messages.
# Durable modes write into a fresh directory under target/bench per run.
case_modes() {
    local name=$1 modes=$2; shift 2
    wanted "$name" || return 0
    echo "== $name: corecast-load $* (history modes: $modes)"
    echo "$*" >"$RAW/$name.args"
    for rep in $(seq "$REPS"); do
        for mode in $modes; do
            local dir="$RAW/data-$name-$mode-$rep"
            LABEL="corecast-$mode" run "$name" corecast "$rep" \
                CORECAST_HISTORY__DURABILITY="$mode" CORECAST_HISTORY__PATH="$dir" -- "$@"
            rm -rf "$dir"
        done
    done
}
case_modes publish-flat "memory async sync" fanout --rooms 100 --members 0 --publishers 100 \
    --inflight 8 --size 100 "${D[@]}"
case_modes publish-2k "memory async sync" fanout --rooms 100 --members 0 --publishers 100 \
    --rate 2000 --size 100 "${D[@]}"
case_modes recovery-1000 "memory sync" recovery --missed 1000 --size 100 "${D[@]}"

# The write-delay dial (corecast only): how long a core may hold room
# deliveries to batch them (limits.max_write_delay_ms), against CPU and
# latency, at 1M deliveries/s offered into 1 x 1000. Skipped, and said so,
# when this corecast does not know the setting.
case_dial() {
    local name=$1 delays=$2; shift 2
    wanted "$name" || return 0
    echo "== $name: corecast-load $* (max_write_delay_ms: $delays)"
    if ! AWAIT_SOFT=1 start_server corecast CORECAST_LIMITS__MAX_WRITE_DELAY_MS=0; then
        echo "   skipped: corecast does not start with CORECAST_LIMITS__MAX_WRITE_DELAY_MS:"
        sed 's/^/   | /' "$RAW/server-corecast.log" | tail -5
        stop_server
        return 0
    fi
    stop_server
    echo "$*" >"$RAW/$name.args"
    for rep in $(seq "$REPS"); do
        for d in $delays; do
            LABEL="corecast-d$d" run "$name" corecast "$rep" \
                CORECAST_LIMITS__MAX_WRITE_DELAY_MS="$d" -- "$@"
        done
    done
}
case_dial dial-write-delay "${DIAL_DELAYS:-0 2 5 10 20 50}" fanout --rooms 1 --members 1000 \
    --publishers 4 --rate 1000 --size 100 "${D[@]}" "${PERF[@]}"

echo "== writing $OUT"
python3 scripts/bench_report.py "$RAW" "$OUT" "$SERVERS" \
    "REPS=$REPS DURATION=$DURATION WARMUP=$WARMUP SERVER_CPUS=$SERVER_CPUS GEN_CPUS=$GEN_CPUS SERVER_CORES=$SERVER_CORES GEN_THREADS=$GEN_THREADS"
echo "done: $OUT"
