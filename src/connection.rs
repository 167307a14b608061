//! One client connection: the keep-alive loop and its timeouts.
//!
//! Life of a connection:
//!
//! ```text
//! accept -> [idle: wait for a request, keepalive_timeout]
//!        -> [head: read until the head is complete, client_header_timeout]
//!        -> proxy (proxy.rs) -> keep-alive? back to idle : close
//! ```
//!
//! Pipelined requests are served one after the other from the same buffer,
//! so answers go out in order. A malformed head is answered with its status
//! (400, 414, 431, 505, ...) and the connection is closed, since what follows
//! it cannot be framed. During a drain, an idle connection is closed and a
//! busy one closes after its current response.
//!
//! Idle connections are cheap (under 1 KB of RSS each, glommio's share
//! included, see `tools/idle-conns.py`): a connection waiting for its
//! first or next request holds no buffer and no timer (the worker's idle
//! sweep enforces its timeout). It gives its read buffer and its two output
//! buffers back to the worker's [`Stash`](crate::stash::Stash) and takes a
//! set only for the poll of its read that finds bytes (see `read_parked`):
//! the wait itself is glommio's readiness poll, which holds no buffer.
//! The proxying of a request, its access-log capture included, is a large
//! future; it is boxed for the time of the request, so the connection's
//! own task stays small while it waits.

use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::task::{Poll, ready};
use std::time::{Duration, Instant};

use futures_lite::{AsyncWriteExt, future};
use glommio::net::TcpStream;
use tracing::debug;

use crate::access_log;
use crate::buffer::IoBuf;
use crate::context::Context;
use crate::error::ProxyError;
use crate::http::BodyFraming;
use crate::http::canned;
use crate::http::forwarded::Forwarding;
use crate::http::request::Method;
use crate::http::request::{self, RequestHead};
use crate::proxy::{self, BODY_BUF, Client, Served};
use crate::proxy_protocol;
use crate::request_id::RequestId;
use crate::stash::RequestBufs;

/// Initial client read buffer: most request heads fit. It grows for large
/// heads (up to `max_header_bytes`) and for long bodies (to [`BODY_BUF`]);
/// a grown buffer is freed when the connection goes idle, one of this size
/// goes back to the worker's stash.
pub const CLIENT_BUF: usize = 4 * 1024;

/// A connection's entry in its worker's drain registry: the worker learns
/// when the connection waits idle and for how long (a drain, or the end of
/// that time, makes its read return end-of-stream), and the entry is
/// removed when the value is dropped.
pub trait Registration {
    /// Marks the connection idle on socket `fd` for at most the given time,
    /// or busy again (`None`).
    fn set_idle(&self, idle: Option<(RawFd, Duration)>);
}

/// Serves one accepted connection until it closes. `register` enters it in
/// the worker's drain registry (right away, before the task first runs).
///
/// A plain function returning the connection's task, so the task keeps one
/// copy of the connection's state (an `async fn` would also keep its
/// arguments). While the connection is idle the task holds that state and a
/// small read future; a request's work, proxying included, is a boxed
/// future that lives only as long as the request.
pub fn serve<R: Registration>(
    w: Rc<Context>,
    stream: TcpStream,
    register: impl FnOnce() -> R,
) -> impl Future<Output = ()> {
    let addrs = stream.peer_addr().ok().zip(stream.local_addr().ok());
    let mut conn = addrs.map(|(peer, local)| {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(w.config().send_timeout));
        let max = w.config().max_header_bytes;
        Conn {
            client: Client {
                stream,
                // No storage until the client sends something (see `park`).
                buf: IoBuf::unallocated(CLIENT_BUF, (max + CLIENT_BUF).max(BODY_BUF)),
                peer,
                local,
                private: None,
            },
            head_out: Vec::new(),
            resp_out: Vec::new(),
            first: true,
            guard: Some(register()),
        }
    });
    async move {
        let Some(conn) = conn.as_mut() else {
            return;
        };
        // From here on the client is who the PROXY header says it is.
        // Boxed: it runs once, and would otherwise add its size to every
        // idle connection's task.
        let proxied = !w.config().proxy_protocol
            || match Box::pin(read_proxy_header(w.clone(), &mut conn.client)).await {
                Ok(()) => true,
                Err(why) => {
                    debug!(peer = %conn.client.peer, "closing: {why}");
                    false
                }
            };
        if proxied {
            loop {
                if conn.client.buf.is_empty() && !conn.wait_idle(&w).await {
                    break;
                }
                if !Box::pin(conn.serve_request(&w)).await {
                    break;
                }
            }
        }
        drop(conn.guard.take());
        // Whatever is left unread is never served: the buffers go back to
        // the stash for the worker's other connections.
        conn.client.buf.clear();
        park(
            &w,
            &mut conn.client.buf,
            &mut conn.head_out,
            &mut conn.resp_out,
        );
        let _ = conn.client.stream.close().await;
    }
}

