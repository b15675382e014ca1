//! The `corecast` binary's command line: `token`, configuration errors,
//! `--help`, and flags overriding the environment.

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_corecast");

/// What a finished run printed.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    // The default store lands in ./data: keep it out of the source tree,
    // one directory per run (a store is locked by the server holding it).
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let cwd = std::env::temp_dir().join(format!("corecast-cli-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&cwd).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("NO_COLOR", "1")
        .current_dir(cwd)
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs the binary to completion (killed after `WAIT`, which fails the test).
fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut child = command(args, env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn corecast");
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > WAIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "corecast {args:?} still running after {WAIT:?}; stderr: {}",
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// A server started with flags; killed on drop.
struct Running {
    child: Child,
    addr: SocketAddr,
    listening_line: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the server with `args` and `env`, waits for its "listening" line.
fn serve(args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut child = command(args, env)
        .env("CORECAST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn corecast");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let plain = strip_ansi(&line);
            if plain.contains("listening") {
                let _ = tx.send(plain);
            }
        }
    });
    let line = match rx.recv_timeout(WAIT) {
        Ok(l) => l,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server did not log `listening`");
        }
    };
    let addr = line
        .split("addr=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no addr= in {line:?}"));
    Running {
        child,
        addr,
        listening_line: line,
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
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

fn temp_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("corecast-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn token_subcommand_prints_a_jwt_the_server_accepts() {
    let r = run(
        &[
            "token",
            "--sub",
            "u1",
            "--name",
            "Ann",
            "--rooms",
            "lobby,team:*",
        ],
        &[("CORECAST_AUTH__SECRET", SECRET)],
    );
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    let jwt = r.stdout.trim();
    assert_eq!(jwt.split('.').count(), 3, "a JWT on stdout: {:?}", r.stdout);

    let server = TestServer::with_auth(|_| {});
    let (mut c, w) = Client::connect_welcome(&server.url(&format!("/ws?token={jwt}")));
    assert_eq!(w["user"], "u1", "{w}");
    assert_eq!(w["name"], "Ann", "{w}");
    assert_eq!(c.join("team:5")["room"], "team:5");
    c.recv_type("joined");
    assert_eq!(c.join("lobby")["room"], "lobby");
    c.recv_type("joined");
    c.send(json!({"type":"join","id":"x","room":"other"}));
    c.expect_error("forbidden");
}

#[test]
fn token_from_another_secret_is_refused() {
    // Control: the server really verifies the CLI's signature.
    let r = run(
        &["token", "--sub", "u1"],
        &[("CORECAST_AUTH__SECRET", "a-different-secret")],
    );
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    let server = TestServer::with_auth(|_| {});
    match Client::try_connect_with(&server.url(&format!("/ws?token={}", r.stdout.trim())), &[]) {
        Err(ConnectError::Http(status, _)) => assert_eq!(status, 401),
        Err(e) => panic!("expected 401, got {e:?}"),
        Ok(_) => panic!("a token signed with another secret was accepted"),
    }
}

#[test]
fn token_without_secret_exits_2_naming_auth_secret() {
    let r = run(&["token", "--sub", "u1"], &[]);
    assert_eq!(r.code, Some(2), "stdout: {} stderr: {}", r.stdout, r.stderr);
    assert!(r.stderr.contains("auth.secret"), "stderr: {}", r.stderr);
    assert!(r.stdout.trim().is_empty(), "no token printed: {}", r.stdout);
}

#[test]
fn invalid_env_value_exits_2_naming_the_key() {
    let r = run(&[], &[("CORECAST_HEARTBEAT", "0")]);
    assert_eq!(r.code, Some(2), "stderr: {}", r.stderr);
    assert!(r.stderr.contains("heartbeat"), "stderr: {}", r.stderr);
}

#[test]
fn unknown_env_key_exits_2_naming_the_key() {
    let r = run(&[], &[("CORECAST_NOPE", "1")]);
    assert_eq!(r.code, Some(2), "stderr: {}", r.stderr);
    assert!(
        r.stderr.to_lowercase().contains("nope"),
        "stderr: {}",
        r.stderr
    );
}

#[test]
fn bad_value_in_config_file_exits_2_naming_the_key() {
    let path = temp_config("bad.toml", "[limits]\nmax_rooms = \"many\"\n");
    let r = run(&["--config", path.to_str().unwrap()], &[]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(r.code, Some(2), "stderr: {}", r.stderr);
    assert!(r.stderr.contains("max_rooms"), "stderr: {}", r.stderr);
}

#[test]
fn invalid_config_also_stops_the_token_subcommand() {
    let r = run(
        &["token", "--sub", "u1"],
        &[
            ("CORECAST_AUTH__SECRET", SECRET),
            ("CORECAST_LIMITS__MAX_BACKLOG", "10"),
        ],
    );
    assert_eq!(r.code, Some(2), "stderr: {}", r.stderr);
    assert!(r.stderr.contains("max_backlog"), "stderr: {}", r.stderr);
}

#[test]
fn help_lists_the_operator_flags_and_token() {
    let r = run(&["--help"], &[]);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    for needle in [
        "--config",
        "--listen",
        "--cores",
        "token",
        "CORECAST_LIMITS__MAX_WRITE_DELAY_MS",
        "corecast_frames_per_write",
    ] {
        assert!(
            r.stdout.contains(needle),
            "--help lacks {needle}:\n{}",
            r.stdout
        );
    }
    let r = run(&["token", "--help"], &[]);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    for needle in ["--sub", "--name", "--rooms", "--ttl"] {
        assert!(
            r.stdout.contains(needle),
            "token --help lacks {needle}:\n{}",
            r.stdout
        );
    }
}

#[test]
fn embedded_defaults_keep_history_durably_in_data() {
    let server = serve(&[], &[("CORECAST_LISTEN", "127.0.0.1:0")]);
    let (status, _, body) = http_get(server.addr, "/health");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["store"], "ok", "a store is open by default: {v}");
    let cwd = std::fs::read_link(format!("/proc/{}/cwd", server.child.id())).unwrap();
    assert!(cwd.join("data").is_dir(), "./data created in {cwd:?}");
}

#[test]
fn listen_and_cores_flags_override_env() {
    let server = serve(
        &["--listen", "127.0.0.2:0", "--cores", "3"],
        &[("CORECAST_LISTEN", "127.0.0.1:0"), ("CORECAST_CORES", "1")],
    );
    assert_eq!(
        server.addr.ip().to_string(),
        "127.0.0.2",
        "{}",
        server.listening_line
    );
    assert!(
        server.listening_line.contains("cores=3"),
        "{}",
        server.listening_line
    );
    let (status, _, body) = http_get(server.addr, "/health");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["cores"], 3, "{v}");
}

#[test]
fn config_file_is_overridden_by_env() {
    let path = temp_config("layer.toml", "cores = 1\nlisten = \"127.0.0.1:1\"\n");
    let server = serve(
        &["--config", path.to_str().unwrap()],
        &[("CORECAST_LISTEN", "127.0.0.1:0"), ("CORECAST_CORES", "2")],
    );
    let _ = std::fs::remove_file(&path);
    assert!(
        server.listening_line.contains("cores=2"),
        "{}",
        server.listening_line
    );
    assert_ne!(server.addr.port(), 1);
    let (status, _, body) = http_get(server.addr, "/health");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["cores"], 2, "{v}");
}

#[test]
fn a_busy_port_names_the_address() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let r = run(
        &[],
        &[
            ("CORECAST_LISTEN", &addr),
            ("CORECAST_HISTORY__DURABILITY", "memory"),
        ],
    );
    assert_eq!(r.code, Some(1), "stderr: {}", r.stderr);
    assert!(
        r.stderr.contains(&format!("cannot listen on {addr}")) && r.stderr.contains("in use"),
        "stderr: {}",
        r.stderr
    );
}
