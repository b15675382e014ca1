#!/usr/bin/env python3
"""Summarises one `scripts/cluster.sh bench` run.

usage: cluster_bench_report.py DIR CONNS RATE

DIR holds the generator's JSON (load.json, corecast-load --reach) and the
samples the script took (before.txt: nodes up, nothing connected;
held.txt: every connection open and joined; mid.txt: still held, half-way
through the publishing; after.txt: the generator gone). Prints the
figures, writes DIR/result.json, and exits 1 unless every member received
every message in seq order, every publish of the window reached every
member, and at least CONNS connections were held.
"""
import json
import os
import sys

d, want, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
tck = os.sysconf("SC_CLK_TCK")
ncpu = os.cpu_count()


def sample(name):
    path = os.path.join(d, name)
    if not os.path.exists(path):
        return None
    s = {"nodes": []}
    for line in open(path):
        f = line.split()
        if f[0] == "node":
            s["nodes"].append({"node": int(f[1]), "pid": int(f[2]), "port": int(f[3]),
                               "rss_kib": int(f[4] or 0), "conns": int(f[5])})
        elif f[0] == "slab":
            s["slab_kib"] = int(f[1])
        elif f[0] == "machine":
            s["busy"], s["total"] = int(f[1]), int(f[2])
        elif f[0] == "ticks":
            s["server_ticks"], s["gen_ticks"] = int(f[1]), int(f[2])
        elif f[0] == "time":
            s["t"] = float(f[1])
    return s


before, held, mid, after = (sample(n) for n in ("before.txt", "held.txt", "mid.txt", "after.txt"))
try:
    load = json.load(open(os.path.join(d, "load.json")))
except Exception as e:  # the generator died or was killed
    load = {"ok": False, "first_error": f"no result from corecast-load ({e})"}

problems = []
res = {"args": load.get("args"), "ok": load.get("ok", False)}


def memory(at):
    """Per node: connections, RSS growth and per connection; slab per connection."""
    if not at:
        return None
    nodes = []
    for b, h in zip(before["nodes"], at["nodes"]):
        grow = h["rss_kib"] - b["rss_kib"]
        nodes.append({"node": h["node"], "conns": h["conns"], "rss_before_kib": b["rss_kib"],
                      "rss_kib": h["rss_kib"],
                      "rss_per_conn_kib": grow / h["conns"] if h["conns"] > 0 else None})
    total = sum(n["conns"] for n in nodes)
    slab = at["slab_kib"] - before["slab_kib"]
    return {"nodes": nodes, "conns": total, "slab_growth_kib": slab,
            "slab_per_conn_kib": slab / total if total > 0 else None}


res["held"] = memory(held)
res["mid"] = memory(mid)
if not held:
    problems.append("the generator never finished its setup")
elif res["held"]["conns"] < want:
    problems.append(f"only {res['held']['conns']} connections held (want {want})")


def cores(a, b):
    dt = b["t"] - a["t"]
    c = {"seconds": dt,
         "machine": (b["busy"] - a["busy"]) / max(b["total"] - a["total"], 1) * ncpu,
         "nodes_redis": (b["server_ticks"] - a["server_ticks"]) / tck / dt,
         "generator": (b["gen_ticks"] - a["gen_ticks"]) / tck / dt}
    c["other"] = max(c["machine"] - c["nodes_redis"] - c["generator"], 0.0)
    return c


# Setup: from the generator's start (the "before" sample, just ahead of it)
# to every connection open and joined.
if held:
    res["setup"] = cores(before, held)
win = {}
for k, src in (("machine", "machine_cpu"), ("nodes_redis", "server_cpu"), ("generator", "generator_cpu")):
    v = load.get(src) or {}
    win[k] = v.get("cores_busy")