/// One client connection's state between its requests.
struct Conn<R> {
    client: Client,
    /// The forwarded request head; empty and unallocated while idle.
    head_out: Vec<u8>,
    /// The relayed response head; empty and unallocated while idle.
    resp_out: Vec<u8>,
    /// No request was read yet (the idle wait is `client_header_timeout`,
    /// not `keepalive_timeout`).
    first: bool,
    /// The drain registry entry; dropped before the socket is closed.
    guard: Option<R>,
}

impl<R: Registration> Conn<R> {
    /// Waits, holding no buffer, for the first bytes of the next request.
    /// False: the connection should close quietly (the client closed or
    /// idled out, or a drain started).
    ///
    /// A plain function returning one small `poll_fn` future (it borrows
    /// the connection and the context, nothing more): this future is part
    /// of every idle connection's task, so it is kept to two pointers.
    fn wait_idle<'a>(&'a mut self, w: &'a Context) -> impl Future<Output = bool> + 'a {
        let open = !w.drain_closes_idle();
        if open {
            // Not held across the wait: a reload's new config applies next
            // time.
            let timeout = {
                let cfg = w.config();
                if self.first {
                    cfg.client_header_timeout
                } else {
                    cfg.keepalive_timeout
                }
            };
            let c = &mut self.client;
            // The worker's idle sweep enforces the timeout (no glommio
            // timer per wait); without a registry entry the stream's own
            // timeout does.
            match &self.guard {
                Some(g) => {
                    g.set_idle(Some((c.stream.as_raw_fd(), timeout)));
                    let _ = c.stream.set_read_timeout(None);
                }
                None => {
                    let _ = c.stream.set_read_timeout(Some(timeout));
                }
            }
        }
        future::poll_fn(move |cx| {
            if !open {
                return Poll::Ready(false);
            }
            let r = ready!(read_parked(
                cx,
                w,
                &mut self.client,
                &mut self.head_out,
                &mut self.resp_out
            ));
            if let Some(g) = &self.guard {
                g.set_idle(None);
            }
            // End of stream, a timeout or an error: nothing to answer.
            Poll::Ready(matches!(r, Ok(n) if n > 0))
        })
    }

    /// Reads the rest of one request head (bytes of it are in the buffer)
    /// and serves it. False: the connection should close.
    async fn serve_request(&mut self, w: &Context) -> bool {
        let peer = self.client.peer;
        let mut head_began = None;
        // This request's id, made before its head is read (an error answer
        // carries it too); a trusted peer's id replaces it in the parsed
        // head. Part of the request's boxed future, not of the idle state.
        let mut request_id = RequestId::default();
        w.request_ids.next_into(&mut request_id);
        let req = match read_head(
            w,
            &mut self.client,
            &mut self.head_out,
            &request_id,
            &mut head_began,
        )
        .await
        {
            Ok(Some(r)) => r,
            Ok(None) => return false,
            Err(e) => {
                self.reject(w, e, head_began, &request_id).await;
                return false;
            }
        };
        self.first = false;
        let client = &mut self.client;
        // What the access log keeps of the head: part of the request's
        // boxed future, not of the idle state; no allocation while the log
        // is off.
        let mut captured = access_log::Captured::default();
        w.stats.requests.set(w.stats.requests.get() + 1);
        let started = Instant::now();
        if w.access_log_on() {
            let filled = client.buf.filled();
            captured.capture(filled.get(..req.head_len).unwrap_or(filled));
        }
        let request_bytes = req.head_len as u64
            + match req.body {
                BodyFraming::Length(n) => n,
                _ => 0,
            };
        let served = proxy::handle(w, client, &req, &mut self.head_out, &mut self.resp_out).await;
        record(
            w,
            peer,
            &captured,
            req.request_id.as_bytes(),
            Finished {
                method: Some(req.method),
                served,
                body_bytes: body_bytes(&served, req.method == Method::Head),
                began: head_began.unwrap_or(started),
                head_done: started,
                request_bytes,
            },
        );
        served.keep && !w.draining()
    }

