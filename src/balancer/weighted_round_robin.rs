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
//! An update restarts the sequence (every `c` back to 0). A backend the
//! select passes over (a retry's, a refused one) still gains its weight but
//! cannot win that pick (nginx leaves tried peers out of the step
//! altogether): live, each heap yields its best member not passed over, a
//! search that only descends through passed-over members; precomputed, the
//! pick walks on to the next entry naming a candidate.

use std::net::IpAddr;

use super::{Balancer, Skip};
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
    /// index that wins, never one in `skip`. `None`, with the state
    /// untouched, when every up backend is in `skip`.
    fn step(&mut self, skip: &Skip) -> Option<usize> {
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
        let picks = self.picks + 1;
        // (current value, member position, group)
        let mut best: Option<(i64, usize, usize)> = None;
        for (g, group) in self.groups.iter().enumerate() {
            let heap = &self.members[group.start..group.end];
            let head = if skip.is_empty() {
                0
            } else {
                match best_not_skipped(heap, 0, skip) {
                    Some(k) => k,
                    None => continue,
                }
            };
            let pos = group.start + head;
            let m = self.members[pos];
            let value = m.base + picks * group.weight;
            let wins = best.is_none_or(|(v, p, _)| {
                value > v || (value == v && m.index < self.members[p].index)
            });
            if wins {
                best = Some((value, pos, g));
            }
        }
        let (_, pos, g) = best?;
        self.picks = picks;
        let index = self.members[pos].index as usize;
        self.members[pos].base -= self.total;
        let group = self.groups[g];
        sift_down(&mut self.members[group.start..group.end], pos - group.start);
        Some(index)
    }
}

