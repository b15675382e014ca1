// Unit tests of the client's logic with fake timers and a scripted
// WebSocket (no server): backoff bounds, the token schedule, exactly-once
// delivery and discontinuities across reconnects, offline queue bounds,
// idempotent resends, close-code rules and liveness. The real server is
// exercised by node.test.mjs and the browser tests.
import assert from "node:assert/strict";
import { afterEach, beforeEach, mock, test } from "node:test";
import { buildSync } from "esbuild";
import { createClient, CorecastError, UnauthorizedError } from "../dist/index.js";

// The pure helpers, straight from the sources (they are not exported).
const util = buildSync({ entryPoints: ["src/util.ts"], bundle: true, format: "esm", write: false });
const { backoff, refreshAt, tokenExpiry } = await import(
  `data:text/javascript,${encodeURIComponent(util.outputFiles[0].text)}`
);

/** A WebSocket whose server side the test plays. */
class FakeSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    FakeSocket.all.push(this);
  }
  send(s) {
    this.sent.push(JSON.parse(s));
  }
  close() {
    this.readyState = 3;
  }
  // server side
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
  recv(obj) {
    this.onmessage?.({ data: JSON.stringify(obj) });
  }
  drop(code = 1006) {
    this.readyState = 3;
    this.onclose?.({ code, reason: "" });
  }
  last(type) {
    return [...this.sent].reverse().find((m) => m.type === type);
  }
}
const latest = () => FakeSocket.all[FakeSocket.all.length - 1];
const flush = async () => {
  for (let i = 0; i < 5; i++) await Promise.resolve();
};
const welcome = (ws, extra = {}) => ws.recv({ type: "welcome", session: "s1", user: "u1", heartbeat: 25, ...extra });

beforeEach(() => {
  FakeSocket.all = [];
  mock.timers.enable({ apis: ["setTimeout", "setInterval", "Date"], now: 1_000_000 });
});
afterEach(() => mock.timers.reset());

function client(o = {}) {
  return createClient({ url: "ws://test/ws", WebSocket: FakeSocket, ...o });
}

/** A connected client with `room` joined at epoch e1, seq `seq`. */
function joined(room = "r", seq = 0, o = {}) {
  const c = client(o);
  const ws = latest();
  ws.open();
  welcome(ws);
  const r = c.room(room);
  const done = r.join();
  const j = ws.last("join");
  ws.recv({ type: "ack", id: j.id, room, epoch: "e1", seq, members: 1 });
  return { c, ws, r, done };
}

const msg = (seq, epoch = "e1", room = "r") => ({ type: "message", room, seq, epoch, ts: seq, from: { user: "u" }, data: seq });

test("backoff is full jitter under an exponential cap", () => {
  for (let a = 0; a < 12; a++) {
    const cap = Math.min(20_000, 500 * 2 ** a);
    assert.equal(backoff(a, 500, 20_000, () => 0), 0);
    const hi = backoff(a, 500, 20_000, () => 0.999999);
    assert.ok(hi <= cap && hi >= cap - 1, `attempt ${a}: ${hi} vs cap ${cap}`);
  }
  assert.equal(backoff(1000, 500, 20_000, () => 0.5), 10_000, "huge attempts stay at the cap");
});

test("tokens are refreshed ahead of exp: a fifth of their life, 2 s to 60 s", () => {
  const now = 1_000_000;
  assert.equal(refreshAt(now + 60_000, now), now + 48_000);
  assert.equal(refreshAt(now + 5_000, now), now + 3_000);
  assert.equal(refreshAt(now + 3_600_000, now), now + 3_540_000);
  assert.equal(refreshAt(now + 1_000, now), now, "already inside the lead: now");
  const jwt = (claims) => `h.${Buffer.from(JSON.stringify(claims)).toString("base64url")}.s`;
  assert.equal(tokenExpiry(jwt({ sub: "a", exp: 1234 })), 1_234_000);
  assert.equal(tokenExpiry(jwt({ sub: "a" })), undefined);
  assert.equal(tokenExpiry("garbage"), undefined);
});

test("each seq is delivered once, in order, across a reconnect with since", async () => {
  const { c, ws, r, done } = joined("r", 2);
  assert.deepEqual(await done, { epoch: "e1", seq: 2, members: 1, recovered: undefined });
  const got = [];
  r.on("message", (m) => got.push(m.seq));
  ws.recv(msg(3));
  ws.recv(msg(3)); // a duplicate
  ws.recv(msg(4));
  assert.deepEqual(r.position, { epoch: "e1", seq: 4 });
  ws.drop(1006);
  assert.equal(c.state, "reconnecting");
  mock.timers.tick(20_000);
  const ws2 = latest();
  assert.notEqual(ws2, ws);
  ws2.open();
  welcome(ws2);
  const j = ws2.last("join");
  assert.deepEqual(j.since, { epoch: "e1", seq: 4 }, "rejoins from the last delivered position");
  // The replay may overlap what was delivered: only 5 and 6 are new.
  for (const s of [4, 5, 6]) ws2.recv(msg(s));
  ws2.recv({ type: "ack", id: j.id, room: "r", epoch: "e1", seq: 6, members: 1, recovered: true });
  ws2.recv(msg(7));
  assert.deepEqual(got, [3, 4, 5, 6, 7]);
  c.close();
});