    /// Answers a malformed or late head with its status (if it has one)
    /// and records it; the connection closes after it.
    async fn reject(
        &mut self,
        w: &Context,
        e: ProxyError,
        head_began: Option<Instant>,
        request_id: &RequestId,
    ) {
        let client = &mut self.client;
        debug!(peer = %client.peer, "rejecting request: {e}");
        let Some(status) = e.status() else {
            return;
        };
        // A HEAD answer ends at its head, even before a close.
        let mut resp = if request::is_head(client.buf.filled()) {
            canned::error_response_to_head(status, true)
        } else {
            canned::error_response(status, true)
        };
        canned::add_request_id(&mut resp, request_id.as_bytes());
        let _ = client.stream.write_all(&resp).await;
        let served = Served {
            keep: false,
            status,
            backend: None,
            from_backend: false,
            response_bytes: resp.len() as u64,
            head_bytes: head_len(&resp) as u64,
            retries: 0,
        };
        let mut captured = access_log::Captured::default();
        if w.access_log_on() {
            captured.capture_line(client.buf.filled());
        }
        let now = Instant::now();
        record(
            w,
            client.peer,
            &captured,
            request_id.as_bytes(),
            Finished {
                method: None,
                served,
                body_bytes: resp.len().saturating_sub(head_len(&resp)) as u64,
                began: head_began.unwrap_or(now),
                head_done: now,
                request_bytes: client.buf.len() as u64,
            },
        );
    }
}

/// Gives an idle connection's buffers (its read buffer must be empty) back
/// to the worker's stash: a read buffer that grew for a large head or a
/// body is freed instead, so the stash only keeps [`CLIENT_BUF`]-sized ones.
fn park(w: &Context, buf: &mut IoBuf, head_out: &mut Vec<u8>, resp_out: &mut Vec<u8>) {
    if buf.is_released() && head_out.capacity() == 0 && resp_out.capacity() == 0 {
        return;
    }
    let mut read = buf.release();
    if read.len() != CLIENT_BUF {
        read = Vec::new();
    }
    w.stash.borrow_mut().give(RequestBufs {
        read,
        head_out: std::mem::take(head_out),
        resp_out: std::mem::take(resp_out),
    });
}

/// Takes a set of buffers from the worker's stash for a connection whose
/// client sent something; with none left they allocate on first use.
fn unpark(w: &Context, buf: &mut IoBuf, head_out: &mut Vec<u8>, resp_out: &mut Vec<u8>) {
    if !buf.is_released() {
        return;
    }
    let bufs = w.stash.borrow_mut().take();
    buf.attach(bufs.read);
    *head_out = bufs.head_out;
    *resp_out = bufs.resp_out;
}

/// Polls one read from an idle connection's client (waiting for its first
/// or next request) while holding no buffer: every poll takes a set from
/// the stash, reads into it, and gives it straight back when nothing was
/// there (`Pending`). `poll_read` lends its buffer for the call only, and
/// glommio's non-buffered stream waits for readiness (a poll request), not
/// with a read in flight, so the wait costs the same syscalls as a plain
/// read and the buffer is held only from the moment bytes arrive.
fn read_parked(
    cx: &mut std::task::Context<'_>,
    w: &Context,
    c: &mut Client,
    head_out: &mut Vec<u8>,
    resp_out: &mut Vec<u8>,
) -> Poll<std::io::Result<usize>> {
    unpark(w, &mut c.buf, head_out, resp_out);
    let r = c.buf.poll_read_from(cx, &mut c.stream);
    if r.is_pending() {
        park(w, &mut c.buf, head_out, resp_out);
    }
    r
}

