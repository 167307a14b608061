//! The health executor: owns every backend's health state, runs the active
//! checks, takes passive failure reports, and publishes snapshots.
//!
//! It runs on its own executor thread (not a request worker). Health is
//! decided from consecutive results (a backend goes down after
//! `unhealthy_threshold` failed checks, or after `max_fails` failed requests
//! within `fail_window`; it comes back after `healthy_threshold` passed
//! checks) and a snapshot is broadcast only when a backend flips. The
//! per-backend probe loops decide *when* to check; [`probe`] decides *what*
//! a check is.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::shared_channel::{ConnectedSender, SharedReceiver, SharedSender};
use glommio::net::TcpStream;
use tracing::{info, warn};

use super::breaker::{Breaker, BreakerState};
use super::{BackendView, Control, FailureKind, Outcome, Report, Snapshot};
use crate::backend::Backend;
use crate::channel::repoll;
use crate::config::Config;

/// How often the executor looks at the process-wide shutdown flag and at
/// open circuit breakers whose open duration has passed.
const SHUTDOWN_POLL: Duration = Duration::from_millis(50);

#[derive(Debug)]
struct Entry {
    backend: Arc<Backend>,
    up: bool,
    ok_streak: u32,
    fail_streak: u32,
    passive: VecDeque<Instant>,
    breaker: Breaker,
}

/// Health state of every backend, owned by the health executor.
#[derive(Debug)]
pub struct HealthBook {
    entries: Vec<Entry>,
    version: u64,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    max_fails: u32,
    fail_window: Duration,
}

impl HealthBook {
    /// All backends start up (as in nginx): traffic flows at once, and the
    /// first round of checks, run immediately, takes out the dead ones.
    pub fn new(config: &Config, backends: Vec<Arc<Backend>>) -> Self {
        HealthBook {
            entries: backends
                .into_iter()
                .map(|backend| Entry {
                    backend,
                    up: true,
                    ok_streak: 0,
                    fail_streak: 0,
                    passive: VecDeque::new(),
                    breaker: Breaker::new(
                        config.breaker_threshold,
                        config.breaker_open_duration,
                        config.breaker_half_open_requests,
                    ),
                })
                .collect(),
            version: 0,
            healthy_threshold: config.healthy_threshold,
            unhealthy_threshold: config.unhealthy_threshold,
            max_fails: config.max_fails,
            fail_window: config.fail_window,
        }
    }

    /// Records an active check result; returns true when the backend flipped.
    pub fn observe_check(&mut self, i: usize, ok: bool) -> bool {
        let e = &mut self.entries[i];
        if ok {
            e.ok_streak = e.ok_streak.saturating_add(1);
            e.fail_streak = 0;
            if !e.up && e.ok_streak >= self.healthy_threshold {
                e.up = true;
                e.passive.clear();
                return true;
            }
        } else {
            e.fail_streak = e.fail_streak.saturating_add(1);
            e.ok_streak = 0;
            if e.up && e.fail_streak >= self.unhealthy_threshold {
                e.up = false;
                return true;
            }
        }
        false
    }

    /// Records a failed request seen by a worker; returns true when the
    /// backend flipped to down (`max_fails` within `fail_window`).
    pub fn observe_failure(&mut self, i: usize, now: Instant) -> bool {
        let window = self.fail_window;
        let max = self.max_fails as usize;
        let e = &mut self.entries[i];
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
                    warn!(
                        backend = %name,
                        "backend is down: {} failed requests within {:?} (last: {kind:?})",
                        self.max_fails,
                        self.fail_window
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

    /// The breaker state of backend `i`.
    pub fn breaker_state(&self, i: usize) -> BreakerState {
        self.entries[i].breaker.state()
    }

    fn index_of(&self, report: &Report) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.backend.id == report.backend)
    }
}

/// What the health executor needs to start.
pub struct HealthParts {
    /// The configuration.
    pub config: Arc<Config>,
    /// Every backend.
    pub backends: Vec<Arc<Backend>>,
    /// One control channel per worker.
    pub to_workers: Vec<SharedSender<Control>>,
    /// One report channel per worker.
    pub from_workers: Vec<SharedReceiver<Report>>,
    /// Set by the signal thread.
    pub shutdown: Arc<AtomicBool>,
}

struct Health {
    book: RefCell<HealthBook>,
    senders: Vec<ConnectedSender<Control>>,
}

