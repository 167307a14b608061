//! Request metrics: core-local counters on the workers, summed on scrape.
//!
//! Each worker owns one [`WorkerMetrics`] (plain `Cell`/`RefCell`, touched
//! only by its own core). Nothing shared is written per request. When the
//! admin side is scraped, the health executor asks every worker for a
//! [`MetricsSnapshot`] over the workers' channels, sums them, and renders
//! the Prometheus text format with [`render`] (together with the health
//! executor's own state: backend health, breakers, health checks).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt::Write;
use std::time::Duration;

use crate::backend::BackendId;
use crate::http::request::Method;

/// Upper bounds (seconds) of the request duration histogram buckets.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Key of the requests counter: backend (None: no backend was reached),
/// method, status.
pub type RequestKey = (Option<BackendId>, Method, u16);

/// Per-backend results, for `/stats/detail` and breakers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendCounts {
    /// Attempts that produced a response.
    pub success: u64,
    /// Attempts that failed (connect, timeout, bad or no response).
    pub failed: u64,
    /// Requests in flight to the backend on this worker.
    pub inflight: u64,
}

/// The counters of one worker. Core-local: `Cell`s, no atomics.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    requests: RefCell<HashMap<RequestKey, u64>>,
    buckets: RefCell<[u64; DURATION_BUCKETS.len() + 1]>,
    duration_sum: Cell<f64>,
    request_bytes: Cell<u64>,
    response_bytes: Cell<u64>,
    retries: Cell<u64>,
    client_success: Cell<u64>,
    client_failed: Cell<u64>,
    backends: RefCell<HashMap<BackendId, BackendCounts>>,
}

thread_local! {
    /// Open backend connections of this thread (pooled or in use).
    static BACKEND_CONNS: Cell<i64> = const { Cell::new(0) };
}

/// Counts a backend connection as open (called when it is created).
pub fn backend_conn_opened() {
    BACKEND_CONNS.with(|c| c.set(c.get() + 1));
}

/// Counts a backend connection as closed (called when it is dropped).
pub fn backend_conn_closed() {
    BACKEND_CONNS.with(|c| c.set(c.get() - 1));
}

impl WorkerMetrics {
    /// Records one finished client request.
    #[allow(clippy::too_many_arguments)]
    pub fn record_request(
        &self,
        backend: Option<BackendId>,
        method: Method,
        status: u16,
        elapsed: Duration,
        request_bytes: u64,
        response_bytes: u64,
        from_backend: bool,
    ) {
        *self
            .requests
            .borrow_mut()
            .entry((backend, method, status))
            .or_insert(0) += 1;
        let secs = elapsed.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets.borrow_mut()[i] += 1;
        self.duration_sum.set(self.duration_sum.get() + secs);
        self.request_bytes
            .set(self.request_bytes.get() + request_bytes);
        self.response_bytes
            .set(self.response_bytes.get() + response_bytes);
        let c = if from_backend {
            &self.client_success
        } else {
            &self.client_failed
        };
        c.set(c.get() + 1);
    }

    /// Records the result of one attempt on a backend.
    pub fn record_attempt(&self, backend: BackendId, ok: bool) {
        let mut b = self.backends.borrow_mut();
        let e = b.entry(backend).or_default();
        if ok {
            e.success += 1;
        } else {
            e.failed += 1;
        }
    }

    /// Counts a request as in flight to `backend` until the guard drops.
    pub fn inflight(&self, backend: BackendId) -> InflightGuard<'_> {
        self.backends
            .borrow_mut()
            .entry(backend)
            .or_default()
            .inflight += 1;
        InflightGuard { m: self, backend }
    }

    /// Counts one retry.
    pub fn record_retry(&self) {
        self.retries.set(self.retries.get() + 1);
    }

    /// Copies the counters for a scrape.
    pub fn snapshot(&self, worker: usize, client_conns: u64) -> MetricsSnapshot {
        MetricsSnapshot {
            worker,
            requests: self.requests.borrow().clone(),
            buckets: self.buckets.borrow().to_vec(),
            duration_sum: self.duration_sum.get(),
            request_bytes: self.request_bytes.get(),
            response_bytes: self.response_bytes.get(),
            retries: self.retries.get(),
            client_success: self.client_success.get(),
            client_failed: self.client_failed.get(),
            backends: self.backends.borrow().clone(),
            client_conns,
            backend_conns: BACKEND_CONNS.with(|c| c.get()).max(0) as u64,
            reloads: None,
        }
    }
}

