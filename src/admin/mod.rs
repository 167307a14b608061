//! The admin listener: Prometheus metrics, the JSON admin API, reload.
//!
//! Served by the control executor on its own socket (`admin_listen`), never
//! by the request workers, so admin traffic cannot reach the proxy port and
//! the proxy port cannot reach the admin API. One request per connection
//! (`Connection: close`); heads up to 16 KiB, bodies up to 64 KiB. When
//! `admin_token` is set every call needs `Authorization: Bearer <token>`
//! (scheme in any case), checked as soon as the head is in, before any body
//! is read.
//!
//! It cannot starve the data plane: at most [`MAX_CONNECTIONS`] admin
//! connections are open at once (more are closed at once, before reading),
//! and a head must arrive whole within [`HEAD_TIMEOUT`].
//!
//! Routes (`routes`): `GET /metrics`, `GET /health`, `GET /ready` (the
//! one route that needs no token: 200 or 503 and nothing more),
//! `GET /servers`, `POST /servers`, `GET /servers/{id}`,
//! `PUT /servers/{address}` (register or renew),
//! `DELETE /servers/{id or address}`, `GET /stats`, `GET /stats/detail`,
//! `POST /reload`. Every GET route answers HEAD; a method a route does not
//! take gets 405 with `Allow`. What they do is asked of the control
//! executor through the [`Api`] trait it implements.

pub mod api;
mod pool_param;
mod routes;

use std::cell::Cell;
use std::mem::MaybeUninit;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use serde_json::{Value, json};
use tracing::{debug, warn};

pub use api::{Api, ClusterStatus, Mode, Refusal};

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 64 * 1024;
/// Open admin connections at most: enough for a few scrapers and an
/// operator, far below any descriptor limit, so a flood of idle admin
/// connections cannot take the descriptors the proxy needs.
pub const MAX_CONNECTIONS: usize = 64;
/// A whole request head must arrive within this (slowloris on the admin
/// port ends here, not after 10 s per read).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest silence while reading a body, and bound on writing the reply.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// At most one warning about refused connections per this period.
const WARN_EVERY: Duration = Duration::from_secs(5);

/// A response from an admin handler.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    /// The route's methods, sent as `Allow` with a 405.
    allow: Option<&'static str>,
}

impl Reply {
    fn json(status: u16, v: Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: serde_json::to_vec(&v).unwrap_or_default(),
            allow: None,
        }
    }

    fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
            allow: None,
        }
    }

    /// 405, naming the methods the route takes.
    fn not_allowed(allow: &'static str) -> Reply {
        Reply {
            allow: Some(allow),
            ..Reply::error(405, format!("method not allowed (allowed: {allow})"))
        }
    }

    fn error(status: u16, msg: impl Into<String>) -> Reply {
        Reply::json(status, json!({ "error": msg.into() }))
    }

    fn empty(status: u16) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: Vec::new(),
            allow: None,
        }
    }
}

/// The reason phrase of an admin reply's status line.
fn reason(status: u16) -> &'static str {
    crate::http::status::reason(status).unwrap_or("Error")
}

