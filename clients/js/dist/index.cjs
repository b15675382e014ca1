"use strict";
var __defProp = Object.defineProperty;
var __getOwnPropDesc = Object.getOwnPropertyDescriptor;
var __getOwnPropNames = Object.getOwnPropertyNames;
var __hasOwnProp = Object.prototype.hasOwnProperty;
var __export = (target, all) => {
  for (var name in all)
    __defProp(target, name, { get: all[name], enumerable: true });
};
var __copyProps = (to, from, except, desc) => {
  if (from && typeof from === "object" || typeof from === "function") {
    for (let key of __getOwnPropNames(from))
      if (!__hasOwnProp.call(to, key) && key !== except)
        __defProp(to, key, { get: () => from[key], enumerable: !(desc = __getOwnPropDesc(from, key)) || desc.enumerable });
  }
  return to;
};
var __toCommonJS = (mod) => __copyProps(__defProp({}, "__esModule", { value: true }), mod);

// src/index.ts
var index_exports = {};
__export(index_exports, {
  Client: () => Client,
  CorecastError: () => CorecastError,
  Room: () => Room,
  UnauthorizedError: () => UnauthorizedError,
  createClient: () => createClient
});
module.exports = __toCommonJS(index_exports);

// src/util.ts
var Emitter = class {
  constructor() {
    this.l = /* @__PURE__ */ new Map();
  }
  /** Adds `fn` for `event`; call the result to remove it. */
  on(event, fn) {
    let set = this.l.get(event);
    if (!set) this.l.set(event, set = /* @__PURE__ */ new Set());
    set.add(fn);
    return () => {
      set.delete(fn);
      if (!set.size) this.l.delete(event);
    };
  }
  /** Calls every listener of `event`; one that throws does not stop the
   * others (its error is rethrown asynchronously, so it is still seen). */
  emit(event, ev) {
    const set = this.l.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(ev);
      } catch (e) {
        setTimeout(() => {
          throw e;
        }, 0);
      }
    }
  }
  /** Listeners registered, over all events (for leak checks). */
  listenerCount() {
    let n = 0;
    for (const s of this.l.values()) n += s.size;
    return n;
  }
};
var CorecastError = class extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
    this.name = "CorecastError";
  }
};
var UnauthorizedError = class extends Error {
  constructor(message = "unauthorized") {
    super(message);
    this.name = "UnauthorizedError";
  }
};
function backoff(attempt, baseMs, maxMs, rnd = Math.random) {
  return Math.floor(rnd() * Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30)));
}
function tokenExpiry(token) {
  try {
    const part = token.split(".")[1];
    if (!part) return void 0;
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
    const exp = JSON.parse(json).exp;
    return typeof exp === "number" ? exp * 1e3 : void 0;
  } catch {
    return void 0;
  }
}
function refreshAt(expMs, nowMs) {
  const left = expMs - nowMs;
  return nowMs + Math.max(0, left - Math.min(6e4, Math.max(2e3, left / 5)));
}
function newKey() {
  const b = new Uint8Array(16);
  const c = globalThis.crypto;
  if (c?.getRandomValues) c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  let s = "";
  for (const x of b) s += String.fromCharCode(x);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

// src/room.ts
var TYPING_EVERY_MS = 3e3;
var Room = class {
  /** @internal */
  constructor(name, link) {
    this.name = name;
    this.link = link;
    /** @internal the app asked to be a member */
    this.want = false;
    /** @internal joined on the current connection */
    this.joined = false;
    /** @internal a join is in flight on the current connection */
    this.joining = false;
    this.pos = null;
    this.early = [];
    this.ev = new Emitter();
    this.waiters = [];
    this.last = null;
    this.typingSent = 0;
  }
  /** `{epoch, seq}` of the last delivered message (null before the first
   * join). */
  get position() {
    return this.pos && { ...this.pos };
  }
  /** Adds a listener; returns its `off`. */
  on(event, fn) {
    return this.ev.on(event, fn);
  }
  /** Joins (and keeps rejoining with `since` after every reconnect until
   * `leave()`); resolves once joined. */
  join() {
    this.want = true;
    if (this.joined && this.last) return Promise.resolve(this.last);
    return new Promise((res, rej) => {
      this.waiters.push([res, rej]);
      this.link.joinNow(this);
    });
  }
  /** Stops rejoining and leaves. */
  async leave() {
    this.want = false;
    this.fail(new CorecastError("left", "left the room"));
    this.link.dropQueued(this, new CorecastError("left", "left the room"));
    if (this.joined || this.joining) {
      this.joined = this.joining = false;
      await this.link.request({ type: "leave", room: this.name }, { retry: false });
    }
  }
  /** Publishes `data`; resolves with its `seq` once the server sequenced
   * it. Waits in the offline queue while disconnected; carries an
   * idempotency key, so a publish resent after a reconnect is stored
   * once. */
  async publish(data, o = {}) {
    const r = await this.link.request(
      { type: "publish", room: this.name, data, key: o.key },
      { room: this, retry: true, publish: true, timeoutMs: o.timeoutMs }
    );
    return { seq: r.seq, ts: r.ts, duplicate: r.duplicate === true };
  }
  /** A page of history, ascending seq. */
  async history(o = {}) {
    const r = await this.link.request({ type: "history", room: this.name, ...o }, { room: this, retry: true });
    return r.messages;
  }
  /** The room's members. */
  async members() {
    const r = await this.link.request({ type: "members", room: this.name }, { room: this, retry: true });
    return r.users;
  }
  /** Says whether this user is typing; throttled, dropped while
   * disconnected. */
  typing(on) {
    const now = Date.now();
    if (on && this.typingSent && now - this.typingSent < TYPING_EVERY_MS) return;
    if (!on && !this.typingSent) return;
    if (this.joined && this.link.sendNow({ type: "typing", room: this.name, typing: on })) {
      this.typingSent = on ? now : 0;
    }
  }
  // ---- driven by the client -------------------------------------------
  /** @internal the join command for the current connection */
  joinCommand() {
    this.joining = true;
    this.early = [];
    return { type: "join", room: this.name, since: this.pos ?? void 0 };
  }
  /** @internal the connection dropped */
  disconnected() {
    this.joined = this.joining = false;
    this.typingSent = 0;
    this.early = [];
  }
  /** @internal the join's ack */
  onJoined(ack) {
    const epoch = ack.epoch;
    const seq = ack.seq;
    const p = this.pos;
    if (p && ack.recovered === false) {
      const epochChanged = p.epoch !== epoch;
      this.pos = { epoch, seq };
      this.ev.emit("discontinuity", { epochChanged, fromSeq: epochChanged ? 1 : p.seq + 1, toSeq: seq });
    } else if (!p) {
      this.pos = { epoch, seq };
    }
    this.joining = false;
    this.joined = true;
    const early = this.early;
    this.early = [];
    for (const m of early) this.deliver(m);
    this.last = { epoch, seq: this.pos?.seq ?? seq, members: ack.members, recovered: ack.recovered };
    for (const [res] of this.waiters.splice(0)) res(this.last);
  }
  /** @internal the join was refused for good */
  fail(e) {
    this.joining = false;
    for (const [, rej] of this.waiters.splice(0)) rej(e);
  }
  /** @internal a room event from the server */
  onEvent(m) {
    const t = m.type;
    if (t !== "message") {
      this.ev.emit(t, m);
      return;
    }
    if (this.joining) this.early.push(m);
    else this.deliver(m);
  }
  /** @internal presence of a user sharing a room with this client */
  onPresence(p) {
    if (this.want) this.ev.emit("presence", p);
  }
  /** @internal listeners registered */
  listenerCount() {
    return this.ev.listenerCount();
  }
  deliver(m) {
    const p = this.pos;
    if (p && m.epoch === p.epoch) {
      if (m.seq <= p.seq) return;
      if (m.seq > p.seq + 1) {
        this.joined = false;
        this.link.joinNow(this);
        return;
      }
    }
    this.pos = { epoch: m.epoch, seq: m.seq };
    this.ev.emit("message", m);
  }
};

// src/client.ts
var DEAD_AFTER_MS = 1e4;
var CONNECT_TIMEOUT_MS = 15e3;
var STABLE_MS = 1e4;
var RATE_KICK_WAIT_MS = 1e4;
var RETRY_JOIN_MS = 1e3;
var RETRY_JOIN = /* @__PURE__ */ new Set(["unavailable", "overloaded", "rate_limited", "internal"]);
var Client = class {
  constructor(o) {
    this.state = "connecting";
    this.ws = null;
    this.ev = new Emitter();
    this.rooms = /* @__PURE__ */ new Map();
    this.queue = [];
    this.sent = /* @__PURE__ */ new Map();
    this.n = 0;
    this.attempt = 0;
    this.needFresh = false;
    this.refused = 0;
    this.status = "online";
    this.heartbeatMs = 25e3;
    this.lastRx = 0;
    this.pinged = false;
    this.openedAt = 0;
    this.connectedAt = 0;
    this.retryAt = 0;
    this.refreshAtMs = 0;
    this.afterMs = -1;
    this.hooks = [];
    this.o = o;
    const WS = o.WebSocket ?? globalThis.WebSocket;
    if (!WS) throw new Error("corecast: no WebSocket; pass the `ws` package's as options.WebSocket");
    this.WS = WS;
    this.token = o.token;
    this.tick = setInterval(() => this.check(), 1e3);
    this.hook();
    void this.open();
  }
  /** Adds a listener; returns its `off`. */
  on(event, fn) {
    return this.ev.on(event, fn);
  }
  /** The room named `name` (the same object on every call). */
  room(name) {
    let r = this.rooms.get(name);
    if (!r) this.rooms.set(name, r = new Room(name, this));
    return r;
  }
  /** Sets this user's presence status; re-sent after every reconnect. */
  setStatus(status) {
    this.status = status;
    this.sendNow({ type: "presence", status });
  }
  /** Sends `data` to every connection of `user`. */
  async direct(user, data) {
    const r = await this.request({ type: "direct", to: user, data }, { retry: false });
    return { delivered: r.delivered };
  }
  /** Round trip to the server, ms. */
  async ping() {
    const t = Date.now();
    await this.request({ type: "ping" }, { retry: true });
    return Date.now() - t;
  }
  /** Closes for good; pending promises reject with `closed`. */
  close() {
    this.end("closed", "closed by the application", new CorecastError("closed", "client closed"));
  }
  /** Listeners, timers and sockets held (for leak checks). */
  resources() {
    let listeners = this.ev.listenerCount();
    for (const r of this.rooms.values()) listeners += r.listenerCount();
    return { listeners, pending: this.queue.length + this.sent.size, socket: this.ws !== null };
  }
  // ---- Link (for rooms) ------------------------------------------------
  /** @internal */
  request(cmd, o) {
    return new Promise((res, rej) => {
      if (this.ended()) {
        rej(new CorecastError("closed", `client is ${this.state}`));
        return;
      }
      const publish = o.publish === true;
      if (publish) {
        cmd.key ?? (cmd.key = newKey());
        const max = this.o.queue?.max ?? 100;
        if (this.queue.filter((q) => q.publish).length >= max) {
          rej(new CorecastError("queue_full", `offline queue is full (${max})`));
          return;
        }
      }
      const req = { id: `r${++this.n}`, cmd, room: o.room, retry: o.retry, publish, at: Date.now(), res, rej };
      const ms = o.timeoutMs ?? this.o.publishTimeoutMs ?? 1e4;
      req.timer = setTimeout(() => this.settle(req, new CorecastError("timeout", `no reply within ${ms} ms`)), ms);
      this.queue.push(req);
      this.pump();
    });
  }
  /** @internal sends at once if connected; false when not sent */
  sendNow(cmd) {
    if (this.state !== "connected" || !this.ws) return false;
    this.ws.send(JSON.stringify(cmd));
    return true;
  }
  /** @internal (re)joins a room on the current connection */
  joinNow(room) {
    if (this.ended()) {
      room.want = false;
      room.fail(new CorecastError("closed", `client is ${this.state}`));
      return;
    }
    if (this.state !== "connected" || !room.want || room.joining) return;
    const id = `j${++this.n}`;
    const cmd = room.joinCommand();
    this.sent.set(id, {
      id,
      cmd,
      retry: false,
      publish: false,
      at: Date.now(),
      res: (ack) => {
        room.onJoined(ack);
        this.pump();
      },
      rej: (e) => {
        room.disconnected();
        if (e instanceof CorecastError && RETRY_JOIN.has(e.code)) {
          setTimeout(() => this.joinNow(room), RETRY_JOIN_MS);
        } else if (e instanceof CorecastError && e.code !== "disconnected") {
          room.want = false;
          room.fail(e);
          this.dropQueued(room, e);
        }
      }
    });
    this.ws?.send(JSON.stringify({ ...cmd, id }));
  }
  /** @internal rejects what waits for `room` */
  dropQueued(room, why) {
    for (const q of [...this.queue]) if (q.room === room) this.settle(q, why);
  }
  // ---- the connection --------------------------------------------------
  async open() {
    if (this.ended()) return;
    this.retryAt = 0;
    let token = this.token;
    if (this.o.getToken) {
      const exp = token ? tokenExpiry(token) : void 0;
      if (!token || this.needFresh || exp !== void 0 && exp - Date.now() < 2e3) {
        try {
          token = await this.freshToken();
        } catch (e) {
          if (e instanceof UnauthorizedError) return this.fail(e.message);
          return this.retry(`getToken failed: ${String(e)}`, backoff(this.attempt++, ...this.bounds()));
        }
        if (this.ended()) return;
      }
    }
    this.needFresh = false;
    let ws;
    try {
      ws = new this.WS(this.o.url);
    } catch (e) {
      return this.retry(`cannot connect: ${String(e)}`, backoff(this.attempt++, ...this.bounds()));
    }
    this.ws = ws;
    this.openedAt = this.lastRx = Date.now();
    this.pinged = false;
    this.authId = void 0;
    this.anonWelcome = void 0;
    ws.onopen = () => {
      this.lastRx = Date.now();
      if (token) {
        this.authId = `a${++this.n}`;
        ws.send(JSON.stringify({ type: "auth", id: this.authId, token }));
      }
    };
    ws.onmessage = (e) => {
      if (ws === this.ws && typeof e.data === "string") this.onFrame(e.data);
    };
    ws.onclose = (e) => {
      if (ws === this.ws) this.dropped(e.code, e.reason || `closed (${e.code})`);
    };
    ws.onerror = () => {
    };
  }
  ended() {
    return this.state === "closed" || this.state === "failed";
  }
  bounds() {
    return [this.o.reconnect?.baseMs ?? 500, this.o.reconnect?.maxMs ?? 2e4];
  }
  /** One getToken call shared by every waiter. */
  freshToken() {
    const get = this.o.getToken;
    if (!get) return Promise.resolve(this.token ?? "");
    this.tokenP ?? (this.tokenP = Promise.resolve().then(get).then(
      (t) => {
        this.tokenP = void 0;
        this.token = t;
        return t;
      },
      (e) => {
        this.tokenP = void 0;
        throw e;
      }
    ));
    return this.tokenP;
  }
  onFrame(text) {
    this.lastRx = Date.now();
    this.pinged = false;
    let m;
    try {
      m = JSON.parse(text);
    } catch {
      return;
    }
    const id = m.id === void 0 ? void 0 : String(m.id);
    switch (m.type) {
      case "welcome":
        if (this.authId && id !== this.authId) this.anonWelcome = m;
        else this.connected(m);
        return;
      case "ack":
        if (id && id === this.authId && this.state !== "connected") {
          this.connected({ ...this.anonWelcome, user: m.user });
          return;
        }
        break;
      case "error":
        if (id && id === this.authId && this.state !== "connected") {
          this.drop(4001, `auth refused: ${String(m.message)}`);
          return;
        }
        if (m.code === "token_expired") void this.refresh();
        if (!id || !this.sent.has(id)) {
          this.ev.emit("error", { code: String(m.code), message: String(m.message) });
          return;
        }
        break;
      case "message":
      case "joined":
      case "left":
      case "typing":
        this.rooms.get(m.room)?.onEvent(m);
        return;
      case "presence":
        this.ev.emit("presence", m);
        for (const r of this.rooms.values()) r.onPresence(m);
        return;
      case "direct":
      case "notification":
        this.ev.emit(m.type, m);
        return;
      case "reconnect":
        this.afterMs = Number(m.after_ms) || 0;
        return;
    }
    if (!id) return;
    const req = this.sent.get(id);
    if (!req) return;
    if (m.type === "error") this.settle(req, new CorecastError(String(m.code), String(m.message)));
    else this.settle(req, void 0, m);
  }
  connected(w) {
    this.user = w.user;
    this.session = w.session;
    this.node = w.node;
    this.heartbeatMs = (Number(w.heartbeat) || 25) * 1e3;
    this.refused = 0;
    this.afterMs = -1;
    this.connectedAt = Date.now();
    this.setState("connected", "welcome");
    this.ev.emit("welcome", w);
    if (this.status !== "online") this.sendNow({ type: "presence", status: this.status });
    this.scheduleRefresh();
    for (const r of this.rooms.values()) this.joinNow(r);
    this.pump();
  }
  /** Rejects queued publishes older than `queue.maxAgeMs`. */
  expire() {
    const maxAge = this.o.queue?.maxAgeMs ?? 3e4;
    const now = Date.now();
    for (const q of [...this.queue]) {
      if (q.publish && now - q.at > maxAge) {
        this.settle(q, new CorecastError("expired", `queued longer than ${maxAge} ms`));
      }
    }
  }
  /** Sends every queued request that can go now, in order. */
  pump() {
    this.expire();
    if (this.state !== "connected" || !this.ws) return;
    for (const q of [...this.queue]) {
      if (q.room && q.room.want && !q.room.joined) continue;
      this.queue.splice(this.queue.indexOf(q), 1);
      this.sent.set(q.id, q);
      this.ws.send(JSON.stringify({ ...q.cmd, id: q.id }));
    }
  }
  settle(req, err, v) {
    clearTimeout(req.timer);
    const i = this.queue.indexOf(req);
    if (i >= 0) this.queue.splice(i, 1);
    this.sent.delete(req.id);
    if (err) req.rej(err);
    else req.res(v ?? {});
  }
  /** Gives up on the current socket (liveness, refused auth). */
  drop(code, reason) {
    const ws = this.ws;
    if (!ws) return;
    this.detach(ws);
    this.dropped(code, reason);
  }
  detach(ws) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(1e3);
    } catch {
    }
    if (this.ws === ws) this.ws = null;
  }
  /** The socket is gone: requests in flight go back to the queue (or
   * fail), rooms will rejoin, and the next attempt is scheduled by the
   * close code's rule. */
  dropped(code, reason) {
    if (this.ws) this.detach(this.ws);
    const wasConnected = this.state === "connected";
    const back = [];
    for (const q of this.sent.values()) {
      if (q.retry) back.push(q);
      else q.rej(new CorecastError("disconnected", "connection lost before the reply"));
      if (!q.retry) clearTimeout(q.timer);
    }
    this.sent.clear();
    this.queue.unshift(...back);
    for (const r of this.rooms.values()) r.disconnected();
    if (this.ended()) return;
    let delay;
    if (code === 4001) {
      if (++this.refused >= 2) return this.fail(`authentication refused twice: ${reason}`);
      this.needFresh = true;
      delay = backoff(0, ...this.bounds());
    } else if (this.afterMs >= 0) {
      delay = this.afterMs + backoff(0, ...this.bounds());
    } else if (code === 4009) {
      delay = this.attempt === 0 ? 0 : backoff(this.attempt, ...this.bounds());
      this.attempt++;
    } else {
      delay = backoff(this.attempt++, ...this.bounds());
      if (code === 4008) delay = Math.max(delay, RATE_KICK_WAIT_MS);
    }
    this.afterMs = -1;
    if (!wasConnected && code !== 4001) this.refused = 0;
    this.retry(reason, delay);
  }
  retry(reason, delay) {
    clearTimeout(this.retryTimer);
    this.retryAt = Date.now() + delay;
    this.setState("reconnecting", reason, delay);
    this.retryTimer = setTimeout(() => void this.open(), delay);
  }
  fail(reason) {
    this.end("failed", reason, new CorecastError("unauthorized", reason));
  }
  end(state, reason, err) {
    if (this.ended()) return;
    clearTimeout(this.retryTimer);
    clearInterval(this.tick);
    for (const off of this.hooks.splice(0)) off();
    if (this.ws) this.detach(this.ws);
    this.setState(state, reason);
    for (const q of [...this.sent.values(), ...this.queue]) this.settle(q, err);
    for (const r of this.rooms.values()) {
      r.disconnected();
      r.fail(err);
    }
  }
  setState(current, reason, retryInMs) {
    const previous = this.state;
    if (previous === current && current !== "reconnecting") return;
    this.state = current;
    this.ev.emit("state", { previous, current, reason, retryInMs });
  }
  // ---- tokens ----------------------------------------------------------
  scheduleRefresh() {
    const exp = this.token ? tokenExpiry(this.token) : void 0;
    this.refreshAtMs = this.o.getToken && exp !== void 0 ? refreshAt(exp, Date.now()) : 0;
  }
  /** Fetches a token and sends it in-band (`auth`) on the live connection. */
  async refresh() {
    if (!this.o.getToken || this.state !== "connected") return;
    this.refreshAtMs = 0;
    let token;
    try {
      token = await this.freshToken();
    } catch (e) {
      if (e instanceof UnauthorizedError) return this.fail(e.message);
      this.refreshAtMs = Date.now() + 5e3;
      return;
    }
    try {
      await this.request({ type: "auth", token }, { retry: false });
      this.scheduleRefresh();
    } catch (e) {
      if (this.state === "connected") this.refreshAtMs = Date.now() + 5e3;
      if (e instanceof CorecastError && e.code !== "disconnected") {
        this.ev.emit("error", { code: e.code, message: `token refresh: ${e.message}` });
      }
    }
  }
  // ---- liveness --------------------------------------------------------
  /** Runs every second and on wake-ups; deadlines are wall-clock, so a
   * throttled background tab catches up on its first tick. */
  check() {
    const now = Date.now();
    if (this.queue.length) this.expire();
    if (this.state === "reconnecting" && this.retryAt && now >= this.retryAt && !this.ws) {
      clearTimeout(this.retryTimer);
      void this.open();
      return;
    }
    if (!this.ws) return;
    if (this.state !== "connected") {
      if (now - this.openedAt > CONNECT_TIMEOUT_MS) this.drop(4e3, "connect timed out");
      return;
    }
    if (now - this.connectedAt >= STABLE_MS) this.attempt = 0;
    const idle = now - this.lastRx;
    if (idle > this.heartbeatMs + DEAD_AFTER_MS) {
      this.drop(4e3, `nothing received for ${idle} ms`);
      return;
    }
    if (idle > this.heartbeatMs && !this.pinged) {
      this.pinged = true;
      this.sendNow({ type: "ping" });
    }
    if (this.refreshAtMs && now >= this.refreshAtMs) void this.refresh();
  }
  /** Page lifecycle: coming back online, visible or from the bfcache
   * checks at once (and skips a pending backoff). */
  hook() {
    const g = globalThis;
    const wake = () => {
      if (this.state === "reconnecting" && !this.ws) this.retryAt = Date.now();
      this.check();
    };
    if (g.addEventListener && g.removeEventListener) {
      for (const t of ["online", "pageshow"]) {
        g.addEventListener(t, wake);
        this.hooks.push(() => g.removeEventListener?.(t, wake));
      }
    }
    const d = g.document;
    if (d) {
      d.addEventListener("visibilitychange", wake);
      this.hooks.push(() => d.removeEventListener("visibilitychange", wake));
    }
  }
};
function createClient(o) {
  return new Client(o);
}
