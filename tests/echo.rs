//! The raw `/echo` route (config `echo = true`): every text or binary message
//! comes back unchanged, fragmented or large, while `/ws` keeps working.

mod common;

use common::*;
use serde_json::json;
use tungstenite::Message;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{Data, OpCode};

fn echo_server() -> TestServer {
    TestServer::start(|c| c.echo = true)
}

fn echo_client(server: &TestServer) -> Client {
    Client::connect(&server.url("/echo"))
}

/// The next data message (pings and pongs skipped).
fn next_data(c: &mut Client) -> Message {
    loop {
        match c.ws.read().expect("read an echoed message") {
            Message::Ping(_) | Message::Pong(_) => continue,
            m => return m,
        }
    }
}

#[test]
fn text_is_echoed_unchanged() {
    let server = echo_server();
    let mut c = echo_client(&server);
    for text in ["hello", "", "{\"type\":\"ping\"}", "ünïcødé ✓ 🚀"] {
        c.ws.send(Message::text(text)).unwrap();
        assert_eq!(next_data(&mut c), Message::text(text));
    }
}

#[test]
fn binary_is_echoed_unchanged() {
    let server = echo_server();
    let mut c = echo_client(&server);
    let payload: Vec<u8> = (0..=255u8).chain([0, 0xff, 0x80]).collect();
    c.ws.send(Message::binary(payload.clone())).unwrap();
    assert_eq!(next_data(&mut c), Message::binary(payload));
}

#[test]
fn fragmented_text_is_echoed_whole() {
    let server = echo_server();
    let mut c = echo_client(&server);
    let parts = ["frag", "mented ", "mess", "age ✓"];
    for (i, p) in parts.iter().enumerate() {
        let op = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let fin = i == parts.len() - 1;
        c.ws.write(Message::Frame(Frame::message(
            p.as_bytes().to_vec(),
            op,
            fin,
        )))
        .unwrap();
        c.ws.flush().unwrap();
    }
    assert_eq!(next_data(&mut c), Message::text(parts.concat()));
}

#[test]
fn fragmented_binary_with_an_interleaved_ping_is_echoed_whole() {
    let server = echo_server();
    let mut c = echo_client(&server);
    let first = vec![1u8; 1000];
    let second = vec![2u8; 3000];
    c.ws.write(Message::Frame(Frame::message(
        first.clone(),
        OpCode::Data(Data::Binary),
        false,
    )))
    .unwrap();
    // A control frame in the middle of a fragmented message is allowed.
    c.ws.write(Message::Ping(b"mid".to_vec().into())).unwrap();
    c.ws.write(Message::Frame(Frame::message(
        second.clone(),
        OpCode::Data(Data::Continue),
        true,
    )))
    .unwrap();
    c.ws.flush().unwrap();
    let mut pong = None;
    let data = loop {
        match c.ws.read().expect("read") {
            Message::Pong(p) => pong = Some(p),
            Message::Ping(_) => {}
            m => break m,
        }
    };
    assert_eq!(data, Message::binary([first, second].concat()));
    // The pong answers the ping and comes before the echo (it was received
    // before the message was complete).
    assert_eq!(pong.as_deref(), Some(&b"mid"[..]));
}

#[test]
fn one_mib_binary_message_is_echoed_unchanged() {
    let server = echo_server();
    let mut c = echo_client(&server);
    let payload: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    c.ws.send(Message::binary(payload.clone())).unwrap();
    match next_data(&mut c) {
        Message::Binary(b) => {
            assert_eq!(b.len(), payload.len());
            assert!(b[..] == payload[..], "echoed bytes differ");
        }
        other => panic!("expected binary, got {other:?}"),
    }
}

#[test]
fn one_mib_text_message_is_echoed_unchanged() {
    let server = echo_server();
    let mut c = echo_client(&server);
    let text: String = (0..1024 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    c.ws.send(Message::text(text.clone())).unwrap();
    match next_data(&mut c) {
        Message::Text(t) => assert!(t.as_str() == text, "echoed text differs"),
        other => panic!("expected text, got {other:?}"),
    }
}

#[test]
fn ws_route_works_alongside_echo() {
    let server = echo_server();
    let mut e = echo_client(&server);
    let (mut c, _) = Client::connect_welcome(&server.url("/ws"));
    e.ws.send(Message::text("{\"type\":\"ping\",\"id\":1}"))
        .unwrap();
    // On /ws a command is handled, not echoed; on /echo it is echoed.
    assert_eq!(
        c.request(json!({"type":"ping","id":1})),
        json!({"type":"pong","id":1})
    );
    assert_eq!(
        next_data(&mut e),
        Message::text("{\"type\":\"ping\",\"id\":1}")
    );
}

#[test]
fn close_on_echo_is_answered() {
    let server = echo_server();
    let mut c = echo_client(&server);
    c.close();
    let (code, _, texts) = c.read_until_close();
    assert_eq!(code, Some(1000), "close echoed with our code");
    assert!(texts.is_empty());
}