/// Counts an open admin connection; uncounts it on drop.
struct Open(Rc<Cell<usize>>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// Accepts admin connections until cancelled.
pub async fn serve<A: Api + Clone + 'static>(listener: TcpListener, api: A) {
    let open = Rc::new(Cell::new(0usize));
    let mut last_warn: Option<Instant> = None;
    loop {
        match listener.accept().await {
            Ok(stream) => {
                if open.get() >= MAX_CONNECTIONS {
                    if last_warn.is_none_or(|t| t.elapsed() > WARN_EVERY) {
                        warn!(
                            limit = MAX_CONNECTIONS,
                            "admin connection limit reached; closing new admin connections"
                        );
                        last_warn = Some(Instant::now());
                    }
                    drop(stream);
                    continue;
                }
                open.set(open.get() + 1);
                let guard = Open(open.clone());
                let api = api.clone();
                glommio::spawn_local(async move {
                    let _guard = guard;
                    if let Err(e) = handle_conn(stream, &api).await {
                        debug!("admin connection: {e}");
                    }
                })
                .detach();
            }
            Err(e) => {
                if last_warn.is_none_or(|t| t.elapsed() > WARN_EVERY) {
                    warn!("admin accept failed: {e}");
                    last_warn = Some(Instant::now());
                }
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// An admin request, head and body.
struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

/// What the head says.
struct Head {
    method: String,
    path: String,
    authorization: Option<String>,
    content_length: usize,
    /// Body bytes read with the head.
    rest: Vec<u8>,
}

/// Reads once into `chunk` and appends to `into`; end of stream is a 400
/// saying what was incomplete.
async fn read_more(
    s: &mut TcpStream,
    chunk: &mut [u8],
    into: &mut Vec<u8>,
    incomplete: &'static str,
) -> Result<(), Reply> {
    let n = s
        .read(chunk)
        .await
        .map_err(|_| Reply::error(400, "read failed"))?;
    if n == 0 {
        return Err(Reply::error(400, incomplete));
    }
    into.extend_from_slice(&chunk[..n]);
    Ok(())
}

async fn read_head(s: &mut TcpStream) -> Result<Head, Reply> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        read_more(s, &mut chunk, &mut buf, "incomplete request").await?;
        let mut slots: [MaybeUninit<httparse::Header<'_>>; 64] =
            [const { MaybeUninit::uninit() }; 64];
        let mut req = httparse::Request::new(&mut []);
        match req.parse_with_uninit_headers(&buf, &mut slots) {
            Ok(httparse::Status::Complete(head_len)) => {
                let mut authorization = None;
                let mut content_length = 0usize;
                for h in req.headers.iter() {
                    if h.name.eq_ignore_ascii_case("authorization") {
                        authorization = std::str::from_utf8(h.value).ok().map(str::to_string);
                    } else if h.name.eq_ignore_ascii_case("content-length") {
                        content_length = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse().ok())
                            .ok_or_else(|| Reply::error(400, "invalid Content-Length"))?;
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        return Err(Reply::error(400, "send the body with Content-Length"));
                    }
                }
                return Ok(Head {
                    method: req.method.unwrap_or("").to_string(),
                    path: req.path.unwrap_or("").to_string(),
                    authorization,
                    content_length,
                    rest: buf[head_len..].to_vec(),
                });
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HEAD {
                    return Err(Reply::error(431, "request head too large"));
                }
            }
            Err(_) => return Err(Reply::error(400, "malformed request")),
        }
    }
}

async fn read_body(s: &mut TcpStream, head: &mut Head) -> Result<Vec<u8>, Reply> {
    if head.content_length > MAX_BODY {
        return Err(Reply::error(413, "body too large"));
    }
    let mut body = std::mem::take(&mut head.rest);
    let mut chunk = [0u8; 4096];
    while body.len() < head.content_length {
        read_more(s, &mut chunk, &mut body, "incomplete body").await?;
    }
    body.truncate(head.content_length);
    Ok(body)
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is
/// case-insensitive (RFC 9110 §11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let value = value.trim_start();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The reply to one request, and whether it was a HEAD (sent without body).
async fn answer(s: &mut TcpStream, api: &impl Api) -> (Reply, bool) {
    let head = futures_lite::future::or(read_head(s), async {
        glommio::timer::sleep(HEAD_TIMEOUT).await;
        Err(Reply::error(408, "request head not received in time"))
    })
    .await;
    let head = match head {
        Ok(h) => h,
        Err(r) => return (r, false),
    };
    let is_head = head.method == "HEAD";
    (authorized(s, head, api).await, is_head)
}

/// Checks the token (`/ready` is public), reads the body and routes.
async fn authorized(s: &mut TcpStream, mut head: Head, api: &impl Api) -> Reply {
    let public = routes::path_of(&head.path) == "/ready";
    if let Some(token) = api.config().admin_token.as_ref().filter(|_| !public) {
        let ok = head
            .authorization
            .as_deref()
            .and_then(bearer_token)
            .is_some_and(|t| token_matches(t, token));
        if !ok {
            return Reply::error(401, "missing or wrong bearer token");
        }
    }
    let body = match read_body(s, &mut head).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let req = Request {
        method: head.method,
        path: head.path,
        body,
    };
    routes::route(req, api).await
}

async fn handle_conn(mut s: TcpStream, api: &impl Api) -> std::io::Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let (reply, is_head) = answer(&mut s, api).await;
    let challenge = if reply.status == 401 {
        "WWW-Authenticate: Bearer realm=\"ekilibri\"\r\n"
    } else {
        ""
    };
    let allow = reply
        .allow
        .map(|a| format!("Allow: {a}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{challenge}{allow}Connection: close\r\nServer: ekilibri-admin\r\n\r\n",
        reply.status,
        reason(reply.status),
        reply.content_type,
        reply.body.len()
    );
    let mut out = head.into_bytes();
    // HEAD: the same head, Content-Length included, and no body.
    if !is_head {
        out.extend_from_slice(&reply.body);
    }
    s.write_all(&out).await?;
    s.close().await
}

/// Constant-time comparison, so the token cannot be guessed byte by byte.
fn token_matches(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_in_any_case() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc "), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }

    #[test]
    fn token_comparison() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abd", "abc"));
        assert!(!token_matches("ab", "abc"));
    }
}
