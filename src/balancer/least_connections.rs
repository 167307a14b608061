//! Least connections: the up backend with the fewest requests in flight.
//!
//! The in-flight count is global (an atomic per backend, shared by the
//! workers), so the choice is the same one a single-process balancer would
//! make; that costs one relaxed atomic add and sub per request. Ties rotate,
//! so equally idle backends share the traffic instead of the first one
//! taking all of it. A pick scans the up backends: O(n).

use std::net::IpAddr;

use super::{Balancer, up_indices};
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

    fn pick(&mut self, s: &Snapshot, _: IpAddr, exclude: Option<usize>) -> Option<usize> {
        let n = self.up.len();
        if n == 0 {
            return None;
        }
        let start = self.rotate % n;
        self.rotate = self.rotate.wrapping_add(1);
        let mut best: Option<(usize, usize)> = None;
        for k in 0..n {
            let i = self.up[(start + k) % n];
            if Some(i) == exclude && n > 1 {
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
    use crate::balancer::test_util::snapshot;

    #[test]
    fn picks_the_least_loaded() {
        let s = snapshot(&[1, 1, 1], &[true, true, true]);
        let mut b = LeastConnections::default();
        b.update(&s);
        let ip = IpAddr::from([127, 0, 0, 1]);
        let _g0 = s.backends[0].backend.start_request();
        let _g1 = s.backends[1].backend.start_request();
        for _ in 0..5 {
            assert_eq!(b.pick(&s, ip, None), Some(2));
        }
        assert_ne!(b.pick(&s, ip, Some(2)), Some(2));
        drop(_g0);
        let picks: Vec<_> = (0..4).map(|_| b.pick(&s, ip, None).unwrap()).collect();
        assert!(picks.contains(&0) && picks.contains(&2) && !picks.contains(&1));
    }
}
