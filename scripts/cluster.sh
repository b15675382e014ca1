#!/usr/bin/env bash
# A local cluster for trying several nodes by hand: one redis-server and N
# corecast nodes on loopback ports, all in the background.
#
#   scripts/cluster.sh start [N]     # Redis + N nodes (default 2)
#   scripts/cluster.sh status        # what runs, /health of each node
#   scripts/cluster.sh stop          # stop them all (SIGTERM, then SIGKILL)
#   scripts/cluster.sh kill I        # kill -9 node I (1-based): try failover
#   scripts/cluster.sh bench         # 50 000 connections in one room over 3 nodes
#                                    # (memory per connection, publish -> all members)
#
# Environment:
#   REDIS_PORT   Redis port (default 6390)
#   BASE_PORT    first node's port (default 8081; node I listens on BASE_PORT+I-1)
#   CORES        core loops per node (default 1)
#   CORECAST_PIN pin core loops to CPUs (default false here: several nodes
#                on one machine would otherwise pin their core 0 to the same CPU)
#   APPENDFSYNC  "always" runs Redis with appendonly + appendfsync always
#                (acks survive a Redis crash); default: no persistence
#   BIN          corecast binary (default target/release/corecast, built if missing)
#   Any CORECAST_* variable is passed to the nodes (e.g. CORECAST_AUTH__SECRET).
#
# State (PIDs, logs, Redis data) lives in target/cluster/. Everything binds
# 127.0.0.1 only.
#
# bench: its own Redis and nodes (target/cluster-bench/, Redis on
# BENCH_REDIS_PORT 6393, nodes from BENCH_BASE_PORT 18611, so a cluster
# started by hand is left alone), CORES core loops per node (default 1),
# unpinned, memory durability; then corecast-load holds CONNS (50000)
# members of one room spread over the nodes, from PROCS (4) generator
# processes (each under the 20 000 open-files limit), and one more
# connection publishes RATE (0.5) messages/s for WARMUP (2) + DURATION
# (12) s. Every connection is one user (a token; ANON=1: anonymous, a user
# each, whose joins cost ~N²/2 `joined` frames). It reports connections
# and RSS growth per node, kernel slab growth per connection, and per
# publish the time until the last member had it; it fails unless every
# member got every message in seq order. NODES (3) and SIZE (100 B) can be
# changed; results go to target/cluster-bench/. The run is bounded (the
# generator is killed after 150 s) and everything it started is stopped at
# exit, on failure too. About 40 s with the binaries built.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=target/cluster
REDIS_PORT=${REDIS_PORT:-6390}
BASE_PORT=${BASE_PORT:-8081}
CORES=${CORES:-1}
BIN=${BIN:-target/release/corecast}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
    local n=${1:-2}
    command -v redis-server >/dev/null || { echo "redis-server not found (apt-get install -y redis-server)" >&2; exit 1; }
    if [ ! -x "$BIN" ]; then
        echo "== building $BIN"
        cargo build --release --bin corecast
    fi
    mkdir -p "$DIR/redis"
    if running "$DIR/redis.pid"; then
        echo "redis already running (pid $(cat "$DIR/redis.pid"))"
    else
        local persist=(--save '' --appendonly no)
        [ "${APPENDFSYNC:-}" = always ] && persist=(--save '' --appendonly yes --appendfsync always)
        redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$DIR/redis" "${persist[@]}" \
            --daemonize yes --pidfile "$PWD/$DIR/redis.pid" --logfile "$PWD/$DIR/redis.log"
        for _ in $(seq 50); do running "$DIR/redis.pid" && break; sleep 0.1; done
        echo "redis    127.0.0.1:$REDIS_PORT  (pid $(cat "$DIR/redis.pid"))"
    fi
    for i in $(seq "$n"); do
        local port=$((BASE_PORT + i - 1))
        if running "$DIR/node$i.pid"; then
            echo "node $i already running (pid $(cat "$DIR/node$i.pid"))"
            continue
        fi
        CORECAST_LISTEN="127.0.0.1:$port" \
            CORECAST_CLUSTER__REDIS="redis://127.0.0.1:$REDIS_PORT" \
            CORECAST_CLUSTER__NODE="${CORECAST_CLUSTER__NODE_PREFIX:-node}$i" \
            CORECAST_CORES="$CORES" \
            CORECAST_PIN="${CORECAST_PIN:-false}" \
            CORECAST_HISTORY__DURABILITY="${CORECAST_HISTORY__DURABILITY:-memory}" \
            nohup "$BIN" >"$DIR/node$i.log" 2>&1 &
        echo $! >"$DIR/node$i.pid"
        echo "node $i   ws://127.0.0.1:$port/ws  (pid $!, log $DIR/node$i.log)"
    done
    sleep 0.5
    status
}

