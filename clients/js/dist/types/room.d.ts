import { CorecastError, type Listener } from "./util.js";
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
    from: {
        user: string;
        name?: string;
    };
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
    joined: {
        room: string;
        user: string;
        name?: string | null;
    };
    left: {
        room: string;
        user: string;
        name?: string | null;
    };
    typing: {
        room: string;
        user: string;
        typing: boolean;
    };
    presence: {
        user: string;
        status: string;
    };
}
/** What a room needs from its client. */
export interface Link {
    request(cmd: Record<string, unknown>, o: {
        room?: Room;
        retry: boolean;
        publish?: boolean;
        timeoutMs?: number;
    }): Promise<Record<string, unknown>>;
    sendNow(cmd: Record<string, unknown>): boolean;
    joinNow(room: Room): void;
    dropQueued(room: Room, why: CorecastError): void;
}
/** A room: the same object for a name on every `client.room()` call. */
export declare class Room {
    readonly name: string;
    private link;
    /** @internal the app asked to be a member */
    want: boolean;
    /** @internal joined on the current connection */
    joined: boolean;
    /** @internal a join is in flight on the current connection */
    joining: boolean;
    private pos;
    private early;
    private ev;
    private waiters;
    private last;
    private typingSent;
    /** @internal */
    constructor(name: string, link: Link);
    /** `{epoch, seq}` of the last delivered message (null before the first
     * join). */
    get position(): Position | null;
    /** Adds a listener; returns its `off`. */
    on<K extends keyof RoomEvents>(event: K, fn: Listener<RoomEvents[K]>): () => void;
    /** Joins (and keeps rejoining with `since` after every reconnect until
     * `leave()`); resolves once joined. */
    join(): Promise<JoinResult>;
    /** Stops rejoining and leaves. */
    leave(): Promise<void>;
    /** Publishes `data`; resolves with its `seq` once the server sequenced
     * it. Waits in the offline queue while disconnected; carries an
     * idempotency key, so a publish resent after a reconnect is stored
     * once. */
    publish(data: unknown, o?: PublishOptions): Promise<PublishResult>;
    /** A page of history, ascending seq. */
    history(o?: {
        before?: number;
        limit?: number;
    }): Promise<Message[]>;
    /** The room's members. */
    members(): Promise<Member[]>;
    /** Says whether this user is typing; throttled, dropped while
     * disconnected. */
    typing(on: boolean): void;
    /** @internal the join command for the current connection */
    joinCommand(): Record<string, unknown>;
    /** @internal the connection dropped */
    disconnected(): void;
    /** @internal the join's ack */
    onJoined(ack: Record<string, unknown>): void;
    /** @internal the join was refused for good */
    fail(e: Error): void;
    /** @internal a room event from the server */
    onEvent(m: Record<string, unknown>): void;
    /** @internal presence of a user sharing a room with this client */
    onPresence(p: {
        user: string;
        status: string;
    }): void;
    /** @internal listeners registered */
    listenerCount(): number;
    private deliver;
}