/// Releases an in-flight count.
pub struct InflightGuard<'a> {
    m: &'a WorkerMetrics,
    backend: BackendId,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        if let Some(e) = self.m.backends.borrow_mut().get_mut(&self.backend) {
            e.inflight = e.inflight.saturating_sub(1);
        }
    }
}

/// One worker's counters at scrape time (sent to the health executor).
#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot {
    /// The worker.
    pub worker: usize,
    /// Requests by backend, method, status.
    pub requests: HashMap<RequestKey, u64>,
    /// Duration histogram bucket counts (last is +Inf only).
    pub buckets: Vec<u64>,
    /// Sum of durations, seconds.
    pub duration_sum: f64,
    /// Bytes received from clients.
    pub request_bytes: u64,
    /// Bytes sent to clients.
    pub response_bytes: u64,
    /// Retries.
    pub retries: u64,
    /// Requests answered with a backend's response.
    pub client_success: u64,
    /// Requests answered with an error of the balancer's own.
    pub client_failed: u64,
    /// Per-backend attempt results and in-flight counts.
    pub backends: HashMap<BackendId, BackendCounts>,
    /// Open client connections.
    pub client_conns: u64,
    /// Open backend connections.
    pub backend_conns: u64,
    /// The control executor's reload counters: set by it on the first
    /// snapshot of a scrape, `None` on every worker's own.
    pub reloads: Option<ReloadMetrics>,
}

/// Configuration reloads as the control executor counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReloadMetrics {
    /// Reloads applied.
    pub success: u64,
    /// Reloads refused (the running configuration stayed).
    pub failure: u64,
    /// Unix time of the last applied configuration (startup counts).
    pub last_success: f64,
}

impl MetricsSnapshot {
    /// Total requests this worker served.
    pub fn total_requests(&self) -> u64 {
        self.requests.values().sum()
    }
}

/// Backend state as the health executor knows it, for rendering.
#[derive(Debug, Clone)]
pub struct BackendMetrics {
    /// Stable id.
    pub id: BackendId,
    /// Configured address.
    pub name: String,
    /// Health (1 up, 0 down).
    pub up: bool,
    /// Breaker state number (0 closed, 1 open, 2 half-open).
    pub breaker: u8,
    /// Health checks passed.
    pub checks_ok: u64,
    /// Health checks failed.
    pub checks_failed: u64,
}

fn method_label(m: Method) -> &'static str {
    match m {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other => "OTHER",
    }
}

