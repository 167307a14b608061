//! The control executor's state, shared by its tasks (core-local `Rc`):
//! the health book, the running configuration, the links to the workers,
//! the probe tasks, registrations and cluster state.
//!
//! Routing changes go out through [`Plane::publish`], which builds one
//! snapshot and queues it for every worker without waiting.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::info;

use super::cluster_state::ClusterState;
use super::links::Links;
use crate::access_log::{Target, Writer};
use crate::backend::{Backend, BackendId};
use crate::channel::local::Notify;
use crate::config::{Config, OwnAddresses};
use crate::health::{CheckSpec, HealthBook, Report, Source};
use crate::liveness::Liveness;
use crate::messages::ToWorker;
use crate::metrics::{MetricsSnapshot, ReloadMetrics};

/// How often a removal checks whether the workers' requests to the removed
/// backend have finished.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// The control executor's state.
pub struct Plane {
    /// Health state of every backend.
    pub book: RefCell<HealthBook>,
    pub(super) links: Links,
    config: RefCell<Arc<Config>>,
    pub(super) config_path: PathBuf,
    /// Backends whose probe loop runs (see [`super::probes`]).
    pub(super) probes: RefCell<std::collections::HashSet<BackendId>>,
    /// Set at shutdown: probe loops end after their current pass.
    pub(super) probes_stopped: Cell<bool>,
    next_id: Cell<u32>,
    /// Cluster mode state (None without a `[cluster]` section).
    pub cluster: Option<ClusterState>,
    /// Deadlines of local (non-cluster) TTL registrations.
    pub(super) expiry: RefCell<HashMap<BackendId, Instant>>,
    /// Heartbeat stamps of every executor.
    pub liveness: Arc<Liveness>,
    /// Wakes the timer task when a deadline it sleeps towards changed (a
    /// breaker opened, a TTL was set).
    pub(super) timers: Notify,
    /// The access log writer thread.
    pub(super) access: Writer,
    /// What the writer has open now; `None` while no file was opened (the
    /// log has been off since startup). A reload compares against it.
    pub(super) access_target: RefCell<Option<Target>>,
    /// Reload outcomes and the time of the last good one, for `/metrics`.
    pub(super) reloads: Cell<ReloadMetrics>,
    /// This process's listeners as bound: registrations there are refused.
    pub own: OwnAddresses,
}

/// What a [`Plane`] starts from.
pub(super) struct Setup {
    pub config: Arc<Config>,
    pub config_path: PathBuf,
    pub backends: Vec<Arc<Backend>>,
    pub links: Links,
    pub cluster: Option<ClusterState>,
    pub liveness: Arc<Liveness>,
    pub access: Writer,
    pub own: OwnAddresses,
}

impl Plane {
    /// State for a control executor with these links and backends.
    pub(super) fn new(setup: Setup) -> Self {
        let Setup {
            config,
            config_path,
            backends,
            links,
            cluster,
            liveness,
            access,
            own,
        } = setup;
        let next_id = backends.iter().map(|b| b.id.0 + 1).max().unwrap_or(0);
        // The runtime opened the log's file at startup when the log was on.
        let access_target = config
            .access_log
            .is_on()
            .then(|| config.access_log_path.clone());
        Plane {
            access,
            access_target: RefCell::new(access_target),
            // The configuration loaded at startup counts as the last good load.
            reloads: Cell::new(ReloadMetrics {
                success: 0,
                failure: 0,
                last_success: unix_now(),
            }),
            book: RefCell::new(HealthBook::new(&config, backends)),
            links,
            config: RefCell::new(config),
            config_path,
            probes: RefCell::new(std::collections::HashSet::new()),
            probes_stopped: Cell::new(false),
            next_id: Cell::new(next_id),
            cluster,
            expiry: RefCell::new(HashMap::new()),
            liveness,
            timers: Notify::new(),
            own,
        }
    }

    /// The current configuration.
    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    pub(super) fn set_config(&self, c: Arc<Config>) {
        *self.config.borrow_mut() = c;
    }

    /// Number of request workers.
    pub fn workers(&self) -> usize {
        self.links.workers()
    }

    /// A fresh backend id.
    pub(super) fn next_backend_id(&self) -> BackendId {
        let id = BackendId(self.next_id.get());
        self.next_id.set(id.0 + 1);
        id
    }

    /// Builds a new snapshot and queues it for every worker (a newer one
    /// replaces an unsent older one). Never waits.
    pub fn publish(&self) {
        let snap = self.book.borrow_mut().snapshot();
        self.links.broadcast(|| ToWorker::Snapshot(snap.clone()));
    }

    /// Asks every worker for its metrics and waits for the answers. The
    /// first snapshot also carries the control executor's reload counters.
    pub async fn scrape(&self) -> Vec<MetricsSnapshot> {
        let mut snaps = self.links.scrape().await;
        if let Some(first) = snaps.first_mut() {
            first.reloads = Some(self.reloads.get());
        }
        snaps
    }

    /// Applies a worker's passive report; publishes on a change.
    pub fn on_report(&self, report: Report) {
        let changed = {
            let mut book = self.book.borrow_mut();
            match book.index_of(&report) {
                Some(i) => book.observe_report(i, report.outcome, Instant::now()),
                None => false,
            }
        };
        if changed {
            self.publish();
            // A breaker may have opened: the timer task sleeps until it
            // half-opens.
            self.timers.notify();
        }
    }

    /// Adds a backend from the admin API or the cluster registry; returns
    /// its id. It enters rotation once its first check passes.
    pub fn add_backend(
        self: &Rc<Self>,
        pool: &str,
        name: String,
        addr: SocketAddr,
        weight: u32,
        check: CheckSpec,
        source: Source,
    ) -> BackendId {
        let id = self.next_backend_id();
        let backend = Arc::new(Backend::in_pool(pool.into(), id, name, addr, weight));
        self.book
            .borrow_mut()
            .add(backend.clone(), check.clone(), source);
        self.spawn_probe(id);
        id
    }

    /// Removes a backend: no new requests (a snapshot without it), then
    /// waits until no worker has a request in flight to it (bounded by
    /// `shutdown_timeout`). Returns false for an unknown id.
    pub async fn remove_backend(self: &Rc<Self>, id: BackendId) -> bool {
        if !self.forget(id) {
            return false;
        }
        self.publish();
        self.drain(id).await;
        true
    }

    /// Drops backend `id` from the book and stops probing it; the caller
    /// publishes. Returns false for an unknown id.
    pub fn forget(&self, id: BackendId) -> bool {
        if !self.book.borrow_mut().remove(id) {
            return false;
        }
        self.expiry.borrow_mut().remove(&id);
        true
    }

    /// Waits until no worker has a request in flight to `id` (bounded by
    /// `shutdown_timeout`). Polls the workers' counters: a removal is rare
    /// and bounded, and an event per finished request would put a
    /// cross-core message on the request path.
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
            glommio::timer::sleep(DRAIN_POLL).await;
        }
        info!(backend = id.0, "backend removed");
    }
}

/// Seconds since the Unix epoch, for timestamps on `/metrics`.
pub(super) fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
