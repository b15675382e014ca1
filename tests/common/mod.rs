//! Shared helpers for the integration tests: an in-process server on a free
//! loopback port, the server binary as a child process, a blocking
//! WebSocket client (tungstenite) with timeouts, and raw HTTP requests.
#![allow(dead_code)]

pub mod pki;

use corecast::{Config, Server};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// Secret used by tests that need tokens.
pub const SECRET: &str = "integration-test-secret";
/// How long a test waits for any one expected event.
pub const WAIT: Duration = Duration::from_secs(10);

/// A server running in this process; drained and joined on drop.
pub struct TestServer {
    server: Option<Server>,
    pub addr: SocketAddr,
}

impl TestServer {
    /// Starts a server on 127.0.0.1:0 with 2 cores; `f` adjusts the config.
    pub fn start(f: impl FnOnce(&mut Config)) -> TestServer {
        let mut c = Config {
            listen: "127.0.0.1:0".into(),
            cores: 2,
            pin: false,
            ..Default::default()
        };
        // Durable history is tested on its own (with a temporary directory).
        c.history.durability = corecast::config::Durability::Memory;
        f(&mut c);
        let server = Server::start(c).expect("server starts");
        let addr = server.local_addr();
        TestServer {
            server: Some(server),
            addr,
        }
    }

    /// A server that requires tokens signed with [`SECRET`].
    pub fn with_auth(f: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::start(|c| {
            c.auth.secret = Some(SECRET.into());
            f(c);
        })
    }

    /// `ws://addr{path}`
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Drains the server and waits for its cores to exit.
    pub fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
}

/// Signs a token with [`SECRET`].
pub fn token(sub: &str, f: impl FnOnce(&mut corecast::auth::TokenSpec)) -> String {
    let mut spec = corecast::auth::TokenSpec {
        sub: sub.into(),
        ..Default::default()
    };
    f(&mut spec);
    corecast::auth::sign_token(SECRET, &spec)
}

/// A blocking WebSocket client.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
}

/// Why a connection attempt failed: the HTTP status and body, or an I/O error text.
#[derive(Debug)]
pub enum ConnectError {
    Http(u16, String),
    Other(String),
}

