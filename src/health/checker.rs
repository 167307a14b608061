//! The health executor: owns every backend's health state, runs the active
//! checks, takes passive failure reports, and publishes snapshots.
//!
//! It runs on its own executor thread (not a request worker). Health is
//! decided from consecutive results (a backend goes down after
//! `unhealthy_threshold` failed checks, or after `max_fails` failed requests
//! within `fail_window`; it comes back after `healthy_threshold` passed
//! checks) and a snapshot is broadcast only when a backend flips. The
//! per-backend probe loops decide *when* to check; [`probe`] decides *what*
//! a check is.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::shared_channel::{ConnectedSender, SharedReceiver, SharedSender};
use glommio::net::TcpStream;
use tracing::{info, warn};

use super::breaker::{Breaker, BreakerState};
use super::{BackendView, Control, FailureKind, Outcome, Report, Snapshot, ToHealth};
use crate::backend::{Backend, BackendId};
use crate::channel::repoll;
use crate::config;
use crate::config::Config;
use crate::metrics::MetricsSnapshot;

/// How often the executor looks at the process-wide shutdown flag and at
/// open circuit breakers whose open duration has passed.
const SHUTDOWN_POLL: Duration = Duration::from_millis(50);

/// How a backend is probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckSpec {
    /// `GET path`, healthy on 2xx.
    Http(String),
    /// A TCP connect, healthy when it succeeds.
    Tcp,
}

/// Where a backend came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The configuration file (replaced on reload).
    Config,
    /// The admin API (kept across reloads).
    Api,
    /// The cluster registry in etcd (kept across reloads).
    Etcd,
}

#[derive(Debug)]
struct Entry {
    backend: Arc<Backend>,
    check: CheckSpec,
    source: Source,
    checks_ok: u64,
    checks_failed: u64,
    up: bool,
    ok_streak: u32,
    fail_streak: u32,
    passive: VecDeque<Instant>,
    breaker: Breaker,
    key: Option<String>,
    ttl: Option<u64>,
}

/// Health state of every backend, owned by the health executor.
#[derive(Debug)]
pub struct HealthBook {
    entries: Vec<Entry>,
    version: u64,
    breaker_threshold: u32,
    breaker_open: Duration,
    breaker_half_open: u32,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    max_fails: u32,
    fail_window: Duration,
}

impl HealthBook {
    /// All backends start up (as in nginx): traffic flows at once, and the
    /// first round of checks, run immediately, takes out the dead ones.
    pub fn new(config: &Config, backends: Vec<Arc<Backend>>) -> Self {
        HealthBook {
            entries: backends
                .into_iter()
                .map(|backend| Entry {
                    backend,
                    check: CheckSpec::Http(config.health_check_path.clone()),
                    source: Source::Config,
                    checks_ok: 0,
                    checks_failed: 0,
                    up: true,
                    ok_streak: 0,
                    fail_streak: 0,
                    passive: VecDeque::new(),
                    breaker: Breaker::new(
                        config.breaker_threshold,
                        config.breaker_open_duration,
                        config.breaker_half_open_requests,
                    ),
                    key: None,
                    ttl: None,
                })
                .collect(),
            version: 0,
            breaker_threshold: config.breaker_threshold,
            breaker_open: config.breaker_open_duration,
            breaker_half_open: config.breaker_half_open_requests,
            healthy_threshold: config.healthy_threshold,
            unhealthy_threshold: config.unhealthy_threshold,
            max_fails: config.max_fails,
            fail_window: config.fail_window,
        }
    }

    /// Records an active check result; returns true when the backend flipped.
    pub fn observe_check(&mut self, i: usize, ok: bool) -> bool {
        let e = &mut self.entries[i];
        if ok {
            e.checks_ok += 1;
        } else {
            e.checks_failed += 1;
        }
        if ok {
            e.ok_streak = e.ok_streak.saturating_add(1);
            e.fail_streak = 0;
            if !e.up && e.ok_streak >= self.healthy_threshold {
                e.up = true;
                e.passive.clear();
                return true;
            }
        } else {
            e.fail_streak = e.fail_streak.saturating_add(1);
            e.ok_streak = 0;
            if e.up && e.fail_streak >= self.unhealthy_threshold {
                e.up = false;
                return true;
            }
        }
        false
    }

