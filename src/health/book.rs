//! The health state machine: each backend's consecutive check results,
//! passive failures within `fail_window`, and circuit breaker, and the
//! snapshots built from them.
//!
//! Pure state, no I/O and no executor: the control executor feeds it check
//! results and worker reports and publishes the snapshot it builds when a
//! backend flips (pingora's `observe_health` split). It knows nothing of the
//! admin API, etcd or configuration files beyond the thresholds it is given.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use super::breaker::{Breaker, BreakerState};
use super::{BackendView, Outcome, Report, Snapshot};
use crate::backend::{Backend, BackendId};
use crate::config::{BreakerSettings, Config, HealthSettings};

/// How a backend is probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckSpec {
    /// `GET path`, healthy on 2xx.
    Http(String),
    /// A TCP connect, healthy when it succeeds.
    Tcp,
}

/// Where a backend came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The configuration file (replaced on reload).
    Config,
    /// The admin API (kept across reloads).
    Api,
    /// The cluster registry in etcd (kept across reloads).
    Etcd,
}

#[derive(Debug)]
struct Entry {
    backend: Arc<Backend>,
    check: CheckSpec,
    source: Source,
    checks_ok: u64,
    checks_failed: u64,
    up: bool,
    ok_streak: u32,
    fail_streak: u32,
    passive: VecDeque<Instant>,
    breaker: Breaker,
    key: Option<String>,
    ttl: Option<u64>,
}

/// The thresholds of one pool's backends.
#[derive(Debug)]
struct PoolRules {
    name: String,
    health: HealthSettings,
    breaker: BreakerSettings,
}

/// Health state of every backend of every pool, owned by the control
/// executor. Each backend is judged by its own pool's thresholds.
#[derive(Debug)]
pub struct HealthBook {
    entries: Vec<Entry>,
    version: u64,
    /// One per configured pool, the default pool first.
    rules: Vec<PoolRules>,
}

/// The thresholds of each pool in `config`.
fn rules_of(config: &Config) -> Vec<PoolRules> {
    config
        .pools
        .iter()
        .map(|p| PoolRules {
            name: p.name.clone(),
            health: p.health.clone(),
            breaker: p.breaker.clone(),
        })
        .collect()
}

/// The rules of `pool`, the default pool's for a pool no longer configured
/// (its backends are about to be removed).
fn rules_for<'a>(rules: &'a [PoolRules], pool: &str) -> &'a PoolRules {
    rules.iter().find(|r| r.name == pool).unwrap_or(&rules[0])
}

fn new_breaker(b: &BreakerSettings) -> Breaker {
    Breaker::new(b.threshold, b.open_duration, b.half_open_requests)
}

impl HealthBook {
    /// All backends start up (as in nginx): traffic flows at once, and the
    /// first round of checks, run immediately, takes out the dead ones.
    pub fn new(config: &Config, backends: Vec<Arc<Backend>>) -> Self {
        let rules = rules_of(config);
        HealthBook {
            entries: backends
                .into_iter()
                .map(|backend| {
                    let r = rules_for(&rules, &backend.pool);
                    Entry {
                        check: CheckSpec::Http(r.health.path.clone()),
                        breaker: new_breaker(&r.breaker),
                        backend,
                        source: Source::Config,
                        checks_ok: 0,
                        checks_failed: 0,
                        up: true,
                        ok_streak: 0,
                        fail_streak: 0,
                        passive: VecDeque::new(),
                        key: None,
                        ttl: None,
                    }
                })
                .collect(),
            version: 0,
            rules,
        }
    }

    /// Records an active check result; returns true when the backend flipped.
    pub fn observe_check(&mut self, i: usize, ok: bool) -> bool {
        let e = &mut self.entries[i];
        let h = &rules_for(&self.rules, &e.backend.pool).health;
        if ok {
            e.checks_ok += 1;
        } else {
            e.checks_failed += 1;
        }
        if ok {
            e.ok_streak = e.ok_streak.saturating_add(1);
            e.fail_streak = 0;
            if !e.up && e.ok_streak >= h.healthy_threshold {
                e.up = true;
                e.passive.clear();
                return true;
            }
        } else {
            e.fail_streak = e.fail_streak.saturating_add(1);
            e.ok_streak = 0;
            if e.up && e.fail_streak >= h.unhealthy_threshold {
                e.up = false;
                return true;
            }
        }
        false
    }

