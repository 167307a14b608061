//! Uniform random choice, and the small PRNG and candidate sampling the
//! randomised strategies share.

use std::net::IpAddr;

use super::{Balancer, Skip, up_indices};
use crate::health::Snapshot;

/// Draws tried before counting the candidates: with a few backends passed
/// over among many, the first draw almost always lands on a candidate.
const DRAWS: usize = 3;

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

/// A uniformly random element of `up` that is not `skipped`, `None` when
/// every one is. A few draws, then one counting pass: each path is uniform
/// over the candidates, so their mix is. O(1) unless most are skipped.
pub(super) fn sample(
    rng: &mut Rng,
    up: &[usize],
    skipped: impl Fn(usize) -> bool,
) -> Option<usize> {
    if up.is_empty() {
        return None;
    }
    for _ in 0..DRAWS {
        let i = up[rng.below(up.len())];
        if !skipped(i) {
            return Some(i);
        }
    }
    let left = up.iter().filter(|&&i| !skipped(i)).count();
    if left == 0 {
        return None;
    }
    let k = rng.below(left);
    up.iter().copied().filter(|&i| !skipped(i)).nth(k)
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

    fn choose(&mut self, _: &Snapshot, _: IpAddr, skip: &Skip) -> Option<usize> {
        let n = self.up.len();
        if n == 0 {
            return None;
        }
        if skip.is_empty() {
            return Some(self.up[self.rng.below(n)]);
        }
        sample(&mut self.rng, &self.up, |i| skip.contains(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::test_util::{selector, snapshot};

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn uses_every_backend_and_honours_exclude() {
        let s = snapshot(&[1, 1, 1], &[true, true, true]);
        let mut b = selector(Random::new(7), &s);
        let mut seen = [0; 3];
        for _ in 0..300 {
            seen[b.select(&s, IP, None, |_| true).unwrap()] += 1;
        }
        assert!(seen.iter().all(|&c| c > 50), "{seen:?}");
        for _ in 0..100 {
            assert_ne!(b.select(&s, IP, [1], |_| true), Some(1));
        }
    }

    #[test]
    fn uniform_over_what_is_neither_excluded_nor_refused() {
        // 10 backends, 7 passed over: the draws mostly miss, so the
        // counting pass does most picks; the 3 left share evenly.
        let s = snapshot(&[1; 10], &[true; 10]);
        let mut b = selector(Random::new(3), &s);
        let mut seen = [0u32; 10];
        for _ in 0..3000 {
            let i = b.select(&s, IP, [0, 1, 2, 3], |i| i < 7).unwrap();
            seen[i] += 1;
        }
        assert_eq!(seen[..4], [0; 4], "{seen:?}");
        assert_eq!(seen[7..], [0; 3], "{seen:?}");
        assert!(
            seen[4..7].iter().all(|&c| (900..1100).contains(&c)),
            "{seen:?}"
        );
        // Everything else refused: the excluded ones are the candidates.
        let i = b.select(&s, IP, [4, 5, 6], |i| (4..7).contains(&i));
        assert!(i.is_some_and(|i| (4..7).contains(&i)), "{i:?}");
    }

    #[test]
    fn sample_finds_the_last_candidate_or_none() {
        let mut rng = Rng::new(1);
        let up: Vec<usize> = (0..50).collect();
        for _ in 0..20 {
            assert_eq!(sample(&mut rng, &up, |i| i != 37), Some(37));
        }
        assert_eq!(sample(&mut rng, &up, |_| true), None);
        assert_eq!(sample(&mut rng, &[], |_| false), None);
    }
}