    /// Records a failed request seen by a worker; returns true when the
    /// backend flipped to down (`max_fails` within `fail_window`).
    pub fn observe_failure(&mut self, i: usize, now: Instant) -> bool {
        let window = self.fail_window;
        let max = self.max_fails as usize;
        let e = &mut self.entries[i];
        if !e.up {
            return false;
        }
        e.passive.push_back(now);
        while e
            .passive
            .front()
            .is_some_and(|&t| now.duration_since(t) > window)
        {
            e.passive.pop_front();
        }
        if e.passive.len() >= max {
            e.up = false;
            e.ok_streak = 0;
            e.passive.clear();
            return true;
        }
        false
    }

    /// Builds the next snapshot.
    pub fn snapshot(&mut self) -> Arc<Snapshot> {
        self.version += 1;
        Arc::new(Snapshot {
            version: self.version,
            backends: self
                .entries
                .iter()
                .map(|e| BackendView {
                    backend: e.backend.clone(),
                    up: e.up,
                    breaker: e.breaker.state(),
                })
                .collect(),
        })
    }

    /// Applies a worker's report; returns true when the snapshot changed.
    pub fn observe_report(&mut self, i: usize, outcome: Outcome, now: Instant) -> bool {
        let name = self.entries[i].backend.name.clone();
        match outcome {
            Outcome::Failure(kind) => {
                let before = self.entries[i].breaker.state();
                let breaker = self.entries[i].breaker.on_failure(now);
                if breaker {
                    warn!(backend = %name, "circuit breaker {:?} -> Open after {kind:?}", before);
                }
                let passive = self.observe_failure(i, now);
                if passive {
                    warn!(
                        backend = %name,
                        "backend is down: {} failed requests within {:?} (last: {kind:?})",
                        self.max_fails,
                        self.fail_window
                    );
                }
                breaker || passive
            }
            Outcome::Success => {
                let changed = self.entries[i].breaker.on_success();
                if changed {
                    info!(backend = %name, "circuit breaker HalfOpen -> Closed");
                }
                changed
            }
        }
    }

    /// Moves open breakers whose time is up to half-open; true on a change.
    pub fn tick(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for e in &mut self.entries {
            if e.breaker.tick(now) {
                info!(backend = %e.backend.name, "circuit breaker Open -> HalfOpen: letting trial requests through");
                changed = true;
            }
        }
        changed
    }

    /// The breaker state of backend `i`.
    pub fn breaker_state(&self, i: usize) -> BreakerState {
        self.entries[i].breaker.state()
    }

    fn index_of(&self, report: &Report) -> Option<usize> {
        self.position(report.backend)
    }

    /// Index of backend `id`.
    pub fn position(&self, id: BackendId) -> Option<usize> {
        self.entries.iter().position(|e| e.backend.id == id)
    }

    /// Adds a backend (API-added ones start down and enter rotation once a
    /// check passes; config ones start up, as at startup).
    pub fn add(&mut self, backend: Arc<Backend>, check: CheckSpec, source: Source) {
        let breaker = Breaker::new(
            self.breaker_threshold,
            self.breaker_open,
            self.breaker_half_open,
        );
        self.entries.push(Entry {
            backend,
            check,
            source,
            checks_ok: 0,
            checks_failed: 0,
            up: source == Source::Config,
            ok_streak: 0,
            fail_streak: 0,
            passive: VecDeque::new(),
            breaker,
            key: None,
            ttl: None,
        });
    }

