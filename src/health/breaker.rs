//! The circuit breaker of one backend: a pure state machine driven by the
//! control executor.
//!
//! ```text
//!   Closed --(threshold consecutive failures)--> Open
//!   Open   --(open_duration elapsed)-----------> HalfOpen
//!   HalfOpen --(close_after successes)---------> Closed
//!   HalfOpen --(any failure)-------------------> Open
//! ```
//!
//! Failures are counted *consecutively*: workers report every failed request,
//! and report a success only for a backend they recently saw fail (or that is
//! half-open), which is exactly when a success can reset the count. That
//! keeps successes off the cross-core channel in the common case.

use std::time::{Duration, Instant};

/// The breaker's state, as published in snapshots (and later in metrics:
/// 0 closed, 1 open, 2 half-open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Traffic flows.
    Closed,
    /// Every request is refused until the open duration has passed.
    Open,
    /// A bounded number of trial requests may pass.
    HalfOpen,
}

impl BreakerState {
    /// Numeric form for metrics.
    pub fn as_number(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

/// One backend's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    state: BreakerState,
    failures: u32,
    successes: u32,
    opened_at: Option<Instant>,
    threshold: u32,
    open_for: Duration,
    close_after: u32,
}

impl Breaker {
    /// A closed breaker; `threshold == 0` disables it (it never opens).
    pub fn new(threshold: u32, open_for: Duration, close_after: u32) -> Self {
        Breaker {
            state: BreakerState::Closed,
            failures: 0,
            successes: 0,
            opened_at: None,
            threshold,
            open_for,
            close_after: close_after.max(1),
        }
    }

    /// Current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    fn open(&mut self, now: Instant) {
        self.state = BreakerState::Open;
        self.opened_at = Some(now);
        self.successes = 0;
    }

    /// A request failed; returns true when the state changed.
    pub fn on_failure(&mut self, now: Instant) -> bool {
        if self.threshold == 0 {
            return false;
        }
        match self.state {
            BreakerState::Closed => {
                self.failures += 1;
                if self.failures >= self.threshold {
                    self.open(now);
                    return true;
                }
                false
            }
            BreakerState::HalfOpen => {
                self.open(now);
                true
            }
            BreakerState::Open => false,
        }
    }

    /// A request succeeded; returns true when the state changed.
    pub fn on_success(&mut self) -> bool {
        match self.state {
            BreakerState::Closed => {
                self.failures = 0;
                false
            }
            BreakerState::HalfOpen => {
                self.successes += 1;
                if self.successes >= self.close_after {
                    self.state = BreakerState::Closed;
                    self.failures = 0;
                    self.opened_at = None;
                    return true;
                }
                false
            }
            BreakerState::Open => false,
        }
    }

    /// When an open breaker will half-open (None unless open), so the
    /// control executor can sleep until exactly then.
    pub fn reopens_at(&self) -> Option<Instant> {
        match (self.state, self.opened_at) {
            (BreakerState::Open, Some(t)) => Some(t + self.open_for),
            _ => None,
        }
    }

    /// Moves Open to HalfOpen once the open duration has passed; returns
    /// true when the state changed.
    pub fn tick(&mut self, now: Instant) -> bool {
        if self.state == BreakerState::Open
            && self
                .opened_at
                .is_some_and(|t| now.duration_since(t) >= self.open_for)
        {
            self.state = BreakerState::HalfOpen;
            self.successes = 0;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_cycle() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(2), 2);
        assert!(!b.on_failure(t0));
        assert!(!b.on_failure(t0));
        assert!(!b.on_success());
        assert!(!b.on_failure(t0));
        assert!(!b.on_failure(t0));
        assert!(b.on_failure(t0));
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.tick(t0 + Duration::from_secs(1)));
        assert!(b.tick(t0 + Duration::from_secs(2)));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.on_failure(t0 + Duration::from_secs(3)));
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.tick(t0 + Duration::from_secs(5)));
        assert!(!b.on_success());
        assert!(b.on_success());
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn disabled_never_opens() {
        let mut b = Breaker::new(0, Duration::from_secs(1), 1);
        for _ in 0..100 {
            assert!(!b.on_failure(Instant::now()));
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
