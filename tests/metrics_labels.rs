//! Metrics an operator can alert on, scraped over real sockets: the
//! `backend` label is the address and survives a removal and a re-add, no
//! series pile up under registration churn, a balancer's own answers are
//! told from a backend's (`source`), and the per-backend response-time
//! histogram, `ekilibri_build_info` and the process metrics are exposed.
//!
//! Counters are bumped after a response has been written, so every check
//! of a count polls `/metrics` against a deadline until it is reached.

mod common;
#[path = "common/prometheus.rs"]
mod prometheus;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use prometheus::{Exposition, parse_exposition};
use serde_json::Value;

/// Deadline of every poll in this file.
const WAIT: Duration = Duration::from_secs(10);

/// The admin API of one balancer.
struct Admin {
    port: u16,
}

impl Admin {
    fn new(lb: &Balancer) -> Admin {
        Admin {
            port: admin_port(lb),
        }
    }

    fn call(&self, method: &str, path: &str, body: &str) -> Response {
        let mut headers = vec![("Connection", "close")];
        if body.is_empty() && method != "GET" {
            headers.push(("Content-Length", "0"));
        }
        one_request(self.port, method, path, &headers, body.as_bytes())
    }

    /// The raw exposition, checked by the strict parser.
    #[track_caller]
    fn scrape(&self) -> (String, Exposition) {
        let r = self.call("GET", "/metrics", "");
        assert_eq!(r.status, 200, "GET /metrics: {r:?}");
        let text = r.body_str();
        let exp = parse_exposition(&text).unwrap_or_else(|e| panic!("bad exposition: {e}\n{text}"));
        (text, exp)
    }

    #[track_caller]
    fn metrics(&self) -> Exposition {
        self.scrape().1
    }

    #[track_caller]
    fn servers(&self) -> Vec<Value> {
        match json_of(&self.call("GET", "/servers", "")) {
            Value::Array(list) => list,
            other => panic!("GET /servers is not an array: {other}"),
        }
    }

    /// Polls until `addr` is listed with health `up`; returns its id.
    #[track_caller]
    fn wait_up(&self, addr: &str) -> u64 {
        poll_until(WAIT, || {
            self.servers()
                .into_iter()
                .find(|s| s["address"] == addr && s["health"] == "up")
                .and_then(|s| s["id"].as_u64())
        })
        .unwrap_or_else(|| panic!("{addr} never up: {:?}", self.servers()))
    }

    /// Polls until `addr` is no longer listed.
    #[track_caller]
    fn wait_gone(&self, addr: &str) {
        let gone = poll_until(WAIT, || {
            (!self.servers().iter().any(|s| s["address"] == addr)).then_some(())
        });
        assert!(gone.is_some(), "{addr} still listed: {:?}", self.servers());
    }

    /// Polls `/metrics` until `f` accepts it.
    #[track_caller]
    fn metrics_until(&self, what: &str, f: impl Fn(&Exposition) -> bool) -> Exposition {
        poll_until(WAIT, || Some(self.metrics()).filter(|m| f(m))).unwrap_or_else(|| {
            panic!(
                "metrics never showed {what}:\n{}",
                self.call("GET", "/metrics", "").body_str()
            )
        })
    }
}

/// Polls `GET /` through the proxy until `backend_port` answers it.
#[track_caller]
fn wait_reaches(lb_port: u16, backend_port: u16) {
    let hit = poll_until(WAIT, || {
        let r = http_get(lb_port, "/");
        assert_eq!(r.status, 200, "GET / through the proxy: {r:?}");
        (r.backend_port() == backend_port).then_some(())
    });
    assert!(hit.is_some(), "no request reached backend {backend_port}");
}

/// No series anywhere names a backend by a `removed-` placeholder.
#[track_caller]
fn assert_no_removed_series(text: &str) {
    assert!(
        !text.contains("removed-"),
        "a removed-N series in the exposition:\n{text}"
    );
}

/// Backend label values across every family.
fn backend_labels(m: &Exposition) -> Vec<String> {
    let mut v: Vec<String> = m
        .samples
        .iter()
        .filter_map(|s| s.labels.get("backend").cloned())
        .collect();
    v.sort();
    v.dedup();
    v
}

