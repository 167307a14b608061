//! Request metrics: core-local counters on the workers, summed on scrape.
//!
//! Each worker owns one [`WorkerMetrics`] (plain `Cell`/`RefCell`, touched
//! only by its own core). Nothing shared is written per request, and
//! recording allocates nothing once a backend's entries exist: series are
//! keyed by [`BackendId`] on the workers and resolved to their `pool` and
//! `backend` labels (the pool's name, the address as configured) only when
//! scraped; the same address in two pools is two series. When the admin side
//! is scraped, the control executor asks every worker for a
//! [`MetricsSnapshot`] over the workers' channels, sums them, and renders
//! the Prometheus text format with [`render`] (together with the control
//! executor's own state: backend health, breakers, health checks, and the
//! [`process`] figures it reads from `/proc` on the scrape).
//!
//! Memory is bounded by the live backend set: when a worker applies a
//! snapshot, [`WorkerMetrics::retain_backends`] drops what it holds for
//! backends no longer in it (keeping only in-flight counts until they reach
//! zero, which a removal's drain waits for). A removed backend's series
//! leave the exposition at once; an address added again starts its series
//! from zero under the same `pool` and `backend` labels (a counter reset, which
//! Prometheus' `rate` and `increase` handle).
//!
//! Not here: the balancer's per-backend in-flight atomics
//! ([`crate::backend`]), health state ([`crate::health`]).

pub mod process;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::time::Duration;

use crate::backend::BackendId;
use crate::http::request::Method;

/// Upper bounds (seconds) of the duration histograms' buckets (requests
/// and backend responses).
pub const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Who made the response a request was answered with (the `source` label
/// of `lb_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResponseSource {
    /// A backend's response, relayed (whatever its status).
    Backend,
    /// The balancer's own answer: a client error (400, 408, 431...), no
    /// backend (502, 503), a backend failure turned into 502/504, or 499
    /// when the client went away first.
    Balancer,
}

impl ResponseSource {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            ResponseSource::Backend => "backend",
            ResponseSource::Balancer => "balancer",
        }
    }
}

/// Key of the requests counter: backend (None: no backend was picked),
/// method, status, and who made the response.
pub type RequestKey = (Option<BackendId>, Method, u16, ResponseSource);

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

/// Bucket counts and sum of one duration histogram (non-cumulative
/// buckets; the last one is above every bound, `+Inf` only).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Histogram {
    /// Observations per bucket of [`DURATION_BUCKETS`], then above them.
    pub buckets: [u64; DURATION_BUCKETS.len() + 1],
    /// Sum of the observations, seconds.
    pub sum: f64,
}

impl Histogram {
    /// Counts one observation.
    pub fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum += secs;
    }

    /// Adds another histogram's counts into this one.
    pub fn add(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.sum += other.sum;
    }

    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// What one worker holds about one backend.
#[derive(Debug, Default)]
struct BackendEntry {
    counts: BackendCounts,
    /// Time from the request sent to the backend's response head.
    response: Histogram,
    /// The backend left the set while requests to it were in flight: the
    /// entry stays for their in-flight count (a removal's drain reads it)
    /// and goes when the last one ends.
    retired: bool,
}

