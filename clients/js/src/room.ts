// One room as the client sees it: whether the app wants to be in it, the
// position it delivered up to, and exactly-once, in-order delivery across
// reconnects. It sends nothing itself: the client's request queue does.

import { CorecastError, Emitter, type Listener } from "./util.js";

/** A room's position: the epoch and seq of the last delivered message. */
export interface Position {
  epoch: string;
  seq: number;
}

/** A `message` event. */
export interface Message {
  room: string;
  seq: number;
  epoch: string;
  ts: number;
  from: { user: string; name?: string };
  data: unknown;
}

/** What `join` resolves with. */
export interface JoinResult {
  epoch: string;
  seq: number;
  members: number;
  recovered?: boolean;
}

/** Messages that could not be recovered after a reconnect. */
export interface Discontinuity {
  epochChanged: boolean;
  fromSeq: number;
  toSeq: number;
}

/** A member, as `members()` answers. */
export interface Member {
  user: string;
  name?: string | null;
  status: string;
}

/** What a publish resolves with. */
export interface PublishResult {
  seq: number;
  ts: number;
  duplicate: boolean;
}

/** Options of one publish. */
export interface PublishOptions {
  timeoutMs?: number;
  key?: string;
}

/** Events of a room. */
export interface RoomEvents {
  message: Message;
  discontinuity: Discontinuity;
  joined: { room: string; user: string; name?: string | null };
  left: { room: string; user: string; name?: string | null };
  typing: { room: string; user: string; typing: boolean };
  presence: { user: string; status: string };
}

/** What a room needs from its client. */
export interface Link {
  request(cmd: Record<string, unknown>, o: { room?: Room; retry: boolean; publish?: boolean; timeoutMs?: number }): Promise<Record<string, unknown>>;
  sendNow(cmd: Record<string, unknown>): boolean;
  joinNow(room: Room): void;
  dropQueued(room: Room, why: CorecastError): void;
}

/** Typing is re-sent at most this often while it stays on (the server
 * ends a `true` not refreshed for 6 s). */
const TYPING_EVERY_MS = 3000;

/** A room: the same object for a name on every `client.room()` call. */
export class Room {
  /** @internal the app asked to be a member */
  want = false;
  /** @internal joined on the current connection */
  joined = false;
  /** @internal a join is in flight on the current connection */
  joining = false;
  private pos: Position | null = null;
  private early: Message[] = [];
  private ev = new Emitter<RoomEvents>();
  private waiters: Array<[(r: JoinResult) => void, (e: Error) => void]> = [];
  private last: JoinResult | null = null;
  private typingSent = 0;

  /** @internal */
  constructor(
    readonly name: string,
    private link: Link,
  ) {}

  /** `{epoch, seq}` of the last delivered message (null before the first
   * join). */
  get position(): Position | null {
    return this.pos && { ...this.pos };
  }

  /** Adds a listener; returns its `off`. */
  on<K extends keyof RoomEvents>(event: K, fn: Listener<RoomEvents[K]>): () => void {
    return this.ev.on(event, fn);
  }

  /** Joins (and keeps rejoining with `since` after every reconnect until
   * `leave()`); resolves once joined. */
  join(): Promise<JoinResult> {
    this.want = true;
    if (this.joined && this.last) return Promise.resolve(this.last);
    return new Promise((res, rej) => {
      this.waiters.push([res, rej]);
      this.link.joinNow(this);
    });
  }

  /** Stops rejoining and leaves. */
  async leave(): Promise<void> {
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
  async publish(data: unknown, o: PublishOptions = {}): Promise<PublishResult> {
    const r = await this.link.request(
      { type: "publish", room: this.name, data, key: o.key },
      { room: this, retry: true, publish: true, timeoutMs: o.timeoutMs },
    );
    return { seq: r.seq as number, ts: r.ts as number, duplicate: r.duplicate === true };
  }

  /** A page of history, ascending seq. */
  async history(o: { before?: number; limit?: number } = {}): Promise<Message[]> {
    const r = await this.link.request({ type: "history", room: this.name, ...o }, { room: this, retry: true });
    return r.messages as Message[];
  }

  /** The room's members. */
  async members(): Promise<Member[]> {
    const r = await this.link.request({ type: "members", room: this.name }, { room: this, retry: true });
    return r.users as Member[];
  }

  /** Says whether this user is typing; throttled, dropped while
   * disconnected. */
  typing(on: boolean): void {
    const now = Date.now();
    if (on && this.typingSent && now - this.typingSent < TYPING_EVERY_MS) return;
    if (!on && !this.typingSent) return;
    if (this.joined && this.link.sendNow({ type: "typing", room: this.name, typing: on })) {
      this.typingSent = on ? now : 0;
    }
  }

  // ---- driven by the client -------------------------------------------

  /** @internal the join command for the current connection */
  joinCommand(): Record<string, unknown> {
    this.joining = true;
    this.early = [];
    return { type: "join", room: this.name, since: this.pos ?? undefined };
  }

  /** @internal the connection dropped */
  disconnected(): void {
    this.joined = this.joining = false;
    this.typingSent = 0;
    this.early = [];
  }

  /** @internal the join's ack */
  onJoined(ack: Record<string, unknown>): void {
    const epoch = ack.epoch as string;
    const seq = ack.seq as number;
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
    this.last = { epoch, seq: this.pos?.seq ?? seq, members: ack.members as number, recovered: ack.recovered as boolean | undefined };
    for (const [res] of this.waiters.splice(0)) res(this.last);
  }

  /** @internal the join was refused for good */
  fail(e: Error): void {
    this.joining = false;
    for (const [, rej] of this.waiters.splice(0)) rej(e);
  }

  /** @internal a room event from the server */
  onEvent(m: Record<string, unknown>): void {
    const t = m.type as keyof RoomEvents;
    if (t !== "message") {
      this.ev.emit(t, m as never);
      return;
    }
    if (this.joining) this.early.push(m as unknown as Message);
    else this.deliver(m as unknown as Message);
  }

  /** @internal presence of a user sharing a room with this client */
  onPresence(p: { user: string; status: string }): void {
    if (this.want) this.ev.emit("presence", p);
  }

  /** @internal listeners registered */
  listenerCount(): number {
    return this.ev.listenerCount();
  }

  private deliver(m: Message): void {
    const p = this.pos;
    if (p && m.epoch === p.epoch) {
      if (m.seq <= p.seq) return; // already delivered
      if (m.seq > p.seq + 1) {
        // A gap (never expected): rejoin from the position; the replay
        // brings the missing ones in order.
        this.joined = false;
        this.link.joinNow(this);
        return;
      }
    }
    // Position first: a handler that throws, or rejoins, cannot replay it.
    this.pos = { epoch: m.epoch, seq: m.seq };
    this.ev.emit("message", m);
  }
}
