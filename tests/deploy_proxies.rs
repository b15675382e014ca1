//! The deployment samples work as written: real nginx and real HAProxy run
//! deploy/nginx.conf and deploy/haproxy.cfg — only addresses, ports and
//! file paths rewritten, and HAProxy's maxconn scaled to this machine's
//! open-file limit — in front of two real corecast nodes started with
//! deploy/corecast.toml and joined through a real redis-server.
//!
//! Over real sockets, through each proxy: a WebSocket gets its welcome,
//! joins a room and receives what was published through the other proxy
//! and on the other node (least-connections puts a proxy's first two
//! clients on different nodes); the HTTP API publishes; an SSE stream
//! receives a live event while it stays open (nothing buffers it); the
//! nodes count the client's own address, not the proxy's (X-Forwarded-For
//! from nginx, PROXY v2 from HAProxy), and a client cannot claim another
//! one; /health answers, /metrics is refused. With their `#TLS` lines
//! uncommented both samples terminate TLS (certificates made here) and
//! redirect plain HTTP.
//!
//! The nodes allow one connection per client address (per node): a
//! proxy's second client on a node being served shows the node did not
//! count the proxy's address, and one client address refused on its
//! second connection to a node, whatever it put in X-Forwarded-For, shows
//! the node counted the address the proxy saw. nginx, haproxy and
//! redis-server must be installed: the test fails, not skips, without
//! them (`apt-get install -y nginx haproxy redis-server`; .ci/run does).

mod common;

use common::pki::{Pki, pki};
use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

const ROOM: &str = "deploy";
const API_KEY: &str = "deploy-test-api-key";

// ---------------------------------------------------------------- samples