#[test]
fn delete_then_add_again_keeps_the_address_label() {
    let a = spawn_backend();
    let b = spawn_backend();
    let lb = spawn_balancer(&Config::for_backends(std::slice::from_ref(&a)), &[]);
    let admin = Admin::new(&lb);
    let body = format!(
        r#"{{"address": "{}", "check": {{"type": "http", "path": "/health"}}}}"#,
        b.addr()
    );

    let r = admin.call("POST", "/servers", &body);
    assert_eq!(r.status, 201, "{r:?}");
    let id = admin.wait_up(&b.addr());
    wait_reaches(lb.port, b.port);
    let m = admin.metrics_until("a request counted for the added backend", |m| {
        m.sum("lb_requests_total", &[("backend", &b.addr())]) >= 1.0
    });
    assert_eq!(
        m.value("lb_backend_health_status", &[("backend", &b.addr())]),
        1.0
    );

    // Removed: its series go at once, and nothing is renamed.
    let r = admin.call("DELETE", &format!("/servers/{id}"), "");
    assert_eq!(r.status, 204, "{r:?}");
    let (text, m) = admin.scrape();
    assert_no_removed_series(&text);
    assert_eq!(
        backend_labels(&m),
        vec![a.addr()],
        "only the configured backend after the removal:\n{text}"
    );
    assert_eq!(m.sum("lb_requests_total", &[("backend", "none")]), 0.0);

    // Added again: the same label continues (from zero: a counter reset).
    let r = admin.call("POST", "/servers", &body);
    assert_eq!(r.status, 201, "{r:?}");
    let again = admin.wait_up(&b.addr());
    assert_ne!(again, id, "a re-added address gets a new id");
    wait_reaches(lb.port, b.port);
    admin.metrics_until("the re-added backend's requests under its address", |m| {
        m.sum(
            "lb_requests_total",
            &[("backend", &b.addr()), ("source", "backend")],
        ) >= 1.0
    });
    let (text, m) = admin.scrape();
    assert_no_removed_series(&text);
    assert_eq!(backend_labels(&m), {
        let mut v = vec![a.addr(), b.addr()];
        v.sort();
        v
    });
    assert!(
        m.value(
            "lb_backend_response_seconds_count",
            &[("backend", &b.addr())]
        ) >= 1.0
    );
}

