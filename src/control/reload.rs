//! Configuration reloads (SIGHUP, `POST /reload`): re-read the file,
//! refuse what cannot change live, apply the rest in place; and SIGUSR1's
//! reopen of the access log.
//!
//! A reload never lies: every key is either applied or the reload is
//! refused naming it (logged, answered to `POST /reload`, sent to systemd
//! as `STATUS=`, counted in `lb_config_reloads_total`). Refused, because
//! they are fixed when sockets and executors are made: `listen`, `workers`
//! (when the file sets it), `admin_listen`, `listen_backlog`, `pin_workers`,
//! `ring_depth`, `spin_before_park` and the `[cluster]` table. Everything
//! else applies, the access log included: a new `access_log_path` is opened
//! before anything changes (a file that cannot be opened refuses the
//! reload), and the workers format lines by the configuration they hold.
//!
//! Unchanged backends keep their identity, health and in-flight counts;
//! API and cluster registrations survive. A reload never waits on a worker:
//! the new configuration and snapshot are queued for each of them.

use std::rc::Rc;
use std::sync::Arc;

use tracing::{info, warn};

use super::plane::{Plane, unix_now};
use crate::access_log::{Sink, Target};
use crate::backend::Backend;
use crate::config::{self, Config};
use crate::health::{CheckSpec, Source};
use crate::messages::ToWorker;

/// Starts every refusal, so logs and answers read the same.
const REFUSED: &str = "reload refused, keeping the running configuration";

impl Plane {
    /// Re-reads the configuration file and applies it, or refuses it and
    /// keeps the running one. Either way the outcome is logged, counted for
    /// `/metrics` and sent to systemd as `STATUS=`.
    pub fn reload(self: &Rc<Self>) -> Result<String, String> {
        let outcome = self.try_reload();
        let mut m = self.reloads.get();
        match &outcome {
            Ok(msg) => {
                m.success += 1;
                m.last_success = unix_now();
                info!("{msg}");
            }
            Err(msg) => {
                m.failure += 1;
                warn!("{msg}");
            }
        }
        self.reloads.set(m);
        let (Ok(msg) | Err(msg)) = &outcome;
        crate::sdnotify::status(msg);
        outcome
    }

    /// Reopens the access log file by its path (SIGUSR1, after logrotate
    /// moved it). Nothing to do while the log is off or on stdout.
    pub fn reopen_access_log(&self) {
        match &*self.access_target.borrow() {
            Some(Target::File(_)) => self.access.reopen(),
            _ => info!("no access log file to reopen"),
        }
    }

    fn try_reload(self: &Rc<Self>) -> Result<String, String> {
        let old = self.config();
        let mut new = config::load(&self.config_path).map_err(|e| format!("{REFUSED}: {e}"))?;
        // `workers` may come from the command line: only an explicit change
        // in the file is a change.
        if new.workers != old.workers && !workers_pinned_by_file(&self.config_path) {
            new.workers = old.workers;
        }
        let fixed = restart_only_changes(&old, &new);
        if !fixed.is_empty() {
            let them = if fixed.len() == 1 { "it" } else { "them" };
            return Err(format!(
                "{REFUSED}: {}; restart to change {them}",
                fixed.join(", ")
            ));
        }
        // Open a new access log file before anything changes, so a path
        // that cannot be opened refuses the whole reload.
        let sink = self.access_sink_for(&new)?;
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
        if let Some((target, sink)) = sink {
            self.access.switch(sink);
            *self.access_target.borrow_mut() = Some(target);
        }
        self.set_config(new.clone());
        self.links.broadcast(|| ToWorker::Config(new.clone()));
        // New backends get a probe loop; running loops read the new settings
        // and checks on their next pass.
        self.restart_probes();
        // Cluster registrations a removed static server kept out.
        self.reapply_shadowed();
        self.publish();
        // Breaker durations may have changed.
        self.timers.notify();
        Ok(format!("configuration reloaded: {}", new.summary()))
    }

    /// The sink the access log must switch to under `new`, opened: `None`
    /// when the log is off or already writes where `new` says.
    fn access_sink_for(&self, new: &Config) -> Result<Option<(Target, Sink)>, String> {
        if !new.access_log.is_on()
            || self.access_target.borrow().as_ref() == Some(&new.access_log_path)
        {
            return Ok(None);
        }
        let target = new.access_log_path.clone();
        match target.open() {
            Ok(sink) => Ok(Some((target, sink))),
            Err(e) => Err(format!(
                "{REFUSED}: `access_log_path`: cannot open `{target}`: {e}"
            )),
        }
    }
}

