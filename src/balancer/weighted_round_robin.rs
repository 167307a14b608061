//! Smooth weighted round robin (the interleaving nginx uses), precomputed.
//!
//! On update the schedule for the up backends is computed once with the
//! smooth algorithm (add each weight to its current value, take the largest,
//! subtract the total), so a pick is an array read: O(1) whatever the number
//! of backends. The schedule has sum(weights) entries (weights are capped at
//! 1000 by the configuration).

use std::net::IpAddr;

use super::Balancer;
use crate::health::Snapshot;

/// Weighted rotation, evenly interleaved (1:2 gives a b b a b b, never a a b b).
#[derive(Debug, Default)]
pub struct WeightedRoundRobin {
    schedule: Vec<usize>,
    next: usize,
}

impl Balancer for WeightedRoundRobin {
    fn update(&mut self, snapshot: &Snapshot) {
        let up: Vec<(usize, i64)> = snapshot
            .backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.routable())
            .map(|(i, b)| (i, i64::from(b.backend.weight.max(1))))
            .collect();
        let total: i64 = up.iter().map(|(_, w)| w).sum();
        let mut current = vec![0i64; up.len()];
        self.schedule.clear();
        self.schedule.reserve(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for (k, (_, w)) in up.iter().enumerate() {
                current[k] += w;
                if current[k] > current[best] {
                    best = k;
                }
            }
            current[best] -= total;
            self.schedule.push(up[best].0);
        }
        self.next = 0;
    }

    fn pick(&mut self, _: &Snapshot, _: IpAddr, exclude: Option<usize>) -> Option<usize> {
        let n = self.schedule.len();
        if n == 0 {
            return None;
        }
        let first = self.schedule[self.next % n];
        self.next = self.next.wrapping_add(1);
        if Some(first) != exclude {
            return Some(first);
        }
        // Walk on to the next entry naming another backend, if any.
        for k in 0..n {
            let i = self.schedule[(self.next + k) % n];
            if i != first {
                self.next = self.next.wrapping_add(k + 1);
                return Some(i);
            }
        }
        Some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::test_util::snapshot;

    #[test]
    fn interleaves_by_weight() {
        let s = snapshot(&[1, 2], &[true, true]);
        let mut b = WeightedRoundRobin::default();
        b.update(&s);
        let ip = IpAddr::from([127, 0, 0, 1]);
        let picks: Vec<_> = (0..6).map(|_| b.pick(&s, ip, None).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 4);
        assert_eq!(picks[..3].iter().filter(|&&i| i == 0).count(), 1);
        let s = snapshot(&[5, 1, 1], &[true, true, true]);
        b.update(&s);
        let picks: Vec<_> = (0..7).map(|_| b.pick(&s, ip, None).unwrap()).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
        assert_ne!(b.pick(&s, ip, Some(0)), Some(0));
    }
}
