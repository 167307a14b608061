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
use crate::stash::Spares;

/// Read buffer of a backend connection: a response head and a body of up
/// to about 32 KiB arrive in one read and leave in one write.
pub const BACKEND_BUF: usize = 32 * 1024;
/// What a backend read buffer may grow to while a long body streams
/// through it (it goes back to [`BACKEND_BUF`] before it is reused). Heads
/// are held to `max_header_bytes` by the parser, not by this.
pub const BACKEND_BUF_MAX: usize = 64 * 1024;
/// Read buffers kept for reuse per worker at rest. An idle pooled
/// connection holds no buffer: it gives it back here and takes one when it
/// is reused, so memory follows the requests in flight, not the size of
/// the pool. A busy worker keeps more, as its load reuses them (see
/// [`Spares`]), up to [`MAX_SPARE_BUFFERS`].
const SPARE_BUFFERS: usize = 32;
/// The most read buffers a worker keeps however busy (8 MiB).
const MAX_SPARE_BUFFERS: usize = 256;
/// A connection idle at least this long is checked with a `MSG_PEEK`
/// syscall before reuse; one idle less is checked against the readiness
/// poll glommio already keeps armed on it, which costs no syscall.
pub const PEEK_AFTER: Duration = Duration::from_secs(1);

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
        if !idle_and_clean(&mut self.stream, self.idle_since.elapsed()) {
            return None;
        }
        self.reused = true;
        Some(self)
    }

    /// Marks the connection idle from now (its response is relayed).
    pub fn mark_idle(&mut self) {
        self.idle_since = Instant::now();
    }

    /// Wraps a freshly connected socket.
    pub fn new(stream: TcpStream, max_header_bytes: usize) -> Self {
        crate::metrics::backend_conn_opened();
        BackendConn {
            stream,
            buf: IoBuf::new(BACKEND_BUF, max_header_bytes.max(BACKEND_BUF_MAX)),
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

/// True when an idle connection has nothing to read and is still open,
/// checked without a syscall when it has been idle less than
/// [`PEEK_AFTER`] (see [`poll_clean`]) and with a `MSG_PEEK` otherwise (see
/// [`peek_clean`]). Either way no byte that was not an answer to the next
/// request is ever relayed as one: a connection with bytes waiting is
/// dropped.
fn idle_and_clean(stream: &mut TcpStream, idle: Duration) -> bool {
    if idle >= PEEK_AFTER {
        peek_clean(stream)
    } else {
        poll_clean(stream)
    }
}

/// The no-syscall check: polls one read with a waker that does nothing.
///
/// The last read of a response was short (the response ended before the
/// buffer did), so glommio armed a readiness poll on the socket then, and
/// while that poll has not completed the read returns `Pending` at once:
/// nothing arrived (no byte, no FIN, no reset) up to the reactor's last
/// pass, which on a connection idle under [`PEEK_AFTER`] is as fresh as a
/// `MSG_PEEK` made a moment earlier. When the poll did complete, or none is
/// armed, glommio tries a non-blocking `recv` of one byte: a byte (dirty),
/// 0 (closed) or an error all mean "drop it", and `EAGAIN` arms a poll and
/// returns `Pending` (clean).
///
/// See [`crate::io_now::read_now`] for how the read timeout survives.
fn poll_clean(stream: &mut TcpStream) -> bool {
    crate::io_now::read_now(stream, &mut [0u8; 1]).is_none()
}

/// The syscall check, for connections idle a while: a non-blocking
/// one-byte `MSG_PEEK` must find no data (`EAGAIN`).
fn peek_clean(stream: &TcpStream) -> bool {
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
#[derive(Debug)]
pub struct Pool {
    slots: Vec<VecDeque<BackendConn>>,
    /// Read buffers of idle connections, for the next reused one.
    spare: Spares<Vec<u8>>,
    idle_timeout: Option<Duration>,
}

impl Pool {
    /// A pool keeping idle connections per backend, each for at most
    /// `idle_timeout`; how many per backend is the caller's (each backend's
    /// pool has its own `pool_size`).
    pub fn new(idle_timeout: Option<Duration>) -> Self {
        Pool {
            slots: Vec::new(),
            spare: Spares::new(SPARE_BUFFERS, MAX_SPARE_BUFFERS),
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
            let idle = c.idle_since.elapsed();
            if self.idle_timeout.is_some_and(|t| idle > t) {
                continue;
            }
            if !idle_and_clean(&mut c.stream, idle) {
                // Closed by the backend, or it sent bytes nobody asked for
                // (a late or unsolicited response): never relay those as the
                // answer to the next request.
                continue;
            }
            c.reused = true;
            if let Some(storage) = self.spare.take() {
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
            if storage.len() == BACKEND_BUF {
                self.spare.give(storage);
            }
            conn.idle_since = now;
            slot.push_back(conn);
        }
    }

    /// Frees the spare read buffers the last period did not reuse (see
    /// [`Spares::trim`]).
    pub fn trim_spares(&mut self) {
        self.spare.trim();
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

    /// The no-syscall check sees a byte or a close that arrived while the
    /// connection sat idle (after a short read armed glommio's poll), and
    /// leaves the read timeout working for the read that follows a clean
    /// check (glommio would otherwise keep the check's do-nothing waker for
    /// its timer, and that read would hang).
    #[test]
    fn the_poll_check_sees_late_bytes_and_closes_and_keeps_the_read_timeout() {
        use futures_lite::AsyncReadExt;
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<&'static str>();
        let peer = std::thread::spawn(move || {
            let mut socks: Vec<std::net::TcpStream> =
                (0..3).map(|_| listener.accept().unwrap().0).collect();
            for s in &mut socks {
                s.write_all(b"answer").unwrap();
            }
            // Wait until each connection has read its answer and is idle.
            assert_eq!(rx.recv().unwrap(), "idle");
            socks[0].write_all(b"X").unwrap();
            socks[1].shutdown(std::net::Shutdown::Both).unwrap();
            assert_eq!(rx.recv().unwrap(), "done");
        });
        LocalExecutorBuilder::default()
            .spawn(move || async move {
                let mut streams = Vec::new();
                for _ in 0..3 {
                    streams.push(TcpStream::connect(addr).await.unwrap());
                }
                let mut conns = Vec::new();
                for mut s in streams {
                    s.set_read_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    let mut buf = [0u8; 64];
                    // A short read, as at the end of a response.
                    let n = s.read(&mut buf).await.unwrap();
                    assert_eq!(&buf[..n], b"answer");
                    let mut c = BackendConn::new(s, 1024);
                    c.mark_idle();
                    conns.push(c);
                }
                tx.send("idle").unwrap();
                // Let the byte and the FIN arrive and the reactor see them.
                glommio::timer::sleep(Duration::from_millis(50)).await;
                let mut third = conns.pop().unwrap();
                let mut closed = conns.pop().unwrap();
                let mut dirty = conns.pop().unwrap();
                assert!(dirty.idle_since.elapsed() < PEEK_AFTER);
                assert!(!poll_clean(&mut dirty.stream), "late byte not seen");
                assert!(!poll_clean(&mut closed.stream), "close not seen");
                assert!(poll_clean(&mut third.stream), "clean connection refused");
                assert_eq!(
                    third.stream.read_timeout(),
                    Some(Duration::from_millis(200))
                );
                // The read after a clean check still times out.
                let t = Instant::now();
                let mut buf = [0u8; 8];
                let r = glommio::timer::timeout(Duration::from_secs(3), async {
                    Ok(third.stream.read(&mut buf).await)
                })
                .await
                .expect("the read hung: its timeout was lost");
                assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
                assert!(t.elapsed() < Duration::from_secs(1));
                tx.send("done").unwrap();
            })
            .unwrap()
            .join()
            .unwrap();
        peer.join().unwrap();
    }
}
