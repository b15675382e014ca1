#!/usr/bin/env python3
"""Turns the JSON results of scripts/bench.sh into docs/BENCHMARKS.md.

usage: bench_report.py RAW_DIR OUT.md "SERVERS" "SETTINGS"

Medians over repetitions per (case, server); ratios against corecast; the
issue's targets checked; hand-written notes from docs/bench-notes.md
appended when present (so analysis survives regeneration), and the "## TLS"
section of the previous OUT.md (scripts/bench_tls.sh's figures) kept.

The report is made of sections, each between `<!-- section:NAME -->` and
`<!-- /section:NAME -->`. A section is rewritten only when RAW_DIR holds
its cases' results; otherwise the previous OUT.md's text of it is kept
(a file without markers is split at its `## ` headings), so a partial run
(`CASES=...`) leaves the rest alone. The targets table and the raw runs
are merged row by row the same way. A load-curve workload's section (and
its plot) is rebuilt from the rates of the run that has any of them.

Plots (matplotlib; skipped with a warning when it is missing) go next to
OUT.md: bench-curve-fanout.png, bench-curve-echo.png, bench-dial.png.
"""
import datetime
import glob
import json
import os
import platform
import re
import statistics
import subprocess
import sys

raw, out, servers, settings = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4]
out_dir = os.path.dirname(out) or "."


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except Exception:
        return "?"


def load(case, server):
    runs = []
    for p in sorted(glob.glob(f"{raw}/{case}.{server}.*.json")):
        try:
            runs.append(json.load(open(p)))
        except Exception:
            pass
    return runs


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def metric(runs, f):
    out = []
    for r in runs:
        try:
            out.append(f(r))
        except (KeyError, TypeError):
            pass
    return med(out)


def summary(case, server):
    runs = load(case, server)
    if not runs:
        return None
    cpu = lambda k: metric(runs, lambda r: r["server_cpu"][k])
    return {
        "n": len(runs),
        "ops": metric(runs, lambda r: r["ops_per_s"]),
        "pub": metric(runs, lambda r: r["published_per_s"]),
        "p50": metric(runs, lambda r: r["latency_us"]["p50"]),
        "p99": metric(runs, lambda r: r["latency_us"]["p99"]),
        "p999": metric(runs, lambda r: r["latency_us"]["p999"]),
        "ack50": metric(runs, lambda r: r["ack_latency_us"]["p50"]),
        "ack99": metric(runs, lambda r: r["ack_latency_us"]["p99"]),
        "ack999": metric(runs, lambda r: r["ack_latency_us"]["p999"]),
        "max": metric(runs, lambda r: r["latency_us"]["max"]),
        "user": cpu("user_us_per_op"),
        "sys": cpu("sys_us_per_op"),
        "total": cpu("total_us_per_op"),
        "busy": cpu("cores_busy"),
        "gen_busy": metric(runs, lambda r: r["generator_cpu"]["cores_busy"]),
        "writes": metric(runs, lambda r: r["write_syscalls"]["per_op"]),
        "waits": metric(runs, lambda r: r["epoll_waits"]["per_op"]),
        "lag99": metric(runs, lambda r: r["send_lag_us"]["p99"]),
        "other": metric(runs, lambda r: r["machine_cpu"]["other_cores_busy"]),
        "rss": metric(runs, lambda r: r["memory"]["rss_per_conn_kib"]),
        "slab": metric(runs, lambda r: r["memory"]["slab_per_conn_kib"]),
        "conns": metric(runs, lambda r: r["open_after_setup"]),
        "missing": sum(r.get("missing", 0) for r in runs),
        "ooo": sum(r.get("out_of_order", 0) for r in runs),
        "errors": sum(r.get("errors", 0) for r in runs),
        "perf_errors": [r["perf_error"] for r in runs if r.get("perf_error")],
        "runs": runs,
    }


def fmt(v, digits=0):
    if v is None:
        return "–"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def ratio(a, b):
    if a is None or b in (None, 0):
        return None
    return a / b


def args_line(case):
    p = f"{raw}/{case}.args"
    return f"{case:<20} corecast-load {open(p).read().strip()}" if os.path.exists(p) else None


