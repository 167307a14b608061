//! Operating it: the Prometheus metrics, the JSON admin API and its bearer
//! token, adding and removing servers at run time, hot reload (SIGHUP and
//! `POST /reload`) and the access log.
//!
//! The admin listener's address is taken from the balancer's log line
//! `admin API (metrics, servers, reload) at http://127.0.0.1:PORT/`; the
//! common config binds it to `127.0.0.1:0`. Counters are bumped after a
//! response has been written, so every check of a count polls the admin API
//! against a deadline until the count is reached and then asserts exactly.

mod common;
#[path = "common/prometheus.rs"]
mod prometheus;

use common::*;
use prometheus::{Exposition, parse_exposition};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io::Write;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// A valid admin token (at least 16 printable characters).
const TOKEN: &str = "0123456789abcdef0123";
/// Deadline of every poll in this file.
const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Prometheus text exposition format: a strict parser
// ---------------------------------------------------------------------------

#[test]
fn exposition_parser_is_strict() {
    let good = "# HELP a_total A counter.\n# TYPE a_total counter\n\
                a_total{x=\"q\\\"\\\\\\n\",y=\"\"} 3\n\
                # HELP h Hist.\n# TYPE h histogram\n\
                h_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.75\nh_count 2\n";
    let e = parse_exposition(good).expect("valid text");
    assert_eq!(e.value("a_total", &[("x", "q\"\\\n")]), 3.0);
    assert_eq!(e.value("h_count", &[]), 2.0);
    let bad = [
        ("no newline at the end", "# HELP a A.\n# TYPE a gauge\na 1"),
        ("no TYPE", "# HELP a A.\na 1\n"),
        ("no HELP", "# TYPE a gauge\na 1\n"),
        ("TYPE after samples", "# HELP a A.\na 1\n# TYPE a gauge\n"),
        ("unquoted label", "# HELP a A.\n# TYPE a gauge\na{x=1} 1\n"),
        (
            "bad escape",
            "# HELP a A.\n# TYPE a gauge\na{x=\"\\t\"} 1\n",
        ),
        ("bad value", "# HELP a A.\n# TYPE a gauge\na 1,5\n"),
        ("two spaces", "# HELP a A.\n# TYPE a gauge\na  1\n"),
        ("negative counter", "# HELP a A.\n# TYPE a counter\na -1\n"),
        (
            "duplicate series",
            "# HELP a A.\n# TYPE a gauge\na{x=\"1\"} 1\na{x=\"1\"} 2\n",
        ),
        (
            "non-contiguous family",
            "# HELP a A.\n# TYPE a gauge\n# HELP b B.\n# TYPE b gauge\n\
             a{x=\"1\"} 1\nb 1\na{x=\"2\"} 1\n",
        ),
        (
            "not cumulative",
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\n\
             h_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        ),
        (
            "no +Inf bucket",
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
        ),
        (
            "count differs from +Inf",
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
        ),
    ];
    for (what, text) in bad {
        assert!(
            parse_exposition(text).is_err(),
            "the parser accepted text with {what}:\n{text}"
        );
    }
}

// ---------------------------------------------------------------------------
// Admin client
// ---------------------------------------------------------------------------

/// One admin call on a fresh connection with an optional Authorization value.
fn call_admin(
    port: u16,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: &[u8],
) -> Response {
    let mut headers = vec![("Connection", "close")];
    if let Some(a) = authorization {
        headers.push(("Authorization", a));
    }
    if body.is_empty() && method != "GET" {
        headers.push(("Content-Length", "0"));
    }
    one_request(port, method, path, &headers, body)
}

/// Asserts an error answer: `status` with a JSON `{"error": "..."}`.
#[track_caller]
fn assert_error(r: &Response, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {r:?}");
    let v = json_of(r);
    let msg = v["error"].as_str().unwrap_or("");
    assert!(!msg.is_empty(), "{what}: no JSON `error` message in {v}");
}

struct Admin {
    port: u16,
    token: Option<&'static str>,
}

impl Admin {
    fn new(lb: &Balancer) -> Admin {
        Admin {
            port: admin_port(lb),
            token: None,
        }
    }

    fn call(&self, method: &str, path: &str, body: &str) -> Response {
        let auth = self.token.map(|t| format!("Bearer {t}"));
        call_admin(self.port, method, path, auth.as_deref(), body.as_bytes())
    }

    fn json(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let r = self.call(method, path, body);
        (r.status, json_of(&r))
    }

