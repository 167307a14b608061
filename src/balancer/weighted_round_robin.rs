//! Smooth weighted round robin (the interleaving nginx uses), precomputed.
//!
//! On update the schedule for the up backends is computed once with the
//! smooth algorithm (add each weight to its current value, take the largest,
//! subtract the total), so a pick is an array read: O(1) whatever the number
//! of backends. Weights are divided by their gcd first, so the schedule has
//! sum(weights / gcd) entries; when that exceeds [`MAX_SCHEDULE`], picks run
//! the smooth algorithm live instead (O(n) per pick, like nginx).

use std::net::IpAddr;

use super::Balancer;
use crate::health::Snapshot;

/// Longest precomputed schedule.
pub const MAX_SCHEDULE: usize = 1 << 16;

/// Weighted rotation, evenly interleaved (1:2 gives a b b a b b, never a a b b).
#[derive(Debug, Default)]
pub struct WeightedRoundRobin {
    schedule: Vec<usize>,
    next: usize,
    /// Live mode (schedule too long to precompute): (index, weight, current).
    live: Vec<(usize, i64, i64)>,
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl WeightedRoundRobin {
    fn live_pick(&mut self) -> Option<usize> {
        let total: i64 = self.live.iter().map(|e| e.1).sum();
        let mut best: Option<usize> = None;
        for k in 0..self.live.len() {
            self.live[k].2 += self.live[k].1;
            if best.is_none_or(|b| self.live[k].2 > self.live[b].2) {
                best = Some(k);
            }
        }
        let b = best?;
        self.live[b].2 -= total;
        Some(self.live[b].0)
    }
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
        let g = up.iter().fold(0, |g, (_, w)| gcd(g, *w)).max(1);
        let up: Vec<(usize, i64)> = up.into_iter().map(|(i, w)| (i, w / g)).collect();
        let total: i64 = up.iter().map(|(_, w)| w).sum();
        self.live.clear();
        self.schedule.clear();
        self.next = 0;
        if total as usize > MAX_SCHEDULE {
            self.live = up.iter().map(|&(i, w)| (i, w, 0)).collect();
            return;
        }
        let mut current = vec![0i64; up.len()];
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
        if !self.live.is_empty() {
            let first = self.live_pick()?;
            if Some(first) == exclude && self.live.len() > 1 {
                return self.live_pick();
            }
            return Some(first);
        }
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

    #[test]
    fn large_weights_are_reduced_or_picked_live() {
        let ip = IpAddr::from([127, 0, 0, 1]);
        let s = snapshot(&[100, 200], &[true, true]);
        let mut b = WeightedRoundRobin::default();
        b.update(&s);
        assert_eq!(b.schedule.len(), 3);
        let weights: Vec<u32> = (0..200).map(|i| 997 + (i % 3)).collect();
        let s = snapshot(&weights, &[true; 200]);
        b.update(&s);
        assert!(b.schedule.is_empty() && !b.live.is_empty());
        let mut counts = vec![0u32; 200];
        let total: u32 = weights.iter().sum();
        for _ in 0..total {
            counts[b.pick(&s, ip, None).unwrap()] += 1;
        }
        assert_eq!(counts, weights);
    }
}
