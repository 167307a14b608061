//! Forwarding one request and relaying its response.
//!
//! [`handle`] picks a backend, takes a pooled connection or opens one, sends
//! the rewritten head and streams the body, reads the response head
//! (relaying interim 1xx), and streams the response body back, re-chunking or
//! de-chunking as the client needs. Bodies are never buffered whole. The
//! state of one client request (client, request head, output buffers, body
//! state) travels from try to try as one `Exchange` value.
//!
//! Retry policy (never once a response byte reached the client):
//! - connect failed (refused, timeout): the request never left; retry on
//!   another backend whatever the method;
//! - a backend failed before any response byte (closed, reset, read
//!   timeout): retry on another backend if the method is idempotent (or
//!   `retry_non_idempotent` is set) and the body is still in our buffer;
//! - a *reused* keep-alive connection was closed or reset before any
//!   response byte: the backend probably closed it while idle; retry once on
//!   a fresh connection (idempotent, replayable requests), without spending
//!   the budget. A timeout is never taken for a stale connection: the backend
//!   has the request and is slow, so it is a plain failure (504 when it is
//!   not retried), and a second stale-looking failure is one too.
//!
//! Retries are bounded by `retries`, spaced by capped exponential backoff
//! with jitter, and paid from the worker's retry budget. Whatever is not
//! retried is answered with 502 (bad or missing response), 503 (capacity) or
//! 504 (timeout), and backend failures are reported to the health executor.

use std::cell::Cell;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, future};
use glommio::net::TcpStream;
use tracing::debug;

use crate::backend::pool::BackendConn;
use crate::backend::{Backend, BackendId};
use crate::buffer::IoBuf;
use crate::config::{Config, PoolConfig, ProxyProtocolVersion};
use crate::context::Context;
use crate::error::{ErrorSource, ProxyError};
use crate::health::BackendView;
use crate::health::failure_kind;
use crate::http::chunked::{ChunkedDecoder, Mode};
use crate::http::request::{Method, RequestHead};
use crate::http::response::{self, ClientSide, ResponseHead};
use crate::http::{BodyFraming, canned};
use crate::proxy_protocol;
use crate::retry::backoff;

/// A chunked response body is written on once this many decoded bytes are
/// pending (or the backend has nothing more ready).
const COALESCE: usize = 16 * 1024;
/// Read size while streaming a long request body.
pub const BODY_BUF: usize = 64 * 1024;

/// The client side of one connection, as proxying sees it.
pub struct Client {
    /// The socket.
    pub stream: TcpStream,
    /// Bytes read from the client and not yet consumed.
    pub buf: IoBuf,
    /// The client's address (from a PROXY protocol header when the
    /// listener takes one).
    pub peer: std::net::SocketAddr,
    /// The address the client connected to (likewise).
    pub local: std::net::SocketAddr,
    /// The backend connection kept for this client alone: a pool with
    /// `send_proxy_protocol` sent the client's PROXY header on it, so it may
    /// serve this client's next request to the same backend and no other.
    pub private: Option<Box<(BackendId, BackendConn)>>,
}

/// What happened to one request, for the keep-alive decision, metrics and
/// the access log.
#[derive(Debug, Clone, Copy)]
pub struct Served {
    /// The client connection may stay open.
    pub keep: bool,
    /// Status sent to the client (499: the client went away first).
    pub status: u16,
    /// The backend that answered or failed last, if one was tried.
    pub backend: Option<BackendId>,
    /// The response came from a backend (not an error of our own).
    pub from_backend: bool,
    /// Bytes sent to the client.
    pub response_bytes: u64,
    /// Of those, the response head's (the access log counts body bytes).
    pub head_bytes: u64,
    /// Retries made.
    pub retries: u32,
}

impl Served {
    fn gone(backend: Option<BackendId>) -> Self {
        Served {
            keep: false,
            status: 499,
            backend,
            from_backend: false,
            response_bytes: 0,
            head_bytes: 0,
            retries: 0,
        }
    }
}

/// Outcome of trying one backend.
enum Attempt {
    /// The response was relayed (or the client went away).
    Done(Served),
    /// A reused keep-alive connection was closed or reset before any
    /// response byte: the backend probably closed it while idle. Try once
    /// more on a fresh one; if that was already done, this is a
    /// [`Attempt::Fail`] with the same error and `retry_safe`.
    Stale(ProxyError, bool),
    /// Failed; `retry_safe` when the request provably did not take effect
    /// or may safely be sent again.
    Fail(ProxyError, bool),
}

