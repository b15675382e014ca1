// The client in Node (with the `ws` package) against the real server
// binary: delivery and acks, the exactly-once invariant through a drain
// and restart and through kill -9 and restart, publishes queued while the
// server is away, token refresh in-band with short-lived tokens, and
// refused authentication ending in `failed`.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "node:test";
import WebSocket from "ws";
import { createClient, UnauthorizedError } from "../dist/index.js";
import { jwt, startServer } from "./server.mjs";

const SECRET = "node-test-secret-0123456789abcdef";
const fast = { CORECAST_LIMITS__RATE_PER_SEC: "100000", CORECAST_LIMITS__RATE_BURST: "100000" };

const until = async (what, f, ms = 15_000) => {
  const t = Date.now();
  while (!(await f())) {
    if (Date.now() - t > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
};

function connect(url, o = {}) {
  return createClient({ url, WebSocket, publishTimeoutMs: 30_000, reconnect: { baseMs: 100, maxMs: 1000 }, ...o });
}

/** A client in `room` recording the data of every message it gets. */
async function receiver(url, room) {
  const c = connect(url);
  const got = [];
  c.room(room).on("message", (m) => got.push(m.data));
  await c.room(room).join();
  return { c, got };
}

test("publishes reach every member once, in order, and resolve with their seq", async () => {
  const s = await startServer(fast);
  try {
    const a = connect(s.url);
    const b = await receiver(s.url, "lobby");
    await a.room("lobby").join();
    const acks = await Promise.all(Array.from({ length: 20 }, (_, i) => a.room("lobby").publish(i + 1)));
    assert.deepEqual(
      acks.map((x) => x.seq),
      Array.from({ length: 20 }, (_, i) => i + 1),
    );
    assert.ok(acks.every((x) => x.duplicate === false && x.ts > 0));
    await until("20 messages", () => b.got.length === 20);
    assert.deepEqual(b.got, Array.from({ length: 20 }, (_, i) => i + 1));
    assert.equal(a.state, "connected");
    assert.ok(a.user?.startsWith("anon:") && a.session);
    const members = await a.room("lobby").members();
    assert.equal(members.length, 2);
    const h = await b.c.room("lobby").history({ limit: 5 });
    assert.deepEqual(
      h.map((m) => m.seq),
      [16, 17, 18, 19, 20],
    );
    assert.ok((await a.ping()) >= 0);
    a.close();
    b.c.close();
    assert.deepEqual(a.resources(), { listeners: 0, pending: 0, socket: false });
  } finally {
    await s.stop();
  }
});

test("through a drain + restart and a kill -9 + restart, receivers hold exactly 1..N and every publish resolves once", async () => {
  const dir = mkdtempSync(join(tmpdir(), "corecast-js-"));
  const env = { ...fast, CORECAST_HISTORY__DURABILITY: "sync", CORECAST_HISTORY__PATH: dir };
  let s = await startServer(env);
  const port = s.port;
  try {
    const pub = connect(s.url);
    const r1 = await receiver(s.url, "inv");
    const r2 = await receiver(s.url, "inv");
    await pub.room("inv").join();
    const states = [];
    pub.on("state", (x) => states.push(x.current));
    const N = 120;
    const resolved = new Map();
    const rejected = [];
    const all = [];
    for (let i = 1; i <= N; i++) {
      all.push(
        pub
          .room("inv")
          .publish(i)
          .then(
            (ack) => resolved.set(i, (resolved.get(i) ?? 0) + 1) && ack,
            (e) => rejected.push([i, e.code]),
          ),
      );
      await new Promise((r) => setTimeout(r, 15));
      if (i === 40) {
        await s.stop("SIGTERM"); // drain: `reconnect`, close 1001
        s = await startServer(env, port);
      }
      if (i === 80) {
        await s.stop("SIGKILL");
        s = await startServer(env, port);
      }
    }
    await Promise.all(all);
    assert.deepEqual(rejected, []);
    assert.equal(resolved.size, N);
    assert.ok([...resolved.values()].every((n) => n === 1), "each publish resolved once");
    const want = Array.from({ length: N }, (_, i) => i + 1);
    for (const r of [r1, r2]) {
      await until("all messages", () => r.got.length >= N);
      assert.deepEqual(r.got, want);
    }
    assert.ok(states.includes("reconnecting") && states.at(-1) === "connected", states.join(","));
    for (const c of [pub, r1.c, r2.c]) c.close();
  } finally {
    await s.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("short-lived tokens are refreshed in-band without reconnecting", async () => {
  const s = await startServer({ ...fast, CORECAST_AUTH__SECRET: SECRET });
  try {
    let calls = 0;
    const c = connect(s.url, {
      getToken: () => {
        calls++;
        return jwt(SECRET, { sub: "refresher", exp: Math.floor(Date.now() / 1000) + 4 });
      },
    });
    const states = [];
    c.on("state", (x) => states.push(x.current));
    const errors = [];
    c.on("error", (e) => errors.push(e.code));
    const got = [];
    c.room("t").on("message", (m) => got.push(m.data));
    await c.room("t").join();
    states.length = 0;
    const session = c.session;
    assert.equal(c.user, "refresher");
    // Three token lifetimes.
    for (let i = 0; i < 12; i++) {
      await c.room("t").publish(i);
      await new Promise((r) => setTimeout(r, 1000));
    }
    assert.ok(calls >= 4, `getToken called ${calls} times`);
    assert.equal(c.session, session, "the same connection throughout");
    assert.deepEqual(states, [], "no state change after connecting");
    assert.deepEqual(errors, []);
    assert.equal(got.length, 12);
    c.close();
  } finally {
    await s.stop();
  }
});

test("refused authentication ends in failed; so does getToken throwing UnauthorizedError", async () => {
  const s = await startServer({ ...fast, CORECAST_AUTH__SECRET: SECRET });
  try {
    let calls = 0;
    const bad = connect(s.url, {
      getToken: () => {
        calls++;
        return jwt("some-other-secret-entirely-000000", { sub: "x" });
      },
    });
    await until("failed", () => bad.state === "failed");
    assert.equal(calls, 2, "a fresh token was fetched once after the first 4001");
    await assert.rejects(bad.room("r").join(), (e) => e.code === "closed");
    const out = connect(s.url, {
      getToken: () => {
        throw new UnauthorizedError("signed out");
      },
    });
    await until("failed", () => out.state === "failed");
    assert.deepEqual(out.resources().socket, false);
  } finally {
    await s.stop();
  }
});

test("the package installs into an app (npm pack + npm install) and loads as ESM and CJS", async () => {
  const pkg = join(dirname(fileURLToPath(import.meta.url)), "..");
  const dir = mkdtempSync(join(tmpdir(), "corecast-app-"));
  try {
    execFileSync("npm", ["pack", "--silent", "--pack-destination", dir], { cwd: pkg, stdio: "pipe" });
    const tgz = readdirSync(dir).find((f) => f.endsWith(".tgz"));
    assert.ok(tgz, "npm pack made a tarball");
    writeFileSync(join(dir, "package.json"), JSON.stringify({ name: "app", version: "1.0.0", private: true }));
    execFileSync("npm", ["install", "--offline", "--no-audit", "--no-fund", "--silent", `./${tgz}`], { cwd: dir, stdio: "pipe" });
    // No runtime dependencies came with it.
    const installed = readdirSync(join(dir, "node_modules")).filter((d) => !d.startsWith("."));
    assert.deepEqual(installed, ["corecast-client"]);
    const s = await startServer(fast);
    try {
      writeFileSync(
        join(dir, "esm.mjs"),
        `import { createClient } from "corecast-client";
         import WebSocket from ${JSON.stringify(join(pkg, "node_modules/ws/wrapper.mjs"))};
         const c = createClient({ url: process.argv[2], WebSocket });
         const r = c.room("app");
         const got = new Promise((res) => r.on("message", (m) => res(m.data)));
         await r.join();
         const ack = await r.publish("from an app");
         console.log("got", await got, "seq", ack.seq);
         c.close();`,
      );
      const esm = execFileSync("node", ["esm.mjs", s.url], { cwd: dir, encoding: "utf8", timeout: 15_000 });
      assert.match(esm, /got from an app seq 1/);
      const cjs = execFileSync(
        "node",
        ["-e", `const m = require("corecast-client"); console.log(typeof m.createClient, typeof m.UnauthorizedError, require.resolve("corecast-client/react"))`],
        { cwd: dir, encoding: "utf8" },
      );
      assert.match(cjs, /^function function .*node_modules\/corecast-client\/dist\/react\.cjs/);
    } finally {
      await s.stop();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