/// The keys that differ between `old` and `new` but only take effect at
/// startup (sockets bound, executors built), each with its change.
///
/// `new` is destructured without `..` on purpose: a key added to
/// [`Config`] does not compile until it is sorted here into the keys a
/// reload applies or the ones it refuses.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let Config {
        // Refused: fixed when sockets and executors are made.
        listen,
        workers,
        admin_listen,
        listen_backlog,
        pin_workers,
        ring_depth,
        ring_setup_flags,
        spin_before_park,
        cluster,
        // Applied: the book, the probes and the workers take the new
        // configuration (worker.rs `apply_config`, reloads above).
        servers: _,
        strategy: _,
        max_fails: _,
        fail_window: _,
        connection_timeout: _,
        write_timeout: _,
        read_timeout: _,
        health_check_path: _,
        health_check_interval: _,
        health_check_timeout: _,
        healthy_threshold: _,
        unhealthy_threshold: _,
        pool_size: _,
        max_header_bytes: _,
        client_header_timeout: _,
        keepalive_timeout: _,
        client_body_timeout: _,
        send_timeout: _,
        shutdown_timeout: _,
        retries: _,
        breaker_threshold: _,
        breaker_open_duration: _,
        breaker_half_open_requests: _,
        retry_backoff: _,
        retry_backoff_max: _,
        retry_budget: _,
        retry_non_idempotent: _,
        max_connections: _,
        queue_size: _,
        queue_timeout: _,
        max_client_connections: _,
        admin_token: _,
        access_log: _,
        access_log_path: _,
        access_log_format: _,
        trusted_proxies: _,
        forwarded: _,
    } = new;
    fn changed<T: PartialEq + std::fmt::Debug>(out: &mut Vec<String>, key: &str, old: &T, new: &T) {
        if old != new {
            out.push(format!("`{key}` changed from {old:?} to {new:?}"));
        }
    }
    let mut out = Vec::new();
    changed(&mut out, "listen", &old.listen, listen);
    changed(&mut out, "workers", &old.workers, workers);
    changed(&mut out, "admin_listen", &old.admin_listen, admin_listen);
    changed(
        &mut out,
        "listen_backlog",
        &old.listen_backlog,
        listen_backlog,
    );
    changed(&mut out, "pin_workers", &old.pin_workers, pin_workers);
    changed(&mut out, "ring_depth", &old.ring_depth, ring_depth);
    changed(
        &mut out,
        "ring_setup_flags",
        &crate::uring::describe(old.ring_setup_flags),
        &crate::uring::describe(*ring_setup_flags),
    );
    changed(
        &mut out,
        "spin_before_park",
        &old.spin_before_park,
        spin_before_park,
    );
    if old.cluster != *cluster {
        out.push("the [cluster] section changed".into());
    }
    out
}

/// True when the file sets `workers` explicitly (a default follows the CPU
/// count and is not a change the operator made).
fn workers_pinned_by_file(path: &std::path::Path) -> bool {
    std::fs::read_to_string(path)
        .map(|t| t.lines().any(|l| l.trim_start().starts_with("workers")))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(extra: &str) -> Config {
        let servers = if extra.contains("servers") {
            ""
        } else {
            "servers = ['127.0.0.1:1']\n"
        };
        config::parse(
            Path::new("t.toml"),
            &format!("{servers}workers = 2\n{extra}"),
        )
        .expect("valid")
    }

    #[test]
    fn names_every_restart_only_key_and_no_live_one() {
        let old = parse("");
        let live = parse(
            "servers = ['127.0.0.1:2']\nstrategy = 'Random'\naccess_log = 'json'\nmax_connections = 5\npool_size = 3",
        );
        assert!(restart_only_changes(&old, &live).is_empty());
        let fixed = parse(
            "listen_backlog = 16\npin_workers = false\nring_depth = 256\nring_setup_flags = []\nspin_before_park = 5\nlisten = '127.0.0.1:9'",
        );
        let changes = restart_only_changes(&old, &fixed).join("; ");
        for key in [
            "`listen_backlog`",
            "`pin_workers`",
            "`ring_depth`",
            "`ring_setup_flags`",
            "`spin_before_park`",
            "`listen`",
        ] {
            assert!(changes.contains(key), "{key}: {changes}");
        }
        assert!(!changes.contains("`workers`"), "{changes}");
    }
}
