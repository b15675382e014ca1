import { type ReactNode } from "react";
import { type Client, type Member, type Message, type Room, type State } from "./index.js";
/** Provides `client` to the hooks below it. */
export declare function CorecastProvider(props: {
    client: Client;
    children?: ReactNode;
}): ReactNode;
/** The provided client. */
export declare function useClient(): Client;
/** The connection state, re-rendering on every change. */
export declare function useConnectionState(): State;
/** The room `name`, joined while a component using it is mounted. */
export declare function useRoom(name: string): Room;
/** The room's latest messages (history, then live), at most `limit`,
 * each seq once, ascending. */
export declare function useMessages(name: string, o?: {
    limit?: number;
}): Message[];
/** The room's members with their presence, kept current from `joined`,
 * `left` and `presence` events (reloaded after each reconnect). */
export declare function usePresence(name: string): Member[];
/** Who else is typing in the room, and a throttled setter for this user. */
export declare function useTyping(name: string): {
    typing: string[];
    setTyping: (on: boolean) => void;
};
