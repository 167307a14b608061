//! The core-local keep-alive pool: idle backend connections of one worker.
//!
//! Each worker owns one [`Pool`]; nothing in it is shared or locked. Per
//! backend it keeps at most `pool_size` idle connections in a LIFO stack (the
//! most recently used connection is the least likely to have been closed by
//! the backend's idle timeout). Idle connections grow with the worker count:
//! `workers x backends x pool_size` at most. The oldest idle connection is
//! dropped once it has been idle for the idle timeout (checked on every
//! return to the pool), so a pool shrinks back after a burst instead of
//! keeping its high-water mark of sockets forever.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use glommio::net::TcpStream;

use super::BackendId;
use crate::buffer::IoBuf;

/// Initial read buffer of a backend connection (grows for large heads).
pub const BACKEND_BUF: usize = 16 * 1024;
/// Read buffers kept for reuse per worker. An idle pooled connection holds
/// no buffer: it gives it back here and takes one when it is reused, so
/// memory follows the requests in flight, not the size of the pool.
const SPARE_BUFFERS: usize = 32;

/// One connection to a backend, with the bytes read from it but not consumed.
#[derive(Debug)]
pub struct BackendConn {
    /// The socket.
    pub stream: TcpStream,
    /// Bytes read and not yet relayed.
    pub buf: IoBuf,
    /// Whether this connection has carried a request before (a failure on a
    /// reused connection may be a stale keep-alive and is retried).
    pub reused: bool,
    idle_since: Instant,
}

impl BackendConn {
    /// This connection again, for its next request, when the backend has
    /// neither closed it nor sent bytes nobody asked for while it sat idle.
    pub fn reuse(mut self) -> Option<BackendConn> {
        if !idle_and_clean(&self.stream) {
            return None;
        }
        self.reused = true;
        Some(self)
    }

    /// Wraps a freshly connected socket.
    pub fn new(stream: TcpStream, max_header_bytes: usize) -> Self {
        crate::metrics::backend_conn_opened();
        BackendConn {
            stream,
            buf: IoBuf::new(BACKEND_BUF, max_header_bytes.max(BACKEND_BUF)),
            reused: false,
            idle_since: Instant::now(),
        }
    }
}

impl Drop for BackendConn {
    fn drop(&mut self) {
        crate::metrics::backend_conn_closed();
    }
}

/// True when an idle connection has nothing to read and is still open: a
/// non-blocking one-byte `MSG_PEEK` must find no data (`EAGAIN`). One cheap
/// syscall per reuse, the price of never handing a client bytes that were
/// not an answer to its request.
fn idle_and_clean(stream: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: recv(2) writes at most one byte into `byte`, which outlives
    // the call; the fd is owned by `stream` and open.
    let r = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

/// Idle connections per backend, for one worker.
#[derive(Debug, Default)]
pub struct Pool {
    slots: Vec<VecDeque<BackendConn>>,
    /// Read buffers of idle connections, for the next reused one.
    spare: Vec<Vec<u8>>,
    idle_timeout: Option<Duration>,
}

impl Pool {
    /// A pool keeping idle connections per backend, each for at most
    /// `idle_timeout`; how many per backend is the caller's (each backend's
    /// pool has its own `pool_size`).
    pub fn new(idle_timeout: Option<Duration>) -> Self {
        Pool {
            slots: Vec::new(),
            spare: Vec::new(),
            idle_timeout,
        }
    }

    /// Drops idle connections to `id` beyond `capacity` (a reload lowered
    /// its pool's `pool_size`), keeping the most recently used.
    pub fn trim(&mut self, id: BackendId, capacity: usize) {
        if let Some(slot) = self.slots.get_mut(id.0 as usize) {
            while slot.len() > capacity {
                slot.pop_front();
            }
        }
    }

    /// Takes the most recently returned idle connection to `id`, if any.
    pub fn take(&mut self, id: BackendId) -> Option<BackendConn> {
        let slot = self.slots.get_mut(id.0 as usize)?;
        while let Some(mut c) = slot.pop_back() {
            if let Some(t) = self.idle_timeout
                && c.idle_since.elapsed() > t
            {
                continue;
            }
            if !idle_and_clean(&c.stream) {
                // Closed by the backend, or it sent bytes nobody asked for
                // (a late or unsolicited response): never relay those as the
                // answer to the next request.
                continue;
            }
            c.reused = true;
            if let Some(storage) = self.spare.pop() {
                c.buf.attach(storage);
            }
            return Some(c);
        }
        None
    }

    /// Returns a connection for reuse; drops it when the backend already
    /// keeps `capacity` idle ones.
    pub fn put(&mut self, id: BackendId, mut conn: BackendConn, capacity: usize) {
        let i = id.0 as usize;
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, VecDeque::new);
        }
        let slot = &mut self.slots[i];
        let now = Instant::now();
        if let Some(t) = self.idle_timeout {
            // The bottom of the stack is the longest idle.
            while slot
                .front()
                .is_some_and(|c| now.duration_since(c.idle_since) > t)
            {
                slot.pop_front();
            }
        }
        if slot.len() < capacity {
            conn.buf.clear();
            let storage = conn.buf.release();
            // Grown buffers (large heads) are not kept: they go back to the
            // allocator.
            if self.spare.len() < SPARE_BUFFERS && storage.len() == BACKEND_BUF {
                self.spare.push(storage);
            }
            conn.idle_since = now;
            slot.push_back(conn);
        }
    }

    /// Drops every idle connection to `id` (backend removed or marked down).
    pub fn clear(&mut self, id: BackendId) {
        if let Some(slot) = self.slots.get_mut(id.0 as usize) {
            slot.clear();
        }
    }

    /// Idle connections to `id`.
    pub fn idle(&self, id: BackendId) -> usize {
        self.slots.get(id.0 as usize).map_or(0, VecDeque::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::LocalExecutorBuilder;

    #[test]
    fn a_pool_shrinks_back_after_a_burst_and_reuses_buffers() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = std::thread::spawn(move || {
            (0..4)
                .map(|_| listener.accept().unwrap().0)
                .collect::<Vec<_>>()
        });
        LocalExecutorBuilder::default()
            .spawn(move || async move {
                let id = BackendId(0);
                let mut pool = Pool::new(Some(Duration::from_millis(50)));
                let mut conns = Vec::new();
                for _ in 0..4 {
                    let s = TcpStream::connect(addr).await.unwrap();
                    conns.push(BackendConn::new(s, 64 * 1024));
                }
                let last = conns.pop().unwrap();
                for c in conns {
                    pool.put(id, c, 8);
                }
                assert_eq!(pool.idle(id), 3);
                // Idle connections hold no buffer; three were stashed.
                assert!(pool.slots[0].iter().all(|c| c.buf.is_released()));
                assert_eq!(pool.spare.len(), 3);
                glommio::timer::sleep(Duration::from_millis(80)).await;
                // The burst's connections expired: returning one more drops
                // them from the bottom of the stack.
                pool.put(id, last, 8);
                assert_eq!(pool.idle(id), 1);
                // A reused connection gets a stashed buffer back.
                let c = pool.take(id).expect("the fresh one");
                assert!(!c.buf.is_released() && c.reused);
                assert_eq!(pool.spare.len(), 3);
            })
            .unwrap()
            .join()
            .unwrap();
        drop(accepted.join().unwrap());
    }
}
