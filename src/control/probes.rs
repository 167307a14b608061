//! When to check: one loop per backend that runs a [`crate::health::probe`]
//! every `health_check_interval`, feeds the result to the health book and
//! publishes when the backend flips.
//!
//! A loop is never cancelled: it reads its backend, check and settings from
//! the book and the running configuration on every pass, so a reload needs
//! no restart, and it ends by itself once its backend has left the book.
//! (glommio 0.9 keeps some memory of every task cancelled while a timer of
//! it is pending; restarting every probe on each reload grew the process by
//! a few hundred bytes per backend per reload, which months of reloads and
//! registrations would turn into a leak.)

use std::io::Write;
use std::rc::Rc;

use tracing::{info, warn};

use super::plane::Plane;
use crate::backend::BackendId;
use crate::health::CheckSpec;
use crate::health::probe::{probe, probe_tcp};

/// Probes backend `id` until it leaves the book (or the control executor
/// stops).
pub async fn probe_loop(plane: Rc<Plane>, id: BackendId) {
    loop {
        if plane.probes_stopped.get() {
            break;
        }
        let Some((backend, check)) = plane.book.borrow().probe_target(id) else {
            break;
        };
        let config = plane.config();
        // A backend is probed by its pool's settings (a pool removed by a
        // reload takes its backends with it; until then, the default's).
        let pool = config
            .pool_named(&backend.pool)
            .map_or(config.default_pool(), |(_, p)| p);
        let (connect, timeout) = (pool.timeouts.connect, pool.health.timeout);
        let interval = pool.health.interval;
        let result = match &check {
            CheckSpec::Http(path) => {
                // A backend that expects PROXY headers gets one on its
                // checks too: LOCAL, the check is the balancer's own.
                let mut request = Vec::new();
                if let Some(v) = pool.send_proxy_protocol {
                    let v2 = v == crate::config::ProxyProtocolVersion::V2;
                    crate::proxy_protocol::write_local(&mut request, v2);
                }
                let _ = write!(
                    request,
                    "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ekilibri-health\r\nConnection: close\r\n\r\n",
                    backend.name
                );
                probe(backend.addr, &request, connect, timeout).await
            }
            CheckSpec::Tcp => probe_tcp(backend.addr, timeout).await,
        };
        let flipped = {
            let mut book = plane.book.borrow_mut();
            match book.position(id) {
                Some(i) => book.observe_check(i, result.is_ok()),
                None => break,
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
        glommio::timer::sleep(interval).await;
    }
    plane.probes.borrow_mut().remove(&id);
}

impl Plane {
    /// Starts the probe loop of backend `id` unless one runs (a running
    /// loop picks up a changed check on its next pass).
    pub fn spawn_probe(self: &Rc<Self>, id: BackendId) {
        if self.probes.borrow_mut().insert(id) {
            glommio::spawn_local(probe_loop(self.clone(), id)).detach();
        }
    }

    /// Makes sure every backend in the book has a probe loop (after a
    /// reload added backends).
    pub(super) fn restart_probes(self: &Rc<Self>) {
        let ids: Vec<BackendId> = self
            .book
            .borrow()
            .views()
            .iter()
            .map(|b| b.backend.id)
            .collect();
        for id in ids {
            self.spawn_probe(id);
        }
    }

    /// Stops every probe loop (each ends after its current pass).
    pub(super) fn stop_probes(&self) {
        self.probes_stopped.set(true);
    }
}
