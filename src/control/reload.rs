//! Configuration reloads (SIGHUP, `POST /reload`): re-read the file,
//! refuse what cannot change live, apply the rest in place.
//!
//! Unchanged backends keep their identity, health and in-flight counts;
//! API and cluster registrations survive. A reload never waits on a worker:
//! the new configuration and snapshot are queued for each of them.

use std::rc::Rc;
use std::sync::Arc;

use tracing::{info, warn};

use super::plane::Plane;
use crate::backend::Backend;
use crate::config;
use crate::health::{CheckSpec, Source};
use crate::messages::ToWorker;

impl Plane {
    /// Re-reads the configuration file and applies it. A file that does not
    /// load, or that changes `listen`, `workers` or `admin_listen`, is refused
    /// and the running configuration stays.
    pub fn reload(self: &Rc<Self>) -> Result<String, String> {
        let old = self.config();
        let new = match config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("reload refused, keeping the running configuration: {e}");
                warn!("{msg}");
                return Err(msg);
            }
        };
        let mut new = new;
        // `workers` may come from the command line: only an explicit change
        // in the file is a change.
        if new.workers != old.workers {
            if workers_pinned_by_file(&self.config_path) {
                let msg = format!(
                    "reload refused: `workers` changed from {} to {}; restart to change it",
                    old.workers, new.workers
                );
                warn!("{msg}");
                return Err(msg);
            }
            new.workers = old.workers;
        }
        if new.listen != old.listen {
            let msg = format!(
                "reload refused: `listen` changed from {} to {}; restart to change it",
                old.listen, new.listen
            );
            warn!("{msg}");
            return Err(msg);
        }
        new.listen = old.listen;
        if new.admin_listen != old.admin_listen {
            let msg = "reload refused: `admin_listen` changed; restart to change it".to_string();
            warn!("{msg}");
            return Err(msg);
        }
        new.admin_listen = old.admin_listen;
        if new.cluster != old.cluster {
            let msg =
                "reload refused: the [cluster] section changed; restart to change it".to_string();
            warn!("{msg}");
            return Err(msg);
        }
        let new = Arc::new(new);

        // New static backend set: keep identity (and health) of unchanged ones.
        {
            let mut book = self.book.borrow_mut();
            let current = book.views();
            for info in current.iter().filter(|i| i.source == Source::Config) {
                if !new.servers.iter().any(|s| s.addr == info.backend.addr) {
                    book.remove(info.backend.id);
                }
            }
            for spec in &new.servers {
                let existing = book
                    .views()
                    .into_iter()
                    .find(|i| i.backend.addr == spec.addr);
                match existing {
                    Some(i) if i.backend.weight == spec.weight && i.backend.name == spec.name => {}
                    Some(i) => {
                        let b = Arc::new(Backend::new(
                            i.backend.id,
                            spec.name.clone(),
                            spec.addr,
                            spec.weight,
                        ));
                        book.replace_backend(i.backend.id, b);
                    }
                    None => {
                        let id = self.next_backend_id();
                        let b =
                            Arc::new(Backend::new(id, spec.name.clone(), spec.addr, spec.weight));
                        book.add(
                            b,
                            CheckSpec::Http(new.health_check_path.clone()),
                            Source::Config,
                        );
                    }
                }
            }
            book.set_thresholds(&new);
            book.set_config_check_path(&new.health_check_path);
        }
        self.set_config(new.clone());
        self.links.broadcast(|| ToWorker::Config(new.clone()));
        // Restart the probes with the new settings and set.
        self.restart_probes();
        // Cluster registrations a removed static server kept out.
        self.reapply_shadowed();
        self.publish();
        // Breaker durations may have changed.
        self.timers.notify();
        let msg = format!("configuration reloaded: {}", new.summary());
        info!("{msg}");
        Ok(msg)
    }
}

/// True when the file sets `workers` explicitly (a default follows the CPU
/// count and is not a change the operator made).
fn workers_pinned_by_file(path: &std::path::Path) -> bool {
    std::fs::read_to_string(path)
        .map(|t| t.lines().any(|l| l.trim_start().starts_with("workers")))
        .unwrap_or(false)
}