impl Client {
    /// Connects to `url` (ws://host:port/path?query) with extra request headers.
    pub fn try_connect_with(url: &str, headers: &[(&str, &str)]) -> Result<Client, ConnectError> {
        use tungstenite::client::IntoClientRequest;
        let mut req = url.into_client_request().expect("valid url");
        for (k, v) in headers {
            req.headers_mut().insert(
                tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let host = req.uri().authority().unwrap().as_str().to_string();
        let stream = TcpStream::connect(&host).map_err(|e| ConnectError::Other(e.to_string()))?;
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Self::try_over(req, stream)
    }

    /// The WebSocket handshake for `req` over an already connected `stream`.
    pub fn try_over(
        req: impl tungstenite::client::IntoClientRequest,
        stream: TcpStream,
    ) -> Result<Client, ConnectError> {
        match tungstenite::client(req, stream) {
            Ok((ws, _)) => Ok(Client { ws }),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Err(ConnectError::Http(resp.status().as_u16(), body))
            }
            Err(e) => Err(ConnectError::Other(e.to_string())),
        }
    }

    /// Connects to `url`; panics on failure.
    pub fn connect(url: &str) -> Client {
        Self::try_connect_with(url, &[]).unwrap_or_else(|e| panic!("connect {url}: {e:?}"))
    }

    /// Connects and reads the `welcome`.
    pub fn connect_welcome(url: &str) -> (Client, Value) {
        let mut c = Self::connect(url);
        let w = c.recv_type("welcome");
        (c, w)
    }

    /// Sends a JSON value as a text frame.
    pub fn send(&mut self, v: Value) {
        self.send_text(&v.to_string());
    }

    /// Sends a raw text frame.
    pub fn send_text(&mut self, s: &str) {
        self.ws.send(Message::text(s)).expect("send");
    }

    /// The next text frame as JSON (pings and pongs are skipped; a close
    /// or an error panics with what happened).
    pub fn recv(&mut self) -> Value {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    return serde_json::from_str(&t).unwrap_or_else(|e| panic!("{t}: {e}"));
                }
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(other) => panic!("expected a text frame, got {other:?}"),
                Err(e) => panic!("expected a text frame, got error {e}"),
            }
        }
    }

    /// The next text frame as JSON, `Ok(None)` at a close frame, `Err` once
    /// the connection failed (e.g. after the server died).
    pub fn try_recv(&mut self) -> Result<Option<Value>, String> {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => return Ok(serde_json::from_str(&t).ok()),
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(_) => return Ok(None),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// The next text frame within `ms`, or `None` when nothing came.
    pub fn recv_within(&mut self, ms: u64) -> Option<Value> {
        self.ws
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(ms)))
            .unwrap();
        let out = loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => break serde_json::from_str(&t).ok(),
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(other) => panic!("expected a text frame, got {other:?}"),
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break None;
                }
                Err(e) => panic!("read: {e}"),
            }
        };
        self.ws.get_ref().set_read_timeout(Some(WAIT)).unwrap();
        out
    }

    /// Reads until an event of type `ty` arrives (others are skipped).
    pub fn recv_until(&mut self, ty: &str) -> Value {
        loop {
            let v = self.recv();
            if v["type"] == ty {
                return v;
            }
        }
    }

    /// Sends `cmd` with id "q" and returns the reply with that id, skipping
    /// events.
    pub fn ask(&mut self, mut cmd: Value) -> Value {
        cmd["id"] = json!("q");
        self.send(cmd);
        loop {
            let v = self.recv();
            if v["id"] == "q" {
                return v;
            }
        }
    }

    /// The next `presence` event of `user` (other events skipped).
    pub fn presence_of(&mut self, user: &str) -> Value {
        loop {
            let v = self.recv();
            if v["type"] == "presence" && v["user"] == user {
                return v;
            }
        }
    }

    /// Asserts no `presence` event for `user` arrives within `ms`.
    pub fn no_presence_of(&mut self, user: &str, ms: u64) {
        let end = Instant::now() + Duration::from_millis(ms);
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.recv_within(left.as_millis() as u64 + 1) {
                Some(v) if v["type"] == "presence" && v["user"] == user => {
                    panic!("unexpected presence event {v}")
                }
                Some(_) => {}
                None => return,
            }
        }
    }

    /// The next event, which must have type `ty`.
    pub fn recv_type(&mut self, ty: &str) -> Value {
        let v = self.recv();
        assert_eq!(v["type"], ty, "expected a {ty} event, got {v}");
        v
    }

    /// The next event, which must be an `error` with `code`.
    pub fn expect_error(&mut self, code: &str) -> Value {
        let v = self.recv_type("error");
        assert_eq!(v["code"], code, "{v}");
        v
    }

    /// Sends `cmd` and returns the next event (its reply).
    pub fn request(&mut self, cmd: Value) -> Value {
        self.send(cmd);
        self.recv()
    }

    /// Joins `room` and returns the `ack`.
    pub fn join(&mut self, room: &str) -> Value {
        let ack = self.request(json!({"type":"join","id":"j","room":room}));
        assert_eq!(ack["type"], "ack", "join {room}: {ack}");
        ack
    }

    /// Reads until the server closes; returns the close code (None when the
    /// TCP connection ended without a close frame). Text frames before the
    /// close are returned too.
    pub fn read_until_close(&mut self) -> (Option<u16>, String, Vec<Value>) {
        let mut texts = Vec::new();
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => texts.push(serde_json::from_str(&t).unwrap()),
                Ok(Message::Close(frame)) => {
                    // Finish the handshake; ignore errors.
                    let _ = self.ws.flush();
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    return (Some(code), reason, texts);
                }
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return (None, String::new(), texts);
                }
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("timed out waiting for the server to close");
                }
                Err(_) => return (None, String::new(), texts),
            }
        }
    }

    /// Reads until close and asserts the close code.
    pub fn expect_close(&mut self, code: u16) -> Vec<Value> {
        let (got, reason, texts) = self.read_until_close();
        assert_eq!(
            got,
            Some(code),
            "close reason {reason:?}, frames before: {texts:?}"
        );
        texts
    }

    /// Sends a close frame.
    pub fn close(&mut self) {
        let _ = self.ws.close(Some(tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }));
        let _ = self.ws.flush();
    }
}