/// The counters of one worker. Core-local: `Cell`s, no atomics.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    requests: RefCell<HashMap<RequestKey, u64>>,
    /// Requests served by this worker, whatever became of their backend.
    total: Cell<u64>,
    duration: RefCell<Histogram>,
    request_bytes: Cell<u64>,
    response_bytes: Cell<u64>,
    retries: Cell<u64>,
    client_success: Cell<u64>,
    client_failed: Cell<u64>,
    backends: RefCell<HashMap<BackendId, BackendEntry>>,
    /// Backends in the last applied snapshot; `None` until the first
    /// [`WorkerMetrics::retain_backends`] (every id counts as live).
    live: RefCell<Option<HashSet<BackendId>>>,
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
    fn is_live(&self, id: BackendId) -> bool {
        self.live.borrow().as_ref().is_none_or(|s| s.contains(&id))
    }

    /// Records one finished client request. `from_backend`: the response
    /// was a backend's (`source="backend"`), not one of our own.
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
        let source = if from_backend {
            ResponseSource::Backend
        } else {
            ResponseSource::Balancer
        };
        // A backend removed while this request ran has no series any more.
        if backend.is_none_or(|id| self.is_live(id)) {
            *self
                .requests
                .borrow_mut()
                .entry((backend, method, status, source))
                .or_insert(0) += 1;
        }
        self.total.set(self.total.get() + 1);
        self.duration.borrow_mut().observe(elapsed);
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
        if let Some(e) = self.backends.borrow_mut().get_mut(&backend) {
            if ok {
                e.counts.success += 1;
            } else {
                e.counts.failed += 1;
            }
        }
    }

    /// Records how long `backend` took from the request sent to its
    /// response head.
    pub fn record_backend_response(&self, backend: BackendId, elapsed: Duration) {
        if let Some(e) = self.backends.borrow_mut().get_mut(&backend)
            && !e.retired
        {
            e.response.observe(elapsed);
        }
    }

    /// Counts a request as in flight to `backend` until the guard drops.
    pub fn inflight(&self, backend: BackendId) -> InflightGuard<'_> {
        let live = self.is_live(backend);
        self.backends
            .borrow_mut()
            .entry(backend)
            .or_insert_with(|| BackendEntry {
                retired: !live,
                ..BackendEntry::default()
            })
            .counts
            .inflight += 1;
        InflightGuard { m: self, backend }
    }

    /// Counts one retry.
    pub fn record_retry(&self) {
        self.retries.set(self.retries.get() + 1);
    }

    /// Keeps only what concerns backends in `live` (the ids of the snapshot
    /// just applied): the rest is dropped, except in-flight counts, which
    /// stay until their requests end. Called on every applied snapshot, so
    /// memory follows the live backend set, not every id ever seen.
    pub fn retain_backends(&self, live: &[BackendId]) {
        let live: HashSet<BackendId> = live.iter().copied().collect();
        self.backends.borrow_mut().retain(|id, e| {
            if live.contains(id) {
                return true;
            }
            e.retired = true;
            e.counts.inflight > 0
        });
        self.requests
            .borrow_mut()
            .retain(|(b, ..), _| b.is_none_or(|id| live.contains(&id)));
        *self.live.borrow_mut() = Some(live);
    }

    /// Backends this worker holds entries for (live ones, and removed ones
    /// with requests still in flight).
    pub fn tracked_backends(&self) -> usize {
        self.backends.borrow().len()
    }

    /// Copies the counters for a scrape.
    pub fn snapshot(&self, worker: usize, client_conns: u64) -> MetricsSnapshot {
        let backends = self.backends.borrow();
        MetricsSnapshot {
            worker,
            requests: self.requests.borrow().clone(),
            total: self.total.get(),
            duration: *self.duration.borrow(),
            request_bytes: self.request_bytes.get(),
            response_bytes: self.response_bytes.get(),
            retries: self.retries.get(),
            client_success: self.client_success.get(),
            client_failed: self.client_failed.get(),
            backends: backends.iter().map(|(id, e)| (*id, e.counts)).collect(),
            backend_response: backends
                .iter()
                .filter(|(_, e)| !e.retired)
                .map(|(id, e)| (*id, e.response))
                .collect(),
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
        let mut backends = self.m.backends.borrow_mut();
        if let Some(e) = backends.get_mut(&self.backend) {
            e.counts.inflight = e.counts.inflight.saturating_sub(1);
            if e.retired && e.counts.inflight == 0 {
                backends.remove(&self.backend);
            }
        }
    }
}