CASES = [
    ("echo-20", "echo, 100 connections × 20 B, 1 in flight each", "echoes/s"),
    ("echo-512", "echo, 100 connections × 512 B, 1 in flight each", "echoes/s"),
    ("fanout-1x1000", "fan-out, 1 room × 1000 members, 4 publishers flat out (8 in flight each), 100 B", "deliveries/s"),
    ("fanout-100x50", "fan-out, 100 rooms × 50 members, 100 publishers flat out (2 in flight each), 100 B", "deliveries/s"),
    ("fanout-1x1000-half", "fan-out, 1 room × 1000 members at half the saturated publish rate", "deliveries/s"),
    ("connect", "connect, 50 concurrent dialers (open + welcome + close)", "handshakes/s"),
    ("idle-15000", "idle, 15 000 connections (welcome + one ping each), held 15 s", "—"),
]

# Load curves (issue 12): (section, title, unit, [(case, offered per s or
# None for flat out)]). Fan-out offers R deliveries/s as R/1000 publishes/s.
CURVES = [
    ("curve-fanout", "fan-out, 1 room × 1000 members, 4 publishers, 100 B", "deliveries", "delivery",
     [("curve-fanout-50k", 50e3), ("curve-fanout-100k", 100e3), ("curve-fanout-300k", 300e3),
      ("curve-fanout-1m", 1e6), ("curve-fanout-3m", 3e6), ("curve-fanout-max", None)]),
    ("curve-echo", "echo, 100 connections × 20 B", "echoes", "echo",
     [("curve-echo-20k", 20e3), ("curve-echo-50k", 50e3), ("curve-echo-max", None)]),
]
DIAL_CASE = "dial-write-delay"
DIAL_DELAYS = [0, 2, 5, 10, 20, 50]
CURVE_CASES = [c for _, _, _, _, cs in CURVES for c, _ in cs]


def others_line(rs):
    """What else ran on the machine during the runs `rs` (summaries)."""
    o = [r["other"] for r in rs if r and r["other"] is not None]
    if not o:
        return None
    return (f"Other processes (neither the server nor the generator) kept {fmt(min(o), 2)}–"
            f"{fmt(max(o), 2)} of the machine's {sh('nproc')} CPUs busy during these runs "
            "(median per case and server); more than a few tenths means the figures are "
            "from a shared machine and noisy.")


def rate_label(offered):
    if offered is None:
        return "flat out"
    if offered >= 1e6:
        return f"{offered / 1e6:g}M/s"
    return f"{offered / 1e3:g}k/s"


# ---------------------------------------------------------------- sections

MARK = re.compile(r"^<!-- section:(\S+) -->$")


def old_sections(text):
    """NAME -> text of each section of the previous report."""
    lines = text.splitlines()
    found, name, body = {}, None, []
    if any(MARK.match(l) for l in lines):
        for l in lines:
            m = MARK.match(l)
            if m:
                name, body = m.group(1), []
            elif name and l == f"<!-- /section:{name} -->":
                found[name] = "\n".join(body).strip("\n")
                name = None
            elif name:
                body.append(l)
        return found
    # A report from before the markers: split at the "## " headings.
    chunks = [("", [])]
    for l in lines:
        if l.startswith("## "):
            chunks.append((l, []))
        chunks[-1][1].append(l)
    for head, body in chunks:
        key = None
        if head == "":
            key = "header"
        elif head == "## Machine and setup":
            key = "setup"
        elif head.startswith("## History modes: publish"):
            key = "modes"
        elif head == "## Targets":
            key = "targets"
        elif head == "## TLS":
            key = "tls"
        elif head == "## Raw runs":
            key = "raw"
        else:
            for case, _, _ in CASES:
                if head.startswith(f"## {case}:"):
                    key = f"case:{case}"
        if key:
            found[key] = "\n".join(body).strip("\n")
    return found


previous = open(out).read() if os.path.exists(out) else ""
old = old_sections(previous)
new = {}  # NAME -> regenerated text
today = datetime.date.today().isoformat()
commit = sh("git rev-parse --short HEAD") or "?"


def table_rows(text):
    """The `| ... |` data rows of a section's text (header rows skipped)."""
    rows = []
    for l in (text or "").splitlines():
        if l.startswith("| ") and not l.startswith("|---"):
            rows.append(l)
    return rows[1:] if rows else []


def first_cell(row):
    return row.split("|")[1].strip()


# ------------------------------------------------------------ main cases

results = {c: {s: summary(c, s) for s in servers} for c, _, _ in CASES}
main_ran = [c for c, _, _ in CASES if any(results[c].values())]

