//! The request-path context: what proxying needs from its worker.
//!
//! A [`Context`] holds one worker's core-local routing state: the current
//! configuration and health snapshot, the balancer, the keep-alive pool,
//! passive health reports, `max_connections` slots and their queues,
//! half-open breaker trials, the retry budget and its jitter, request
//! counters, metrics, the access-log buffer, the request-id source and the
//! stash of spare client-request buffers. [`connection`] and
//! [`proxy`] read and update it for every request.
//!
//! It does not own the accept loop, the control-message loop or the drain
//! registry of open client connections: those stay in [`worker`], which
//! creates the context, applies snapshots and configs to it, and flags the
//! drain. Nothing here knows about connections or proxying.
//!
//! [`connection`]: crate::connection
//! [`proxy`]: crate::proxy
//! [`worker`]: crate::worker

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use glommio::channels::shared_channel::ConnectedSender;
use glommio::sync::{Semaphore, StaticPermit};
use tracing::{debug, info};

use crate::access_log::WorkerLog;
use crate::backend::BackendId;
use crate::backend::pool::Pool;
use crate::balancer::{self, Rng, Selector};
use crate::config::{BackendLimits, Config, PoolConfig};
use crate::health::{BackendView, BreakerState, FailureKind, Outcome, Report, Snapshot};
use crate::messages::FromWorker;
use crate::metrics::WorkerMetrics;
use crate::request_id::IdSource;
use crate::retry::RetryBudget;
use crate::stash::Stash;

/// The log target of what a worker applies (configs, snapshots): these
/// lines are the worker's, whichever module applies them, so filters such as
/// `RUST_LOG=ekilibri::worker=debug` keep showing them.
const LOG_TARGET: &str = "ekilibri::worker";

/// Per-worker counters (core-local, summed by the admin side later).
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests proxied (any outcome).
    pub requests: Cell<u64>,
    /// Client connections accepted.
    pub accepted: Cell<u64>,
}

/// The core-local state the request path of one worker uses.
pub struct Context {
    /// Worker index (0-based).
    pub id: usize,
    /// The configuration; replaced on reload. A core-local copy, so reading
    /// it per request touches no shared reference count.
    config: RefCell<Rc<Config>>,
    /// `Rc` around the `Arc` on purpose: cloning it per request touches
    /// only core-local memory, never the shared `Arc` count.
    #[allow(clippy::redundant_allocation)]
    snapshot: RefCell<Rc<Arc<Snapshot>>>,
    /// One lane per configured pool, in the configuration's order.
    lanes: RefCell<Vec<Lane>>,
    /// Lanes of the pools the last reload removed, with the backends they
    /// had then: a request that started in such a pool retries there (as
    /// nginx's old workers finish requests with the old upstreams). Dropped
    /// at the next reload, so at most one generation is kept.
    retired: RefCell<Vec<Lane>>,
    /// Idle keep-alive connections to the backends of every pool.
    pub pool: RefCell<Pool>,
    /// Passive failure reports and metrics to the control executor; the
    /// worker's control loop answers scrapes through it too.
    pub(crate) reports: ConnectedSender<FromWorker>,
    /// Set once by the worker when shutdown starts.
    draining: Cell<bool>,
    /// The drain is a hand-over to a new process: idle connections wait
    /// for their next request (answered with `Connection: close`).
    soft_drain: Cell<bool>,
    /// Counters.
    pub stats: Stats,
    /// Request metrics (core-local).
    pub metrics: WorkerMetrics,
    /// Access log buffer. Always there: whether a request is logged, and
    /// how, follows the current configuration, so a reload turns it on, off
    /// or to another format for the next request.
    pub access: WorkerLog,
    /// Backends this worker saw fail and has not seen succeed since (by id):
    /// only those get a success report, which resets their breaker count.
    recently_failed: RefCell<Vec<bool>>,
    /// Half-open trial requests in flight, by backend id.
    trials: RefCell<Vec<u32>>,
    /// `max_connections` share per backend (by id), created on first use.
    slots: RefCell<Vec<Option<Rc<Semaphore>>>>,
    /// Requests waiting for a slot, by backend id.
    waiting: RefCell<Vec<usize>>,
    /// Randomness for retry jitter.
    pub rng: RefCell<Rng>,
    /// Makes this worker's request ids (`X-Request-Id`, `$request_id`).
    pub request_ids: IdSource,
    /// Spare client-request buffers: idle client connections give theirs
    /// back here and take a set when their next request arrives.
    pub stash: RefCell<Stash>,
}

