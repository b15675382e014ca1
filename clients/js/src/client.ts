// The connection: its state machine, reconnects with backoff, tokens,
// liveness, and the request queue every command goes through (the offline
// queue). Rooms keep their own positions (room.ts).

import { Room, type Link } from "./room.js";
import {
  backoff,
  CorecastError,
  Emitter,
  type Listener,
  newKey,
  refreshAt,
  tokenExpiry,
  UnauthorizedError,
} from "./util.js";

/** Connection states. */
export type State = "connecting" | "connected" | "reconnecting" | "closed" | "failed";

/** Options of `createClient`. */
export interface ClientOptions {
  /** `ws://host:port/ws` */
  url: string;
  /** A static token. */
  token?: string;
  /** Called at each connect and before the token's `exp`; wins over
   * `token`. Throw `UnauthorizedError` to stop for good. */
  getToken?: () => string | Promise<string>;
  /** A WebSocket constructor (Node: the `ws` package's). */
  WebSocket?: WebSocketLike;
  /** Full-jitter backoff bounds, ms. */
  reconnect?: { baseMs?: number; maxMs?: number };
  /** Default for publishes and requests, ms. */
  publishTimeoutMs?: number;
  /** Offline queue bounds. */
  queue?: { max?: number; maxAgeMs?: number };
}

/** The WebSocket surface the client uses (browsers' and `ws`'s). */
export type WebSocketLike = new (url: string) => Socket;
interface Socket {
  readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** A state change. */
export interface StateChange {
  previous: State;
  current: State;
  reason: string;
  retryInMs?: number;
}

/** Events of the client. */
export interface ClientEvents {
  state: StateChange;
  welcome: Record<string, unknown>;
  error: { code: string; message: string };
  direct: { from: string; data: unknown; ts: number };
  notification: { data: unknown; ts: number };
  presence: { user: string; status: string };
}

/** Presence statuses a client may set. */
export type Status = "online" | "away" | "busy";

interface Req {
  id: string;
  cmd: Record<string, unknown>;
  room?: Room;
  retry: boolean;
  publish: boolean;
  at: number;
  timer?: ReturnType<typeof setTimeout>;
  res(v: Record<string, unknown>): void;
  rej(e: Error): void;
}

/** Nothing received for `heartbeat` + this long: the connection is dead. */
const DEAD_AFTER_MS = 10_000;
/** A connection that has not said welcome after this long is given up. */
const CONNECT_TIMEOUT_MS = 15_000;
/** A connection up this long resets the backoff. */
const STABLE_MS = 10_000;
/** Close 4008 (rate limited): wait at least this long. */
const RATE_KICK_WAIT_MS = 10_000;
/** Join refusals worth retrying (after this long). */
const RETRY_JOIN_MS = 1_000;
const RETRY_JOIN = new Set(["unavailable", "overloaded", "rate_limited", "internal"]);

/** A corecast client: connects at once and keeps connecting until
 * `close()`. */
export class Client implements Link {
  state: State = "connecting";
  user?: string;
  session?: string;
  node?: string;

  private o: Required<Pick<ClientOptions, "url">> & ClientOptions;
  private WS: WebSocketLike;
  private ws: Socket | null = null;
  private ev = new Emitter<ClientEvents>();
  private rooms = new Map<string, Room>();
  private queue: Req[] = [];
  private sent = new Map<string, Req>();
  private n = 0;
  private attempt = 0;
  private token?: string;
  private tokenP?: Promise<string>;
  private needFresh = false;
  private authId?: string;
  private anonWelcome?: Record<string, unknown>;
  private refused = 0;
  private status: Status = "online";
  private heartbeatMs = 25_000;
  private lastRx = 0;
  private pinged = false;
  private openedAt = 0;
  private connectedAt = 0;
  private retryAt = 0;
  private refreshAtMs = 0;
  private afterMs = -1;
  private retryTimer?: ReturnType<typeof setTimeout>;
  private tick?: ReturnType<typeof setInterval>;
  private hooks: Array<() => void> = [];