if main_ran:
    new["header"] = "\n".join([
        "# Benchmarks",
        "",
        f"Generated by `scripts/bench.sh` on {today} at commit {commit}; "
        "re-run it to refresh. Numbers are medians over the repetitions; every run "
        "starts a fresh server.",
    ])
    lines = []
    w = lines.append
    w("## Machine and setup")
    w("")
    cpu_model = sh("lscpu | sed -n 's/^Model name:[ ]*//p'") or platform.processor()
    mem_gib = sh("free -g | awk '/Mem:/ {print $2}'")
    w(f"- CPU: {cpu_model}, {sh('nproc')} CPUs; memory {mem_gib} GiB")
    w(f"- Kernel: {sh('uname -r')}; {sh('rustc -V')}")
    w(f"- Settings: `{settings}`")
    w("- CPU sharing: the server is pinned with `taskset` to `SERVER_CPUS` and runs "
      "`SERVER_CORES` core loops (corecast) or worker threads (tokio); the load "
      "generator is pinned to `GEN_CPUS`. Every server gets exactly the same CPUs, "
      "limits off (corecast's rate limit raised to 10⁹/s; the variant has none).")
    w("- Server CPU per operation = (utime + stime of the server process over the "
      "measured window, from `/proc/PID/stat`) / operations in the window. It is the "
      "figure that carries over to bigger machines; throughput on 2 CPUs is often "
      "bounded by the generator.")
    w(f"- Servers: {', '.join(servers)}. `tokio` is `variants/tokio` (tokio multi-thread "
      "runtime + tokio-tungstenite, broadcast channel per room, batched flushes).")
    w("")
    w("Commands (each run adds `--addr --threads --server-pid --json`):")
    w("")
    w("```")
    # Commands of cases that did not run this time stay from the last report.
    kept = {}
    m = re.search(r"```\n(.*?)```", old.get("setup", ""), re.S)
    for l in (m.group(1).splitlines() if m else []):
        if l.split():
            kept[l.split()[0]] = l
    for case, _, _ in CASES:
        line = args_line(case) if case in main_ran else None
        line = line or kept.get(case)
        if line:
            w(line)
    w("```")
    new["setup"] = "\n".join(lines)

for case, title, unit in CASES:
    if case not in main_ran:
        continue
    lines = []
    w = lines.append
    w(f"## {case}: {title}")
    w("")
    if case == "idle-15000":
        w("| server | connections | server RSS per connection | kernel slab per connection (both ends) | errors |")
        w("|---|---|---|---|---|")
        for s in servers:
            r = results[case][s]
            if r:
                w(f"| {s} | {fmt(r['conns'])} | {fmt(r['rss'], 2)} KiB | {fmt(r['slab'], 2)} KiB | {r['errors']} |")
    else:
        extra = " | published/s | missing | out of order" if case.startswith("fanout") else ""
        w(f"| server | {unit}{extra} | p50 µs | p99 µs | p99.9 µs | server user µs/op | server sys µs/op | server total µs/op | server cores busy |")
        w("|---|---" + ("|---|---|---" if extra else "") + "|---|---|---|---|---|---|---|")
        for s in servers:
            r = results[case][s]
            if not r:
                continue
            ex = f" | {fmt(r['pub'])} | {r['missing']} | {r['ooo']}" if extra else ""
            w(f"| {s} | {fmt(r['ops'])}{ex} | {fmt(r['p50'])} | {fmt(r['p99'])} | {fmt(r['p999'])} | "
              f"{fmt(r['user'], 3)} | {fmt(r['sys'], 3)} | {fmt(r['total'], 3)} | {fmt(r['busy'], 2)} |")
    base = results[case].get("corecast")
    for s in servers:
        if s == "corecast" or not base or not results[case][s]:
            continue
        o = results[case][s]
        if case == "idle-15000":
            rr = ratio(base["rss"], o["rss"])
            w(f"\ncorecast / {s}: memory per connection ×{fmt(rr, 2)}")
        else:
            w(f"\ncorecast / {s}: throughput ×{fmt(ratio(base['ops'], o['ops']), 2)}, "
              f"user CPU per op ×{fmt(ratio(base['user'], o['user']), 2)}, "
              f"total CPU per op ×{fmt(ratio(base['total'], o['total']), 2)}, "
              f"p99 ×{fmt(ratio(base['p99'], o['p99']), 2)}")
    new[f"case:{case}"] = "\n".join(lines)

# ------------------------------------------------------------ load curves

plt = None


def pyplot():
    """matplotlib.pyplot, or None (with a warning once) when missing."""
    global plt
    if plt is None:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as p
            plt = p
        except Exception as e:
            print(f"bench_report.py: warning: no plots ({e}); pip install matplotlib",
                  file=sys.stderr)
            plt = False
    return plt or None


