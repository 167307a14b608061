//! What crosses cores between the control executor and the request workers.
//!
//! Each worker has one shared channel in each direction, created by the
//! runtime and driven by [`crate::channel::link`] tasks on both sides.
//! Everything here is `Send` and either immutable (`Arc`) or a plain value.

use std::sync::Arc;

use crate::config::Config;
use crate::health::{Report, Snapshot};
use crate::metrics::MetricsSnapshot;

/// Control executor -> worker.
#[derive(Debug)]
pub enum ToWorker {
    /// A new snapshot to route by. Only the newest one queued is applied.
    Snapshot(Arc<Snapshot>),
    /// A reloaded configuration (same listen address and worker count).
    Config(Arc<Config>),
    /// Send a metrics snapshot back, tagged with this sequence number.
    Scrape(u64),
    /// Liveness heartbeat: handling it proves the worker's event loop runs.
    Ping,
    /// Start accepting connections. A worker of a process taking over from
    /// another (SIGUSR2) waits for this until the backend pool is read and
    /// checked; otherwise it accepts from the start and ignores it.
    Accept,
    /// Stop accepting, drain, exit.
    Shutdown,
    /// A new process took over the listening sockets: stop accepting and
    /// drain softly (idle keep-alive connections are answered once more,
    /// with `Connection: close`, instead of being cut), then exit.
    Handover,
}

impl ToWorker {
    /// True when `self` must stay behind `other` in the queue: snapshots and
    /// configs keep their relative order (a replacement never moves one
    /// kind past the other).
    pub fn ordered_after(&self, other: &ToWorker) -> bool {
        matches!(
            (self, other),
            (ToWorker::Snapshot(_), ToWorker::Config(_))
                | (ToWorker::Config(_), ToWorker::Snapshot(_))
        )
    }

    /// True when `other` is the same kind of message and `self` supersedes
    /// it while both wait unsent (snapshots, configs, pings, scrapes: a
    /// newer one makes the older one useless; shutdown is never replaced).
    pub fn supersedes(&self, other: &ToWorker) -> bool {
        matches!(
            (self, other),
            (ToWorker::Snapshot(_), ToWorker::Snapshot(_))
                | (ToWorker::Config(_), ToWorker::Config(_))
                | (ToWorker::Ping, ToWorker::Ping)
                | (ToWorker::Scrape(_), ToWorker::Scrape(_))
        )
    }
}

/// Worker -> control executor.
#[derive(Debug)]
pub enum FromWorker {
    /// A passive observation about a backend.
    Report(Report),
    /// The answer to [`ToWorker::Scrape`].
    Metrics(u64, Box<MetricsSnapshot>),
}
