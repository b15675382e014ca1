// Small pieces the client is made of: a typed event emitter, the error
// types, the backoff rule, JWT expiry and idempotency keys. Nothing here
// touches sockets or timers.

/** A listener of one event. */
export type Listener<T> = (ev: T) => void;

/** A typed event emitter whose `on` returns the matching `off`. */
export class Emitter<M> {
  private l = new Map<keyof M, Set<Listener<never>>>();

  /** Adds `fn` for `event`; call the result to remove it. */
  on<K extends keyof M>(event: K, fn: Listener<M[K]>): () => void {
    let set = this.l.get(event);
    if (!set) this.l.set(event, (set = new Set()));
    set.add(fn as Listener<never>);
    return () => {
      set.delete(fn as Listener<never>);
      if (!set.size) this.l.delete(event);
    };
  }

  /** Calls every listener of `event`; one that throws does not stop the
   * others (its error is rethrown asynchronously, so it is still seen). */
  emit<K extends keyof M>(event: K, ev: M[K]): void {
    const set = this.l.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        (fn as Listener<M[K]>)(ev);
      } catch (e) {
        setTimeout(() => {
          throw e;
        }, 0);
      }
    }
  }

  /** Listeners registered, over all events (for leak checks). */
  listenerCount(): number {
    let n = 0;
    for (const s of this.l.values()) n += s.size;
    return n;
  }
}

/** An error with the protocol's (or the client's own) error code:
 * server codes (`forbidden`, `rate_limited`, ...) and `queue_full`,
 * `expired`, `timeout`, `disconnected`, `closed`, `left`, `unauthorized`. */
export class CorecastError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "CorecastError";
  }
}

/** Thrown by `getToken` to say there is no token to be had: the client
 * stops retrying and goes to `failed`. */
export class UnauthorizedError extends Error {
  constructor(message = "unauthorized") {
    super(message);
    this.name = "UnauthorizedError";
  }
}

/** Full-jitter exponential backoff: a delay uniformly drawn from
 * `[0, min(maxMs, baseMs * 2^attempt)]`. */
export function backoff(attempt: number, baseMs: number, maxMs: number, rnd = Math.random): number {
  return Math.floor(rnd() * Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30)));
}

/** The `exp` claim of a JWT, in ms since the Unix epoch (not verified:
 * only to know when to refresh); undefined when absent or unreadable. */
export function tokenExpiry(token: string): number | undefined {
  try {
    const part = token.split(".")[1];
    if (!part) return undefined;
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
    const exp = (JSON.parse(json) as { exp?: unknown }).exp;
    return typeof exp === "number" ? exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

/** When to refresh a token that expires at `expMs`, seen at `nowMs`:
 * ahead of expiry by a fifth of its remaining life, at least 2 s and at
 * most 60 s. */
export function refreshAt(expMs: number, nowMs: number): number {
  const left = expMs - nowMs;
  return nowMs + Math.max(0, left - Math.min(60_000, Math.max(2_000, left / 5)));
}

/** A random idempotency key: 16 bytes, base64url (22 characters). */
export function newKey(): string {
  const b = new Uint8Array(16);
  const c = (globalThis as { crypto?: { getRandomValues?(a: Uint8Array): Uint8Array } }).crypto;
  if (c?.getRandomValues) c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  let s = "";
  for (const x of b) s += String.fromCharCode(x);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}
