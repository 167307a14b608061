//! Backend selection: one small trait, one strategy per file, and the one
//! entry point, [`Selector::select`], that every pick goes through.
//!
//! A [`Balancer`] (a strategy) is owned by one worker (`&mut self`, no
//! atomics of its own): [`Balancer::update`] rebuilds its view when a new
//! snapshot arrives, [`Balancer::choose`] chooses among the candidates in
//! O(1) (O(n) for LeastConnections, which must look at every candidate;
//! O(G + log n), G distinct weights, for WeightedRoundRobin when its
//! sequence is too long to precompute). Strategies that need the global
//! in-flight count read it from the [`crate::backend::Backend`].
//!
//! Which backends are candidates is decided here, once, not by each
//! strategy ([`Selector::select`], after pingora's `select_with` and sozu's
//! available backends):
//! 1. routable backends only (up, breaker not open), filtered on update;
//! 2. not those the caller excludes (the backends a retry already tried),
//!    as long as another candidate is accepted: with none left, the
//!    excluded ones become candidates again, all but the latest first (the
//!    backend a retry just left is its last resort), so a lone backend
//!    still gets its retry;
//! 3. not those the caller refuses: `accept` is asked about the chosen
//!    backend, at most once per backend and select, and a refused one is
//!    passed over (a half-open breaker with no trial slot left). A refusal
//!    is final: when every candidate is refused the answer is `None`.
//!
//! The passed-over set is a [`Skip`]: marks stamped per select, so testing,
//! adding and clearing are O(1) and a select allocates nothing. With
//! nothing passed over (the common case) each strategy takes its plain
//! path, at the cost stated above.
//!
//! Every worker runs `update` for every snapshot, between requests, so its
//! cost is bounded by the number of backends and never grows with their
//! weights (see each strategy's module doc for its figure).

mod ip_hash;
mod least_connections;
mod power_of_two;
mod random;
mod skip;
mod weighted_round_robin;

use std::net::IpAddr;

pub use ip_hash::IpHash;
pub use least_connections::LeastConnections;
pub use power_of_two::PowerOfTwoChoices;
pub use random::{Random, Rng};
pub use skip::Skip;
pub use weighted_round_robin::WeightedRoundRobin;

use crate::config::Strategy;
use crate::health::Snapshot;

/// A backend selection strategy: chooses among the candidates it is given.
pub trait Balancer {
    /// Rebuilds the strategy's view after a snapshot change.
    fn update(&mut self, snapshot: &Snapshot);

    /// Chooses a routable backend (an index into `snapshot.backends`) that
    /// is not in `skip`; `None` when there is none.
    fn choose(&mut self, snapshot: &Snapshot, client: IpAddr, skip: &Skip) -> Option<usize>;
}

/// A worker's backend selection: its strategy and the scratch space that
/// keeps a select free of allocation.
pub struct Selector {
    strategy: Box<dyn Balancer>,
    skip: Skip,
}

impl Selector {
    /// A selector over `strategy`.
    pub fn with(strategy: Box<dyn Balancer>) -> Self {
        Selector {
            strategy,
            skip: Skip::default(),
        }
    }

    /// Rebuilds the strategy's view after a snapshot change.
    pub fn update(&mut self, snapshot: &Snapshot) {
        self.skip.resize(snapshot.backends.len());
        self.strategy.update(snapshot);
    }

    /// Selects a backend (an index into `snapshot.backends`, the snapshot of
    /// the last [`Selector::update`]): the strategy's choice among the
    /// routable backends, avoiding `exclude` (oldest first: the last one is
    /// avoided longest) while another is accepted, and that `accept`
    /// accepts. `accept` is called on each backend chosen, at most once per
    /// backend, and the one call that returns true is for the answer (it
    /// may take a resource for it, as the proxy takes a trial slot). `None`
    /// when no backend is routable or every candidate was refused.
    pub fn select(
        &mut self,
        snapshot: &Snapshot,
        client: IpAddr,
        exclude: impl IntoIterator<Item = usize>,
        mut accept: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        self.skip.clear();
        for i in exclude {
            self.skip.exclude(i);
        }
        loop {
            match self.strategy.choose(snapshot, client, &self.skip) {
                Some(i) => {
                    // A strategy never offers a passed-over backend; were
                    // one to, `refuse` fails and the loop still ends.
                    debug_assert!(!self.skip.contains(i), "strategy chose a skipped backend");
                    if accept(i) {
                        return Some(i);
                    }
                    if !self.skip.refuse(i) {
                        return None;
                    }
                }
                // Only excluded ones are left: they become candidates again.
                None if self.skip.lift_exclusions() => {}
                None => return None,
            }
        }
    }
}

/// Builds the selector for a strategy; `seed` varies random choices per worker.
pub fn new(strategy: Strategy, seed: u64) -> Selector {
    Selector::with(match strategy {
        // Round robin honours weights, as nginx's and HAProxy's do: the
        // smooth weighted rotation, which with equal weights is the strict
        // rotation. `WeightedRoundRobin` is an alias.
        Strategy::RoundRobin => Box::new(WeightedRoundRobin::default()),
        Strategy::LeastConnections => Box::new(LeastConnections::default()),
        Strategy::Random => Box::new(Random::new(seed)),
        Strategy::WeightedRoundRobin => Box::new(WeightedRoundRobin::default()),
        Strategy::IpHash => Box::new(IpHash::default()),
        Strategy::PowerOfTwoChoices => Box::new(PowerOfTwoChoices::new(seed)),
    })
}