    #[track_caller]
    fn get(&self, path: &str) -> Value {
        let (status, v) = self.json("GET", path, "");
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    #[track_caller]
    fn metrics(&self) -> Exposition {
        let r = self.call("GET", "/metrics", "");
        assert_eq!(r.status, 200, "GET /metrics: {r:?}");
        let ct = r.header("Content-Type").unwrap_or("");
        assert!(ct.starts_with("text/plain"), "metrics content type {ct:?}");
        r.assert_complete_with_length();
        let text = r.body_str();
        parse_exposition(&text).unwrap_or_else(|e| panic!("bad exposition: {e}\n{text}"))
    }

    #[track_caller]
    fn servers(&self) -> Vec<Value> {
        match self.get("/servers") {
            Value::Array(list) => list,
            other => panic!("GET /servers is not an array: {other}"),
        }
    }

    fn server(&self, addr: &str) -> Option<Value> {
        self.servers().into_iter().find(|s| s["address"] == addr)
    }

    #[track_caller]
    fn id_of(&self, addr: &str) -> u64 {
        let s = self
            .server(addr)
            .unwrap_or_else(|| panic!("{addr} not in GET /servers"));
        s["id"].as_u64().expect("numeric id")
    }

    /// `POST /servers` that must succeed; returns the new id.
    #[track_caller]
    fn add(&self, body: &str) -> u64 {
        let (status, v) = self.json("POST", "/servers", body);
        assert_eq!(status, 201, "POST /servers {body}: {v}");
        v["id"].as_u64().unwrap_or_else(|| panic!("no id in {v}"))
    }

    #[track_caller]
    fn delete(&self, id: u64) {
        let r = self.call("DELETE", &format!("/servers/{id}"), "");
        assert_eq!(r.status, 204, "DELETE /servers/{id}: {r:?}");
        assert!(r.body.is_empty(), "204 with a body: {r:?}");
    }

    /// Polls `GET /servers` until server `id` has `health`.
    #[track_caller]
    fn wait_health(&self, id: u64, health: &str) {
        let seen = poll_until(WAIT, || {
            self.servers()
                .into_iter()
                .find(|s| s["id"] == id && s["health"] == health)
        });
        assert!(
            seen.is_some(),
            "server {id} never became {health}: {:?}",
            self.servers()
        );
    }
}

fn add_body(addr: &str, weight: u32, check: &str) -> String {
    format!(r#"{{"address": "{addr}", "weight": {weight}, "check": {check}}}"#)
}

const HTTP_CHECK: &str = r#"{"type": "http", "path": "/health"}"#;
const TCP_CHECK: &str = r#"{"type": "tcp"}"#;

// ---------------------------------------------------------------------------
// Proxy-side helpers
// ---------------------------------------------------------------------------

/// A thread sending sequential `GET /` requests (fresh connections, so they
/// spread over the workers) until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    results: Arc<Mutex<Vec<Outcome>>>,
    handle: Option<JoinHandle<()>>,
}

impl Traffic {
    fn start(port: u16) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new(Vec::new()));
        let (stop2, results2) = (stop.clone(), results.clone());
        let handle = thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let r = try_request(port, "GET", "/");
                results2.lock().unwrap().push(r);
                // Pacing (a steady stream, not a flood), not a wait for anything.
                thread::sleep(Duration::from_millis(2));
            }
        });
        Traffic {
            stop,
            results,
            handle: Some(handle),
        }
    }

    fn count(&self) -> usize {
        self.results.lock().unwrap().len()
    }

    /// Waits until `n` more requests have completed.
    #[track_caller]
    fn wait_more(&self, n: usize) {
        let target = self.count() + n;
        assert!(
            poll_until(WAIT, || (self.count() >= target).then_some(())).is_some(),
            "background traffic stalled at {} requests (wanted {target})",
            self.count()
        );
    }

    /// Backend ports of the requests completed from index `from` on.
    fn ports_from(&self, from: usize) -> Vec<u16> {
        let r = self.results.lock().unwrap();
        r.iter()
            .skip(from)
            .filter_map(|o| o.as_ref().ok().and_then(|(_, p)| *p))
            .collect()
    }

    fn finish(mut self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().expect("traffic thread");
        }
        std::mem::take(&mut *self.results.lock().unwrap())
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Every outcome is a 200 from a backend.
#[track_caller]
fn assert_all_ok(results: &[Outcome], what: &str) {
    let failed: Vec<(usize, &Outcome)> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| !matches!(r, Ok((200, Some(_)))))
        .collect();
    assert!(
        failed.is_empty(),
        "{what}: {} of {} requests failed, first ones: {:?}",
        failed.len(),
        results.len(),
        &failed[..failed.len().min(5)]
    );
}

/// Polls `GET /` through the proxy until it is answered by `backend_port`.
#[track_caller]
fn wait_reaches(lb_port: u16, backend_port: u16) {
    let mut seen = Vec::new();
    let hit = poll_until(WAIT, || {
        let r = http_get(lb_port, "/");
        assert_eq!(r.status, 200, "GET / through the proxy: {r:?}");
        let p = r.backend_port();
        seen.push(p);
        (p == backend_port).then_some(())
    });
    assert!(
        hit.is_some(),
        "no request reached backend {backend_port}; answered by {:?}",
        count(&seen)
    );
}

/// Sends `n` requests through the proxy and checks that none reached
/// `backend`: not by the answering port, and not by the backend's own
/// request counter (which counts its own `/stats` call, hence the `+ 1`).
#[track_caller]
fn assert_no_traffic_to(lb_port: u16, backend: &Backend, n: usize) {
    let (_, before) = backend_stats(backend.port);
    let ports: Vec<u16> = (0..n)
        .map(|_| {
            let r = http_get(lb_port, "/");
            assert_eq!(r.status, 200, "GET / through the proxy: {r:?}");
            r.backend_port()
        })
        .collect();
    let (_, after) = backend_stats(backend.port);
    assert!(
        !ports.contains(&backend.port),
        "requests reached removed backend {}: {:?}",
        backend.port,
        count(&ports)
    );
    assert_eq!(
        after,
        before + 1,
        "backend {} received requests after its removal",
        backend.port
    );
}

/// Answering ports of `n` requests on one keep-alive connection.
fn sample_ports(lb_port: u16, n: usize) -> HashMap<u16, usize> {
    let mut c = Conn::connect(lb_port);
    let ports: Vec<u16> = (0..n)
        .map(|_| {
            let r = c.get("/");
            assert_eq!(r.status, 200, "GET / through the proxy: {r:?}");
            r.backend_port()
        })
        .collect();
    count(&ports)
}

fn log_count(lb: &Balancer, needle: &str) -> usize {
    lb.stderr
        .snapshot()
        .iter()
        .filter(|l| strip_ansi(l).contains(needle))
        .count()
}

/// Sends SIGHUP and waits for one more log line containing `needle`.
#[track_caller]
fn sighup_and_wait(lb: &Balancer, needle: &str) -> String {
    let before = log_count(lb, needle);
    lb.guard.signal("HUP");
    poll_until(WAIT, || {
        let lines: Vec<String> = lb
            .stderr
            .snapshot()
            .iter()
            .map(|l| strip_ansi(l))
            .filter(|l| l.contains(needle))
            .collect();
        lines.get(before).cloned()
    })
    .unwrap_or_else(|| {
        panic!(
            "no log line with {needle:?} after SIGHUP:\n{}",
            lb.stderr.joined()
        )
    })
}

fn write_config(lb: &Balancer, toml: &str) {
    std::fs::write(&lb.config.path, toml).expect("rewrite the config file");
}

