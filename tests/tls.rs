//! TLS on the listener (`[tls]`), over real sockets with real TLS clients
//! (rustls here, Python's `ssl` and `websockets`): wss and https on one
//! port, ALPN, large messages over many records to several members, the
//! certificate reloaded on SIGHUP while an old connection stays up, plain
//! HTTP and garbage on the TLS port, a stalled handshake timed out, and a
//! PROXY header before the TLS handshake from a trusted peer.

mod common;

use common::pki::{Pki, pki};
use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

type Tls = StreamOwned<ClientConnection, TcpStream>;

fn client_config(ca: &str, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection to `addr` trusting `ca`, handshake done.
fn tls_connect(addr: SocketAddr, ca: &str) -> Result<Tls, String> {
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tls_over(tcp, ca, &[b"h2", b"http/1.1"])
}

/// The TLS handshake over a connected `tcp`, trusting `ca`.
fn tls_over(tcp: TcpStream, ca: &str, alpn: &[&[u8]]) -> Result<Tls, String> {
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(client_config(ca, alpn), name).unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| e.to_string())?;
    }
    Ok(tls)
}

/// The WebSocket upgrade over `tls`; `Err`: the HTTP status line of a
/// refusal, or what failed.
fn wss_over(tls: Tls, port: u16) -> Result<Wss, String> {
    let url = format!("wss://localhost:{port}/ws");
    match tungstenite::client(url.as_str(), tls) {
        Ok((ws, _)) => Ok(Wss::new(ws)),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            Err(r.status().to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The server's leaf certificate as this connection saw it.
fn leaf(tls: &Tls) -> Vec<u8> {
    tls.conn.peer_certificates().unwrap()[0].to_vec()
}

/// One HTTP/1.1 request over TLS; (status, head, body).
fn https(addr: SocketAddr, ca: &str, request: &str) -> (u16, String, String) {
    let mut tls = tls_connect(addr, ca).expect("TLS handshake");
    tls.write_all(request.as_bytes()).unwrap();
    let mut got = Vec::new();
    match tls.read_to_end(&mut got) {
        Ok(_) => {}
        // A peer that closes without close_notify is an error to rustls; the
        // server sends one, so this must not happen.
        Err(e) => panic!("reading the response: {e} (after {} bytes)", got.len()),
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

struct Wss {
    ws: WebSocket<Tls>,
    /// Events read while waiting for a reply, in order.
    skipped: std::collections::VecDeque<Value>,
}

impl Wss {
    fn connect(addr: SocketAddr, ca: &str, path: &str) -> Wss {
        let tls = tls_connect(addr, ca).expect("TLS handshake");
        let url = format!("wss://localhost:{}{}", addr.port(), path);
        let (ws, _) = tungstenite::client(url.as_str(), tls).expect("websocket over TLS");
        Wss::new(ws)
    }

    fn new(ws: WebSocket<Tls>) -> Wss {
        Wss {
            ws,
            skipped: Default::default(),
        }
    }

    fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).unwrap();
    }

    fn recv(&mut self) -> Value {
        loop {
            match self.ws.read().expect("read") {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let v = match self.skipped.pop_front() {
                Some(v) => v,
                None => self.recv(),
            };
            if v["type"] == ty {
                return v;
            }
        }
    }

    fn ask(&mut self, mut cmd: Value, id: u64) -> Value {
        cmd["id"] = json!(id);
        self.send(cmd);
        loop {
            let v = self.recv();
            if v["id"] == id {
                return v;
            }
            self.skipped.push_back(v);
        }
    }
}

fn tls_server(pki: &Pki, f: impl FnOnce(&mut corecast::Config)) -> TestServer {
    TestServer::start(|c| {
        c.tls.cert = Some(pki.s("server.pem"));
        c.tls.key = Some(pki.s("server.key"));
        c.limits.rate_per_sec = 10_000.0;
        c.limits.rate_burst = 10_000.0;
        f(c);
    })
}

#[test]
fn wss_and_https_share_the_port_with_large_messages_to_every_member() {
    let pki = pki();
    let ca = pki.s("ca.pem");
    let s = tls_server(&pki, |c| c.limits.max_message = 256 * 1024);
    // https: health, the served client, the API's errors.
    let (status, head, body) = https(
        s.addr,
        &ca,
        "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{head}");
    assert!(body.contains(r#""status":"ok""#), "{body}");
    let (status, _, body) = https(
        s.addr,
        &ca,
        "GET /corecast.js HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert!(body.len() > 5000, "the whole bundle: {} bytes", body.len());
    // ALPN: offered h2 and http/1.1, the server picks http/1.1.
    let tls = tls_connect(s.addr, &ca).unwrap();
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    drop(tls);

    // wss: three members, messages of 1 byte to 200 KiB (many 16 KiB
    // records each), all in order to everyone, the publisher included.
    let mut members: Vec<Wss> = (0..3).map(|_| Wss::connect(s.addr, &ca, "/ws")).collect();
    for (i, m) in members.iter_mut().enumerate() {
        m.recv_type("welcome");
        let r = m.ask(json!({"type": "join", "room": "tls"}), i as u64 + 1);
        assert_eq!(r["type"], "ack", "{r}");
    }
    let sizes = [1usize, 1000, 16_384, 70_000, 200_000];
    for (i, n) in sizes.iter().enumerate() {
        let text: String = (0..*n).map(|k| (b'a' + (k % 26) as u8) as char).collect();
        let ack = members[0].ask(
            json!({"type": "publish", "room": "tls", "data": {"i": i, "text": text}}),
            100 + i as u64,
        );
        assert_eq!(
            ack["type"],
            "ack",
            "{}",
            &ack.to_string()[..200.min(ack.to_string().len())]
        );
    }
    for m in members.iter_mut() {
        for (i, n) in sizes.iter().enumerate() {
            let msg = m.recv_type("message");
            assert_eq!(msg["data"]["i"], i);
            assert_eq!(msg["data"]["text"].as_str().unwrap().len(), *n);
        }
    }
    // Through TLS the server reports its connections like any others.
    let (_, _, body) = https(
        s.addr,
        &ca,
        "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(body.contains(r#""connections":3"#), "{body}");
}

#[test]
fn plain_http_and_garbage_on_the_tls_port_are_closed_cleanly() {
    let pki = pki();
    let ca = pki.s("ca.pem");
    let s = tls_server(&pki, |_| {});
    // Plain HTTP: a plain-text 400 that says why, then EOF.
    let (status, _, body) = http_get(s.addr, "/health");
    assert_eq!(status, 400);
    assert!(body.contains("this port speaks TLS"), "{body}");
    // A plain WebSocket client learns the same.
    match Client::try_connect_with(&s.url("/ws"), &[]) {
        Err(ConnectError::Http(400, body)) => assert!(body.contains("TLS"), "{body}"),
        other => panic!("expected a 400, got {:?}", other.err()),
    }
    // Bytes that are neither TLS nor HTTP: closed without an answer.
    let mut raw = TcpStream::connect(s.addr).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    raw.write_all(&[0x00, 0xff, 0x13, 0x37, 1, 2, 3, 4])
        .unwrap();
    let mut got = Vec::new();
    let _ = raw.read_to_end(&mut got);
    assert!(got.is_empty(), "no answer to garbage: {got:?}");
    // A TLS record that is not a valid ClientHello: an alert, then EOF.
    let mut raw = TcpStream::connect(s.addr).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    raw.write_all(&[
        0x16, 0x03, 0x01, 0x00, 0x08, 0x01, 0x00, 0x00, 0x04, 0x03, 0x03, 0x00, 0x00,
    ])
    .unwrap();
    let mut got = Vec::new();
    let _ = raw.read_to_end(&mut got);
    assert_eq!(got.first(), Some(&0x15), "a TLS alert record: {got:?}");
    // And nothing of that hurt the server: TLS still works.
    let mut m = Wss::connect(s.addr, &ca, "/ws");
    assert_eq!(m.recv()["type"], "welcome");
}

#[test]
fn a_stalled_tls_handshake_is_timed_out_like_a_stalled_request() {
    let pki = pki();
    let s = tls_server(&pki, |c| c.auth.timeout = 1);
    // Half a ClientHello record, then silence; and a connection that says
    // nothing at all.
    let mut half = TcpStream::connect(s.addr).unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .unwrap();
    let mut silent = TcpStream::connect(s.addr).unwrap();
    let started = Instant::now();
    for (what, sock) in [("half a ClientHello", &mut half), ("nothing", &mut silent)] {
        sock.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 64];
        let n = sock
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(n, 0, "{what}: closed without an answer");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(5),
        "closed after {took:?}; auth.timeout is 1 s"
    );
}

#[test]
fn a_proxy_header_before_the_handshake_names_the_client() {
    let pki = pki();
    let ca = pki.s("ca.pem");
    let s = tls_server(&pki, |c| {
        c.limits.per_ip_exempt = Vec::new();
        c.limits.max_connections_per_ip = 1;
        c.proxy.trusted = vec!["127.0.0.1".into()];
    });
    let via = |client: &str| -> Result<Wss, String> {
        let mut tcp = TcpStream::connect(s.addr).unwrap();
        let header = format!("PROXY TCP4 {client} 127.0.0.1 40000 443\r\n");
        tcp.write_all(header.as_bytes()).unwrap();
        wss_over(tls_over(tcp, &ca, &[])?, s.addr.port())
    };
    let mut first = via("203.0.113.7").expect("first connection from .7");
    assert_eq!(first.recv()["type"], "welcome");
    // Same client address (one per address): refused; another: served.
    let Err(refused) = via("203.0.113.7") else {
        panic!("a second connection from .7 was served");
    };
    assert!(refused.starts_with("429"), "{refused}");
    let mut other = via("198.51.100.9").expect("a different client address");
    assert_eq!(other.recv()["type"], "welcome");
}

/// With TLS the per-address handshake rate applies at accept (a handshake
/// costs the core a signature before any request is read), and a
/// connection that paid there is not charged again at its upgrade.
#[test]
fn tls_handshakes_are_rate_limited_per_address_at_accept_and_paid_once() {
    let pki = pki();
    let ca = pki.s("ca.pem");
    let s = tls_server(&pki, |c| {
        c.limits.per_ip_exempt = Vec::new();
        c.limits.handshakes_per_ip_per_sec = 0.01; // no refill within the test
        c.limits.handshakes_per_ip_burst = 3.0;
    });
    let from = |src: &str| -> Result<Tls, String> {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let bind: SocketAddr = format!("{src}:0").parse().unwrap();
        sock.bind(&bind.into()).unwrap();
        sock.connect(&s.addr.into()).map_err(|e| e.to_string())?;
        tls_over(sock.into(), &ca, &[])
    };
    let upgrade = |tls: Tls| wss_over(tls, s.addr.port());
    // Three handshakes from .21, each upgraded: one token each, not two
    // (charged twice, the second upgrade would be a 429).
    let mut held = Vec::new();
    for i in 0..3 {
        let tls = from("127.0.0.21").unwrap_or_else(|e| panic!("handshake {i}: {e}"));
        let mut ws = upgrade(tls).unwrap_or_else(|e| panic!("upgrade {i}: {e}"));
        assert_eq!(ws.recv()["type"], "welcome");
        held.push(ws);
    }
    // The fourth is refused before any TLS: the socket just closes.
    let Err(e) = from("127.0.0.21") else {
        panic!("a fourth handshake from .21 was served");
    };
    assert!(
        !e.contains("certificate"),
        "closed before TLS, not a TLS failure: {e}"
    );
    // Another address is unaffected.
    let mut other = upgrade(from("127.0.0.22").expect("handshake from .22")).unwrap();
    assert_eq!(other.recv()["type"], "welcome");
}

/// The served certificate is replaced on SIGHUP: new handshakes get the
/// new one (trusted by another CA), the connection made before keeps its
/// session and keeps receiving; a reload from broken files keeps the
/// certificate in use.
#[test]
fn sighup_reloads_the_certificate_and_old_connections_stay() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::copy(pki.path("server.pem"), &cert).unwrap();
    std::fs::copy(pki.path("server.key"), &key).unwrap();
    let (cert_s, key_s) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let server =
        ChildServer::start(&[("CORECAST_TLS__CERT", cert_s), ("CORECAST_TLS__KEY", key_s)]);
    let (ca, other_ca) = (pki.s("ca.pem"), pki.s("other-ca.pem"));
    let before = tls_connect(server.addr, &ca).unwrap();
    let old_leaf = leaf(&before);
    drop(before);
    let mut old = Wss::connect(server.addr, &ca, "/ws");
    old.recv_type("welcome");
    assert_eq!(
        old.ask(json!({"type": "join", "room": "r"}), 1)["type"],
        "ack"
    );

    std::fs::copy(pki.path("other-server.pem"), &cert).unwrap();
    std::fs::copy(pki.path("other-server.key"), &key).unwrap();
    server.signal(libc::SIGHUP);
    assert!(
        eventually(WAIT, || server
            .log()
            .iter()
            .any(|l| l.contains("TLS certificate reloaded"))),
        "reload logged: {:?}",
        server.log()
    );
    // New handshakes: the new certificate (the old CA no longer verifies).
    let Err(err) = tls_connect(server.addr, &ca) else {
        panic!("the old CA still verifies the served certificate");
    };
    assert!(err.contains("certificate"), "{err}");
    let now = tls_connect(server.addr, &other_ca).unwrap();
    assert_ne!(leaf(&now), old_leaf);
    let new_leaf = leaf(&now);
    drop(now);
    // The old connection lives on, and hears a member that came after.
    let mut new = Wss::connect(server.addr, &other_ca, "/ws");
    new.recv_type("welcome");
    new.ask(json!({"type": "join", "room": "r"}), 1);
    let ack = new.ask(
        json!({"type": "publish", "room": "r", "data": "after reload"}),
        2,
    );
    assert_eq!(ack["type"], "ack", "{ack}");
    let msg = old.recv_type("message");
    assert_eq!(msg["data"], "after reload");
    let ack = old.ask(
        json!({"type": "publish", "room": "r", "data": "old speaks"}),
        2,
    );
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(new.recv_type("message")["data"], "after reload"); // its own
    assert_eq!(new.recv_type("message")["data"], "old speaks");

    // A broken file: the reload is refused and said so; nothing changes.
    std::fs::write(&key, "not a key").unwrap();
    server.signal(libc::SIGHUP);
    assert!(
        eventually(WAIT, || server
            .log()
            .iter()
            .any(|l| l.contains("TLS certificate not reloaded"))),
        "failed reload logged: {:?}",
        server.log()
    );
    let still = tls_connect(server.addr, &other_ca).unwrap();
    assert_eq!(leaf(&still), new_leaf);
    assert!(old.ask(json!({"type": "ping"}), 3)["type"] == "pong");
}

/// Python's own TLS stack (`ssl`, OpenSSL) as https and wss client, with
/// the `websockets` package (scripts/test.sh installs it in target/py).
#[test]
fn python_ssl_and_websockets_speak_to_the_tls_port() {
    let pki = pki();
    let s = tls_server(&pki, |_| {});
    let python = {
        let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/target/py/bin/python");
        if std::path::Path::new(venv).exists() {
            venv.to_string()
        } else {
            "python3".to_string()
        }
    };
    let script = r#"
import asyncio, json, ssl, sys, http.client
import websockets
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
ctx.set_alpn_protocols(["http/1.1"])
h = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
h.connect()
version, alpn = h.sock.version(), h.sock.selected_alpn_protocol()
h.request("GET", "/health")
r = h.getresponse()
body = json.loads(r.read())
assert r.status == 200 and body["status"] == "ok", (r.status, body)
print("https ok", version, alpn)
async def main():
    async with websockets.connect(f"wss://localhost:{port}/ws", ssl=ctx) as a, \
               websockets.connect(f"wss://localhost:{port}/ws", ssl=ctx) as b:
        for ws in (a, b):
            assert json.loads(await ws.recv())["type"] == "welcome"
            await ws.send(json.dumps({"type": "join", "room": "py", "id": 1}))
            while json.loads(await ws.recv()).get("id") != 1: pass
        big = "x" * 60000  # spans several TLS records; under max_message
        await a.send(json.dumps({"type": "publish", "room": "py", "data": big, "id": 2}))
        while True:
            m = json.loads(await b.recv())
            if m["type"] == "message":
                assert m["data"] == big
                break
    print("wss ok")
asyncio.run(asyncio.wait_for(main(), 20))
"#;
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(s.addr.port().to_string())
        .arg(pki.s("ca.pem"))
        .env_remove("PYTHONOPTIMIZE")
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python failed (scripts/test.sh installs `websockets` in target/py):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("https ok TLSv1.3 http/1.1"), "{stdout}");
    assert!(stdout.contains("wss ok"), "{stdout}");
}
