//! [`Stash`]: a worker's spare client-request buffers.
//!
//! A client connection holds buffers only while it has a request to read or
//! serve: its read buffer's storage and the two output buffers (the
//! forwarded request head, the relayed response head) travel as one
//! [`RequestBufs`]. When the connection goes idle (waiting for its first or
//! next request) it gives the set back here, and takes one again when bytes
//! arrive, so idle keep-alive connections cost no buffer memory and a busy
//! worker reuses the same few sets without touching the allocator.
//!
//! The stash is bounded ([`SPARE_SETS`] sets, output buffers above
//! [`OUT_KEEP`] not kept), so a burst of requests does not pin its
//! high-water mark of buffers once it is over. It knows nothing of sockets
//! or HTTP; backend read buffers have their own spares in the pool.

/// Sets kept per worker: enough for the connections of a busy worker that
/// are idle at the same instant (between a response and the next request),
/// small enough that a burst pins little once it is over (typically
/// `16 x ~5 KiB`, at most `16 x (4 KiB + 2 x OUT_KEEP)`). A miss costs a
/// few allocations, nothing more.
pub const SPARE_SETS: usize = 16;

/// Largest output buffer kept. A head is far smaller; what grows past this
/// carried a coalesced request body or a relayed response body, and goes
/// back to the allocator instead of being pinned here.
pub const OUT_KEEP: usize = 16 * 1024;

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
#[derive(Debug, Default)]
pub struct Stash {
    spare: Vec<RequestBufs>,
}

impl Stash {
    /// A spare set, or an empty one (its buffers allocate on first use)
    /// when none is left.
    pub fn take(&mut self) -> RequestBufs {
        self.spare.pop().unwrap_or_default()
    }

    /// Keeps `bufs` for the next request, emptied; output buffers that
    /// grew past [`OUT_KEEP`] are freed, and so is the whole set once
    /// [`SPARE_SETS`] are kept. `read` must hold no live bytes.
    pub fn give(&mut self, mut bufs: RequestBufs) {
        if self.spare.len() >= SPARE_SETS {
            return;
        }
        for out in [&mut bufs.head_out, &mut bufs.resp_out] {
            out.clear();
            if out.capacity() > OUT_KEEP {
                *out = Vec::new();
            }
        }
        if !bufs.is_unallocated() {
            self.spare.push(bufs);
        }
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

        for _ in 0..SPARE_SETS + 10 {
            s.give(RequestBufs {
                read: vec![0; 16],
                ..RequestBufs::default()
            });
        }
        assert_eq!(s.len(), SPARE_SETS);
    }
}
