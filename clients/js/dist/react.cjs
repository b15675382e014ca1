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

// src/react.ts
var react_exports = {};
__export(react_exports, {
  CorecastProvider: () => CorecastProvider,
  useClient: () => useClient,
  useConnectionState: () => useConnectionState,
  useMessages: () => useMessages,
  usePresence: () => usePresence,
  useRoom: () => useRoom,
  useTyping: () => useTyping
});
module.exports = __toCommonJS(react_exports);
var import_react = require("react");
var Ctx = (0, import_react.createContext)(null);
function CorecastProvider(props) {
  return (0, import_react.createElement)(Ctx.Provider, { value: props.client }, props.children);
}
function useClient() {
  const c = (0, import_react.useContext)(Ctx);
  if (!c) throw new Error("corecast: useClient() outside <CorecastProvider>");
  return c;
}
function useConnectionState() {
  const client = useClient();
  return (0, import_react.useSyncExternalStore)(
    (0, import_react.useCallback)((fn) => client.on("state", fn), [client]),
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
  (0, import_react.useEffect)(() => {
    acquire(client, name);
    return () => release(client, name);
  }, [client, name]);
  return client.room(name);
}
function useReconnects() {
  const client = useClient();
  const [n, setN] = (0, import_react.useState)(0);
  (0, import_react.useEffect)(
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
  const [list, setList] = (0, import_react.useState)([]);
  const [reload, setReload] = (0, import_react.useState)(0);
  (0, import_react.useEffect)(() => {
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
  const [members, setMembers] = (0, import_react.useState)([]);
  (0, import_react.useEffect)(() => {
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
  const [typing, setTypingUsers] = (0, import_react.useState)([]);
  const timers = (0, import_react.useRef)(/* @__PURE__ */ new Map());
  (0, import_react.useEffect)(() => {
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
  const setTyping = (0, import_react.useCallback)((on) => room.typing(on), [room]);
  return { typing, setTyping };
}