    /// Records a failed request seen by a worker; returns true when the
    /// backend flipped to down (`max_fails` within `fail_window`).
    pub fn observe_failure(&mut self, i: usize, now: Instant) -> bool {
        let e = &mut self.entries[i];
        let h = &rules_for(&self.rules, &e.backend.pool).health;
        let (window, max) = (h.fail_window, h.max_fails as usize);
        if !e.up {
            return false;
        }
        e.passive.push_back(now);
        while e
            .passive
            .front()
            .is_some_and(|&t| now.duration_since(t) > window)
        {
            e.passive.pop_front();
        }
        if e.passive.len() >= max {
            e.up = false;
            e.ok_streak = 0;
            e.passive.clear();
            return true;
        }
        false
    }

    /// Builds the next snapshot.
    pub fn snapshot(&mut self) -> Arc<Snapshot> {
        self.version += 1;
        Arc::new(Snapshot {
            version: self.version,
            backends: self
                .entries
                .iter()
                .map(|e| BackendView {
                    backend: e.backend.clone(),
                    up: e.up,
                    breaker: e.breaker.state(),
                })
                .collect(),
        })
    }

    /// Applies a worker's report; returns true when the snapshot changed.
    pub fn observe_report(&mut self, i: usize, outcome: Outcome, now: Instant) -> bool {
        let name = self.entries[i].backend.name.clone();
        match outcome {
            Outcome::Failure(kind) => {
                let before = self.entries[i].breaker.state();
                let breaker = self.entries[i].breaker.on_failure(now);
                if breaker {
                    warn!(backend = %name, "circuit breaker {:?} -> Open after {kind:?}", before);
                }
                let passive = self.observe_failure(i, now);
                if passive {
                    let h = &rules_for(&self.rules, &self.entries[i].backend.pool).health;
                    warn!(
                        backend = %name,
                        "backend is down: {} failed requests within {:?} (last: {kind:?})",
                        h.max_fails,
                        h.fail_window
                    );
                }
                breaker || passive
            }
            Outcome::Success => {
                let changed = self.entries[i].breaker.on_success();
                if changed {
                    info!(backend = %name, "circuit breaker HalfOpen -> Closed");
                }
                changed
            }
        }
    }

    /// Moves open breakers whose time is up to half-open; true on a change.
    pub fn tick(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for e in &mut self.entries {
            if e.breaker.tick(now) {
                info!(backend = %e.backend.name, "circuit breaker Open -> HalfOpen: letting trial requests through");
                changed = true;
            }
        }
        changed
    }

    /// What backend `id` is and how it is checked now, if it is in the book.
    pub fn probe_target(&self, id: BackendId) -> Option<(Arc<Backend>, CheckSpec)> {
        self.entries
            .iter()
            .find(|e| e.backend.id == id)
            .map(|e| (e.backend.clone(), e.check.clone()))
    }

    /// True when every backend has had at least one active check.
    pub fn all_checked(&self) -> bool {
        self.entries
            .iter()
            .all(|e| e.checks_ok + e.checks_failed > 0)
    }

    /// The earliest moment an open breaker half-opens.
    pub fn next_breaker_deadline(&self) -> Option<Instant> {
        self.entries
            .iter()
            .filter_map(|e| e.breaker.reopens_at())
            .min()
    }

    /// The breaker state of backend `i`.
    pub fn breaker_state(&self, i: usize) -> BreakerState {
        self.entries[i].breaker.state()
    }

    /// Index of the backend a report is about.
    pub fn index_of(&self, report: &Report) -> Option<usize> {
        self.position(report.backend)
    }

    /// Index of backend `id`.
    pub fn position(&self, id: BackendId) -> Option<usize> {
        self.entries.iter().position(|e| e.backend.id == id)
    }

    /// Adds a backend (API-added ones start down and enter rotation once a
    /// check passes; config ones start up, as at startup).
    pub fn add(&mut self, backend: Arc<Backend>, check: CheckSpec, source: Source) {
        let breaker = new_breaker(&rules_for(&self.rules, &backend.pool).breaker);
        self.entries.push(Entry {
            backend,
            check,
            source,
            checks_ok: 0,
            checks_failed: 0,
            up: source == Source::Config,
            ok_streak: 0,
            fail_streak: 0,
            passive: VecDeque::new(),
            breaker,
            key: None,
            ttl: None,
        });
    }