/// Proxies one request whose head is parsed (`head_out` holds the forwarded
/// head). Returns whether the client connection may stay open.
pub async fn handle(
    cx: &Context,
    c: &mut Client,
    req: &RequestHead,
    head_out: &mut Vec<u8>,
    resp_out: &mut Vec<u8>,
) -> Served {
    // The body is replayable while it sits entirely in our buffer.
    let body_in_buf = match req.body {
        BodyFraming::None => Some(0),
        BodyFraming::Length(n) if (c.buf.len() - req.head_len) as u64 >= n => Some(n as usize),
        _ => None,
    };
    c.buf.consume(req.head_len);
    let cfg = cx.config();
    // Routes are matched on the forwarded head: origin form, and a Host
    // taken from an absolute-form target's authority.
    let lane = if cfg.routes.is_empty() {
        0
    } else {
        let (host, path) = crate::http::host_and_path(head_out);
        cfg.route(host, path)
    };
    let mut ex = Exchange {
        cfg: cfg.clone(),
        lane,
        client: c,
        req,
        head_out,
        resp_out,
        body_in_buf,
        body: BodyState {
            consumed: false,
            continue_sent: false,
        },
    };
    let pool = cfg.pools.get(lane).unwrap_or_else(|| cfg.default_pool());
    let budget = cx.budget(lane, &pool.name);
    budget.borrow_mut().on_request();
    let mut retries_done = 0u32;
    // The backends this request failed on, oldest first, by id, not index:
    // the backend set may change between tries. Allocates only on a retry.
    let mut tried: Vec<BackendId> = Vec::new();
    let mut fresh = false;
    let mut stale_retry_used = false;
    let mut last_backend: Option<BackendId> = None;
    // The failure being retried, and where. If the retry cannot be placed
    // (no backend left, breakers open, no slot), the client gets this error:
    // a 502 or 503 would hide that a backend timed out or failed.
    let mut retrying: Option<(ProxyError, BackendId)> = None;

    let result = loop {
        // Read the snapshot on every try: the balancer's indices refer to the
        // latest one, and a retry may come after a change of the backend set.
        let snap = cx.pool_snapshot(lane, &pool.name);
        let exclude = tried
            .iter()
            .filter_map(|&id| snap.backends.iter().position(|b| b.backend.id == id));
        // A half-open breaker lets a bounded number of trials through: one
        // with no slot left is refused and the balancer chooses another.
        let (mut trial, mut refused) = (None, false);
        let picked = cx.select(
            lane,
            &pool.name,
            &snap,
            ex.client.peer.ip(),
            exclude,
            |i| match snap.backends.get(i).and_then(|v| cx.try_trial(pool, v)) {
                Some(t) => {
                    trial = t;
                    true
                }
                None => {
                    refused = true;
                    false
                }
            },
        );
        let _trial = trial;
        let Some(view) = picked.and_then(|idx| snap.backends.get(idx)) else {
            let cause = if refused {
                ProxyError::Overloaded
            } else {
                ProxyError::NoBackend
            };
            break Err(unplaced(&mut retrying, &mut last_backend, cause));
        };
        let backend = &view.backend;
        last_backend = Some(backend.id);
        let _slot = match cx.acquire_slot(&pool.limits, backend.id).await {
            Ok(p) => p,
            Err(e) => {
                debug!(backend = %backend.name, "no connection slot: {e:?}");
                break Err(unplaced(
                    &mut retrying,
                    &mut last_backend,
                    ProxyError::Overloaded,
                ));
            }
        };
        let _inflight = pool
            .strategy
            .needs_inflight()
            .then(|| backend.start_request());
        let _local = cx.metrics.inflight(backend.id);
        // A PROXY protocol header belongs to one client connection: such a
        // pool's backend connections are never shared; each stays with its
        // client for the next request to the same backend.
        let pooled = if fresh {
            None
        } else if pool.send_proxy_protocol.is_some() {
            ex.client
                .private
                .take()
                .filter(|p| p.0 == backend.id)
                .and_then(|p| p.1.reuse())
        } else {
            cx.pool.borrow_mut().take(backend.id)
        };
        let conn = match pooled {
            Some(conn) => Ok(conn),
            None => connect(cx, pool, backend, (ex.client.peer, ex.client.local)).await,
        };
        let outcome = match conn {
            Ok(conn) => attempt(cx, &mut ex, conn, view).await,
            // The request never left: always safe to send elsewhere.
            Err(e) => Attempt::Fail(e, true),
        };
        let outcome = match outcome {
            // Only one free retry: a second stale-looking failure is a real one.
            Attempt::Stale(e, retry_safe) if stale_retry_used => Attempt::Fail(e, retry_safe),
            o => o,
        };
        match outcome {
            Attempt::Done(served) => {
                // A client that went away (499) is not a backend failure.
                cx.metrics
                    .record_attempt(backend.id, served.from_backend || served.status == 499);
                break Ok(served);
            }
            Attempt::Stale(e, _) => {
                debug!(backend = %backend.name, "stale pooled connection: {e}");
                stale_retry_used = true;
                fresh = true;
                retrying = Some((e, backend.id));
            }
            Attempt::Fail(e, retry_safe) => {
                if e.source_side() == ErrorSource::Backend {
                    cx.metrics.record_attempt(backend.id, false);
                }
                if e.source_side() == ErrorSource::Backend
                    && let Some(kind) = failure_kind(&e)
                {
                    cx.report_failure(backend.id, kind);
                }
                let can_retry = retry_safe
                    && retries_done < pool.retry.retries
                    && e.source_side() == ErrorSource::Backend
                    && budget.borrow_mut().try_spend(Instant::now());
                if !can_retry {
                    break Err(e);
                }
                debug!(backend = %backend.name, "retrying after: {e}");
                let delay = backoff(
                    retries_done,
                    pool.retry.backoff,
                    pool.retry.backoff_max,
                    &mut cx.rng.borrow_mut(),
                );
                retries_done += 1;
                cx.metrics.record_retry();
                if !delay.is_zero() {
                    glommio::timer::sleep(delay).await;
                }
                tried.push(backend.id);
                fresh = false;
                retrying = Some((e, backend.id));
            }
        }
    };

    match result {
        Ok(mut served) => {
            served.retries = retries_done;
            served
        }
        Err(e) => {
            debug!(peer = %ex.client.peer, "request failed: {e}");
            let Some(status) = e.status() else {
                return Served::gone(last_backend);
            };
            // The connection can go on only if the request body is behind us.
            let body_done = match ex.body_in_buf {
                Some(n) if !ex.body.consumed => {
                    ex.client.buf.consume(n);
                    true
                }
                Some(_) => true,
                None => ex.body.consumed,
            };
            let keep = req.keep_alive
                && body_done
                && e.source_side() != ErrorSource::Client
                && !cx.draining();
            // A HEAD answer ends at its head, whoever makes it.
            let mut resp = if req.method == Method::Head {
                canned::error_response_to_head(status, !keep)
            } else {
                canned::error_response(status, !keep)
            };
            canned::add_request_id(&mut resp, req.request_id.as_bytes());
            if ex.client.stream.write_all(&resp).await.is_err() {
                return Served::gone(last_backend);
            }
            Served {
                keep,
                status,
                backend: last_backend,
                from_backend: false,
                response_bytes: resp.len() as u64,
                head_bytes: 0,
                retries: retries_done,
            }
        }
    }
}

