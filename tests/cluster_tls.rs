//! TLS to Redis (`rediss://`), against a real redis-server listening with
//! TLS (certificates made here with rcgen, a client certificate required as
//! Redis does by default) and corecast nodes as child processes: two nodes
//! work as one through TLS (large messages spanning many TLS records, in
//! order), survive Redis restarting, and a node that does not trust Redis's
//! certificate, or presents none, stays down with `unavailable` rather than
//! talking in the clear.

mod common;

use common::pki::{Pki, pki};
use common::*;
use serde_json::json;
use std::time::Duration;

/// redis-server with a TLS port that requires client certificates (its
/// default) besides the plain port the test itself uses for checks.
fn tls_redis(pki: &Pki) -> (RedisServer, u16) {
    let tls_port = free_port().to_string();
    let (cert, key, ca) = (pki.s("server.pem"), pki.s("server.key"), pki.s("ca.pem"));
    let redis = RedisServer::start_with(&[
        "--save",
        "",
        "--appendonly",
        "no",
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
    ]);
    (redis, tls_port.parse().unwrap())
}

fn tls_env(
    url: &str,
    ca: Option<String>,
    client: Option<(String, String)>,
) -> Vec<(String, String)> {
    let mut env = vec![
        ("CORECAST_CLUSTER__REDIS".to_string(), url.to_string()),
        ("CORECAST_LIMITS__RATE_PER_SEC".into(), "100000".into()),
        ("CORECAST_LIMITS__RATE_BURST".into(), "100000".into()),
    ];
    if let Some(ca) = ca {
        env.push(("CORECAST_CLUSTER__TLS_CA".into(), ca));
    }
    if let Some((cert, key)) = client {
        env.push(("CORECAST_CLUSTER__TLS_CERT".into(), cert));
        env.push(("CORECAST_CLUSTER__TLS_KEY".into(), key));
    }
    env
}

fn refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[test]
fn two_nodes_work_as_one_through_tls_and_survive_a_redis_restart() {
    let pki = pki();
    let (mut redis, port) = tls_redis(&pki);
    let url = format!("rediss://127.0.0.1:{port}");
    let client = Some((pki.s("client.pem"), pki.s("client.key")));
    let env = tls_env(&url, Some(pki.s("ca.pem")), client.clone());
    let n1 = cluster_node(&redis, &refs(&env));
    let n2 = cluster_node(&redis, &refs(&env));
    // Both nodes are registered clients of Redis, over its TLS port.
    let clients = format!("{:?}", redis.cmd(&["CLIENT", "LIST"]));
    assert!(
        clients.matches(&format!("laddr=127.0.0.1:{port}")).count() >= 4,
        "two connections per node on the TLS port: {clients}"
    );

    let (mut a, _) = Client::connect_welcome(&n1.url("/ws"));
    let (mut b, _) = Client::connect_welcome(&n2.url("/ws"));
    a.join("tls-room");
    b.join("tls-room");
    // 40 publishes of 30 KB in a burst: each spans several TLS records, and
    // the command connection's writes outrun the socket.
    let body = "x".repeat(30_000);
    for i in 0..40 {
        a.send(json!({"type":"publish","id":format!("p{i}"),"room":"tls-room","data":{"i":i,"body":body}}));
    }
    let mut acked = 0;
    while acked < 40 {
        let v = a.recv();
        if v["type"] == "ack" {
            acked += 1;
        } else {
            assert_ne!(v["type"], "error", "{v}");
        }
    }
    for i in 0..40u64 {
        let m = b.recv_until("message");
        assert_eq!(
            (m["seq"].as_u64(), m["data"]["i"].as_u64()),
            (Some(i + 1), Some(i))
        );
        assert_eq!(m["data"]["body"].as_str().map(str::len), Some(body.len()));
    }
    let h = b.ask(json!({"type":"history","room":"tls-room","limit":5}));
    assert_eq!(h["messages"].as_array().map(Vec::len), Some(5), "{h}");

    // Redis goes away and comes back (same port, same certificates): the
    // nodes reconnect over TLS by themselves.
    redis.kill();
    assert!(wait_health(n1.addr, 503, Duration::from_secs(10)));
    redis.restart();
    assert!(wait_health(n1.addr, 200, Duration::from_secs(15)));
    assert!(wait_health(n2.addr, 200, Duration::from_secs(15)));
    let (mut c, _) = Client::connect_welcome(&n2.url("/ws"));
    c.join("after");
    let (mut d, _) = Client::connect_welcome(&n1.url("/ws"));
    d.join("after");
    d.send(json!({"type":"publish","id":"q","room":"after","data":"again"}));
    assert_eq!(c.recv_until("message")["data"], "again");
}

