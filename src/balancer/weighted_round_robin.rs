//! Smooth weighted round robin: the interleaving nginx uses, computed online.
//!
//! Every up backend has its weight `w` and a current value `c`, 0 after an
//! update. A pick adds each `w` to its `c`, takes the backend with the
//! largest `c` (the first in configuration order on a tie) and subtracts the
//! total weight from it: weights 1:2 give b a b, b a b, ..., 5:1:1 give
//! a a b a c a a: a heavy backend's turns are spread out, never bunched.
//!
//! Cost, whatever the weights: weights are divided by their gcd (which does
//! not change the sequence); when one period of the sequence costs at most
//! [`PRECOMPUTE_STEPS`] (period length × up backends) it is computed on
//! update and a pick is an array read. Otherwise picks run the algorithm
//! live over compact arrays: O(n) per pick, two tight passes. So an update
//! is O(n) plus at most [`PRECOMPUTE_STEPS`] steps (~0.1 ms in a release
//! build), and both forms give the same sequence.
//!
//! An update restarts the sequence (every `c` back to 0), as nginx does when
//! its peer list is rebuilt.

use std::net::IpAddr;

use super::Balancer;
use crate::health::Snapshot;

/// Most scan steps (period length × up backends) spent precomputing one
/// period on update. Above it, picks run the algorithm live instead.
pub const PRECOMPUTE_STEPS: usize = 1 << 16;

/// Largest total weight picks compute with. Current values stay within a
/// small multiple of the total (1.5x at most in a randomised check), so
/// `i32` keeps ample headroom and halves the scan's cost against `i64`.
/// A larger total (over 67 000 backends at the maximum weight) is scaled
/// down, each weight staying at least 1.
const MAX_TOTAL: u64 = 1 << 26;

/// Weighted rotation, evenly interleaved (1:2 gives b a b b a b, never a a b b).
#[derive(Debug, Default)]
pub struct WeightedRoundRobin {
    /// One period of the sequence (snapshot indices), when it was cheap
    /// enough to precompute; empty in live mode.
    schedule: Vec<u32>,
    /// Position in `schedule`.
    next: usize,
    /// Live mode, one slot per up backend (structure of arrays so the scan
    /// is two tight loops): snapshot index, weight, current value.
    index: Vec<u32>,
    weight: Vec<i32>,
    current: Vec<i32>,
    /// Sum of `weight`.
    total: i32,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl WeightedRoundRobin {
    /// True when picks run live (the period was too long to precompute).
    fn is_live(&self) -> bool {
        self.schedule.is_empty()
    }

    /// One step of the smooth algorithm over the live arrays: the slot that
    /// wins (`skip` never does while another slot exists).
    fn step(&mut self, skip: Option<usize>) -> Option<usize> {
        if self.current.is_empty() {
            return None;
        }
        let best = match skip {
            None => {
                let mut max = i32::MIN;
                for (c, w) in self.current.iter_mut().zip(&self.weight) {
                    *c += *w;
                    max = max.max(*c);
                }
                // The first slot holding the maximum: nginx's tie-break.
                self.current.iter().position(|&c| c == max)?
            }
            Some(skip) => {
                let mut best: Option<usize> = None;
                for k in 0..self.current.len() {
                    self.current[k] += self.weight[k];
                    if k != skip && best.is_none_or(|b| self.current[k] > self.current[b]) {
                        best = Some(k);
                    }
                }
                best.unwrap_or(skip)
            }
        };
        self.current[best] -= self.total;
        Some(best)
    }
}

impl Balancer for WeightedRoundRobin {
    fn update(&mut self, snapshot: &Snapshot) {
        self.schedule.clear();
        self.next = 0;
        self.index.clear();
        self.weight.clear();
        self.current.clear();
        let routable = || snapshot.backends.iter().filter(|b| b.routable());
        let weight_of = |b: &crate::health::BackendView| u64::from(b.backend.weight.max(1));
        let g = routable().fold(0, |g, b| gcd(g, weight_of(b))).max(1);
        let total: u64 = routable().map(|b| weight_of(b) / g).sum();
        let scale = total.div_ceil(MAX_TOTAL).max(1);
        for (i, b) in snapshot.backends.iter().enumerate() {
            if b.routable() {
                // Indices fit: a snapshot never holds 2^32 backends. The
                // weight fits: at most MAX_TOTAL once scaled.
                self.index.push(i as u32);
                self.weight.push((weight_of(b) / g / scale).max(1) as i32);
            }
        }
        self.total = self.weight.iter().sum();
        self.current.resize(self.weight.len(), 0);
        let n = self.weight.len();
        let period = usize::try_from(self.total).unwrap_or(usize::MAX);
        if n == 0 || period.saturating_mul(n) > PRECOMPUTE_STEPS {
            return;
        }
        self.schedule.reserve(period);
        for _ in 0..period {
            // `step` finds a slot: there is at least one.
            if let Some(k) = self.step(None) {
                self.schedule.push(self.index[k]);
            }
        }
        // A whole period brings every current value back to 0.
        debug_assert!(self.current.iter().all(|&c| c == 0));
    }

