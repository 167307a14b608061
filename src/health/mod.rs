//! Backend health: the snapshot workers route by, and the messages that carry
//! health between the health executor and the workers.
//!
//! The health executor ([`checker`]) owns all health state. After every flip
//! it publishes a new immutable [`Snapshot`] to each worker over that
//! worker's shared channel; workers never read health state across cores on
//! the request path, only their latest local snapshot. Workers report
//! passive failures back as [`Report`]s over their own channel.

pub mod breaker;
pub mod checker;
pub mod registry;

use std::sync::Arc;

pub use breaker::BreakerState;

use crate::backend::{Backend, BackendId};
use crate::config::Config;
use crate::metrics::MetricsSnapshot;

/// One backend as a snapshot sees it.
#[derive(Debug, Clone)]
pub struct BackendView {
    /// The backend (shared across snapshots so identity and counters persist).
    pub backend: Arc<Backend>,
    /// Passes health checks (and is not out for passive failures).
    pub up: bool,
    /// The circuit breaker's state.
    pub breaker: BreakerState,
}

impl BackendView {
    /// May take traffic: healthy and the breaker is not open.
    #[inline]
    pub fn routable(&self) -> bool {
        self.up && self.breaker != BreakerState::Open
    }
}

/// An immutable view of which backends may take traffic.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Increases with every publication; workers ignore older ones.
    pub version: u64,
    /// Every backend, in configuration order, up or not.
    pub backends: Vec<BackendView>,
}

impl Snapshot {
    /// Backends that may take traffic.
    pub fn up_count(&self) -> usize {
        self.backends.iter().filter(|b| b.routable()).count()
    }
}

/// Health executor -> worker.
#[derive(Debug)]
pub enum Control {
    /// A new snapshot to route by.
    Snapshot(Arc<Snapshot>),
    /// A reloaded configuration (same listen address and worker count).
    Config(Arc<Config>),
    /// Send a metrics snapshot back, tagged with this sequence number.
    Scrape(u64),
    /// Stop accepting, drain, exit.
    Shutdown,
}

/// Worker -> health executor.
#[derive(Debug)]
pub enum ToHealth {
    /// A passive observation about a backend.
    Report(Report),
    /// The answer to [`Control::Scrape`].
    Metrics(u64, Box<MetricsSnapshot>),
}

/// What a worker saw go wrong with a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Connect refused, reset or unreachable.
    Connect,
    /// Connect, read or write timed out.
    Timeout,
    /// The backend sent an invalid response or closed mid-response.
    BadResponse,
}

/// Result of a request, as reported to the health executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The request failed in this way.
    Failure(FailureKind),
    /// The request succeeded (reported only after a failure, or while the
    /// breaker is half-open).
    Success,
}

/// Worker -> health executor: a passive observation.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// The backend concerned.
    pub backend: BackendId,
    /// What happened.
    pub outcome: Outcome,
}
