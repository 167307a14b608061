//! Power of two choices: sample two up backends, take the less loaded one.
//!
//! O(1) per pick with no scan, and close to least-connections in practice
//! (Mitzenmacher). Reads the same global in-flight counters.

use std::net::IpAddr;

use super::{Balancer, Rng, up_indices};
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

    fn pick(&mut self, s: &Snapshot, _: IpAddr, exclude: Option<usize>) -> Option<usize> {
        let n = self.up.len();
        match n {
            0 => None,
            1 => Some(self.up[0]),
            _ => {
                let a = self.rng.below(n);
                let b = (a + 1 + self.rng.below(n - 1)) % n;
                let (ia, ib) = (self.up[a], self.up[b]);
                if Some(ia) == exclude {
                    return Some(ib);
                }
                if Some(ib) == exclude {
                    return Some(ia);
                }
                let (la, lb) = (
                    s.backends[ia].backend.inflight(),
                    s.backends[ib].backend.inflight(),
                );
                Some(if lb < la { ib } else { ia })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::test_util::snapshot;

    #[test]
    fn avoids_the_loaded_backend() {
        let s = snapshot(&[1, 1], &[true, true]);
        let mut b = PowerOfTwoChoices::new(3);
        b.update(&s);
        let ip = IpAddr::from([127, 0, 0, 1]);
        let _g = s.backends[0].backend.start_request();
        for _ in 0..20 {
            assert_eq!(b.pick(&s, ip, None), Some(1));
        }
        let s3 = snapshot(&[1, 1, 1], &[true, true, true]);
        b.update(&s3);
        let mut seen = [0; 3];
        for _ in 0..300 {
            seen[b.pick(&s3, ip, None).unwrap()] += 1;
        }
        assert!(seen.iter().all(|&c| c > 30), "{seen:?}");
    }
}
