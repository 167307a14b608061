//! Uniform random choice, and the small PRNG the randomised strategies share.

use std::net::IpAddr;

use super::{Balancer, up_indices};
use crate::health::Snapshot;

/// xorshift64*: fast, core-local, good enough for load spreading (not crypto).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (0 is replaced, xorshift needs a non-zero state).
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1) ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (n > 0), by multiply-shift (no modulo bias worth noting).
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }
}

/// A uniformly random up backend.
#[derive(Debug)]
pub struct Random {
    up: Vec<usize>,
    rng: Rng,
}

impl Random {
    /// A random balancer with its own seed.
    pub fn new(seed: u64) -> Self {
        Random {
            up: Vec::new(),
            rng: Rng::new(seed),
        }
    }
}

impl Balancer for Random {
    fn update(&mut self, snapshot: &Snapshot) {
        up_indices(snapshot, &mut self.up);
    }

    fn pick(&mut self, _: &Snapshot, _: IpAddr, exclude: Option<usize>) -> Option<usize> {
        let n = self.up.len();
        if n == 0 {
            return None;
        }
        let mut k = self.rng.below(n);
        if Some(self.up[k]) == exclude && n > 1 {
            k = (k + 1 + self.rng.below(n - 1)) % n;
        }
        Some(self.up[k])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::test_util::snapshot;

    #[test]
    fn uses_every_backend_and_honours_exclude() {
        let s = snapshot(&[1, 1, 1], &[true, true, true]);
        let mut b = Random::new(7);
        b.update(&s);
        let ip = IpAddr::from([127, 0, 0, 1]);
        let mut seen = [0; 3];
        for _ in 0..300 {
            seen[b.pick(&s, ip, None).unwrap()] += 1;
        }
        assert!(seen.iter().all(|&c| c > 50), "{seen:?}");
        for _ in 0..100 {
            assert_ne!(b.pick(&s, ip, Some(1)), Some(1));
        }
    }
}