/// The error to answer when a try could not even be placed (`cause`): the
/// failure that a retry was for, if this was a retry, blamed on its backend.
fn unplaced(
    retrying: &mut Option<(ProxyError, BackendId)>,
    last_backend: &mut Option<BackendId>,
    cause: ProxyError,
) -> ProxyError {
    match retrying.take() {
        Some((e, id)) => {
            debug!("retry not placed ({cause}); answering the failure it was for");
            *last_backend = Some(id);
            e
        }
        None => cause,
    }
}

/// One client request's exchange: what every try on a backend reads and
/// updates, passed by `&mut` from try to try.
struct Exchange<'a> {
    /// The configuration the request is served by, from start to end (a
    /// reload meanwhile applies to the next request).
    cfg: Rc<Config>,
    /// Index of the request's pool in `cfg.pools`.
    lane: usize,
    /// The client connection the request came on.
    client: &'a mut Client,
    /// The parsed request head.
    req: &'a RequestHead,
    /// The head forwarded to the backend, as the request parser wrote it.
    head_out: &'a mut Vec<u8>,
    /// The response head for the client (interim heads pass through it too).
    /// Until the response arrives, a chunked upload is re-chunked through it.
    resp_out: &'a mut Vec<u8>,
    /// The body's length while it sits whole in the client buffer after the
    /// head (replayable on a retry); `None` when it must be streamed.
    body_in_buf: Option<usize>,
    /// What has happened to the request body so far.
    body: BodyState,
}

impl Exchange<'_> {
    /// The settings of the request's pool.
    fn pool(&self) -> &PoolConfig {
        self.cfg
            .pools
            .get(self.lane)
            .unwrap_or_else(|| self.cfg.default_pool())
    }
}

/// What has happened to the client's request body so far.
struct BodyState {
    /// The body has been read from the client (not replayable).
    consumed: bool,
    /// `100 Continue` was sent to the client.
    continue_sent: bool,
}