  constructor(o: ClientOptions) {
    this.o = o;
    const WS = o.WebSocket ?? (globalThis as { WebSocket?: WebSocketLike }).WebSocket;
    if (!WS) throw new Error("corecast: no WebSocket; pass the `ws` package's as options.WebSocket");
    this.WS = WS;
    this.token = o.token;
    this.tick = setInterval(() => this.check(), 1000);
    this.hook();
    void this.open();
  }

  /** Adds a listener; returns its `off`. */
  on<K extends keyof ClientEvents>(event: K, fn: Listener<ClientEvents[K]>): () => void {
    return this.ev.on(event, fn);
  }

  /** The room named `name` (the same object on every call). */
  room(name: string): Room {
    let r = this.rooms.get(name);
    if (!r) this.rooms.set(name, (r = new Room(name, this)));
    return r;
  }

  /** Sets this user's presence status; re-sent after every reconnect. */
  setStatus(status: Status): void {
    this.status = status;
    this.sendNow({ type: "presence", status });
  }

  /** Sends `data` to every connection of `user`. */
  async direct(user: string, data: unknown): Promise<{ delivered: number }> {
    const r = await this.request({ type: "direct", to: user, data }, { retry: false });
    return { delivered: r.delivered as number };
  }

  /** Round trip to the server, ms. */
  async ping(): Promise<number> {
    const t = Date.now();
    await this.request({ type: "ping" }, { retry: true });
    return Date.now() - t;
  }

  /** Closes for good; pending promises reject with `closed`. */
  close(): void {
    this.end("closed", "closed by the application", new CorecastError("closed", "client closed"));
  }

  /** Listeners, timers and sockets held (for leak checks). */
  resources(): { listeners: number; pending: number; socket: boolean } {
    let listeners = this.ev.listenerCount();
    for (const r of this.rooms.values()) listeners += r.listenerCount();
    return { listeners, pending: this.queue.length + this.sent.size, socket: this.ws !== null };
  }

  // ---- Link (for rooms) ------------------------------------------------

  /** @internal */
  request(
    cmd: Record<string, unknown>,
    o: { room?: Room; retry: boolean; publish?: boolean; timeoutMs?: number },
  ): Promise<Record<string, unknown>> {
    return new Promise((res, rej) => {
      if (this.ended()) {
        rej(new CorecastError("closed", `client is ${this.state}`));
        return;
      }
      const publish = o.publish === true;
      if (publish) {
        cmd.key ??= newKey();
        const max = this.o.queue?.max ?? 100;
        if (this.queue.filter((q) => q.publish).length >= max) {
          rej(new CorecastError("queue_full", `offline queue is full (${max})`));
          return;
        }
      }
      const req: Req = { id: `r${++this.n}`, cmd, room: o.room, retry: o.retry, publish, at: Date.now(), res, rej };
      const ms = o.timeoutMs ?? this.o.publishTimeoutMs ?? 10_000;
      req.timer = setTimeout(() => this.settle(req, new CorecastError("timeout", `no reply within ${ms} ms`)), ms);
      this.queue.push(req);
      this.pump();
    });
  }

  /** @internal sends at once if connected; false when not sent */
  sendNow(cmd: Record<string, unknown>): boolean {
    if (this.state !== "connected" || !this.ws) return false;
    this.ws.send(JSON.stringify(cmd));
    return true;
  }