/// `[{ address = "127.0.0.1:P", weight = W }, ...]`
fn weighted_servers(list: &[(u16, u32)]) -> String {
    let items: Vec<String> = list
        .iter()
        .map(|(p, w)| format!("{{ address = \"127.0.0.1:{p}\", weight = {w} }}"))
        .collect();
    format!("[{}]", items.join(", "))
}

// ---------------------------------------------------------------------------
// 1. Metrics
// ---------------------------------------------------------------------------

#[test]
fn metrics_count_what_was_sent() {
    let backends = spawn_backends(2);
    let names: Vec<String> = backends.iter().map(Backend::addr).collect();
    let lb = spawn_balancer(&Config::for_backends(&backends), &[]);
    let admin = Admin::new(&lb);

    for _ in 0..7 {
        assert_eq!(http_get(lb.port, "/").status, 200);
    }
    for _ in 0..3 {
        assert_eq!(http_get(lb.port, "/status/404").status, 404);
    }
    for _ in 0..2 {
        let r = one_request(lb.port, "POST", "/echo", &[], b"hello admin");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello admin");
    }

    let m = poll_until(WAIT, || {
        let m = admin.metrics();
        let checked = names.iter().all(|n| {
            m.sum(
                "lb_health_checks_total",
                &[("backend", n), ("result", "success")],
            ) > 0.0
        });
        (m.sum("lb_worker_requests_total", &[]) == 12.0 && checked).then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "metrics never counted 12 requests and a passed check per backend:\n{}",
            admin.call("GET", "/metrics", "").body_str()
        )
    });

    // Requests by backend, method and status.
    for s in m.matching("lb_requests_total", &[]) {
        let b = &s.labels["backend"];
        assert!(names.contains(b), "unknown backend label in {s:?}");
        assert_eq!(s.labels.len(), 5, "labels of {s:?}");
        assert_eq!(s.labels["pool"], "default", "{s:?}");
        // Every one of these answers is a backend's, the 404s included.
        assert_eq!(s.labels["source"], "backend", "{s:?}");
    }
    let req = |method: &str, status: &str| {
        m.sum(
            "lb_requests_total",
            &[("method", method), ("status", status)],
        )
    };
    assert_eq!(req("GET", "200"), 7.0);
    assert_eq!(req("GET", "404"), 3.0);
    assert_eq!(req("POST", "200"), 2.0);
    assert_eq!(m.sum("lb_requests_total", &[]), 12.0);
    assert_eq!(m.sum("lb_worker_requests_total", &[]), 12.0);
    assert!(
        m.matching("lb_worker_requests_total", &[])
            .all(|s| s.labels.contains_key("worker")),
        "lb_worker_requests_total without a worker label"
    );

    // The duration histogram.
    assert_eq!(m.types["lb_request_duration_seconds"], "histogram");
    assert_eq!(m.value("lb_request_duration_seconds_count", &[]), 12.0);
    assert_eq!(
        m.value("lb_request_duration_seconds_bucket", &[("le", "+Inf")]),
        12.0
    );
    let sum = m.value("lb_request_duration_seconds_sum", &[]);
    assert!(sum > 0.0 && sum < 12.0 * 5.0, "duration sum {sum}");

    assert_eq!(m.value("lb_retries_total", &[]), 0.0);
    assert!(m.value("lb_request_bytes_total", &[]) > 0.0);
    assert!(m.value("lb_response_bytes_total", &[]) > 0.0);
    assert!(m.value("lb_active_connections", &[("side", "client")]) >= 0.0);
    assert!(m.value("lb_active_connections", &[("side", "backend")]) >= 0.0);

    // Health as the health executor sees it.
    for n in &names {
        assert_eq!(
            m.value("lb_backend_health_status", &[("backend", n)]),
            1.0,
            "{n}"
        );
        assert_eq!(
            m.value("lb_circuit_breaker_state", &[("backend", n)]),
            0.0,
            "{n}"
        );
        assert!(
            m.value(
                "lb_health_checks_total",
                &[("backend", n), ("result", "success")]
            ) > 0.0
        );
        assert_eq!(
            m.value(
                "lb_health_checks_total",
                &[("backend", n), ("result", "failure")]
            ),
            0.0
        );
    }
    for (family, ty) in [
        ("lb_requests_total", "counter"),
        ("lb_worker_requests_total", "counter"),
        ("lb_retries_total", "counter"),
        ("lb_health_checks_total", "counter"),
        ("lb_active_connections", "gauge"),
        ("lb_backend_health_status", "gauge"),
        ("lb_circuit_breaker_state", "gauge"),
        ("lb_backend_response_seconds", "histogram"),
        ("ekilibri_build_info", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
    ] {
        assert_eq!(
            m.types.get(family).map(String::as_str),
            Some(ty),
            "{family}"
        );
    }
}

// ---------------------------------------------------------------------------
// 2. Token and exposure
// ---------------------------------------------------------------------------

