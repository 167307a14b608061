//! Backend identity and per-worker backend connections.
//!
//! A [`Backend`] is created once by the runtime for each configured server
//! and shared (behind `Arc`) by every snapshot the control executor publishes,
//! so its identity and its global in-flight counter survive changes of the
//! backend set. [`pool`] owns the core-local keep-alive connections.

pub mod pool;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Stable identifier of a backend: an index assigned at startup, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(pub u32);

/// One backend server.
#[derive(Debug)]
pub struct Backend {
    /// Stable id (pool slots and reports are keyed by it).
    pub id: BackendId,
    /// The address as configured, for logs and consistent hashing.
    pub name: String,
    /// Where to connect.
    pub addr: SocketAddr,
    /// Relative share for weighted strategies.
    pub weight: u32,
    /// The pool it serves (`default` for the top-level `servers`). The same
    /// address in two pools is two backends, each with its own health.
    pub pool: std::sync::Arc<str>,
    /// Requests in flight to this backend across all workers. Only touched
    /// by strategies that need it (LeastConnections, PowerOfTwoChoices): one
    /// atomic add and sub per request on a line shared by the workers.
    inflight: AtomicUsize,
}

impl Backend {
    /// A backend of the default pool with no requests in flight.
    pub fn new(id: BackendId, name: String, addr: SocketAddr, weight: u32) -> Self {
        Self::in_pool(crate::config::DEFAULT_POOL.into(), id, name, addr, weight)
    }

    /// A backend of pool `pool`.
    pub fn in_pool(
        pool: std::sync::Arc<str>,
        id: BackendId,
        name: String,
        addr: SocketAddr,
        weight: u32,
    ) -> Self {
        Backend {
            id,
            name,
            addr,
            weight,
            pool,
            inflight: AtomicUsize::new(0),
        }
    }

    /// Requests in flight right now (approximate across cores).
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Counts a request as started; the guard counts it as finished on drop.
    pub fn start_request(&self) -> InflightGuard<'_> {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(self)
    }
}

/// Decrements a backend's in-flight count when dropped.
#[derive(Debug)]
pub struct InflightGuard<'a>(&'a Backend);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}