curve_results = {}
for name, title, unit, one, cases in CURVES:
    curve_results[name] = {c: {s: summary(c, s) for s in servers} for c, _ in cases}


def curve_servers(name):
    """Servers with any run in the workload, in SERVERS order."""
    res = curve_results[name]
    return [s for s in servers if any(res[c].get(s) for c in res)]


def plot_curve(name, title, unit, one, cases, path):
    p = pyplot()
    if not p:
        return False
    res = curve_results[name]
    fig, axes = p.subplots(1, 3, figsize=(15, 4.5))
    for i, s in enumerate(curve_servers(name)):
        color = f"C{i}"
        xs, user, total, p99, writes = [], [], [], [], []
        flat = None
        for case, offered in cases:
            r = res[case].get(s)
            if not r:
                continue
            if offered is None:
                flat = r
                continue
            xs.append(offered)
            user.append(r["user"])
            total.append(r["total"])
            p99.append(r["p99"] / 1000 if r["p99"] else None)
            writes.append(r["writes"])
        ax_cpu, ax_p99, ax_w = axes
        ax_cpu.plot(xs, user, "o-", color=color, label=f"{s} user")
        ax_cpu.plot(xs, total, "s--", color=color, label=f"{s} user+sys")
        ax_p99.plot(xs, p99, "o-", color=color, label=s)
        ax_w.plot(xs, writes, "o-", color=color, label=s)
        if flat and flat["ops"]:
            # Flat out has no offered rate: drawn at the rate it reached.
            x = flat["ops"]
            ax_cpu.plot([x], [flat["user"]], "*", color=color, markersize=12)
            ax_cpu.plot([x], [flat["total"]], "*", color=color, markersize=12, fillstyle="none")
            if flat["p99"]:
                ax_p99.plot([x], [flat["p99"] / 1000], "*", color=color, markersize=12)
            if flat["writes"] is not None:
                ax_w.plot([x], [flat["writes"]], "*", color=color, markersize=12)
    ax_cpu, ax_p99, ax_w = axes
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel(f"offered {unit}/s (★ flat out, at the rate reached)")
        ax.grid(True, which="both", alpha=0.3)
    # CPU per operation spans two orders of magnitude over the curve.
    ax_cpu.set_yscale("log")
    ax_cpu.set_ylabel(f"server CPU µs per {one}")
    ax_cpu.set_title(f"server CPU per {one}")
    ax_cpu.legend(fontsize=7)
    ax_p99.set_yscale("log")
    ax_p99.set_ylabel("p99 latency, ms")
    ax_p99.set_title("p99 latency")
    ax_p99.legend(fontsize=8)
    ax_w.set_yscale("log")
    ax_w.set_ylabel(f"write syscalls per {one}")
    ax_w.set_title(f"server write syscalls per {one}")
    ax_w.legend(fontsize=8)
    fig.suptitle(f"{title} — {today}, {commit}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    p.close(fig)
    return True


for name, title, unit, one, cases in CURVES:
    res = curve_results[name]
    if not any(r for c in res.values() for r in c.values()):
        continue
    srv = curve_servers(name)
    lines = []
    w = lines.append
    w(f"## Load curve: {title}")
    w("")
    w(f"Run on {today} at commit {commit} (`{settings}`), servers: {', '.join(srv)}. "
      f"Open loop: the generator sends at the offered rate (`--rate`, evenly spread over "
      f"the senders) whatever the server answers, and latency is measured from each "
      f"message's actual send time; \"flat out\" is closed loop (fan-out 8 publishes in "
      f"flight per publisher, echo 1 per connection). Write syscalls are the server's "
      f"`writev` + `write` + `sendto` + `sendmsg` over the measured window "
      f"(`corecast-load --perf-syscalls`: `perf stat` on the syscall tracepoints, attached "
      f"to the server, enabled and disabled at the window's ends); epoll waits the same for "
      f"`epoll_wait` / `epoll_pwait` / `epoll_pwait2`, about one per loop iteration that slept.")
    w("")
    w("```")
    for case, _ in cases:
        l = args_line(case)
        if l:
            w(l)
    w("```")
    w("")
    w(f"| offered {unit}/s | server | {unit}/s | server cores busy | server user µs/op | "
      f"server sys µs/op | p50 µs | p99 µs | p99.9 µs | write syscalls/op | epoll waits/op | generator cores busy |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for case, offered in cases:
        for s in srv:
            r = res[case].get(s)
            if r:
                w(f"| {rate_label(offered)} | {s} | {fmt(r['ops'])} | {fmt(r['busy'], 2)} | "
                  f"{fmt(r['user'], 3)} | {fmt(r['sys'], 3)} | {fmt(r['p50'])} | {fmt(r['p99'])} | "
                  f"{fmt(r['p999'])} | {fmt(r['writes'], 4)} | {fmt(r['waits'], 4)} | {fmt(r['gen_busy'], 2)} |")
    w("")
    others = [s for s in srv if s != "corecast" and s in ("tokio", "uws")]
    if "corecast" in srv and others:
        w("Ratios, corecast / other at the same offered rate (below 1: corecast spends less):")
        w("")
        head = "| offered | " + " | ".join(
            f"user CPU/op ÷ {s} | write syscalls/op ÷ {s}" for s in others) + " |"
        w(head)
        w("|---|" + "---|---|" * len(others))
        for case, offered in cases:
            c = res[case].get("corecast")
            if not c:
                continue
            cells = []
            for s in others:
                o = res[case].get(s) or {}
                cells.append(f"×{fmt(ratio(c['user'], o.get('user')), 2)}")
                cells.append(f"×{fmt(ratio(c['writes'], o.get('writes')), 2)}")
            w(f"| {rate_label(offered)} | " + " | ".join(cells) + " |")
        w("")
    problems = []
    for case, _ in cases:
        for s in srv:
            r = res[case].get(s)
            if r and (r["missing"] or r["ooo"] or r["errors"]):
                problems.append(f"{case} {s}: missing {r['missing']}, out of order {r['ooo']}, errors {r['errors']}")
            if r and r["perf_errors"]:
                problems.append(f"{case} {s}: syscalls not counted ({r['perf_errors'][0]})")
    lags = [(r["lag99"], case, s) for case, _ in cases for s in srv
            if (r := res[case].get(s)) and r["lag99"] is not None]
    if lags:
        worst = max(lags)
        w(f"Pacing: paced sends left at most {fmt(worst[0])} µs late at p99 "
          f"({worst[1]}, {worst[2]}); the generator kept the offered schedule when this is small "
          "next to the latencies above.")
        w("")
    line = others_line([res[case].get(s) for case, _ in cases for s in srv])
    if line:
        w(line)
        w("")
    w("Every run complete (nothing missing or out of order, no errors)." if not problems
      else "Problems: " + "; ".join(problems) + ".")
    png = f"bench-{name}.png"
    if plot_curve(name, title, unit, one, cases, os.path.join(out_dir, png)):
        w("")
        w(f"![{title}: server CPU per {one}, p99 latency and write syscalls per {one} "
          f"against the offered rate]({png})")
    new[name] = "\n".join(lines)

# ------------------------------------------------------------ the dial

dial = {d: summary(DIAL_CASE, f"corecast-d{d}") for d in DIAL_DELAYS}
if any(dial.values()):
    lines = []
    w = lines.append
    w("## Write-delay dial: fan-out 1 × 1000 at 1M deliveries/s offered (corecast)")
    w("")
    w(f"Run on {today} at commit {commit} (`{settings}`). `limits.max_write_delay_ms` "
      "(env `CORECAST_LIMITS__MAX_WRITE_DELAY_MS`) bounds how long a core may hold room "
      "deliveries to send more of them per write; the same open-loop fan-out at every "
      "setting, syscalls counted as in the load curves.")
    w("")
    w("```")
    l = args_line(DIAL_CASE)
    if l:
        w(l)
    w("```")
    w("")
    w("| max_write_delay_ms | deliveries/s | server cores busy | p50 µs | p99 µs | p99.9 µs | "
      "server µs per delivery (user+sys) | write syscalls per delivery | epoll waits per delivery | missing | errors |")
    w("|---|---|---|---|---|---|---|---|---|---|---|")
    for d, r in dial.items():
        if r:
            w(f"| {d} | {fmt(r['ops'])} | {fmt(r['busy'], 2)} | {fmt(r['p50'])} | {fmt(r['p99'])} | "
              f"{fmt(r['p999'])} | {fmt(r['user'], 3)}+{fmt(r['sys'], 3)} | {fmt(r['writes'], 4)} | "
              f"{fmt(r['waits'], 4)} | {r['missing']} | {r['errors']} |")
    line = others_line(list(dial.values()))
    if line:
        w("")
        w(line)
    p = pyplot()
    if p:
        ds = [d for d, r in dial.items() if r]
        fig, (a1, a2) = p.subplots(1, 2, figsize=(10, 4))
        a1.plot(ds, [dial[d]["busy"] for d in ds], "o-")
        a1.set_xlabel("max_write_delay_ms")
        a1.set_ylabel("server cores busy")
        a1.set_ylim(bottom=0)
        a1.set_title("server CPU at 1M deliveries/s")
        a2.plot(ds, [dial[d]["p99"] / 1000 if dial[d]["p99"] else None for d in ds], "o-", label="p99")
        a2.plot(ds, [dial[d]["p50"] / 1000 if dial[d]["p50"] else None for d in ds], "s--", label="p50")
        a2.set_xlabel("max_write_delay_ms")
        a2.set_ylabel("publish→delivery latency, ms")
        a2.set_yscale("log")
        a2.set_title("latency")
        a2.legend()
        for a in (a1, a2):
            a.grid(True, which="both", alpha=0.3)
        fig.suptitle(f"corecast, fan-out 1 × 1000 at 1M deliveries/s — {today}, {commit}", fontsize=10)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "bench-dial.png"), dpi=90)
        p.close(fig)
        w("")
        w("![server cores busy and latency against max_write_delay_ms](bench-dial.png)")
    new["dial"] = "\n".join(lines)

