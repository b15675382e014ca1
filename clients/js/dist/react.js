// src/react.ts
import {
  createContext,
  createElement,
  useCallback,
  useContext,
  useEffect,
  useRef,
  useState,
  useSyncExternalStore
} from "react";
var Ctx = createContext(null);
function CorecastProvider(props) {
  return createElement(Ctx.Provider, { value: props.client }, props.children);
}
function useClient() {
  const c = useContext(Ctx);
  if (!c) throw new Error("corecast: useClient() outside <CorecastProvider>");
  return c;
}
function useConnectionState() {
  const client = useClient();
  return useSyncExternalStore(
    useCallback((fn) => client.on("state", fn), [client]),
    () => client.state,
    () => client.state
  );
}
var LEAVE_AFTER_MS = 1e3;
var users = /* @__PURE__ */ new WeakMap();
function acquire(client, name) {
  let m = users.get(client);
  if (!m) users.set(client, m = /* @__PURE__ */ new Map());
  let u = m.get(name);
  if (!u) m.set(name, u = { n: 0 });
  u.n++;
  clearTimeout(u.leave);
  u.leave = void 0;
  const room = client.room(name);
  room.join().catch(() => {
  });
  return room;
}
function release(client, name) {
  const u = users.get(client)?.get(name);
  if (!u || --u.n > 0) return;
  u.leave = setTimeout(() => {
    users.get(client)?.delete(name);
    client.room(name).leave().catch(() => {
    });
  }, LEAVE_AFTER_MS);
}
function useRoom(name) {
  const client = useClient();
  useEffect(() => {
    acquire(client, name);
    return () => release(client, name);
  }, [client, name]);
  return client.room(name);
}
function useReconnects() {
  const client = useClient();
  const [n, setN] = useState(0);
  useEffect(
    () => client.on("state", (s) => {
      if (s.current === "connected") setN((x) => x + 1);
    }),
    [client]
  );
  return n;
}
function useMessages(name, o = {}) {
  const limit = o.limit ?? 100;
  const room = useRoom(name);
  const [list, setList] = useState([]);
  const [reload, setReload] = useState(0);
  useEffect(() => {
    let live = true;
    const merge = (more) => setList((cur) => {
      const epoch = more[more.length - 1]?.epoch;
      const byKey = /* @__PURE__ */ new Map();
      for (const m of [...cur, ...more]) if (m.epoch === epoch) byKey.set(String(m.seq), m);
      return [...byKey.values()].sort((a, b) => a.seq - b.seq).slice(-limit);
    });
    const offMsg = room.on("message", (m) => merge([m]));
    const offGap = room.on("discontinuity", () => setReload((x) => x + 1));
    room.join().then(() => room.history({ limit })).then((h) => {
      if (live && h.length) merge(h);
    }).catch(() => {
    });
    return () => {
      live = false;
      offMsg();
      offGap();
    };
  }, [room, limit, reload]);
  return list;
}
function usePresence(name) {
  const room = useRoom(name);
  const again = useReconnects();
  const [members, setMembers] = useState([]);
  useEffect(() => {
    let live = true;
    const set = (f) => setMembers((cur) => {
      const m = new Map(cur.map((x) => [x.user, x]));
      f(m);
      return [...m.values()].sort((a, b) => a.user < b.user ? -1 : 1);
    });
    const offs = [
      room.on("joined", (e) => set((m) => void m.set(e.user, { user: e.user, name: e.name, status: "online" }))),
      room.on("left", (e) => set((m) => void m.delete(e.user))),
      room.on(
        "presence",
        (e) => set((m) => {
          const x = m.get(e.user);
          if (x) m.set(e.user, { ...x, status: e.status });
        })
      )
    ];
    room.join().then(() => room.members()).then((list) => {
      if (live) setMembers(list);
    }).catch(() => {
    });
    return () => {
      live = false;
      for (const off of offs) off();
    };
  }, [room, again]);
  return members;
}
function useTyping(name) {
  const room = useRoom(name);
  const [typing, setTypingUsers] = useState([]);
  const timers = useRef(/* @__PURE__ */ new Map());
  useEffect(() => {
    const t = timers.current;
    const off = room.on("typing", (e) => {
      clearTimeout(t.get(e.user));
      t.delete(e.user);
      if (e.typing) {
        t.set(
          e.user,
          setTimeout(() => {
            t.delete(e.user);
            setTypingUsers((cur) => cur.filter((u) => u !== e.user));
          }, 6500)
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
  const setTyping = useCallback((on) => room.typing(on), [room]);
  return { typing, setTyping };
}
export {
  CorecastProvider,
  useClient,
  useConnectionState,
  useMessages,
  usePresence,
  useRoom,
  useTyping
};
