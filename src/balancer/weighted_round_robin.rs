//! Smooth weighted round robin: the interleaving nginx uses, computed online.
//!
//! Every up backend has its weight `w` and a current value `c`, 0 after an
//! update. A pick adds each `w` to its `c`, takes the backend with the
//! largest `c` (the first in configuration order on a tie) and subtracts the
//! total weight from it: weights 1:2 give b a b, b a b, ..., 5:1:1 give
//! a a b a c a a: a heavy backend's turns are spread out, never bunched.
//!
//! Backends of equal weight gain at the same rate, so among them the order
//! of `c` only changes for the one just picked. The live form keeps one
//! binary heap per distinct weight (`c` is stored as `base + picks × w`, so
//! adding the weights costs nothing): a pick compares the heads of the G
//! heaps and sifts the winner down, O(G + log n), G being the number of
//! distinct weights (usually a handful; n at worst, when every weight
//! differs). Weights are divided by their gcd (the sequence is unchanged);
//! when one period of the sequence costs at most [`PRECOMPUTE_STEPS`] it is
//! computed on update and a pick is an array read. So an update is
//! O(n log n) plus at most [`PRECOMPUTE_STEPS`] steps, whatever the weights,
//! and both forms give the same sequence.
//!
//! An update restarts the sequence (every `c` back to 0). A retry's
//! excluded backend still gains its weight but cannot win that pick (nginx
//! leaves tried peers out of the step altogether).

use std::net::IpAddr;

use super::Balancer;
use crate::health::Snapshot;

/// Most work (period length × (distinct weights + log2 of the up backends))
/// spent precomputing one period on update. Above it, picks run live.
pub const PRECOMPUTE_STEPS: usize = 1 << 15;

/// Live picks between two renormalisations of the stored bases (an O(n)
/// pass that keeps `base + picks × w` far from overflowing).
const RENORMALISE_AFTER: i64 = 1 << 20;

/// Weighted rotation, evenly interleaved (1:2 gives b a b b a b, never a a b b).
#[derive(Debug, Default)]
pub struct WeightedRoundRobin {
    /// One period of the sequence (snapshot indices), when it was cheap
    /// enough to precompute; empty in live mode.
    schedule: Vec<u32>,
    /// Position in `schedule`.
    next: usize,
    /// Live state: the up backends, grouped by weight; each group's slice
    /// `members[start..end]` is a binary heap, largest current value first.
    members: Vec<Member>,
    groups: Vec<Group>,
    /// Picks since the bases were last renormalised: a member's current
    /// value is `base + picks × its group's weight`.
    picks: i64,
    /// Sum of the (reduced) weights of the up backends.
    total: i64,
}

/// An up backend in the live state.
#[derive(Debug, Clone, Copy)]
struct Member {
    /// Current value minus `picks × weight`.
    base: i64,
    /// Snapshot index.
    index: u32,
}

impl Member {
    /// Comes first in its heap: larger current value, then lower index.
    fn before(&self, other: &Member) -> bool {
        self.base > other.base || (self.base == other.base && self.index < other.index)
    }
}

