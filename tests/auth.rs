//! Authentication over real sockets: a token in the upgrade URL, in an
//! `Authorization: Bearer` header, or in-band as the first frame; anonymous
//! connections; refresh; expiry while connected; and every way to fail.

mod common;

use common::*;
use corecast::auth::{TokenSpec, sign_token, unix_now};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tungstenite::Message;

/// `ws://.../ws?token=<t>`
fn url_with_token(server: &TestServer, t: &str) -> String {
    server.url(&format!("/ws?token={t}"))
}

/// Asserts that an upgrade was refused with 401 and the JSON error body;
/// returns the error message.
fn assert_401(result: Result<Client, ConnectError>) -> String {
    match result {
        Err(ConnectError::Http(401, body)) => {
            let v: Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("401 body is not JSON ({e}): {body:?}"));
            assert_eq!(v["error"]["code"], "unauthorized", "{body}");
            let message = v["error"]["message"]
                .as_str()
                .unwrap_or_else(|| panic!("401 body has no message: {body}"));
            assert!(!message.is_empty(), "{body}");
            message.to_string()
        }
        Err(e) => panic!("expected HTTP 401, got {e:?}"),
        Ok(_) => panic!("expected HTTP 401, got an open WebSocket"),
    }
}

/// The connection is still open and answering commands.
fn assert_open(c: &mut Client) {
    let pong = c.request(json!({"type":"ping","id":"alive?"}));
    assert_eq!(pong, json!({"type":"pong","id":"alive?"}));
}

/// A token signed with `SECRET` with an absolute `exp`.
fn token_expiring_at(sub: &str, exp: u64) -> String {
    token(sub, |t| t.exp = Some(exp))
}

// ---- the three ways in ----------------------------------------------------

#[test]
fn token_in_query_gets_welcome_with_identity_and_settings() {
    let server = TestServer::with_auth(|c| c.heartbeat = 17);
    let t = token("u42", |t| {
        t.name = Some("Ann".into());
        t.ttl = Some(600);
    });
    let (_c, w) = Client::connect_welcome(&url_with_token(&server, &t));
    assert_eq!(w["user"], "u42", "{w}");
    assert_eq!(w["name"], "Ann", "{w}");
    assert_eq!(w["heartbeat"], 17, "{w}");
    assert!(w["session"].as_str().unwrap().starts_with("s_"), "{w}");
    assert!(w["limits"]["max_message"].is_u64(), "{w}");
    assert!(w["limits"]["rate"]["per_sec"].is_number(), "{w}");
    assert!(w["core"].as_u64().unwrap() < 2, "{w}");
    assert!(w.get("id").is_none(), "no command, no id: {w}");
}

#[test]
fn bearer_header_gets_welcome() {
    let server = TestServer::with_auth(|_| {});
    let t = token("svc-1", |_| {});
    let auth = format!("Bearer {t}");
    let mut c = Client::try_connect_with(&server.url("/ws"), &[("Authorization", &auth)])
        .unwrap_or_else(|e| panic!("bearer upgrade refused: {e:?}"));
    let w = c.recv_type("welcome");
    assert_eq!(w["user"], "svc-1", "{w}");
    assert!(w["name"].is_null(), "no name claim, no name: {w}");
    assert_open(&mut c);
}

#[test]
fn each_connection_gets_its_own_session_id() {
    let server = TestServer::with_auth(|_| {});
    let t = token("ann", |_| {});
    let (_a, wa) = Client::connect_welcome(&url_with_token(&server, &t));
    let (_b, wb) = Client::connect_welcome(&url_with_token(&server, &t));
    assert_eq!(wa["user"], wb["user"]);
    assert_ne!(wa["session"], wb["session"]);
}

#[test]
fn in_band_auth_is_answered_with_welcome_carrying_the_id() {
    let server = TestServer::with_auth(|_| {});
    let mut c = Client::connect(&server.url("/ws"));
    let t = token("ann", |t| t.name = Some("Ann".into()));
    // The first frame after the auth is its welcome: nothing was sent at
    // the upgrade.
    let w = c.request(json!({"type":"auth","id":"a-1","token":t}));
    assert_eq!(w["type"], "welcome", "{w}");
    assert_eq!(w["id"], "a-1", "{w}");
    assert_eq!(w["user"], "ann", "{w}");
    assert_eq!(w["name"], "Ann", "{w}");
    assert!(w["session"].as_str().unwrap().starts_with("s_"), "{w}");
    assert!(w["limits"].is_object() && w["heartbeat"].is_u64(), "{w}");
    // Now a full member.
    let ack = c.join("lobby");
    assert_eq!(ack["room"], "lobby");
    assert_eq!(c.recv_type("joined")["user"], "ann");
}

