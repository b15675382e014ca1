// The client and the demo page in a real Chromium (playwright-core driving
// the system's chromium; CHROMIUM overrides the path; a missing browser
// fails the run) against the real server binary: the demo chat in two
// windows, exactly-once delivery through a drain + restart and a kill -9 +
// restart, tokens that expire every few seconds, a frozen tab closed with
// 4009, frames dropped and sockets closed under the page
// (page.routeWebSocket), a tab whose timers slept while its clock jumped
// (page.clock), 100 reconnect cycles without leaks, and the React
// bindings under StrictMode. Screenshots go to target/browser/.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { createServer as createHttpServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { buildSync } from "esbuild";
import { chromium } from "playwright-core";
import WebSocket from "ws";
import { createClient } from "../dist/index.js";
import { startServer } from "./server.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const SHOTS = resolve(here, "../../../target/browser");
const SECRET = "browser-test-secret-0123456789abcdef";
const fast = { CORECAST_LIMITS__RATE_PER_SEC: "100000", CORECAST_LIMITS__RATE_BURST: "100000" };
const devTokens = { ...fast, CORECAST_AUTH__SECRET: SECRET, CORECAST_API__DEV_TOKENS: "true" };
const CHROMIUM = process.env.CHROMIUM ?? ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p) => existsSync(p));

let browser;
before(async () => {
  if (!CHROMIUM || !existsSync(CHROMIUM)) {
    throw new Error("chromium not found (apt-get install -y chromium, or set CHROMIUM)");
  }
  mkdirSync(SHOTS, { recursive: true });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
});
after(() => browser?.close());

