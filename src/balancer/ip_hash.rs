//! Consistent hashing of the client IP (a ring with virtual nodes).
//!
//! Every configured backend, up or down, places `VNODES x weight` points on a
//! 64-bit ring, hashed from its configured address, so the ring is the same
//! on every worker and every instance reading the same file. A client goes to
//! the first up backend clockwise from its own hash: when a backend goes down
//! or is removed, only its clients move; everyone else keeps their backend.
//! A pick is a binary search: O(log n).

use std::net::IpAddr;

use super::Balancer;
use crate::health::Snapshot;

/// Ring points per unit of weight.
const VNODES: usize = 100;
/// Most points on the ring; larger sets get proportionally fewer points per
/// backend (at least one), bounding memory and rebuild time.
const MAX_POINTS: usize = 1 << 20;

/// Client-IP affinity with minimal disruption.
#[derive(Debug, Default)]
pub struct IpHash {
    ring: Vec<(u64, usize)>,
    up: Vec<bool>,
    distinct_up: usize,
    /// (name, weight) of every backend the ring was built for: health
    /// changes only refresh `up`; the ring is rebuilt when the set changes.
    built_for: Vec<(String, u32)>,
}

/// FNV-1a followed by a 64-bit finaliser: stable across runs and platforms.
pub(crate) fn hash(bytes: &[u8]) -> u64 {
    finish(fnv(0xcbf2_9ce4_8422_2325, bytes))
}

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Hash of "name#v" without building the string.
fn point_hash(name_hash: u64, v: usize) -> u64 {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = v;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    finish(fnv(name_hash, &digits[i..]))
}

fn finish(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn ip_hash(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => hash(&v4.octets()),
        IpAddr::V6(v6) => hash(&v6.octets()),
    }
}

impl Balancer for IpHash {
    fn update(&mut self, snapshot: &Snapshot) {
        let set_changed = self.built_for.len() != snapshot.backends.len()
            || self
                .built_for
                .iter()
                .zip(&snapshot.backends)
                .any(|((n, w), b)| *n != b.backend.name || *w != b.backend.weight);
        if set_changed {
            self.ring.clear();
            let wanted: usize = snapshot
                .backends
                .iter()
                .map(|b| VNODES * b.backend.weight.max(1) as usize)
                .sum();
            for (i, b) in snapshot.backends.iter().enumerate() {
                let full = VNODES * b.backend.weight.max(1) as usize;
                let points = if wanted > MAX_POINTS {
                    (full * MAX_POINTS / wanted).max(1)
                } else {
                    full
                };
                let name_hash = fnv(
                    0xcbf2_9ce4_8422_2325,
                    format!("{}#", b.backend.name).as_bytes(),
                );
                for v in 0..points {
                    self.ring.push((point_hash(name_hash, v), i));
                }
            }
            self.ring.sort_unstable();
            self.built_for = snapshot
                .backends
                .iter()
                .map(|b| (b.backend.name.clone(), b.backend.weight))
                .collect();
        }
        self.up = snapshot.backends.iter().map(|b| b.routable()).collect();
        self.distinct_up = self.up.iter().filter(|&&u| u).count();
    }

    fn pick(&mut self, _: &Snapshot, client: IpAddr, exclude: Option<usize>) -> Option<usize> {
        if self.distinct_up == 0 || self.ring.is_empty() {
            return None;
        }
        let h = ip_hash(client);
        let start = self.ring.partition_point(|&(p, _)| p < h);
        let n = self.ring.len();
        let mut fallback = None;
        for k in 0..n {
            let (_, i) = self.ring[(start + k) % n];
            if !self.up[i] {
                continue;
            }
            if Some(i) == exclude && self.distinct_up > 1 {
                fallback.get_or_insert(i);
                continue;
            }
            return Some(i);
        }
        fallback
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::test_util::snapshot;

    fn ips() -> Vec<IpAddr> {
        (0..2000u32)
            .map(|i| IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]))
            .collect()
    }

    #[test]
    fn removing_a_backend_moves_only_its_clients() {
        let all = snapshot(&[1, 1, 1, 1], &[true, true, true, true]);
        let mut b = IpHash::default();
        b.update(&all);
        let before: Vec<_> = ips()
            .iter()
            .map(|&ip| b.pick(&all, ip, None).unwrap())
            .collect();
        let mut counts = [0; 4];
        for &i in &before {
            counts[i] += 1;
        }
        assert!(counts.iter().all(|&c| c > 300), "{counts:?}");
        let down = snapshot(&[1, 1, 1, 1], &[true, true, false, true]);
        b.update(&down);
        for (ip, &was) in ips().iter().zip(&before) {
            let now = b.pick(&down, *ip, None).unwrap();
            if was != 2 {
                assert_eq!(now, was, "client {ip} moved");
            } else {
                assert_ne!(now, 2);
            }
        }
    }

    #[test]
    fn point_hash_matches_the_string_form() {
        let name_hash = fnv(0xcbf2_9ce4_8422_2325, b"127.0.0.1:80#");
        for v in [0usize, 7, 99, 12345] {
            assert_eq!(
                point_hash(name_hash, v),
                hash(format!("127.0.0.1:80#{v}").as_bytes())
            );
        }
    }

    #[test]
    fn same_client_same_backend() {
        let s = snapshot(&[1, 1, 1], &[true, true, true]);
        let mut b = IpHash::default();
        b.update(&s);
        let ip = IpAddr::from([127, 0, 0, 1]);
        let first = b.pick(&s, ip, None);
        for _ in 0..10 {
            assert_eq!(b.pick(&s, ip, None), first);
        }
        assert_ne!(b.pick(&s, ip, first), first);
    }
}