  /** @internal (re)joins a room on the current connection */
  joinNow(room: Room): void {
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
      },
    });
    this.ws?.send(JSON.stringify({ ...cmd, id }));
  }

  /** @internal rejects what waits for `room` */
  dropQueued(room: Room, why: CorecastError): void {
    for (const q of [...this.queue]) if (q.room === room) this.settle(q, why);
  }

  // ---- the connection --------------------------------------------------

  private async open(): Promise<void> {
    if (this.ended()) return;
    this.retryAt = 0;
    let token = this.token;
    if (this.o.getToken) {
      const exp = token ? tokenExpiry(token) : undefined;
      if (!token || this.needFresh || (exp !== undefined && exp - Date.now() < 2000)) {
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
    let ws: Socket;
    try {
      ws = new this.WS(this.o.url);
    } catch (e) {
      return this.retry(`cannot connect: ${String(e)}`, backoff(this.attempt++, ...this.bounds()));
    }
    this.ws = ws;
    this.openedAt = this.lastRx = Date.now();
    this.pinged = false;
    this.authId = undefined;
    this.anonWelcome = undefined;
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
    ws.onerror = () => {};
  }

  private ended(): boolean {
    return this.state === "closed" || this.state === "failed";
  }

  private bounds(): [number, number] {
    return [this.o.reconnect?.baseMs ?? 500, this.o.reconnect?.maxMs ?? 20_000];
  }

  /** One getToken call shared by every waiter. */
  private freshToken(): Promise<string> {
    const get = this.o.getToken;
    if (!get) return Promise.resolve(this.token ?? "");
    this.tokenP ??= Promise.resolve()
      .then(get)
      .then(
        (t) => {
          this.tokenP = undefined;
          this.token = t;
          return t;
        },
        (e: unknown) => {
          this.tokenP = undefined;
          throw e;
        },
      );
    return this.tokenP;
  }

  private onFrame(text: string): void {
    this.lastRx = Date.now();
    this.pinged = false;
    let m: Record<string, unknown>;
    try {
      m = JSON.parse(text) as Record<string, unknown>;
    } catch {
      return;
    }
    const id = m.id === undefined ? undefined : String(m.id);
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
        this.rooms.get(m.room as string)?.onEvent(m);
        return;
      case "presence":
        this.ev.emit("presence", m as never);
        for (const r of this.rooms.values()) r.onPresence(m as never);
        return;
      case "direct":
      case "notification":
        this.ev.emit(m.type, m as never);
        return;
      case "reconnect":
        this.afterMs = Number(m.after_ms) || 0;
        return;
    }
    if (!id) return;
    const req = this.sent.get(id);
    if (!req) return;
    if (m.type === "error") this.settle(req, new CorecastError(String(m.code), String(m.message)));
    else this.settle(req, undefined, m);
  }

  private connected(w: Record<string, unknown>): void {
    this.user = w.user as string | undefined;
    this.session = w.session as string | undefined;
    this.node = w.node as string | undefined;
    this.heartbeatMs = (Number(w.heartbeat) || 25) * 1000;
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
  private expire(): void {
    const maxAge = this.o.queue?.maxAgeMs ?? 30_000;
    const now = Date.now();
    for (const q of [...this.queue]) {
      if (q.publish && now - q.at > maxAge) {
        this.settle(q, new CorecastError("expired", `queued longer than ${maxAge} ms`));
      }
    }
  }

  /** Sends every queued request that can go now, in order. */
  private pump(): void {
    this.expire();
    if (this.state !== "connected" || !this.ws) return;
    for (const q of [...this.queue]) {
      if (q.room && q.room.want && !q.room.joined) continue;
      this.queue.splice(this.queue.indexOf(q), 1);
      this.sent.set(q.id, q);
      this.ws.send(JSON.stringify({ ...q.cmd, id: q.id }));
    }
  }

  private settle(req: Req, err?: Error, v?: Record<string, unknown>): void {
    clearTimeout(req.timer);
    const i = this.queue.indexOf(req);
    if (i >= 0) this.queue.splice(i, 1);
    this.sent.delete(req.id);
    if (err) req.rej(err);
    else req.res(v ?? {});
  }

  /** Gives up on the current socket (liveness, refused auth). */
  private drop(code: number, reason: string): void {
    const ws = this.ws;
    if (!ws) return;
    this.detach(ws);
    this.dropped(code, reason);
  }

  private detach(ws: Socket): void {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(1000);
    } catch {
      // already closed
    }
    if (this.ws === ws) this.ws = null;
  }

  /** The socket is gone: requests in flight go back to the queue (or
   * fail), rooms will rejoin, and the next attempt is scheduled by the
   * close code's rule. */
  private dropped(code: number, reason: string): void {
    if (this.ws) this.detach(this.ws);
    const wasConnected = this.state === "connected";
    const back: Req[] = [];
    for (const q of this.sent.values()) {
      if (q.retry) back.push(q);
      else q.rej(new CorecastError("disconnected", "connection lost before the reply"));
      if (!q.retry) clearTimeout(q.timer);
    }
    this.sent.clear();
    this.queue.unshift(...back);
    for (const r of this.rooms.values()) r.disconnected();
    if (this.ended()) return;
    let delay: number;
    if (code === 4001) {
      if (++this.refused >= 2) return this.fail(`authentication refused twice: ${reason}`);
      this.needFresh = true;
      delay = backoff(0, ...this.bounds());
    } else if (this.afterMs >= 0) {
      delay = this.afterMs + backoff(0, ...this.bounds());
    } else if (code === 4009) {
      // At once; but a 4009 again before the connection stayed up 10 s
      // means the server keeps finding this client too slow: back off.
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

  private retry(reason: string, delay: number): void {
    clearTimeout(this.retryTimer);
    this.retryAt = Date.now() + delay;
    this.setState("reconnecting", reason, delay);
    this.retryTimer = setTimeout(() => void this.open(), delay);
  }

  private fail(reason: string): void {
    this.end("failed", reason, new CorecastError("unauthorized", reason));
  }

  private end(state: State, reason: string, err: CorecastError): void {
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

  private setState(current: State, reason: string, retryInMs?: number): void {
    const previous = this.state;
    if (previous === current && current !== "reconnecting") return;
    this.state = current;
    this.ev.emit("state", { previous, current, reason, retryInMs });
  }

  // ---- tokens ----------------------------------------------------------

  private scheduleRefresh(): void {
    const exp = this.token ? tokenExpiry(this.token) : undefined;
    this.refreshAtMs = this.o.getToken && exp !== undefined ? refreshAt(exp, Date.now()) : 0;
  }

  /** Fetches a token and sends it in-band (`auth`) on the live connection. */
  private async refresh(): Promise<void> {
    if (!this.o.getToken || this.state !== "connected") return;
    this.refreshAtMs = 0;
    let token: string;
    try {
      token = await this.freshToken();
    } catch (e) {
      if (e instanceof UnauthorizedError) return this.fail(e.message);
      this.refreshAtMs = Date.now() + 5000;
      return;
    }
    try {
      await this.request({ type: "auth", token }, { retry: false });
      this.scheduleRefresh();
    } catch (e) {
      // Refused or lost: try again soon; at expiry the server closes with
      // 4001 and the reconnect fetches a fresh token anyway.
      if (this.state === "connected") this.refreshAtMs = Date.now() + 5000;
      if (e instanceof CorecastError && e.code !== "disconnected") {
        this.ev.emit("error", { code: e.code, message: `token refresh: ${e.message}` });
      }
    }
  }

  // ---- liveness --------------------------------------------------------

  /** Runs every second and on wake-ups; deadlines are wall-clock, so a
   * throttled background tab catches up on its first tick. */
  private check(): void {
    const now = Date.now();
    if (this.queue.length) this.expire();
    if (this.state === "reconnecting" && this.retryAt && now >= this.retryAt && !this.ws) {
      clearTimeout(this.retryTimer);
      void this.open();
      return;
    }
    if (!this.ws) return;
    if (this.state !== "connected") {
      if (now - this.openedAt > CONNECT_TIMEOUT_MS) this.drop(4000, "connect timed out");
      return;
    }
    if (now - this.connectedAt >= STABLE_MS) this.attempt = 0;
    const idle = now - this.lastRx;
    if (idle > this.heartbeatMs + DEAD_AFTER_MS) {
      this.drop(4000, `nothing received for ${idle} ms`);
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
  private hook(): void {
    const g = globalThis as unknown as {
      addEventListener?: (t: string, f: () => void) => void;
      removeEventListener?: (t: string, f: () => void) => void;
      document?: { addEventListener(t: string, f: () => void): void; removeEventListener(t: string, f: () => void): void };
    };
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
}

/** Creates a client; it connects at once. */
export function createClient(o: ClientOptions): Client {
  return new Client(o);
}
