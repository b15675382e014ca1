//! The HTTP API (`/api/*`) and `/metrics`, served by the core loop that
//! accepted the request.
//!
//! A request is authenticated with `Authorization: Bearer <api key>`
//! (`auth.api_keys`), rate limited per core (`api.rate_per_sec`), and its
//! bounded JSON body (`api.max_body`) parsed with serde_json — these are
//! control-plane requests, not the hot path. Anything that needs the
//! engine (a room, a user, every connection) becomes an engine command
//! like a WebSocket command's, and every core's counters are gathered over
//! the bus; the connection waits in [`Then::Waiting`] and is answered by an
//! [`Event::HttpReply`](crate::engine::Event::HttpReply) or a finished
//! gathering, so the loop never blocks. This module must not hold state of
//! its own beyond the request it is answering.

use super::agg::AggTarget;
use super::conn::{Conn, State, Then};
use super::http::{self, error_response, json_response};
use super::{Core, outq};
use crate::engine::{Answer, Command, ConnRef, ReplyTo};
use crate::proto::event::{self, Event};
use crate::proto::ratelimit::Verdict;
use bytes::Bytes;
use serde_json::Value;
use std::sync::Arc;

/// Most users one `/api/notify` may name.
const MAX_NOTIFY_USERS: usize = 10_000;

