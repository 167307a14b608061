//! One request worker: a pinned executor's accept loop and its core-local
//! state.
//!
//! Everything in [`Worker`] belongs to one core (`Rc`, `Cell`, `RefCell`): the
//! current health snapshot, the balancer, the keep-alive pool, counters, and
//! the registry of idle client connections used to drain at shutdown. The
//! only cross-core traffic is the two channels to the control executor
//! (snapshots, configs, scrapes and heartbeats in; passive failure reports
//! and metrics out), and one relaxed heartbeat stamp.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::AsyncWriteExt;
use glommio::channels::shared_channel::{ConnectedSender, SharedReceiver, SharedSender};
use glommio::net::TcpListener;
use glommio::sync::{Semaphore, StaticPermit};
use tracing::{debug, info, warn};

use crate::access_log::WorkerLog;
use crate::backend::BackendId;
use crate::backend::pool::Pool;
use crate::balancer::{self, Balancer, Rng};
use crate::channel::link::{connect_receiver, connect_sender, forward};
use crate::config::Config;
use crate::health::{BackendView, BreakerState, FailureKind, Outcome, Report, Snapshot};
use crate::liveness::Liveness;
use crate::messages::{FromWorker, ToWorker};
use crate::metrics::WorkerMetrics;
use crate::retry::RetryBudget;

/// Pause after an accept error such as EMFILE, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// After a hand-over, how long the pending accept may take to complete by
/// itself before it is cancelled (see [`stop_accepting`]).
const ACCEPT_SETTLE: Duration = Duration::from_secs(1);
/// How often a draining worker checks whether its connections are done.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Per-worker counters (core-local, summed by the admin side later).
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests proxied (any outcome).
    pub requests: Cell<u64>,
    /// Client connections accepted.
    pub accepted: Cell<u64>,
}

/// The core-local state of one worker.
pub struct Worker {
    /// Worker index (0-based).
    pub id: usize,
    /// The configuration; replaced on reload. A core-local copy, so reading
    /// it per request touches no shared reference count.
    config: RefCell<Rc<Config>>,
    /// `Rc` around the `Arc` on purpose: cloning it per request touches
    /// only core-local memory, never the shared `Arc` count.
    #[allow(clippy::redundant_allocation)]
    snapshot: RefCell<Rc<Arc<Snapshot>>>,
    balancer: RefCell<Box<dyn Balancer>>,
    /// Idle keep-alive connections to the backends.
    pub pool: RefCell<Pool>,
    reports: ConnectedSender<FromWorker>,
    draining: Cell<bool>,
    /// The drain is a hand-over to a new process: idle connections wait
    /// for their next request (answered with `Connection: close`).
    soft_drain: Cell<bool>,
    /// Set on a hand-over: the accept loop ends after its pending accept.
    stop_accepting: Cell<bool>,
    /// Set by the accept loop when it ended by itself.
    accept_done: Cell<bool>,
    active: Cell<usize>,
    idle: RefCell<HashMap<u64, RawFd>>,
    next_conn: Cell<u64>,
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
    /// Retry budget of this worker.
    pub budget: RefCell<RetryBudget>,
    /// Randomness for retry jitter.
    pub rng: RefCell<Rng>,
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
    worker: &'a Worker,
    idx: usize,
}

impl Drop for TrialGuard<'_> {
    fn drop(&mut self) {
        let mut t = self.worker.trials.borrow_mut();
        t[self.idx] = t[self.idx].saturating_sub(1);
    }
}

fn slot_mut<T: Default + Clone>(v: &mut Vec<T>, i: usize) -> &mut T {
    if v.len() <= i {
        v.resize(i + 1, T::default());
    }
    &mut v[i]
}

impl Worker {
    /// The current configuration.
    #[inline]
    pub fn config(&self) -> Rc<Config> {
        self.config.borrow().clone()
    }

    /// Open client connections on this worker.
    pub fn active_connections(&self) -> usize {
        self.active.get()
    }