#[test]
fn ttl_churn_leaves_the_series_count_flat() {
    const ROUNDS: usize = 4;
    let a = spawn_backend();
    let b = spawn_backend();
    let lb = spawn_balancer(&Config::for_backends(std::slice::from_ref(&a)), &[]);
    let admin = Admin::new(&lb);
    let path = format!("/servers/{}", b.addr());

    let mut counts = Vec::new();
    for round in 0..ROUNDS {
        // Register with a 2 s TTL, serve through it, let it expire.
        let r = admin.call("PUT", &path, r#"{"ttl": 2}"#);
        assert_eq!(r.status, 201, "round {round}: {r:?}");
        admin.wait_up(&b.addr());
        wait_reaches(lb.port, b.port);
        admin.metrics_until("the registered backend's requests", |m| {
            m.sum("lb_requests_total", &[("backend", &b.addr())]) >= 1.0
        });
        admin.wait_gone(&b.addr());
        // Requests after the expiry: every worker applies the snapshot
        // without it before they are answered (by the configured backend).
        for _ in 0..8 {
            assert_eq!(http_get(lb.port, "/").status, 200);
        }
        let (text, m) = admin.scrape();
        assert_no_removed_series(&text);
        assert_eq!(backend_labels(&m), vec![a.addr()], "round {round}:\n{text}");
        counts.push(m.samples.len());
    }
    assert!(
        counts.windows(2).all(|w| w[0] == w[1]),
        "series count grew with registration churn: {counts:?}"
    );
}

#[test]
fn balancer_errors_are_told_from_backend_errors() {
    let a = spawn_backend();
    let cfg = Config::for_backends(std::slice::from_ref(&a))
        .with("read_timeout", "300")
        .with("retries", "0");
    let lb = spawn_balancer(&cfg, &[]);
    let admin = Admin::new(&lb);
    let addr = a.addr();

    // The backend's own 500.
    assert_eq!(http_get(lb.port, "/status/500").status, 500);
    // The balancer's 504: the backend was picked, then timed out.
    assert_eq!(http_get(lb.port, "/sleep?ms=2000").status, 504);
    // The balancer's 400: a client error, no backend picked.
    let mut s = TcpStream::connect(("127.0.0.1", lb.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    std::io::Write::write_all(
        &mut s,
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: x1\r\n\r\n",
    )
    .expect("write");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    assert!(
        raw.starts_with(b"HTTP/1.1 400 "),
        "{:?}",
        String::from_utf8_lossy(&raw)
    );

    let m = admin.metrics_until("three requests", |m| {
        m.sum("lb_worker_requests_total", &[]) == 3.0
    });
    let req = |backend: &str, status: &str, source: &str| {
        m.sum(
            "lb_requests_total",
            &[("backend", backend), ("status", status), ("source", source)],
        )
    };
    assert_eq!(req(&addr, "500", "backend"), 1.0);
    assert_eq!(req(&addr, "504", "balancer"), 1.0);
    assert_eq!(req("none", "400", "balancer"), 1.0);
    assert_eq!(m.sum("lb_requests_total", &[]), 3.0);
    // What the dashboard's "Balancer errors" panel counts.
    assert_eq!(
        m.matching("lb_requests_total", &[("source", "balancer")])
            .filter(|s| s.labels["status"].starts_with('5'))
            .map(|s| s.value)
            .sum::<f64>(),
        1.0
    );
}

#[test]
fn a_502_after_a_pick_is_the_balancers() {
    let b = spawn_backend();
    // Checks far apart: the backend stays "up" after it dies, so the next
    // request is sent to it and fails to connect.
    let cfg = Config::for_backends(std::slice::from_ref(&b))
        .with("health_check_interval", "60000")
        .with("retries", "0");
    let lb = spawn_balancer(&cfg, &[]);
    let admin = Admin::new(&lb);
    let addr = b.addr();
    admin.metrics_until("the backend up", |m| {
        m.sum("lb_backend_health_status", &[("backend", &addr)]) == 1.0
    });
    drop(b);
    assert!(
        poll_until(WAIT, || connection_refused_now(&addr).then_some(())).is_some(),
        "the backend still accepts after it was stopped"
    );
    assert_eq!(http_get(lb.port, "/").status, 502);
    let m = admin.metrics_until("the 502", |m| m.sum("lb_worker_requests_total", &[]) == 1.0);
    assert_eq!(
        m.value(
            "lb_requests_total",
            &[("backend", &addr), ("status", "502")]
        ),
        1.0
    );
    assert_eq!(
        m.matching("lb_requests_total", &[("status", "502")])
            .next()
            .map(|s| s.labels["source"].clone()),
        Some("balancer".to_string())
    );
}

fn connection_refused_now(addr: &str) -> bool {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .is_some_and(connection_refused)
}

#[test]
fn histogram_build_info_and_process_metrics_are_exposed() {
    let backends = spawn_backends(2);
    let lb = spawn_balancer(&Config::for_backends(&backends), &[]);
    let admin = Admin::new(&lb);
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64();
    for _ in 0..10 {
        assert_eq!(http_get(lb.port, "/sleep?ms=20").status, 200);
    }
    let m = admin.metrics_until("ten requests", |m| {
        m.sum("lb_worker_requests_total", &[]) == 10.0
    });

    // One histogram series per backend; every response head took >= 20 ms.
    assert_eq!(m.types["lb_backend_response_seconds"], "histogram");
    let mut total = 0.0;
    for b in &backends {
        let addr = b.addr();
        let count = m.value("lb_backend_response_seconds_count", &[("backend", &addr)]);
        let sum = m.value("lb_backend_response_seconds_sum", &[("backend", &addr)]);
        let fast = m.value(
            "lb_backend_response_seconds_bucket",
            &[("backend", &addr), ("le", "0.01")],
        );
        assert!(count >= 1.0, "{addr}: {count}");
        assert_eq!(fast, 0.0, "{addr}: a response under 10 ms");
        assert!(
            sum >= count * 0.02 && sum < count * 5.0,
            "{addr}: sum {sum} count {count}"
        );
        total += count;
    }
    assert_eq!(total, 10.0);

    let build: Vec<_> = m.matching("ekilibri_build_info", &[]).collect();
    assert_eq!(build.len(), 1, "{build:?}");
    assert_eq!(build[0].value, 1.0);
    assert_eq!(build[0].labels["version"], env!("CARGO_PKG_VERSION"));
    assert!(!build[0].labels["revision"].is_empty(), "{build:?}");

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64();
    let start = m.value("process_start_time_seconds", &[]);
    assert!(
        start > started - 120.0 && start <= now + 1.0,
        "start time {start}, test began at {started}"
    );
    assert!(m.value("process_cpu_seconds_total", &[]) >= 0.0);
    assert!(m.value("process_resident_memory_bytes", &[]) > 1_000_000.0);
    let open = m.value("process_open_fds", &[]);
    let max = m.value("process_max_fds", &[]);
    assert!(open >= 3.0 && max >= open, "open {open} max {max}");
    for (family, ty) in [
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
        ("ekilibri_build_info", "gauge"),
    ] {
        assert_eq!(
            m.types.get(family).map(String::as_str),
            Some(ty),
            "{family}"
        );
    }
}