win["other"] = (load.get("machine_cpu") or {}).get("other_cores_busy")
# CPU per delivery in the window: the nodes (and Redis, next to nothing
# here: one script call and one PUBLISH per message) and the generator.
ops = load.get("ops") or 0
sc, gc = load.get("server_cpu") or {}, load.get("generator_cpu") or {}
win["nodes_us_per_delivery"] = ({"user": sc["user_s"] * 1e6 / ops, "sys": sc["sys_s"] * 1e6 / ops}
                                if sc and ops else None)
win["generator_us_per_delivery"] = ({"user": gc["user_s"] * 1e6 / ops, "sys": gc["sys_s"] * 1e6 / ops}
                                    if gc and ops else None)
res["window_cores"] = win

reach = load.get("reach_us") or {}
res["reach_us"] = reach
res["delivery_latency_us"] = load.get("latency_us")
for k in ("missing", "out_of_order", "errors", "first_error", "published", "open_after_setup",
          "unacked", "drain_timeouts"):
    res[k] = load.get(k)
if not load.get("ok"):
    problems.append(f"corecast-load reported a failure (missing {load.get('missing')}, out of order "
                    f"{load.get('out_of_order')}, errors {load.get('errors')}, first error "
                    f"{load.get('first_error')!r}, incomplete publishes {reach.get('incomplete')})")
if not reach.get("publishes"):
    problems.append("no publish inside the window")
spacing_us = 1e6 / rate
res["overlap"] = bool(reach.get("max") and reach["max"] > spacing_us)

json.dump(res, open(os.path.join(d, "result.json"), "w"), indent=1)


def f(v, digits=2):
    return "?" if v is None else f"{v:,.{digits}f}"


print("== result")
if res["held"]:
    h = res["held"]
    for n in h["nodes"]:
        m = next((x for x in (res["mid"] or {}).get("nodes", []) if x["node"] == n["node"]), None)
        print(f"   node {n['node']}: {n['conns']:,} connections, RSS {n['rss_before_kib']:,} -> "
              f"{n['rss_kib']:,} KiB = {f(n['rss_per_conn_kib'])} KiB/conn"
              + (f" ({f(m['rss_per_conn_kib'])} while publishing)" if m else ""))
    print(f"   total: {h['conns']:,} connections; kernel slab +{h['slab_growth_kib']:,} KiB = "
          f"{f(h['slab_per_conn_kib'])} KiB/conn (client and server socket both on this machine)")
if res.get("setup"):
    s = res["setup"]
    print(f"   setup: {s['seconds']:.1f} s; cores busy: machine {f(s['machine'])} of {ncpu}, "
          f"nodes + Redis {f(s['nodes_redis'])}, generator {f(s['generator'])}, other processes {f(s['other'])}")
print(f"   window: cores busy: machine {f(win['machine'])}, nodes + Redis {f(win['nodes_redis'])}, "
      f"generator {f(win['generator'])}, other processes {f(win['other'])}")
for who, k in (("nodes + Redis", "nodes_us_per_delivery"), ("generator", "generator_us_per_delivery")):
    if win[k]:
        print(f"   {who}: {f(win[k]['user'])} us user + {f(win[k]['sys'])} us sys per delivery")
print(f"   publish -> last member: p50 {f(reach.get('p50'), 0)} us, p90 {f(reach.get('p90'), 0)} us, "
      f"max {f(reach.get('max'), 0)} us over {reach.get('publishes')} publishes "
      f"({reach.get('incomplete')} incomplete), one every {spacing_us / 1000:.0f} ms"
      + ("  OVERLAPPING: raise the spacing (RATE)" if res["overlap"] else ""))
lat = load.get("latency_us") or {}
print(f"   publish -> each delivery: p50 {f(lat.get('p50'), 0)} us, p99 {f(lat.get('p99'), 0)} us, "
      f"max {f(lat.get('max'), 0)} us ({lat.get('count')} deliveries)")
print(f"   order: missing {load.get('missing')}, out of order {load.get('out_of_order')}, "
      f"errors {load.get('errors')}")
for p in problems:
    print(f"FAILED: {p}")
print(f"   details: {d}/result.json, {d}/load.json")
sys.exit(1 if problems else 0)