/// One worker's counters at scrape time (sent to the control executor).
#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot {
    /// The worker.
    pub worker: usize,
    /// Requests by backend, method, status and source (live backends only).
    pub requests: HashMap<RequestKey, u64>,
    /// Requests this worker served in all.
    pub total: u64,
    /// Request durations.
    pub duration: Histogram,
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
    /// Per-backend attempt results and in-flight counts (removed backends
    /// with requests in flight included: a removal's drain waits on them).
    pub backends: HashMap<BackendId, BackendCounts>,
    /// Per-backend response times (live backends only).
    pub backend_response: HashMap<BackendId, Histogram>,
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
        self.total
    }
}

/// Backend state as the control executor knows it, for rendering. The
/// list given to [`render`] is the live backend set: series of ids not in
/// it are not rendered.
#[derive(Debug, Clone)]
pub struct BackendMetrics {
    /// Stable id.
    pub id: BackendId,
    /// The pool's name: the `pool` label.
    pub pool: String,
    /// Configured address: the `backend` label.
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

/// The labels of a per-backend series, `pool` then `backend`, ending with a
/// comma; `backend="none",` alone when no backend was picked.
fn backend_labels(pool_and_name: Option<(&str, &str)>) -> String {
    match pool_and_name {
        Some((pool, name)) => format!("pool=\"{}\",backend=\"{}\",", esc(pool), esc(name)),
        None => "backend=\"none\",".to_string(),
    }
}

/// Writes `# HELP` and `# TYPE` of a family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes the samples of one histogram series; `labels` is empty or ends
/// with a comma (`pool="p",backend="x",`).
fn histogram_samples(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let mut cumulative = 0u64;
    for (le, n) in DURATION_BUCKETS.iter().zip(h.buckets.iter()) {
        cumulative += n;
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{le}\"}} {cumulative}");
    }
    cumulative += h.buckets[DURATION_BUCKETS.len()];
    let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
    let plain = labels.trim_end_matches(',');
    let braces = if plain.is_empty() {
        String::new()
    } else {
        format!("{{{plain}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {}", h.sum);
    let _ = writeln!(out, "{name}_count{braces} {cumulative}");
}

/// Renders the Prometheus text exposition format of the workers' counters
/// and the live `backends`.
pub fn render(workers: &[MetricsSnapshot], backends: &[BackendMetrics]) -> String {
    // The `pool` and `backend` labels of each live id. Two ids with one
    // address in one pool (not made by the control executor, but cheap to
    // survive) share a series; one address in two pools is two series.
    let mut names: Vec<(&str, &str)> = Vec::new();
    let mut slot_of: HashMap<BackendId, usize> = HashMap::new();
    for b in backends {
        let key = (b.pool.as_str(), b.name.as_str());
        let slot = match names.iter().position(|n| *n == key) {
            Some(i) => i,
            None => {
                names.push(key);
                names.len() - 1
            }
        };
        slot_of.insert(b.id, slot);
    }
    let mut out = String::with_capacity(8192);
    // (backend slot, method, status, source); None: no backend picked.
    let mut requests: HashMap<(Option<usize>, &'static str, u16, ResponseSource), u64> =
        HashMap::new();
    let mut duration = Histogram::default();
    let mut response = vec![Histogram::default(); names.len()];
    let (mut req_bytes, mut resp_bytes, mut retries, mut client, mut backend_conns) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    for w in workers {
        for (&(b, m, s, src), v) in &w.requests {
            let slot = match b {
                None => None,
                // A removed backend's series are dropped at once.
                Some(id) => match slot_of.get(&id) {
                    Some(&i) => Some(i),
                    None => continue,
                },
            };
            *requests.entry((slot, method_label(m), s, src)).or_insert(0) += v;
        }
        for (id, h) in &w.backend_response {
            if let Some(&i) = slot_of.get(id) {
                response[i].add(h);
            }
        }
        duration.add(&w.duration);
        req_bytes += w.request_bytes;
        resp_bytes += w.response_bytes;
        retries += w.retries;
        client += w.client_conns;
        backend_conns += w.backend_conns;
    }

    family(
        &mut out,
        "lb_requests_total",
        "counter",
        "Requests answered, by pool and backend (the address; backend none, without a pool, when no backend was picked), method, status, and source (backend: the backend's response; balancer: an answer of the balancer's own).",
    );
    // (pool, backend) labels; no pool when no backend was picked.
    let label_of = |slot: Option<usize>| slot.map_or(("", "none"), |i| names[i]);
    let mut keys: Vec<_> = requests.into_iter().collect();
    keys.sort_by(|((b1, m1, s1, o1), _), ((b2, m2, s2, o2), _)| {
        (label_of(*b1), m1, s1, o1).cmp(&(label_of(*b2), m2, s2, o2))
    });
    for ((b, m, s, src), v) in keys {
        let _ = writeln!(
            out,
            "lb_requests_total{{{}method=\"{m}\",status=\"{s}\",source=\"{}\"}} {v}",
            backend_labels(b.map(|i| names[i])),
            src.label()
        );
    }

    family(
        &mut out,
        "lb_request_duration_seconds",
        "histogram",
        "Time from a complete request head to the end of the response.",
    );
    histogram_samples(&mut out, "lb_request_duration_seconds", "", &duration);

    // A histogram family without a series would have no buckets: none
    // while there is no backend.
    if !names.is_empty() {
        family(
            &mut out,
            "lb_backend_response_seconds",
            "histogram",
            "Time from the request sent to a backend (head and body) to its final response head, by pool and backend; failed attempts are not counted.",
        );
    }
    for (i, name) in names.iter().enumerate() {
        let labels = backend_labels(Some(*name));
        histogram_samples(
            &mut out,
            "lb_backend_response_seconds",
            &labels,
            &response[i],
        );
    }

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
        family(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {v}");
    }

    family(
        &mut out,
        "lb_active_connections",
        "gauge",
        "Open connections, by side.",
    );
    let _ = writeln!(out, "lb_active_connections{{side=\"client\"}} {client}");
    let _ = writeln!(
        out,
        "lb_active_connections{{side=\"backend\"}} {backend_conns}"
    );

    // One series per pool and address: the first id with them speaks for
    // them.
    let firsts: Vec<&BackendMetrics> = names
        .iter()
        .filter_map(|(p, n)| backends.iter().find(|b| b.pool == *p && b.name == *n))
        .collect();
    family(
        &mut out,
        "lb_backend_health_status",
        "gauge",
        "1 when the backend passes its health checks.",
    );
    for b in &firsts {
        let _ = writeln!(
            out,
            "lb_backend_health_status{{{}}} {}",
            backend_labels(Some((&b.pool, &b.name))).trim_end_matches(','),
            u8::from(b.up)
        );
    }
    family(
        &mut out,
        "lb_circuit_breaker_state",
        "gauge",
        "Circuit breaker: 0 closed, 1 open, 2 half-open.",
    );
    for b in &firsts {
        let _ = writeln!(
            out,
            "lb_circuit_breaker_state{{{}}} {}",
            backend_labels(Some((&b.pool, &b.name))).trim_end_matches(','),
            b.breaker
        );
    }
    family(
        &mut out,
        "lb_health_checks_total",
        "counter",
        "Active health checks, by pool, backend and result.",
    );
    for b in &firsts {
        let _ = writeln!(
            out,
            "lb_health_checks_total{{{}result=\"success\"}} {}",
            backend_labels(Some((&b.pool, &b.name))),
            b.checks_ok
        );
        let _ = writeln!(
            out,
            "lb_health_checks_total{{{}result=\"failure\"}} {}",
            backend_labels(Some((&b.pool, &b.name))),
            b.checks_failed
        );
    }
    family(
        &mut out,
        "lb_worker_requests_total",
        "counter",
        "Requests served, by worker.",
    );
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

/// Appends `ekilibri_build_info{version,revision} 1`: the crate version and
/// the git revision `build.rs` recorded.
pub fn render_build_info(out: &mut String) {
    family(
        out,
        "ekilibri_build_info",
        "gauge",
        "Always 1; the labels name the running build (crate version, git revision).",
    );
    let _ = writeln!(
        out,
        "ekilibri_build_info{{version=\"{}\",revision=\"{}\"}} 1",
        esc(env!("CARGO_PKG_VERSION")),
        esc(env!("EKILIBRI_GIT_REV"))
    );
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

    fn backend(id: u32, name: &str) -> BackendMetrics {
        BackendMetrics {
            id: BackendId(id),
            pool: "default".into(),
            name: name.into(),
            up: true,
            breaker: 0,
            checks_ok: 4,
            checks_failed: 1,
        }
    }

    /// One attempt and request on `id`, as the request path records them.
    fn served(m: &WorkerMetrics, id: u32, status: u16, from_backend: bool) {
        let g = m.inflight(BackendId(id));
        m.record_backend_response(BackendId(id), Duration::from_millis(2));
        m.record_attempt(BackendId(id), from_backend);
        drop(g);
        m.record_request(
            Some(BackendId(id)),
            Method::Get,
            status,
            Duration::from_millis(3),
            1,
            1,
            from_backend,
        );
    }

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
        let text = render(&[s], &[backend(0, "127.0.0.1:1")]);
        assert!(text.contains(
            "lb_requests_total{pool=\"default\",backend=\"127.0.0.1:1\",method=\"GET\",status=\"200\",source=\"backend\"} 2\n"
        ));
        assert!(text.contains(
            "lb_requests_total{backend=\"none\",method=\"POST\",status=\"502\",source=\"balancer\"} 1\n"
        ));
        assert!(text.contains("lb_request_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("lb_request_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("lb_request_duration_seconds_count 3\n"));
        assert!(text.contains("lb_retries_total 1\n"));
        assert!(text.contains("lb_active_connections{side=\"client\"} 3\n"));
        assert!(
            text.contains("lb_health_checks_total{pool=\"default\",backend=\"127.0.0.1:1\",result=\"failure\"} 1\n")
        );
        assert!(text.contains("lb_worker_requests_total{worker=\"0\"} 3\n"));
    }

    #[test]
    fn balancer_answer_after_a_pick_keeps_the_backend() {
        let m = WorkerMetrics::default();
        served(&m, 0, 500, true);
        served(&m, 0, 504, false);
        let text = render(&[m.snapshot(0, 0)], &[backend(0, "10.0.0.1:80")]);
        assert!(text.contains(
            "lb_requests_total{pool=\"default\",backend=\"10.0.0.1:80\",method=\"GET\",status=\"500\",source=\"backend\"} 1\n"
        ));
        assert!(text.contains(
            "lb_requests_total{pool=\"default\",backend=\"10.0.0.1:80\",method=\"GET\",status=\"504\",source=\"balancer\"} 1\n"
        ));
    }

    #[test]
    fn backend_response_histogram_is_cumulative_per_backend() {
        let a = WorkerMetrics::default();
        let g = a.inflight(BackendId(0));
        a.record_backend_response(BackendId(0), Duration::from_micros(300));
        a.record_backend_response(BackendId(0), Duration::from_millis(40));
        a.record_backend_response(BackendId(0), Duration::from_secs(30));
        drop(g);
        let b = WorkerMetrics::default();
        let g = b.inflight(BackendId(0));
        b.record_backend_response(BackendId(0), Duration::from_millis(40));
        drop(g);
        let text = render(
            &[a.snapshot(0, 0), b.snapshot(1, 0)],
            &[backend(0, "10.0.0.1:80"), backend(1, "10.0.0.2:80")],
        );
        let name = "lb_backend_response_seconds";
        assert_eq!(
            text.matches(&format!("# TYPE {name} histogram\n")).count(),
            1
        );
        assert_eq!(text.matches(&format!("# HELP {name} ")).count(), 1);
        for (le, n) in [
            ("0.0005", 1),
            ("0.025", 1),
            ("0.05", 3),
            ("10", 3),
            ("+Inf", 4),
        ] {
            let line = format!(
                "{name}_bucket{{pool=\"default\",backend=\"10.0.0.1:80\",le=\"{le}\"}} {n}\n"
            );
            assert!(text.contains(&line), "no {line:?} in\n{text}");
        }
        assert!(text.contains(&format!(
            "{name}_count{{pool=\"default\",backend=\"10.0.0.1:80\"}} 4\n"
        )));
        let sum_line = format!("{name}_sum{{pool=\"default\",backend=\"10.0.0.1:80\"}} ");
        let sum: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(sum_line.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN);
        assert!((sum - 30.0803).abs() < 1e-9, "sum {sum}");
        // A backend without responses yet has its series, at zero.
        assert!(text.contains(&format!(
            "{name}_bucket{{pool=\"default\",backend=\"10.0.0.2:80\",le=\"+Inf\"}} 0\n"
        )));
        assert!(text.contains(&format!(
            "{name}_count{{pool=\"default\",backend=\"10.0.0.2:80\"}} 0\n"
        )));
        assert!(text.contains(&format!(
            "{name}_sum{{pool=\"default\",backend=\"10.0.0.2:80\"}} 0\n"
        )));
    }

    #[test]
    fn a_removed_backend_is_not_rendered_and_an_address_keeps_its_label() {
        let m = WorkerMetrics::default();
        served(&m, 0, 200, true);
        // The control executor removed id 0 and added the address again as
        // id 1, before the worker saw a snapshot without 0.
        served(&m, 1, 200, true);
        let text = render(&[m.snapshot(0, 0)], &[backend(1, "10.0.0.1:80")]);
        assert!(!text.contains("removed"), "{text}");
        assert!(text.contains(
            "lb_requests_total{pool=\"default\",backend=\"10.0.0.1:80\",method=\"GET\",status=\"200\",source=\"backend\"} 1\n"
        ));
        assert!(text.contains(
            "lb_backend_response_seconds_count{pool=\"default\",backend=\"10.0.0.1:80\"} 1\n"
        ));
        assert_eq!(text.matches("lb_requests_total{").count(), 1, "{text}");
        // Every request still counts for its worker.
        assert!(text.contains("lb_worker_requests_total{worker=\"0\"} 2\n"));
    }

    #[test]
    fn one_address_in_two_pools_is_two_series() {
        let m = WorkerMetrics::default();
        served(&m, 0, 200, true);
        served(&m, 1, 500, true);
        let mut api = backend(1, "10.0.0.1:80");
        api.pool = "api".into();
        api.up = false;
        let text = render(&[m.snapshot(0, 0)], &[backend(0, "10.0.0.1:80"), api]);
        for line in [
            "lb_requests_total{pool=\"api\",backend=\"10.0.0.1:80\",method=\"GET\",status=\"500\",source=\"backend\"} 1\n",
            "lb_requests_total{pool=\"default\",backend=\"10.0.0.1:80\",method=\"GET\",status=\"200\",source=\"backend\"} 1\n",
            "lb_backend_health_status{pool=\"api\",backend=\"10.0.0.1:80\"} 0\n",
            "lb_backend_health_status{pool=\"default\",backend=\"10.0.0.1:80\"} 1\n",
            "lb_circuit_breaker_state{pool=\"api\",backend=\"10.0.0.1:80\"} 0\n",
            "lb_health_checks_total{pool=\"api\",backend=\"10.0.0.1:80\",result=\"success\"} 4\n",
            "lb_backend_response_seconds_count{pool=\"api\",backend=\"10.0.0.1:80\"} 1\n",
            "lb_backend_response_seconds_count{pool=\"default\",backend=\"10.0.0.1:80\"} 1\n",
        ] {
            assert!(text.contains(line), "no {line} in:\n{text}");
        }
        // Sorted by pool, then backend.
        let api_at = text.find("lb_requests_total{pool=\"api\"");
        let default_at = text.find("lb_requests_total{pool=\"default\"");
        assert!(api_at < default_at, "{text}");
    }

    #[test]
    fn two_ids_with_one_address_share_their_series() {
        let m = WorkerMetrics::default();
        served(&m, 0, 200, true);
        served(&m, 1, 200, true);
        let text = render(
            &[m.snapshot(0, 0)],
            &[backend(0, "10.0.0.1:80"), backend(1, "10.0.0.1:80")],
        );
        assert!(text.contains(
            "lb_requests_total{pool=\"default\",backend=\"10.0.0.1:80\",method=\"GET\",status=\"200\",source=\"backend\"} 2\n"
        ));
        assert_eq!(
            text.matches("lb_backend_health_status{").count(),
            1,
            "{text}"
        );
        assert_eq!(
            text.matches("lb_backend_response_seconds_count{").count(),
            1
        );
    }

    #[test]
    fn retain_bounds_memory_by_the_live_set() {
        let m = WorkerMetrics::default();
        // TTL churn: every registration is a new id; the previous one left.
        for id in 0..1000u32 {
            m.retain_backends(&[BackendId(id)]);
            served(&m, id, 200, true);
            assert!(m.tracked_backends() <= 1);
            assert!(m.requests.borrow().len() <= 1);
        }
        // Records for an id that already left add nothing.
        served(&m, 3, 200, true);
        let s = m.snapshot(0, 0);
        assert_eq!(s.requests.len(), 1, "{:?}", s.requests);
        assert_eq!(s.backend_response.len(), 1);
        assert_eq!(s.total_requests(), 1001);
    }

    #[test]
    fn a_removed_backend_keeps_its_in_flight_count_until_done() {
        let m = WorkerMetrics::default();
        let g = m.inflight(BackendId(7));
        m.retain_backends(&[]);
        // The removal's drain still sees the request in flight.
        assert_eq!(m.snapshot(0, 0).backends[&BackendId(7)].inflight, 1);
        assert!(m.snapshot(0, 0).backend_response.is_empty());
        m.record_attempt(BackendId(7), true);
        drop(g);
        assert_eq!(m.tracked_backends(), 0);
        m.record_request(
            Some(BackendId(7)),
            Method::Get,
            200,
            Duration::from_millis(1),
            0,
            0,
            true,
        );
        assert!(m.snapshot(0, 0).requests.is_empty());
        // A request that picked the backend before the worker learned of
        // its removal leaves nothing behind either.
        drop(m.inflight(BackendId(7)));
        assert_eq!(m.tracked_backends(), 0);
    }

    #[test]
    fn build_info_is_one_series() {
        let mut out = String::new();
        render_build_info(&mut out);
        let want = format!(
            "# HELP ekilibri_build_info Always 1; the labels name the running build (crate version, git revision).\n\
             # TYPE ekilibri_build_info gauge\n\
             ekilibri_build_info{{version=\"{}\",revision=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION"),
            env!("EKILIBRI_GIT_REV")
        );
        assert_eq!(out, want);
    }

    #[test]
    fn every_family_has_help_and_type_once() {
        let m = WorkerMetrics::default();
        served(&m, 0, 200, true);
        let mut s = m.snapshot(0, 0);
        s.reloads = Some(ReloadMetrics::default());
        let mut text = render(
            &[s, m.snapshot(1, 0)],
            &[backend(0, "a:1"), backend(1, "b:2")],
        );
        render_build_info(&mut text);
        process::render(&mut text, &process::read());
        let mut seen = HashSet::new();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap_or("");
            assert!(seen.insert(name.to_string()), "second TYPE for {name}");
            assert_eq!(
                text.matches(&format!("# HELP {name} ")).count(),
                1,
                "{name}"
            );
        }
        assert!(seen.contains("process_resident_memory_bytes"));
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
        assert!(!none.contains("lb_backend_response_seconds"));
    }
}
