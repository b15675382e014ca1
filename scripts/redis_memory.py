#!/usr/bin/env python3
"""Redis memory per room and per history entry, measured on a running
cluster (deploy/README.md, "Sizing Redis").

Publishes MESSAGES messages into each of ROOMS fresh rooms through the HTTP
API of the nodes (alternating between them), then reads `MEMORY USAGE` of
each room's keys (src/engine/redis/scripts.rs names them) and the growth
of `INFO memory` used_memory, and prints them per room and per entry.

    CORECAST_AUTH__API_KEYS=measure-key CORECAST_API__RATE_PER_SEC=100000 \\
      CORECAST_API__RATE_BURST=100000 scripts/cluster.sh start 2
    scripts/redis_memory.py --key measure-key --rooms 20 --messages 1000 --size 100
    scripts/redis_memory.py --key measure-key --rooms 20 --messages 1000 --size 100 --keyed
    scripts/cluster.sh stop

Only the standard library and redis-cli. Publishes one request at a time
(corecast answers each with Connection: close), so it loads the machine
lightly. Room names are random, so runs do not disturb each other.
"""

import argparse
import http.client
import json
import secrets
import subprocess


def redis(port, *args):
    out = subprocess.run(
        ["redis-cli", "-p", str(port), *args], check=True, capture_output=True, text=True
    ).stdout.strip()
    return out


def used_memory(port):
    for line in redis(port, "INFO", "memory").splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":")[1])
    raise SystemExit("no used_memory in INFO memory")


def usage(port, key):
    v = redis(port, "MEMORY", "USAGE", key, "SAMPLES", "0")
    return int(v) if v else 0


def publish(node, key, room, data, idem):
    host, port = node.split(":")
    body = {"room": room, "data": data}
    if idem is not None:
        body["key"] = idem
    raw = json.dumps(body)
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    c.request(
        "POST",
        "/api/publish",
        raw,
        {"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    r = c.getresponse()
    text = r.read()
    c.close()
    if r.status != 200:
        raise SystemExit(f"publish to {node}: {r.status} {text!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="127.0.0.1:8081,127.0.0.1:8082")
    ap.add_argument("--key", required=True, help="an API key of the nodes")
    ap.add_argument("--redis-port", type=int, default=6390)
    ap.add_argument("--prefix", default="cc", help="cluster.prefix")
    ap.add_argument("--rooms", type=int, default=20)
    ap.add_argument("--messages", type=int, default=1000, help="per room")
    ap.add_argument("--size", type=int, default=100, help="bytes of text in each message's data")
    ap.add_argument("--keyed", action="store_true", help="give every publish an idempotency key")
    a = ap.parse_args()
    nodes = a.nodes.split(",")
    run = secrets.token_hex(3)
    rooms = [f"mem-{run}-{i}" for i in range(a.rooms)]
    data = {"text": "x" * a.size}
    before = used_memory(a.redis_port)
    n = 0
    for i in range(a.messages):
        for r in rooms:
            idem = f"k-{i}-{secrets.token_hex(8)}" if a.keyed else None
            publish(nodes[n % len(nodes)], a.key, r, data, idem)
            n += 1
    after = used_memory(a.redis_port)

    parts = ["m", "h", "k", "kq"]
    sums = {p: 0 for p in parts}
    entries = 0
    for r in rooms:
        for p in parts:
            sums[p] += usage(a.redis_port, f"{a.prefix}:r:{{{r}}}:{p}")
        entries += int(redis(a.redis_port, "XLEN", f"{a.prefix}:r:{{{r}}}:h"))
    one = redis(a.redis_port, "XRANGE", f"{a.prefix}:r:{{{rooms[0]}}}:h", "-", "+", "COUNT", "1")
    event_len = len(one.splitlines()[-1].encode())

    per_room = {p: sums[p] / a.rooms for p in parts}
    total = sum(per_room.values())
    kept = entries / a.rooms
    print(f"rooms {a.rooms}, messages per room {a.messages}, data text {a.size} B, "
          f"idempotency keys {'yes' if a.keyed else 'no'}")
    print(f"history entries kept per room: {kept:.0f}; event JSON per entry: {event_len} B")
    for p in parts:
        print(f"  MEMORY USAGE {a.prefix}:r:{{R}}:{p:<2} {per_room[p]:>10.0f} B per room")
    print(f"  sum of the room's keys       {total:>10.0f} B per room "
          f"= {total / kept:.0f} B per kept entry")
    print(f"  INFO used_memory growth      {(after - before) / a.rooms:>10.0f} B per room "
          f"= {(after - before) / entries:.0f} B per kept entry")


if __name__ == "__main__":
    main()