    /// Records where a registered backend lives in etcd and its TTL.
    pub fn set_registration(&mut self, id: BackendId, key: Option<String>, ttl: Option<u64>) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.backend.id == id) {
            e.key = key;
            e.ttl = ttl;
        }
    }

    /// Changes how backend `id` is checked.
    pub fn set_check(&mut self, id: BackendId, check: CheckSpec) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.backend.id == id) {
            e.check = check;
        }
    }

    /// Removes backend `id`; returns whether it existed.
    pub fn remove(&mut self, id: BackendId) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.backend.id != id);
        before != self.entries.len()
    }

    /// Swaps the `Backend` of `id` (new weight or name), keeping its health.
    pub fn replace_backend(&mut self, id: BackendId, backend: Arc<Backend>) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.backend.id == id) {
            e.backend = backend;
        }
    }

    /// Applies reloaded thresholds.
    pub fn set_thresholds(&mut self, c: &Config) {
        self.healthy_threshold = c.healthy_threshold;
        self.unhealthy_threshold = c.unhealthy_threshold;
        self.max_fails = c.max_fails;
        self.fail_window = c.fail_window;
        self.breaker_threshold = c.breaker_threshold;
        self.breaker_open = c.breaker_open_duration;
        self.breaker_half_open = c.breaker_half_open_requests;
    }

    /// Points the checks of configuration backends at a reloaded path.
    pub fn set_config_check_path(&mut self, path: &str) {
        for e in self
            .entries
            .iter_mut()
            .filter(|e| e.source == Source::Config)
        {
            e.check = CheckSpec::Http(path.to_string());
        }
    }

    /// A view of every backend for the admin API and metrics.
    pub fn views(&self) -> Vec<BackendInfo> {
        self.entries
            .iter()
            .map(|e| BackendInfo {
                backend: e.backend.clone(),
                check: e.check.clone(),
                source: e.source,
                up: e.up,
                breaker: e.breaker.state(),
                checks_ok: e.checks_ok,
                checks_failed: e.checks_failed,
                key: e.key.clone(),
                ttl: e.ttl,
            })
            .collect()
    }
}

/// One backend as the admin API and metrics see it.
#[derive(Debug, Clone)]
pub struct BackendInfo {
    /// The backend.
    pub backend: Arc<Backend>,
    /// How it is probed.
    pub check: CheckSpec,
    /// Where it came from.
    pub source: Source,
    /// Passes health checks.
    pub up: bool,
    /// Breaker state.
    pub breaker: BreakerState,
    /// Checks passed.
    pub checks_ok: u64,
    /// Checks failed.
    pub checks_failed: u64,
    /// Its etcd key, for registrations from the cluster registry.
    pub key: Option<String>,
    /// Seconds it lives without a heartbeat, for TTL registrations.
    pub ttl: Option<u64>,
}

/// What the health executor needs to start.
pub struct HealthParts {
    /// The configuration.
    pub config: Arc<Config>,
    /// Where the configuration was read from (for reloads).
    pub config_path: PathBuf,
    /// Every backend.
    pub backends: Vec<Arc<Backend>>,
    /// One control channel per worker.
    pub to_workers: Vec<SharedSender<Control>>,
    /// One report channel per worker.
    pub from_workers: Vec<SharedReceiver<ToHealth>>,
    /// Set by the signal thread.
    pub shutdown: Arc<AtomicBool>,
    /// Set by the signal thread on SIGHUP.
    pub reload: Arc<AtomicBool>,
    /// The admin listener, when enabled (bound by the runtime).
    pub admin: Option<OwnedFd>,
    /// The etcd thread, in cluster mode.
    pub cluster: Option<crate::cluster::Handle>,
}

