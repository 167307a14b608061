//! The control executor: everything that is not the request path.
//!
//! One unpinned glommio executor owns the backends' health, the running
//! configuration, registrations (admin API, TTLs, etcd) and the admin
//! listener, and talks to every worker over that worker's two shared
//! channels. Each concern is a task that sleeps until its own event:
//!
//! - [`links`]: the outboxes to the workers and their answers (reports,
//!   metrics), each channel driven by one forwarding task;
//! - [`probes`]: one active-check loop per backend (when to check; *what* a
//!   check is lives in [`crate::health::probe`]);
//! - [`timers`]: heartbeats, breakers half-opening, TTL expiry;
//! - [`registry`]: admin and etcd registrations, and the etcd follower
//!   ([`cluster_state`] is what it remembers);
//! - [`reload`]: SIGHUP and `POST /reload` (which keys apply live, which
//!   refuse the reload), and SIGUSR1's access log reopen;
//! - [`api`]: the typed handle the admin listener ([`crate::admin`]) calls;
//! - [`plane`]: the state those tasks share.
//!
//! Signals arrive as messages over a [`bridge`]; SIGTERM ends the loop in
//! [`run`], which tells every worker to drain and returns.

pub mod api;
pub mod cluster_state;
pub mod links;
pub mod plane;
pub mod probes;
pub mod registry;
pub mod reload;
pub mod timers;

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use glommio::channels::shared_channel::{SharedReceiver, SharedSender};

use crate::backend::Backend;
use crate::channel::Outbox;
use crate::channel::bridge;
use crate::channel::link::{connect_receiver, connect_sender, forward};
use crate::config::{Config, OwnAddresses};
use crate::liveness::Liveness;
use crate::messages::{FromWorker, ToWorker};
use links::Links;
use plane::Plane;

/// Longest the control executor waits to hand a worker its shutdown
/// message (a stalled worker must not hold up the others).
const SHUTDOWN_HANDOFF: Duration = Duration::from_secs(1);

/// What the signal thread tells the control executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP: reload the configuration.
    Reload,
    /// SIGUSR1: reopen the access log file (after logrotate moved it).
    ReopenLogs,
    /// SIGINT/SIGTERM: drain and stop.
    Terminate,
    /// A new process (SIGUSR2) took over the listening sockets: drain
    /// softly and stop.
    Handover,
}

/// What the control executor needs to start.
pub struct ControlParts {
    /// The configuration.
    pub config: Arc<Config>,
    /// Where the configuration was read from (for reloads).
    pub config_path: PathBuf,
    /// Every configured backend.
    pub backends: Vec<Arc<Backend>>,
    /// One control channel per worker.
    pub to_workers: Vec<SharedSender<ToWorker>>,
    /// One report channel per worker.
    pub from_workers: Vec<SharedReceiver<FromWorker>>,
    /// Signals, from the signal thread.
    pub signals: bridge::Receiver<Signal>,
    /// The admin listener, when enabled (bound by the runtime).
    pub admin: Option<OwnedFd>,
    /// The etcd thread, in cluster mode.
    pub cluster: Option<crate::cluster::Handle>,
    /// Heartbeat stamps of every executor.
    pub liveness: Arc<Liveness>,
    /// Set once the backend pool is complete and checked: the registry read
    /// from etcd (with a `[cluster]` table) and every backend probed once.
    /// A process taking over from another reports ready only then, so
    /// registered backends are routable from its first request.
    pub synced: Arc<std::sync::atomic::AtomicBool>,
    /// The access log writer thread (reloads switch its file, SIGUSR1
    /// reopens it).
    pub access: crate::access_log::Writer,
    /// The listen and admin addresses as bound (real ports): never a backend.
    pub own: OwnAddresses,
}

/// How often startup readiness is re-checked (a one-time wait, bounded by
/// the first probes' timeouts and the etcd read).
const READINESS_POLL: Duration = Duration::from_millis(20);

/// Sets `synced` once the registry was read (cluster mode) and every
/// backend has a first check result; a startup step, then the task ends.
async fn readiness(plane: Rc<Plane>, synced: Arc<std::sync::atomic::AtomicBool>) {
    loop {
        let registry = plane.cluster.as_ref().is_none_or(|c| c.resynced.get());
        if registry && plane.book.borrow().all_checked() {
            // Workers of a process taking over wait for this to accept.
            plane.links.broadcast(|| ToWorker::Accept);
            synced.store(true, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        glommio::timer::sleep(READINESS_POLL).await;
    }
}

/// Runs the control executor until a termination signal, then tells every
/// worker to drain and returns.
pub async fn run(parts: ControlParts) {
    let ControlParts {
        config,
        config_path,
        backends,
        to_workers,
        from_workers,
        signals,
        admin,
        mut cluster,
        liveness,
        synced,
        access,
        own,
    } = parts;

    let mut outboxes = Vec::with_capacity(to_workers.len());
    for s in to_workers {
        outboxes.push(Outbox::new(connect_sender(s).await));
    }
    let mut inboxes = Vec::with_capacity(from_workers.len());
    for r in from_workers {
        inboxes.push(forward(connect_receiver(r).await));
    }
    let cluster_events = cluster.as_mut().and_then(|c| c.take_events());
    let plane = Rc::new(Plane::new(plane::Setup {
        config: config.clone(),
        config_path,
        backends: backends.clone(),
        links: Links::new(outboxes),
        cluster: cluster.map(cluster_state::ClusterState::new),
        liveness,
        access,
        own,
    }));
    plane.publish();
    for b in &backends {
        plane.spawn_probe(b.id);
    }

    let mut tasks = Vec::new();
    for (inbox, forwarder) in inboxes {
        tasks.push(forwarder);
        let plane = plane.clone();
        tasks.push(glommio::spawn_local(async move {
            while let Some(msg) = inbox.recv().await {
                match msg {
                    FromWorker::Report(report) => plane.on_report(report),
                    FromWorker::Metrics(seq, snap) => plane.links.on_metrics(seq, *snap),
                }
            }
        }));
    }
    tasks.push(glommio::spawn_local(timers::run(plane.clone())));
    tasks.push(glommio::spawn_local(readiness(plane.clone(), synced)));
    if let Some(events) = cluster_events {
        tasks.push(glommio::spawn_local(plane.clone().follow_cluster(events)));
    }
    if let Some(fd) = admin {
        // SAFETY: the runtime bound this listening socket and handed its sole
        // ownership to the control executor.
        let listener = unsafe { glommio::net::TcpListener::from_raw_fd(fd.into_raw_fd()) };
        tasks.push(glommio::spawn_local(crate::admin::serve(
            listener,
            api::Handle::new(plane.clone()),
        )));
    }
    crate::fault::arm("control");
    let mut signals = signals.attach();

    let mut handover = false;
    while let Some(signal) = signals.recv().await {
        match signal {
            Signal::Reload => {
                // Logged, counted and sent to systemd as STATUS= by reload.
                let _ = plane.reload();
                // systemd shows the unit "reloading" until it hears READY
                // again, whether the reload was applied or refused.
                crate::sdnotify::ready();
            }
            Signal::ReopenLogs => plane.reopen_access_log(),
            Signal::Terminate => break,
            Signal::Handover => {
                handover = true;
                break;
            }
        }
    }
    plane.stop_probes();
    for t in tasks {
        t.cancel().await;
    }
    plane.links.shutdown(SHUTDOWN_HANDOFF, handover).await;
}