impl Health {
    async fn publish(&self) {
        let snap = self.book.borrow_mut().snapshot();
        for s in &self.senders {
            // A worker that has exited has dropped its receiver; ignore it.
            let _ = repoll(s.send(Control::Snapshot(snap.clone()))).await;
        }
    }
}

/// Runs the health executor until shutdown has been broadcast.
pub async fn run(parts: HealthParts) {
    let HealthParts {
        config,
        backends,
        to_workers,
        from_workers,
        shutdown,
    } = parts;
    let mut senders = Vec::with_capacity(to_workers.len());
    for s in to_workers {
        senders.push(repoll(s.connect()).await);
    }
    let mut receivers = Vec::with_capacity(from_workers.len());
    for r in from_workers {
        receivers.push(repoll(r.connect()).await);
    }
    let health = Rc::new(Health {
        book: RefCell::new(HealthBook::new(&config, backends.clone())),
        senders,
    });
    health.publish().await;

    let mut tasks = Vec::new();
    for (i, backend) in backends.iter().enumerate() {
        let health = health.clone();
        let config = config.clone();
        let backend = backend.clone();
        tasks.push(glommio::spawn_local(async move {
            let request = format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ekilibri-health\r\nConnection: close\r\n\r\n",
                config.health_check_path, backend.name
            );
            loop {
                let result = probe(
                    backend.addr,
                    request.as_bytes(),
                    config.connection_timeout,
                    config.health_check_timeout,
                )
                .await;
                let ok = result.is_ok();
                let flipped = health.book.borrow_mut().observe_check(i, ok);
                if flipped {
                    match result {
                        Ok(()) => info!(backend = %backend.name, "backend is up: health check passed"),
                        Err(e) => warn!(backend = %backend.name, "backend is down: health check failed: {e}"),
                    }
                    health.publish().await;
                }
                glommio::timer::sleep(config.health_check_interval).await;
            }
        }));
    }
    for rx in receivers {
        let health = health.clone();
        tasks.push(glommio::spawn_local(async move {
            while let Some(report) = repoll(rx.recv()).await {
                let changed = {
                    let mut book = health.book.borrow_mut();
                    match book.index_of(&report) {
                        Some(i) => book.observe_report(i, report.outcome, Instant::now()),
                        None => false,
                    }
                };
                if changed {
                    health.publish().await;
                }
            }
        }));
    }

    while !shutdown.load(Ordering::Relaxed) {
        glommio::timer::sleep(SHUTDOWN_POLL).await;
        let changed = health.book.borrow_mut().tick(Instant::now());
        if changed {
            health.publish().await;
        }
    }
    for s in &health.senders {
        let _ = repoll(s.send(Control::Shutdown)).await;
    }
    for t in tasks {
        t.cancel().await;
    }
}

/// One active check: connect, send `GET path`, expect a 2xx status line.
pub async fn probe(
    addr: SocketAddr,
    request: &[u8],
    connect_timeout: Duration,
    total_timeout: Duration,
) -> io::Result<()> {
    let check = async {
        let mut s = TcpStream::connect_timeout(addr, connect_timeout)
            .await
            .map_err(io::Error::from)?;
        s.set_read_timeout(Some(total_timeout))
            .map_err(io::Error::from)?;
        s.write_all(request).await?;
        let mut buf = [0u8; 256];
        let mut n = 0;
        while n < 12 || !buf[..n].contains(&b'\n') {
            if n == buf.len() {
                break;
            }
            let r = s.read(&mut buf[n..]).await?;
            if r == 0 {
                break;
            }
            n += r;
        }
        let line = &buf[..n];
        if line.len() >= 12 && line.starts_with(b"HTTP/1.") && line[9] == b'2' {
            Ok(())
        } else if line.len() >= 12 && line.starts_with(b"HTTP/1.") {
            Err(io::Error::other(format!(
                "status {}",
                String::from_utf8_lossy(&line[9..12])
            )))
        } else {
            Err(io::Error::other("not an HTTP response"))
        }
    };
    let deadline = async {
        glommio::timer::sleep(total_timeout).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "health check timed out",
        ))
    };
    futures_lite::future::or(check, deadline).await
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendId;

    fn book(unhealthy: u32, healthy: u32) -> HealthBook {
        let mut c = crate::config::parse(
            std::path::Path::new("t"),
            r#"servers = ["127.0.0.1:1", "127.0.0.1:2"]
max_fails = 3
fail_window = 10"#,
        )
        .unwrap();
        c.unhealthy_threshold = unhealthy;
        c.healthy_threshold = healthy;
        let backends = c
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
