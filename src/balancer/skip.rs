//! The backends one select passes over: those the caller excludes and
//! those it refused. Owns the marks and the order in which exclusions lift
//! (all but the latest, then the latest); when they lift and that a
//! refusal is final are the parent module's rules.
//!
//! A mark per snapshot index holds the stamp of the select that passed
//! over it: `stamp` when excluded, `stamp + 1` when refused. A new select
//! moves the stamp on, which clears every mark at once, so testing, adding
//! and clearing are O(1) and nothing is allocated after an update.

/// The backends a strategy must not choose in this select.
#[derive(Debug)]
pub struct Skip {
    /// Per snapshot index: the stamp of the last select that passed over
    /// it (see the module doc). Sized on update.
    mark: Vec<u32>,
    /// This select's stamp: even, so `stamp + 1` marks a refusal.
    stamp: u32,
    /// Backends excluded by the caller in this select.
    excluded: usize,
    /// Backends refused in this select.
    refused: usize,
    /// The latest exclusion (a retry's last backend): the last to lift.
    latest: Option<usize>,
    /// Exclusions no longer apply, but for `latest` while it is set.
    lifted: bool,
}

impl Default for Skip {
    fn default() -> Self {
        Skip {
            mark: Vec::new(),
            // Marks start at 0: a stamp above it leaves every index unmarked.
            stamp: 2,
            excluded: 0,
            refused: 0,
            latest: None,
            lifted: false,
        }
    }
}

impl Skip {
    /// True when nothing is passed over: the strategy's plain path.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.refused == 0 && (self.excluded == 0 || self.lifted && self.latest.is_none())
    }

    /// True when the backend at snapshot index `i` must not be chosen.
    #[inline]
    pub fn contains(&self, i: usize) -> bool {
        match self.mark.get(i) {
            Some(&m) => {
                m == self.stamp + 1 || (m == self.stamp && (!self.lifted || self.latest == Some(i)))
            }
            None => false,
        }
    }

    /// Makes room for a snapshot of `n` backends (on update, not per select).
    pub(super) fn resize(&mut self, n: usize) {
        self.mark.resize(n, 0);
    }

    /// Starts a new select: nothing passed over.
    pub(super) fn clear(&mut self) {
        if self.stamp >= u32::MAX - 2 {
            // Once every 2^31 selects: old stamps could come round again.
            self.mark.fill(0);
            self.stamp = 0;
        }
        self.stamp += 2;
        self.excluded = 0;
        self.refused = 0;
        self.latest = None;
        self.lifted = false;
    }

    /// Excludes snapshot index `i` (ignored when out of range), the latest
    /// exclusion so far.
    pub(super) fn exclude(&mut self, i: usize) {
        if let Some(m) = self.mark.get_mut(i) {
            if *m != self.stamp {
                *m = self.stamp;
                self.excluded += 1;
            }
            self.latest = Some(i);
        }
    }

    /// Refuses snapshot index `i` for the rest of the select; false when it
    /// already was (or is out of range).
    pub(super) fn refuse(&mut self, i: usize) -> bool {
        match self.mark.get_mut(i) {
            Some(m) if *m != self.stamp + 1 => {
                *m = self.stamp + 1;
                self.refused += 1;
                true
            }
            _ => false,
        }
    }

    /// Lets excluded backends be chosen again: all but the latest, then
    /// the latest too. False when there is nothing left to lift.
    pub(super) fn lift_exclusions(&mut self) -> bool {
        if self.excluded == 0 {
            return false;
        }
        if !self.lifted {
            self.lifted = true;
            if self.excluded == 1 {
                self.latest = None;
            }
            return true;
        }
        self.latest.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_clear_with_each_select_and_exclusions_lift() {
        let mut s = Skip::default();
        s.resize(4);
        s.clear();
        assert!(s.is_empty() && !s.contains(0));
        s.exclude(1);
        s.exclude(1);
        s.exclude(9);
        assert!(s.refuse(2) && !s.refuse(2) && !s.refuse(9));
        assert!(!s.is_empty() && s.contains(1) && s.contains(2) && !s.contains(3));
        assert!(s.lift_exclusions() && !s.lift_exclusions());
        assert!(!s.contains(1) && s.contains(2));
        assert!(s.refuse(1) && s.contains(1));
        s.clear();
        assert!(s.is_empty() && (0..4).all(|i| !s.contains(i)));
        assert!(!s.lift_exclusions());
        // The latest exclusion lifts last.
        s.exclude(3);
        s.exclude(0);
        s.exclude(1);
        assert!(s.lift_exclusions());
        assert!(!s.contains(3) && !s.contains(0) && s.contains(1) && !s.is_empty());
        assert!(s.lift_exclusions() && !s.lift_exclusions());
        assert!(!s.contains(1) && s.is_empty());
    }

    #[test]
    fn stamps_wrapping_round_clear_old_marks() {
        let mut s = Skip::default();
        s.resize(2);
        s.clear();
        s.stamp = u32::MAX - 1;
        s.exclude(0);
        assert!(s.refuse(1));
        assert_eq!(s.mark, [u32::MAX - 1, u32::MAX]);
        s.clear();
        assert_eq!(s.stamp, 2);
        assert!(!s.contains(0) && !s.contains(1));
    }
}
