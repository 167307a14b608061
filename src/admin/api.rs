//! What the admin listener may ask of the control executor: a trait the
//! control side implements ([`crate::control::api::Handle`]), so the admin
//! module depends on nothing above it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::BackendId;
use crate::cluster::Spec;
use crate::config::{Config, OwnAddresses};
use crate::health::BackendInfo;
use crate::metrics::MetricsSnapshot;

/// Why a registration or removal was refused: an HTTP status and a message.
pub type Refusal = (u16, String);

/// A write through the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `POST /servers`: create; an existing address is an error.
    Create,
    /// `PUT /servers/{address}`: create, update or renew.
    Upsert,
}

/// Cluster mode as `GET /health` shows it.
#[derive(Debug, Clone)]
pub struct ClusterStatus {
    /// In sync with etcd.
    pub connected: bool,
    /// Highest etcd revision applied.
    pub revision: i64,
    /// Full re-reads of the registry.
    pub resyncs: u64,
    /// The key prefix.
    pub prefix: String,
    /// The etcd endpoints.
    pub endpoints: Vec<String>,
}

/// The control executor's services, as the admin listener uses them. All
/// calls run on the control executor (core-local, never `Send`).
#[allow(async_fn_in_trait)]
pub trait Api {
    /// The running configuration.
    fn config(&self) -> Arc<Config>;
    /// Number of request workers.
    fn workers(&self) -> usize;
    /// This process's listen and admin addresses as bound (never a backend).
    fn own_addresses(&self) -> OwnAddresses;
    /// Every backend with its health.
    fn backends(&self) -> Vec<BackendInfo>;
    /// Executors that missed their heartbeats, and for how long.
    fn stalled(&self) -> Vec<(String, Duration)>;
    /// Cluster mode state, when a `[cluster]` section is configured.
    fn cluster(&self) -> Option<ClusterStatus>;
    /// Every worker's metrics.
    async fn scrape(&self) -> Vec<MetricsSnapshot>;
    /// Registers (or renews) a backend; the status to answer and its id.
    async fn register(&self, spec: Spec, mode: Mode) -> Result<(u16, BackendId), Refusal>;
    /// Removes a backend by id, or by address in pool `pool`, once its
    /// requests are done.
    async fn deregister(
        &self,
        id: Option<BackendId>,
        pool: &str,
        addr: Option<SocketAddr>,
    ) -> Result<(), Refusal>;
    /// Re-reads the configuration file.
    fn reload(&self) -> Result<String, String>;
}
