//! Server-Sent Events with a real HTTP client (`ureq`, a blocking HTTP
//! client that reads the stream incrementally) including a resume with
//! `Last-Event-ID`, and `/metrics` parsed as OpenMetrics text with its
//! counters moving as the test drives traffic.

mod common;

use common::*;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::time::Duration;

const KEY: &str = "key-sse-123";

fn server() -> TestServer {
    TestServer::with_auth(|c| {
        c.auth.api_keys = vec![KEY.into()];
        c.heartbeat = 1;
        c.limits.rate_per_sec = 1e6;
        c.limits.rate_burst = 1e6;
    })
}

/// One SSE event: (event, id, data).
type Ev = (String, String, String);

struct Stream {
    lines: std::io::Lines<BufReader<Box<dyn std::io::Read>>>,
    pings: usize,
}

impl Stream {
    fn open(s: &TestServer, rooms: &str, tok: &str, last_id: Option<&str>) -> Stream {
        let url = format!("http://{}/sse?rooms={rooms}&token={tok}", s.addr);
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_recv_body(Some(WAIT))
                .build(),
        );
        let mut req = agent.get(&url);
        if let Some(id) = last_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.call().expect("SSE request");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()
                .get("content-type")
                .unwrap()
                .to_str()
                .unwrap(),
            "text/event-stream"
        );
        let reader: Box<dyn std::io::Read> = Box::new(resp.into_body().into_reader());
        Stream {
            lines: BufReader::new(reader).lines(),
            pings: 0,
        }
    }

    /// The next event (comments counted, skipped).
    fn next(&mut self) -> Ev {
        let (mut ev, mut id, mut data) = (String::new(), String::new(), String::new());
        loop {
            let line = self.lines.next().expect("stream open").expect("read");
            if line.is_empty() {
                if !data.is_empty() {
                    return (ev, id, data);
                }
                continue;
            }
            if line.starts_with(": ping") {
                self.pings += 1;
            } else if let Some(v) = line.strip_prefix("event: ") {
                ev = v.to_string();
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = v.to_string();
            }
        }
    }

    fn message(&mut self) -> (serde_json::Value, String) {
        loop {
            let (ev, id, data) = self.next();
            if ev == "message" {
                return (serde_json::from_str(&data).unwrap(), id);
            }
        }
    }
}

fn publish(s: &TestServer, room: &str, i: u64) {
    let (status, body) = api(
        s.addr,
        "POST",
        "/api/publish",
        Some(KEY),
        Some(&json!({"room":room,"data":{"i":i}})),
    );
    assert_eq!(status, 200, "{body}");
}