const until = async (what, f, ms = 20_000) => {
  const t = Date.now();
  while (!(await f())) {
    if (Date.now() - t > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// In every page: live timers and WebSocket objects, counted, and the close
// codes the page's sockets saw.
const TRACK = () => {
  const live = new Set();
  const st = window.setTimeout.bind(window);
  const ct = window.clearTimeout.bind(window);
  const si = window.setInterval.bind(window);
  const ci = window.clearInterval.bind(window);
  window.setTimeout = (f, ms, ...a) => {
    const id = st((...x) => {
      live.delete(id);
      if (typeof f === "function") f(...x);
    }, ms, ...a);
    live.add(id);
    return id;
  };
  window.clearTimeout = (id) => {
    live.delete(id);
    ct(id);
  };
  window.setInterval = (f, ms, ...a) => {
    const id = si(f, ms, ...a);
    live.add(id);
    return id;
  };
  window.clearInterval = (id) => {
    live.delete(id);
    ci(id);
  };
  const Native = window.WebSocket;
  const sockets = new Set();
  const closes = [];
  const sent = [];
  const recv = [];
  window.WebSocket = class extends Native {
    constructor(...a) {
      super(...a);
      sockets.add(this);
      this.addEventListener("message", (e) => recv.push(String(e.data).slice(0, 200)));
      this.addEventListener("close", (e) => {
        sockets.delete(this);
        closes.push(e.code);
      });
    }
    send(d) {
      sent.push(String(d));
      super.send(d);
    }
  };
  window.__track = { live, sockets, closes, sent, recv };
};

async function newPage() {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  await page.addInitScript(TRACK);
  page.on("pageerror", (e) => console.error("page error:", e));
  return page;
}

/** A client made in the page from the served /corecast.js: `window.c`,
 * messages' data in `window.got`, state changes in `window.states`. */
async function pageClient(page, s, room, opts = {}) {
  await page.goto(`${s.http}/`);
  await page.evaluate(
    async ({ url, room, opts }) => {
      const { createClient } = await import("/corecast.js");
      const c = createClient({ url, publishTimeoutMs: 30_000, reconnect: { baseMs: 100, maxMs: 1000 }, ...opts });
      window.c = c;
      window.got = [];
      window.states = [];
      window.gaps = [];
      c.on("state", (x) => window.states.push(x));
      c.room(room).on("message", (m) => window.got.push(m.data));
      c.room(room).on("discontinuity", (d) => window.gaps.push(d));
      await c.room(room).join();
    },
    { url: s.url, room, opts },
  );
}

const nodeClient = (s, o = {}) =>
  createClient({ url: s.url, WebSocket, publishTimeoutMs: 30_000, reconnect: { baseMs: 100, maxMs: 1000 }, ...o });

async function joinDemo(page, s, name, room, query = "") {
  await page.goto(`${s.http}/${query}`);
  await page.fill("#name", name);
  await page.fill("#room", room);
  await page.click("#enter");
  await page.waitForSelector('#state[data-state="connected"]');
}

test("the demo chat in two windows: presence, typing, messages, reconnecting…", async () => {
  const s0 = await startServer(devTokens);
  let s = s0;
  const [a, b] = [await newPage(), await newPage()];
  try {
    await joinDemo(a, s, "Ann", "lobby");
    await joinDemo(b, s, "Bob", "lobby");
    await a.waitForSelector('#members li[data-user="u-bob"]');
    await b.waitForSelector('#members li[data-user="u-ann"]');
    assert.match(await b.textContent("#members"), /Ann/);

    await a.fill("#text", "hello Bob");
    await a.dispatchEvent("#text", "input");
    await b.waitForFunction(() => document.querySelector("#typing").textContent === "Ann is typing…");
    await a.click("#send");
    await b.waitForFunction(() => document.querySelector("#messages").textContent.includes("hello Bob"));
    await b.waitForFunction(() => document.querySelector("#typing").textContent === "");
    await b.fill("#text", "hi Ann");
    await b.press("#text", "Enter");
    await a.waitForFunction(() => document.querySelector("#messages").textContent.includes("hi Ann"));
    const rows = await a.$$eval("#messages li[data-seq]", (l) => l.map((x) => [x.dataset.seq, x.textContent]));
    assert.deepEqual(rows.map((r) => r[0]), ["1", "2"]);
    assert.match(rows[0][1], /^Annhello Bob/);
    await a.screenshot({ path: join(SHOTS, "demo-ann.png") });
    await b.screenshot({ path: join(SHOTS, "demo-bob.png") });

    // A page opened later gets the history.
    const c = await newPage();
    await joinDemo(c, s, "Cid", "lobby");
    await c.waitForFunction(() => document.querySelectorAll("#messages li[data-seq]").length === 2);
    await c.context().close();
    await a.waitForFunction(() => !document.querySelector('#members li[data-user="u-cid"]'));

    // The server goes away: a visible "reconnecting…", then back.
    await s.stop("SIGKILL");
    await a.waitForSelector('#state[data-state="reconnecting"]');
    assert.match(await a.textContent("#state"), /^reconnecting…/);
    await a.screenshot({ path: join(SHOTS, "demo-reconnecting.png") });
    s = await startServer(devTokens, s0.port);
    await a.waitForSelector('#state[data-state="connected"]');
    await b.waitForSelector('#state[data-state="connected"]');
    await a.waitForSelector('#members li[data-user="u-bob"]');
    await a.fill("#text", "back again");
    await a.press("#text", "Enter");
    await b.waitForFunction(() => document.querySelector("#messages").textContent.includes("back again"));
  } finally {
    await a.context().close();
    await b.context().close();
    await s.stop();
  }
});

test("the demo on the embedded defaults: anonymous, names travel with the messages", async () => {
  const s = await startServer(fast);
  const [a, b] = [await newPage(), await newPage()];
  try {
    await joinDemo(a, s, "Ann", "room-1");
    await joinDemo(b, s, "Bob", "room-1");
    await a.fill("#text", "anonymous hello");
    await a.press("#text", "Enter");
    await b.waitForFunction(() => document.querySelector("#messages").textContent.includes("Annanonymous hello"));
    await b.waitForFunction(() => [...document.querySelectorAll("#members li")].some((l) => l.textContent === "Ann"));
  } finally {
    await a.context().close();
    await b.context().close();
    await s.stop();
  }
});

test("a page holds exactly 1..N through a drain + restart and a kill -9 + restart", async () => {
  const dir = mkdtempSync(join(tmpdir(), "corecast-browser-"));
  const env = { ...fast, CORECAST_HISTORY__DURABILITY: "sync", CORECAST_HISTORY__PATH: dir };
  let s = await startServer(env);
  const port = s.port;
  const [rx, tx] = [await newPage(), await newPage()];
  try {
    await pageClient(rx, s, "inv");
    await pageClient(tx, s, "inv");
    const N = 90;
    // The publishing page publishes 1..N, 20 ms apart, and records how each ended.
    const done = tx.evaluate(async (N) => {
      const out = { resolved: {}, rejected: [] };
      const all = [];
      for (let i = 1; i <= N; i++) {
        all.push(
          window.c
            .room("inv")
            .publish(i)
            .then(
              () => (out.resolved[i] = (out.resolved[i] ?? 0) + 1),
              (e) => out.rejected.push([i, e.code]),
            ),
        );
        await new Promise((r) => setTimeout(r, 20));
      }
      await Promise.all(all);
      return out;
    }, N);
    await until("a third published", () => rx.evaluate(() => window.got.length >= 30));
    await s.stop("SIGTERM");
    s = await startServer(env, port);
    await until("two thirds published", () => rx.evaluate(() => window.got.length >= 60));
    await s.stop("SIGKILL");
    s = await startServer(env, port);
    const out = await done;
    assert.deepEqual(out.rejected, []);
    assert.equal(Object.keys(out.resolved).length, N);
    assert.ok(Object.values(out.resolved).every((n) => n === 1));
    await until("all delivered", () => rx.evaluate((N) => window.got.length >= N, N));
    await sleep(300);
    const got = await rx.evaluate(() => window.got);
    assert.deepEqual(got, Array.from({ length: N }, (_, i) => i + 1));
    const states = await rx.evaluate(() => window.states.map((x) => x.current));
    assert.ok(states.filter((x) => x === "reconnecting").length >= 2, states.join(","));
    assert.deepEqual(await rx.evaluate(() => window.gaps), []);
  } finally {
    await rx.context().close();
    await tx.context().close();
    await s.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("tokens that expire every 3 s are refreshed in-band: one session, 1..N delivered, no reconnect", async () => {
  const s = await startServer(devTokens);
  const page = await newPage();
  let mints = 0;
  page.on("request", (r) => r.url().endsWith("/api/tokens") && mints++);
  try {
    await joinDemo(page, s, "Ann", "short", "?ttl=3");
    const session = await page.evaluate(() => window.corecast.session);
    // For 10 s (three token lifetimes) the page publishes 1..40 and, as a
    // member, receives them.
    const out = await page.evaluate(async () => {
      const room = window.corecast.room("short");
      const got = [];
      room.on("message", (m) => typeof m.data.n === "number" && got.push(m.data.n));
      let resolved = 0;
      const all = [];
      for (let n = 1; n <= 40; n++) {
        all.push(room.publish({ n, text: `n${n}`, name: "Ann" }).then(() => resolved++));
        await new Promise((r) => setTimeout(r, 250));
      }
      await Promise.all(all);
      await new Promise((r) => setTimeout(r, 200));
      return { got, resolved };
    });
    assert.equal(out.resolved, 40);
    assert.deepEqual(out.got, Array.from({ length: 40 }, (_, i) => i + 1));
    assert.equal(await page.evaluate(() => window.corecast.session), session, "the same connection");
    assert.equal(await page.evaluate(() => window.corecast.state), "connected");
    assert.deepEqual(await page.evaluate(() => window.__track.closes), [], "no socket closed");
    assert.ok(mints >= 4, `tokens minted: ${mints}`);
    const auths = await page.evaluate(() => window.__track.sent.filter((f) => JSON.parse(f).type === "auth").length);
    assert.ok(auths >= 4, `auth frames: ${auths}`);
    await page.fill("#text", "still here");
    await page.press("#text", "Enter");
    await page.waitForFunction(() => document.querySelector("#messages").textContent.includes("still here"));
  } finally {
    await page.context().close();
    await s.stop();
  }
});

test("a frozen tab that stops reading is closed with 4009 and recovers in order", async () => {
  const s = await startServer({
    ...fast,
    CORECAST_LIMITS__MAX_BACKLOG: "65536",
    CORECAST_LIMITS__MAX_MESSAGE: "16384",
    CORECAST_HISTORY__SIZE: "2000",
    CORECAST_AUTH__API_KEYS: "flood-key",
    CORECAST_API__RATE_PER_SEC: "100000",
    CORECAST_API__RATE_BURST: "100000",
  });
  const page = await newPage();
  // The flood comes over the HTTP API: its publisher is no member.
  const publish = async (data) => {
    const r = await fetch(`${s.http}/api/publish`, {
      method: "POST",
      headers: { authorization: "Bearer flood-key", "content-type": "application/json" },
      body: JSON.stringify({ room: "flood", data }),
    });
    assert.equal(r.status, 200, await r.text());
  };
  try {
    await pageClient(page, s, "flood");
    const N = 1200;
    const blob = "x".repeat(12_000);
    // The page's main thread is busy for 6 s: Chromium stops reading the
    // socket, the kernel's buffers fill, the server's backlog passes its bound.
    await page.evaluate(() => {
      setTimeout(() => {
        const end = Date.now() + 6000;
        while (Date.now() < end);
      }, 0);
    });
    await sleep(200);
    for (let i = 1; i <= N; i++) await publish({ i, blob });
    await until("all delivered", () => page.evaluate((N) => window.got.length >= N, N), 60_000).catch(async (e) => {
      console.log(await page.evaluate(() => ({ n: window.got.length, last: window.got.at(-1)?.i, closes: window.__track.closes, states: window.states.slice(-5), gaps: window.gaps })));
      throw e;
    });
    const { closes, got, gaps } = await page.evaluate(() => ({
      closes: window.__track.closes,
      got: window.got.map((d) => d.i),
      gaps: window.gaps,
    }));
    assert.ok(closes.includes(4009), `closes: ${closes}`);
    assert.deepEqual(gaps, []);
    assert.deepEqual(got, Array.from({ length: N }, (_, i) => i + 1));
  } finally {
    await page.context().close();
    await s.stop();
  }
});

test("frames dropped and sockets closed under the page (routeWebSocket): each seq once, in order", async () => {
  const s = await startServer({ ...fast, CORECAST_HEARTBEAT: "2" });
  const page = await newPage();
  const pub = nodeClient(s);
  let sockets = 0;
  let blackhole = false;
  await page.routeWebSocket(/\/ws$/, (ws) => {
    const n = ++sockets;
    const server = ws.connectToServer();
    let fromServer = 0;
    server.onMessage((m) => {
      if (blackhole) return; // a dead path: nothing arrives
      ws.send(m);
      // Every connection but the blackholed one is cut after 25 frames.
      if (n > 1 && ++fromServer === 25 && sockets < 6) {
        ws.close({ code: 1006 }).catch(() => {});
        server.close().catch(() => {});
      }
    });
    ws.onMessage((m) => {
      if (!blackhole) server.send(m);
    });
  });
  try {
    await pageClient(page, s, "cuts");
    await pub.room("cuts").join();
    // 1: the path goes silent; liveness (heartbeat 2 s + 10 s) must notice.
    blackhole = true;
    for (let i = 1; i <= 20; i++) await pub.room("cuts").publish(i);
    await until("a reconnect by liveness", () => page.evaluate(() => window.states.some((x) => x.current === "reconnecting")), 30_000);
    blackhole = false;
    // 2: later sockets are cut every 25 frames while 100 more arrive.
    for (let i = 21; i <= 120; i++) {
      await pub.room("cuts").publish(i);
      await sleep(5);
    }
    await until("all delivered", () => page.evaluate(() => window.got.length >= 120), 30_000);
    await sleep(300);
    assert.deepEqual(await page.evaluate(() => window.got), Array.from({ length: 120 }, (_, i) => i + 1));
    assert.ok(sockets >= 4, `sockets: ${sockets}`);
    const reasons = await page.evaluate(() => window.states.map((x) => x.reason ?? ""));
    assert.ok(reasons.some((r) => /nothing received/.test(r)), reasons.join(" | "));
  } finally {
    pub.close();
    await page.context().close();
    await s.stop();
  }
});

test("a tab whose timers slept: visibilitychange and online check the wall clock at once", async () => {
  const s = await startServer(fast);
  const page = await newPage();
  const pub = nodeClient(s);
  let sockets = 0;
  let deaf = false; // the first socket goes silent both ways
  await page.routeWebSocket(/\/ws$/, (ws) => {
    const n = ++sockets;
    const server = ws.connectToServer();
    server.onMessage((m) => !(deaf && n === 1) && ws.send(m));
    ws.onMessage((m) => !(deaf && n === 1) && server.send(m));
  });
  try {
    await page.clock.install();
    await pageClient(page, s, "sleep");
    await pub.room("sleep").join();
    deaf = true;
    for (let i = 1; i <= 5; i++) await pub.room("sleep").publish(i);
    // The page's timers stop (a background tab), then its clock jumps a
    // minute: only the wake-up events can notice.
    const t0 = await page.evaluate(() => Date.now());
    await page.clock.pauseAt(t0 + 200);
    await page.clock.setSystemTime(t0 + 60_000);
    await sleep(300);
    assert.equal(await page.evaluate(() => window.c.state), "connected", "no timer ran");
    await page.evaluate(() => document.dispatchEvent(new Event("visibilitychange")));
    const st = await page.evaluate(() => window.states.at(-1));
    assert.equal(st.current, "reconnecting");
    assert.match(st.reason, /nothing received/);
    // The reconnect timer is asleep too: the next wake-up opens the socket.
    await page.clock.setSystemTime(t0 + 62_000);
    await page.evaluate(() => window.dispatchEvent(new Event("online")));
    await until("recovered", () => page.evaluate(() => window.got.length >= 5), 10_000);
    assert.deepEqual(await page.evaluate(() => window.got), [1, 2, 3, 4, 5]);
    assert.equal(sockets, 2);
  } finally {
    pub.close();
    await page.context().close();
    await s.stop();
  }
});

test("100 reconnect cycles leave no timers, sockets or listeners behind", async () => {
  const s = await startServer(fast);
  const page = await newPage();
  let current = null;
  await page.routeWebSocket(/\/ws$/, (ws) => {
    const server = ws.connectToServer();
    current = { ws, server };
  });
  try {
    await pageClient(page, s, "cycles", { reconnect: { baseMs: 5, maxMs: 20 } });
    const snapshot = () =>
      page.evaluate(() => ({
        timers: window.__track.live.size,
        sockets: window.__track.sockets.size,
        res: window.c.resources(),
        joins: window.__track.sent.filter((f) => JSON.parse(f).type === "join").length,
      }));
    const cycle = async () => {
      const was = current;
      await was.ws.close({ code: 4000, reason: "cut" });
      await was.server.close().catch(() => {});
      await until("reconnected", () => current !== was);
      await until("rejoined", () =>
        page.evaluate(() => window.c.state === "connected" && window.__track.sent.at(-1)?.includes('"join"')),
      );
      await sleep(10);
    };
    await cycle();
    const base = await snapshot();
    for (let i = 0; i < 99; i++) await cycle();
    await sleep(200);
    const end = await snapshot();
    assert.equal(end.joins, base.joins + 99, "one join per connection");
    assert.equal(end.sockets, 1);
    assert.equal(end.res.socket, true);
    assert.equal(end.res.listeners, base.res.listeners);
    assert.equal(end.res.pending, 0);
    assert.ok(end.timers <= base.timers + 1, `live timers ${base.timers} -> ${end.timers}`);
    const pub = nodeClient(s);
    await pub.room("cycles").join();
    await pub.room("cycles").publish("after 100 cycles");
    await until("delivered", () => page.evaluate(() => window.got.includes("after 100 cycles")));
    pub.close();
  } finally {
    await page.context().close();
    await s.stop();
  }
});

test("React bindings under StrictMode: one join, no leave while mounted, messages once", async () => {
  const s = await startServer(fast);
  const app = buildSync({
    stdin: {
      contents: `
        import { createElement as h, StrictMode, useState } from "react";
        import { createRoot } from "react-dom/client";
        import { createClient } from "../dist/index.js";
        import { CorecastProvider, useConnectionState, useMessages, useTyping } from "../dist/react.js";
        const client = createClient({ url: window.WS_URL });
        window.c = client;
        function Chat() {
          const state = useConnectionState();
          const messages = useMessages("react-room", { limit: 50 });
          const { typing } = useTyping("react-room");
          return h("div", null,
            h("p", { id: "state" }, state),
            h("p", { id: "typing" }, typing.join(",")),
            h("ul", { id: "list" }, messages.map((m) => h("li", { key: m.seq }, String(m.data)))));
        }
        function App() {
          const [on, setOn] = useState(true);
          return h("div", null,
            h("button", { id: "toggle", onClick: () => setOn(!on) }, "toggle"),
            on ? h(Chat) : null);
        }
        createRoot(document.getElementById("root")).render(
          h(StrictMode, null, h(CorecastProvider, { client }, h(App))));
      `,
      resolveDir: here,
      loader: "js",
    },
    bundle: true,
    format: "esm",
    write: false,
    define: { "process.env.NODE_ENV": '"development"' },
    logLevel: "error",
  }).outputFiles[0].text;
  // The app comes from a server of its own (as from a dev server), on
  // another loopback port.
  const web = createHttpServer((req, res) => {
    if (req.url === "/app.js") {
      res.writeHead(200, { "content-type": "text/javascript" }).end(app);
    } else {
      res
        .writeHead(200, { "content-type": "text/html" })
        .end(`<div id="root"></div><script>window.WS_URL=${JSON.stringify(s.url)}</script><script type="module" src="/app.js"></script>`);
    }
  });
  await new Promise((r) => web.listen(0, "127.0.0.1", r));
  const page = await newPage();
  const pub = nodeClient(s);
  try {
    await pub.room("react-room").join();
    await pub.room("react-room").publish("before");
    await page.goto(`http://127.0.0.1:${web.address().port}/`);
    await page.waitForFunction(() => document.querySelector("#state")?.textContent === "connected");
    await page.waitForFunction(() => document.querySelectorAll("#list li").length === 1);
    await pub.room("react-room").publish("live 1");
    await pub.room("react-room").publish("live 2");
    pub.room("react-room").typing(true);
    await page.waitForFunction(() => document.querySelectorAll("#list li").length === 3);
    await page.waitForFunction(() => document.querySelector("#typing").textContent !== "");
    await sleep(1500); // past the bindings' delayed leave
    const frames = await page.evaluate(() => window.__track.sent.map((f) => JSON.parse(f)));
    const of = (t) => frames.filter((f) => f.type === t && f.room === "react-room").length;
    assert.equal(of("join"), 1, "StrictMode's double mount joined once");
    assert.equal(of("leave"), 0, "and did not leave");
    assert.deepEqual(await page.$$eval("#list li", (l) => l.map((x) => x.textContent)), ["before", "live 1", "live 2"]);
    // Unmounting leaves (after the delay), once.
    await page.click("#toggle");
    await until("left", () =>
      page.evaluate(() => window.__track.sent.some((f) => JSON.parse(f).type === "leave")),
    );
    await sleep(1200);
    const leaves = await page.evaluate(() => window.__track.sent.filter((f) => JSON.parse(f).type === "leave").length);
    assert.equal(leaves, 1);
  } finally {
    pub.close();
    await page.context().close();
    await new Promise((r) => web.close(r));
    await s.stop();
  }
});