/// The up backends of one weight: a heap in `members[start..end]`.
#[derive(Debug, Clone, Copy)]
struct Group {
    weight: i64,
    start: usize,
    end: usize,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl WeightedRoundRobin {
    /// True when picks run live (the period was too long to precompute).
    fn is_live(&self) -> bool {
        self.schedule.is_empty()
    }

    /// One step of the smooth algorithm over the live state: the snapshot
    /// index that wins. `skip` (a snapshot index) does not win while another
    /// backend is up.
    fn step(&mut self, skip: Option<usize>) -> Option<usize> {
        if self.members.is_empty() {
            return None;
        }
        if self.picks >= RENORMALISE_AFTER {
            for g in &self.groups {
                for m in &mut self.members[g.start..g.end] {
                    m.base += self.picks * g.weight;
                }
            }
            self.picks = 0;
        }
        self.picks += 1;
        let skip = skip.filter(|_| self.members.len() > 1);
        // (current value, member position, group)
        let mut best: Option<(i64, usize, usize)> = None;
        for (g, group) in self.groups.iter().enumerate() {
            let mut pos = group.start;
            if skip == Some(self.members[pos].index as usize) {
                // The head is skipped: the next best is one of its children.
                let (left, right) = (pos + 1, pos + 2);
                pos = match (left < group.end, right < group.end) {
                    (false, _) => continue,
                    (true, false) => left,
                    (true, true) if self.members[right].before(&self.members[left]) => right,
                    (true, true) => left,
                };
            }
            let m = self.members[pos];
            let value = m.base + self.picks * group.weight;
            let wins = best.is_none_or(|(v, p, _)| {
                value > v || (value == v && m.index < self.members[p].index)
            });
            if wins {
                best = Some((value, pos, g));
            }
        }
        let (_, pos, g) = best?;
        let index = self.members[pos].index as usize;
        self.members[pos].base -= self.total;
        let group = self.groups[g];
        sift_down(&mut self.members[group.start..group.end], pos - group.start);
        Some(index)
    }
}

/// Restores the heap order of `heap` after the key at `i` decreased.
fn sift_down(heap: &mut [Member], mut i: usize) {
    loop {
        let (left, right) = (2 * i + 1, 2 * i + 2);
        let mut first = i;
        if left < heap.len() && heap[left].before(&heap[first]) {
            first = left;
        }
        if right < heap.len() && heap[right].before(&heap[first]) {
            first = right;
        }
        if first == i {
            return;
        }
        heap.swap(i, first);
        i = first;
    }
}

impl Balancer for WeightedRoundRobin {
    fn update(&mut self, snapshot: &Snapshot) {
        self.schedule.clear();
        self.next = 0;
        self.members.clear();
        self.groups.clear();
        self.picks = 0;
        let routable = || snapshot.backends.iter().filter(|b| b.routable());
        let weight_of = |b: &crate::health::BackendView| u64::from(b.backend.weight.max(1));
        let g = routable().fold(0, |g, b| gcd(g, weight_of(b))).max(1);
        // (reduced weight, snapshot index), grouped by weight, each group
        // in index order: with every current value at 0 that is heap order.
        // Indices fit: a snapshot never holds 2^32 backends.
        let mut by_weight: Vec<(u64, u32)> = snapshot
            .backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.routable())
            .map(|(i, b)| (weight_of(b) / g, i as u32))
            .collect();
        by_weight.sort_unstable();
        // Reduced weights are at most 2^32 and fewer than 2^32 of them: fits.
        self.total = by_weight.iter().map(|&(w, _)| w as i64).sum();
        for (k, &(w, index)) in by_weight.iter().enumerate() {
            if k == 0 || by_weight[k - 1].0 != w {
                self.groups.push(Group {
                    weight: w as i64,
                    start: k,
                    end: k,
                });
            }
            if let Some(group) = self.groups.last_mut() {
                group.end = k + 1;
            }
            self.members.push(Member { base: 0, index });
        }
        let n = self.members.len();
        if n == 0 {
            return;
        }
        let period = usize::try_from(self.total).unwrap_or(usize::MAX);
        let per_step = self.groups.len() + 1 + n.ilog2() as usize;
        if period.saturating_mul(per_step) > PRECOMPUTE_STEPS {
            return;
        }
        self.schedule.reserve(period);
        for _ in 0..period {
            // `step` finds a backend: there is at least one.
            if let Some(i) = self.step(None) {
                self.schedule.push(i as u32);
            }
        }
    }