# ------------------------------------------------------------ history modes

# History and durability (issue 4): corecast alone, per history mode.
MODE_CASES = [
    ("publish-flat", "publish flat out: 100 rooms, 100 publishers × 8 in flight, 100 B, no other members", ["memory", "async", "sync"]),
    ("publish-2k", "publish at 2000/s in total: 100 rooms, 100 publishers, 100 B", ["memory", "async", "sync"]),
]
mode_results = {}
for case, title, modes in MODE_CASES + [("recovery-1000", "", ["memory", "sync"])]:
    mode_results[case] = {m: summary(case, f"corecast-{m}") for m in modes}
if any(v for c in mode_results.values() for v in c.values()):
    lines = []
    w = lines.append
    w("## History modes: publish→ack and recovery (corecast)")
    w("")
    w("What an `ack` costs in each `history.durability` mode (README, \"History and what an ack "
      "promises\"). `sync` acks after the batch's fsync (group commit); `async` and `memory` "
      "ack at once. Durable modes write into a fresh store per run on this machine's disk.")
    w("")
    w("```")
    for case in ["publish-flat", "publish-2k", "recovery-1000"]:
        l = args_line(case)
        if l:
            w(l)
    w("```")
    w("")
    for case, title, modes in MODE_CASES:
        if not any(mode_results[case].values()):
            continue
        w(f"### {case}: {title}")
        w("")
        w("| mode | published/s | ack p50 µs | ack p99 µs | ack p99.9 µs | server µs per publish (user+sys) | server cores busy | errors |")
        w("|---|---|---|---|---|---|---|---|")
        for m in modes:
            r = mode_results[case][m]
            if r:
                w(f"| {m} | {fmt(r['pub'])} | {fmt(r['ack50'])} | {fmt(r['ack99'])} | {fmt(r['ack999'])} | "
                  f"{fmt(r['user'], 2)}+{fmt(r['sys'], 2)} | {fmt(r['busy'], 2)} | {r['errors']} |")
        w("")
    rec = mode_results["recovery-1000"]
    if any(rec.values()):
        w("### recovery-1000: rejoin with `since` after 1000 missed messages, time from the `join` to its `ack` (after the replay)")
        w("")
        w("| mode | rounds measured | p50 µs | p99 µs | max µs | errors |")
        w("|---|---|---|---|---|---|")
        for m, r in rec.items():
            if r:
                rounds = sum(run.get("ops", 0) for run in r["runs"])
                w(f"| {m} | {rounds} | {fmt(r['p50'])} | {fmt(r['p99'])} | {fmt(r['max'])} | {r['errors']} |")
        w("")
    new["modes"] = "\n".join(lines).rstrip("\n")