fn sample(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `text` with every `from` replaced by its `to`; each `from` must occur
/// (what the test rewrites is part of the samples' shape).
fn rewrite(name: &str, text: &str, subs: &[(&str, String)]) -> String {
    let mut out = text.to_string();
    for (from, to) in subs {
        assert!(
            out.contains(from),
            "deploy/{name} no longer contains {from:?}"
        );
        out = out.replace(from, to);
    }
    out
}

/// The sample with its `#TLS ` lines uncommented, as deploy/README.md says.
fn uncomment_tls(name: &str, text: &str) -> String {
    assert!(text.contains("#TLS "), "deploy/{name} has no #TLS lines");
    text.replace("#TLS ", "")
}

// ------------------------------------------------------------- processes

/// The path of `bin` (on PATH, else in /usr/sbin where Debian puts both
/// proxies); fails loudly when it cannot run.
fn require(bin: &str) -> String {
    let sbin = format!("/usr/sbin/{bin}");
    let mut why = String::new();
    for cand in [bin, sbin.as_str()] {
        match Command::new(cand).arg("-v").output() {
            Ok(_) => return cand.to_string(),
            Err(e) => why = e.to_string(),
        }
    }
    panic!(
        "cannot run `{bin}` ({why}): tests/deploy_proxies.rs runs the deploy/ samples in a \
         real {bin} (apt-get install -y nginx haproxy; .ci/run installs them)"
    );
}

/// nginx or haproxy in the foreground, with its own directory for the
/// rewritten configuration, logs and sockets; killed on drop.
struct Proxy {
    name: &'static str,
    child: Child,
    dir: tempfile::TempDir,
}

impl Proxy {
    fn path(dir: &tempfile::TempDir, file: &str) -> String {
        dir.path().join(file).to_str().unwrap().to_string()
    }

    fn start(name: &'static str, dir: tempfile::TempDir, mut cmd: Command, ports: &[u16]) -> Proxy {
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut p = Proxy { name, child, dir };
        let start = Instant::now();
        for &port in ports {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Some(status) = p.child.try_wait().unwrap() {
                    panic!("{name} exited ({status}) at start:\n{}", p.logs());
                }
                assert!(
                    start.elapsed() < WAIT,
                    "{name} does not listen on {port}:\n{}",
                    p.logs()
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        p
    }

    /// Everything the proxy wrote to its logs so far.
    fn logs(&self) -> String {
        let mut out = String::new();
        for f in ["stderr.log", "error.log"] {
            if let Ok(t) = std::fs::read_to_string(self.dir.path().join(f)) {
                out.push_str(&format!("--- {} {f}\n{t}", self.name));
            }
        }
        out
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: nginx's master then stops its workers and
        // waits for them (killed outright, it leaves them running).
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() && start.elapsed() < WAIT {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// Ports a proxy listens on.
struct Ports {
    plain: u16,
    tls: u16,
}

/// deploy/nginx.conf in front of `nodes` (with the `#TLS` lines and
/// `pki`'s certificate when given).
fn nginx(nodes: [SocketAddr; 2], ports: &Ports, tls: Option<&Pki>) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| Proxy::path(&dir, f);
    let mut text = sample("nginx.conf");
    let mut subs = vec![
        ("listen 80;", format!("listen 127.0.0.1:{};", ports.plain)),
        ("10.0.1.11:8080", nodes[0].to_string()),
        ("10.0.1.12:8080", nodes[1].to_string()),
        ("/run/nginx.pid", p("nginx.pid")),
        ("/var/log/nginx/error.log", p("error.log")),
        ("/var/log/nginx/corecast.access.log", p("access.log")),
    ];
    if let Some(pki) = tls {
        text = uncomment_tls("nginx.conf", &text);
        subs.extend([
            (
                "listen 443 ssl;",
                format!("listen 127.0.0.1:{} ssl;", ports.tls),
            ),
            ("/etc/nginx/tls/corecast.fullchain.pem", pki.s("server.pem")),
            ("/etc/nginx/tls/corecast.key.pem", pki.s("server.key")),
        ]);
    }
    let conf = p("nginx.conf");
    std::fs::write(&conf, rewrite("nginx.conf", &text, &subs)).unwrap();
    let mut cmd = Command::new(require("nginx"));
    cmd.arg("-p")
        .arg(format!("{}/", dir.path().display()))
        .arg("-c")
        .arg(&conf)
        .arg("-g")
        .arg("daemon off;");
    let listening = if tls.is_some() {
        vec![ports.plain, ports.tls]
    } else {
        vec![ports.plain]
    };
    Proxy::start("nginx", dir, cmd, &listening)
}

/// The sample's maxconn, or less when this process's hard open-file limit
/// cannot hold twice it (plus HAProxy's own descriptors).
fn haproxy_maxconn() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    (lim.rlim_max.saturating_sub(100) / 2).min(100_000)
}

/// deploy/haproxy.cfg in front of `nodes` (with the `#TLS` lines and
/// `pki`'s certificate when given).
fn haproxy(nodes: [SocketAddr; 2], ports: &Ports, tls: Option<&Pki>) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| Proxy::path(&dir, f);
    let mut text = sample("haproxy.cfg");
    let mut subs = vec![
        ("bind :80", format!("bind 127.0.0.1:{}", ports.plain)),
        ("10.0.1.11:8080", nodes[0].to_string()),
        ("10.0.1.12:8080", nodes[1].to_string()),
        ("/run/haproxy/admin.sock", p("admin.sock")),
        // HAProxy refuses to start when it cannot raise its open-file
        // limit to about 2 x maxconn (strict-limits): scaled down to what
        // this process may have (20000 in CI), the one non-path change.
        ("maxconn 100000", format!("maxconn {}", haproxy_maxconn())),
    ];
    if let Some(pki) = tls {
        text = uncomment_tls("haproxy.cfg", &text);
        // HAProxy reads the chain and its key from one file.
        let pem = std::fs::read_to_string(pki.path("server.pem")).unwrap()
            + &std::fs::read_to_string(pki.path("server.key")).unwrap();
        std::fs::write(p("corecast.pem"), pem).unwrap();
        subs.extend([
            ("bind :443", format!("bind 127.0.0.1:{}", ports.tls)),
            ("/etc/haproxy/tls/corecast.pem", p("corecast.pem")),
        ]);
    }
    let conf = p("haproxy.cfg");
    std::fs::write(&conf, rewrite("haproxy.cfg", &text, &subs)).unwrap();
    let mut cmd = Command::new(require("haproxy"));
    // -db: foreground, whatever `daemon` says.
    cmd.arg("-f").arg(&conf).arg("-db");
    let listening = if tls.is_some() {
        vec![ports.plain, ports.tls]
    } else {
        vec![ports.plain]
    };
    Proxy::start("haproxy", dir, cmd, &listening)
}

/// Two nodes from deploy/corecast.toml, joined through `redis`. The
/// environment points them at loopback: the proxies are 127.0.0.1, the
/// clients 127.0.0.2 and up (so the loopback exemption is lifted), and one
/// connection per client address shows which address a node counted.
fn nodes(redis: &RedisServer) -> [ChildServer; 2] {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/corecast.toml");
    let conf = conf.to_str().unwrap();
    let url = redis.url();
    let env = [
        ("CORECAST_LISTEN", "127.0.0.1:0"),
        ("CORECAST_CLUSTER__REDIS", url.as_str()),
        ("CORECAST_PROXY__TRUSTED", "127.0.0.1"),
        ("CORECAST_LIMITS__PER_IP_EXEMPT", ""),
        ("CORECAST_LIMITS__MAX_CONNECTIONS_PER_IP", "1"),
        ("CORECAST_AUTH__SECRET", SECRET),
        ("CORECAST_AUTH__API_KEYS", API_KEY),
        ("CORECAST_CORES", "1"),
        ("CORECAST_PIN", "false"),
    ];
    let start = || {
        let n = ChildServer::start_with_args(&["--config", conf], &env);
        assert!(
            wait_health(n.addr, 200, WAIT),
            "node {} did not report healthy; log: {:?}",
            n.addr,
            n.log()
        );
        n
    };
    [start(), start()]
}

// --------------------------------------------------------------- clients

/// A TCP connection to `to` from the loopback address `src`.
fn tcp_from(src: &str, to: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{src}:0").parse().unwrap();
    sock.bind(&from.into()).unwrap();
    sock.connect(&to.into()).unwrap();
    let t: TcpStream = sock.into();
    t.set_read_timeout(Some(WAIT)).unwrap();
    t.set_nodelay(true).unwrap();
    t
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// TLS over `tcp`, trusting the test CA of `pki` for `localhost`.
fn tls_over(tcp: TcpStream, pki: &Pki) -> Tls {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.path("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .unwrap_or_else(|e| panic!("TLS handshake with the proxy: {e}"));
    }
    tls
}

fn token_for(user: &str) -> String {
    // deploy/corecast.toml requires `exp`.
    token(user, |t| t.ttl = Some(3600))
}

/// A WebSocket client over any stream (plain or TLS).
struct Ws<S: Read + Write> {
    ws: WebSocket<S>,
    welcome: Value,
}

/// Why an upgrade failed: the HTTP status (0: not HTTP).
type Refused = (u16, String);

impl<S: Read + Write> Ws<S> {
    /// The upgrade for `url` over `stream`, with extra `headers`.
    fn over(stream: S, url: &str, headers: &[(&str, &str)]) -> Result<Ws<S>, Refused> {
        let mut req = url.into_client_request().unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(
                tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        match tungstenite::client(req, stream) {
            Ok((ws, _)) => {
                let mut c = Ws {
                    ws,
                    welcome: Value::Null,
                };
                c.welcome = c.recv();
                assert_eq!(c.welcome["type"], "welcome", "{}", c.welcome);
                Ok(c)
            }
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
                let body = r
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Err((r.status().as_u16(), body))
            }
            Err(e) => Err((0, e.to_string())),
        }
    }

    fn node(&self) -> String {
        self.welcome["node"].as_str().unwrap().to_string()
    }

    fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).unwrap();
    }

    fn recv(&mut self) -> Value {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => return serde_json::from_str(&t).unwrap(),
                Ok(Message::Ping(_) | Message::Pong(_)) => {}
                Ok(other) => panic!("expected a text frame, got {other:?}"),
                Err(e) => panic!("expected a text frame, got error {e}"),
            }
        }
    }

    /// The reply to command `id` (events before it skipped).
    fn reply(&mut self, id: &str) -> Value {
        loop {
            let v = self.recv();
            if v["id"] == id {
                return v;
            }
        }
    }

    fn join(&mut self, room: &str) {
        self.send(json!({"type":"join","id":"j","room":room}));
        let ack = self.reply("j");
        assert_eq!(ack["type"], "ack", "join: {ack}");
    }

    /// The next `message` event (others skipped).
    fn message(&mut self) -> Value {
        loop {
            let v = self.recv();
            if v["type"] == "message" {
                return v;
            }
        }
    }
}