#[test]
fn sse_streams_rooms_and_resumes_with_last_event_id() {
    let s = server();
    let tok = token("reader", |_| {});
    let mut st = Stream::open(&s, "sa,sb", &tok, None);
    // The stream joined both rooms before anything is published: wait for
    // the membership to show up at the rooms' home cores.
    assert!(eventually(WAIT, || {
        ["sa", "sb"].iter().all(|r| {
            let (_, b) = api(s.addr, "GET", &format!("/api/rooms/{r}"), Some(KEY), None);
            b["members"].as_array().is_some_and(|m| !m.is_empty())
        })
    }));
    publish(&s, "sa", 1);
    publish(&s, "sb", 2);
    let (m1, _) = st.message();
    let (m2, id2) = st.message();
    let mut got: Vec<(String, u64)> = [m1, m2]
        .iter()
        .map(|m| {
            (
                m["room"].as_str().unwrap().to_string(),
                m["data"]["i"].as_u64().unwrap(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(got, [("sa".to_string(), 1), ("sb".to_string(), 2)]);
    // The id names both rooms' positions.
    assert!(id2.contains("sa:1@") && id2.contains("sb:1@"), "{id2}");
    drop(st);
    // Missed while away.
    publish(&s, "sa", 3);
    publish(&s, "sb", 4);
    publish(&s, "sa", 5);
    let mut st = Stream::open(&s, "sa,sb", &tok, Some(&id2));
    let mut resumed = Vec::new();
    for _ in 0..3 {
        let (m, _) = st.message();
        resumed.push(m["data"]["i"].as_u64().unwrap());
    }
    resumed.sort();
    assert_eq!(resumed, [3, 4, 5], "exactly the missed messages");
    // Then live ones, and heartbeat comments keep coming.
    publish(&s, "sb", 6);
    let (m, _) = st.message();
    assert_eq!(m["data"]["i"], 6);
    std::thread::sleep(Duration::from_millis(1200));
    publish(&s, "sa", 7);
    st.message();
    assert!(st.pings >= 1, "no `: ping` comment within a heartbeat");
    drop(st);
    // A cursor in the short form of the protocol (no epochs) resumes in
    // the rooms' current epochs.
    // sa holds i=1,3,5,7 as seqs 1-4; sb holds i=2,4,6 as seqs 1-3.
    let mut st = Stream::open(&s, "sa,sb", &tok, Some("sa:2;sb:2"));
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(st.message().0["data"]["i"].as_u64().unwrap());
    }
    got.sort();
    assert_eq!(got, [5, 6, 7]);
}

#[test]
fn sse_refuses_bad_tokens_and_forbidden_rooms() {
    let s = server();
    let (status, _, _) = http_get(s.addr, "/sse?rooms=a&token=bad");
    assert_eq!(status, 401);
    let (status, _, _) = http_get(s.addr, "/sse?rooms=a");
    assert_eq!(status, 401, "auth is required on this server");
    let tok = token("r", |t| t.rooms = Some(vec!["only".into()]));
    let (status, _, _) = http_get(s.addr, &format!("/sse?rooms=other&token={tok}"));
    assert_eq!(status, 403);
    let (status, _, _) = http_get(s.addr, &format!("/sse?token={tok}"));
    assert_eq!(status, 400);
}

/// Without an `Accept` that names OpenMetrics, `/metrics` is the
/// Prometheus text format 0.0.4: no `# EOF`, counters typed under the
/// `_total` names their samples carry, the same values.
#[test]
fn metrics_speak_prometheus_text_unless_openmetrics_is_asked() {
    let s = server();
    let (status, head, body) = http_get(s.addr, "/metrics");
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        !body.contains("# EOF") && !body.contains("# UNIT"),
        "{body}"
    );
    assert!(
        body.contains("# TYPE corecast_messages_in_total counter\n"),
        "{body}"
    );
    assert!(
        body.contains("# TYPE corecast_connections gauge\n"),
        "{body}"
    );
    let families: Vec<(&str, &str)> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split_once(' ').unwrap())
        .collect();
    for l in body.lines().filter(|l| !l.starts_with('#')) {
        let name = l.split(['{', ' ']).next().unwrap();
        let declared = families.iter().any(|(f, t)| match *t {
            "histogram" => ["_bucket", "_sum", "_count"]
                .iter()
                .any(|x| name == format!("{f}{x}")),
            _ => name == *f,
        });
        assert!(declared, "sample {l:?} of no declared family");
    }
    let om = scrape(&s);
    assert_eq!(
        metric(&body, "corecast_published_total", ""),
        metric(&om, "corecast_published_total", "")
    );
}

#[test]
fn metrics_counters_move_with_traffic() {
    let s = server();
    let before = scrape(&s);
    let in0 = metric(&before, "corecast_messages_in_total", "");
    let t = token("m", |_| {});
    let (mut c, _) = Client::connect_welcome(&s.url(&format!("/ws?token={t}")));
    c.ask(json!({"type":"join","room":"mx"}));
    for i in 0..5 {
        c.ask(json!({"type":"publish","room":"mx","data":i}));
    }
    c.send_text("not json");
    c.recv_until("error");
    let after = scrape(&s);
    assert!(metric(&after, "corecast_messages_in_total", "") >= in0 + 7.0);
    assert!(metric(&after, "corecast_published_total", "") >= 5.0);
    assert_eq!(
        metric(&after, "corecast_errors_total", "{code=\"bad_json\"}"),
        1.0
    );
    let conns = metric(&after, "corecast_connections", "{core=\"0\"}")
        + metric(&after, "corecast_connections", "{core=\"1\"}");
    assert_eq!(conns, 1.0);
    assert!(metric(&after, "corecast_delivery_latency_seconds_count", "") >= 5.0);
    assert!(metric(&after, "corecast_loop_iteration_seconds_count", "") > 0.0);
    assert!(metric(&after, "corecast_bytes_in_total", "") > 0.0);
    assert!(metric(&after, "corecast_bytes_out_total", "") > 0.0);
    // A refused handshake shows up by status.
    let (status, _, _) = http_get(s.addr, "/ws?token=bad");
    assert_ne!(status, 200);
    let after = scrape(&s);
    assert!(metric(&after, "corecast_http_errors_total", "{status=\"400\"}") >= 1.0);
}
