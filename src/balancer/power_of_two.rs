//! Power of two choices: sample two up backends, take the less loaded one.
//!
//! O(1) per pick with no scan, and close to least-connections in practice
//! (Mitzenmacher). Reads the same global in-flight counters. With backends
//! passed over, both samples come from the candidates (see
//! `random::sample`); a lone candidate wins unopposed.

use std::net::IpAddr;

use super::random::sample;
use super::{Balancer, Rng, Skip, up_indices};
use crate::health::Snapshot;

/// Two random candidates, fewer in-flight requests wins.
#[derive(Debug)]
pub struct PowerOfTwoChoices {
    up: Vec<usize>,
    rng: Rng,
}

impl PowerOfTwoChoices {
    /// A balancer with its own random seed.
    pub fn new(seed: u64) -> Self {
        PowerOfTwoChoices {
            up: Vec::new(),
            rng: Rng::new(seed),
        }
    }
}

impl Balancer for PowerOfTwoChoices {
    fn update(&mut self, snapshot: &Snapshot) {
        up_indices(snapshot, &mut self.up);
    }

    fn choose(&mut self, s: &Snapshot, _: IpAddr, skip: &Skip) -> Option<usize> {
        let n = self.up.len();
        if skip.is_empty() {
            return match n {
                0 => None,
                1 => Some(self.up[0]),
                _ => {
                    let a = self.rng.below(n);
                    let b = (a + 1 + self.rng.below(n - 1)) % n;
                    Some(lighter(s, self.up[a], self.up[b]))
                }
            };
        }
        let a = sample(&mut self.rng, &self.up, |i| skip.contains(i))?;
        match sample(&mut self.rng, &self.up, |i| i == a || skip.contains(i)) {
            Some(b) => Some(lighter(s, a, b)),
            None => Some(a),
        }
    }
}

/// The one of `a` and `b` with fewer requests in flight (`a` on a tie).
fn lighter(s: &Snapshot, a: usize, b: usize) -> usize {
    let (la, lb) = (
        s.backends[a].backend.inflight(),
        s.backends[b].backend.inflight(),
    );
    if lb < la { b } else { a }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::test_util::{selector, snapshot};

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn avoids_the_loaded_backend() {
        let s = snapshot(&[1, 1], &[true, true]);
        let mut b = selector(PowerOfTwoChoices::new(3), &s);
        let _g = s.backends[0].backend.start_request();
        for _ in 0..20 {
            assert_eq!(b.select(&s, IP, None, |_| true), Some(1));
        }
        let s3 = snapshot(&[1, 1, 1], &[true, true, true]);
        b.update(&s3);
        let mut seen = [0; 3];
        for _ in 0..300 {
            seen[b.select(&s3, IP, None, |_| true).unwrap()] += 1;
        }
        assert!(seen.iter().all(|&c| c > 30), "{seen:?}");
    }

    #[test]
    fn compares_two_candidates_and_never_a_passed_over_one() {
        // Loads 0, 1, 2, 3, 4: the idle backend 0 is excluded and 1
        // refused; of 2, 3, 4 two are sampled and the lighter wins, so 4
        // (the heaviest) never does and 2 wins two pairs in three.
        let s = snapshot(&[1; 5], &[true; 5]);
        let mut b = selector(PowerOfTwoChoices::new(9), &s);
        let _g: Vec<_> = (1..5)
            .flat_map(|i| (0..i).map(move |_| i))
            .map(|i| s.backends[i].backend.start_request())
            .collect();
        let mut seen = [0u32; 5];
        for _ in 0..600 {
            seen[b.select(&s, IP, [0], |i| i != 1).unwrap()] += 1;
        }
        assert_eq!((seen[0], seen[1], seen[4]), (0, 0, 0), "{seen:?}");
        assert!((340..460).contains(&seen[2]), "{seen:?}");
        // A lone candidate wins unopposed.
        assert_eq!(b.select(&s, IP, [0, 1, 2], |i| i != 3), Some(4));
        assert_eq!(b.select(&s, IP, [0, 1], |_| false), None);
    }
}