/// Escapes a label value (backslash, quote, newline).
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders the Prometheus text exposition format.
pub fn render(workers: &[MetricsSnapshot], backends: &[BackendMetrics]) -> String {
    let name_of = |id: Option<BackendId>| -> String {
        match id {
            None => "none".to_string(),
            Some(id) => backends
                .iter()
                .find(|b| b.id == id)
                .map(|b| b.name.clone())
                .unwrap_or_else(|| format!("removed-{}", id.0)),
        }
    };
    let mut out = String::with_capacity(4096);
    let mut requests: HashMap<RequestKey, u64> = HashMap::new();
    let mut buckets = vec![0u64; DURATION_BUCKETS.len() + 1];
    let mut sum = 0.0;
    let (mut req_bytes, mut resp_bytes, mut retries, mut client, mut backend_conns) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    for w in workers {
        for (k, v) in &w.requests {
            *requests.entry(*k).or_insert(0) += v;
        }
        for (i, b) in w.buckets.iter().enumerate() {
            if i < buckets.len() {
                buckets[i] += b;
            }
        }
        sum += w.duration_sum;
        req_bytes += w.request_bytes;
        resp_bytes += w.response_bytes;
        retries += w.retries;
        client += w.client_conns;
        backend_conns += w.backend_conns;
    }

    let _ = writeln!(
        out,
        "# HELP lb_requests_total Requests answered, by backend, method and status."
    );
    let _ = writeln!(out, "# TYPE lb_requests_total counter");
    let mut keys: Vec<_> = requests.iter().collect();
    keys.sort_by_key(|((b, m, s), _)| (b.map(|b| b.0), method_label(*m), *s));
    for ((b, m, s), v) in keys {
        let _ = writeln!(
            out,
            "lb_requests_total{{backend=\"{}\",method=\"{}\",status=\"{}\"}} {v}",
            esc(&name_of(*b)),
            method_label(*m),
            s
        );
    }

    let _ = writeln!(
        out,
        "# HELP lb_request_duration_seconds Time from a complete request head to the end of the response."
    );
    let _ = writeln!(out, "# TYPE lb_request_duration_seconds histogram");
    let mut cumulative = 0u64;
    for (i, le) in DURATION_BUCKETS.iter().enumerate() {
        cumulative += buckets[i];
        let _ = writeln!(
            out,
            "lb_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
        );
    }
    cumulative += buckets[DURATION_BUCKETS.len()];
    let _ = writeln!(
        out,
        "lb_request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
    );
    let _ = writeln!(out, "lb_request_duration_seconds_sum {sum}");
    let _ = writeln!(out, "lb_request_duration_seconds_count {cumulative}");

    for (name, help, v) in [
        (
            "lb_request_bytes_total",
            "Bytes received from clients (heads and bodies).",
            req_bytes,
        ),
        (
            "lb_response_bytes_total",
            "Bytes sent to clients (heads and bodies).",
            resp_bytes,
        ),
        (
            "lb_retries_total",
            "Requests retried on another attempt.",
            retries,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(out, "{name} {v}");
    }

    let _ = writeln!(
        out,
        "# HELP lb_active_connections Open connections, by side."
    );
    let _ = writeln!(out, "# TYPE lb_active_connections gauge");
    let _ = writeln!(out, "lb_active_connections{{side=\"client\"}} {client}");
    let _ = writeln!(
        out,
        "lb_active_connections{{side=\"backend\"}} {backend_conns}"
    );

    let _ = writeln!(
        out,
        "# HELP lb_backend_health_status 1 when the backend passes its health checks."
    );
    let _ = writeln!(out, "# TYPE lb_backend_health_status gauge");
    for b in backends {
        let _ = writeln!(
            out,
            "lb_backend_health_status{{backend=\"{}\"}} {}",
            esc(&b.name),
            u8::from(b.up)
        );
    }
    let _ = writeln!(
        out,
        "# HELP lb_circuit_breaker_state Circuit breaker: 0 closed, 1 open, 2 half-open."
    );
    let _ = writeln!(out, "# TYPE lb_circuit_breaker_state gauge");
    for b in backends {
        let _ = writeln!(
            out,
            "lb_circuit_breaker_state{{backend=\"{}\"}} {}",
            esc(&b.name),
            b.breaker
        );
    }
    let _ = writeln!(
        out,
        "# HELP lb_health_checks_total Active health checks, by backend and result."
    );
    let _ = writeln!(out, "# TYPE lb_health_checks_total counter");
    for b in backends {
        let _ = writeln!(
            out,
            "lb_health_checks_total{{backend=\"{}\",result=\"success\"}} {}",
            esc(&b.name),
            b.checks_ok
        );
        let _ = writeln!(
            out,
            "lb_health_checks_total{{backend=\"{}\",result=\"failure\"}} {}",
            esc(&b.name),
            b.checks_failed
        );
    }
    let _ = writeln!(
        out,
        "# HELP lb_worker_requests_total Requests served, by worker."
    );
    let _ = writeln!(out, "# TYPE lb_worker_requests_total counter");
    let mut ws: Vec<&MetricsSnapshot> = workers.iter().collect();
    ws.sort_by_key(|w| w.worker);
    for w in ws {
        let _ = writeln!(
            out,
            "lb_worker_requests_total{{worker=\"{}\"}} {}",
            w.worker,
            w.total_requests()
        );
    }
    if let Some(r) = workers.iter().find_map(|w| w.reloads) {
        render_reloads(&mut out, r);
    }
    out
}

/// Appends the configuration reload families to an exposition.
fn render_reloads(out: &mut String, r: ReloadMetrics) {
    let _ = writeln!(
        out,
        "# HELP lb_config_reloads_total Configuration reloads (SIGHUP, POST /reload), by result; a refused one keeps the running configuration."
    );
    let _ = writeln!(out, "# TYPE lb_config_reloads_total counter");
    let _ = writeln!(
        out,
        "lb_config_reloads_total{{result=\"success\"}} {}",
        r.success
    );
    let _ = writeln!(
        out,
        "lb_config_reloads_total{{result=\"failure\"}} {}",
        r.failure
    );
    let _ = writeln!(
        out,
        "# HELP lb_config_last_reload_success_timestamp_seconds Unix time the running configuration was loaded (startup or the last applied reload)."
    );
    let _ = writeln!(
        out,
        "# TYPE lb_config_last_reload_success_timestamp_seconds gauge"
    );
    let _ = writeln!(
        out,
        "lb_config_last_reload_success_timestamp_seconds {:.3}",
        r.last_success
    );
}

/// Cluster-mode figures for `/metrics`.
#[derive(Debug, Clone, Copy)]
pub struct ClusterMetrics {
    /// In sync with etcd.
    pub connected: bool,
    /// Full re-reads of the registry.
    pub resyncs: u64,
    /// Highest etcd revision applied.
    pub revision: i64,
}

/// Appends the cluster-mode families to an exposition.
pub fn render_cluster(out: &mut String, c: ClusterMetrics) {
    let _ = writeln!(
        out,
        "# HELP lb_cluster_connected 1 while the etcd registry is reachable and in sync, 0 while serving the last known pool."
    );
    let _ = writeln!(out, "# TYPE lb_cluster_connected gauge");
    let _ = writeln!(out, "lb_cluster_connected {}", u8::from(c.connected));
    let _ = writeln!(
        out,
        "# HELP lb_cluster_resyncs_total Full reads of the etcd registry (one per connection)."
    );
    let _ = writeln!(out, "# TYPE lb_cluster_resyncs_total counter");
    let _ = writeln!(out, "lb_cluster_resyncs_total {}", c.resyncs);
    let _ = writeln!(
        out,
        "# HELP lb_cluster_revision Highest etcd revision applied by this instance."
    );
    let _ = writeln!(out, "# TYPE lb_cluster_revision gauge");
    let _ = writeln!(out, "lb_cluster_revision {}", c.revision);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_renders() {
        let m = WorkerMetrics::default();
        m.record_request(
            Some(BackendId(0)),
            Method::Get,
            200,
            Duration::from_millis(3),
            10,
            20,
            true,
        );
        m.record_request(
            Some(BackendId(0)),
            Method::Get,
            200,
            Duration::from_millis(30),
            10,
            20,
            true,
        );
        m.record_request(
            None,
            Method::Post,
            502,
            Duration::from_secs(20),
            5,
            5,
            false,
        );
        m.record_retry();
        let s = m.snapshot(0, 3);
        assert_eq!(s.total_requests(), 3);
        let text = render(
            &[s],
            &[BackendMetrics {
                id: BackendId(0),
                name: "127.0.0.1:1".into(),
                up: true,
                breaker: 0,
                checks_ok: 4,
                checks_failed: 1,
            }],
        );
        assert!(text.contains(
            "lb_requests_total{backend=\"127.0.0.1:1\",method=\"GET\",status=\"200\"} 2\n"
        ));
        assert!(
            text.contains("lb_requests_total{backend=\"none\",method=\"POST\",status=\"502\"} 1\n")
        );
        assert!(text.contains("lb_request_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("lb_request_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("lb_retries_total 1\n"));
        assert!(text.contains("lb_active_connections{side=\"client\"} 3\n"));
        assert!(
            text.contains("lb_health_checks_total{backend=\"127.0.0.1:1\",result=\"failure\"} 1\n")
        );
        assert!(text.contains("lb_worker_requests_total{worker=\"0\"} 3\n"));
    }

    #[test]
    fn renders_reload_counters_once() {
        let mut first = WorkerMetrics::default().snapshot(0, 0);
        first.reloads = Some(ReloadMetrics {
            success: 2,
            failure: 1,
            last_success: 1_700_000_000.5,
        });
        let second = WorkerMetrics::default().snapshot(1, 0);
        let text = render(&[first, second], &[]);
        assert!(text.contains("lb_config_reloads_total{result=\"success\"} 2\n"));
        assert!(text.contains("lb_config_reloads_total{result=\"failure\"} 1\n"));
        assert!(text.contains("lb_config_last_reload_success_timestamp_seconds 1700000000.500\n"));
        assert_eq!(text.matches("# TYPE lb_config_reloads_total").count(), 1);
        let none = render(&[WorkerMetrics::default().snapshot(0, 0)], &[]);
        assert!(!none.contains("lb_config_reloads_total"));
    }
}