/// A raw HTTP/1.1 exchange: sends `request` bytes, reads until the server
/// closes, returns (status, head, body).
pub fn http_raw(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(request).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// The value of header `name` in a response head (case-insensitive name).
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Environment of a 2-core server binary with its history in `dir` under
/// durability `mode`, rate limits lifted.
pub fn durable_env<'a>(dir: &'a str, mode: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CORECAST_CORES", "2"),
        ("CORECAST_HISTORY__DURABILITY", mode),
        ("CORECAST_HISTORY__PATH", dir),
        ("CORECAST_LIMITS__RATE_PER_SEC", "1000000"),
        ("CORECAST_LIMITS__RATE_BURST", "1000000"),
    ]
}

/// `GET path` over raw HTTP.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    http_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
    )
}

/// An HTTP API call: `method path` with a bearer `key` (when given) and a
/// JSON body; returns the status and the parsed body (`Null` if none).
pub fn api(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, _, body) = http_raw(addr, req.as_bytes());
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// The server binary as a child process, with its log captured.
pub struct ChildServer {
    pub child: Child,
    pub addr: SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ChildServer {
    /// Starts `corecast` with `env` variables (CORECAST_LISTEN defaults to a
    /// free port) and waits until it logs that it listens.
    pub fn start(env: &[(&str, &str)]) -> ChildServer {
        ChildServer::start_with_args(&[], env)
    }

    /// [`ChildServer::start`] with command-line arguments (`--config FILE`).
    pub fn start_with_args(args: &[&str], env: &[(&str, &str)]) -> ChildServer {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_corecast"));
        cmd.args(args)
            .env_clear()
            .env("CORECAST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if !env.iter().any(|(k, _)| *k == "CORECAST_LISTEN") {
            cmd.env("CORECAST_LISTEN", "127.0.0.1:0");
        }
        if !env.iter().any(|(k, _)| k.starts_with("CORECAST_HISTORY__")) {
            cmd.env("CORECAST_HISTORY__DURABILITY", "memory");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn corecast");
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let plain = strip_ansi(&line);
                    if let Some(rest) = plain.split("addr=").nth(1)
                        && plain.contains("listening")
                    {
                        let addr = rest.split_whitespace().next().unwrap().to_string();
                        let _ = tx.send(addr);
                    }
                    log.lock().unwrap().push(plain);
                }
            });
        }
        let addr = rx
            .recv_timeout(WAIT)
            .expect("server logged its listen address")
            .parse()
            .unwrap();
        ChildServer { child, addr, log }
    }

    /// `ws://addr{path}`
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Lines logged so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Resident set size of the server process, KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    /// Sends a signal to the server.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety concerns.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0);
    }

    /// Waits up to `timeout` for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A throwaway `redis-server` on a free loopback port (no persistence