/// The health executor's state, shared by its tasks (core-local `Rc`).
pub struct Health {
    /// Health state of every backend.
    pub book: RefCell<HealthBook>,
    senders: Vec<ConnectedSender<Control>>,
    config: RefCell<Arc<Config>>,
    config_path: PathBuf,
    probes: RefCell<HashMap<BackendId, glommio::Task<()>>>,
    scrapes: RefCell<HashMap<u64, Vec<MetricsSnapshot>>>,
    next_scrape: Cell<u64>,
    next_id: Cell<u32>,
    /// Cluster mode state (None without a `[cluster]` section).
    pub cluster: Option<super::registry::ClusterState>,
    /// Deadlines of local (non-cluster) TTL registrations.
    pub(super) expiry: RefCell<HashMap<BackendId, Instant>>,
}

/// Longest a scrape waits for the workers' answers.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

impl Health {
    /// The current configuration.
    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// Number of request workers.
    pub fn workers(&self) -> usize {
        self.senders.len()
    }

    /// Builds and broadcasts a new snapshot.
    pub async fn publish(&self) {
        let snap = self.book.borrow_mut().snapshot();
        for s in &self.senders {
            // A worker that has exited has dropped its receiver; ignore it.
            let _ = repoll(s.send(Control::Snapshot(snap.clone()))).await;
        }
    }