/// One pool as this worker routes it: the part of the snapshot that is the
/// pool's backends, its balancer and its retry budget.
struct Lane {
    /// The pool's name (lanes are matched by name across reloads).
    name: String,
    /// This pool's backends only; balancer indices point into it.
    #[allow(clippy::redundant_allocation)]
    snapshot: Rc<Arc<Snapshot>>,
    balancer: Selector,
    budget: Rc<RefCell<RetryBudget>>,
}

impl Lane {
    fn new(pool: &PoolConfig, id: usize, all: &Snapshot) -> Lane {
        let mut lane = Lane {
            name: pool.name.clone(),
            snapshot: Rc::new(Arc::new(Snapshot::default())),
            balancer: balancer::new(pool.strategy, balancer_seed(id)),
            budget: Rc::new(RefCell::new(RetryBudget::new(pool.retry.budget))),
        };
        lane.update(all);
        lane
    }

    /// Takes this pool's backends out of `all` and updates the balancer.
    fn update(&mut self, all: &Snapshot) {
        let mine = Snapshot {
            version: all.version,
            backends: all
                .backends
                .iter()
                .filter(|b| *b.backend.pool == *self.name)
                .cloned()
                .collect(),
        };
        self.balancer.update(&mine);
        self.snapshot = Rc::new(Arc::new(mine));
    }
}

/// Why a request could not get a backend slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotError {
    /// The wait queue is full.
    QueueFull,
    /// The wait timed out.
    Timeout,
}

/// Holds a half-open trial slot; released on drop.
pub struct TrialGuard<'a> {
    cx: &'a Context,
    idx: usize,
}

impl Drop for TrialGuard<'_> {
    fn drop(&mut self) {
        let mut t = self.cx.trials.borrow_mut();
        t[self.idx] = t[self.idx].saturating_sub(1);
    }
}

fn slot_mut<T: Default + Clone>(v: &mut Vec<T>, i: usize) -> &mut T {
    if v.len() <= i {
        v.resize(i + 1, T::default());
    }
    &mut v[i]
}

/// The balancer seed of worker `id`: distinct per worker, fixed per run.
fn balancer_seed(id: usize) -> u64 {
    0x5eed ^ ((id as u64 + 1) * 0x9E37_79B9)
}

impl Context {
    /// The context of worker `id`, routing by its first snapshot `first`.
    pub fn new(
        id: usize,
        config: &Config,
        first: Arc<Snapshot>,
        reports: ConnectedSender<FromWorker>,
        access: WorkerLog,
    ) -> Self {
        let lanes = config
            .pools
            .iter()
            .map(|p| Lane::new(p, id, &first))
            .collect();
        Context {
            id,
            config: RefCell::new(Rc::new(config.clone())),
            snapshot: RefCell::new(Rc::new(first)),
            lanes: RefCell::new(lanes),
            retired: RefCell::new(Vec::new()),
            pool: RefCell::new(Pool::new(Some(config.keepalive_timeout))),
            reports,
            draining: Cell::new(false),
            soft_drain: Cell::new(false),
            stats: Stats::default(),
            metrics: WorkerMetrics::default(),
            access,
            recently_failed: RefCell::new(Vec::new()),
            trials: RefCell::new(Vec::new()),
            slots: RefCell::new(Vec::new()),
            waiting: RefCell::new(Vec::new()),
            rng: RefCell::new(Rng::new(0xb0ff ^ id as u64)),
            request_ids: IdSource::new(id),
            stash: RefCell::new(Stash::default()),
        }
    }

    /// The current configuration.
    #[inline]
    pub fn config(&self) -> Rc<Config> {
        self.config.borrow().clone()
    }

