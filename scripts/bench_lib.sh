# Shared by scripts/bench.sh and scripts/bench_tls.sh (sourced, not run):
# the lifecycle of the one server process a benchmark run talks to.
# SPID holds its pid; PORT is where it listens.

SPID=""

# stop_server: SIGTERM (a drain), SIGKILL after 10 s.
stop_server() {
    if [ -n "$SPID" ] && kill -0 "$SPID" 2>/dev/null; then
        kill -TERM "$SPID" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SPID" 2>/dev/null || true
    fi
    [ -n "$SPID" ] && wait "$SPID" 2>/dev/null || true
    SPID=""
}
trap stop_server EXIT

# await_server WHAT LOG: the server just started in the background ($!)
# becomes SPID once it accepts on PORT; otherwise (it exited, or 5 s
# passed) its log and exit 1 — or, with AWAIT_SOFT=1, return 1 quietly.
await_server() {
    SPID=$!
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
        kill -0 "$SPID" 2>/dev/null || break
        sleep 0.05
    done
    [ "${AWAIT_SOFT:-0}" = 1 ] && return 1
    echo "$1 did not start; log:" >&2; cat "$2" >&2; exit 1
}