#[test]
fn in_band_auth_with_integer_id() {
    let server = TestServer::with_auth(|_| {});
    let mut c = Client::connect(&server.url("/ws"));
    let w = c.request(json!({"type":"auth","id":7,"token":token("bob", |_| {})}));
    assert_eq!(
        (w["type"].clone(), w["id"].clone()),
        (json!("welcome"), json!(7))
    );
}

// ---- refused at the upgrade -----------------------------------------------

#[test]
fn garbage_token_in_query_is_refused_with_401() {
    let server = TestServer::with_auth(|_| {});
    assert_401(Client::try_connect_with(
        &url_with_token(&server, "not-a-jwt"),
        &[],
    ));
}

#[test]
fn token_signed_with_another_secret_is_refused_with_401() {
    let server = TestServer::with_auth(|_| {});
    let t = sign_token(
        "some-other-secret",
        &TokenSpec {
            sub: "ann".into(),
            ..Default::default()
        },
    );
    let msg = assert_401(Client::try_connect_with(&url_with_token(&server, &t), &[]));
    assert!(msg.contains("signature"), "{msg}");
    let auth = format!("Bearer {t}");
    assert_401(Client::try_connect_with(
        &server.url("/ws"),
        &[("Authorization", &auth)],
    ));
}

#[test]
fn tampered_token_is_refused_with_401() {
    let server = TestServer::with_auth(|_| {});
    let ann = token("ann", |_| {});
    let admin = token("admin", |_| {});
    let parts: Vec<&str> = ann.split('.').collect();
    let admin_payload = admin.split('.').nth(1).unwrap();
    // Ann's header and signature around another payload.
    let forged = format!("{}.{}.{}", parts[0], admin_payload, parts[2]);
    assert_401(Client::try_connect_with(
        &url_with_token(&server, &forged),
        &[],
    ));
    // An unsigned token (`alg: none`).
    let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
    let unsigned = format!("{none_header}.{admin_payload}.");
    assert_401(Client::try_connect_with(
        &url_with_token(&server, &unsigned),
        &[],
    ));
}

#[test]
fn expired_token_is_refused_with_401_in_query_and_header() {
    let server = TestServer::with_auth(|_| {});
    let t = token_expiring_at("ann", unix_now() - 30);
    let msg = assert_401(Client::try_connect_with(&url_with_token(&server, &t), &[]));
    assert!(msg.contains("expired"), "{msg}");
    let auth = format!("Bearer {t}");
    let msg = assert_401(Client::try_connect_with(
        &server.url("/ws"),
        &[("Authorization", &auth)],
    ));
    assert!(msg.contains("expired"), "{msg}");
}

#[test]
fn token_expiring_this_second_is_refused_with_401() {
    // RFC 7519 4.1.4: not accepted on or after `exp`; the server's own expiry
    // timer treats `exp <= now` as expired too.
    let server = TestServer::with_auth(|_| {});
    let t = token_expiring_at("ann", unix_now());
    let msg = assert_401(Client::try_connect_with(&url_with_token(&server, &t), &[]));
    assert!(msg.contains("expired"), "{msg}");
}

#[test]
fn reserved_user_ids_are_refused_with_401() {
    let server = TestServer::with_auth(|_| {});
    for sub in ["anon:s_1", "server"] {
        assert_401(Client::try_connect_with(
            &url_with_token(&server, &token(sub, |_| {})),
            &[],
        ));
    }
}

#[test]
fn token_without_a_secret_configured_is_refused_with_401() {
    // Anonymous server: a token cannot be verified, so it is refused rather
    // than silently ignored.
    let server = TestServer::start(|_| {});
    assert_401(Client::try_connect_with(
        &url_with_token(&server, &token("ann", |_| {})),
        &[],
    ));
}

#[test]
fn require_exp_refuses_tokens_without_exp() {
    let server = TestServer::with_auth(|c| c.auth.require_exp = true);
    let no_exp = token("ann", |_| {});
    let msg = assert_401(Client::try_connect_with(
        &url_with_token(&server, &no_exp),
        &[],
    ));
    assert!(msg.contains("exp"), "{msg}");
    let (_c, w) = Client::connect_welcome(&url_with_token(
        &server,
        &token("ann", |t| t.ttl = Some(60)),
    ));
    assert_eq!(w["user"], "ann");
    // In-band as well.
    let mut c = Client::connect(&server.url("/ws"));
    c.send(json!({"type":"auth","id":1,"token":no_exp}));
    let e = c.expect_error("unauthorized");
    assert_eq!(e["id"], 1, "{e}");
    c.expect_close(4001);
}

