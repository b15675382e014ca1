//! One end-to-end walk-through with real third-party clients: Python's
//! `websockets` package (auth three ways, join, publish, typing, presence,
//! members, a direct message) and `prometheus_client`'s OpenMetrics parser
//! on `/metrics` — see tests/e2e/walkthrough.py. `scripts/test.sh` installs
//! both into target/py; without them this test fails, loudly.

mod common;

use common::*;
use std::process::Command;

#[test]
fn python_websockets_client_walks_through_the_protocol() {
    let s = TestServer::with_auth(|c| {
        c.limits.rate_per_sec = 1e6;
        c.limits.rate_burst = 1e6;
    });
    let ann = token("ann", |t| t.name = Some("Ann".into()));
    let bob = token("bob", |t| t.name = Some("Bob".into()));
    let python = std::env::var("CORECAST_TEST_PYTHON").unwrap_or_else(|_| {
        let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/target/py/bin/python");
        if std::path::Path::new(venv).exists() {
            venv.to_string()
        } else {
            "python3".to_string()
        }
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/walkthrough.py");
    // The script's checks are `assert`s: never let an inherited
    // PYTHONOPTIMIZE strip them.
    let out = Command::new(&python)
        .env_remove("PYTHONOPTIMIZE")
        .args([script, &s.addr.to_string(), &ann, &bob])
        .output()
        .unwrap_or_else(|e| panic!("run {python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("OK"),
        "walk-through failed (scripts/test.sh installs `websockets` and \
         `prometheus_client` into target/py):\n{stdout}\n{stderr}"
    );
}