    /// Records where a registered backend lives in etcd and its TTL.
    pub fn set_registration(&mut self, id: BackendId, key: Option<String>, ttl: Option<u64>) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.backend.id == id) {
            e.key = key;
            e.ttl = ttl;
        }
    }

    /// Changes how backend `id` is checked.
    pub fn set_check(&mut self, id: BackendId, check: CheckSpec) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.backend.id == id) {
            e.check = check;
        }
    }

    /// Removes backend `id`; returns whether it existed.
    pub fn remove(&mut self, id: BackendId) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.backend.id != id);
        before != self.entries.len()
    }

    /// Swaps the `Backend` of `id` (new weight or name), keeping its health.
    pub fn replace_backend(&mut self, id: BackendId, backend: Arc<Backend>) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.backend.id == id) {
            e.backend = backend;
        }
    }

    /// Applies reloaded pools: their thresholds, and each configuration
    /// backend's check path (breakers made from now on use the new breaker
    /// settings).
    pub fn set_pools(&mut self, c: &Config) {
        self.rules = rules_of(c);
        for e in self
            .entries
            .iter_mut()
            .filter(|e| e.source == Source::Config)
        {
            let path = &rules_for(&self.rules, &e.backend.pool).health.path;
            e.check = CheckSpec::Http(path.clone());
        }
    }

    /// The health check path of pool `pool` (the default pool's when it is
    /// not configured).
    pub fn check_path(&self, pool: &str) -> &str {
        &rules_for(&self.rules, pool).health.path
    }

    /// A view of every backend for the admin API and metrics.
    pub fn views(&self) -> Vec<BackendInfo> {
        self.entries
            .iter()
            .map(|e| BackendInfo {
                backend: e.backend.clone(),
                check: e.check.clone(),
                source: e.source,
                up: e.up,
                breaker: e.breaker.state(),
                checks_ok: e.checks_ok,
                checks_failed: e.checks_failed,
                key: e.key.clone(),
                ttl: e.ttl,
            })
            .collect()
    }
}

/// One backend as the admin API and metrics see it.
#[derive(Debug, Clone)]
pub struct BackendInfo {
    /// The backend.
    pub backend: Arc<Backend>,
    /// How it is probed.
    pub check: CheckSpec,
    /// Where it came from.
    pub source: Source,
    /// Passes health checks.
    pub up: bool,
    /// Breaker state.
    pub breaker: BreakerState,
    /// Checks passed.
    pub checks_ok: u64,
    /// Checks failed.
    pub checks_failed: u64,
    /// Its etcd key, for registrations from the cluster registry.
    pub key: Option<String>,
    /// Seconds it lives without a heartbeat, for TTL registrations.
    pub ttl: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendId;
    use std::time::Duration;

    fn book(unhealthy: u32, healthy: u32) -> HealthBook {
        let mut c = crate::config::parse(
            std::path::Path::new("t"),
            r#"servers = ["127.0.0.1:1", "127.0.0.1:2"]
max_fails = 3
fail_window = 10"#,
        )
        .unwrap();
        c.pools[0].health.unhealthy_threshold = unhealthy;
        c.pools[0].health.healthy_threshold = healthy;
        let backends = c.pools[0]
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| Arc::new(Backend::new(BackendId(i as u32), s.name.clone(), s.addr, 1)))
            .collect();
        HealthBook::new(&c, backends)
    }

    #[test]
    fn thresholds_flip_once() {
        let mut b = book(2, 2);
        assert!(!b.observe_check(0, false));
        assert!(b.observe_check(0, false));
        assert!(!b.observe_check(0, false));
        assert!(!b.observe_check(0, true));
        assert!(b.observe_check(0, true));
        assert!(!b.observe_check(0, true));
        let s = b.snapshot();
        assert!(s.backends[0].up && s.version == 1);
    }

    #[test]
    fn passive_failures_within_the_window() {
        let mut b = book(1, 1);
        let t0 = Instant::now();
        assert!(!b.observe_failure(1, t0));
        assert!(!b.observe_failure(1, t0 + Duration::from_secs(11)));
        assert!(!b.observe_failure(1, t0 + Duration::from_secs(12)));
        assert!(b.observe_failure(1, t0 + Duration::from_secs(13)));
        assert!(!b.snapshot().backends[1].up);
        assert!(b.observe_check(1, true));
    }
}