/// A plain WebSocket through `proxy` from `src`, as `user`.
fn ws(proxy: SocketAddr, src: &str, user: &str) -> Result<Ws<TcpStream>, Refused> {
    ws_with(proxy, src, user, &[])
}

fn ws_with(
    proxy: SocketAddr,
    src: &str,
    user: &str,
    headers: &[(&str, &str)],
) -> Result<Ws<TcpStream>, Refused> {
    let url = format!("ws://{proxy}/ws?token={}", token_for(user));
    Ws::over(tcp_from(src, proxy), &url, headers)
}

/// A WebSocket over TLS through `proxy` from `src`, as `user`.
fn wss(
    proxy: SocketAddr,
    pki: &Pki,
    src: &str,
    user: &str,
    headers: &[(&str, &str)],
) -> Result<Ws<Tls>, Refused> {
    let url = format!(
        "wss://localhost:{}/ws?token={}",
        proxy.port(),
        token_for(user)
    );
    Ws::over(tls_over(tcp_from(src, proxy), pki), &url, headers)
}

/// One HTTP request (the client asks to close); (status, head, body).
fn http(to: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, String, String) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: corecast.example\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .unwrap_or_else(|e| panic!("{method} {path} via {to}: {e}"));
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// An SSE stream of `ROOM` through `proxy` from `src`, as `user`: the
/// response head is read and checked; the stream stays open.
fn sse(proxy: SocketAddr, src: &str, user: &str) -> TcpStream {
    let mut t = tcp_from(src, proxy);
    let req = format!(
        "GET /sse?rooms={ROOM}&token={} HTTP/1.1\r\nHost: corecast.example\r\n\
         Accept: text/event-stream\r\n\r\n",
        token_for(user)
    );
    t.write_all(req.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match t.read(&mut b) {
            Ok(1) => head.push(b[0]),
            other => panic!(
                "SSE through {proxy}: no whole response head ({other:?}; is the proxy \
                 buffering the stream?): {}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "SSE through {proxy}: {head}"
    );
    assert_eq!(
        header(&head, "content-type"),
        Some("text/event-stream"),
        "{head}"
    );
    t
}

/// Reads `stream` until `marker` shows up. A proxy that buffers the stream
/// keeps a small event until its buffer fills or the stream ends, neither
/// of which happens here: the read times out (WAIT) and the test fails.
fn sse_until(stream: &mut TcpStream, via: &str, marker: &str) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(marker) {
        match stream.read(&mut buf) {
            Ok(0) => panic!("SSE through {via} ended before {marker:?}"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "SSE through {via}: no {marker:?} while the stream stayed open ({e}); \
                 got {:?} — is the proxy buffering the stream?",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

/// Users currently members of `ROOM` (asked of a node directly).
fn members(node: SocketAddr) -> Vec<String> {
    let (status, _, body) = http(node, "GET", &format!("/api/rooms/{ROOM}"), None);
    if status != 200 {
        return Vec::new();
    }
    let v: Value = serde_json::from_str(&body).unwrap();
    v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap().to_string())
        .collect()
}

/// Three upgrades through a proxy from one client address `src`, each
/// claiming another address in its own X-Forwarded-For: the first is
/// served; with one connection per address and node and two nodes, one of
/// the other two lands on a node that already holds `src` and gets 429 —
/// unless the node believed the claimed addresses (then all three pass).
fn one_address_is_one_client<C>(via: &str, mut upgrade: impl FnMut(&str) -> Result<C, Refused>) {
    // Served connections stay open until the end (`results` holds them).
    let mut results = Vec::new();
    for claim in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        results.push(upgrade(claim));
    }
    assert!(
        results[0].is_ok(),
        "{via}: the first connection: {:?}",
        results[0].as_ref().err()
    );
    let refused: Vec<&Refused> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        !refused.is_empty(),
        "{via}: three connections from one client address were all served: the nodes \
         counted the addresses the client claimed in X-Forwarded-For"
    );
    for r in refused {
        assert_eq!(r.0, 429, "{via}: refused with {r:?}");
    }
}

fn free_ports() -> Ports {
    Ports {
        plain: free_port(),
        tls: free_port(),
    }
}

// ------------------------------------------------------------------ tests

#[test]
fn websockets_sse_and_the_api_through_nginx_and_haproxy_reach_every_node() {
    require("nginx");
    require("haproxy");
    let redis = RedisServer::start();
    let nodes = nodes(&redis);
    let addrs = [nodes[0].addr, nodes[1].addr];
    let (np, hp) = (free_ports(), free_ports());
    let ngx = nginx(addrs, &np, None);
    let hap = haproxy(addrs, &hp, None);
    let n: SocketAddr = ([127, 0, 0, 1], np.plain).into();
    let h: SocketAddr = ([127, 0, 0, 1], hp.plain).into();
    // HAProxy's first health checks.
    assert!(
        eventually(WAIT, || http(h, "GET", "/health", None).0 == 200),
        "/health through haproxy\n{}",
        hap.logs()
    );
    assert_eq!(
        http(n, "GET", "/health", None).0,
        200,
        "/health through nginx"
    );

    // Three clients through each proxy, from their own addresses:
    // least-connections puts a proxy's first two on different nodes, so
    // its third is the second one on a node. Every one is served although
    // a node allows one connection per address: no node counted the
    // proxy's address for them.
    let mut clients = Vec::new();
    for (via, proxy, src, user) in [
        ("nginx", n, "127.0.0.2", "n1"),
        ("nginx", n, "127.0.0.3", "n2"),
        ("nginx", n, "127.0.0.4", "n3"),
        ("haproxy", h, "127.0.0.5", "h1"),
        ("haproxy", h, "127.0.0.6", "h2"),
        ("haproxy", h, "127.0.0.7", "h3"),
    ] {
        let c = ws(proxy, src, user).unwrap_or_else(|e| {
            panic!(
                "{user} from {src} through {via}: {e:?} (429: the node counted the proxy's \
                 address, not the client's)"
            )
        });
        clients.push(c);
    }
    assert_ne!(
        clients[0].node(),
        clients[1].node(),
        "nginx: least_conn spreads two WebSockets over the two nodes"
    );
    assert_ne!(
        clients[3].node(),
        clients[4].node(),
        "haproxy: leastconn spreads two WebSockets over the two nodes"
    );
    for c in clients.iter_mut() {
        c.join(ROOM);
    }

    // A publish through each proxy, and one through each proxy's HTTP
    // API, reaches every member: both proxies, both nodes, one order.
    let mut seq = 0;
    let mut everyone_gets = |clients: &mut Vec<Ws<TcpStream>>, what: &Value| {
        seq += 1;
        for c in clients.iter_mut() {
            let m = c.message();
            assert_eq!(m["data"], *what, "{} got {m}", c.welcome["user"]);
            assert_eq!(m["seq"], seq, "{m}");
        }
    };
    let via_nginx = json!({"via":"nginx websocket"});
    clients[0].send(json!({"type":"publish","id":"p","room":ROOM,"data":via_nginx}));
    everyone_gets(&mut clients, &via_nginx);
    assert_eq!(clients[0].reply("p")["type"], "ack");
    let via_haproxy = json!({"via":"haproxy websocket"});
    clients[3].send(json!({"type":"publish","id":"p","room":ROOM,"data":via_haproxy}));
    everyone_gets(&mut clients, &via_haproxy);
    assert_eq!(clients[3].reply("p")["type"], "ack");
    for (via, proxy) in [("nginx", n), ("haproxy", h)] {
        let data = json!({"via": format!("{via} api")});
        let (status, head, body) = http(
            proxy,
            "POST",
            "/api/publish",
            Some(&json!({"room":ROOM,"data":data})),
        );
        assert_eq!(
            status, 200,
            "POST /api/publish through {via}: {head}\n{body}"
        );
        everyone_gets(&mut clients, &data);
    }

    // SSE through each proxy gets a live event while the stream is open.
    let mut streams = [
        ("nginx", sse(n, "127.0.0.8", "sse-nginx")),
        ("haproxy", sse(h, "127.0.0.9", "sse-haproxy")),
    ];
    assert!(
        eventually(WAIT, || {
            let m = members(addrs[0]);
            ["sse-nginx", "sse-haproxy"]
                .iter()
                .all(|u| m.iter().any(|x| x == u))
        }),
        "the SSE streams joined {ROOM}: {:?}",
        members(addrs[0])
    );
    clients[1].send(json!({"type":"publish","id":"p","room":ROOM,"data":{"sse":"live-1"}}));
    assert_eq!(clients[1].reply("p")["type"], "ack");
    for (via, s) in streams.iter_mut() {
        sse_until(s, via, "live-1");
    }

    // One client address is one client, whatever it claims: nginx appends
    // the real address to X-Forwarded-For, HAProxy sends PROXY v2.
    one_address_is_one_client("nginx (X-Forwarded-For)", |claim| {
        ws_with(n, "127.0.0.10", "same-n", &[("X-Forwarded-For", claim)])
    });
    one_address_is_one_client("haproxy (PROXY v2)", |claim| {
        ws_with(h, "127.0.0.11", "same-h", &[("X-Forwarded-For", claim)])
    });

    // /metrics is for scraping each node directly, not through a proxy.
    for (via, proxy) in [("nginx", n), ("haproxy", h)] {
        let (status, head, _) = http(proxy, "GET", "/metrics", None);
        assert_eq!(status, 403, "/metrics through {via}: {head}");
        assert_eq!(http(proxy, "GET", "/health", None).0, 200, "{via}");
    }
    assert_eq!(
        http(addrs[0], "GET", "/metrics", None).0,
        200,
        "a node's own /metrics"
    );
    drop((ngx, hap));
}

#[test]
fn the_tls_lines_terminate_tls_and_redirect_plain_http() {
    require("nginx");
    require("haproxy");
    let pki = pki();
    let redis = RedisServer::start();
    let nodes = nodes(&redis);
    let addrs = [nodes[0].addr, nodes[1].addr];
    let (np, hp) = (free_ports(), free_ports());
    let ngx = nginx(addrs, &np, Some(&pki));
    let hap = haproxy(addrs, &hp, Some(&pki));
    let n: SocketAddr = ([127, 0, 0, 1], np.tls).into();
    let h: SocketAddr = ([127, 0, 0, 1], hp.tls).into();

    // Plain HTTP only redirects.
    for (via, port) in [("nginx", np.plain), ("haproxy", hp.plain)] {
        let (status, head, _) = http(([127, 0, 0, 1], port).into(), "GET", "/ws", None);
        assert_eq!(status, 308, "plain HTTP through {via}: {head}");
        assert_eq!(
            header(&head, "location"),
            Some("https://corecast.example/ws"),
            "{head}"
        );
    }

    let up = |c: Result<Ws<Tls>, Refused>, via: &str| {
        c.unwrap_or_else(|e| panic!("wss through {via}: {e:?}"))
    };
    // HAProxy's first health checks have passed once a request is served.
    let mut b = None;
    assert!(
        eventually(WAIT, || {
            b = wss(h, &pki, "127.0.0.21", "tls-h", &[]).ok();
            b.is_some()
        }),
        "wss through haproxy\n{}",
        hap.logs()
    );
    let mut b = b.unwrap();
    let mut a = up(wss(n, &pki, "127.0.0.20", "tls-n", &[]), "nginx");
    a.join(ROOM);
    b.join(ROOM);
    a.send(json!({"type":"publish","id":"p","room":ROOM,"data":{"over":"tls"}}));
    assert_eq!(a.reply("p")["type"], "ack");
    let m = b.message();
    assert_eq!(m["data"]["over"], "tls", "{m}");

    // The client's address still reaches the nodes (nginx's
    // X-Forwarded-For, HAProxy's PROXY v2 after terminating TLS).
    one_address_is_one_client("nginx over TLS", |claim| {
        wss(
            n,
            &pki,
            "127.0.0.22",
            "tls-same-n",
            &[("X-Forwarded-For", claim)],
        )
    });
    one_address_is_one_client("haproxy over TLS", |claim| {
        wss(
            h,
            &pki,
            "127.0.0.23",
            "tls-same-h",
            &[("X-Forwarded-For", claim)],
        )
    });
    drop((ngx, hap));
}
