//! Retry policy pieces: the per-worker retry budget and the backoff delay.
//!
//! *When* a failure may be retried is decided in `proxy.rs` (only when the
//! request never reached a backend, or when it is idempotent, replayable and
//! no response byte arrived). This module decides *whether the fleet can
//! afford it* ([`RetryBudget`]) and *how long to wait* ([`backoff`]).

use std::time::{Duration, Instant};

use crate::balancer::Rng;

/// One retry, in the budget's fixed-point unit (thousandths).
const ONE: u64 = 1000;
/// Retries a worker may bank at most.
const MAX_TOKENS: u64 = 100 * ONE;
/// Retries a worker may make per second even without traffic to earn them,
/// so a quiet balancer can still retry a failure.
const MIN_PER_SECOND: u64 = 5;

/// A token bucket: every request earns `ratio` of a retry, every retry costs
/// one, plus a small time-based floor. With the default ratio 0.2 a failing
/// fleet sees at most ~20% extra requests from retries.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    tokens: u64,
    ratio: u64,
    last: Instant,
}

impl RetryBudget {
    /// A budget earning `ratio` retries per request; starts with a few tokens.
    pub fn new(ratio: f64) -> Self {
        RetryBudget {
            tokens: MIN_PER_SECOND * ONE,
            ratio: (ratio * ONE as f64).round() as u64,
            last: Instant::now(),
        }
    }

    /// Counts one request.
    #[inline]
    pub fn on_request(&mut self) {
        self.tokens = (self.tokens + self.ratio).min(MAX_TOKENS);
    }

    /// Takes a retry from the budget if one is available.
    pub fn try_spend(&mut self, now: Instant) -> bool {
        let elapsed_ms = now.saturating_duration_since(self.last).as_millis() as u64;
        if elapsed_ms > 0 {
            self.last = now;
        }
        self.tokens = (self.tokens + elapsed_ms * MIN_PER_SECOND).min(MAX_TOKENS);
        if self.tokens >= ONE {
            self.tokens -= ONE;
            true
        } else {
            false
        }
    }
}

/// Delay before retry number `n` (0-based): `base * 2^n` capped at `max`,
/// then "equal jitter" (uniform in the upper half) so retries from many
/// clients do not synchronise.
pub fn backoff(n: u32, base: Duration, max: Duration, rng: &mut Rng) -> Duration {
    if base.is_zero() {
        return Duration::ZERO;
    }
    let exp = base.saturating_mul(1u32 << n.min(16)).min(max);
    let half = exp / 2;
    let nanos = half.as_nanos() as u64;
    let jitter = if nanos == 0 {
        0
    } else {
        rng.next_u64() % (nanos + 1)
    };
    half + Duration::from_nanos(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_limits_retries_to_a_share_of_requests() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(0.2);
        // The initial allowance.
        let mut granted = 0;
        while b.try_spend(t0) {
            granted += 1;
        }
        assert_eq!(granted, 5);
        for _ in 0..100 {
            b.on_request();
        }
        let mut granted = 0;
        while b.try_spend(t0) {
            granted += 1;
        }
        assert_eq!(granted, 20);
        assert!(b.try_spend(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let mut rng = Rng::new(1);
        let base = Duration::from_millis(10);
        let max = Duration::from_millis(100);
        for n in 0..10 {
            let d = backoff(n, base, max, &mut rng);
            let exp = (base * (1 << n)).min(max);
            assert!(d >= exp / 2 && d <= exp, "{n}: {d:?}");
        }
        assert_eq!(backoff(3, Duration::ZERO, max, &mut rng), Duration::ZERO);
    }
}