/// Refills `out` with the indices of the backends that are up (reusing its
/// allocation: O(n), and no allocation once it has grown).
pub(crate) fn up_indices(snapshot: &Snapshot, out: &mut Vec<usize>) {
    out.clear();
    out.extend(
        snapshot
            .backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.routable())
            .map(|(i, _)| i),
    );
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::sync::Arc;

    use super::{Balancer, Selector, Skip};
    use crate::backend::{Backend, BackendId};
    use crate::health::{BackendView, Snapshot};

    /// A selector over `strategy`, updated with `snapshot`.
    pub fn selector(strategy: impl Balancer + 'static, snapshot: &Snapshot) -> Selector {
        let mut s = Selector::with(Box::new(strategy));
        s.update(snapshot);
        s
    }

    /// A skip set for `n` backends excluding `excluded`.
    pub fn skip(n: usize, excluded: &[usize]) -> Skip {
        let mut s = Skip::default();
        s.resize(n);
        s.clear();
        for &i in excluded {
            s.exclude(i);
        }
        s
    }

    /// A snapshot of up backends with these (address, weight) pairs.
    pub fn named(servers: &[(&str, u32)]) -> Snapshot {
        Snapshot {
            version: 1,
            backends: servers
                .iter()
                .enumerate()
                .map(|(i, &(name, w))| BackendView {
                    backend: Arc::new(Backend::new(
                        BackendId(i as u32),
                        name.to_owned(),
                        name.parse().unwrap(),
                        w,
                    )),
                    up: true,
                    breaker: crate::health::BreakerState::Closed,
                })
                .collect(),
        }
    }

    /// A snapshot with `weights.len()` backends on 127.0.0.1:1000+i.
    pub fn snapshot(weights: &[u32], up: &[bool]) -> Snapshot {
        Snapshot {
            version: 1,
            backends: weights
                .iter()
                .enumerate()
                .map(|(i, &w)| BackendView {
                    backend: Arc::new(Backend::new(
                        BackendId(i as u32),
                        format!("127.0.0.1:{}", 1000 + i),
                        format!("127.0.0.1:{}", 1000 + i).parse().unwrap(),
                        w,
                    )),
                    up: up[i],
                    breaker: crate::health::BreakerState::Closed,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::test_util::snapshot;
    use super::*;

    const ALL: [Strategy; 5] = [
        Strategy::WeightedRoundRobin,
        Strategy::LeastConnections,
        Strategy::Random,
        Strategy::IpHash,
        Strategy::PowerOfTwoChoices,
    ];

    #[test]
    fn every_strategy_honours_exclusion_refusal_and_lifts_exclusions() {
        let s = snapshot(&[1, 1, 1, 1], &[true, true, false, true]);
        for strategy in ALL {
            let mut b = new(strategy, 11);
            b.update(&s);
            for k in 0..50u8 {
                let ip = IpAddr::from([10, 0, 0, k]);
                let picked = b.select(&s, ip, [0, 3], |_| true);
                assert_eq!(picked, Some(1), "{strategy:?}: the one left");
                // Asked at most once per backend, never about a down one.
                let mut asked = Vec::new();
                let picked = b.select(&s, ip, None, |i| {
                    asked.push(i);
                    i == 3
                });
                assert_eq!(picked, Some(3), "{strategy:?}");
                asked.sort_unstable();
                asked.dedup();
                assert!(!asked.contains(&2), "{strategy:?} offered a down backend");
                assert_eq!(b.select(&s, ip, None, |_| false), None, "{strategy:?}");
                // Only excluded ones left: a retry goes back to one of them,
                // the latest last, still subject to refusal.
                let picked = b.select(&s, ip, [0, 1, 3], |_| true);
                assert!(matches!(picked, Some(0 | 1)), "{strategy:?}: {picked:?}");
                let picked = b.select(&s, ip, [0, 1, 3], |i| i != 0);
                assert_eq!(picked, Some(1), "{strategy:?}");
                let picked = b.select(&s, ip, [0, 1, 3], |i| i == 3);
                assert_eq!(picked, Some(3), "{strategy:?}");
                let picked = b.select(&s, ip, [0, 1, 3], |i| i == 0);
                assert_eq!(picked, Some(0), "{strategy:?}");
                assert_eq!(b.select(&s, ip, [0, 1, 3], |_| false), None);
            }
            let none = snapshot(&[1, 1], &[false, false]);
            b.update(&none);
            let mut asked = 0;
            let picked = b.select(&none, IpAddr::from([10, 0, 0, 1]), [0], |_| {
                asked += 1;
                true
            });
            assert_eq!((picked, asked), (None, 0), "{strategy:?}");
        }
    }

    #[test]
    fn the_last_accepted_is_the_answer() {
        // `accept` may take a resource for the backend it accepts: the
        // proxy keeps the trial slot taken in the call that said yes.
        let s = snapshot(&[1, 1, 1], &[true; 3]);
        for strategy in ALL {
            let mut b = new(strategy, 5);
            b.update(&s);
            let mut taken = None;
            let picked = b.select(&s, IpAddr::from([10, 0, 0, 9]), [1], |i| {
                let ok = i != 0;
                if ok {
                    taken = Some(i);
                }
                ok
            });
            assert_eq!((picked, taken), (Some(2), Some(2)), "{strategy:?}");
        }
    }
}