#[test]
fn admin_token_is_required_when_set() {
    let a = spawn_backend();
    let cfg =
        Config::for_backends(std::slice::from_ref(&a)).with("admin_token", &format!("\"{TOKEN}\""));
    let lb = spawn_balancer(&cfg, &[]);
    let port = admin_port(&lb);
    assert_ne!(port, lb.port);

    let add = add_body(&format!("127.0.0.1:{}", closed_port()), 1, TCP_CHECK);
    let routes: [(&str, &str, &str); 10] = [
        ("GET", "/metrics", ""),
        ("GET", "/health", ""),
        ("GET", "/servers", ""),
        ("POST", "/servers", &add),
        ("GET", "/servers/0", ""),
        ("DELETE", "/servers/0", ""),
        ("GET", "/stats", ""),
        ("GET", "/stats/detail", ""),
        ("POST", "/reload", ""),
        ("GET", "/no-such-route", ""),
    ];
    let wrong: [Option<String>; 7] = [
        None,
        Some("Bearer wrong-token-wrong-token".into()),
        Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
        Some(format!("Bearer {TOKEN}0")),
        Some(format!("Basic {TOKEN}")),
        Some(TOKEN.into()),
        Some("Bearer ".into()),
    ];
    for (method, path, body) in routes {
        for auth in &wrong {
            let r = call_admin(port, method, path, auth.as_deref(), body.as_bytes());
            assert_error(&r, 401, &format!("{method} {path} with {auth:?}"));
        }
    }

    let admin = Admin {
        port,
        token: Some(TOKEN),
    };
    // The refused POST and DELETE changed nothing.
    let list = admin.servers();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["address"], a.addr());
    for path in [
        "/health",
        "/servers",
        "/servers/0",
        "/stats",
        "/stats/detail",
    ] {
        admin.get(path);
    }
    admin.metrics();
    let (status, v) = admin.json("POST", "/reload", "");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["reloaded"], true);

    // The proxy port does not serve the admin API: these go to the backend.
    for path in ["/metrics", "/servers", "/stats/detail", "/reload"] {
        let r = one_request(
            lb.port,
            "GET",
            path,
            &[("Authorization", &format!("Bearer {TOKEN}"))],
            b"",
        );
        assert_eq!(r.status, 404, "GET {path} on the proxy port: {r:?}");
        assert_eq!(r.backend_port(), a.port, "GET {path} on the proxy port");
        assert!(!r.body_str().contains("lb_requests_total"));
    }
    let r = http_get(lb.port, "/stats");
    assert_eq!(r.backend_port(), a.port);
    assert!(
        r.body_str().starts_with("connections="),
        "GET /stats on the proxy port was not the backend's: {r:?}"
    );
}

#[test]
fn admin_off_loopback_needs_a_token() {
    let open = Config::new(&[9]).with("admin_listen", "\"0.0.0.0:0\"");
    let file = write_temp_file(&open.to_toml(), ".toml");
    for check in [true, false] {
        let mut args: Vec<&OsStr> = vec![OsStr::new("-f"), file.path.as_os_str()];
        if check {
            args.push(OsStr::new("--check"));
        }
        let r = run_balancer_to_exit(&args, Duration::from_secs(10));
        assert_eq!(
            r.status.code(),
            Some(2),
            "check={check}: admin_listen on 0.0.0.0 without a token must be refused; stderr:\n{}",
            r.stderr
        );
        assert!(
            r.stderr.contains("admin_listen") && r.stderr.contains("admin_token"),
            "check={check}: stderr does not name admin_listen and admin_token:\n{}",
            r.stderr
        );
        assert!(!r.stderr.contains("listening on"), "{}", r.stderr);
    }

    // With a token the same address is accepted (checked only: no bind).
    let guarded = open.with("admin_token", &format!("\"{TOKEN}\""));
    let file = write_temp_file(&guarded.to_toml(), ".toml");
    let r = run_balancer_to_exit(
        &[
            OsStr::new("-f"),
            file.path.as_os_str(),
            OsStr::new("--check"),
        ],
        Duration::from_secs(10),
    );
    assert_eq!(r.status.code(), Some(0), "stderr:\n{}", r.stderr);

    // A short token is refused and named.
    let short = Config::new(&[9]).with("admin_token", "\"short\"");
    let file = write_temp_file(&short.to_toml(), ".toml");
    let r = run_balancer_to_exit(
        &[
            OsStr::new("-f"),
            file.path.as_os_str(),
            OsStr::new("--check"),
        ],
        Duration::from_secs(10),
    );
    assert_eq!(r.status.code(), Some(2), "stderr:\n{}", r.stderr);
    assert!(r.stderr.contains("admin_token"), "{}", r.stderr);
}

// ---------------------------------------------------------------------------
// 3. Servers API
// ---------------------------------------------------------------------------

