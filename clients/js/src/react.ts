// React bindings (corecast-client/react): a provider for one client and
// hooks over it. Joins are reference-counted per client and room, and a
// leave waits a moment after the last unmount, so StrictMode's
// mount-unmount-mount neither leaves nor rejoins.

import {
  createContext,
  createElement,
  type ReactNode,
  useCallback,
  useContext,
  useEffect,
  useRef,
  useState,
  useSyncExternalStore,
} from "react";
import { type Client, type Member, type Message, type Room, type State } from "./index.js";

const Ctx = createContext<Client | null>(null);

/** Provides `client` to the hooks below it. */
export function CorecastProvider(props: { client: Client; children?: ReactNode }): ReactNode {
  return createElement(Ctx.Provider, { value: props.client }, props.children);
}

/** The provided client. */
export function useClient(): Client {
  const c = useContext(Ctx);
  if (!c) throw new Error("corecast: useClient() outside <CorecastProvider>");
  return c;
}

/** The connection state, re-rendering on every change. */
export function useConnectionState(): State {
  const client = useClient();
  return useSyncExternalStore(
    useCallback((fn: () => void) => client.on("state", fn), [client]),
    () => client.state,
    () => client.state,
  );
}

/** A leave waits this long after the last user of a room unmounts. */
const LEAVE_AFTER_MS = 1000;
const users = new WeakMap<Client, Map<string, { n: number; leave?: ReturnType<typeof setTimeout> }>>();

function acquire(client: Client, name: string): Room {
  let m = users.get(client);
  if (!m) users.set(client, (m = new Map()));
  let u = m.get(name);
  if (!u) m.set(name, (u = { n: 0 }));
  u.n++;
  clearTimeout(u.leave);
  u.leave = undefined;
  const room = client.room(name);
  room.join().catch(() => {});
  return room;
}

function release(client: Client, name: string): void {
  const u = users.get(client)?.get(name);
  if (!u || --u.n > 0) return;
  u.leave = setTimeout(() => {
    users.get(client)?.delete(name);
    client
      .room(name)
      .leave()
      .catch(() => {});
  }, LEAVE_AFTER_MS);
}

/** The room `name`, joined while a component using it is mounted. */
export function useRoom(name: string): Room {
  const client = useClient();
  useEffect(() => {
    acquire(client, name);
    return () => release(client, name);
  }, [client, name]);
  return client.room(name);
}

/** Re-renders when the connection comes back (to reload what it feeds). */
function useReconnects(): number {
  const client = useClient();
  const [n, setN] = useState(0);
  useEffect(
    () =>
      client.on("state", (s) => {
        if (s.current === "connected") setN((x) => x + 1);
      }),
    [client],
  );
  return n;
}

/** The room's latest messages (history, then live), at most `limit`,
 * each seq once, ascending. */
export function useMessages(name: string, o: { limit?: number } = {}): Message[] {
  const limit = o.limit ?? 100;
  const room = useRoom(name);
  const [list, setList] = useState<Message[]>([]);
  const [reload, setReload] = useState(0);
  useEffect(() => {
    let live = true;
    const merge = (more: Message[]) =>
      setList((cur) => {
        const epoch = more[more.length - 1]?.epoch;
        const byKey = new Map<string, Message>();
        for (const m of [...cur, ...more]) if (m.epoch === epoch) byKey.set(String(m.seq), m);
        return [...byKey.values()].sort((a, b) => a.seq - b.seq).slice(-limit);
      });
    const offMsg = room.on("message", (m) => merge([m]));
    const offGap = room.on("discontinuity", () => setReload((x) => x + 1));
    room
      .join()
      .then(() => room.history({ limit }))
      .then((h) => {
        if (live && h.length) merge(h);
      })
      .catch(() => {});
    return () => {
      live = false;
      offMsg();
      offGap();
    };
  }, [room, limit, reload]);
  return list;
}

/** The room's members with their presence, kept current from `joined`,
 * `left` and `presence` events (reloaded after each reconnect). */
export function usePresence(name: string): Member[] {
  const room = useRoom(name);
  const again = useReconnects();
  const [members, setMembers] = useState<Member[]>([]);
  useEffect(() => {
    let live = true;
    const set = (f: (m: Map<string, Member>) => void) =>
      setMembers((cur) => {
        const m = new Map(cur.map((x) => [x.user, x]));
        f(m);
        return [...m.values()].sort((a, b) => (a.user < b.user ? -1 : 1));
      });
    const offs = [
      room.on("joined", (e) => set((m) => void m.set(e.user, { user: e.user, name: e.name, status: "online" }))),
      room.on("left", (e) => set((m) => void m.delete(e.user))),
      room.on("presence", (e) =>
        set((m) => {
          const x = m.get(e.user);
          if (x) m.set(e.user, { ...x, status: e.status });
        }),
      ),
    ];
    room
      .join()
      .then(() => room.members())
      .then((list) => {
        if (live) setMembers(list);
      })
      .catch(() => {});
    return () => {
      live = false;
      for (const off of offs) off();
    };
  }, [room, again]);
  return members;
}

/** Who else is typing in the room, and a throttled setter for this user. */
export function useTyping(name: string): { typing: string[]; setTyping: (on: boolean) => void } {
  const room = useRoom(name);
  const [typing, setTypingUsers] = useState<string[]>([]);
  const timers = useRef(new Map<string, ReturnType<typeof setTimeout>>());
  useEffect(() => {
    const t = timers.current;
    const off = room.on("typing", (e) => {
      clearTimeout(t.get(e.user));
      t.delete(e.user);
      if (e.typing) {
        // The server ends a typing not refreshed for 6 s; so does this.
        t.set(
          e.user,
          setTimeout(() => {
            t.delete(e.user);
            setTypingUsers((cur) => cur.filter((u) => u !== e.user));
          }, 6500),
        );
      }
      setTypingUsers((cur) => {
        const rest = cur.filter((u) => u !== e.user);
        return e.typing ? [...rest, e.user] : rest;
      });
    });
    return () => {
      off();
      for (const x of t.values()) clearTimeout(x);
      t.clear();
    };
  }, [room]);
  const setTyping = useCallback((on: boolean) => room.typing(on), [room]);
  return { typing, setTyping };
}
