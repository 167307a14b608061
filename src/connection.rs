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

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use tracing::debug;

use crate::buffer::IoBuf;
use crate::error::ProxyError;
use crate::http::canned;
use crate::http::request::{self, RequestHead};
use crate::proxy;
use crate::worker::Worker;

/// Initial client read buffer; grows to `max_header_bytes` for large heads.
pub const CLIENT_BUF: usize = 8 * 1024;

/// The client side of one connection.
pub struct Client {
    /// The socket.
    pub stream: TcpStream,
    /// Bytes read from the client and not yet consumed.
    pub buf: IoBuf,
    /// The client's address.
    pub peer: std::net::SocketAddr,
}

/// Serves one accepted connection until it closes.
pub async fn serve(w: Rc<Worker>, stream: TcpStream) {
    let Ok(peer) = stream.peer_addr() else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(w.config.send_timeout));
    let guard = w.connection_started();
    let max = w.config.max_header_bytes;
    let mut client = Client {
        stream,
        buf: IoBuf::new(CLIENT_BUF, max + CLIENT_BUF),
        peer,
    };
    let mut head_out = Vec::with_capacity(1024);
    let mut resp_out = Vec::with_capacity(1024);
    let mut first = true;
    loop {
        let req = match read_head(&w, &mut client, &mut head_out, guard.id, first).await {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                debug!(peer = %peer, "rejecting request: {e}");
                if let Some(status) = e.status() {
                    let _ = client
                        .stream
                        .write_all(&canned::error_response(status, true))
                        .await;
                }
                break;
            }
        };
        first = false;
        w.stats.requests.set(w.stats.requests.get() + 1);
        let keep = proxy::handle(&w, &mut client, &req, &mut head_out, &mut resp_out).await;
        if !keep || w.draining() {
            break;
        }
        client.buf.shrink_if_idle();
    }
    drop(guard);
    let _ = client.stream.close().await;
}

/// Reads until a complete request head is in the buffer.
///
/// `Ok(None)`: the connection should close quietly (client closed or idled
/// out between requests, or a drain started).
async fn read_head(
    w: &Worker,
    c: &mut Client,
    out: &mut Vec<u8>,
    conn_id: u64,
    first: bool,
) -> Result<Option<RequestHead>, ProxyError> {
    let cfg = &w.config;
    let mut started: Option<Instant> = None;
    loop {
        if !c.buf.is_empty() {
            if let Some(head) =
                request::parse(c.buf.filled(), cfg.max_header_bytes, c.peer.ip(), out)?
            {
                return Ok(Some(head));
            }
            started.get_or_insert_with(Instant::now);
        }
        let idle = c.buf.is_empty();
        let timeout = if idle {
            if w.draining() {
                return Ok(None);
            }
            w.set_idle(conn_id, Some(c.stream.as_raw_fd()));
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
            w.set_idle(conn_id, None);
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
