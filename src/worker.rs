//! One request worker: a pinned executor's accept loop, its control-message
//! loop and its drain.
//!
//! Everything in [`Worker`] belongs to one core (`Rc`, `Cell`, `RefCell`):
//! the request-path [`Context`] (snapshot, balancer, pool, counters, ...),
//! which this module creates and updates from control messages, and the
//! registry of open and idle client connections used to drain at shutdown
//! and to close idle connections whose timeout passed (one sweep of the
//! table, instead of a timer per idle wait). It also runs the periodic
//! trim of the worker's spare buffers.
//! Serving a connection is [`connection`]'s job. The only cross-core traffic
//! is the two channels to the control executor (snapshots, configs, scrapes
//! and heartbeats in; passive failure reports and metrics out), and one
//! relaxed heartbeat stamp.

use std::cell::{Cell, RefCell};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::AsyncWriteExt;
use glommio::channels::shared_channel::{SharedReceiver, SharedSender};
use glommio::net::TcpListener;
use tracing::{info, warn};

use crate::access_log::WorkerLog;
use crate::channel::link::{connect_receiver, connect_sender, forward};
use crate::config::Config;
use crate::connection::{self, Registration};
use crate::context::Context;
use crate::liveness::Liveness;
use crate::messages::{FromWorker, ToWorker};

/// Pause after an accept error such as EMFILE, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// After a hand-over, how long the pending accept may take to complete by
/// itself before it is cancelled (see [`stop_accepting`]).
const ACCEPT_SETTLE: Duration = Duration::from_secs(1);
/// How often a draining worker checks whether its connections are done.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// One worker: its request-path context and the registry of open client
/// connections the drain closes.
pub struct Worker {
    /// Worker index (0-based).
    pub id: usize,
    /// What the request path uses; shared with every connection task.
    pub ctx: Rc<Context>,
    active: Cell<usize>,
    /// One slot per open client connection: its socket and deadline while
    /// it waits idle for its next request, [`BUSY`] otherwise. Marking a
    /// connection idle or busy (twice per request) is one store, no hashing
    /// or allocation.
    idle: RefCell<Vec<IdleSlot>>,
    /// When the idle table's deadlines count from (milliseconds).
    epoch: Instant,
    /// Slots of closed connections, reused by the next ones (so the table
    /// stays as large as the most connections ever open at once).
    free_slots: RefCell<Vec<usize>>,
    /// Set on a hand-over: the accept loop ends after its pending accept.
    stop_accepting: Cell<bool>,
    /// Set by the accept loop when it ended by itself.
    accept_done: Cell<bool>,
}

impl Worker {
    /// Open client connections on this worker.
    pub fn active_connections(&self) -> usize {
        self.active.get()
    }

    /// Registers a client connection; the guard unregisters it.
    pub fn connection_started(self: &Rc<Self>) -> ConnGuard {
        let id = match self.free_slots.borrow_mut().pop() {
            Some(slot) => slot,
            None => {
                let mut idle = self.idle.borrow_mut();
                idle.push(IdleSlot::BUSY);
                idle.len() - 1
            }
        };
        self.active.set(self.active.get() + 1);
        self.ctx
            .stats
            .accepted
            .set(self.ctx.stats.accepted.get() + 1);
        ConnGuard {
            worker: self.clone(),
            id,
        }
    }

