export { Client, createClient } from "./client.js";
export type { ClientEvents, ClientOptions, State, StateChange, Status, WebSocketLike } from "./client.js";
export { Room } from "./room.js";
export type { Discontinuity, JoinResult, Member, Message, Position, PublishOptions, PublishResult, RoomEvents, } from "./room.js";
export { CorecastError, UnauthorizedError } from "./util.js";
