//! When to check: one loop per backend that runs a [`crate::health::probe`]
//! every `health_check_interval`, feeds the result to the health book and
//! publishes when the backend flips.

use std::rc::Rc;
use std::sync::Arc;

use tracing::{info, warn};

use super::plane::Plane;
use crate::backend::Backend;
use crate::health::CheckSpec;
use crate::health::probe::{probe, probe_tcp};

/// Probes `backend` forever (the task is dropped to stop it); returns when
/// the backend left the book.
pub async fn probe_loop(plane: Rc<Plane>, backend: Arc<Backend>, check: CheckSpec) {
    let id = backend.id;
    let request = match &check {
        CheckSpec::Http(path) => format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ekilibri-health\r\nConnection: close\r\n\r\n",
            backend.name
        ),
        CheckSpec::Tcp => String::new(),
    };
    loop {
        let config = plane.config();
        let result = match &check {
            CheckSpec::Http(_) => {
                probe(
                    backend.addr,
                    request.as_bytes(),
                    config.connection_timeout,
                    config.health_check_timeout,
                )
                .await
            }
            CheckSpec::Tcp => probe_tcp(backend.addr, config.health_check_timeout).await,
        };
        let flipped = {
            let mut book = plane.book.borrow_mut();
            match book.position(id) {
                Some(i) => book.observe_check(i, result.is_ok()),
                None => return,
            }
        };
        if flipped {
            match result {
                Ok(()) => info!(backend = %backend.name, "backend is up: health check passed"),
                Err(e) => {
                    warn!(backend = %backend.name, "backend is down: health check failed: {e}")
                }
            }
            plane.publish();
        }
        glommio::timer::sleep(config.health_check_interval).await;
    }
}

impl Plane {
    /// Starts (or restarts) the probe loop of `backend`.
    pub fn spawn_probe(self: &Rc<Self>, backend: Arc<Backend>, check: CheckSpec) {
        let id = backend.id;
        let task = glommio::spawn_local(probe_loop(self.clone(), backend, check));
        self.probes.borrow_mut().insert(id, task);
    }

    /// Restarts every probe (after a reload changed settings or the set).
    pub(super) fn restart_probes(self: &Rc<Self>) {
        self.probes.borrow_mut().clear();
        for info in self.book.borrow().views() {
            self.spawn_probe(info.backend, info.check);
        }
    }

    /// Stops every probe.
    pub(super) fn stop_probes(&self) {
        self.probes.borrow_mut().clear();
    }
}
