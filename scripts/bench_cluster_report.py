#!/usr/bin/env python3
"""docs/BENCHMARKS-cluster.md from the raw runs of scripts/bench_cluster.sh.

usage: bench_cluster_report.py RAW_DIR OUT.md "SETTINGS"
"""
import glob, json, os, platform, statistics, subprocess, sys
raw, out, settings = sys.argv[1:]
def runs(case):
    return [json.load(open(p)) for p in sorted(glob.glob(f"{raw}/{case}.*.json"))]
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def fmt(x, d=0):
    return "—" if x is None else (f"{x:,.{d}f}" if d else f"{x:,.0f}")
cases = [
    ("publish-flat", "publishes with history, flat out: 100 rooms × 100 publishers (members of their rooms) over 2 nodes"),
    ("publish-flat-keys", "the same, every publish with an idempotency key (as the JavaScript client sends)"),
    ("cross-10x10-1000", "cross-node, 10 rooms × 10 members on node 2, publishers on node 1, 1 000 publishes/s"),
    ("cross-10x10-5000", "the same at 5 000 publishes/s"),
    ("cross-10x10-10000", "the same at 10 000 publishes/s"),
    ("cross-10x1-10000", "cross-node, 10 rooms × 1 member on node 2, 10 000 publishes/s"),
    ("fanout-1x1000", "1 room × 1 000 members split over 2 nodes, 4 publishers, flat out"),
]
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
redis = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2]
L = []
w = L.append
w("## Several nodes through Redis")
w("")
w(f"Written by `scripts/bench_cluster.sh` ({settings}). Machine: {os.cpu_count()} CPUs ({cpu}), "
  f"Redis {redis.replace('v=', '')} without persistence; Redis, two nodes and the load generator share "
  "the CPUs (nothing pinned). Medians of the runs; CPU is nodes + Redis together; \"Redis busy\" is its "
  "share of one CPU over the run.")
w("")
w("| case | publishes/s | deliveries/s | publish→delivery p50 / p99 µs | CPU µs per delivery (user+sys) | Redis busy | missing / out of order |")
w("|---|---|---|---|---|---|---|")
for case, desc in cases:
    r = runs(case)
    if not r:
        continue
    cpu_u = med([(x.get("server_cpu") or {}).get("user_us_per_op") for x in r])
    cpu_s = med([(x.get("server_cpu") or {}).get("sys_us_per_op") for x in r])
    w(f"| {desc} | {fmt(med([x['published_per_s'] for x in r]))} | {fmt(med([x['ops_per_s'] for x in r]))} | "
      f"{fmt(med([(x.get('latency_us') or {}).get('p50') for x in r]))} / {fmt(med([(x.get('latency_us') or {}).get('p99') for x in r]))} | "
      f"{fmt(cpu_u, 2)} + {fmt(cpu_s, 2)} | {fmt(med([x.get('redis_busy') for x in r]), 2)} | "
      f"{sum(x['missing'] for x in r)} / {sum(x['out_of_order'] for x in r)} |")
w("")
notes = "docs/bench-cluster-notes.md"
if os.path.exists(notes):
    w(open(notes).read().rstrip())
    w("")
open(out, "w").write("\n".join(L))