#[test]
fn a_node_that_cannot_trust_redis_or_presents_no_certificate_stays_down() {
    let pki = pki();
    let (redis, port) = tls_redis(&pki);
    let url = format!("rediss://127.0.0.1:{port}");
    let client = Some((pki.s("client.pem"), pki.s("client.key")));

    // Redis's certificate is signed by a CA this node does not trust.
    let env = tls_env(&url, Some(pki.s("other-ca.pem")), client.clone());
    let untrusting = ChildServer::start(&refs(&env));
    // No client certificate: Redis refuses the handshake.
    let env = tls_env(&url, Some(pki.s("ca.pem")), None);
    let anonymous = ChildServer::start(&refs(&env));
    // A client certificate Redis's CA did not sign.
    let other = Some((pki.s("other-client.pem"), pki.s("other-client.key")));
    let env = tls_env(&url, Some(pki.s("ca.pem")), other);
    let stranger = ChildServer::start(&refs(&env));

    for (node, why) in [
        (&untrusting, "certificate"),
        (&anonymous, "CertificateRequired"),
        (&stranger, "UnknownCA"),
    ] {
        // First a connection attempt that failed for the expected reason
        // (the log says why), then the node must still be down: it stays
        // down after trying, rather than merely not having tried yet.
        assert!(
            eventually(Duration::from_secs(5), || node
                .log()
                .iter()
                .any(|l| l.contains("redis") && l.contains(why))),
            "the log says why ({why}): {:?}",
            node.log()
        );
        let (status, _, body) = http_get(node.addr, "/health");
        assert_eq!(status, 503, "{body}");
        assert!(body.contains(r#""redis":"down""#), "{body}");
        let (mut c, _) = Client::connect_welcome(&node.url("/ws"));
        let v = c.ask(json!({"type":"direct","to":"someone","data":1}));
        assert_eq!(v["code"], "unavailable", "{v}");
    }
    assert!(
        untrusting
            .log()
            .iter()
            .any(|l| l.contains("TLS") && l.contains("certificate")),
        "{:?}",
        untrusting.log()
    );

    // `#insecure` skips verifying Redis's certificate (a client certificate
    // is still presented): it connects.
    let env = tls_env(&format!("{url}#insecure"), None, client);
    let insecure = cluster_node(&redis, &refs(&env));
    let (status, _, _) = http_get(insecure.addr, "/health");
    assert_eq!(status, 200);
}

#[test]
fn unreadable_tls_files_stop_the_start_with_the_file_named() {
    let pki = pki();
    for (ca, cert, key, named) in [
        ("/nonexistent/ca.pem", None, None, "/nonexistent/ca.pem"),
        (
            pki.path("ca.pem").to_str().unwrap(),
            Some(pki.s("client.pem")),
            Some(pki.s("ca.pem")),
            "ca.pem",
        ),
    ] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_corecast"));
        cmd.env_clear()
            .env("CORECAST_LISTEN", "127.0.0.1:0")
            .env("CORECAST_HISTORY__DURABILITY", "memory")
            .env("CORECAST_CLUSTER__REDIS", "rediss://127.0.0.1:1")
            .env("CORECAST_CLUSTER__TLS_CA", ca);
        if let (Some(cert), Some(key)) = (&cert, &key) {
            cmd.env("CORECAST_CLUSTER__TLS_CERT", cert)
                .env("CORECAST_CLUSTER__TLS_KEY", key);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(named) && err.contains("rediss"), "{err}");
    }
}
