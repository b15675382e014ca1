// corecast-client: the JavaScript client of the corecast real-time server.
// The contract is CLIENT.md; README.md says what it does where that is
// silent.

export { Client, createClient } from "./client.js";
export type { ClientEvents, ClientOptions, State, StateChange, Status, WebSocketLike } from "./client.js";
export { Room } from "./room.js";
export type {
  Discontinuity,
  JoinResult,
  Member,
  Message,
  Position,
  PublishOptions,
  PublishResult,
  RoomEvents,
} from "./room.js";
export { CorecastError, UnauthorizedError } from "./util.js";
