//! Backend selection: one small trait, one strategy per file.
//!
//! A [`Balancer`] is owned by one worker (`&mut self`, no atomics of its own):
//! [`Balancer::update`] rebuilds its view when a new snapshot arrives,
//! [`Balancer::pick`] chooses a backend per request in O(1) (O(n) for
//! LeastConnections, which must look at every candidate; O(G + log n), G
//! distinct weights, for WeightedRoundRobin when its sequence is too long to
//! precompute).
//! Strategies that need the global in-flight count read it from the
//! [`crate::backend::Backend`].
//!
//! Every worker runs `update` for every snapshot, between requests, so its
//! cost is bounded by the number of backends and never grows with their
//! weights (see each strategy's module doc for its figure).

mod ip_hash;
mod least_connections;
mod power_of_two;
mod random;
mod weighted_round_robin;

use std::net::IpAddr;

pub use ip_hash::IpHash;
pub use least_connections::LeastConnections;
pub use power_of_two::PowerOfTwoChoices;
pub use random::{Random, Rng};
pub use weighted_round_robin::WeightedRoundRobin;

use crate::config::Strategy;
use crate::health::Snapshot;

/// A backend selection strategy.
pub trait Balancer {
    /// Rebuilds the strategy's view after a snapshot change.
    fn update(&mut self, snapshot: &Snapshot);

    /// Picks a backend (an index into `snapshot.backends`) that is up and is
    /// not `exclude` when another is available; `None` when none is up.
    fn pick(
        &mut self,
        snapshot: &Snapshot,
        client: IpAddr,
        exclude: Option<usize>,
    ) -> Option<usize>;
}

/// Builds the balancer for a strategy; `seed` varies random choices per worker.
pub fn new(strategy: Strategy, seed: u64) -> Box<dyn Balancer> {
    match strategy {
        // Round robin honours weights, as nginx's and HAProxy's do: the
        // smooth weighted rotation, which with equal weights is the strict
        // rotation. `WeightedRoundRobin` is an alias.
        Strategy::RoundRobin => Box::new(WeightedRoundRobin::default()),
        Strategy::LeastConnections => Box::new(LeastConnections::default()),
        Strategy::Random => Box::new(Random::new(seed)),
        Strategy::WeightedRoundRobin => Box::new(WeightedRoundRobin::default()),
        Strategy::IpHash => Box::new(IpHash::default()),
        Strategy::PowerOfTwoChoices => Box::new(PowerOfTwoChoices::new(seed)),
    }
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

    use crate::backend::{Backend, BackendId};
    use crate::health::{BackendView, Snapshot};

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