test("a handler that throws does not cause a replay; discontinuity reports the gap", async () => {
  const { c, ws, r } = joined("r", 0);
  const got = [];
  r.on("message", (m) => {
    got.push(m.seq);
    if (m.seq === 1) throw new Error("handler bug");
  });
  ws.recv(msg(1));
  ws.recv(msg(2));
  assert.deepEqual(got, [1, 2]);
  assert.deepEqual(r.position, { epoch: "e1", seq: 2 });
  // The handler's error is not swallowed: it is rethrown asynchronously.
  // (A mocked timer that throws stays queued: the rest runs on new mocks.)
  assert.throws(() => mock.timers.tick(1), /handler bug/);
  c.close();
  mock.timers.reset();
});

test("a rejoin the server cannot recover reports a discontinuity", () => {
  const { c, ws, r } = joined("r", 0);
  const got = [];
  r.on("message", (m) => got.push(m.seq));
  ws.recv(msg(1));
  ws.recv(msg(2));
  const gaps = [];
  r.on("discontinuity", (d) => gaps.push(d));
  ws.drop(1006);
  mock.timers.tick(20_000);
  const ws2 = latest();
  ws2.open();
  welcome(ws2);
  const j = ws2.last("join");
  ws2.recv({ type: "ack", id: j.id, room: "r", epoch: "e1", seq: 50, members: 1, recovered: false });
  assert.deepEqual(gaps, [{ epochChanged: false, fromSeq: 3, toSeq: 50 }]);
  assert.deepEqual(r.position, { epoch: "e1", seq: 50 });
  ws2.drop(1006);
  mock.timers.tick(20_000);
  const ws3 = latest();
  ws3.open();
  welcome(ws3);
  const j3 = ws3.last("join");
  ws3.recv({ type: "ack", id: j3.id, room: "r", epoch: "e2", seq: 4, members: 1, recovered: false });
  assert.deepEqual(gaps[1], { epochChanged: true, fromSeq: 1, toSeq: 4 });
  ws3.recv(msg(5, "e2"));
  assert.deepEqual(got, [1, 2, 5]);
  c.close();
});

test("the offline queue is bounded by count and age and rejects, never drops", async () => {
  const c = client({ queue: { max: 3, maxAgeMs: 1000 } });
  const r = c.room("r");
  const results = [];
  const ps = [1, 2, 3, 4].map((i) =>
    r.publish(i).then(
      (v) => results.push(["ok", i, v]),
      (e) => results.push([e.code, i]),
    ),
  );
  await flush();
  assert.deepEqual(results, [["queue_full", 4]]);
  mock.timers.tick(1500);
  await Promise.all(ps);
  assert.deepEqual(
    results.map((x) => x[0]),
    ["queue_full", "expired", "expired", "expired"],
  );
  assert.ok(results[1] && results[1][0] === "expired");
  c.close();
});

test("a publish in flight when the connection drops is resent with the same key and resolves once", async () => {
  const { c, ws, r } = joined("r", 0);
  const p = r.publish({ text: "hi" });
  await flush();
  const first = ws.last("publish");
  assert.ok(first.key && first.key.length >= 16, "a generated idempotency key");
  ws.drop(1006);
  mock.timers.tick(1_000); // the first retry is within baseMs (500)
  const ws2 = latest();
  assert.notEqual(ws2, ws);
  ws2.open();
  welcome(ws2);
  assert.equal(ws2.last("publish"), undefined, "not before the room's rejoin");
  const j = ws2.last("join");
  ws2.recv({ type: "ack", id: j.id, room: "r", epoch: "e1", seq: 1, members: 1, recovered: true });
  const again = ws2.last("publish");
  assert.equal(again.key, first.key);
  ws2.recv({ type: "ack", id: again.id, room: "r", seq: 1, ts: 5, duplicate: true });
  assert.deepEqual(await p, { seq: 1, ts: 5, duplicate: true });
  // A late second ack for the same id changes nothing.
  ws2.recv({ type: "ack", id: again.id, room: "r", seq: 1, ts: 5 });
  const t = r.publish(2, { timeoutMs: 500 });
  mock.timers.tick(600);
  await assert.rejects(t, (e) => e instanceof CorecastError && e.code === "timeout");
  c.close();
  await assert.rejects(r.publish(3), (e) => e.code === "closed");
});