# ------------------------------------------------------------ targets

# Rows computed from this run's data; a target whose data did not run
# keeps its row from the previous report.
target_rows = {}  # name -> row
TARGET_ORDER = []


def target(name, value_text, ok):
    TARGET_ORDER.append(name)
    target_rows[name] = f"| {name} | {value_text} | {'yes' if ok else ('no' if ok is not None else 'n/a')} |"


c, t = results["echo-20"].get("corecast"), results["echo-20"].get("tokio")
if c and t:
    ru, rt = ratio(c["user"], t["user"]), ratio(c["total"], t["total"])
    target("echo 100 × 20 B: server user CPU per message ≤ 0.5× the async variant's",
           f"{fmt(c['user'], 3)} vs {fmt(t['user'], 3)} µs = ×{fmt(ru, 2)}", ru is not None and ru <= 0.5)
    target("echo 100 × 20 B: server total CPU per message ≤ 0.9× the async variant's",
           f"{fmt(c['total'], 3)} vs {fmt(t['total'], 3)} µs = ×{fmt(rt, 2)}", rt is not None and rt <= 0.9)
c, t = results["fanout-1x1000"].get("corecast"), results["fanout-1x1000"].get("tokio")
if c and t:
    r1, r2 = ratio(c["ops"], t["ops"]), ratio(c["total"], t["total"])
    target("fan-out 1 × 1000: deliveries/s ≥ 1.5× the async variant's",
           f"{fmt(c['ops'])} vs {fmt(t['ops'])} = ×{fmt(r1, 2)}", r1 is not None and r1 >= 1.5)
    target("fan-out 1 × 1000: server CPU per delivery ≤ 0.6× the async variant's",
           f"{fmt(c['total'], 3)} vs {fmt(t['total'], 3)} µs = ×{fmt(r2, 2)}", r2 is not None and r2 <= 0.6)
    target("fan-out 1 × 1000: 0 missing, 0 out of order (corecast)",
           f"missing {c['missing']}, out of order {c['ooo']}", c["missing"] == 0 and c["ooo"] == 0)
