import { Room, type Link } from "./room.js";
import { CorecastError, type Listener } from "./util.js";
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
    reconnect?: {
        baseMs?: number;
        maxMs?: number;
    };
    /** Default for publishes and requests, ms. */
    publishTimeoutMs?: number;
    /** Offline queue bounds. */
    queue?: {
        max?: number;
        maxAgeMs?: number;
    };
}
/** The WebSocket surface the client uses (browsers' and `ws`'s). */
export type WebSocketLike = new (url: string) => Socket;
interface Socket {
    readyState: number;
    onopen: ((ev: unknown) => void) | null;
    onmessage: ((ev: {
        data: unknown;
    }) => void) | null;
    onclose: ((ev: {
        code: number;
        reason: string;
    }) => void) | null;
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
    error: {
        code: string;
        message: string;
    };
    direct: {
        from: string;
        data: unknown;
        ts: number;
    };
    notification: {
        data: unknown;
        ts: number;
    };
    presence: {
        user: string;
        status: string;
    };
}
/** Presence statuses a client may set. */
export type Status = "online" | "away" | "busy";
/** A corecast client: connects at once and keeps connecting until
 * `close()`. */
export declare class Client implements Link {
    state: State;
    user?: string;
    session?: string;
    node?: string;
    private o;
    private WS;
    private ws;
    private ev;
    private rooms;
    private queue;
    private sent;
    private n;
    private attempt;
    private token?;
    private tokenP?;
    private needFresh;
    private authId?;
    private anonWelcome?;
    private refused;
    private status;
    private heartbeatMs;
    private lastRx;
    private pinged;
    private openedAt;
    private connectedAt;
    private retryAt;
    private refreshAtMs;
    private afterMs;
    private retryTimer?;
    private tick?;
    private hooks;
    constructor(o: ClientOptions);
    /** Adds a listener; returns its `off`. */
    on<K extends keyof ClientEvents>(event: K, fn: Listener<ClientEvents[K]>): () => void;
    /** The room named `name` (the same object on every call). */
    room(name: string): Room;
    /** Sets this user's presence status; re-sent after every reconnect. */
    setStatus(status: Status): void;
    /** Sends `data` to every connection of `user`. */
    direct(user: string, data: unknown): Promise<{
        delivered: number;
    }>;
    /** Round trip to the server, ms. */
    ping(): Promise<number>;
    /** Closes for good; pending promises reject with `closed`. */
    close(): void;
    /** Listeners, timers and sockets held (for leak checks). */
    resources(): {
        listeners: number;
        pending: number;
        socket: boolean;
    };
    /** @internal */
    request(cmd: Record<string, unknown>, o: {
        room?: Room;
        retry: boolean;
        publish?: boolean;
        timeoutMs?: number;
    }): Promise<Record<string, unknown>>;
    /** @internal sends at once if connected; false when not sent */
    sendNow(cmd: Record<string, unknown>): boolean;
    /** @internal (re)joins a room on the current connection */
    joinNow(room: Room): void;
    /** @internal rejects what waits for `room` */
    dropQueued(room: Room, why: CorecastError): void;
    private open;
    private ended;
    private bounds;
    /** One getToken call shared by every waiter. */
    private freshToken;
    private onFrame;
    private connected;
    /** Rejects queued publishes older than `queue.maxAgeMs`. */
    private expire;
    /** Sends every queued request that can go now, in order. */
    private pump;
    private settle;
    /** Gives up on the current socket (liveness, refused auth). */
    private drop;
    private detach;
    /** The socket is gone: requests in flight go back to the queue (or
     * fail), rooms will rejoin, and the next attempt is scheduled by the
     * close code's rule. */
    private dropped;
    private retry;
    private fail;
    private end;
    private setState;
    private scheduleRefresh;
    /** Fetches a token and sends it in-band (`auth`) on the live connection. */
    private refresh;
    /** Runs every second and on wake-ups; deadlines are wall-clock, so a
     * throttled background tab catches up on its first tick. */
    private check;
    /** Page lifecycle: coming back online, visible or from the bfcache
     * checks at once (and skips a pending backoff). */
    private hook;
}
/** Creates a client; it connects at once. */
export declare function createClient(o: ClientOptions): Client;
export {};