/// How one request ended, for [`record`].
struct Finished {
    method: Option<Method>,
    served: Served,
    /// Response body bytes sent (head excluded).
    body_bytes: u64,
    /// First byte of the request head.
    began: Instant,
    /// Head complete: proxying started.
    head_done: Instant,
    request_bytes: u64,
}

/// Counts one request in the worker's metrics and, when it is on, the
/// access log (`captured` holds what the log keeps of the head,
/// `request_id` the id the request was sent and answered with).
fn record(
    w: &Context,
    peer: std::net::SocketAddr,
    captured: &access_log::Captured,
    request_id: &[u8],
    f: Finished,
) {
    let elapsed = f.head_done.elapsed();
    let served = f.served;
    w.metrics.record_request(
        served.backend,
        f.method.unwrap_or(Method::Other),
        served.status,
        elapsed,
        f.request_bytes,
        served.response_bytes,
        served.from_backend,
    );
    if !w.access_log_on() {
        return;
    }
    let cfg = w.config();
    let upstream = served.backend.and_then(|id| {
        w.snapshot()
            .backends
            .iter()
            .find(|b| b.backend.id == id)
            .map(|b| b.backend.addr)
    });
    w.access.log(
        cfg.access_log,
        cfg.access_log_format.as_ref(),
        &access_log::Entry {
            client: peer,
            request: captured.request(),
            status: served.status,
            body_bytes: f.body_bytes,
            referer: captured.referer(),
            user_agent: captured.user_agent(),
            upstream,
            upstream_status: served.backend.map(|_| served.status),
            request_time: f.began.elapsed(),
            upstream_time: served.backend.map(|_| elapsed),
            retries: served.retries,
            request_id,
        },
    );
}

/// Length of the response head at the start of `resp` (0 when there is no
/// complete head there).
fn head_len(resp: &[u8]) -> usize {
    memchr::memmem::find(resp, b"\r\n\r\n").map_or(0, |i| i + 4)
}

/// Response body bytes sent for `served`, for `$body_bytes_sent`.
///
/// A relayed response's head is still at the start of `resp_out` when it
/// had no body, a `Content-Length` body or a body until close, or was a
/// tunnel. A chunked body is relayed through that buffer, which then holds
/// nothing: the head is not subtracted then (the count is high by the
/// head's size) until the proxy reports head bytes itself. An error of our
/// own has a canned body: its reason phrase and a newline.
fn body_bytes(served: &Served, head_request: bool) -> u64 {
    if served.response_bytes == 0 {
        return 0;
    }
    if served.from_backend {
        // The relay recorded the head it sent; `resp_out` is reused for
        // re-chunking a chunked body, so it cannot tell.
        return served.response_bytes.saturating_sub(served.head_bytes);
    }
    if head_request {
        return 0;
    }
    let canned_body = canned::reason(served.status).len() as u64 + 1;
    canned_body.min(served.response_bytes)
}

/// Reads the PROXY protocol header that must start every connection on a
/// `proxy_protocol` listener, within `client_header_timeout`, and takes the
/// client and destination addresses from it (a v1 `UNKNOWN` or v2 `LOCAL`
/// header keeps the connection's own). Only peers in `trusted_proxies` may
/// send one; anything else closes the connection: no byte of it can be
/// trusted. Bytes after the header stay in the buffer: the first request.
async fn read_proxy_header(w: Rc<Context>, c: &mut Client) -> Result<(), String> {
    let cfg = w.config();
    if !cfg.trusted_proxies.contains(c.peer.ip()) {
        return Err(format!(
            "{} is not in trusted_proxies and may not send a PROXY header",
            c.peer.ip()
        ));
    }
    let deadline = Instant::now() + cfg.client_header_timeout;
    loop {
        match proxy_protocol::parse(c.buf.filled()) {
            Ok(Some(h)) => {
                c.buf.consume(h.header_len);
                if let Some(a) = h.addresses {
                    c.peer = a.source;
                    c.local = a.destination;
                }
                return Ok(());
            }
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("no complete PROXY header within client_header_timeout".into());
        }
        let _ = c.stream.set_read_timeout(Some(left));
        match c.buf.read_from(&mut c.stream).await {
            Ok(0) => return Err("closed before a complete PROXY header".into()),
            Ok(_) => {}
            Err(e) if crate::error::is_timeout(&e) => {
                return Err("no complete PROXY header within client_header_timeout".into());
            }
            Err(e) => return Err(format!("reading the PROXY header: {e}")),
        }
    }
}