c = results["fanout-1x1000-half"].get("corecast")
if c:
    target("publish→delivery p99 ≤ 5 ms, 1000 members, half the maximum rate",
           f"p99 {fmt(c['p99'])} µs at {fmt(c['pub'])} publishes/s", c["p99"] is not None and c["p99"] <= 5000)
c = results["idle-15000"].get("corecast")
if c:
    target("idle: ≤ 1 KiB server user-space memory per connection at 15 000",
           f"{fmt(c['rss'], 2)} KiB", c["rss"] is not None and c["rss"] <= 1.0)
c = results["connect"].get("corecast")
if c:
    target("connect: ≥ 20 000 handshakes/s", f"{fmt(c['ops'])}/s", c["ops"] is not None and c["ops"] >= 20000)


def curve_target(name, other, key, bound, what):
    """`what` of corecast ≤ bound × other's at every paced rate of the fan-out curve."""
    res = curve_results["curve-fanout"]
    paced = [(case, off) for case, off in CURVES[0][4] if off is not None]
    got = [(case, off, res[case].get("corecast"), res[case].get(other)) for case, off in paced]
    got = [g for g in got if g[2]]
    if not got:
        return
    missing = [rate_label(off) for case, off, c, o in got if not o or o.get(key) is None or c.get(key) is None]
    rs = [(ratio(c[key], o[key]), off) for case, off, c, o in got
          if o and o.get(key) is not None and c.get(key) is not None]
    if not rs:
        target(name, f"no {other} data", None)
        return
    worst = max(rs, key=lambda x: x[0])
    lo, hi = fmt(min(r for r, _ in rs), 2), fmt(worst[0], 2)
    text = (f"×{hi} at each of {len(rs)} rates" if lo == hi else
            f"×{lo}–×{hi} over {len(rs)} rates (highest at {rate_label(worst[1])})")
    if missing:
        text += f"; no {other} {what} at {', '.join(missing)}"
    not_run = len(paced) - len(got)
    if not_run:
        text += f"; {not_run} of the {len(paced)} rates not run"
    ok = worst[0] <= bound
    # Every rate measured, or a failure already seen.
    target(name, text, ok and not missing if not (ok and not_run) else None)


if any(curve_results["curve-fanout"][c].get("corecast") for c in curve_results["curve-fanout"]):
    curve_target("fan-out 1 × 1000: server user CPU per delivery ≤ 0.35× the async variant's at every offered rate (50k–3M/s)",
                 "tokio", "user", 0.35, "CPU")
    curve_target("fan-out 1 × 1000: server user CPU per delivery ≤ uws's at every offered rate (50k–3M/s)",
                 "uws", "user", 1.0, "CPU")
    curve_target("fan-out 1 × 1000: server write syscalls per delivery ≤ the async variant's at every offered rate (50k–3M/s)",
                 "tokio", "writes", 1.0, "syscall counts")
c, t = (curve_results["curve-echo"]["curve-echo-50k"].get(s) for s in ("corecast", "tokio"))
if c and t:
    r = ratio(c["user"], t["user"])
    target("echo 100 × 20 B at 50 000/s: server user CPU per echo ≤ 0.5× the async variant's",
           f"{fmt(c['user'], 3)} vs {fmt(t['user'], 3)} µs = ×{fmt(r, 2)}", r is not None and r <= 0.5)