/// The position of the best member of the subheap at `i` that is not in
/// `skip`. A member not skipped beats its whole subtree, so the search only
/// descends through skipped members: O(skipped members), recursion no
/// deeper than the heap.
fn best_not_skipped(heap: &[Member], i: usize, skip: &Skip) -> Option<usize> {
    let m = heap.get(i)?;
    if !skip.contains(m.index as usize) {
        return Some(i);
    }
    let left = best_not_skipped(heap, 2 * i + 1, skip);
    let right = best_not_skipped(heap, 2 * i + 2, skip);
    match (left, right) {
        (Some(l), Some(r)) if heap[r].before(&heap[l]) => Some(r),
        (Some(l), _) => Some(l),
        (None, r) => r,
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
        let nothing = Skip::default();
        for _ in 0..period {
            // `step` finds a backend: there is at least one.
            if let Some(i) = self.step(&nothing) {
                self.schedule.push(i as u32);
            }
        }
    }

    fn choose(&mut self, _: &Snapshot, _: IpAddr, skip: &Skip) -> Option<usize> {
        if self.is_live() {
            return self.step(skip);
        }
        // The next entry naming a candidate (the very next one unless some
        // are passed over; at most one period, bounded by PRECOMPUTE_STEPS).
        let n = self.schedule.len();
        for k in 0..n {
            let i = self.schedule[(self.next + k) % n] as usize;
            if skip.is_empty() || !skip.contains(i) {
                self.next = self.next.wrapping_add(k + 1);
                return Some(i);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::test_util::{selector, skip, snapshot};

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn pick(b: &mut WeightedRoundRobin, s: &Snapshot) -> Option<usize> {
        b.choose(s, IP, &Skip::default())
    }

    fn picks(b: &mut WeightedRoundRobin, s: &Snapshot, n: usize) -> Vec<usize> {
        (0..n).map(|_| pick(b, s).unwrap()).collect()
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
        assert_ne!(b.choose(&s, IP, &skip(3, &[0])), Some(0));
        // A down backend is left out; indices stay those of the snapshot.
        let s = snapshot(&[5, 3, 1, 1], &[true, false, true, true]);
        b.update(&s);
        assert_eq!(picks(&mut b, &s, 7), vec![0, 0, 2, 0, 3, 0, 0]);
        let none = snapshot(&[1, 1], &[false, false]);
        b.update(&none);
        assert_eq!(pick(&mut b, &none), None);
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
            counts[pick(&mut b, &s).unwrap()] += 1;
        }
        assert_eq!(counts, weights);
        // gcd reduction keeps a 100:200 period at 3 entries.
        let s = snapshot(&[100, 200], &[true, true]);
        b.update(&s);
        assert_eq!(b.schedule.len(), 3);
    }

    /// `n` backends whose weights cycle through `cycle`, a rotation forced
    /// into live mode (no precomputed schedule), the weights as the
    /// reference model counts them, and their total.
    fn live_mode(cycle: &[u32], n: usize) -> (Snapshot, WeightedRoundRobin, Vec<i64>, i64) {
        let weights: Vec<u32> = (0..n).map(|i| cycle[i % cycle.len()]).collect();
        let s = snapshot(&weights, &vec![true; n]);
        let mut b = WeightedRoundRobin::default();
        b.update(&s);
        b.schedule.clear();
        let w: Vec<i64> = weights.iter().map(|&w| i64::from(w)).collect();
        let total: i64 = w.iter().sum();
        (s, b, w, total)
    }

    #[test]
    fn exclude_in_live_mode_takes_the_next_best() {
        // Every weight accrues, the best backend other than the excluded
        // one wins and pays back the total.
        let (s, mut b, w, total) = live_mode(&[5, 3, 3, 8], 60);
        let mut current = vec![0i64; w.len()];
        let mut last = 0;
        let skip_of = |k: Option<usize>| skip(60, k.as_slice());
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
            last = b.choose(&s, IP, &skip_of(skip)).unwrap();
            assert_eq!(last, best, "round {round}");
        }
        let one = snapshot(&[3], &[true]);
        b.update(&one);
        assert_eq!(b.choose(&one, IP, &skip(1, &[0])), None);
        assert_eq!(selector(b, &one).select(&one, IP, [0], |_| true), Some(0));
    }

    #[test]
    fn passed_over_sets_in_live_mode_take_the_best_of_the_rest() {
        // Several backends passed over at once, some deep in their heaps:
        // each accrues its weight and the best of the others wins.
        let (s, mut b, w, total) = live_mode(&[4, 4, 4, 7, 1], 40);
        let mut current = vec![0i64; w.len()];
        let mut seed = 0x9e37_79b9u64;
        for round in 0..3000 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            // 0 to 30 of the 40 passed over.
            let out: Vec<usize> = (0..40).filter(|k| (seed >> (k % 60)) & 3 == 0).collect();
            let mut best: Option<usize> = None;
            for k in 0..w.len() {
                current[k] += w[k];
                if !out.contains(&k) && best.is_none_or(|b| current[k] > current[b]) {
                    best = Some(k);
                }
            }
            let best = best.unwrap();
            current[best] -= total;
            assert_eq!(
                b.choose(&s, IP, &skip(40, &out)),
                Some(best),
                "round {round}"
            );
        }
        // Every one passed over: no pick, and the sequence is untouched.
        let mut fresh = WeightedRoundRobin::default();
        fresh.update(&s);
        fresh.schedule.clear();
        let all: Vec<usize> = (0..40).collect();
        assert_eq!(fresh.choose(&s, IP, &skip(40, &all)), None);
        assert_eq!(picks(&mut fresh, &s, 200), reference(&w, 200));
    }

    #[test]
    fn refusals_in_precomputed_mode_walk_on_and_keep_the_shares() {
        // 5:1:1 is a schedule of 7: refusing the heavy backend leaves the
        // two light ones alternating; an exclusion is the same walk.
        let s = snapshot(&[5, 1, 1], &[true; 3]);
        let mut b = selector(WeightedRoundRobin::default(), &s);
        let refused: Vec<_> = (0..10)
            .map(|_| b.select(&s, IP, None, |i| i != 0).unwrap())
            .collect();
        assert_eq!(refused, [1, 2, 1, 2, 1, 2, 1, 2, 1, 2]);
        let mut counts = [0; 3];
        for _ in 0..70 {
            counts[b.select(&s, IP, [1], |_| true).unwrap()] += 1;
        }
        assert_eq!(counts[1], 0);
        assert!(counts[0] > 4 * counts[2], "{counts:?}");
        // All three refused: none, and an exclusion alone never refuses.
        assert_eq!(b.select(&s, IP, None, |_| false), None);
        assert_eq!(b.select(&s, IP, [0, 1, 2], |i| i == 1), Some(1));
        // Straight choices keep the 5:1:1 sequence from wherever it is.
        let mut plain = WeightedRoundRobin::default();
        plain.update(&s);
        let seq = picks(&mut plain, &s, 21);
        let mut c = [0; 3];
        for i in seq {
            c[i] += 1;
        }
        assert_eq!(c, [15, 3, 3]);
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
        assert_eq!(picks(&mut b, &s, 4), vec![0, 2, 0, 2]);
        let none = snapshot(&[1], &[false]);
        b.update(&none);
        assert_eq!(pick(&mut b, &none), None);
        let three = snapshot(&[5, 5, 5], &[true, true, true]);
        b.update(&three);
        assert_eq!(picks(&mut b, &three, 6), vec![0, 1, 2, 0, 1, 2]);
    }
}