status() {
    running "$DIR/redis.pid" && echo "redis: up (pid $(cat "$DIR/redis.pid"))" || echo "redis: down"
    for f in "$DIR"/node*.pid; do
        [ -e "$f" ] || continue
        local i=${f##*/node}; i=${i%.pid}
        local port=$((BASE_PORT + i - 1))
        if running "$f"; then
            local h
            h=$(curl -s -m 2 "http://127.0.0.1:$port/health" || true)
            echo "node $i: up (pid $(cat "$f")) $h"
        else
            echo "node $i: down"
        fi
    done
}

stop_pid() {
    local f=$1
    running "$f" || { rm -f "$f"; return; }
    local pid; pid=$(cat "$f")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$f"
}

stop() {
    for f in "$DIR"/node*.pid; do [ -e "$f" ] && stop_pid "$f"; done
    [ -e "$DIR/redis.pid" ] && stop_pid "$DIR/redis.pid"
    echo "stopped"
}

# Sums user + system clock ticks of PID and all its descendants.
tree_ticks() {
    local pid=$1 sum=0 c
    [ -r "/proc/$pid/stat" ] || { echo 0; return; }
    sum=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    for c in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
        sum=$((sum + $(tree_ticks "$c")))
    done
    echo "$sum"
}

# One line of /proc/stat's "cpu" totals: busy ticks and all ticks.
machine_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }

# "node I PID PORT VmRSS_KiB CONNECTIONS" per node, then "slab KiB",
# "machine BUSY TOTAL", "ticks NODES+REDIS GENERATOR" and "time S".
sample() {
    local i port pid rss conns
    for i in $(seq "$NODES"); do
        port=$((BASE_PORT + i - 1))
        pid=$(cat "$DIR/node$i.pid")
        rss=$(awk '/^VmRSS:/{print $2}' "/proc/$pid/status")
        conns=$(curl -s -m 2 "http://127.0.0.1:$port/health" | python3 -c \
            'import json, sys; print(json.load(sys.stdin)["connections"])' 2>/dev/null || echo -1)
        echo "node $i $pid $port $rss $conns"
    done
    echo "slab $(awk '/^Slab:/{print $2}' /proc/meminfo)"
    echo "machine $(machine_ticks)"
    local servers=0
    for f in "$DIR"/node*.pid "$DIR/redis.pid"; do servers=$((servers + $(tree_ticks "$(cat "$f")"))); done
    echo "ticks $servers $(tree_ticks "${LOAD_PID:-0}")"
    echo "time $(date +%s.%N)"
}

LOAD_PID=""
bench_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$LOAD_PID" ] && kill -0 "$LOAD_PID" 2>/dev/null; then
        # timeout(1) passes the signal on to the generator's process group.
        kill -TERM "$LOAD_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$LOAD_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$LOAD_PID" 2>/dev/null || true
    fi
    stop >/dev/null
    exit "$rc"
}