    fn apply_config(&self, new: Arc<Config>) {
        let old = self.config();
        let new = Rc::new((*new).clone());
        if new.strategy != old.strategy {
            let mut bal =
                balancer::new(new.strategy, 0x5eed ^ ((self.id as u64 + 1) * 0x9E37_79B9));
            bal.update(&self.snapshot.borrow());
            *self.balancer.borrow_mut() = bal;
        }
        if new.pool_size != old.pool_size {
            self.pool.borrow_mut().set_capacity(new.pool_size);
        }
        if new.max_connections != old.max_connections {
            // Each share was sized from the old limit when first used;
            // permits in flight release into the semaphore they came from.
            self.slots.borrow_mut().clear();
        }
        *self.budget.borrow_mut() = RetryBudget::new(new.retry_budget);
        *self.config.borrow_mut() = new;
        info!(worker = self.id, "configuration reloaded");
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

    /// Picks a backend index in `snapshot`.
    pub fn pick(
        &self,
        snapshot: &Snapshot,
        client: IpAddr,
        exclude: Option<usize>,
    ) -> Option<usize> {
        self.balancer.borrow_mut().pick(snapshot, client, exclude)
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
    pub fn try_trial(&self, view: &BackendView) -> Option<Option<TrialGuard<'_>>> {
        if view.breaker != BreakerState::HalfOpen {
            return Some(None);
        }
        let idx = view.backend.id.0 as usize;
        let mut t = self.trials.borrow_mut();
        let n = slot_mut(&mut t, idx);
        if *n >= self.config().breaker_half_open_requests {
            return None;
        }
        *n += 1;
        Some(Some(TrialGuard { worker: self, idx }))
    }

    /// Waits for a `max_connections` slot on backend `id` (this worker's
    /// share), in a bounded queue with a timeout. `Ok(None)` when unlimited.
    pub async fn acquire_slot(&self, id: BackendId) -> Result<Option<StaticPermit>, SlotError> {
        if self.config().max_connections == 0 {
            return Ok(None);
        }
        let i = id.0 as usize;
        let sem = {
            let mut slots = self.slots.borrow_mut();
            slot_mut(&mut slots, i)
                .get_or_insert_with(|| {
                    let share = self
                        .config()
                        .max_connections
                        .div_ceil(self.config().workers as u32);
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
            if *n >= self.config().queue_size {
                return Err(SlotError::QueueFull);
            }
            *n += 1;
        }
        let timeout = self.config().queue_timeout;
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

    /// True when a connection waiting for its next request should close
    /// now: during a shutdown, but not during a hand-over, where the next
    /// request is still served (with `Connection: close`).
    pub fn drain_closes_idle(&self) -> bool {
        self.draining.get() && !self.soft_drain.get()
    }

    fn apply(&self, snap: Arc<Snapshot>) {
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
        self.balancer.borrow_mut().update(&snap);
        // Metrics of backends that left the set go with them.
        let live: Vec<BackendId> = snap.backends.iter().map(|b| b.backend.id).collect();
        self.metrics.retain_backends(&live);
        debug!(
            worker = self.id,
            version = snap.version,
            up = snap.up_count(),
            "new health snapshot"
        );
        *self.snapshot.borrow_mut() = Rc::new(snap);
    }

    /// Registers a client connection; the guard unregisters it.
    pub fn connection_started(self: &Rc<Self>) -> ConnGuard {
        let id = self.next_conn.get();
        self.next_conn.set(id + 1);
        self.active.set(self.active.get() + 1);
        self.stats.accepted.set(self.stats.accepted.get() + 1);
        ConnGuard {
            worker: self.clone(),
            id,
        }
    }

    /// Marks a connection idle (waiting for its next request) so a drain can
    /// close it, or busy again.
    pub fn set_idle(&self, id: u64, fd: Option<RawFd>) {
        let mut idle = self.idle.borrow_mut();
        match fd {
            Some(fd) => {
                idle.insert(id, fd);
            }
            None => {
                idle.remove(&id);
            }
        }
    }

    /// Wakes every idle connection so it sees the drain and closes: shutting
    /// down the read side makes its pending read return end-of-stream.
    fn close_idle(&self) {
        for (_, &fd) in self.idle.borrow().iter() {
            // SAFETY: `fd` belongs to a live connection (entries are removed
            // before the socket is dropped); shutdown(2) does not close it.
            unsafe {
                libc::shutdown(fd, libc::SHUT_RD);
            }
        }
    }
}

/// Keeps a worker's count of open client connections.
pub struct ConnGuard {
    worker: Rc<Worker>,
    /// Connection id for [`Worker::set_idle`].
    pub id: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.worker.set_idle(self.id, None);
        self.worker.active.set(self.worker.active.get() - 1);
    }
}

/// What a worker thread is started with.
pub struct WorkerParts {
    /// Worker index.
    pub id: usize,
    /// The configuration.
    pub config: Arc<Config>,
    /// This worker's listen socket, bound with SO_REUSEPORT by the runtime.
    pub listener: OwnedFd,
    /// Snapshots, configs, scrapes, heartbeats and shutdown from the
    /// control executor.
    pub control: SharedReceiver<ToWorker>,
    /// Passive failure reports and metrics to the control executor.
    pub reports: SharedSender<FromWorker>,
    /// Where this worker stamps its heartbeats.
    pub liveness: Arc<Liveness>,
    /// Accept from the start (false: wait for [`ToWorker::Accept`]).
    pub accept_now: bool,
    /// The access log writer thread.
    pub access: crate::access_log::Writer,
    /// Told once this worker has its first snapshot and accepts.
    pub ready: std::sync::mpsc::Sender<usize>,
}

/// Runs one worker until shutdown and drain complete.
pub async fn run(parts: WorkerParts) {
    let WorkerParts {
        id,
        config,
        listener,
        control,
        reports,
        access,
        ready,
        liveness,
        accept_now,
    } = parts;
    let control = connect_receiver(control).await;
    let reports = connect_sender(reports).await;
    // The forwarder is the only task that polls the shared channel; this
    // one reads the core-local inbox it fills.
    let (inbox, _forwarder) = forward(control);
    let mut early_accept = false;
    let first = loop {
        match inbox.recv().await {
            Some(ToWorker::Snapshot(s)) => break s,
            Some(ToWorker::Ping) => liveness.beat_worker(id),
            Some(ToWorker::Shutdown | ToWorker::Handover) | None => return,
            // Nothing to scrape or reconfigure before the first snapshot, and
            // an early Accept is repeated by nobody: remember it.
            Some(ToWorker::Config(_) | ToWorker::Scrape(_)) => {}
            Some(ToWorker::Accept) => early_accept = true,
        }
    };
    let mut bal = balancer::new(config.strategy, 0x5eed ^ ((id as u64 + 1) * 0x9E37_79B9));
    bal.update(&first);
    let pool = Pool::new(config.pool_size, Some(config.keepalive_timeout));
    let access = WorkerLog::new(id, &access);
    let w = Rc::new(Worker {
        id,
        config: RefCell::new(Rc::new((*config).clone())),
        snapshot: RefCell::new(Rc::new(first)),
        balancer: RefCell::new(bal),
        pool: RefCell::new(pool),
        reports,
        draining: Cell::new(false),
        soft_drain: Cell::new(false),
        stop_accepting: Cell::new(false),
        accept_done: Cell::new(false),
        active: Cell::new(0),
        idle: RefCell::new(HashMap::new()),
        next_conn: Cell::new(0),
        stats: Stats::default(),
        metrics: WorkerMetrics::default(),
        access,
        recently_failed: RefCell::new(Vec::new()),
        trials: RefCell::new(Vec::new()),
        slots: RefCell::new(Vec::new()),
        waiting: RefCell::new(Vec::new()),
        budget: RefCell::new(RetryBudget::new(config.retry_budget)),
        rng: RefCell::new(Rng::new(0xb0ff ^ id as u64)),
    });
    // SAFETY: the runtime created this fd as a bound, listening TCP socket
    // and handed its sole ownership to this worker.
    let listener = unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) };
    let mut listener = Some(listener);
    let mut accept = None;
    if accept_now || early_accept {
        accept = listener
            .take()
            .map(|l| glommio::spawn_local(accept_loop(w.clone(), l)));
    }
    // Runs while the log is off too (a reload may turn it on); an empty
    // buffer makes a flush a no-op.
    let flusher = {
        let w = w.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(crate::access_log::FLUSH_EVERY).await;
                w.access.flush();
            }
        })
    };
    let _ = ready.send(id);
    crate::fault::arm(&format!("w{id}"));

    // A hand-over to a new process drains softly: see ToWorker::Handover.
    let mut soft = false;
    'control: while let Some(first) = inbox.recv().await {
        // Everything queued now, with only the newest snapshot and config
        // applied: a worker that fell behind catches up in one step.
        let mut batch = vec![first];
        batch.extend(inbox.drain());
        let newest_snapshot = batch
            .iter()
            .rposition(|m| matches!(m, ToWorker::Snapshot(_)));
        let newest_config = batch.iter().rposition(|m| matches!(m, ToWorker::Config(_)));
        for (i, msg) in batch.into_iter().enumerate() {
            match msg {
                ToWorker::Snapshot(s) if Some(i) == newest_snapshot => w.apply(s),
                ToWorker::Config(c) if Some(i) == newest_config => w.apply_config(c),
                ToWorker::Snapshot(_) | ToWorker::Config(_) => {}
                ToWorker::Ping => liveness.beat_worker(id),
                ToWorker::Accept => {
                    if let Some(l) = listener.take() {
                        accept = Some(glommio::spawn_local(accept_loop(w.clone(), l)));
                    }
                }
                ToWorker::Scrape(seq) => {
                    let snap = w.metrics.snapshot(id, w.active.get() as u64);
                    // Never wait here: a full channel means the control
                    // executor is not reading, and its scrape times out.
                    let _ = w.reports.try_send(FromWorker::Metrics(seq, Box::new(snap)));
                }
                ToWorker::Shutdown => break 'control,
                ToWorker::Handover => {
                    soft = true;
                    break 'control;
                }
            }
        }
    }

    // Drain: stop accepting (dropping the listener closes it), close idle
    // connections, let in-flight requests finish within shutdown_timeout.
    w.soft_drain.set(soft);
    w.draining.set(true);
    match accept {
        Some(a) if soft => stop_accepting(&w, a).await,
        Some(a) => {
            a.cancel().await;
        }
        None => {}
    }
    drop(listener);
    let deadline = Instant::now() + w.config().shutdown_timeout;
    while w.active.get() > 0 && Instant::now() < deadline {
        // A shutdown cuts idle keep-alive connections at once. A hand-over
        // lets them send one more request, answered with Connection: close
        // (cutting one a client is about to reuse would fail its request);
        // the ones still idle at the deadline are closed.
        if !soft {
            w.close_idle();
        }
        glommio::timer::sleep(DRAIN_POLL).await;
    }
    if soft && w.active.get() > 0 {
        w.close_idle();
        let grace = Instant::now() + Duration::from_secs(1);
        while w.active.get() > 0 && Instant::now() < grace {
            glommio::timer::sleep(DRAIN_POLL).await;
        }
    }
    flusher.cancel().await;
    w.access.flush();
    if w.active.get() > 0 {
        warn!(
            worker = id,
            open = w.active.get(),
            "drain timed out; closing remaining connections"
        );
    } else {
        info!(
            worker = id,
            requests = w.stats.requests.get(),
            "worker drained"
        );
    }
}

