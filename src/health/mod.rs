//! Backend health: the state machine ([`book`]: thresholds, passive
//! failures, [`breaker`]s), what a check is ([`probe`]), and the immutable
//! [`Snapshot`] workers route by.
//!
//! This module decides *what* is healthy; [`crate::control`] decides *when*
//! to check and carries snapshots to the workers and their [`Report`]s back.
//! It knows nothing of the admin API, etcd or configuration files. Workers
//! never read health state across cores on the request path, only their
//! latest local snapshot.

pub mod book;
pub mod breaker;
pub mod probe;

use std::sync::Arc;

pub use book::{BackendInfo, CheckSpec, HealthBook, Source};
pub use breaker::BreakerState;

use crate::backend::{Backend, BackendId};

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
#[derive(Debug, Clone, Default)]
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

/// Result of a request, as reported to the control executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The request failed in this way.
    Failure(FailureKind),
    /// The request succeeded (reported only after a failure, or while the
    /// breaker is half-open).
    Success,
}

/// Worker -> control executor: a passive observation.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// The backend concerned.
    pub backend: BackendId,
    /// What happened.
    pub outcome: Outcome,
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