    /// Applies a reloaded configuration: lanes for added pools, none for
    /// removed ones, a new balancer where a pool's strategy changed, each
    /// pool's new idle capacity and a fresh retry budget.
    pub fn apply_config(&self, new: Arc<Config>) {
        let old = self.config();
        let new = Rc::new((*new).clone());
        let all = self.snapshot();
        {
            let mut lanes = self.lanes.borrow_mut();
            let mut next = Vec::with_capacity(new.pools.len());
            for p in &new.pools {
                let before = old.pool_named(&p.name).map(|(_, o)| o);
                let kept = lanes.iter().position(|l| l.name == p.name);
                let lane = match (kept, before) {
                    (Some(i), Some(o)) if o.strategy == p.strategy => {
                        let l = lanes.swap_remove(i);
                        *l.budget.borrow_mut() = RetryBudget::new(p.retry.budget);
                        l
                    }
                    _ => Lane::new(p, self.id, &all),
                };
                next.push(lane);
            }
            // What is left are the removed pools' lanes: kept, untouched
            // by later snapshots, for the requests still in them.
            *self.retired.borrow_mut() = std::mem::replace(&mut *lanes, next);
        }
        {
            let mut pool = self.pool.borrow_mut();
            for b in all.backends.iter() {
                if let Some((_, p)) = new.pool_named(&b.backend.pool) {
                    pool.trim(b.backend.id, p.pool_size);
                } else {
                    pool.clear(b.backend.id);
                }
            }
        }
        let limits_changed = new.pools.iter().any(|p| {
            old.pool_named(&p.name)
                .is_none_or(|(_, o)| o.limits.max_connections != p.limits.max_connections)
        });
        if limits_changed {
            // Each share was sized from the old limit when first used;
            // permits in flight release into the semaphore they came from.
            self.slots.borrow_mut().clear();
        }
        *self.config.borrow_mut() = new;
        info!(target: LOG_TARGET, worker = self.id, "configuration reloaded");
    }

    /// Runs `f` on the lane of pool `name`, expected at index `lane` (the
    /// pool's index in the configuration the request started with; after
    /// a reload that moved it, found by name; after one that removed it,
    /// its retired lane). `None` when the pool is gone for longer.
    fn with_lane<R>(&self, lane: usize, name: &str, f: impl FnOnce(&mut Lane) -> R) -> Option<R> {
        let mut lanes = self.lanes.borrow_mut();
        let i = match lanes.get(lane) {
            Some(l) if l.name == name => Some(lane),
            _ => lanes.iter().position(|l| l.name == name),
        };
        match i {
            Some(i) => lanes.get_mut(i).map(f),
            None => {
                drop(lanes);
                let mut retired = self.retired.borrow_mut();
                retired.iter_mut().find(|l| l.name == name).map(f)
            }
        }
    }

    /// The snapshot of pool `name`'s backends to route by (a core-local
    /// `Rc` clone); empty when the pool is gone.
    pub fn pool_snapshot(&self, lane: usize, name: &str) -> Rc<Arc<Snapshot>> {
        self.with_lane(lane, name, |l| l.snapshot.clone())
            .unwrap_or_else(|| Rc::new(Arc::new(Snapshot::default())))
    }

    /// The retry budget of pool `name` (a spent one when the pool is gone).
    pub fn budget(&self, lane: usize, name: &str) -> Rc<RefCell<RetryBudget>> {
        self.with_lane(lane, name, |l| l.budget.clone())
            .unwrap_or_else(|| Rc::new(RefCell::new(RetryBudget::new(0.0))))
    }

    /// True while the access log is on (no reference count touched).
    #[inline]
    pub fn access_log_on(&self) -> bool {
        self.config.borrow().access_log.is_on()
    }

    /// The snapshot to route this request by (a core-local `Rc` clone: no
    /// atomic on the shared `Arc` per request).
    pub fn snapshot(&self) -> Rc<Arc<Snapshot>> {
        self.snapshot.borrow().clone()
    }

    /// Applies a newer health snapshot (older or equal versions are
    /// ignored): drops idle connections to backends that are down or gone,
    /// and updates the balancer.
    pub fn apply_snapshot(&self, snap: Arc<Snapshot>) {
        let current = self.snapshot.borrow().version;
        if snap.version <= current && current != 0 {
            return;
        }
        {
            let mut pool = self.pool.borrow_mut();
            for b in snap.backends.iter().filter(|b| !b.up) {
                pool.clear(b.backend.id);
            }
            // Backends removed from the set: drop their idle connections.
            let old = self.snapshot.borrow().clone();
            for b in old.backends.iter() {
                if !snap.backends.iter().any(|n| n.backend.id == b.backend.id) {
                    pool.clear(b.backend.id);
                }
            }
        }
        for lane in self.lanes.borrow_mut().iter_mut() {
            lane.update(&snap);
        }
        // Metrics of backends that left the set go with them.
        let live: Vec<BackendId> = snap.backends.iter().map(|b| b.backend.id).collect();
        self.metrics.retain_backends(&live);
        debug!(
            target: LOG_TARGET,
            worker = self.id,
            version = snap.version,
            up = snap.up_count(),
            "new health snapshot"
        );
        *self.snapshot.borrow_mut() = Rc::new(snap);
    }

