#!/usr/bin/env bash
# Benchmarks several corecast nodes through one Redis on this machine and
# writes docs/BENCHMARKS-cluster.md (included by docs/BENCHMARKS.md).
#
#   scripts/bench_cluster.sh                # 3 repetitions (~8 min)
#   REPS=1 DURATION=3 scripts/bench_cluster.sh
#
# Environment: REPS (3), DURATION (5 s measured), WARMUP (1 s), CORES (core
# loops per node, 2), REDIS_PORT (6391), BASE_PORT (18501), OUT, CASES
# (names to run, default all), NODE_BIN (the node binary, for A/B runs of
# two builds; default target/release/corecast), TLS=1 (nodes reach Redis over rediss://, a
# CA and certificate made with openssl; Redis's TLS port is REDIS_PORT+1).
#
# Redis, two nodes and the load generator share this machine's CPUs
# (nothing is pinned: with 2 CPUs there is no placement that gives each its
# own); the report says how busy Redis was, which is what limits a flat-out
# publish run here. Every run is bounded in time; everything binds
# 127.0.0.1 and is stopped at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
CORES=${CORES:-2}
REDIS_PORT=${REDIS_PORT:-6391}
BASE_PORT=${BASE_PORT:-18501}
OUT=${OUT:-docs/BENCHMARKS-cluster.md}
CASES=${CASES:-}
TLS=${TLS:-0}
RAW=target/bench-cluster
LOAD=target/release/corecast-load
NODE_BIN=${NODE_BIN:-target/release/corecast}

echo "== building (release)"
cargo build --release --bins
rm -rf "$RAW" && mkdir -p "$RAW"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
REDIS_TLS=()
NODE_TLS=()
if [ "$TLS" = 1 ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=bench-ca \
        -keyout "$RAW/ca.key" -out "$RAW/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 \
        -keyout "$RAW/redis.key" -out "$RAW/redis.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\n' >"$RAW/san.ext"
    openssl x509 -req -in "$RAW/redis.csr" -CA "$RAW/ca.pem" -CAkey "$RAW/ca.key" \
        -CAcreateserial -days 2 -extfile "$RAW/san.ext" -out "$RAW/redis.pem" 2>/dev/null
    REDIS_TLS=(--tls-port "$((REDIS_PORT + 1))" --tls-cert-file "$PWD/$RAW/redis.pem"
        --tls-key-file "$PWD/$RAW/redis.key" --tls-ca-cert-file "$PWD/$RAW/ca.pem"
        --tls-auth-clients no)
    REDIS_URL="rediss://127.0.0.1:$((REDIS_PORT + 1))"
    NODE_TLS=(CORECAST_CLUSTER__TLS_CA="$RAW/ca.pem")
fi

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    PIDS=()
}
trap cleanup EXIT

start_cluster() {
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$RAW" --logfile "$PWD/$RAW/redis.log" "${REDIS_TLS[@]}" &
    REDIS_PID=$!
    PIDS=("$REDIS_PID")
    for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
    NODE_PIDS=()
    for i in 1 2; do
        env "${NODE_TLS[@]}" CORECAST_LISTEN="127.0.0.1:$((BASE_PORT + i - 1))" \
            CORECAST_CLUSTER__REDIS="$REDIS_URL" \
            CORECAST_CLUSTER__NODE="bench$i" CORECAST_CORES="$CORES" CORECAST_PIN=false \
            CORECAST_LIMITS__RATE_PER_SEC=1000000000 CORECAST_LIMITS__RATE_BURST=1000000000 \
            CORECAST_LIMITS__MAX_ROOMS=1000 CORECAST_LOG=warn \
            "$NODE_BIN" 2>>"$RAW/node$i.log" &
        NODE_PIDS+=($!)
        PIDS+=($!)
    done
    for i in 1 2; do
        for _ in $(seq 100); do
            curl -sf "http://127.0.0.1:$((BASE_PORT + i - 1))/health" >/dev/null && break
            sleep 0.1
        done
    done
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

N1="127.0.0.1:$BASE_PORT"
N2="127.0.0.1:$((BASE_PORT + 1))"

# run CASE REP LOAD_ARGS...: a fresh cluster per run.
run() {
    local case=$1 rep=$2; shift 2
    start_cluster
    local r0; r0=$(cpu_ticks "$REDIS_PID")
    local t0; t0=$(date +%s.%N)
    "$LOAD" "$@" --server-pid "${NODE_PIDS[0]},${NODE_PIDS[1]},$REDIS_PID" --json --quiet \
        >"$RAW/$case.$rep.json" || true
    local r1; r1=$(cpu_ticks "$REDIS_PID")
    local t1; t1=$(date +%s.%N)
    python3 - "$RAW/$case.$rep.json" "$r0" "$r1" "$t0" "$t1" "$(getconf CLK_TCK)" <<'EOF'
import json, sys
p, r0, r1, t0, t1, tck = sys.argv[1:]
r = json.load(open(p))
r["redis_busy"] = (int(r1) - int(r0)) / int(tck) / (float(t1) - float(t0))
json.dump(r, open(p, "w"))
lat = r.get("latency_us") or {}
print(f"   #{p.split('.')[-2]}: {r['published_per_s']:.0f} publishes/s, {r['ops_per_s']:.0f} deliveries/s, "
      f"p50 {lat.get('p50')} p99 {lat.get('p99')} us, missing {r['missing']}, ooo {r['out_of_order']}, "
      f"errors {r['errors']}, redis busy {r['redis_busy']:.2f}")
EOF
    cleanup
}

D=(--duration "$DURATION" --warmup "$WARMUP" --size 100)
case_() {
    local name=$1; shift
    if [ -n "$CASES" ] && [[ " $CASES " != *" $name "* ]]; then return; fi
    echo "== $name: corecast-load $*"
    echo "$*" >"$RAW/$name.args"
    for rep in $(seq "$REPS"); do run "$name" "$rep" "$@"; done
}

# Publishes with history through one Redis, flat out: 100 rooms, 100
# publishers (each a member of its room) spread over both nodes.
case_ publish-flat fanout --addr "$N1,$N2" --rooms 100 --members 0 --publishers 100 --inflight 8 "${D[@]}"
# The same with an idempotency key on every publish (as the JS client sends).
case_ publish-flat-keys fanout --addr "$N1,$N2" --rooms 100 --members 0 --publishers 100 --inflight 8 --keys "${D[@]}"
# Cross-node publish→delivery latency at fixed rates: publishers on node 1,
# members on node 2 (10 rooms; 10 members, or 1).
for rate in 1000 5000 10000; do
    case_ "cross-10x10-$rate" fanout --addr "$N2" --pub-addr "$N1" --rooms 10 --members 10 \
        --publishers 10 --rate "$rate" "${D[@]}"
done
case_ cross-10x1-10000 fanout --addr "$N2" --pub-addr "$N1" --rooms 10 --members 1 \
    --publishers 10 --rate 10000 "${D[@]}"
# A 1000-member room split over two nodes, flat out.
case_ fanout-1x1000 fanout --addr "$N1,$N2" --rooms 1 --members 1000 --publishers 4 --inflight 8 "${D[@]}"

echo "== writing $OUT"
python3 scripts/bench_cluster_report.py "$RAW" "$OUT" "REPS=$REPS DURATION=$DURATION WARMUP=$WARMUP CORES=$CORES TLS=$TLS"
echo "done: $OUT"
