//! [`Stash`]: a worker's spare client-request buffers, and [`Spares`], the
//! adaptive bounded free list behind it (and behind the pool's spare
//! backend read buffers).
//!
//! A client connection holds buffers only while it has a request to read or
//! serve: its read buffer's storage and the two output buffers (the
//! forwarded request head, the relayed response head) travel as one
//! [`RequestBufs`]. When the connection goes idle (waiting for its first or
//! next request) it gives the set back here, and takes one again when bytes
//! arrive, so idle keep-alive connections cost no buffer memory and a busy
//! worker reuses the same sets without touching the allocator.
//!
//! How many are kept follows the load. A [`Spares`] starts bounded at its
//! base; when a give finds it full after a take found it empty (the worker
//! is freeing and allocating the same buffers over and over), the bound
//! doubles, up to a hard maximum. Every [`Spares::trim`] (a worker calls it
//! every [`TRIM_EVERY`]) frees the items that sat unused through the whole
//! period and lowers the bound by as many, so a burst's buffers go back to
//! the allocator within two periods of its end, and a long-running worker
//! keeps only what its recent load reused. It knows nothing of sockets or
//! HTTP.

use std::time::Duration;

/// How often a worker trims its spares (see [`Spares::trim`]).
pub const TRIM_EVERY: Duration = Duration::from_secs(2);

/// Sets kept per worker at rest: enough for the connections of a quiet
/// worker that are idle at the same instant (between a response and the
/// next request); typically `16 x ~5 KiB`, at most
/// `16 x (4 KiB + 2 x OUT_KEEP)`. A busy worker keeps more (see the module
/// docs), up to [`MAX_SETS`].
pub const SPARE_SETS: usize = 16;

/// The most sets a worker keeps however busy (about 5 MiB of typical sets).
pub const MAX_SETS: usize = 1024;

/// Largest output buffer kept. A head is far smaller; what grows past this
/// carried a coalesced request body or a relayed response body, and goes
/// back to the allocator instead of being pinned here.
pub const OUT_KEEP: usize = 16 * 1024;

/// A bounded free list whose bound adapts to the load (see the module
/// docs). Core-local; the caller keeps it behind a `RefCell`.
#[derive(Debug)]
pub struct Spares<T> {
    items: Vec<T>,
    /// Items kept at most now, between `base` and `max`.
    cap: usize,
    base: usize,
    max: usize,
    /// A take found nothing since the last trim.
    missed: bool,
    /// Fewest items kept since the last trim: the bottom `low` items of the
    /// stack were never taken in this period.
    low: usize,
}

impl<T> Spares<T> {
    /// An empty list bounded at `base` items, which may grow to `max`.
    pub const fn new(base: usize, max: usize) -> Self {
        Spares {
            items: Vec::new(),
            cap: base,
            base,
            max,
            missed: false,
            low: 0,
        }
    }

    /// The most recently kept item, if any.
    pub fn take(&mut self) -> Option<T> {
        let item = self.items.pop();
        if item.is_none() {
            self.missed = true;
        }
        self.low = self.low.min(self.items.len());
        item
    }

    /// Keeps `item` when the bound allows, raising the bound first when
    /// a take went without in this period; drops it otherwise.
    pub fn give(&mut self, item: T) {
        if self.items.len() >= self.cap && self.missed && self.cap < self.max {
            self.cap = (self.cap * 2).min(self.max);
        }
        if self.items.len() < self.cap {
            self.items.push(item);
        }
    }

    /// Ends a period: frees the items no take reached in it, and bounds
    /// the list at what was reached (never below the base).
    pub fn trim(&mut self) {
        let unused = self.low.min(self.items.len());
        self.cap = (self.items.len() - unused).max(self.base);
        self.items.truncate(self.cap);
        self.missed = false;
        self.low = self.items.len();
    }

    /// Items kept now.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The current bound.
    pub fn cap(&self) -> usize {
        self.cap
    }
}

/// The buffers one client request needs, given back as one set.
#[derive(Debug, Default)]
pub struct RequestBufs {
    /// Storage of the client read buffer (see `IoBuf::release` and
    /// `IoBuf::attach`); empty when the connection should allocate its own.
    pub read: Vec<u8>,
    /// The forwarded request head (and small request bodies).
    pub head_out: Vec<u8>,
    /// The rewritten response head (and relayed body bytes).
    pub resp_out: Vec<u8>,
}