    /// Selects a backend index in `snapshot`, the snapshot of pool `name`,
    /// avoiding `exclude` while another is accepted and skipping what
    /// `accept` refuses ([`Selector::select`]).
    pub fn select(
        &self,
        lane: usize,
        name: &str,
        snapshot: &Snapshot,
        client: IpAddr,
        exclude: impl IntoIterator<Item = usize>,
        accept: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        self.with_lane(lane, name, |l| {
            l.balancer.select(snapshot, client, exclude, accept)
        })
        .flatten()
    }

    /// Reports a passive failure to the control executor without waiting; a
    /// full channel drops the report (the control side is already busy with
    /// this backend's failures).
    pub fn report_failure(&self, backend: BackendId, kind: FailureKind) {
        *slot_mut(&mut self.recently_failed.borrow_mut(), backend.0 as usize) = true;
        let _ = self.reports.try_send(FromWorker::Report(Report {
            backend,
            outcome: Outcome::Failure(kind),
        }));
    }

    /// Reports a success when it matters to the breaker: after a failure
    /// this worker saw, or while the breaker is half-open. Otherwise free.
    pub fn report_success(&self, view: &BackendView) {
        let id = view.backend.id.0 as usize;
        let mut failed = self.recently_failed.borrow_mut();
        let was_failed = failed.get(id).copied().unwrap_or(false);
        if was_failed || view.breaker == BreakerState::HalfOpen {
            if was_failed {
                failed[id] = false;
            }
            let _ = self.reports.try_send(FromWorker::Report(Report {
                backend: view.backend.id,
                outcome: Outcome::Success,
            }));
        }
    }

    /// Takes a half-open trial slot for `view`, if the breaker allows one
    /// more on this worker. Closed breakers need no slot (`Some(None)`).
    pub fn try_trial(
        &self,
        pool: &PoolConfig,
        view: &BackendView,
    ) -> Option<Option<TrialGuard<'_>>> {
        if view.breaker != BreakerState::HalfOpen {
            return Some(None);
        }
        let idx = view.backend.id.0 as usize;
        let mut t = self.trials.borrow_mut();
        let n = slot_mut(&mut t, idx);
        if *n >= pool.breaker.half_open_requests {
            return None;
        }
        *n += 1;
        Some(Some(TrialGuard { cx: self, idx }))
    }

    /// Waits for a `max_connections` slot on backend `id` (this worker's
    /// share), in a bounded queue with a timeout. `Ok(None)` when unlimited.
    pub async fn acquire_slot(
        &self,
        limits: &BackendLimits,
        id: BackendId,
    ) -> Result<Option<StaticPermit>, SlotError> {
        if limits.max_connections == 0 {
            return Ok(None);
        }
        let i = id.0 as usize;
        let sem = {
            let mut slots = self.slots.borrow_mut();
            slot_mut(&mut slots, i)
                .get_or_insert_with(|| {
                    let share = limits
                        .max_connections
                        .div_ceil(self.config.borrow().workers as u32);
                    Rc::new(Semaphore::new(u64::from(share.max(1))))
                })
                .clone()
        };
        if let Ok(p) = sem.try_acquire_static_permit(1) {
            return Ok(Some(p));
        }
        {
            let mut waiting = self.waiting.borrow_mut();
            let n = slot_mut(&mut waiting, i);
            if *n >= limits.queue_size {
                return Err(SlotError::QueueFull);
            }
            *n += 1;
        }
        let timeout = limits.queue_timeout;
        let r =
            futures_lite::future::or(async { sem.acquire_static_permit(1).await.ok() }, async {
                glommio::timer::sleep(timeout).await;
                None
            })
            .await;
        {
            let mut waiting = self.waiting.borrow_mut();
            let n = slot_mut(&mut waiting, i);
            *n = n.saturating_sub(1);
        }
        r.map(Some).ok_or(SlotError::Timeout)
    }

    /// True once shutdown started: finish the current request, then close.
    pub fn draining(&self) -> bool {
        self.draining.get()
    }

    /// Marks the start of shutdown (`soft`: a hand-over to a new process);
    /// called once by the worker's drain.
    pub fn start_draining(&self, soft: bool) {
        self.soft_drain.set(soft);
        self.draining.set(true);
    }

    /// True when a connection waiting for its next request should close
    /// now: during a shutdown, but not during a hand-over, where the next
    /// request is still served (with `Connection: close`).
    pub fn drain_closes_idle(&self) -> bool {
        self.draining.get() && !self.soft_drain.get()
    }
}
