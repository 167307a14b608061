//! [`IoBuf`]: the read buffer of one connection (client or backend).
//!
//! Heads are parsed in place from it and forwarded as slices of it. It is a
//! `Vec<u8>` that is initialised once and then reused: reads go straight into
//! its free tail with no zeroing per read and no `unsafe` (a `BytesMut` would
//! need either), consumed bytes are skipped by an offset, and the live bytes
//! move to the front only when the tail is full. It grows (up to a limit) only
//! when a single head does not fit.
//!
//! A buffer can hold no storage at all ([`IoBuf::unallocated`],
//! [`IoBuf::release`]): idle connections, client or pooled backend, give
//! their storage back to a per-worker spare list and [`IoBuf::attach`] one
//! again when they have bytes to read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_lite::{AsyncRead, AsyncReadExt};

/// A growable read buffer with a consumed prefix.
#[derive(Debug)]
pub struct IoBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
    initial: usize,
    max: usize,
}

impl IoBuf {
    /// A buffer of `initial` bytes that may grow to `max`.
    pub fn new(initial: usize, max: usize) -> Self {
        IoBuf {
            data: vec![0; initial],
            start: 0,
            end: 0,
            initial,
            max: max.max(initial),
        }
    }

    /// A buffer like [`IoBuf::new`] that holds no storage yet: its first
    /// read allocates `initial` bytes, unless [`IoBuf::attach`] gave it some.
    pub fn unallocated(initial: usize, max: usize) -> Self {
        IoBuf {
            data: Vec::new(),
            start: 0,
            end: 0,
            initial,
            max: max.max(initial),
        }
    }

    /// The bytes read and not yet consumed.
    #[inline]
    pub fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    /// Number of unconsumed bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// True when every byte read has been consumed.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Marks `n` bytes at the front as consumed.
    #[inline]
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n.min(self.len());
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Drops every unconsumed byte.
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// True when no more bytes fit (the buffer is at its limit and full).
    pub fn is_full(&self) -> bool {
        self.start == 0 && self.end == self.data.len() && self.data.len() >= self.max
    }

    /// Returns the buffer to its initial size if it grew and holds nothing,
    /// so an idle connection does not keep a large buffer.
    pub fn shrink_if_idle(&mut self) {
        if self.is_empty() && self.data.len() > self.initial {
            self.data = vec![0; self.initial];
        }
    }

    /// Grows the buffer to at least `n` bytes (bounded by its limit) so a
    /// long body is relayed in large reads; [`IoBuf::shrink_if_idle`] gives
    /// the memory back once the connection is idle.
    pub fn ensure_capacity(&mut self, n: usize) {
        let n = n.min(self.max);
        if self.data.len() < n {
            self.data.resize(n, 0);
        }
    }

    /// The free tail to read into, making room first (compact, then grow).
    /// Gives up the storage (for an idle connection that should not hold
    /// memory); the buffer must be empty. A later read allocates again, or
    /// takes storage handed back with [`IoBuf::attach`].
    pub fn release(&mut self) -> Vec<u8> {
        debug_assert!(self.is_empty());
        self.start = 0;
        self.end = 0;
        std::mem::take(&mut self.data)
    }

    /// Uses `storage` (from [`IoBuf::release`] of another buffer of the same
    /// kind) instead of allocating; only while this buffer holds none.
    pub fn attach(&mut self, storage: Vec<u8>) {
        if self.data.is_empty() && storage.len() >= self.initial {
            self.data = storage;
            self.start = 0;
            self.end = 0;
        }
    }

    /// True while the buffer holds no storage (released).
    pub fn is_released(&self) -> bool {
        self.data.is_empty()
    }

    /// True when the last read reached the end of the storage: the sender
    /// may have more ready than fitted.
    pub fn filled_to_end(&self) -> bool {
        !self.data.is_empty() && self.end == self.data.len()
    }