    /// Marks a connection idle (waiting for its next request, for at most
    /// `timeout`) so a drain or the idle sweep can close it, or
    /// busy again.
    pub fn set_idle(&self, slot: usize, idle: Option<(RawFd, Duration)>) {
        let entry = match idle {
            Some((fd, timeout)) => IdleSlot {
                fd,
                deadline_ms: self.now_ms().saturating_add(timeout.as_millis() as u64),
            },
            None => IdleSlot::BUSY,
        };
        if let Some(s) = self.idle.borrow_mut().get_mut(slot) {
            *s = entry;
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Wakes every idle connection so it sees the drain and closes: shutting
    /// down the read side makes its pending read return end-of-stream.
    fn close_idle(&self) {
        for slot in self.idle.borrow().iter().filter(|s| s.fd != BUSY) {
            shut_read(slot.fd);
        }
    }

    /// Closes the idle connections whose wait outlived its timeout
    /// (`keepalive_timeout`, or `client_header_timeout` before the first
    /// request) the same way: their read returns end-of-stream and they
    /// close quietly. A sweep every [`sweep_every`] replaces a glommio
    /// timer per idle wait (a `BTreeMap` insert and remove per request, and
    /// its nodes' memory per idle connection).
    fn close_expired(&self) {
        let now = self.now_ms();
        for slot in self.idle.borrow_mut().iter_mut() {
            if slot.fd != BUSY && slot.deadline_ms <= now {
                shut_read(slot.fd);
                // Once is enough; the connection marks itself busy or
                // closes next.
                slot.deadline_ms = u64::MAX;
            }
        }
    }
}

/// How often idle deadlines are checked: a twentieth of the shorter idle
/// timeout, between 10 ms and 1 s, so a connection closes at most 5% (or
/// 1 s) late.
pub fn sweep_every(keepalive: Duration, first_request: Duration) -> Duration {
    (keepalive.min(first_request) / 20).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// `shutdown(fd, SHUT_RD)`: a pending read of `fd` returns end-of-stream.
fn shut_read(fd: RawFd) {
    // SAFETY: `fd` belongs to a live connection (entries are marked busy
    // before the socket is dropped); shutdown(2) does not close it.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RD);
    }
}

/// A connection's entry in the idle table.
#[derive(Debug, Clone, Copy)]
struct IdleSlot {
    /// Its socket while idle, [`BUSY`] otherwise.
    fd: RawFd,
    /// When its idle wait times out, in ms since the worker's epoch.
    deadline_ms: u64,
}

impl IdleSlot {
    const BUSY: IdleSlot = IdleSlot {
        fd: BUSY,
        deadline_ms: u64::MAX,
    };
}

/// The idle-table socket of a connection that is not waiting idle.
const BUSY: RawFd = -1;

/// Keeps a worker's count of open client connections.
pub struct ConnGuard {
    worker: Rc<Worker>,
    /// The connection's slot in the idle table ([`Worker::set_idle`]).
    pub id: usize,
}

impl Registration for ConnGuard {
    fn set_idle(&self, idle: Option<(RawFd, Duration)>) {
        self.worker.set_idle(self.id, idle);
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.worker.set_idle(self.id, None);
        self.worker.free_slots.borrow_mut().push(self.id);
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
    let access = WorkerLog::new(id, &access);
    let w = Rc::new(Worker {
        id,
        ctx: Rc::new(Context::new(id, &config, first, reports, access)),
        active: Cell::new(0),
        idle: RefCell::new(Vec::new()),
        epoch: Instant::now(),
        free_slots: RefCell::new(Vec::new()),
        stop_accepting: Cell::new(false),
        accept_done: Cell::new(false),
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
                w.ctx.access.flush();
            }
        })
    };
    // Spare buffers follow the load: what a period did not reuse goes back
    // to the allocator.
    let trimmer = {
        let w = w.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(crate::stash::TRIM_EVERY).await;
                w.ctx.stash.borrow_mut().trim();
                w.ctx.pool.borrow_mut().trim_spares();
            }
        })
    };
    let sweeper = {
        let w = w.clone();
        glommio::spawn_local(async move {
            loop {
                let every = {
                    let cfg = w.ctx.config();
                    sweep_every(cfg.keepalive_timeout, cfg.client_header_timeout)
                };
                glommio::timer::sleep(every).await;
                w.close_expired();
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
                ToWorker::Snapshot(s) if Some(i) == newest_snapshot => w.ctx.apply_snapshot(s),
                ToWorker::Config(c) if Some(i) == newest_config => w.ctx.apply_config(c),
                ToWorker::Snapshot(_) | ToWorker::Config(_) => {}
                ToWorker::Ping => liveness.beat_worker(id),
                ToWorker::Accept => {
                    if let Some(l) = listener.take() {
                        accept = Some(glommio::spawn_local(accept_loop(w.clone(), l)));
                    }
                }
                ToWorker::Scrape(seq) => {
                    let snap = w.ctx.metrics.snapshot(id, w.active.get() as u64);
                    // Never wait here: a full channel means the control
                    // executor is not reading, and its scrape times out.
                    let _ = w
                        .ctx
                        .reports
                        .try_send(FromWorker::Metrics(seq, Box::new(snap)));
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
    w.ctx.start_draining(soft);
    match accept {
        Some(a) if soft => stop_accepting(&w, a).await,
        Some(a) => {
            a.cancel().await;
        }
        None => {}
    }
    drop(listener);
    let deadline = Instant::now() + w.ctx.config().shutdown_timeout;
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
    trimmer.cancel().await;
    sweeper.cancel().await;
    flusher.cancel().await;
    w.ctx.access.flush();
    if w.active.get() > 0 {
        warn!(
            worker = id,
            open = w.active.get(),
            "drain timed out; closing remaining connections"
        );
    } else {
        info!(
            worker = id,
            requests = w.ctx.stats.requests.get(),
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
                if w.active.get() >= w.ctx.config().max_client_connections {
                    // Over the limit: answer 503 and close, off the accept path.
                    if last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                        warn!(
                            worker = w.id,
                            limit = w.ctx.config().max_client_connections,
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
                let ctx = w.ctx.clone();
                let w = w.clone();
                let register = move || w.connection_started();
                glommio::spawn_local(connection::serve(ctx, stream, register)).detach();
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