impl Core {
    /// Routes an `/api/*` request (body complete).
    pub(super) fn api_request(&mut self, key: usize, req: &http::Request, body: &[u8]) {
        self.metrics.api_requests += 1;
        let Some(generation) = self.conns.get(key).map(|c| c.generation) else {
            return;
        };
        let conn = ConnRef {
            key: key as u32,
            generation,
        };
        if let Err((status, code, msg)) = self.api_admit(req) {
            return self.http_error(key, status, code, &msg);
        }
        let path = req.path.as_str();
        let method = req.method.as_str();
        let routes: &[(&str, &str)] = &[
            ("/api/publish", "POST"),
            ("/api/notify", "POST"),
            ("/api/broadcast", "POST"),
            ("/api/stats", "GET"),
            ("/api/tokens", "POST"),
        ];
        let room_path = path.strip_prefix("/api/rooms/");
        let allowed = match room_path {
            Some(_) => "GET",
            None => match routes.iter().find(|(p, _)| *p == path) {
                Some((_, m)) => m,
                None => return self.http_error(key, 404, "not_found", "no such API route"),
            },
        };
        if method != allowed {
            let resp = error_response(
                405,
                "method_not_allowed",
                &format!("use {allowed}"),
                &[("allow", allowed)],
            );
            self.metrics.http_error(405);
            return self.respond(key, resp, Then::Close);
        }
        if let Some(room) = room_path {
            let room = percent_decode(room);
            if !crate::proto::valid_room(&room) {
                return self.http_error(key, 400, "invalid_room", "invalid room name");
            }
            let room: Arc<str> = room.into();
            self.wait(key);
            let answer = Answer::Http {
                core: self.id,
                conn,
            };
            return self.submit(Command::Members {
                room,
                id: None,
                answer,
            });
        }
        if path == "/api/stats" {
            self.wait(key);
            return self.gather_stats(conn, false, false);
        }
        let v: Value = match serde_json::from_slice(body) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                return self.http_error(key, 400, "bad_json", "the body must be a JSON object");
            }
            Err(e) => {
                return self.http_error(key, 400, "bad_json", &format!("invalid JSON body: {e}"));
            }
        };
        match path {
            "/api/publish" => self.api_publish(key, conn, &v),
            "/api/notify" => self.api_notify(key, conn, &v),
            "/api/broadcast" => self.api_broadcast(key, conn, &v),
            "/api/tokens" => self.api_tokens(key, &v),
            _ => unreachable!("routes checked above"),
        }
    }

    /// API key, rate limit, draining.
    fn api_admit(&mut self, req: &http::Request) -> Result<(), (u16, &'static str, String)> {
        // The bucket comes first, so guessing keys is throttled too.
        let params = self.api_rate;
        if !matches!(
            self.api_limiter.take(&params, self.now_ms),
            Verdict::Allowed
        ) {
            return Err((
                429,
                "rate_limited",
                "API rate limit exceeded (api.rate_per_sec)".into(),
            ));
        }
        // Dev mode: the demo page (a browser, which must not hold an API
        // key) mints its own tokens.
        if req.path == "/api/tokens" && self.shared.config.api.dev_tokens {
            return Ok(());
        }
        let keys = &self.shared.config.auth.api_keys;
        if keys.is_empty() {
            return Err((
                401,
                "unauthorized",
                "the HTTP API is disabled: no auth.api_keys configured".into(),
            ));
        }
        let Some(given) = req.bearer.as_deref() else {
            return Err((
                401,
                "unauthorized",
                "missing Authorization: Bearer <api key>".into(),
            ));
        };
        if !keys.iter().any(|k| ct_eq(k.as_bytes(), given.as_bytes())) {
            return Err((401, "unauthorized", "unknown API key".into()));
        }
        if self.draining_until.is_some() {
            return Err((503, "overloaded", "server is shutting down".into()));
        }
        Ok(())
    }

    fn api_publish(&mut self, key: usize, conn: ConnRef, v: &Value) {
        let Some(room) = v.get("room").and_then(Value::as_str) else {
            return self.http_error(key, 400, "missing_field", "`room` (string) is required");
        };
        if !crate::proto::valid_room(room) {
            return self.http_error(key, 400, "invalid_room", "invalid room name");
        }
        let idem = match v.get("key") {
            None | Some(Value::Null) => None,
            Some(Value::String(k)) if crate::proto::command::valid_key(k) => Some(Arc::from(&**k)),
            Some(_) => {
                return self.http_error(
                    key,
                    400,
                    "bad_json",
                    "`key` must be a string of 1-64 bytes",
                );
            }
        };
        let Some(data) = self.api_data(key, v) else {
            return;
        };
        let tail = event::message_tail("server", None, &data);
        let room: Arc<str> = room.into();
        self.wait(key);
        let reply = Some(ReplyTo {
            core: self.id,
            conn,
            id: None,
            http: true,
        });
        self.submit(Command::Publish {
            room,
            reply,
            tail,
            key: idem,
        });
    }

    fn api_notify(&mut self, key: usize, conn: ConnRef, v: &Value) {
        let mut users: Vec<Arc<str>> = Vec::new();
        if let Some(u) = v.get("user").and_then(Value::as_str) {
            users.push(u.into());
        }
        if let Some(list) = v.get("users") {
            let Some(list) = list.as_array() else {
                return self.http_error(key, 400, "bad_json", "`users` must be an array");
            };
            for u in list {
                let Some(u) = u.as_str() else {
                    return self.http_error(key, 400, "bad_json", "`users` must hold strings");
                };
                users.push(u.into());
            }
        }
        users.sort();
        users.dedup();
        if users.is_empty() {
            return self.http_error(key, 400, "missing_field", "`user` or `users` is required");
        }
        if users.len() > MAX_NOTIFY_USERS
            || users
                .iter()
                .any(|u| u.is_empty() || u.len() > crate::proto::session::MAX_USER_LEN)
        {
            return self.http_error(
                key,
                400,
                "bad_json",
                "at most 10000 users of 1-256 bytes each",
            );
        }
        let Some(data) = self.api_data(key, v) else {
            return;
        };
        let frame = notification_frame(&data, self.unix_ms());
        self.wait(key);
        let agg = self.agg_start(AggTarget::Delivered { conn }, users.len() as u32, 0);
        for user in users {
            self.submit(Command::ToUser {
                user,
                frame: frame.clone(),
                agg,
            });
        }
    }

    fn api_broadcast(&mut self, key: usize, conn: ConnRef, v: &Value) {
        let Some(data) = self.api_data(key, v) else {
            return;
        };
        let frame = notification_frame(&data, self.unix_ms());
        self.wait(key);
        // One report per core of this node (memory), or one from the bridge
        // with the whole cluster's count (Redis).
        let parts = match self.link {
            crate::engine::Link::Memory => self.bus.cores() as u32,
            crate::engine::Link::Redis(_) => 1,
        };
        let agg = self.agg_start(AggTarget::Delivered { conn }, 0, parts);
        self.submit(Command::Broadcast { frame, agg });
    }

    fn api_tokens(&mut self, key: usize, v: &Value) {
        if !self.shared.config.api.dev_tokens {
            return self.http_error(
                key,
                403,
                "forbidden",
                "token minting is off (api.dev_tokens = false; development only)",
            );
        }
        let Some(secret) = self.shared.config.auth.secret.clone() else {
            return self.http_error(key, 503, "unavailable", "no auth.secret to sign with");
        };
        let Some(sub) = v
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        else {
            return self.http_error(key, 400, "missing_field", "`sub` (string) is required");
        };
        let list = |k: &str| -> Result<Option<Vec<String>>, ()> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(
                    s.split(',')
                        .map(|p| p.trim().to_string())
                        .filter(|p| !p.is_empty())
                        .collect(),
                )),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|p| p.as_str().map(String::from).ok_or(()))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
                Some(_) => Err(()),
            }
        };
        let (Ok(rooms), Ok(publish)) = (list("rooms"), list("publish")) else {
            return self.http_error(
                key,
                400,
                "bad_json",
                "`rooms`/`publish` must be lists of room patterns",
            );
        };
        let ttl = v.get("ttl").and_then(Value::as_u64).unwrap_or(3600);
        let spec = crate::auth::TokenSpec {
            sub: sub.to_string(),
            name: v.get("name").and_then(Value::as_str).map(String::from),
            rooms,
            publish,
            ttl: Some(ttl.clamp(1, 30 * 86_400)),
            exp: None,
        };
        let token = crate::auth::sign_token(&secret, &spec);
        let body = Event::object().str("token", &token).finish();
        self.respond(key, json_response(200, &[], &body), Then::Close);
    }

    /// `data` of a body, re-encoded compactly and bounded by `max_message`.
    fn api_data(&mut self, key: usize, v: &Value) -> Option<String> {
        let Some(data) = v.get("data") else {
            self.http_error(key, 400, "missing_field", "`data` is required");
            return None;
        };
        let data = data.to_string();
        if data.len() > self.shared.config.limits.max_message {
            self.http_error(key, 413, "too_large", "data is larger than max_message");
            return None;
        }
        Some(data)
    }

    /// The connection waits for a bus answer.
    pub(super) fn wait(&mut self, key: usize) {
        if let Some(Conn {
            state: State::Http(h),
            ..
        }) = self.conns.get_mut(key)
        {
            h.then = Then::Waiting;
        }
    }

    /// Sends a JSON error response and closes.
    pub(super) fn http_error(&mut self, key: usize, status: u16, code: &str, message: &str) {
        self.metrics.http_error(status);
        let resp = error_response(status, code, message, &[]);
        self.respond(key, resp, Then::Close);
    }

    /// Answers a waiting request (if the connection is still there).
    pub(super) fn http_answer(&mut self, conn: ConnRef, status: u16, body: String) {
        self.http_answer_raw(conn, status, "application/json", body);
    }

    pub(super) fn http_answer_raw(
        &mut self,
        conn: ConnRef,
        status: u16,
        content_type: &str,
        body: String,
    ) {
        let key = conn.key as usize;
        if !self.live(key, conn.generation) {
            return;
        }
        let waiting = matches!(
            self.conns.get(key),
            Some(Conn { state: State::Http(h), .. }) if matches!(h.then, Then::Waiting)
        );
        if !waiting {
            return;
        }
        if status >= 400 {
            self.metrics.http_error(status);
        }
        let resp = http::response(status, content_type, &body);
        self.respond(key, resp, Then::Close);
    }
}

fn notification_frame(data: &str, ts: u64) -> Bytes {
    let ev = Event::new("notification")
        .raw("data", data)
        .num("ts", ts)
        .finish();
    outq::text_frame(ev.as_bytes())
}

/// Compares secrets in time independent of where they differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn percent_decode(s: &str) -> String {
    form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare_and_decoding() {
        assert!(ct_eq(b"key-1", b"key-1"));
        assert!(!ct_eq(b"key-1", b"key-2"));
        assert!(!ct_eq(b"key", b"key-1"));
        assert_eq!(percent_decode("team%3A42"), "team:42");
        assert_eq!(percent_decode("lobby"), "lobby");
    }

    #[test]
    fn notification_events_carry_data_and_ts() {
        let f = notification_frame("{\"a\":1}", 7);
        let v: serde_json::Value = serde_json::from_slice(&f[2..]).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"notification","data":{"a":1},"ts":7})
        );
    }
}