/// Opens a connection to `backend` with `pool`'s time limits; when the pool
/// sends the PROXY protocol, its header for `client` (source, destination)
/// goes first.
async fn connect(
    cx: &Context,
    pool: &PoolConfig,
    backend: &Backend,
    client: (SocketAddr, SocketAddr),
) -> Result<BackendConn, ProxyError> {
    let cfg = cx.config();
    let stream = TcpStream::connect_timeout(backend.addr, pool.timeouts.connect)
        .await
        .map_err(|e| {
            let e = std::io::Error::from(e);
            if crate::error::is_timeout(&e) {
                ProxyError::BackendTimeout
            } else {
                ProxyError::Connect(e)
            }
        })?;
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(pool.timeouts.read));
    let _ = stream.set_write_timeout(Some(pool.timeouts.write));
    if let Some(version) = pool.send_proxy_protocol {
        let mut header = Vec::with_capacity(64);
        match version {
            ProxyProtocolVersion::V1 => proxy_protocol::write_v1(&mut header, client.0, client.1),
            ProxyProtocolVersion::V2 => proxy_protocol::write_v2(&mut header, client.0, client.1),
        }
        let mut stream = stream;
        stream
            .write_all(&header)
            .await
            .map_err(ProxyError::Connect)?;
        return Ok(BackendConn::new(stream, cfg.max_header_bytes));
    }
    Ok(BackendConn::new(stream, cfg.max_header_bytes))
}

/// One try on one backend connection.
async fn attempt(
    cx: &Context,
    ex: &mut Exchange<'_>,
    mut conn: BackendConn,
    view: &BackendView,
) -> Attempt {
    let backend = &view.backend;
    let req = ex.req;
    let replayable = ex.body_in_buf.is_some() && !ex.body.consumed;
    let idempotent = req.method.is_idempotent();
    let may_retry_stale = conn.reused && replayable && idempotent;
    // Safe to send again elsewhere: nothing of a response arrived, the body
    // is still ours, and repeating the method is harmless (or allowed).
    let retry_safe = replayable && (idempotent || ex.pool().retry.non_idempotent);

    // 1. Send the head and the body.
    if let Err(e) = send_request(cx, ex, &mut conn).await {
        if may_retry_stale && looks_stale(&e) {
            return Attempt::Stale(e, retry_safe);
        }
        return Attempt::Fail(e, retry_safe);
    }
    let sent = Instant::now();

    // 2. Read the response head, relaying interim responses.
    let client_side = ClientSide {
        head_request: req.method == Method::Head,
        minor_version: req.minor_version,
        // Narrowed by a drain when the head is parsed (read_response_head).
        keep_alive: req.keep_alive,
        upgrade: req.upgrade,
        request_id: req.request_id.as_bytes(),
    };
    let head = loop {
        match read_response_head(cx, &mut conn, client_side, ex.resp_out).await {
            Ok(h) if h.interim => {
                conn.buf.consume(h.head_len);
                if h.status != 100
                    && req.minor_version == 1
                    && ex.client.stream.write_all(ex.resp_out).await.is_err()
                {
                    return Attempt::Done(Served::gone(Some(backend.id)));
                }
            }
            Ok(h) => break h,
            Err((e, got_bytes)) => {
                if !got_bytes && may_retry_stale && looks_stale(&e) {
                    return Attempt::Stale(e, retry_safe);
                }
                return Attempt::Fail(e, retry_safe && !got_bytes);
            }
        }
    };
    cx.metrics
        .record_backend_response(backend.id, sent.elapsed());
    conn.buf.consume(head.head_len);
    // From here on the request body is no longer needed for a retry.
    if let Some(n) = ex.body_in_buf
        && !ex.body.consumed
    {
        ex.client.buf.consume(n);
        ex.body.consumed = true;
    }

    // 3. Relay the response. `resp_out` holds the rewritten head until the
    // body relay reuses it.
    let head_bytes = ex.resp_out.len() as u64;
    if head.switching {
        let bytes = tunnel(cx, ex, conn).await;
        return Attempt::Done(Served {
            keep: false,
            status: 101,
            backend: Some(backend.id),
            from_backend: true,
            response_bytes: bytes,
            head_bytes,
            retries: 0,
        });
    }
    let mut wrote = true;
    match relay_body(ex, &mut conn, &head, &mut wrote).await {
        Ok(bytes) => {
            if head.status < 500 {
                cx.report_success(view);
            }
            if head.backend_keep_alive && conn.buf.is_empty() {
                if ex.pool().send_proxy_protocol.is_some() {
                    conn.mark_idle();
                    ex.client.private = Some(Box::new((backend.id, conn)));
                } else {
                    let keep = ex.pool().pool_size;
                    cx.pool.borrow_mut().put(backend.id, conn, keep);
                }
            }
            Attempt::Done(Served {
                keep: head.client_keep_alive,
                status: head.status,
                backend: Some(backend.id),
                from_backend: true,
                response_bytes: bytes,
                head_bytes,
                retries: 0,
            })
        }
        Err(e) => {
            if !wrote && e.source_side() == ErrorSource::Backend {
                // Nothing reached the client yet: answer with an error.
                return Attempt::Fail(e, false);
            }
            debug!(backend = %backend.name, "response relay aborted: {e}");
            if e.source_side() == ErrorSource::Backend
                && let Some(kind) = failure_kind(&e)
            {
                cx.report_failure(backend.id, kind);
            }
            // The head is out: the only honest signal left is closing.
            Attempt::Done(Served {
                keep: false,
                status: head.status,
                backend: Some(backend.id),
                from_backend: true,
                response_bytes: 0,
                head_bytes: 0,
                retries: 0,
            })
        }
    }
}

