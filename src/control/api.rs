//! The typed handle the admin listener calls ([`crate::admin::Api`]).

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::plane::Plane;
use crate::admin::{Api, ClusterStatus, Mode, Refusal};
use crate::backend::BackendId;
use crate::cluster::Spec;
use crate::config::{Config, OwnAddresses};
use crate::health::BackendInfo;
use crate::metrics::MetricsSnapshot;

/// The control executor, as the admin listener sees it.
#[derive(Clone)]
pub struct Handle(Rc<Plane>);

impl Handle {
    /// A handle on `plane`.
    pub fn new(plane: Rc<Plane>) -> Self {
        Handle(plane)
    }
}

impl Api for Handle {
    fn config(&self) -> Arc<Config> {
        self.0.config()
    }

    fn workers(&self) -> usize {
        self.0.workers()
    }

    fn own_addresses(&self) -> OwnAddresses {
        self.0.own
    }

    fn backends(&self) -> Vec<BackendInfo> {
        self.0.book.borrow().views()
    }

    fn stalled(&self) -> Vec<(String, Duration)> {
        self.0.liveness.stalled()
    }

    fn cluster(&self) -> Option<ClusterStatus> {
        self.0.cluster.as_ref().map(|c| ClusterStatus {
            connected: c.connected.get(),
            revision: c.revision.get(),
            resyncs: c.resyncs.get(),
            prefix: c.handle.config.prefix.clone(),
            endpoints: c.handle.config.endpoints.clone(),
        })
    }

    async fn scrape(&self) -> Vec<MetricsSnapshot> {
        self.0.scrape().await
    }

    async fn register(&self, spec: Spec, mode: Mode) -> Result<(u16, BackendId), Refusal> {
        self.0.register(spec, mode).await
    }

    async fn deregister(
        &self,
        id: Option<BackendId>,
        pool: &str,
        addr: Option<SocketAddr>,
    ) -> Result<(), Refusal> {
        self.0.deregister(id, pool, addr).await
    }

    fn reload(&self) -> Result<String, String> {
        self.0.reload()
    }
}