/// unless asked), killed on drop. Panics with a clear message when the
/// binary is missing: cluster tests must fail, never skip.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    args: Vec<String>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// `redis-server --save '' --appendonly no` on a free port.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&["--save", "", "--appendonly", "no"])
    }

    /// `redis-server` with these extra arguments.
    pub fn start_with(args: &[&str]) -> RedisServer {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let mut r = RedisServer {
            child: None,
            port,
            args: args.iter().map(|s| s.to_string()).collect(),
            dir,
        };
        r.restart();
        r
    }

    /// (Re)starts the server on the same port and directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): the cluster tests need it \
                     (apt-get install -y redis-server; .ci/run installs it)"
                )
            });
        self.child = Some(child);
        assert!(
            eventually(WAIT, || self.try_cmd(&["PING"]).is_ok()),
            "redis-server on port {} did not answer PING",
            self.port
        );
    }

    /// Kills the server (SIGKILL: nothing is saved).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs one command; panics on failure.
    pub fn cmd(&self, args: &[&str]) -> redis::Value {
        self.try_cmd(args)
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    /// Runs one command.
    pub fn try_cmd(&self, args: &[&str]) -> Result<redis::Value, String> {
        let client = redis::Client::open(self.url()).map_err(|e| e.to_string())?;
        let mut con = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query(&mut con).map_err(|e| e.to_string())
    }

    /// Subscribers of `channel` (PUBSUB NUMSUB).
    pub fn numsub(&self, channel: &str) -> i64 {
        match self.cmd(&["PUBSUB", "NUMSUB", channel]) {
            redis::Value::Array(a) => match a.get(1) {
                Some(redis::Value::Int(n)) => *n,
                other => panic!("NUMSUB reply {other:?}"),
            },
            other => panic!("NUMSUB reply {other:?}"),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A throwaway Redis Cluster of `redis-server --cluster-enabled yes`
/// processes on loopback (masters, and replicas when asked), created with
/// `redis-cli --cluster create`; every process is killed on drop. Panics
/// with a clear message when redis-server or redis-cli is missing.
pub struct RedisCluster {
    /// The nodes, masters first (as created).
    pub nodes: Vec<RedisServer>,
    pub masters: usize,
}

/// A loopback port whose cluster bus port (+10000) is free too.
pub fn free_cluster_port() -> u16 {
    loop {
        let p = 20000 + fastrand::u16(0..20000);
        let ok = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if ok(p) && ok(p + 10000) {
            return p;
        }
    }
}

impl RedisCluster {
    /// `masters` masters with `replicas` replicas each, all slots covered.
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            let port = free_cluster_port();
            let dir = tempfile::tempdir().unwrap();
            let mut r = RedisServer {
                child: None,
                port,
                args: [
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    // The masters that are up keep serving their slots
                    // while another is down (what corecast expects: only
                    // the rooms of a missing master are unavailable).
                    "--cluster-require-full-coverage",
                    "no",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
                dir,
            };
            r.restart();
            nodes.push(r);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .arg("--cluster-replicas")
            .arg(replicas.to_string())
            .arg("--cluster-yes")
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}): the cluster tests need it"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let c = RedisCluster { nodes, masters };
        c.wait_ok();
        c
    }

    /// Waits until every node reports `cluster_state:ok` and agrees on
    /// `masters` masters.
    pub fn wait_ok(&self) {
        let ok = eventually(Duration::from_secs(30), || {
            self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                let info = match n.try_cmd(&["CLUSTER", "INFO"]) {
                    Ok(redis::Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
                    Ok(redis::Value::VerbatimString { text, .. }) => text,
                    _ => return false,
                };
                // A replica counts once it is in sync with its master (a
                // manual failover before that does not happen).
                let repl = match n.try_cmd(&["INFO", "replication"]) {
                    Ok(redis::Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
                    Ok(redis::Value::VerbatimString { text, .. }) => text,
                    _ => return false,
                };
                info.contains("cluster_state:ok")
                    && (repl.contains("role:master") || repl.contains("master_link_status:up"))
            })
        });
        assert!(
            ok,
            "the redis cluster did not reach cluster_state:ok with replicas in sync"
        );
    }

    /// The seed URLs, comma-separated (for `CORECAST_CLUSTER__REDIS`).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node that is master of `key`'s slot now (as the first live
    /// node sees the cluster).
    pub fn master_of(&self, key: &str) -> &RedisServer {
        let live = self
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .expect("a live node");
        let slot = match live.cmd(&["CLUSTER", "KEYSLOT", key]) {
            redis::Value::Int(s) => s,
            other => panic!("KEYSLOT {other:?}"),
        };
        let port = owner_port(live, slot).unwrap_or_else(|| panic!("no master for slot {slot}"));
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .expect("a node of the cluster")
    }
}

/// The port of the master that owns `slot`, as `n` sees the cluster.
fn owner_port(n: &RedisServer, slot: i64) -> Option<u16> {
    let redis::Value::Array(ranges) = n.try_cmd(&["CLUSTER", "SLOTS"]).ok()? else {
        return None;
    };
    for r in ranges {
        let redis::Value::Array(r) = r else { continue };
        if let (
            Some(redis::Value::Int(a)),
            Some(redis::Value::Int(b)),
            Some(redis::Value::Array(m)),
        ) = (r.first(), r.get(1), r.get(2))
            && (*a..=*b).contains(&slot)
            && let Some(redis::Value::Int(p)) = m.get(1)
        {
            return Some(*p as u16);
        }
    }
    None
}

/// A corecast node joined to a Redis Cluster (mode `cluster`, every node
/// of it a seed), as a child process; waits until `/health` is up.
pub fn cluster_mode_node(c: &RedisCluster, env: &[(&str, &str)]) -> ChildServer {
    let urls = c.urls();
    let mut all: Vec<(&str, &str)> = vec![
        ("CORECAST_CLUSTER__REDIS", urls.as_str()),
        ("CORECAST_CLUSTER__MODE", "cluster"),
        ("CORECAST_CORES", "2"),
        ("CORECAST_PIN", "false"),
        ("CORECAST_PRESENCE__GRACE", "1"),
    ];
    all.retain(|(k, _)| !env.iter().any(|(e, _)| e == k));
    all.extend_from_slice(env);
    let node = ChildServer::start(&all);
    assert!(
        wait_health(node.addr, 200, WAIT),
        "node {} did not report healthy; log: {:?}",
        node.addr,
        node.log()
    );
    node
}

/// A free loopback port (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A corecast node joined to `redis`, as a child process; waits until its
/// `/health` reports Redis up. `env` adds or overrides variables.
pub fn cluster_node(redis: &RedisServer, env: &[(&str, &str)]) -> ChildServer {
    let url = redis.url();
    let mut all: Vec<(&str, &str)> = vec![
        ("CORECAST_CLUSTER__REDIS", url.as_str()),
        ("CORECAST_CORES", "2"),
        ("CORECAST_PIN", "false"),
        ("CORECAST_PRESENCE__GRACE", "1"),
    ];
    all.retain(|(k, _)| !env.iter().any(|(e, _)| e == k));
    all.extend_from_slice(env);
    let node = ChildServer::start(&all);
    assert!(
        wait_health(node.addr, 200, WAIT),
        "node {} did not report healthy; log: {:?}",
        node.addr,
        node.log()
    );
    node
}

/// Waits until `GET /health` answers `status` (and returns whether it did).
pub fn wait_health(addr: SocketAddr, status: u16, timeout: Duration) -> bool {
    eventually(timeout, || http_get(addr, "/health").0 == status)
}

/// The value of sample `name{labels}` in a metrics exposition.
pub fn metric(text: &str, name: &str, labels: &str) -> f64 {
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(name)
            && let Some(v) = rest.strip_prefix(labels).and_then(|r| r.strip_prefix(' '))
        {
            return v.trim().parse().unwrap();
        }
    }
    panic!("{name}{labels} not in /metrics:\n{text}");
}

/// `/metrics` in OpenMetrics, checked to be well formed.
pub fn scrape(s: &TestServer) -> String {
    let (status, head, body) = http_raw(
        s.addr,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n",
    );
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    // Well-formed OpenMetrics: every sample belongs to a declared family,
    // and the exposition ends with # EOF.
    assert!(body.ends_with("# EOF\n"));
    let families: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    for l in body.lines().filter(|l| !l.starts_with('#')) {
        let name = l.split(['{', ' ']).next().unwrap();
        assert!(
            families.iter().any(|f| name.starts_with(f)),
            "sample {l:?} of no declared family"
        );
        let value = l.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad value in {l:?}");
    }
    body
}
