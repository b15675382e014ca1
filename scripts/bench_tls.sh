#!/usr/bin/env bash
# Plain ws against wss (TLS on the listener), side by side: the same
# server build and configuration, with and without [tls], runs alternating
# (plain, TLS, plain, TLS, ...). Prints a summary table (medians) and leaves
# the raw JSON in $RAW; docs/BENCHMARKS.md's "TLS" section is written from it
# by hand.
#
#   scripts/bench_tls.sh                  # every case, 3 repetitions (~8 min)
#   REPS=2 CASES="connect" scripts/bench_tls.sh
#
# Environment: REPS (3), DURATION (8), WARMUP (2), SERVER_CPUS (0),
# GEN_CPUS (1), SERVER_CORES (1), GEN_THREADS (1), PORT (18410),
# RAW (target/bench-tls), CASES (subset of: connect connect-8 fanout-1x1000
# fanout-1x100 idle-5000), NICE (0: the niceness of server and generator;
# on a machine shared with other work, e.g. NICE=-10 as root, so they get
# their CPUs; what else ran is reported per run as "other busy").
#
# The certificate is a P-256 ECDSA leaf signed by a throwaway CA (openssl),
# what rcgen and most ACME setups give. The generator verifies nothing
# (`--tls`); `connect` is run plain and with a full TLS handshake per
# connection, `connect-8` also resuming sessions (`--tls-resume`, tickets).
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
SERVER_CPUS=${SERVER_CPUS:-0}
GEN_CPUS=${GEN_CPUS:-1}
SERVER_CORES=${SERVER_CORES:-1}
GEN_THREADS=${GEN_THREADS:-1}
PORT=${PORT:-18410}
NICE=${NICE:-0}
RAW=${RAW:-target/bench-tls}

echo "== building (release)"
cargo build --release --bins
LOAD=target/release/corecast-load
rm -rf "$RAW" && mkdir -p "$RAW/pki"

echo "== certificates"
(
    cd "$RAW/pki"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout ca.key -out ca.pem -days 7 -subj /CN=bench-ca \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout server.key -out server.csr -subj /CN=localhost 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >ext.cnf
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
        -out server.pem -days 7 -extfile ext.cnf 2>/dev/null
)

# Server lifecycle (stop_server, await_server).
source scripts/bench_lib.sh

# start_server plain|tls LOG
start_server() {
    local tls=()
    if [ "$1" != plain ]; then
        tls=(CORECAST_TLS__CERT="$RAW/pki/server.pem" CORECAST_TLS__KEY="$RAW/pki/server.key")
    fi
    env "${tls[@]}" CORECAST_HISTORY__DURABILITY=memory \
        CORECAST_LISTEN="127.0.0.1:$PORT" CORECAST_ECHO=true CORECAST_LOG=warn \
        CORECAST_LIMITS__RATE_PER_SEC=1000000000 CORECAST_LIMITS__RATE_BURST=1000000000 \
        nice -n "$NICE" taskset -c "$SERVER_CPUS" target/release/corecast --cores "$SERVER_CORES" 2>"$2" &
    await_server server "$2"
}

# run CASE MODE REP LOAD_ARGS...   (MODE: plain, tls or tls-resume)
run() {
    local case=$1 mode=$2 rep=$3; shift 3
    local out="$RAW/$case.$mode.$rep.json" flags=()
    case "$mode" in
        tls) flags=(--tls) ;;
        tls-resume) flags=(--tls --tls-resume) ;;
    esac
    start_server "$mode" "$RAW/server-$case.$mode.$rep.log"
    nice -n "$NICE" taskset -c "$GEN_CPUS" "$LOAD" "$@" "${flags[@]}" --addr "127.0.0.1:$PORT" \
        --threads "$GEN_THREADS" --server-pid "$SPID" --json --quiet >"$out" || true
    stop_server
    python3 - "$out" "$case" "$mode" "$rep" <<'EOF'
import json, sys
p, case, mode, rep = sys.argv[1:]
try:
    r = json.load(open(p))
except Exception as e:
    print(f"   {case:<14} {mode:<10} #{rep}: no result ({e})"); sys.exit(0)
cpu = r.get("server_cpu") or {}
gen = r.get("generator_cpu") or {}
mach = r.get("machine_cpu") or {}
mem = r.get("memory") or {}
extra = f"  rss/conn {mem['rss_per_conn_kib']:.2f} KiB" if mem else ""
hs = r.get("tls_handshakes") or {}
extra += f"  tls full {hs.get('full')} resumed {hs.get('resumed')}" if hs.get("full") or hs.get("resumed") else ""
print(f"   {case:<14} {mode:<10} #{rep}: {r['ops_per_s']:>11.0f} ops/s  server {cpu.get('total_us_per_op', 0):.3f} us/op"
      f" busy {cpu.get('cores_busy', 0):.2f}  gen busy {gen.get('cores_busy', 0):.2f}"
      f"  other {mach.get('other_cores_busy', 0):.2f}  missing {r['missing']}  errors {r['errors']}{extra}")