// ---- in-band failures -----------------------------------------------------

#[test]
fn in_band_auth_with_bad_token_is_unauthorized_then_4001() {
    let server = TestServer::with_auth(|_| {});
    let wrong_secret = sign_token(
        "some-other-secret",
        &TokenSpec {
            sub: "ann".into(),
            ..Default::default()
        },
    );
    for bad in [
        "garbage".to_string(),
        wrong_secret,
        token_expiring_at("ann", unix_now() - 30),
    ] {
        let mut c = Client::connect(&server.url("/ws"));
        c.send(json!({"type":"auth","id":"x","token":bad}));
        let e = c.expect_error("unauthorized");
        assert_eq!(e["id"], "x", "{e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
        let after = c.expect_close(4001);
        assert!(after.is_empty(), "nothing after the error: {after:?}");
    }
}

#[test]
fn first_frame_other_than_auth_is_unauthorized_then_4001() {
    let server = TestServer::with_auth(|_| {});
    // A valid command that is not auth.
    let mut c = Client::connect(&server.url("/ws"));
    c.send(json!({"type":"join","id":3,"room":"lobby"}));
    assert_eq!(c.expect_error("unauthorized")["id"], 3);
    c.expect_close(4001);

    let mut c = Client::connect(&server.url("/ws"));
    c.send(json!({"type":"ping","id":"p"}));
    assert_eq!(c.expect_error("unauthorized")["id"], "p");
    c.expect_close(4001);

    // Malformed JSON: its own error, then unauthorized.
    let mut c = Client::connect(&server.url("/ws"));
    c.send_text("{not json");
    c.expect_error("bad_json");
    c.expect_error("unauthorized");
    c.expect_close(4001);

    // A binary frame.
    let mut c = Client::connect(&server.url("/ws"));
    c.ws.send(Message::binary(vec![1u8, 2, 3])).unwrap();
    c.expect_error("unauthorized");
    c.expect_close(4001);
}

#[test]
fn auth_command_without_token_field_is_refused_then_4001() {
    let server = TestServer::with_auth(|_| {});
    let mut c = Client::connect(&server.url("/ws"));
    c.send(json!({"type":"auth","id":9}));
    let e = c.expect_error("missing_field");
    assert_eq!(e["id"], 9, "{e}");
    c.expect_error("unauthorized");
    c.expect_close(4001);
}

#[test]
fn no_auth_within_timeout_closes_4001() {
    let server = TestServer::with_auth(|c| c.auth.timeout = 1);
    let start = Instant::now();
    let mut c = Client::connect(&server.url("/ws"));
    let frames = c.expect_close(4001);
    assert!(frames.is_empty(), "no frame before the close: {frames:?}");
    // Not before the timeout (the timer may only fire late, never early).
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "closed after {:?}, before auth.timeout",
        start.elapsed()
    );
}