/// Whether a failure on a reused connection looks like the backend closed it
/// while it sat in the pool (close, reset, broken pipe). A timeout does not:
/// the backend took the request and is slow, and trying it again on the same
/// backend would only wait a second `read_timeout` and hide the 504.
fn looks_stale(e: &ProxyError) -> bool {
    matches!(e, ProxyError::BackendClosed | ProxyError::BackendIo(_))
}

/// Writes the head and streams the request body to the backend.
async fn send_request(
    cx: &Context,
    ex: &mut Exchange<'_>,
    conn: &mut BackendConn,
) -> Result<(), ProxyError> {
    let be = ProxyError::backend_io;
    let req = ex.req;
    let c = &mut *ex.client;
    let head_out = &mut *ex.head_out;
    let state = &mut ex.body;
    match (req.body, ex.body_in_buf) {
        (BodyFraming::None, _) => conn.stream.write_all(head_out).await.map_err(be),
        (_, Some(n)) if !state.consumed => {
            let body = &c.buf.filled()[..n];
            crate::io_now::write_all2(&mut conn.stream, head_out, body)
                .await
                .map_err(be)
        }
        (BodyFraming::Length(n), _) => {
            conn.stream.write_all(head_out).await.map_err(be)?;
            maybe_continue(c, req, state).await?;
            state.consumed = true;
            c.buf.ensure_capacity(BODY_BUF);
            let _ = c
                .stream
                .set_read_timeout(Some(cx.config().client_body_timeout));
            copy_length(Flow::Upload, &mut c.stream, &mut c.buf, &mut conn.stream, n).await
        }
        (BodyFraming::Chunked, _) => {
            conn.stream.write_all(head_out).await.map_err(be)?;
            maybe_continue(c, req, state).await?;
            state.consumed = true;
            c.buf.ensure_capacity(BODY_BUF);
            let _ = c
                .stream
                .set_read_timeout(Some(cx.config().client_body_timeout));
            // The response head buffer is free until the response arrives
            // (its parser clears it): the re-chunked body goes through it.
            let out = &mut *ex.resp_out;
            out.clear();
            let mut dec = ChunkedDecoder::new(Mode::Rechunk);
            let r = copy_chunked(
                Flow::Upload,
                &mut dec,
                &mut c.stream,
                &mut c.buf,
                &mut conn.stream,
                out,
                &mut 0,
            )
            .await;
            out.clear();
            r
        }
        (BodyFraming::UntilClose, _) => Err(ProxyError::BadRequest("request without framing")),
    }
}

/// Answers `Expect: 100-continue` before reading a body that is not here yet.
async fn maybe_continue(
    c: &mut Client,
    req: &RequestHead,
    state: &mut BodyState,
) -> Result<(), ProxyError> {
    if req.expect_continue && !state.continue_sent && c.buf.is_empty() {
        state.continue_sent = true;
        c.stream
            .write_all(canned::CONTINUE)
            .await
            .map_err(ProxyError::ClientIo)?;
    }
    Ok(())
}