bench() {
    DIR=target/cluster-bench
    REDIS_PORT=${BENCH_REDIS_PORT:-6393}
    BASE_PORT=${BENCH_BASE_PORT:-18611}
    NODES=${NODES:-3}
    local conns=${CONNS:-50000} procs=${PROCS:-4} rate=${RATE:-0.5}
    local duration=${DURATION:-12} warmup=${WARMUP:-2} size=${SIZE:-100}
    local load=${LOAD_BIN:-target/release/corecast-load}
    command -v redis-server >/dev/null || { echo "redis-server not found (apt-get install -y redis-server)" >&2; exit 1; }
    if [ ! -x "$BIN" ] || [ ! -x "$load" ]; then
        echo "== building"
        cargo build --release --bins
    fi
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
    stop >/dev/null # what a previous run may have left
    rm -rf "$DIR" && mkdir -p "$DIR"
    # The nodes bind with SO_REUSEPORT: a listener already on a port would
    # silently share it.
    local p
    for p in "$REDIS_PORT" $(seq "$BASE_PORT" $((BASE_PORT + NODES - 1))); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "port $p is in use (BENCH_REDIS_PORT, BENCH_BASE_PORT choose others)" >&2
            exit 1
        fi
    done
    # Every connection one user (a token): the server announces `joined`,
    # `left` and presence per user, so 50 000 users joining one room would
    # be ~1.25e9 `joined` frames. ANON=1: anonymous, a user per connection.
    local token=()
    if [ "${ANON:-0}" != 1 ]; then
        CORECAST_AUTH__SECRET=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
        export CORECAST_AUTH__SECRET
        token=(--token "$("$BIN" token --sub bench --rooms 'bench-*' --ttl 3600)")
    fi
    echo "== $NODES nodes ($CORES core each, unpinned) and Redis on :$REDIS_PORT"
    CORECAST_LOG=${CORECAST_LOG:-warn} start "$NODES" >/dev/null
    local i addrs="" pids=""
    for i in $(seq "$NODES"); do
        local port=$((BASE_PORT + i - 1)) up=0
        for _ in $(seq 100); do
            curl -sf -m 1 "http://127.0.0.1:$port/health" >/dev/null && { up=1; break; }
            sleep 0.1
        done
        [ "$up" = 1 ] || { echo "node $i is not healthy; log:" >&2; cat "$DIR/node$i.log" >&2; exit 1; }
        addrs+="${addrs:+,}127.0.0.1:$port"
        pids+="${pids:+,}$(cat "$DIR/node$i.pid")"
    done
    pids+=",$(cat "$DIR/redis.pid")"
    sample >"$DIR/before.txt"
    local args=(fanout --addr "$addrs" --rooms 1 --members "$conns" --publishers 1
        --rate "$rate" --reach --procs "$procs" --size "$size"
        --warmup "$warmup" --duration "$duration" --server-pid "$pids" --json)
    echo "== corecast-load ${args[*]}${token:+ --token <one user>}"
    args+=("${token[@]}")
    timeout -k 5 150 "$load" "${args[@]}" >"$DIR/load.json" 2>"$DIR/load.log" &
    LOAD_PID=$!
    # All connections are open and joined when the generator says so; the
    # memory is sampled then, before the first publish has gone far.
    local ready=0
    for _ in $(seq 1500); do
        grep -q '^\[setup\]' "$DIR/load.log" 2>/dev/null && { ready=1; break; }
        kill -0 "$LOAD_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [ "$ready" = 1 ]; then
        sample >"$DIR/held.txt"
        sed -n 's/^\[setup\] /   setup: /p' "$DIR/load.log"
        # Again half-way through the measured window: still held, publishing.
        local mid_ms
        mid_ms=$(awk -v now="$(date +%s.%N)" -v w="$warmup" -v d="$duration" \
            'BEGIN { printf "%.0f", (now + w + d / 2) * 1000 }')
        while [ "$(date +%s%3N)" -lt "$mid_ms" ] && kill -0 "$LOAD_PID" 2>/dev/null; do
            sleep 0.2
        done
        if kill -0 "$LOAD_PID" 2>/dev/null; then sample >"$DIR/mid.txt"; fi
    fi
    local rc=0
    wait "$LOAD_PID" || rc=$?
    LOAD_PID=""
    sample >"$DIR/after.txt"
    if [ "$rc" != 0 ]; then
        echo "corecast-load exited $rc; the end of its log ($DIR/load.log):" >&2
        tail -n 5 "$DIR/load.log" >&2
    fi
    python3 scripts/cluster_bench_report.py "$DIR" "$conns" "$rate" || rc=1
    return "$rc"
}

case "${1:-}" in
    start) start "${2:-2}" ;;
    status) status ;;
    stop) stop ;;
    kill)
        f="$DIR/node${2:?which node}.pid"
        running "$f" && kill -KILL "$(cat "$f")" && echo "killed node $2 (pid $(cat "$f"))"
        rm -f "$f"
        ;;
    bench) bench ;;
    *) sed -n '2,40p' "$0"; exit 2 ;;
esac