#[test]
fn auth_in_time_is_not_closed_by_the_auth_timeout() {
    let server = TestServer::with_auth(|c| c.auth.timeout = 1);
    let mut c = Client::connect(&server.url("/ws"));
    let w = c.request(json!({"type":"auth","token":token("ann", |_| {})}));
    assert_eq!(w["type"], "welcome", "{w}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_open(&mut c);
}

// ---- anonymous ------------------------------------------------------------

#[test]
fn without_secret_connections_are_anonymous() {
    let server = TestServer::start(|_| {});
    let (mut c, w) = Client::connect_welcome(&server.url("/ws"));
    let session = w["session"].as_str().unwrap();
    assert_eq!(w["user"], format!("anon:{session}"), "{w}");
    assert!(w["name"].is_null(), "{w}");
    c.join("lobby");
    assert_eq!(c.recv_type("joined")["user"], format!("anon:{session}"));
}

#[test]
fn secret_with_anonymous_allowed_accepts_both() {
    let server = TestServer::with_auth(|c| c.auth.anonymous = Some(true));
    let (_anon, w) = Client::connect_welcome(&server.url("/ws"));
    assert_eq!(
        w["user"],
        format!("anon:{}", w["session"].as_str().unwrap()),
        "{w}"
    );
    let (_ann, w) = Client::connect_welcome(&url_with_token(&server, &token("ann", |_| {})));
    assert_eq!(w["user"], "ann");
    // A bad token is still refused, not downgraded to anonymous.
    assert_401(Client::try_connect_with(
        &url_with_token(&server, "garbage"),
        &[],
    ));
}

#[test]
fn anonymous_connection_in_no_room_can_become_a_user() {
    let server = TestServer::with_auth(|c| c.auth.anonymous = Some(true));
    let (mut c, w) = Client::connect_welcome(&server.url("/ws"));
    assert!(w["user"].as_str().unwrap().starts_with("anon:"));
    let ack = c.request(
        json!({"type":"auth","id":"up","token":token("ann", |t| t.name = Some("Ann".into()))}),
    );
    assert_eq!(ack, json!({"type":"ack","id":"up","user":"ann"}));
    c.join("lobby");
    let joined = c.recv_type("joined");
    assert_eq!(
        (joined["user"].clone(), joined["name"].clone()),
        (json!("ann"), json!("Ann"))
    );
    // No longer anonymous: another user is refused.
    let e = c.request(json!({"type":"auth","id":2,"token":token("bob", |_| {})}));
    assert_eq!(
        (e["code"].clone(), e["id"].clone()),
        (json!("forbidden"), json!(2)),
        "{e}"
    );
}

#[test]
fn anonymous_connection_in_a_room_cannot_become_a_user() {
    let server = TestServer::with_auth(|c| c.auth.anonymous = Some(true));
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    c.join("lobby");
    c.recv_type("joined");
    let e = c.request(json!({"type":"auth","id":1,"token":token("ann", |_| {})}));
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "forbidden", "{e}");
    assert_eq!(e["id"], 1, "{e}");
    assert_open(&mut c);
}

// ---- refresh --------------------------------------------------------------

#[test]
fn refresh_with_same_user_is_acked_with_user() {
    let server = TestServer::with_auth(|_| {});
    let (mut c, _) = Client::connect_welcome(&url_with_token(
        &server,
        &token("ann", |t| t.ttl = Some(60)),
    ));
    let ack =
        c.request(json!({"type":"auth","id":"r1","token":token("ann", |t| t.ttl = Some(3600))}));
    assert_eq!(ack, json!({"type":"ack","id":"r1","user":"ann"}));
    assert_open(&mut c);
}

#[test]
fn refresh_with_another_user_is_forbidden_and_keeps_the_connection() {
    let server = TestServer::with_auth(|_| {});
    let (mut c, _) = Client::connect_welcome(&url_with_token(&server, &token("ann", |_| {})));
    let e = c.request(json!({"type":"auth","id":5,"token":token("bob", |_| {})}));
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "forbidden", "{e}");
    assert_eq!(e["id"], 5, "{e}");
    // Still Ann.
    c.join("lobby");
    assert_eq!(c.recv_type("joined")["user"], "ann");
}

#[test]
fn refresh_with_bad_token_is_unauthorized_and_keeps_the_connection() {
    // A failed refresh does not take away a still-valid identity.
    let server = TestServer::with_auth(|_| {});
    let (mut c, _) = Client::connect_welcome(&url_with_token(&server, &token("ann", |_| {})));
    let e = c.request(json!({"type":"auth","id":"bad","token":"garbage"}));
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "unauthorized", "{e}");
    assert_eq!(e["id"], "bad", "{e}");
    assert_open(&mut c);
}

// ---- expiry while connected -----------------------------------------------

#[test]
fn token_expiring_while_connected_warns_then_closes_4001() {
    let server = TestServer::with_auth(|c| c.auth.expiry_grace = 1);
    let exp = unix_now() + 2;
    let (mut c, _) =
        Client::connect_welcome(&url_with_token(&server, &token_expiring_at("ann", exp)));
    let e = c.recv();
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "token_expired", "{e}");
    assert!(e.get("id").is_none(), "{e}");
    assert!(unix_now() >= exp, "warned before exp");
    let after = c.expect_close(4001);
    assert!(after.is_empty(), "{after:?}");
    // Not before exp + expiry_grace (wall clock, so delivery delays cannot
    // make a correct server look early).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        now >= (exp + 1) as f64 - 0.01,
        "closed at {now}, before exp + expiry_grace = {}",
        exp + 1
    );
}

#[test]
fn in_band_token_expiring_while_connected_closes_4001() {
    let server = TestServer::with_auth(|c| c.auth.expiry_grace = 1);
    let exp = unix_now() + 2;
    let mut c = Client::connect(&server.url("/ws"));
    let w = c.request(json!({"type":"auth","token":token_expiring_at("ann", exp)}));
    assert_eq!(w["type"], "welcome", "{w}");
    c.expect_error("token_expired");
    c.expect_close(4001);
}

