#!/usr/bin/env bash
# A local cluster for trying several nodes by hand: one redis-server and N
# corecast nodes on loopback ports, all in the background.
#
#   scripts/cluster.sh start [N]     # Redis + N nodes (default 2)
#   scripts/cluster.sh status        # what runs, /health of each node
#   scripts/cluster.sh stop          # stop them all (SIGTERM, then SIGKILL)
#   scripts/cluster.sh kill I        # kill -9 node I (1-based): try failover
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

case "${1:-}" in
    start) start "${2:-2}" ;;
    status) status ;;
    stop) stop ;;
    kill)
        f="$DIR/node${2:?which node}.pid"
        running "$f" && kill -KILL "$(cat "$f")" && echo "killed node $2 (pid $(cat "$f"))"
        rm -f "$f"
        ;;
    *) sed -n '2,20p' "$0"; exit 2 ;;
esac