    /// The most live bytes this buffer can hold.
    pub fn limit(&self) -> usize {
        self.max
    }

    /// Reads into the free tail (making room as a read does) with `read`,
    /// which returns `None` when nothing could be read at once.
    pub fn read_with(
        &mut self,
        read: impl FnOnce(&mut [u8]) -> Option<io::Result<usize>>,
    ) -> Option<io::Result<usize>> {
        let spare = self.spare();
        if spare.is_empty() {
            return Some(Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "read buffer full",
            )));
        }
        let r = read(spare);
        if let Some(Ok(n)) = r {
            self.end += n;
        }
        r
    }

    /// The free tail to read into, making room first when the last read
    /// reached the end: grow (up to the limit) while the live bytes fill
    /// more than half of it, else move them to the front.
    fn spare(&mut self) -> &mut [u8] {
        if self.data.is_empty() {
            self.data.resize(self.initial, 0);
        }
        if self.end == self.data.len() {
            let live = self.end - self.start;
            if self.data.len() < self.max && (self.start == 0 || live > self.data.len() / 2) {
                let new_len = (self.data.len() * 2).min(self.max);
                self.data.resize(new_len, 0);
            } else if self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
        }
        &mut self.data[self.end..]
    }

    /// Polls one read from `r` into the free tail, like
    /// [`IoBuf::read_from`]. The buffer is lent to `r` for this call only,
    /// so while it is `Pending` the caller may [`IoBuf::release`] the
    /// storage and attach it again before the next poll.
    pub fn poll_read_from<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
    ) -> Poll<io::Result<usize>> {
        let spare = self.spare();
        if spare.is_empty() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "read buffer full",
            )));
        }
        let n = ready!(Pin::new(r).poll_read(cx, spare))?;
        self.end += n;
        Poll::Ready(Ok(n))
    }

    /// Reads once from `r` into the free tail; returns the bytes read
    /// (0 at end of stream). Errors with `OutOfMemory` when full.
    pub async fn read_from<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> io::Result<usize> {
        let spare = self.spare();
        if spare.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "read buffer full",
            ));
        }
        let n = r.read(spare).await?;
        self.end += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_storage_is_reattached_or_reallocated() {
        futures_lite::future::block_on(async {
            let mut a = IoBuf::new(4, 8);
            let mut src: &[u8] = b"abcdefgh";
            assert_eq!(a.read_from(&mut src).await.unwrap(), 4);
            a.consume(4);
            let storage = a.release();
            assert!(a.is_released() && storage.len() == 4);
            // Released: reads allocate again.
            assert_eq!(a.read_from(&mut src).await.unwrap(), 4);
            assert_eq!(a.filled(), b"efgh");
            // Another buffer takes the storage instead of allocating.
            let mut b = IoBuf::new(4, 8);
            b.consume(0);
            let _ = b.release();
            b.attach(storage);
            assert!(!b.is_released());
            let mut src2: &[u8] = b"ij";
            assert_eq!(b.read_from(&mut src2).await.unwrap(), 2);
            assert_eq!(b.filled(), b"ij");
        });
    }

    #[test]
    fn compacts_grows_and_shrinks() {
        futures_lite::future::block_on(async {
            let mut b = IoBuf::new(4, 8);
            let mut src: &[u8] = b"abcdefghijkl";
            assert_eq!(b.read_from(&mut src).await.unwrap(), 4);
            b.consume(2);
            assert_eq!(b.filled(), b"cd");
            assert_eq!(b.read_from(&mut src).await.unwrap(), 2);
            assert_eq!(b.filled(), b"cdef");
            assert_eq!(b.read_from(&mut src).await.unwrap(), 4);
            assert_eq!(b.filled(), b"cdefghij");
            assert!(b.is_full());
            assert!(b.read_from(&mut src).await.is_err());
            b.consume(8);
            assert!(b.is_empty());
            b.shrink_if_idle();
            assert_eq!(b.data.len(), 4);
        });
    }
}