#[test]
fn fresh_auth_within_grace_keeps_the_connection() {
    let server = TestServer::with_auth(|c| c.auth.expiry_grace = 1);
    let exp = unix_now() + 2;
    let (mut c, _) =
        Client::connect_welcome(&url_with_token(&server, &token_expiring_at("ann", exp)));
    c.join("lobby");
    c.recv_type("joined");
    c.expect_error("token_expired");
    let ack =
        c.request(json!({"type":"auth","id":"fresh","token":token("ann", |t| t.ttl = Some(600))}));
    assert_eq!(ack, json!({"type":"ack","id":"fresh","user":"ann"}));
    // Let the grace pass; the connection stays and keeps its rooms.
    std::thread::sleep(Duration::from_millis(1600));
    let ack = c.request(json!({"type":"publish","id":"p","room":"lobby","data":1}));
    let (msg, ack) = if ack["type"] == "message" {
        (ack, c.recv())
    } else {
        (c.recv(), ack)
    };
    assert_eq!(msg["type"], "message", "{msg}");
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["id"], "p", "{ack}");
}

#[test]
fn refresh_before_expiry_prevents_the_warning() {
    let server = TestServer::with_auth(|c| c.auth.expiry_grace = 1);
    let exp = unix_now() + 2;
    let (mut c, _) =
        Client::connect_welcome(&url_with_token(&server, &token_expiring_at("ann", exp)));
    let ack = c.request(json!({"type":"auth","id":1,"token":token("ann", |t| t.ttl = Some(600))}));
    assert_eq!(ack, json!({"type":"ack","id":1,"user":"ann"}));
    // Past the old exp: its timer has fired by now.
    assert!(eventually(Duration::from_secs(6), || unix_now() > exp));
    std::thread::sleep(Duration::from_millis(300));
    // The next frame is the pong: no token_expired, no close.
    assert_open(&mut c);
}

#[test]
fn expired_token_does_not_rescue_during_grace() {
    let server = TestServer::with_auth(|c| c.auth.expiry_grace = 1);
    let exp = unix_now() + 2;
    let t = token_expiring_at("ann", exp);
    let (mut c, _) = Client::connect_welcome(&url_with_token(&server, &t));
    c.expect_error("token_expired");
    // The same, now expired, token again.
    let e = c.request(json!({"type":"auth","id":"again","token":t}));
    assert_eq!(e["code"], "unauthorized", "{e}");
    assert_eq!(e["id"], "again", "{e}");
    c.expect_close(4001);
}

// ---- room patterns from the token ------------------------------------------

#[test]
fn rooms_claim_limits_joins_with_suffix_wildcard() {
    let server = TestServer::with_auth(|_| {});
    let t = token("ann", |t| {
        t.rooms = Some(vec!["lobby".into(), "team:42:*".into()])
    });
    let (mut c, _) = Client::connect_welcome(&url_with_token(&server, &t));
    c.join("lobby");
    c.recv_type("joined");
    c.join("team:42:general");
    c.recv_type("joined");
    for (i, room) in ["lobby2", "team:43:general", "team:4", "other"]
        .into_iter()
        .enumerate()
    {
        let e = c.request(json!({"type":"join","id":i,"room":room}));
        assert_eq!(e["type"], "error", "{room}: {e}");
        assert_eq!(e["code"], "forbidden", "{room}: {e}");
        assert_eq!(e["id"], i, "{room}: {e}");
    }
    assert_open(&mut c);
}

#[test]
fn default_room_policy_applies_to_tokens_without_rooms_and_to_anonymous() {
    let server = TestServer::with_auth(|c| {
        c.auth.anonymous = Some(true);
        c.auth.default_rooms = vec!["public:*".into()];
    });
    let (mut user, _) = Client::connect_welcome(&url_with_token(&server, &token("ann", |_| {})));
    let (mut anon, _) = Client::connect_welcome(&server.url("/ws"));
    for c in [&mut user, &mut anon] {
        c.join("public:chat");
        c.recv_type("joined");
        c.send(json!({"type":"join","id":"p","room":"private"}));
        c.expect_error("forbidden");
    }
    // A rooms claim replaces the default policy.
    let t = token("bob", |t| t.rooms = Some(vec!["private".into()]));
    let (mut bob, _) = Client::connect_welcome(&url_with_token(&server, &t));
    bob.join("private");
    bob.recv_type("joined");
    bob.send(json!({"type":"join","id":1,"room":"public:chat"}));
    bob.expect_error("forbidden");
}