    fn pick(&mut self, _: &Snapshot, _: IpAddr, exclude: Option<usize>) -> Option<usize> {
        if self.is_live() {
            let skip = exclude.and_then(|e| self.index.iter().position(|&i| i as usize == e));
            return self.step(skip).map(|k| self.index[k] as usize);
        }
        let n = self.schedule.len();
        let first = self.schedule[self.next % n] as usize;
        self.next = self.next.wrapping_add(1);
        if Some(first) != exclude {
            return Some(first);
        }
        // Walk on to the next entry naming another backend, if any (at most
        // one period, bounded by PRECOMPUTE_STEPS).
        for k in 0..n {
            let i = self.schedule[(self.next + k) % n] as usize;
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

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn picks(b: &mut WeightedRoundRobin, s: &Snapshot, n: usize) -> Vec<usize> {
        (0..n).map(|_| b.pick(s, IP, None).unwrap()).collect()
    }

    /// The smooth algorithm written as plainly as possible, as the oracle.
    fn reference(weights: &[i64], n: usize) -> Vec<usize> {
        let total: i64 = weights.iter().sum();
        let mut current = vec![0i64; weights.len()];
        let mut out = Vec::new();
        for _ in 0..n {
            let mut best = 0;
            for k in 0..weights.len() {
                current[k] += weights[k];
                if current[k] > current[best] {
                    best = k;
                }
            }
            current[best] -= total;
            out.push(best);
        }
        out
    }

    #[test]
    fn exact_smooth_sequences() {
        let mut b = WeightedRoundRobin::default();
        let s = snapshot(&[1, 2], &[true, true]);
        b.update(&s);
        assert_eq!(picks(&mut b, &s, 6), vec![1, 0, 1, 1, 0, 1]);
        let s = snapshot(&[5, 1, 1], &[true, true, true]);
        b.update(&s);
        assert_eq!(picks(&mut b, &s, 14), [[0, 0, 1, 0, 2, 0, 0]; 2].concat());
        assert_ne!(b.pick(&s, IP, Some(0)), Some(0));
        // A down backend is left out; indices stay those of the snapshot.
        let s = snapshot(&[5, 3, 1, 1], &[true, false, true, true]);
        b.update(&s);
        assert_eq!(picks(&mut b, &s, 7), vec![0, 0, 2, 0, 3, 0, 0]);
        let none = snapshot(&[1, 1], &[false, false]);
        b.update(&none);
        assert_eq!(b.pick(&none, IP, None), None);
    }

    #[test]
    fn live_and_precomputed_give_the_same_sequence() {
        // Weights 100/101 on 600 backends: the case that stalled updates.
        let weights: Vec<u32> = (0..600).map(|i| 100 + (i % 2)).collect();
        let s = snapshot(&weights, &[true; 600]);
        let mut b = WeightedRoundRobin::default();
        b.update(&s);
        assert!(b.is_live());
        let w64: Vec<i64> = weights.iter().map(|&w| i64::from(w)).collect();
        assert_eq!(picks(&mut b, &s, 3000), reference(&w64, 3000));
        // Small enough to precompute: same answer.
        let weights = [7, 3, 2, 9, 1];
        let s = snapshot(&weights, &[true; 5]);
        b.update(&s);
        assert!(!b.is_live() && b.schedule.len() == 22);
        let w64: Vec<i64> = weights.iter().map(|&w| i64::from(w)).collect();
        assert_eq!(picks(&mut b, &s, 100), reference(&w64, 100));
    }

    #[test]
    fn distribution_follows_weights_exactly_per_period() {
        let weights: Vec<u32> = (0..200).map(|i| 997 + (i % 3)).collect();
        let s = snapshot(&weights, &[true; 200]);
        let mut b = WeightedRoundRobin::default();
        b.update(&s);
        assert!(b.is_live());
        let mut counts = vec![0u32; 200];
        let total: u32 = weights.iter().sum();
        for _ in 0..total {
            counts[b.pick(&s, IP, None).unwrap()] += 1;
        }
        assert_eq!(counts, weights);
        // gcd reduction keeps a 100:200 period at 3 entries.
        let s = snapshot(&[100, 200], &[true, true]);
        b.update(&s);
        assert_eq!(b.schedule.len(), 3);
    }

    #[test]
    fn exclude_in_live_mode_takes_the_next_best() {
        let weights: Vec<u32> = (0..1000).map(|i| 1000 - (i % 2)).collect();
        let s = snapshot(&weights, &[true; 1000]);
        let mut b = WeightedRoundRobin::default();
        b.update(&s);
        assert!(b.is_live());
        for _ in 0..50 {
            let first = b.pick(&s, IP, None).unwrap();
            assert_ne!(b.pick(&s, IP, Some(first)), Some(first));
        }
        let one = snapshot(&[3], &[true]);
        b.update(&one);
        assert_eq!(b.pick(&one, IP, Some(0)), Some(0));
    }

    #[test]
    fn current_values_stay_well_inside_i32() {
        // The headroom MAX_TOTAL relies on: |current| <= 2 x total.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for trial in 0..40 {
            let n = 2 + (next() % 40) as usize;
            let top = if trial % 2 == 0 { 1000 } else { 3 };
            let weights: Vec<u32> = (0..n).map(|_| 1 + (next() % top) as u32).collect();
            let s = snapshot(&weights, &vec![true; n]);
            let mut b = WeightedRoundRobin::default();
            b.update(&s);
            // Run the live form whatever the period.
            b.schedule.clear();
            let bound = 2 * b.total;
            for _ in 0..20_000 {
                b.pick(&s, IP, None);
                assert!(b.current.iter().all(|c| c.abs() <= bound), "{weights:?}");
            }
        }
    }

    #[test]
    fn update_work_is_bounded_whatever_the_weights() {
        // 1000 backends of weight 1000 minus one of weight 999: no common
        // divisor, a period of ~10^6 picks. The update must not compute it.
        let mut weights = vec![1000u32; 1000];
        weights[0] = 999;
        let s = snapshot(&weights, &[true; 1000]);
        let mut b = WeightedRoundRobin::default();
        b.update(&s);
        assert!(b.is_live());
        assert!(b.schedule.capacity() * b.current.len() <= PRECOMPUTE_STEPS);
        // The largest precomputed period stays within the budget.
        let s = snapshot(&[1000, 999], &[true, true]);
        b.update(&s);
        assert_eq!(b.schedule.len(), 1999);
        assert!(b.schedule.len() * 2 <= PRECOMPUTE_STEPS);
    }
}