c = dial.get(20)
if c:
    ok = c["busy"] is not None and c["p99"] is not None and c["busy"] <= 0.5 and c["p99"] <= 50000
    target("fan-out 1 × 1000 at 1M deliveries/s, max_write_delay_ms = 20: ≤ 0.5 server cores busy and p99 ≤ 50 ms",
           f"{fmt(c['busy'], 2)} cores busy, p99 {fmt(c['p99'])} µs", ok)

old_targets = table_rows(old.get("targets"))
if target_rows:
    rows = []
    known = set(TARGET_ORDER)
    # The previous rows in their order, each replaced when measured now;
    # then the rows new to this report.
    for r in old_targets:
        name = first_cell(r)
        rows.append(target_rows.get(name, r))
        known.discard(name)
    rows += [target_rows[n] for n in TARGET_ORDER if n in known]
    new["targets"] = "\n".join(["## Targets", "", "| target | measured | met |", "|---|---|---|"] + rows)

# ------------------------------------------------------------ raw runs

RAW_CASES = [c for c, _, _ in CASES] + CURVE_CASES
raw_rows = {}
for case in RAW_CASES:
    by_server = ([(s, summary(case, s)) for s in servers] if case in CURVE_CASES
                 else [(s, results[case][s]) for s in servers])
    rows = []
    for s, r in by_server:
        if not r:
            continue
        for i, run in enumerate(r["runs"], 1):
            cpu = run.get("server_cpu") or {}
            rows.append(f"| {case} | {s} | {i} | {fmt(run.get('ops_per_s'))} | {fmt((run.get('latency_us') or {}).get('p99'))} | "
                        f"{fmt(cpu.get('user_us_per_op'), 3)}+{fmt(cpu.get('sys_us_per_op'), 3)} | {run.get('missing')} | {run.get('errors')} |")
    if rows:
        raw_rows[case] = rows
for d, r in dial.items():
    if r:
        for i, run in enumerate(r["runs"], 1):
            cpu = run.get("server_cpu") or {}
            raw_rows.setdefault(DIAL_CASE, []).append(
                f"| {DIAL_CASE} | corecast-d{d} | {i} | {fmt(run.get('ops_per_s'))} | {fmt((run.get('latency_us') or {}).get('p99'))} | "
                f"{fmt(cpu.get('user_us_per_op'), 3)}+{fmt(cpu.get('sys_us_per_op'), 3)} | {run.get('missing')} | {run.get('errors')} |")
if raw_rows:
    old_raw = {}
    for r in table_rows(old.get("raw")):
        old_raw.setdefault(first_cell(r), []).append(r)
    rows = []
    for case in RAW_CASES + [DIAL_CASE] + [c for c in old_raw if c not in RAW_CASES + [DIAL_CASE]]:
        rows += raw_rows.get(case) or old_raw.get(case, [])
    new["raw"] = "\n".join(["## Raw runs", "",
                            "| case | server | run | ops/s | p99 µs | server µs/op (user+sys) | missing | errors |",
                            "|---|---|---|---|---|---|---|---|"] + rows)

# ------------------------------------------------------------ hand-written

notes = "docs/bench-notes.md"
if os.path.exists(notes):
    new["notes"] = open(notes).read().strip("\n")

cluster = "docs/BENCHMARKS-cluster.md"
if os.path.exists(cluster):
    # Written by scripts/bench_cluster.sh.
    new["cluster"] = open(cluster).read().strip("\n")

# The TLS section (plain ws against wss, from scripts/bench_tls.sh), the
# advice on the dial, the 50 000-connection run (scripts/cluster.sh bench)
# and the io_uring experiment's section are written by hand into the
# report: carried over from the previous one.

ORDER = (["header", "setup"] + [f"case:{c}" for c, _, _ in CASES] + [c for c, *_ in CURVES]
         + ["dial", "dial-advice", "modes", "targets", "notes", "cluster", "conns", "tls", "uring",
            "raw"])
parts = []
for name in ORDER:
    text = new.get(name) or old.get(name)
    if text:
        parts.append(f"<!-- section:{name} -->\n{text}\n<!-- /section:{name} -->")
kept = [n for n in ORDER if n not in new and old.get(n)]
open(out, "w").write("\n\n".join(parts) + "\n")
print(f"bench_report.py: wrote {out}: rewrote {', '.join(n for n in ORDER if n in new) or 'nothing'}"
      f"; kept {', '.join(kept) or 'nothing'}")
