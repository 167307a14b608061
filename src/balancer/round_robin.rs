//! Strict rotation over the backends that are up.

use std::net::IpAddr;

use super::{Balancer, up_indices};
use crate::health::Snapshot;

/// Round robin: each worker rotates through the up backends in order.
#[derive(Debug, Default)]
pub struct RoundRobin {
    up: Vec<usize>,
    next: usize,
}

impl Balancer for RoundRobin {
    fn update(&mut self, snapshot: &Snapshot) {
        up_indices(snapshot, &mut self.up);
    }

    fn pick(&mut self, _: &Snapshot, _: IpAddr, exclude: Option<usize>) -> Option<usize> {
        let n = self.up.len();
        if n == 0 {
            return None;
        }
        let mut i = self.up[self.next % n];
        self.next = self.next.wrapping_add(1);
        if Some(i) == exclude && n > 1 {
            i = self.up[self.next % n];
            self.next = self.next.wrapping_add(1);
        }
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::test_util::snapshot;

    #[test]
    fn rotates_over_up_backends() {
        let s = snapshot(&[1, 1, 1], &[true, false, true]);
        let mut b = RoundRobin::default();
        b.update(&s);
        let ip = IpAddr::from([127, 0, 0, 1]);
        let picks: Vec<_> = (0..4).map(|_| b.pick(&s, ip, None).unwrap()).collect();
        assert_eq!(picks, vec![0, 2, 0, 2]);
        assert_eq!(b.pick(&s, ip, Some(0)), Some(2));
        let none = snapshot(&[1], &[false]);
        b.update(&none);
        assert_eq!(b.pick(&none, ip, None), None);
    }
}