    fn pick(&mut self, _: &Snapshot, _: IpAddr, exclude: Option<usize>) -> Option<usize> {
        if self.is_live() {
            return self.step(exclude);
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
        // Every weight accrues, the best backend other than the excluded
        // one wins and pays back the total.
        let weights: Vec<u32> = (0..60).map(|i| [5, 3, 3, 8][i % 4]).collect();
        let s = snapshot(&weights, &[true; 60]);
        let mut b = WeightedRoundRobin::default();
        b.update(&s);
        b.schedule.clear();
        let w: Vec<i64> = weights.iter().map(|&w| i64::from(w)).collect();
        let total: i64 = w.iter().sum();
        let mut current = vec![0i64; w.len()];
        let mut last = 0;
        for round in 0..2000 {
            let skip = (round % 3 == 2).then_some(last);
            let mut best: Option<usize> = None;
            for k in 0..w.len() {
                current[k] += w[k];
                if Some(k) != skip && best.is_none_or(|b| current[k] > current[b]) {
                    best = Some(k);
                }
            }
            let best = best.unwrap();
            current[best] -= total;
            last = b.pick(&s, IP, skip).unwrap();
            assert_eq!(last, best, "round {round}");
        }
        let one = snapshot(&[3], &[true]);
        b.update(&one);
        assert_eq!(b.pick(&one, IP, Some(0)), Some(0));
    }

    #[test]
    fn live_matches_the_reference_for_random_weights() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for trial in 0..40 {
            let n = 2 + (next() % 40) as usize;
            let top = [1000, 3, 50][trial % 3];
            let weights: Vec<u32> = (0..n).map(|_| 1 + (next() % top) as u32).collect();
            let s = snapshot(&weights, &vec![true; n]);
            let mut b = WeightedRoundRobin::default();
            b.update(&s);
            // Run the live form whatever the period (a precomputed period
            // leaves the live state back at its start).
            b.schedule.clear();
            let g = weights.iter().fold(0, |g, &w| gcd(g, u64::from(w))) as i64;
            let reduced: Vec<i64> = weights.iter().map(|&w| i64::from(w) / g).collect();
            assert_eq!(
                picks(&mut b, &s, 3000),
                reference(&reduced, 3000),
                "{weights:?}"
            );
        }
    }

    #[test]
    fn renormalising_keeps_the_sequence() {
        let weights = [7u32, 5, 5, 3, 7, 2];
        let s = snapshot(&weights, &[true; 6]);
        let mut b = WeightedRoundRobin::default();
        b.update(&s);
        b.schedule.clear();
        // Jump the pick counter to the threshold, bases compensated so that
        // every current value is unchanged.
        let jump = RENORMALISE_AFTER - b.picks;
        for g in b.groups.clone() {
            for m in &mut b.members[g.start..g.end] {
                m.base -= jump * g.weight;
            }
        }
        b.picks = RENORMALISE_AFTER;
        let w64: Vec<i64> = weights.iter().map(|&w| i64::from(w)).collect();
        assert_eq!(picks(&mut b, &s, 200), reference(&w64, 200));
        assert!(b.picks < 1000);
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
        assert!(b.is_live() && b.schedule.capacity() == 0);
        assert_eq!((b.members.len(), b.groups.len()), (1000, 2));
        // The largest precomputed period stays within the budget.
        let s = snapshot(&[1000, 999], &[true, true]);
        b.update(&s);
        assert_eq!(b.schedule.len(), 1999);
        assert!(b.schedule.len() * (b.groups.len() + 2) <= PRECOMPUTE_STEPS);
    }

    #[test]
    fn equal_weights_rotate_strictly_over_up_backends() {
        // What `RoundRobin` used to be on its own: with equal weights the
        // smooth rotation is the strict one, skipping down backends.
        let s = snapshot(&[1, 1, 1], &[true, false, true]);
        let mut b = WeightedRoundRobin::default();
        b.update(&s);
        let ip = IpAddr::from([127, 0, 0, 1]);
        let picks: Vec<_> = (0..4).map(|_| b.pick(&s, ip, None).unwrap()).collect();
        assert_eq!(picks, vec![0, 2, 0, 2]);
        let none = snapshot(&[1], &[false]);
        b.update(&none);
        assert_eq!(b.pick(&none, ip, None), None);
        let three = snapshot(&[5, 5, 5], &[true, true, true]);
        b.update(&three);
        let picks: Vec<_> = (0..6).map(|_| b.pick(&three, ip, None).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }
}