impl RequestBufs {
    /// True when the set holds no memory at all.
    fn is_unallocated(&self) -> bool {
        self.read.capacity() == 0 && self.head_out.capacity() == 0 && self.resp_out.capacity() == 0
    }
}

/// Spare [`RequestBufs`] of one worker (core-local, behind a `RefCell`).
#[derive(Debug)]
pub struct Stash {
    spare: Spares<RequestBufs>,
}

impl Default for Stash {
    fn default() -> Self {
        Stash {
            spare: Spares::new(SPARE_SETS, MAX_SETS),
        }
    }
}

impl Stash {
    /// A spare set, or an empty one (its buffers allocate on first use)
    /// when none is left.
    pub fn take(&mut self) -> RequestBufs {
        self.spare.take().unwrap_or_default()
    }

    /// Keeps `bufs` for the next request, emptied, when the bound allows;
    /// output buffers that grew past [`OUT_KEEP`] are freed. `read` must
    /// hold no live bytes.
    pub fn give(&mut self, mut bufs: RequestBufs) {
        for out in [&mut bufs.head_out, &mut bufs.resp_out] {
            out.clear();
            if out.capacity() > OUT_KEEP {
                *out = Vec::new();
            }
        }
        if !bufs.is_unallocated() {
            self.spare.give(bufs);
        }
    }

    /// Frees what the last period did not reuse (see [`Spares::trim`]).
    pub fn trim(&mut self) {
        self.spare.trim();
    }

    /// Sets kept now.
    pub fn len(&self) -> usize {
        self.spare.len()
    }

    /// True when no set is kept.
    pub fn is_empty(&self) -> bool {
        self.spare.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_reused_bounded_and_trimmed() {
        let mut s = Stash::default();
        // Nothing kept: an empty set that allocates on first use.
        let b = s.take();
        assert!(b.is_unallocated());
        s.give(b);
        assert!(s.is_empty(), "an empty set is not worth keeping");

        let mut b = RequestBufs {
            read: vec![0; 4096],
            head_out: Vec::with_capacity(512),
            resp_out: Vec::with_capacity(OUT_KEEP + 1),
        };
        b.head_out.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        s.give(b);
        assert_eq!(s.len(), 1);
        let b = s.take();
        assert_eq!(b.read.len(), 4096);
        assert!(b.head_out.is_empty() && b.head_out.capacity() >= 512);
        assert_eq!(b.resp_out.capacity(), 0, "grown output buffers are freed");

        // In a period where no take went without, the bound stays at its
        // base.
        s.trim();
        for _ in 0..SPARE_SETS + 10 {
            s.give(RequestBufs {
                read: vec![0; 16],
                ..RequestBufs::default()
            });
        }
        assert_eq!(s.len(), SPARE_SETS);
    }

    /// Churn (gives finding the list full after takes found it empty)
    /// raises the bound, up to its maximum; periods in which items sit
    /// unused bring it and the items back down to the base.
    #[test]
    fn spares_follow_the_load_and_give_a_burst_back() {
        let mut s: Spares<u32> = Spares::new(4, 64);
        // A busy worker: 40 in flight, all coming back together, twice.
        for _ in 0..2 {
            let taken: Vec<u32> = (0..40).map(|i| s.take().unwrap_or(i)).collect();
            for t in taken {
                s.give(t);
            }
        }
        assert_eq!(s.len(), 40, "the second round allocated nothing");
        assert!(s.cap() >= 40);
        // Steady load keeps them: every item was taken in this period.
        s.trim();
        assert_eq!(s.len(), 40);
        // A quiet period (a few takes at a time) frees the rest.
        for _ in 0..3 {
            let a = s.take().unwrap();
            s.give(a);
        }
        s.trim();
        assert_eq!(s.len(), 4);
        assert_eq!(s.cap(), 4);
        // Never above the maximum.
        for _ in 0..3 {
            let taken: Vec<u32> = (0..100).map(|i| s.take().unwrap_or(i)).collect();
            for t in taken {
                s.give(t);
            }
        }
        assert_eq!(s.len(), 64);
        assert_eq!(s.cap(), 64);
        // An idle worker keeps the base.
        s.trim();
        s.trim();
        assert_eq!(s.len(), 4);
    }
}