/// Reads until a complete request head is in the buffer, which holds its
/// first bytes already (the idle wait before it is [`Conn::wait_idle`]).
///
/// `Ok(None)`: the connection should close quietly (the client closed).
///
/// `started` is set when the first byte of the head is seen (it stays
/// `None` when the whole head arrived in one read). `out` takes the head to
/// forward; `request_id` is the id made for this request.
async fn read_head(
    w: &Context,
    c: &mut Client,
    out: &mut Vec<u8>,
    request_id: &RequestId,
    started: &mut Option<Instant>,
) -> Result<Option<RequestHead>, ProxyError> {
    let cfg = w.config();
    let fwd = Forwarding {
        peer: c.peer.ip(),
        trusted: cfg.trusted_proxies.contains(c.peer.ip()),
        forwarded: cfg.forwarded,
        request_id: request_id.as_bytes(),
    };
    // Bytes already parsed without finding a complete head: a head can only
    // complete (or a line turn out malformed) when a LF arrives, so a client
    // trickling bytes does not make us re-parse the whole buffer per read.
    let mut parsed = 0usize;
    loop {
        if !c.buf.is_empty() {
            let filled = c.buf.filled();
            let new = &filled[parsed.min(filled.len())..];
            if parsed == 0 || memchr::memchr(b'\n', new).is_some() {
                if let Some(head) = request::parse(filled, cfg.max_header_bytes, &fwd, out)? {
                    return Ok(Some(head));
                }
                parsed = filled.len();
            } else {
                request::check_partial_limits(filled, cfg.max_header_bytes)?;
            }
            started.get_or_insert_with(Instant::now);
        }
        let elapsed = started.map_or(Duration::ZERO, |s| s.elapsed());
        let timeout = match cfg.client_header_timeout.checked_sub(elapsed) {
            Some(t) if !t.is_zero() => t,
            _ => return Err(ProxyError::ClientTimeout),
        };
        let _ = c.stream.set_read_timeout(Some(timeout));
        match c.buf.read_from(&mut c.stream).await {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) if crate::error::is_timeout(&e) => return Err(ProxyError::ClientTimeout),
            Err(e) if e.kind() == std::io::ErrorKind::OutOfMemory => {
                return Err(ProxyError::HeaderTooLarge);
            }
            Err(_) => return Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(status: u16, from_backend: bool, response_bytes: u64) -> Served {
        Served {
            keep: true,
            status,
            backend: None,
            from_backend,
            response_bytes,
            head_bytes: 0,
            retries: 0,
        }
    }

    #[test]
    fn canned_bodies_are_counted_without_their_head() {
        for status in [400, 408, 413, 414, 431, 500, 502, 503, 504, 505] {
            let r = canned::error_response(status, true);
            let body = (r.len() - head_len(&r)) as u64;
            let s = served(status, false, r.len() as u64);
            assert_eq!(body_bytes(&s, false), body, "{status}");
            assert_eq!(body_bytes(&s, true), 0, "{status} to HEAD");
        }
        assert_eq!(body_bytes(&served(499, false, 0), false), 0);
        // A backend's response: what was sent minus the head the relay
        // recorded (a chunked relay reuses `resp_out`, so it cannot tell).
        let mut s = served(200, true, 1_000);
        s.head_bytes = 120;
        assert_eq!(body_bytes(&s, false), 880);
    }

    #[test]
    fn relayed_bodies_are_counted_without_their_head() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        let mut s = served(200, true, head.len() as u64 + 5);
        s.head_bytes = head.len() as u64;
        assert_eq!(body_bytes(&s, false), 5);
    }
}
