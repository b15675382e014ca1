"""End-to-end walk-through with third-party clients: Python's `websockets`
(the protocol over WebSocket) and `prometheus_client`'s OpenMetrics parser
(for /metrics). Run by tests/third_party.rs against a live server:

    walkthrough.py HOST:PORT ANN_TOKEN BOB_TOKEN

Exits 0 and prints OK when every step behaved; any surprise raises.
"""
import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as text_0_0_4_families
from websockets.sync.client import connect

addr, ann_token, bob_token = sys.argv[1:4]
base = f"ws://{addr}/ws"


def recv(ws, want, timeout=10):
    """The next event of type `want` (others are skipped)."""
    while True:
        ev = json.loads(ws.recv(timeout=timeout))
        if ev["type"] == want:
            return ev


def step(name):
    print(f"- {name}", flush=True)


step("auth: token in the URL")
ann = connect(f"{base}?token={ann_token}")
w = recv(ann, "welcome")
assert w["user"] == "ann", w

step("auth: Authorization header")
bob = connect(base, additional_headers={"Authorization": f"Bearer {bob_token}"})
assert recv(bob, "welcome")["user"] == "bob"

step("auth: in-band")
third = connect(base)
third.send(json.dumps({"type": "auth", "id": "a", "token": ann_token}))
w = recv(third, "welcome")
assert w["id"] == "a" and w["user"] == "ann", w
third.close()

step("join")
for ws in (ann, bob):
    ws.send(json.dumps({"type": "join", "id": "j", "room": "e2e"}))
    ack = recv(ws, "ack")
    assert ack["room"] == "e2e" and "epoch" in ack, ack

step("publish, ack with seq, delivery to both")
ann.send(json.dumps({"type": "publish", "id": 1, "room": "e2e", "data": {"text": "hello"}}))
got = recv(ann, "message")
ack = recv(ann, "ack")
assert ack["id"] == 1 and ack["seq"] == got["seq"], (ack, got)
m = recv(bob, "message")
assert m["data"] == {"text": "hello"} and m["from"]["user"] == "ann", m

step("typing reaches the other member")
ann.send(json.dumps({"type": "typing", "room": "e2e", "typing": True}))
t = recv(bob, "typing")
assert t["user"] == "ann" and t["typing"] is True, t

step("presence reaches the other member")
bob.send(json.dumps({"type": "presence", "status": "away"}))
p = recv(ann, "presence")
assert p["user"] == "bob" and p["status"] == "away", p

step("members lists both with status")
ann.send(json.dumps({"type": "members", "id": "m", "room": "e2e"}))
mem = recv(ann, "members")
status = {u["user"]: u["status"] for u in mem["users"]}
assert status == {"ann": "online", "bob": "away"}, mem

step("direct message, acked with delivered")
ann.send(json.dumps({"type": "direct", "id": "d", "to": "bob", "data": {"dm": 1}}))
d = recv(bob, "direct")
assert d["from"]["user"] == "ann" and d["data"] == {"dm": 1}, d
ack = recv(ann, "ack")
assert ack["id"] == "d" and ack["delivered"] == 1, ack

step("/metrics parses as OpenMetrics when asked for it")
req = urllib.request.Request(
    f"http://{addr}/metrics",
    headers={"Accept": "application/openmetrics-text; version=1.0.0, text/plain;q=0.5"},
)
with urllib.request.urlopen(req, timeout=10) as r:
    assert r.headers["content-type"].startswith("application/openmetrics-text"), r.headers
    text = r.read().decode()
families = {f.name: f for f in text_string_to_metric_families(text)}
msgs_in = sum(s.value for s in families["corecast_messages_in"].samples)
assert msgs_in >= 8, msgs_in
assert "corecast_delivery_latency_seconds" in families

step("/metrics parses as Prometheus text 0.0.4 by default")
with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4"), r.headers
    text = r.read().decode()
families = {f.name: f for f in text_0_0_4_families(text)}
assert families["corecast_messages_in"].type == "counter", families["corecast_messages_in"]
assert sum(s.value for s in families["corecast_messages_in"].samples) >= msgs_in
assert families["corecast_delivery_latency_seconds"].type == "histogram"

ann.close()
bob.close()
print("OK")