EOF
}

# case NAME "MODES" LOAD_ARGS... : modes alternate within each repetition
case_ab() {
    local name=$1 modes=$2; shift 2
    if [ -n "${CASES:-}" ] && [[ " $CASES " != *" $name "* ]]; then return; fi
    echo "== $name: corecast-load $* (${modes// / \/ })"
    echo "$*" >"$RAW/$name.args"
    for rep in $(seq "$REPS"); do
        for mode in $modes; do
            run "$name" "$mode" "$rep" "$@"
        done
    done
}

echo "== other load before the runs: $(cut -d' ' -f1-3 /proc/loadavg); fuzzers: $(pgrep -fc 'fuzz' || true)"
D=(--duration "$DURATION" --warmup "$WARMUP")
case_ab connect "plain tls" connect --conns 50 "${D[@]}"
# Resumption: rustls's client cache keeps 8 tickets per server name, so
# with more than 8 dialers some handshakes are full; 8 resume them all.
case_ab connect-8 "plain tls tls-resume" connect --conns 8 "${D[@]}"
case_ab fanout-1x1000 "plain tls" fanout --rooms 1 --members 1000 --publishers 4 --inflight 8 --size 100 "${D[@]}"
case_ab fanout-1x100 "plain tls" fanout --rooms 1 --members 100 --publishers 4 --inflight 8 --size 100 "${D[@]}"
case_ab idle-5000 "plain tls" idle --conns 5000 --duration 5 --warmup 0

echo "== summary (medians over $REPS runs; NICE=$NICE REPS=$REPS DURATION=$DURATION WARMUP=$WARMUP SERVER_CPUS=$SERVER_CPUS GEN_CPUS=$GEN_CPUS SERVER_CORES=$SERVER_CORES GEN_THREADS=$GEN_THREADS)"
python3 - "$RAW" <<'EOF' | tee "$RAW/summary.md"
import glob, json, os, statistics, sys
raw = sys.argv[1]
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def f(v, nd=0):
    return "–" if v is None else f"{v:,.{nd}f}"
print("| case | mode | runs | ops/s | server µs/op (user+sys) | server busy | generator busy | other busy | RSS KiB/conn | missing / errors |")
print("|---|---|---|---|---|---|---|---|---|---|")
base = {}
for args in sorted(glob.glob(f"{raw}/*.args")):
    case = os.path.basename(args)[:-5]
    for mode in ("plain", "tls", "tls-resume"):
        runs = [json.load(open(p)) for p in sorted(glob.glob(f"{raw}/{case}.{mode}.*.json")) if os.path.getsize(p)]
        if not runs:
            continue
        cpu = lambda r, k: (r.get("server_cpu") or {}).get(k)
        row = {
            "ops": med([r["ops_per_s"] for r in runs]),
            "user": med([cpu(r, "user_us_per_op") for r in runs]),
            "sys": med([cpu(r, "sys_us_per_op") for r in runs]),
            "tot": med([cpu(r, "total_us_per_op") for r in runs]),
            "busy": med([cpu(r, "cores_busy") for r in runs]),
            "gen": med([(r.get("generator_cpu") or {}).get("cores_busy") for r in runs]),
            "other": med([(r.get("machine_cpu") or {}).get("other_cores_busy") for r in runs]),
            "rss": med([(r.get("memory") or {}).get("rss_per_conn_kib") for r in runs]),
        }
        bad = f"{sum(r['missing'] for r in runs)} / {sum(r['errors'] for r in runs)}"
        print(f"| {case} | {mode} | {len(runs)} | {f(row['ops'])} | {f(row['user'], 3)}+{f(row['sys'], 3)} = {f(row['tot'], 3)} | "
              f"{f(row['busy'], 2)} | {f(row['gen'], 2)} | {f(row['other'], 2)} | {f(row['rss'], 2)} | {bad} |")
        base.setdefault(case, {})[mode] = row
print()
for case, modes in base.items():
    p = modes.get("plain")
    for mode, row in modes.items():
        if mode == "plain" or not p:
            continue
        r = lambda k: "–" if not p[k] or row[k] is None else f"×{row[k] / p[k]:.2f}"
        print(f"- {case}, {mode} / plain: throughput {r('ops')}, server CPU per op {r('tot')}, RSS per connection {r('rss')}")
EOF