/// Reads until a response head parses. The error carries whether any byte
/// of a response had arrived (which rules out a stale-connection retry).
async fn read_response_head(
    cx: &Context,
    conn: &mut BackendConn,
    client: ClientSide<'_>,
    out: &mut Vec<u8>,
) -> Result<ResponseHead, (ProxyError, bool)> {
    let max = cx.config().max_header_bytes;
    loop {
        if !conn.buf.is_empty() {
            // Decided now, not when the request left: a drain that began
            // while the backend worked must tell the client this connection
            // closes after the response.
            let client = ClientSide {
                keep_alive: client.keep_alive && !cx.draining(),
                ..client
            };
            match response::parse(conn.buf.filled(), max, client, out) {
                Ok(Some(h)) => return Ok(h),
                Ok(None) => {}
                Err(e) => return Err((e, true)),
            }
        }
        let got = !conn.buf.is_empty();
        match conn.buf.read_from(&mut conn.stream).await {
            Ok(0) => {
                let e = if got {
                    ProxyError::BadResponse("connection closed inside the response head")
                } else {
                    ProxyError::BackendClosed
                };
                return Err((e, got));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::OutOfMemory => {
                return Err((ProxyError::BadResponse("response head too large"), true));
            }
            Err(e) => return Err((ProxyError::backend_io(e), got)),
        }
    }
}

/// Streams the response body to the client after the head in `resp_out`.
async fn relay_body(
    ex: &mut Exchange<'_>,
    conn: &mut BackendConn,
    head: &ResponseHead,
    wrote: &mut bool,
) -> Result<u64, ProxyError> {
    // Every branch but a chunked body failing before its first write sends
    // the head before anything can fail on the backend side.
    *wrote = true;
    let c = &mut *ex.client;
    let resp_out = &mut *ex.resp_out;
    let ce = ProxyError::ClientIo;
    match head.body {
        BodyFraming::None => {
            c.stream.write_all(resp_out).await.map_err(ce)?;
            Ok(resp_out.len() as u64)
        }
        BodyFraming::Length(n) => {
            let total = resp_out.len() as u64 + n;
            relay_length(&mut conn.stream, &mut conn.buf, &mut c.stream, resp_out, n).await?;
            Ok(total)
        }
        BodyFraming::Chunked => {
            let mode = if head.dechunk {
                Mode::Decode
            } else {
                Mode::Rechunk
            };
            let mut dec = ChunkedDecoder::new(mode);
            let mut total = 0u64;
            let r = copy_chunked(
                Flow::Download,
                &mut dec,
                &mut conn.stream,
                &mut conn.buf,
                &mut c.stream,
                resp_out,
                &mut total,
            )
            .await;
            resp_out.clear();
            if r.is_err() && total == 0 {
                *wrote = false;
            }
            r.map(|()| total)
        }
        BodyFraming::UntilClose => {
            resp_out.extend_from_slice(conn.buf.filled());
            conn.buf.clear();
            c.stream.write_all(resp_out).await.map_err(ce)?;
            let mut total = resp_out.len() as u64;
            loop {
                let r = match conn.buf.read_from(&mut conn.stream).await {
                    Ok(r) => r,
                    Err(e) => return Err(ProxyError::backend_io(e)),
                };
                if r == 0 {
                    return Ok(total);
                }
                total += r as u64;
                c.stream.write_all(conn.buf.filled()).await.map_err(ce)?;
                conn.buf.clear();
            }
        }
    }
}

/// Relays a response body of `left` bytes after the head in `head`.
///
/// Each write takes everything the backend has sent so far: while the body
/// is not all here and the last read filled the buffer, what is already
/// readable is read on first (the buffer grows up to its limit), so a body
/// that arrived whole goes out with its head in one `sendmsg`, and a long
/// one in reads and writes of up to the buffer's limit. A backend that
/// sends slowly has each piece relayed as it comes, never held back for
/// more.
async fn relay_length(
    from: &mut TcpStream,
    buf: &mut IoBuf,
    to: &mut TcpStream,
    head: &[u8],
    mut left: u64,
) -> Result<(), ProxyError> {
    let flow = Flow::Download;
    let mut head = head;
    loop {
        while (buf.len() as u64) < left && buf.filled_to_end() && buf.len() < buf.limit() {
            match buf.read_with(|spare| crate::io_now::read_now(from, spare)) {
                None => break,
                Some(Ok(0)) => return Err(flow.cut_short()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(flow.read_error(e)),
            }
        }
        let take = (buf.len() as u64).min(left) as usize;
        crate::io_now::write_all2(to, head, &buf.filled()[..take])
            .await
            .map_err(|e| flow.write_error(e))?;
        head = &[];
        buf.consume(take);
        left -= take as u64;
        if left == 0 {
            return Ok(());
        }
        fill(flow, from, buf).await?;
    }
}

/// Which way a body flows. Names the failures of each end, and sets the
/// write policy of [`copy_chunked`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// A request body, from the client to the backend.
    Upload,
    /// A response body, from the backend to the client.
    Download,
}

impl Flow {
    /// A failed read from the sending end.
    fn read_error(self, e: std::io::Error) -> ProxyError {
        match self {
            Flow::Upload => ProxyError::client_io(e),
            Flow::Download => ProxyError::backend_io(e),
        }
    }

    /// A failed write to the receiving end.
    fn write_error(self, e: std::io::Error) -> ProxyError {
        match self {
            Flow::Upload => ProxyError::backend_io(e),
            Flow::Download => ProxyError::ClientIo(e),
        }
    }

    /// The sender closed before the end of the body.
    fn cut_short(self) -> ProxyError {
        match self {
            Flow::Upload => ProxyError::ClientIo(std::io::ErrorKind::UnexpectedEof.into()),
            Flow::Download => ProxyError::BadResponse("backend closed mid-body"),
        }
    }

    /// The sender's body is malformed.
    fn malformed(self, what: &'static str) -> ProxyError {
        match self {
            Flow::Upload => ProxyError::BadRequest(what),
            Flow::Download => ProxyError::BadResponse(what),
        }
    }
}

/// Reads once more from the sending end of a body that has not ended.
async fn fill(flow: Flow, from: &mut TcpStream, buf: &mut IoBuf) -> Result<(), ProxyError> {
    match buf.read_from(from).await {
        Ok(0) => Err(flow.cut_short()),
        Ok(_) => Ok(()),
        // Only a chunk-size line can fill the buffer without being consumed.
        Err(e) if e.kind() == std::io::ErrorKind::OutOfMemory => {
            Err(flow.malformed("chunk size line too long"))
        }
        Err(e) => Err(flow.read_error(e)),
    }
}

/// Copies the next `left` body bytes from `from` to `to`, those already in
/// `buf` first, reading into `buf` as it empties.
async fn copy_length(
    flow: Flow,
    from: &mut TcpStream,
    buf: &mut IoBuf,
    to: &mut TcpStream,
    mut left: u64,
) -> Result<(), ProxyError> {
    while left > 0 {
        if buf.is_empty() {
            fill(flow, from, buf).await?;
        }
        let take = (buf.len() as u64).min(left) as usize;
        to.write_all(&buf.filled()[..take])
            .await
            .map_err(|e| flow.write_error(e))?;
        buf.consume(take);
        left -= take as u64;
    }
    Ok(())
}

/// Relays a chunked body from `from` to `to` through `dec` (those bytes
/// already in `buf` first), writing from `out`, which may start with a head
/// to send along. Adds the bytes written to `sent`, so a caller knows
/// whether anything went out when this fails.
///
/// An upload forwards each decoded piece at once: the client may wait on
/// the backend between pieces. A download writes when the buffer is
/// drained, the body is done or [`COALESCE`] bytes are pending, and holds
/// its head until the first chunk decoded, so a body invalid from its first
/// chunk still gets a 502.
async fn copy_chunked(
    flow: Flow,
    dec: &mut ChunkedDecoder,
    from: &mut TcpStream,
    buf: &mut IoBuf,
    to: &mut TcpStream,
    out: &mut Vec<u8>,
    sent: &mut u64,
) -> Result<(), ProxyError> {
    let eager = flow == Flow::Upload;
    loop {
        let used = dec
            .decode(buf.filled(), out)
            .map_err(|e| flow.malformed(e))?;
        buf.consume(used);
        let first_ok = eager || *sent > 0 || dec.payload > 0 || dec.is_done();
        if first_ok
            && (dec.is_done()
                || !out.is_empty() && (eager || buf.is_empty())
                || out.len() >= COALESCE)
        {
            to.write_all(out).await.map_err(|e| flow.write_error(e))?;
            *sent += out.len() as u64;
            out.clear();
        }
        if dec.is_done() {
            return Ok(());
        }
        if buf.is_empty() || used == 0 {
            fill(flow, from, buf).await?;
        }
    }
}

/// After a 101: relays bytes both ways, each direction until it ends, and
/// returns the bytes sent to the client. The client connection is done once
/// the tunnel is.
///
/// ```text
/// open --EOF one way--> half-closed --EOF the other way--> done
///  |    (shutdown(Write)   |  (the remaining direction gets an
///  |     towards the peer) |   idle timeout)
///  +------error either way, or idle timeout-------------> done
/// ```
///
/// A peer that half-closes (`shutdown(SHUT_WR)`) may still expect an
/// answer, so its EOF is passed on as a half-close and the other direction
/// keeps running. While both directions are open there is no timeout
/// (tunnels such as WebSockets may idle for long); once one has ended, the
/// other is closed after [`Config::read_timeout`] without a byte from the
/// backend, or [`Config::client_body_timeout`] without one from the client.
///
/// [`Config::read_timeout`]: crate::config::Config::read_timeout
/// [`Config::client_body_timeout`]: crate::config::Config::client_body_timeout
async fn tunnel(cx: &Context, ex: &mut Exchange<'_>, mut conn: BackendConn) -> u64 {
    let read_timeout = ex.pool().timeouts.read;
    let c = &mut *ex.client;
    let resp_out = &mut *ex.resp_out;
    resp_out.extend_from_slice(conn.buf.filled());
    conn.buf.clear();
    if c.stream.write_all(resp_out).await.is_err() {
        return 0;
    }
    let head = resp_out.len() as u64;
    if !c.buf.is_empty() {
        if conn.stream.write_all(c.buf.filled()).await.is_err() {
            return head;
        }
        c.buf.clear();
    }
    // Tunnels are long-lived and may idle: no per-read timeout on either
    // side; the half-closed phase has its own idle timer below.
    let _ = c.stream.set_read_timeout(None);
    let _ = conn.stream.set_read_timeout(None);
    let cfg = cx.config();
    let sent = Cell::new(head);
    let active = Cell::new(Instant::now());
    let (mut cr, mut cw) = futures_lite::io::split(&mut c.stream);
    let (mut br, mut bw) = futures_lite::io::split(&mut conn.stream);
    let mut up_buf = vec![0u8; TUNNEL_BUF];
    let mut down_buf = vec![0u8; TUNNEL_BUF];
    let mut up = pin!(pump(&mut cr, &mut bw, &mut up_buf, &active, None));
    let mut down = pin!(pump(&mut br, &mut cw, &mut down_buf, &active, Some(&sent)));

    // Open: both directions run until one ends. Neither future is dropped
    // while the other may still be needed, so no read byte is lost.
    let first = future::poll_fn(|cx| {
        if let Poll::Ready(clean) = up.as_mut().poll(cx) {
            return Poll::Ready((Direction::Up, clean));
        }
        if let Poll::Ready(clean) = down.as_mut().poll(cx) {
            return Poll::Ready((Direction::Down, clean));
        }
        Poll::Pending
    })
    .await;

    // Half-closed: the remaining direction runs until it ends or idles out.
    active.set(Instant::now());
    let idled_out = match first {
        (_, false) => false,
        (Direction::Up, true) => {
            // Ended cleanly or not, it did not idle out.
            let rest = async {
                down.as_mut().await;
                false
            };
            future::or(rest, idle_timer(&active, read_timeout)).await
        }
        (Direction::Down, true) => {
            let rest = async {
                up.as_mut().await;
                false
            };
            future::or(rest, idle_timer(&active, cfg.client_body_timeout)).await
        }
    };
    if idled_out {
        debug!(peer = %c.peer, "half-closed tunnel idle; closing");
    }
    sent.get()
}

/// Read size of each direction of a tunnel.
const TUNNEL_BUF: usize = 16 * 1024;

/// One direction of a tunnel.
#[derive(Debug, Clone, Copy)]
enum Direction {
    /// Client to backend.
    Up,
    /// Backend to client.
    Down,
}

/// Copies `from` to `to` until EOF, then half-closes `to` (`shutdown(Write)`
/// through `close`). Returns whether the direction ended cleanly (`false`
/// on an error either side: the whole tunnel is then torn down). Marks
/// `active` after every read and write; adds what it wrote to `sent`.
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    buf: &mut [u8],
    active: &Cell<Instant>,
    sent: Option<&Cell<u64>>,
) -> bool
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let n = match from.read(buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(_) => return false,
        };
        active.set(Instant::now());
        let Some(chunk) = buf.get(..n) else {
            return false;
        };
        if to.write_all(chunk).await.is_err() {
            return false;
        }
        active.set(Instant::now());
        if let Some(sent) = sent {
            sent.set(sent.get() + n as u64);
        }
    }
    to.close().await.is_ok()
}

/// Completes (with `true`: idled out) once `active` is more than `idle` in
/// the past.
/// Each turn sleeps until the current deadline, so it wakes at most once per
/// burst of activity.
async fn idle_timer(active: &Cell<Instant>, idle: Duration) -> bool {
    loop {
        let deadline = active.get() + idle;
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        glommio::timer::sleep(deadline - now).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_closes_and_resets_look_stale() {
        assert!(looks_stale(&ProxyError::BackendClosed));
        assert!(looks_stale(&ProxyError::BackendIo(
            std::io::ErrorKind::ConnectionReset.into()
        )));
        // A slow backend is not a stale connection.
        assert!(!looks_stale(&ProxyError::BackendTimeout));
        assert!(!looks_stale(&ProxyError::BadResponse("garbage")));
    }
}