    /// Asks every worker for its metrics and waits for the answers.
    pub async fn scrape(&self) -> Vec<MetricsSnapshot> {
        let seq = self.next_scrape.get();
        self.next_scrape.set(seq + 1);
        self.scrapes.borrow_mut().insert(seq, Vec::new());
        for s in &self.senders {
            let _ = repoll(s.send(Control::Scrape(seq))).await;
        }
        let deadline = Instant::now() + SCRAPE_TIMEOUT;
        while Instant::now() < deadline {
            let n = self.scrapes.borrow().get(&seq).map_or(0, Vec::len);
            if n >= self.senders.len() {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
        self.scrapes.borrow_mut().remove(&seq).unwrap_or_default()
    }

    /// Adds a backend from the admin API or the cluster registry; returns
    /// its id. It enters rotation once its first check passes.
    pub fn add_backend(
        self: &Rc<Self>,
        name: String,
        addr: SocketAddr,
        weight: u32,
        check: CheckSpec,
        source: Source,
    ) -> BackendId {
        let id = BackendId(self.next_id.get());
        self.next_id.set(id.0 + 1);
        let backend = Arc::new(Backend::new(id, name, addr, weight));
        self.book
            .borrow_mut()
            .add(backend.clone(), check.clone(), source);
        self.spawn_probe(backend, check);
        id
    }

    /// Removes a backend: no new requests (a snapshot without it), then
    /// waits until no worker has a request in flight to it (bounded by
    /// `shutdown_timeout`). Returns false for an unknown id.
    pub async fn remove_backend(self: &Rc<Self>, id: BackendId) -> bool {
        if !self.forget(id) {
            return false;
        }
        self.publish().await;
        self.drain(id).await;
        true
    }

    /// Drops backend `id` from the book and stops probing it; the caller
    /// publishes. Returns false for an unknown id.
    pub fn forget(&self, id: BackendId) -> bool {
        if !self.book.borrow_mut().remove(id) {
            return false;
        }
        self.probes.borrow_mut().remove(&id);
        self.expiry.borrow_mut().remove(&id);
        true
    }

    /// Waits until no worker has a request in flight to `id` (bounded by
    /// `shutdown_timeout`).
    pub async fn drain(self: &Rc<Self>, id: BackendId) {
        let deadline = Instant::now() + self.config().shutdown_timeout;
        while Instant::now() < deadline {
            let busy: u64 = self
                .scrape()
                .await
                .iter()
                .filter_map(|m| m.backends.get(&id))
                .map(|c| c.inflight)
                .sum();
            if busy == 0 {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
        info!(backend = id.0, "backend removed");
    }

    /// Starts (or restarts) the probe loop of `backend`.
    pub fn spawn_probe(self: &Rc<Self>, backend: Arc<Backend>, check: CheckSpec) {
        let health = self.clone();
        let id = backend.id;
        let task = glommio::spawn_local(async move {
            loop {
                let config = health.config();
                let result = match &check {
                    CheckSpec::Http(path) => {
                        let request = format!(
                            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ekilibri-health\r\nConnection: close\r\n\r\n",
                            backend.name
                        );
                        probe(
                            backend.addr,
                            request.as_bytes(),
                            config.connection_timeout,
                            config.health_check_timeout,
                        )
                        .await
                    }
                    CheckSpec::Tcp => probe_tcp(backend.addr, config.health_check_timeout).await,
                };
                let flipped = {
                    let mut book = health.book.borrow_mut();
                    match book.position(id) {
                        Some(i) => book.observe_check(i, result.is_ok()),
                        None => return,
                    }
                };
                if flipped {
                    match result {
                        Ok(()) => {
                            info!(backend = %backend.name, "backend is up: health check passed")
                        }
                        Err(e) => {
                            warn!(backend = %backend.name, "backend is down: health check failed: {e}")
                        }
                    }
                    health.publish().await;
                }
                glommio::timer::sleep(config.health_check_interval).await;
            }
        });
        self.probes.borrow_mut().insert(id, task);
    }

    /// Re-reads the configuration file and applies it. A file that does not
    /// load, or that changes `listen`, `workers` or `admin_listen`, is refused
    /// and the running configuration stays.
    pub async fn reload(self: &Rc<Self>) -> Result<String, String> {
        let old = self.config();
        let new = match config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("reload refused, keeping the running configuration: {e}");
                warn!("{msg}");
                return Err(msg);
            }
        };
        let mut new = new;
        // `workers` may come from the command line: only an explicit change
        // in the file is a change.
        if new.workers != old.workers {
            if workers_pinned_by_file(&self.config_path) {
                let msg = format!(
                    "reload refused: `workers` changed from {} to {}; restart to change it",
                    old.workers, new.workers
                );
                warn!("{msg}");
                return Err(msg);
            }
            new.workers = old.workers;
        }
        if new.listen != old.listen {
            let msg = format!(
                "reload refused: `listen` changed from {} to {}; restart to change it",
                old.listen, new.listen
            );
            warn!("{msg}");
            return Err(msg);
        }
        new.listen = old.listen;
        if new.admin_listen != old.admin_listen {
            let msg = "reload refused: `admin_listen` changed; restart to change it".to_string();
            warn!("{msg}");
            return Err(msg);
        }
        new.admin_listen = old.admin_listen;
        if new.cluster != old.cluster {
            let msg =
                "reload refused: the [cluster] section changed; restart to change it".to_string();
            warn!("{msg}");
            return Err(msg);
        }
        let new = Arc::new(new);

        // New static backend set: keep identity (and health) of unchanged ones.
        {
            let mut book = self.book.borrow_mut();
            let current = book.views();
            for info in current.iter().filter(|i| i.source == Source::Config) {
                if !new.servers.iter().any(|s| s.addr == info.backend.addr) {
                    book.remove(info.backend.id);
                }
            }
            for spec in &new.servers {
                let existing = book
                    .views()
                    .into_iter()
                    .find(|i| i.backend.addr == spec.addr);
                match existing {
                    Some(i) if i.backend.weight == spec.weight && i.backend.name == spec.name => {}
                    Some(i) => {
                        let b = Arc::new(Backend::new(
                            i.backend.id,
                            spec.name.clone(),
                            spec.addr,
                            spec.weight,
                        ));
                        book.replace_backend(i.backend.id, b);
                    }
                    None => {
                        let id = BackendId(self.next_id.get());
                        self.next_id.set(id.0 + 1);
                        let b =
                            Arc::new(Backend::new(id, spec.name.clone(), spec.addr, spec.weight));
                        book.add(
                            b,
                            CheckSpec::Http(new.health_check_path.clone()),
                            Source::Config,
                        );
                    }
                }
            }
            book.set_thresholds(&new);
            book.set_config_check_path(&new.health_check_path);
        }
        *self.config.borrow_mut() = new.clone();
        for s in &self.senders {
            let _ = repoll(s.send(Control::Config(new.clone()))).await;
        }
        // Restart the probes with the new settings and set.
        self.probes.borrow_mut().clear();
        for info in self.book.borrow().views() {
            self.spawn_probe(info.backend, info.check);
        }
        // Cluster registrations a removed static server kept out.
        self.reapply_shadowed();
        self.publish().await;
        let msg = format!("configuration reloaded: {}", new.summary());
        info!("{msg}");
        Ok(msg)
    }
}

/// True when the file sets `workers` explicitly (a default follows the CPU
/// count and is not a change the operator made).
fn workers_pinned_by_file(path: &std::path::Path) -> bool {
    std::fs::read_to_string(path)
        .map(|t| t.lines().any(|l| l.trim_start().starts_with("workers")))
        .unwrap_or(false)
}

/// Runs the health executor until shutdown has been broadcast.
pub async fn run(parts: HealthParts) {
    let HealthParts {
        config,
        config_path,
        backends,
        to_workers,
        from_workers,
        shutdown,
        reload,
        admin,
        cluster,
    } = parts;
    let mut senders = Vec::with_capacity(to_workers.len());
    for s in to_workers {
        senders.push(repoll(s.connect()).await);
    }
    let mut receivers = Vec::with_capacity(from_workers.len());
    for r in from_workers {
        receivers.push(repoll(r.connect()).await);
    }
    let next_id = backends.iter().map(|b| b.id.0 + 1).max().unwrap_or(0);
    let health = Rc::new(Health {
        book: RefCell::new(HealthBook::new(&config, backends.clone())),
        senders,
        config: RefCell::new(config.clone()),
        config_path,
        probes: RefCell::new(HashMap::new()),
        scrapes: RefCell::new(HashMap::new()),
        next_scrape: Cell::new(0),
        next_id: Cell::new(next_id),
        cluster: cluster.map(super::registry::ClusterState::new),
        expiry: RefCell::new(HashMap::new()),
    });
    health.publish().await;

    for b in &backends {
        health.spawn_probe(b.clone(), CheckSpec::Http(config.health_check_path.clone()));
    }
    let mut tasks = Vec::new();
    for rx in receivers {
        let health = health.clone();
        tasks.push(glommio::spawn_local(async move {
            while let Some(msg) = repoll(rx.recv()).await {
                match msg {
                    ToHealth::Report(report) => {
                        let changed = {
                            let mut book = health.book.borrow_mut();
                            match book.index_of(&report) {
                                Some(i) => book.observe_report(i, report.outcome, Instant::now()),
                                None => false,
                            }
                        };
                        if changed {
                            health.publish().await;
                        }
                    }
                    ToHealth::Metrics(seq, snap) => {
                        if let Some(v) = health.scrapes.borrow_mut().get_mut(&seq) {
                            v.push(*snap);
                        }
                    }
                }
            }
        }));
    }
    if health.cluster.is_some() {
        tasks.push(glommio::spawn_local(health.clone().follow_cluster()));
    }
    if let Some(fd) = admin {
        // SAFETY: the runtime bound this listening socket and handed its sole
        // ownership to the health executor.
        let listener = unsafe { glommio::net::TcpListener::from_raw_fd(fd.into_raw_fd()) };
        tasks.push(glommio::spawn_local(crate::admin::serve(
            listener,
            health.clone(),
        )));
    }

    while !shutdown.load(Ordering::Relaxed) {
        glommio::timer::sleep(SHUTDOWN_POLL).await;
        let changed = health.book.borrow_mut().tick(Instant::now());
        if changed {
            health.publish().await;
        }
        health.expire_registrations().await;
        if reload.swap(false, Ordering::Relaxed) {
            let _ = health.reload().await;
            // systemd shows the unit "reloading" until it hears READY again,
            // whether the reload was applied or refused.
            crate::sdnotify::ready();
        }
    }
    for s in &health.senders {
        let _ = repoll(s.send(Control::Shutdown)).await;
    }
    health.probes.borrow_mut().clear();
    for t in tasks {
        t.cancel().await;
    }
}

/// A TCP check: healthy when a connection opens in time.
pub async fn probe_tcp(addr: SocketAddr, timeout: Duration) -> io::Result<()> {
    TcpStream::connect_timeout(addr, timeout)
        .await
        .map(|_| ())
        .map_err(io::Error::from)
}

/// One active check: connect, send `GET path`, expect a 2xx status line.
pub async fn probe(
    addr: SocketAddr,
    request: &[u8],
    connect_timeout: Duration,
    total_timeout: Duration,
) -> io::Result<()> {
    let check = async {
        let mut s = TcpStream::connect_timeout(addr, connect_timeout)
            .await
            .map_err(io::Error::from)?;
        s.set_read_timeout(Some(total_timeout))
            .map_err(io::Error::from)?;
        s.write_all(request).await?;
        let mut buf = [0u8; 256];
        let mut n = 0;
        while n < 12 || !buf[..n].contains(&b'\n') {
            if n == buf.len() {
                break;
            }
            let r = s.read(&mut buf[n..]).await?;
            if r == 0 {
                break;
            }
            n += r;
        }
        let line = &buf[..n];
        if line.len() >= 12 && line.starts_with(b"HTTP/1.") && line[9] == b'2' {
            Ok(())
        } else if line.len() >= 12 && line.starts_with(b"HTTP/1.") {
            Err(io::Error::other(format!(
                "status {}",
                String::from_utf8_lossy(&line[9..12])
            )))
        } else {
            Err(io::Error::other("not an HTTP response"))
        }
    };
    let deadline = async {
        glommio::timer::sleep(total_timeout).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "health check timed out",
        ))
    };
    futures_lite::future::or(check, deadline).await
}

