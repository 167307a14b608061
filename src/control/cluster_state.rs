//! What cluster mode remembers on the control executor: the etcd thread's
//! handle, the connection state and revisions, and what was last applied
//! for each key (see [`super::registry`], which applies events to it).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use crate::backend::BackendId;
use crate::cluster::{self, Spec};

/// What this instance last applied for one etcd key.
#[derive(Debug, Clone)]
pub(super) struct Known {
    /// Revision of the last change applied (a put or a delete).
    pub(super) revision: i64,
    /// The backend it became, if it is applied (None: deleted, invalid, or
    /// shadowed by a configured backend with the same address).
    pub(super) applied: Option<(BackendId, Spec)>,
    /// A valid registration not applied because a configured backend has
    /// its address; applied when that backend goes away on a reload.
    pub(super) shadowed: Option<Spec>,
}

/// Cluster mode state owned by the control executor.
pub struct ClusterState {
    /// The etcd thread.
    pub handle: cluster::Handle,
    /// Whether the etcd thread is in sync with etcd.
    pub connected: Cell<bool>,
    /// Highest etcd revision applied.
    pub revision: Cell<i64>,
    /// Full re-reads of the registry (one per (re)connection).
    pub resyncs: Cell<u64>,
    /// Highest revision the etcd thread reported (direct applies of admin
    /// writes excluded): a resync below it means etcd's history restarted.
    pub(super) seen: Cell<i64>,
    /// etcd's cluster id at the last resync.
    pub(super) cluster_id: Cell<u64>,
    pub(super) keys: RefCell<HashMap<String, Known>>,
    /// Set after the first full read of the registry.
    pub resynced: Cell<bool>,
}

impl ClusterState {
    /// State for a freshly started etcd thread (not yet connected).
    pub fn new(handle: cluster::Handle) -> Self {
        ClusterState {
            handle,
            connected: Cell::new(false),
            revision: Cell::new(0),
            resyncs: Cell::new(0),
            seen: Cell::new(0),
            cluster_id: Cell::new(0),
            keys: RefCell::new(HashMap::new()),
            resynced: Cell::new(false),
        }
    }
}
