/** A listener of one event. */
export type Listener<T> = (ev: T) => void;
/** A typed event emitter whose `on` returns the matching `off`. */
export declare class Emitter<M> {
    private l;
    /** Adds `fn` for `event`; call the result to remove it. */
    on<K extends keyof M>(event: K, fn: Listener<M[K]>): () => void;
    /** Calls every listener of `event`; one that throws does not stop the
     * others (its error is rethrown asynchronously, so it is still seen). */
    emit<K extends keyof M>(event: K, ev: M[K]): void;
    /** Listeners registered, over all events (for leak checks). */
    listenerCount(): number;
}
/** An error with the protocol's (or the client's own) error code:
 * server codes (`forbidden`, `rate_limited`, ...) and `queue_full`,
 * `expired`, `timeout`, `disconnected`, `closed`, `left`, `unauthorized`. */
export declare class CorecastError extends Error {
    readonly code: string;
    constructor(code: string, message: string);
}
/** Thrown by `getToken` to say there is no token to be had: the client
 * stops retrying and goes to `failed`. */
export declare class UnauthorizedError extends Error {
    constructor(message?: string);
}
/** Full-jitter exponential backoff: a delay uniformly drawn from
 * `[0, min(maxMs, baseMs * 2^attempt)]`. */
export declare function backoff(attempt: number, baseMs: number, maxMs: number, rnd?: () => number): number;
/** The `exp` claim of a JWT, in ms since the Unix epoch (not verified:
 * only to know when to refresh); undefined when absent or unreadable. */
export declare function tokenExpiry(token: string): number | undefined;
/** When to refresh a token that expires at `expMs`, seen at `nowMs`:
 * ahead of expiry by a fifth of its remaining life, at least 2 s and at
 * most 60 s. */
export declare function refreshAt(expMs: number, nowMs: number): number;
/** A random idempotency key: 16 bytes, base64url (22 characters). */
export declare function newKey(): string;