test("close codes: 4008 waits 10 s, reconnect honours after_ms, 4009 is at once (then backs off), 4001 twice fails", async () => {
  const states = [];
  const c = client({ token: "t.e30.s" });
  c.on("state", (s) => states.push(s));
  let ws = latest();
  ws.open();
  assert.deepEqual(ws.sent[0], { type: "auth", id: ws.sent[0].id, token: "t.e30.s" }, "the token goes in-band");
  welcome(ws, { id: ws.sent[0].id });
  assert.equal(c.state, "connected");
  ws.drop(4008);
  assert.ok(states.at(-1).retryInMs >= 10_000, JSON.stringify(states.at(-1)));
  mock.timers.tick(states.at(-1).retryInMs);
  ws = latest();
  ws.open();
  welcome(ws, { id: ws.sent[0].id });
  ws.recv({ type: "reconnect", after_ms: 3000 });
  ws.drop(1001);
  const d = states.at(-1).retryInMs;
  assert.ok(d >= 3000 && d <= 3500, `after_ms is the floor: ${d}`);
  mock.timers.tick(d);
  ws = latest();
  ws.open();
  welcome(ws, { id: ws.sent[0].id });
  mock.timers.tick(10_000); // up for 10 s: the attempt count resets
  ws.drop(4009);
  assert.equal(states.at(-1).retryInMs, 0, "4009 after a stable connection: at once");
  mock.timers.tick(0);
  ws = latest();
  ws.open();
  welcome(ws, { id: ws.sent[0].id });
  const random = Math.random;
  Math.random = () => 0.999;
  try {
    ws.drop(4009);
  } finally {
    Math.random = random;
  }
  assert.ok(states.at(-1).retryInMs > 0, "4009 again at once: backs off");
  mock.timers.tick(states.at(-1).retryInMs);
  ws = latest();
  ws.open();
  ws.drop(4001);
  assert.equal(c.state, "reconnecting");
  mock.timers.tick(1000);
  ws = latest();
  ws.open();
  ws.drop(4001);
  assert.equal(c.state, "failed");
  const n = FakeSocket.all.length;
  mock.timers.tick(60_000);
  assert.equal(FakeSocket.all.length, n, "no more attempts after failed");
});

test("getToken: called per connect and before exp, once for all waiters; UnauthorizedError fails", async () => {
  const jwt = (exp) => `h.${Buffer.from(JSON.stringify({ sub: "u", exp })).toString("base64url")}.s`;
  let calls = 0;
  const c = client({
    getToken: async () => {
      calls++;
      return jwt(Math.floor(Date.now() / 1000) + 10);
    },
  });
  await flush();
  assert.equal(calls, 1);
  const ws = latest();
  ws.open();
  const auth = ws.sent[0];
  welcome(ws, { id: auth.id });
  // 10 s token: refreshed 2 s before exp, in-band, on the same socket.
  mock.timers.tick(7_000);
  await flush();
  assert.equal(calls, 1);
  mock.timers.tick(1_000);
  await flush();
  assert.equal(calls, 2);
  const refresh = ws.sent.filter((m) => m.type === "auth")[1];
  assert.ok(refresh && refresh.token !== auth.token);
  ws.recv({ type: "ack", id: refresh.id, user: "u" });
  assert.equal(latest(), ws, "no reconnect for a refresh");
  // token_expired: refresh at once.
  ws.recv({ type: "error", code: "token_expired", message: "expired" });
  await flush();
  assert.equal(calls, 3);
  c.close();

  const d = client({
    getToken: async () => {
      throw new UnauthorizedError("logged out");
    },
  });
  await flush();
  assert.equal(d.state, "failed");
  assert.equal(FakeSocket.all.filter((s) => s !== ws).length >= 0, true);
});

test("liveness: a ping after heartbeat of silence, a reconnect 10 s later, by the wall clock", async () => {
  const { c, ws } = joined("r", 0);
  mock.timers.tick(25_500);
  assert.ok(ws.last("ping"), "pinged after the heartbeat");
  mock.timers.tick(9_000);
  assert.equal(latest(), ws);
  mock.timers.tick(2_000);
  assert.equal(c.state, "reconnecting", "dead after heartbeat + 10 s of silence");
  c.close();
  assert.deepEqual(c.resources(), { listeners: 0, pending: 0, socket: false });
});

test("typing is throttled and dropped while disconnected", () => {
  const { c, ws, r } = joined("r", 0);
  r.typing(true);
  r.typing(true);
  mock.timers.tick(3100);
  r.typing(true);
  r.typing(false);
  r.typing(false);
  assert.deepEqual(
    ws.sent.filter((m) => m.type === "typing").map((m) => m.typing),
    [true, true, false],
  );
  ws.drop(1006);
  r.typing(true);
  assert.equal(ws.sent.filter((m) => m.type === "typing").length, 3);
  c.close();
});