/// Kind of failure worth a passive report, from a proxy error.
pub fn failure_kind(e: &crate::error::ProxyError) -> Option<FailureKind> {
    use crate::error::ProxyError::*;
    match e {
        Connect(_) => Some(FailureKind::Connect),
        BackendTimeout => Some(FailureKind::Timeout),
        BackendIo(_) | BackendClosed | BadResponse(_) => Some(FailureKind::BadResponse),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendId;

    fn book(unhealthy: u32, healthy: u32) -> HealthBook {
        let mut c = crate::config::parse(
            std::path::Path::new("t"),
            r#"servers = ["127.0.0.1:1", "127.0.0.1:2"]
max_fails = 3
fail_window = 10"#,
        )
        .unwrap();
        c.unhealthy_threshold = unhealthy;
        c.healthy_threshold = healthy;
        let backends = c
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| Arc::new(Backend::new(BackendId(i as u32), s.name.clone(), s.addr, 1)))
            .collect();
        HealthBook::new(&c, backends)
    }

    #[test]
    fn thresholds_flip_once() {
        let mut b = book(2, 2);
        assert!(!b.observe_check(0, false));
        assert!(b.observe_check(0, false));
        assert!(!b.observe_check(0, false));
        assert!(!b.observe_check(0, true));
        assert!(b.observe_check(0, true));
        assert!(!b.observe_check(0, true));
        let s = b.snapshot();
        assert!(s.backends[0].up && s.version == 1);
    }

    #[test]
    fn passive_failures_within_the_window() {
        let mut b = book(1, 1);
        let t0 = Instant::now();
        assert!(!b.observe_failure(1, t0));
        assert!(!b.observe_failure(1, t0 + Duration::from_secs(11)));
        assert!(!b.observe_failure(1, t0 + Duration::from_secs(12)));
        assert!(b.observe_failure(1, t0 + Duration::from_secs(13)));
        assert!(!b.snapshot().backends[1].up);
        assert!(b.observe_check(1, true));
    }
}