/// Ends the accept loop after a hand-over without losing a connection.
/// Cancelling glommio's in-flight io_uring accept would drop a connection
/// the kernel accepted at that instant (its descriptor stays in the
/// cancelled request, unserved). The new process accepts on the same
/// sockets, so the pending accept completes with the next connection,
/// which is served (with `Connection: close`, the worker is draining); only
/// when none comes within [`ACCEPT_SETTLE`] is it cancelled.
async fn stop_accepting(w: &Rc<Worker>, accept: glommio::Task<()>) {
    w.stop_accepting.set(true);
    let deadline = Instant::now() + ACCEPT_SETTLE;
    while !w.accept_done.get() && Instant::now() < deadline {
        glommio::timer::sleep(DRAIN_POLL).await;
    }
    accept.cancel().await;
}

async fn accept_loop(w: Rc<Worker>, listener: TcpListener) {
    let mut last_warn: Option<Instant> = None;
    while !w.stop_accepting.get() {
        match listener.accept().await {
            Ok(stream) => {
                if w.active.get() >= w.config().max_client_connections {
                    // Over the limit: answer 503 and close, off the accept path.
                    if last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                        warn!(
                            worker = w.id,
                            limit = w.config().max_client_connections,
                            "max_client_connections reached; refusing new connections with 503"
                        );
                        last_warn = Some(Instant::now());
                    }
                    glommio::spawn_local(async move {
                        let mut stream = stream;
                        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                        let _ = stream
                            .write_all(&crate::http::canned::error_response(503, true))
                            .await;
                        let _ = stream.close().await;
                    })
                    .detach();
                    continue;
                }
                let w = w.clone();
                glommio::spawn_local(crate::connection::serve(w, stream)).detach();
            }
            Err(e) => {
                let e = std::io::Error::from(e);
                if last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                    warn!(worker = w.id, "accept failed: {e}; backing off");
                    last_warn = Some(Instant::now());
                }
                glommio::timer::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    w.accept_done.set(true);
}
