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

use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use tracing::debug;

use crate::access_log;
use crate::buffer::IoBuf;
use crate::context::Context;
use crate::error::ProxyError;
use crate::http::BodyFraming;
use crate::http::canned;
use crate::http::request::Method;
use crate::http::request::{self, RequestHead};
use crate::proxy::{self, BODY_BUF, Client, Served};

/// Initial client read buffer: most request heads fit. It grows for large
/// heads (up to `max_header_bytes`) and for long bodies (to [`BODY_BUF`]),
/// and shrinks back when the connection goes idle, so an idle keep-alive
/// connection costs little memory.
pub const CLIENT_BUF: usize = 4 * 1024;

/// A connection's entry in its worker's drain registry: the worker learns
/// when the connection waits idle (a drain may then close it), and the entry
/// is removed when the value is dropped.
pub trait Registration {
    /// Marks the connection idle on socket `fd`, or busy again (`None`).
    fn set_idle(&self, fd: Option<RawFd>);
}

/// Serves one accepted connection until it closes. `register` enters it in
/// the worker's drain registry once the connection is usable.
pub async fn serve<R: Registration>(
    w: Rc<Context>,
    stream: TcpStream,
    register: impl FnOnce() -> R,
) {
    let Ok(peer) = stream.peer_addr() else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(w.config().send_timeout));
    let guard = register();
    let max = w.config().max_header_bytes;
    let mut client = Client {
        stream,
        buf: IoBuf::new(CLIENT_BUF, (max + CLIENT_BUF).max(BODY_BUF)),
        peer,
    };
    let mut head_out = Vec::new();
    let mut resp_out = Vec::new();
    let mut first = true;
    loop {
        let req = match read_head(&w, &mut client, &mut head_out, &guard, first).await {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                debug!(peer = %peer, "rejecting request: {e}");
                if let Some(status) = e.status() {
                    // A HEAD answer ends at its head, even before a close.
                    let resp = if request::is_head(client.buf.filled()) {
                        canned::error_response_to_head(status, true)
                    } else {
                        canned::error_response(status, true)
                    };
                    let _ = client.stream.write_all(&resp).await;
                    let served = Served {
                        keep: false,
                        status,
                        backend: None,
                        from_backend: false,
                        response_bytes: resp.len() as u64,
                        retries: 0,
                    };
                    record(
                        &w,
                        peer,
                        None,
                        &[],
                        served,
                        Instant::now(),
                        client.buf.len() as u64,
                    );
                }
                break;
            }
        };
        first = false;
        w.stats.requests.set(w.stats.requests.get() + 1);
        let started = Instant::now();
        let request_bytes = req.head_len as u64
            + match req.body {
                BodyFraming::Length(n) => n,
                _ => 0,
            };
        let served = proxy::handle(&w, &mut client, &req, &mut head_out, &mut resp_out).await;
        record(
            &w,
            peer,
            Some(req.method),
            &head_out,
            served,
            started,
            request_bytes,
        );
        if !served.keep || w.draining() {
            break;
        }
        client.buf.shrink_if_idle();
    }
    drop(guard);
    let _ = client.stream.close().await;
}

/// Counts one request in the worker's metrics and access log. `head` is the
/// forwarded head (its request line names the method and target).
fn record(
    w: &Context,
    peer: std::net::SocketAddr,
    method: Option<Method>,
    head: &[u8],
    served: Served,
    started: Instant,
    request_bytes: u64,
) {
    let elapsed = started.elapsed();
    w.metrics.record_request(
        served.backend,
        method.unwrap_or(Method::Other),
        served.status,
        elapsed,
        request_bytes,
        served.response_bytes,
        served.from_backend,
    );
    if let Some(log) = &w.access {
        let line = head.split(|&b| b == b'\r').next().unwrap_or(&[]);
        let mut parts = line.splitn(3, |&b| b == b' ');
        let m = parts.next().unwrap_or(b"-");
        let path = parts.next().unwrap_or(b"-");
        let snap = w.snapshot();
        let upstream = served.backend.and_then(|id| {
            snap.backends
                .iter()
                .find(|b| b.backend.id == id)
                .map(|b| b.backend.name.as_str())
        });
        log.log(&access_log::Entry {
            client: peer,
            method: std::str::from_utf8(m).unwrap_or("-"),
            path: std::str::from_utf8(path).unwrap_or("-"),
            status: served.status,
            bytes: served.response_bytes,
            upstream,
            duration: elapsed,
            retries: served.retries,
        });
    }
}

/// Reads until a complete request head is in the buffer.
///
/// `Ok(None)`: the connection should close quietly (client closed or idled
/// out between requests, or a drain started).
async fn read_head(
    w: &Context,
    c: &mut Client,
    out: &mut Vec<u8>,
    registration: &impl Registration,
    first: bool,
) -> Result<Option<RequestHead>, ProxyError> {
    let cfg = w.config();
    let mut started: Option<Instant> = None;
    // Bytes already parsed without finding a complete head: a head can only
    // complete (or a line turn out malformed) when a LF arrives, so a client
    // trickling bytes does not make us re-parse the whole buffer per read.
    let mut parsed = 0usize;
    loop {
        if !c.buf.is_empty() {
            let filled = c.buf.filled();
            let new = &filled[parsed.min(filled.len())..];
            if parsed == 0 || memchr::memchr(b'\n', new).is_some() {
                if let Some(head) = request::parse(filled, cfg.max_header_bytes, c.peer.ip(), out)?
                {
                    return Ok(Some(head));
                }
                parsed = filled.len();
            } else {
                request::check_partial_limits(filled, cfg.max_header_bytes)?;
            }
            started.get_or_insert_with(Instant::now);
        }
        let idle = c.buf.is_empty();
        let timeout = if idle {
            if w.draining() {
                return Ok(None);
            }
            registration.set_idle(Some(c.stream.as_raw_fd()));
            if first {
                cfg.client_header_timeout
            } else {
                cfg.keepalive_timeout
            }
        } else {
            let elapsed = started.map_or(Duration::ZERO, |s| s.elapsed());
            match cfg.client_header_timeout.checked_sub(elapsed) {
                Some(t) if !t.is_zero() => t,
                _ => return Err(ProxyError::ClientTimeout),
            }
        };
        let _ = c.stream.set_read_timeout(Some(timeout));
        let r = c.buf.read_from(&mut c.stream).await;
        if idle {
            registration.set_idle(None);
        }
        match r {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) if crate::error::is_timeout(&e) => {
                return if idle {
                    Ok(None)
                } else {
                    Err(ProxyError::ClientTimeout)
                };
            }
            Err(e) if e.kind() == std::io::ErrorKind::OutOfMemory => {
                return Err(ProxyError::HeaderTooLarge);
            }
            Err(_) => return Ok(None),
        }
    }
}
