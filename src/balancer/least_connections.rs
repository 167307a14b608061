//! Least connections: the up backend with the fewest requests in flight.
//!
//! The in-flight count is global (an atomic per backend, shared by the
//! workers), so the choice is the same one a single-process balancer would
//! make; that costs one relaxed atomic add and sub per request. Ties rotate,
//! so equally idle backends share the traffic instead of the first one
//! taking all of it. A pick scans the up backends: O(n). Backends the
//! select passes over are left out of the scan.

use std::net::IpAddr;

use super::{Balancer, Skip, up_indices};
use crate::health::Snapshot;

/// Fewest in-flight requests wins.
#[derive(Debug, Default)]
pub struct LeastConnections {
    up: Vec<usize>,
    rotate: usize,
}

impl Balancer for LeastConnections {
    fn update(&mut self, snapshot: &Snapshot) {
        up_indices(snapshot, &mut self.up);
    }

    fn choose(&mut self, s: &Snapshot, _: IpAddr, skip: &Skip) -> Option<usize> {
        if skip.is_empty() {
            self.least(s, |_| false)
        } else {
            self.least(s, |i| skip.contains(i))
        }
    }
}

impl LeastConnections {
    /// The least loaded up backend that is not `skipped`, scanning from the
    /// next rotation point so that ties rotate.
    #[inline]
    fn least(&mut self, s: &Snapshot, skipped: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.up.len();
        if n == 0 {
            return None;
        }
        let start = self.rotate % n;
        self.rotate = self.rotate.wrapping_add(1);
        let mut best: Option<(usize, usize)> = None;
        for k in 0..n {
            let i = self.up[(start + k) % n];
            if skipped(i) {
                continue;
            }
            let load = s.backends[i].backend.inflight();
            if best.is_none_or(|(_, l)| load < l) {
                best = Some((i, load));
            }
        }
        best.map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::test_util::{selector, snapshot};

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn picks_the_least_loaded() {
        let s = snapshot(&[1, 1, 1], &[true, true, true]);
        let mut b = selector(LeastConnections::default(), &s);
        let _g0 = s.backends[0].backend.start_request();
        let _g1 = s.backends[1].backend.start_request();
        for _ in 0..5 {
            assert_eq!(b.select(&s, IP, None, |_| true), Some(2));
        }
        drop(_g0);
        let picks: Vec<_> = (0..4)
            .map(|_| b.select(&s, IP, None, |_| true).unwrap())
            .collect();
        assert!(picks.contains(&0) && picks.contains(&2) && !picks.contains(&1));
    }

    #[test]
    fn excluded_and_refused_give_the_least_loaded_of_the_rest() {
        // Loads 2, 1, 0, 3: the idle one first, then by load.
        let s = snapshot(&[1, 1, 1, 1], &[true; 4]);
        let mut b = selector(LeastConnections::default(), &s);
        let _g: Vec<_> = [0, 0, 1, 3, 3, 3]
            .iter()
            .map(|&i| s.backends[i].backend.start_request())
            .collect();
        for _ in 0..8 {
            assert_eq!(b.select(&s, IP, None, |_| true), Some(2));
            assert_eq!(b.select(&s, IP, [2], |_| true), Some(1));
            assert_eq!(b.select(&s, IP, None, |i| i != 2), Some(1));
            assert_eq!(b.select(&s, IP, [1], |i| i != 2), Some(0));
            assert_eq!(b.select(&s, IP, [0, 1, 2], |_| true), Some(3));
            assert_eq!(b.select(&s, IP, None, |i| i == 3), Some(3));
            assert_eq!(b.select(&s, IP, [3], |_| false), None);
        }
        // Directly: the strategy never offers a skipped backend.
        let mut lc = LeastConnections::default();
        lc.update(&s);
        let skip = crate::balancer::test_util::skip(4, &[0, 1, 2, 3]);
        assert_eq!(lc.choose(&s, IP, &skip), None);
    }
}