#[test]
fn api_adds_lists_and_removes_servers() {
    let a = spawn_backend();
    let b = spawn_backend();
    let c = spawn_backend();
    let lb = spawn_balancer(&Config::for_backends(std::slice::from_ref(&a)), &[]);
    let admin = Admin::new(&lb);
    let a_id = admin.id_of(&a.addr());

    // HTTP check.
    let (status, v) = admin.json("POST", "/servers", &add_body(&b.addr(), 1, HTTP_CHECK));
    assert_eq!(status, 201, "{v}");
    let b_id = v["id"].as_u64().expect("id in the 201 answer");
    assert_eq!(v["address"], b.addr(), "{v}");
    assert_eq!(v["source"], "api", "{v}");
    admin.wait_health(b_id, "up");
    wait_reaches(lb.port, b.port);

    // TCP check.
    let c_id = admin.add(&add_body(&c.addr(), 2, TCP_CHECK));
    admin.wait_health(c_id, "up");
    wait_reaches(lb.port, c.port);

    let list = admin.servers();
    assert_eq!(list.len(), 3, "{list:?}");
    let ids: HashSet<u64> = list.iter().map(|s| s["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, HashSet::from([a_id, b_id, c_id]));
    for s in &list {
        for key in [
            "id", "address", "weight", "health", "breaker", "inflight", "source",
        ] {
            assert!(s.get(key).is_some(), "server without {key}: {s}");
        }
        assert_eq!(s["health"], "up", "{s}");
        assert_eq!(s["breaker"], "closed", "{s}");
        assert!(s["inflight"].as_u64().is_some(), "{s}");
    }
    let by = |addr: String| list.iter().find(|s| s["address"] == addr).unwrap().clone();
    let (sa, sb, sc) = (by(a.addr()), by(b.addr()), by(c.addr()));
    assert_eq!(sa["source"], "config");
    assert_eq!(
        (sb["source"].clone(), sb["weight"].clone()),
        ("api".into(), 1.into())
    );
    assert_eq!(
        (sc["source"].clone(), sc["weight"].clone()),
        ("api".into(), 2.into())
    );
    assert_eq!(sb["check"]["type"], "http");
    assert_eq!(sb["check"]["path"], "/health");
    assert_eq!(sc["check"]["type"], "tcp");
    let one = admin.get(&format!("/servers/{c_id}"));
    assert_eq!(one["address"], c.addr());

    // Remove the HTTP-checked one: 204, gone from the list, no traffic.
    admin.delete(b_id);
    assert!(admin.server(&b.addr()).is_none());
    assert_eq!(admin.servers().len(), 2);
    assert_no_traffic_to(lb.port, &b, 30);
    assert_error(
        &admin.call("DELETE", &format!("/servers/{b_id}"), ""),
        404,
        "second DELETE",
    );
    assert_error(
        &admin.call("GET", &format!("/servers/{b_id}"), ""),
        404,
        "GET of a removed server",
    );

    // A config server can be removed too.
    admin.delete(a_id);
    assert_no_traffic_to(lb.port, &a, 20);
}

/// `PUT /servers/{address}` registers or renews; with a `ttl` the
/// registration goes away when the renewals stop (no cluster needed).
#[test]
fn put_registers_renews_and_ttl_expires() {
    let a = spawn_backend();
    let b = spawn_backend();
    let lb = spawn_balancer(&Config::for_backends(std::slice::from_ref(&a)), &[]);
    let admin = Admin::new(&lb);
    let path = format!("/servers/{}", b.addr());

    let (status, v) = admin.json("PUT", &path, r#"{"ttl": 1, "weight": 2}"#);
    assert_eq!(status, 201, "first PUT creates: {v}");
    assert_eq!(
        (v["ttl"].clone(), v["weight"].clone()),
        (1.into(), 2.into()),
        "{v}"
    );
    assert_eq!(v["source"], "api", "{v}");
    let id = v["id"].as_u64().expect("id");
    admin.wait_health(id, "up");
    wait_reaches(lb.port, b.port);

    // Heartbeats every 300 ms for 2.5 s (2.5 TTLs): it stays, same id.
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        let (status, v) = admin.json("PUT", &path, r#"{"ttl": 1, "weight": 2}"#);
        assert_eq!(status, 200, "a renewal answers 200: {v}");
        assert_eq!(v["id"].as_u64(), Some(id), "a renewal keeps the id: {v}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(admin.server(&b.addr()).is_some(), "expired while renewed");

    // A PUT may change the weight; then the heartbeats stop.
    let (status, v) = admin.json("PUT", &path, r#"{"ttl": 1, "weight": 3}"#);
    assert_eq!((status, v["weight"].clone()), (200, 3.into()), "{v}");
    let stopped = Instant::now();
    let gone = poll_until(Duration::from_secs(5), || {
        admin.server(&b.addr()).is_none().then_some(())
    });
    assert!(gone.is_some(), "still listed 5 s after the last renewal");
    assert!(
        stopped.elapsed() >= Duration::from_millis(900),
        "removed {:?} after the last renewal, before its 1 s ttl",
        stopped.elapsed()
    );
    assert_no_traffic_to(lb.port, &b, 20);
    assert!(log_count(&lb, "registration expired") >= 1);

    // Without a ttl it stays; an empty body is a registration with defaults.
    let (status, v) = admin.json("PUT", &path, "");
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        (v["ttl"].clone(), v["weight"].clone()),
        (Value::Null, 1.into()),
        "{v}"
    );

    // The file's servers are not the API's to change; bad input is a 400.
    assert_error(
        &admin.call("PUT", &format!("/servers/{}", a.addr()), r#"{"weight": 5}"#),
        409,
        "PUT on a configured server",
    );
    for (body, what) in [
        (r#"{"ttl": 0}"#, "ttl 0"),
        (r#"{"ttl": 100000}"#, "ttl over a day"),
        (r#"{"weight": 0}"#, "weight 0"),
        (r#"{"address": "127.0.0.1:1"}"#, "address in the body"),
        ("{", "broken JSON"),
    ] {
        assert_error(&admin.call("PUT", &path, body), 400, what);
    }
    assert_error(
        &admin.call("PUT", "/servers/7", "{}"),
        404,
        "PUT by numeric id",
    );
    // DELETE by address works too.
    let r = admin.call("DELETE", &path, "");
    assert_eq!(r.status, 204, "DELETE by address: {r:?}");
    assert!(admin.server(&b.addr()).is_none());
}

#[test]
fn api_rejects_bad_input() {
    let a = spawn_backend();
    let lb = spawn_balancer(&Config::for_backends(std::slice::from_ref(&a)), &[]);
    let admin = Admin::new(&lb);
    let free = format!("127.0.0.1:{}", closed_port());
    let cases: Vec<(&str, String)> = vec![
        ("truncated JSON", r#"{"address": "#.into()),
        ("not JSON", "address=127.0.0.1:1".into()),
        ("empty body", String::new()),
        ("not an object", "[1, 2]".into()),
        (
            "unknown field",
            format!(r#"{{"address": "{free}", "weight": 1, "colour": "red"}}"#),
        ),
        (
            "unknown check field",
            format!(r#"{{"address": "{free}", "check": {{"type": "tcp", "every": 5}}}}"#),
        ),
        ("missing address", r#"{"weight": 1}"#.into()),
        ("address without port", r#"{"address": "127.0.0.1"}"#.into()),
        (
            "port out of range",
            r#"{"address": "127.0.0.1:99999"}"#.into(),
        ),
        ("not an address", r#"{"address": "not an address"}"#.into()),
        ("address of wrong type", r#"{"address": 8080}"#.into()),
        ("weight 0", add_body(&free, 0, TCP_CHECK)),
        ("weight over 1000", add_body(&free, 1001, TCP_CHECK)),
        (
            "negative weight",
            format!(r#"{{"address": "{free}", "weight": -1}}"#),
        ),
        (
            "unknown check type",
            add_body(&free, 1, r#"{"type": "udp"}"#),
        ),
        (
            "tcp check with a path",
            add_body(&free, 1, r#"{"type": "tcp", "path": "/health"}"#),
        ),
        (
            "relative check path",
            add_body(&free, 1, r#"{"type": "http", "path": "health"}"#),
        ),
        (
            "duplicate of a config server",
            add_body(&a.addr(), 1, TCP_CHECK),
        ),
    ];
    for (what, body) in &cases {
        let r = admin.call("POST", "/servers", body);
        assert_error(&r, 400, &format!("POST /servers with {what} ({body})"));
    }
    assert_eq!(admin.servers().len(), 1, "a refused POST added a server");

    // A duplicate of an API-added server is refused as well.
    let id = admin.add(&add_body(&free, 1, TCP_CHECK));
    let r = admin.call("POST", "/servers", &add_body(&free, 3, HTTP_CHECK));
    assert_error(&r, 400, "duplicate of an API server");
    assert_eq!(admin.servers().len(), 2);
    // It never passes its check (nothing listens there): down, no traffic.
    admin.wait_health(id, "down");
    admin.delete(id);

    assert_error(
        &admin.call("DELETE", "/servers/999", ""),
        404,
        "DELETE /servers/999",
    );
    assert_error(
        &admin.call("DELETE", "/servers/abc", ""),
        404,
        "DELETE /servers/abc",
    );
    assert_error(
        &admin.call("GET", "/no-such-route", ""),
        404,
        "unknown route",
    );
    assert_error(&admin.call("PUT", "/servers", "{}"), 405, "PUT /servers");
    assert_eq!(admin.servers().len(), 1);
    assert_eq!(http_get(lb.port, "/").backend_port(), a.port);
}

#[test]
fn api_server_failing_its_check_gets_no_traffic() {
    let a = spawn_backend();
    let b = spawn_backend();
    let lb = spawn_balancer(&Config::for_backends(std::slice::from_ref(&a)), &[]);
    let admin = Admin::new(&lb);
    let id = admin.add(&add_body(
        &b.addr(),
        1,
        r#"{"type": "http", "path": "/status/503"}"#,
    ));
    let name = b.addr();
    let m = poll_until(WAIT, || {
        let m = admin.metrics();
        (m.sum(
            "lb_health_checks_total",
            &[("backend", &name), ("result", "failure")],
        ) >= 2.0)
            .then_some(m)
    })
    .expect("the failing check was never counted");
    assert_eq!(
        m.value("lb_backend_health_status", &[("backend", &name)]),
        0.0
    );
    let s = admin.server(&name).expect("listed");
    assert_eq!(s["health"], "down", "{s}");
    assert_eq!(s["check"]["path"], "/status/503", "{s}");
    assert_no_traffic_to(lb.port, &b, 20);
    assert_eq!(admin.get(&format!("/servers/{id}"))["health"], "down");
}

#[test]
fn api_changes_under_traffic_lose_no_request() {
    let backends = spawn_backends(3);
    let (a, b, c) = (&backends[0], &backends[1], &backends[2]);
    let lb = spawn_balancer(&Config::new(&[a.port, b.port]), &[]);
    let admin = Admin::new(&lb);
    let traffic = Traffic::start(lb.port);
    traffic.wait_more(20);

    // Add c: it enters rotation once its check passes.
    let c_id = admin.add(&add_body(&c.addr(), 1, HTTP_CHECK));
    admin.wait_health(c_id, "up");
    let mark = traffic.count();
    assert!(
        poll_until(WAIT, || traffic
            .ports_from(mark)
            .contains(&c.port)
            .then_some(()))
        .is_some(),
        "background traffic never reached the added server"
    );

    // Remove a config server and then the added one.
    for (id, gone) in [(admin.id_of(&a.addr()), a.port), (c_id, c.port)] {
        admin.delete(id);
        // The request being recorded right now may have been answered by
        // the server before the DELETE finished: skip it.
        let mark = traffic.count() + 1;
        traffic.wait_more(30);
        let ports = traffic.ports_from(mark);
        assert!(
            !ports.contains(&gone),
            "traffic reached {gone} after its DELETE: {:?}",
            count(&ports)
        );
    }
    let results = traffic.finish();
    assert!(results.len() >= 80, "only {} requests", results.len());
    assert_all_ok(&results, "requests during add and delete");
    let seen: HashSet<u16> = results.iter().filter_map(|r| r.as_ref().ok()?.1).collect();
    assert!(seen.contains(&c.port) && seen.contains(&a.port) && seen.contains(&b.port));
}

#[test]
fn delete_waits_for_in_flight_requests() {
    let a = spawn_backend();
    let b = spawn_backend();
    // b is reached through a tap, so the test knows when the sleep is there.
    let tap = Tap::start(b.port, b"GET /sleep");
    let cfg = Config::for_backends(std::slice::from_ref(&a)).with("workers", "1");
    let lb = spawn_balancer(&cfg, &[]);
    let admin = Admin::new(&lb);
    let b_id = admin.add(&add_body(&format!("127.0.0.1:{}", tap.port), 1, HTTP_CHECK));
    admin.wait_health(b_id, "up");
    admin.delete(admin.id_of(&a.addr()));
    // Only b is left: everything goes there.
    assert_eq!(http_get(lb.port, "/").backend_port(), b.port);

    let before = tap.hits();
    let port = lb.port;
    let sleeper = thread::spawn(move || {
        let r = http_get(port, "/sleep?ms=800");
        (r.status, Instant::now())
    });
    assert!(
        tap.wait_hit_after(before, WAIT),
        "the /sleep request never reached the backend"
    );
    let forwarded = Instant::now();
    let r = admin.call("DELETE", &format!("/servers/{b_id}"), "");
    let deleted = Instant::now();
    assert_eq!(r.status, 204, "{r:?}");
    let (status, done) = sleeper.join().expect("sleeper");
    assert_eq!(status, 200, "the in-flight request was not completed");
    let waited = deleted.duration_since(forwarded);
    assert!(
        waited >= Duration::from_millis(750),
        "DELETE answered {waited:?} after the 800 ms request reached the backend: it did not wait"
    );
    assert!(
        done <= deleted + Duration::from_millis(200),
        "the in-flight request finished {:?} after the DELETE answer",
        done.saturating_duration_since(deleted)
    );
    assert!(admin.servers().is_empty());
    let r = http_get(lb.port, "/");
    assert_ne!(
        r.status, 200,
        "a request was served with no servers left: {r:?}"
    );
}

/// A backend that answers health checks (the checker's User-Agent) with 200,
/// holds the first proxied request until released and then closes it without
/// an answer (a failure that is safe to retry), and answers later proxied
/// requests with 200 (no `X-Backend-Port`).
struct HoldBackend {
    port: u16,
    held: Arc<AtomicUsize>,
    release: Arc<AtomicBool>,
    /// Stops accepting when dropped; its stop flag releases a held request.
    _server: ThreadedServer,
}

impl HoldBackend {
    fn start() -> HoldBackend {
        let held = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(AtomicBool::new(false));
        let proxied = AtomicUsize::new(0);
        let (held2, release2) = (held.clone(), release.clone());
        let server = ThreadedServer::start(move |mut s, _, stop| {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut got = Vec::new();
            if !read_request_head(&mut s, &mut got) {
                return;
            }
            if find(&got, b"ekilibri-health").is_none()
                && proxied.fetch_add(1, Ordering::SeqCst) == 0
            {
                held2.store(1, Ordering::SeqCst);
                poll_until(Duration::from_secs(10), || {
                    (release2.load(Ordering::SeqCst) || stop.load(Ordering::SeqCst)).then_some(())
                });
            } else {
                let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
                let _ = s.write_all(ok);
            }
            let _ = s.shutdown(Shutdown::Both);
        });
        HoldBackend {
            port: server.port,
            held,
            release,
            _server: server,
        }
    }
}

/// A request that is retried after the server set grew (a server added
/// through the API while it was in flight) is served by a server of the new
/// set, and the balancer keeps running.
#[test]
fn retry_after_the_server_set_changed_is_served() {
    let hold = HoldBackend::start();
    let b = spawn_backend();
    let cfg = Config::new(&[hold.port])
        .with("workers", "1")
        .with("retries", "1");
    let mut lb = spawn_balancer(&cfg, &[]);
    let admin = Admin::new(&lb);
    let port = lb.port;
    let held = thread::spawn(move || try_request(port, "GET", "/"));
    assert!(
        poll_until(WAIT, || (hold.held.load(Ordering::SeqCst) == 1)
            .then_some(()))
        .is_some(),
        "the first request never reached the holding backend"
    );

    // Grow the set while that request waits, and make sure the worker has
    // the new snapshot (a request answered by b).
    let b_id = admin.add(&add_body(&b.addr(), 1, HTTP_CHECK));
    admin.wait_health(b_id, "up");
    assert!(
        poll_until(WAIT, || {
            let r = try_request(lb.port, "GET", "/").expect("request during the hold");
            (r.1 == Some(b.port)).then_some(())
        })
        .is_some(),
        "the added server never got traffic"
    );

    // The held request fails now and is retried (retries = 1).
    hold.release.store(true, Ordering::SeqCst);
    let outcome = held.join().expect("held request thread");
    let alive = lb.guard.try_wait().is_none();
    assert!(
        alive,
        "the balancer exited after the retry ({:?}); stderr:\n{}",
        lb.guard.try_wait(),
        lb.stderr.joined()
    );
    assert_eq!(
        outcome,
        Ok((200, Some(b.port))),
        "the retried request was not served by the new server; stderr:\n{}",
        lb.stderr.joined()
    );
    assert_eq!(try_request(lb.port, "GET", "/").map(|r| r.0), Ok(200));
}

// ---------------------------------------------------------------------------
// 4. Stats and health
// ---------------------------------------------------------------------------

#[test]
fn stats_count_client_and_server_results() {
    let good = spawn_backend();
    // Passes the health check (a 2xx status line) but never sends a whole
    // response head: every proxied request to it fails with a 502.
    let bad = FakeBackend::start(b"HTTP/1.1 200 OK\r\n");
    let cfg = Config::new(&[good.port, bad.port])
        .with("workers", "1")
        .with("retries", "0")
        .with("max_fails", "100")
        .with("breaker_threshold", "0");
    let lb = spawn_balancer(&cfg, &[]);
    let admin = Admin::new(&lb);
    let bad_name = format!("127.0.0.1:{}", bad.port);

    let statuses: Vec<u16> = (0..10)
        .map(|_| try_request(lb.port, "GET", "/").expect("request").0)
        .collect();
    let ok = statuses.iter().filter(|&&s| s == 200).count() as u64;
    let failed = statuses.iter().filter(|&&s| s == 502).count() as u64;
    assert_eq!(ok + failed, 10, "unexpected statuses {statuses:?}");
    assert!(ok > 0 && failed > 0, "round robin over both: {statuses:?}");

    let stats = poll_until(WAIT, || {
        let v = admin.get("/stats");
        let total = v["client"]["success"].as_u64()? + v["client"]["failed"].as_u64()?;
        (total == 10).then_some(v)
    })
    .unwrap_or_else(|| {
        panic!(
            "GET /stats never counted 10 requests: {}",
            admin.get("/stats")
        )
    });
    assert_eq!(stats["client"]["success"], ok, "{stats}");
    assert_eq!(stats["client"]["failed"], failed, "{stats}");
    assert_eq!(stats["server"]["success"], ok, "{stats}");
    assert_eq!(stats["server"]["failed"], failed, "{stats}");

    let detail = admin.get("/stats/detail");
    let list = detail.as_array().expect("array");
    assert_eq!(list.len(), 2, "{detail}");
    let entry = |addr: &str| {
        list.iter()
            .find(|e| e["address"] == addr)
            .unwrap_or_else(|| panic!("{addr} not in {detail}"))
    };
    let g = entry(&good.addr());
    assert_eq!(g["server"]["success"], ok, "{g}");
    assert_eq!(g["server"]["failed"], 0, "{g}");
    assert_eq!(g["inflight"], 0, "{g}");
    assert!(g["id"].as_u64().is_some(), "{g}");
    let f = entry(&bad_name);
    assert_eq!(f["server"]["success"], 0, "{f}");
    assert_eq!(f["server"]["failed"], failed, "{f}");

    let h = admin.get("/health");
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["workers"], 1, "{h}");
    assert_eq!(h["backends"], 2, "{h}");

    let m = admin.metrics();
    assert_eq!(
        m.sum(
            "lb_requests_total",
            &[("backend", &bad_name), ("status", "502")]
        ),
        failed as f64
    );
    assert_eq!(m.value("lb_retries_total", &[]), 0.0);
}

// ---------------------------------------------------------------------------
// 5. Reload
// ---------------------------------------------------------------------------

#[test]
fn sighup_reload_applies_servers_and_strategy_under_traffic() {
    let backends = spawn_backends(3);
    let (a, b, c) = (&backends[0], &backends[1], &backends[2]);
    let cfg = Config::new(&[a.port, b.port]);
    let lb = spawn_balancer(&cfg, &[]);
    let admin = Admin::new(&lb);
    let traffic = Traffic::start(lb.port);
    traffic.wait_more(10);

    // A third server.
    write_config(
        &lb,
        &cfg.clone()
            .with("servers", &servers_list(&[a.port, b.port, c.port]))
            .to_toml(),
    );
    sighup_and_wait(&lb, "configuration reloaded:");
    wait_reaches(lb.port, c.port);
    assert_eq!(
        admin.server(&c.addr()).expect("c listed")["source"],
        "config"
    );

    // Weighted round robin, c six times as heavy.
    let weighted = cfg.clone().strategy("WeightedRoundRobin").with(
        "servers",
        &weighted_servers(&[(a.port, 1), (b.port, 1), (c.port, 6)]),
    );
    write_config(&lb, &weighted.to_toml());
    sighup_and_wait(&lb, "configuration reloaded:");
    let dist = poll_until(WAIT, || {
        let d = sample_ports(lb.port, 40);
        (d.get(&c.port).copied().unwrap_or(0) >= 24).then_some(d)
    })
    .unwrap_or_else(|| {
        panic!(
            "c never got ~6/8 of the traffic: {:?}",
            sample_ports(lb.port, 40)
        )
    });
    assert!(
        dist.contains_key(&a.port) && dist.contains_key(&b.port),
        "weighted distribution left a server out: {dist:?}"
    );
    assert_eq!(admin.server(&c.addr()).unwrap()["weight"], 6);

    // Remove a.
    write_config(
        &lb,
        &weighted
            .clone()
            .with("servers", &weighted_servers(&[(b.port, 1), (c.port, 6)]))
            .to_toml(),
    );
    sighup_and_wait(&lb, "configuration reloaded:");
    assert!(admin.server(&a.addr()).is_none());
    traffic.wait_more(2); // a request in flight during the reload is done
    assert_no_traffic_to(lb.port, a, 30);

    // A broken file is refused; the running configuration stays.
    write_config(&lb, "servers = [\"127.0.0.1:1\"\nstrategy = ");
    let line = sighup_and_wait(&lb, "reload refused");
    assert!(line.contains(&path_str(&lb.config.path)), "{line}");
    traffic.wait_more(20);
    let d = sample_ports(lb.port, 40);
    assert!(
        d.get(&c.port).copied().unwrap_or(0) >= 24 && d.contains_key(&b.port),
        "the old configuration did not stay: {d:?}"
    );
    assert!(!d.contains_key(&a.port));
    assert_eq!(admin.servers().len(), 2);

    let results = traffic.finish();
    assert_all_ok(&results, "requests during the reloads");
    assert!(lb.stderr.joined().contains("SIGHUP received"));
}

#[test]
fn reload_refuses_listen_changes_and_post_reload_reports() {
    let a = spawn_backend();
    let b = spawn_backend();
    let c = spawn_backend();
    let listen = closed_port();
    let cfg = Config::for_backends(std::slice::from_ref(&a))
        .with("listen", &format!("\"127.0.0.1:{listen}\""));
    let lb = spawn_balancer(&cfg, &[]);
    assert_eq!(lb.port, listen);
    let admin = Admin::new(&lb);

    // `listen` changed (with a servers change that must not apply either).
    let moved = cfg
        .clone()
        .with("listen", &format!("\"127.0.0.1:{}\"", closed_port()))
        .with("servers", &servers_list(&[a.port, b.port]));
    write_config(&lb, &moved.to_toml());
    let line = sighup_and_wait(&lb, "reload refused");
    assert!(
        line.contains("`listen`"),
        "the refusal does not name listen: {line}"
    );
    let (status, v) = admin.json("POST", "/reload", "");
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["reloaded"], false, "{v}");
    assert!(v["error"].as_str().unwrap_or("").contains("listen"), "{v}");
    assert_eq!(admin.servers().len(), 1);
    assert_eq!(sample_ports(lb.port, 10), HashMap::from([(a.port, 10)]));

    // Invalid TOML and an unknown key: 400, reloaded false, nothing changes.
    for (what, text, needle) in [
        ("invalid TOML", "servers = [".to_string(), String::new()),
        (
            "unknown key",
            cfg.clone().with("bogus_key", "1").to_toml(),
            "bogus_key".to_string(),
        ),
    ] {
        write_config(&lb, &text);
        let (status, v) = admin.json("POST", "/reload", "");
        assert_eq!(status, 400, "{what}: {v}");
        assert_eq!(v["reloaded"], false, "{what}: {v}");
        let err = v["error"].as_str().unwrap_or("");
        assert!(!err.is_empty() && err.contains(&needle), "{what}: {v}");
    }
    assert_eq!(admin.servers().len(), 1);
    assert_eq!(http_get(lb.port, "/").status, 200);

    // A server added through the API survives reloads.
    let c_id = admin.add(&add_body(&c.addr(), 1, HTTP_CHECK));
    admin.wait_health(c_id, "up");

    // A good change: 200, reloaded true, applied.
    write_config(
        &lb,
        &cfg.clone()
            .with("servers", &servers_list(&[a.port, b.port]))
            .to_toml(),
    );
    let (status, v) = admin.json("POST", "/reload", "");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["reloaded"], true, "{v}");
    let list = admin.servers();
    assert_eq!(list.len(), 3, "{list:?}");
    let sc = admin
        .server(&c.addr())
        .expect("the API server survived the reload");
    assert_eq!(sc["source"], "api");
    assert_eq!(sc["id"], c_id);
    wait_reaches(lb.port, b.port);
    wait_reaches(lb.port, c.port);
}
