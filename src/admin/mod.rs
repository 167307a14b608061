//! The admin listener: Prometheus metrics, the JSON admin API, reload.
//!
//! Served by the health executor on its own socket (`admin_listen`), never by
//! the request workers, so admin traffic cannot reach the proxy port and the
//! proxy port cannot reach the admin API. One request per connection
//! (`Connection: close`); heads up to 16 KiB, bodies up to 64 KiB. When
//! `admin_token` is set every call needs `Authorization: Bearer <token>`.
//!
//! Routes: `GET /metrics`, `GET /health`, `GET /servers`, `POST /servers`,
//! `GET /servers/{id}`, `PUT /servers/{address}` (register or renew),
//! `DELETE /servers/{id or address}`, `GET /stats`, `GET /stats/detail`,
//! `POST /reload`. In cluster mode registrations go through etcd
//! ([`crate::health::registry`]); when etcd cannot be reached they are
//! refused with 503 and applied nowhere.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{debug, warn};

use crate::backend::BackendId;
use crate::cluster::{self, Spec};
use crate::health::BreakerState;
use crate::health::checker::{BackendInfo, CheckSpec, Health, Source};
use crate::health::registry::Mode;
use crate::metrics::{self, BackendCounts, BackendMetrics, MetricsSnapshot};

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 64 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A response from an admin handler.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Reply {
    fn json(status: u16, v: Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: serde_json::to_vec(&v).unwrap_or_default(),
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
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Accepts admin connections until cancelled.
pub async fn serve(listener: TcpListener, health: Rc<Health>) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let health = health.clone();
                glommio::spawn_local(async move {
                    if let Err(e) = handle_conn(stream, &health).await {
                        debug!("admin connection: {e}");
                    }
                })
                .detach();
            }
            Err(e) => {
                warn!("admin accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

struct Request {
    method: String,
    path: String,
    authorization: Option<String>,
    body: Vec<u8>,
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

async fn read_request(s: &mut TcpStream) -> Result<Request, Reply> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        read_more(s, &mut chunk, &mut buf, "incomplete request").await?;
        let mut slots: [MaybeUninit<httparse::Header<'_>>; 64] =
            [const { MaybeUninit::uninit() }; 64];
        let mut req = httparse::Request::new(&mut []);
        match req.parse_with_uninit_headers(&buf, &mut slots) {
            Ok(httparse::Status::Complete(head_len)) => {
                let method = req.method.unwrap_or("").to_string();
                let path = req.path.unwrap_or("").to_string();
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
                if content_length > MAX_BODY {
                    return Err(Reply::error(413, "body too large"));
                }
                let mut body = buf[head_len..].to_vec();
                while body.len() < content_length {
                    read_more(s, &mut chunk, &mut body, "incomplete body").await?;
                }
                body.truncate(content_length);
                return Ok(Request {
                    method,
                    path,
                    authorization,
                    body,
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

async fn handle_conn(mut s: TcpStream, health: &Rc<Health>) -> std::io::Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let reply = match read_request(&mut s).await {
        Ok(req) => route(req, health).await,
        Err(r) => r,
    };
    let challenge = if reply.status == 401 {
        "WWW-Authenticate: Bearer realm=\"ekilibri\"\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{challenge}Connection: close\r\nServer: ekilibri-admin\r\n\r\n",
        reply.status,
        reason(reply.status),
        reply.content_type,
        reply.body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(&reply.body);
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

async fn route(req: Request, health: &Rc<Health>) -> Reply {
    if let Some(token) = &health.config().admin_token {
        let ok = req
            .authorization
            .as_deref()
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| token_matches(t.trim(), token));
        if !ok {
            return Reply::error(401, "missing or wrong bearer token");
        }
    }
    let path = req.path.split('?').next().unwrap_or("");
    match (req.method.as_str(), path) {
        ("GET", "/metrics") => metrics_reply(health).await,
        ("GET", "/health") => {
            let book = health.book.borrow().views();
            let up = book
                .iter()
                .filter(|b| b.up && b.breaker != BreakerState::Open)
                .count();
            let mut v = json!({"status": "ok", "workers": health.workers(), "backends": book.len(), "backends_up": up});
            if let Some(c) = &health.cluster {
                v["cluster"] = json!({
                    "connected": c.connected.get(),
                    "revision": c.revision.get(),
                    "resyncs": c.resyncs.get(),
                    "prefix": c.handle.config.prefix,
                    "endpoints": c.handle.config.endpoints,
                });
            }
            Reply::json(200, v)
        }
        ("GET", "/servers") => {
            let scrape = health.scrape().await;
            let per = per_backend(&scrape);
            let list: Vec<Value> = health
                .book
                .borrow()
                .views()
                .iter()
                .map(|b| server_json(b, per.get(&b.backend.id).copied().unwrap_or_default()))
                .collect();
            Reply::json(200, Value::Array(list))
        }
        ("POST", "/servers") => add_server(&req.body, health).await,
        ("GET", "/stats") => {
            let scrape = health.scrape().await;
            let per = per_backend(&scrape);
            let (ok, failed) = per
                .values()
                .fold((0, 0), |a, c| (a.0 + c.success, a.1 + c.failed));
            let client_ok: u64 = scrape.iter().map(|m| m.client_success).sum();
            let client_failed: u64 = scrape.iter().map(|m| m.client_failed).sum();
            Reply::json(
                200,
                json!({
                    "client": {"success": client_ok, "failed": client_failed},
                    "server": {"success": ok, "failed": failed},
                }),
            )
        }
        ("GET", "/stats/detail") => {
            let scrape = health.scrape().await;
            let per = per_backend(&scrape);
            let list: Vec<Value> = health
                .book
                .borrow()
                .views()
                .iter()
                .map(|b| {
                    let c = per.get(&b.backend.id).copied().unwrap_or_default();
                    json!({
                        "id": b.backend.id.0,
                        "address": b.backend.name,
                        "server": {"success": c.success, "failed": c.failed},
                        "inflight": c.inflight,
                    })
                })
                .collect();
            Reply::json(200, Value::Array(list))
        }
        ("POST", "/reload") => match health.reload().await {
            Ok(msg) => Reply::json(200, json!({"reloaded": true, "message": msg})),
            Err(msg) => Reply::json(400, json!({"reloaded": false, "error": msg})),
        },
        (m, p) if p.starts_with("/servers/") => {
            let target = &p["/servers/".len()..];
            let id = target.parse::<u32>().ok().map(BackendId);
            let addr = target.parse::<SocketAddr>().ok();
            match m {
                "DELETE" if id.is_some() || addr.is_some() => {
                    match health.deregister(id, addr).await {
                        Ok(()) => Reply::empty(204),
                        Err((status, msg)) => Reply::error(status, msg),
                    }
                }
                "PUT" => match addr {
                    Some(a) => put_server(a, &req.body, health).await,
                    None => Reply::error(
                        404,
                        format!("PUT takes the server's address: /servers/ip:port, not `{target}`"),
                    ),
                },
                "GET" => {
                    let views = health.book.borrow().views();
                    match views
                        .iter()
                        .find(|b| Some(b.backend.id) == id || Some(b.backend.addr) == addr)
                    {
                        Some(b) => Reply::json(200, server_json(b, BackendCounts::default())),
                        None => Reply::error(404, format!("no server `{target}`")),
                    }
                }
                "DELETE" => Reply::error(404, format!("no server `{target}`")),
                _ => Reply::error(405, "method not allowed"),
            }
        }
        (_, "/metrics" | "/health" | "/servers" | "/stats" | "/stats/detail" | "/reload") => {
            Reply::error(405, "method not allowed")
        }
        _ => Reply::error(404, "not found"),
    }
}

fn per_backend(scrape: &[MetricsSnapshot]) -> HashMap<BackendId, BackendCounts> {
    let mut per: HashMap<BackendId, BackendCounts> = HashMap::new();
    for m in scrape {
        for (id, c) in &m.backends {
            let e = per.entry(*id).or_default();
            e.success += c.success;
            e.failed += c.failed;
            e.inflight += c.inflight;
        }
    }
    per
}

fn server_json(b: &BackendInfo, c: BackendCounts) -> Value {
    let check = match &b.check {
        CheckSpec::Http(path) => json!({"type": "http", "path": path}),
        CheckSpec::Tcp => json!({"type": "tcp"}),
    };
    json!({
        "id": b.backend.id.0,
        "address": b.backend.name,
        "weight": b.backend.weight,
        "health": if b.up { "up" } else { "down" },
        "breaker": match b.breaker {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        },
        "inflight": c.inflight,
        "source": match b.source {
            Source::Config => "config",
            Source::Api => "api",
            Source::Etcd => "etcd",
        },
        "key": b.key,
        "ttl": b.ttl,
        "check": check,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewServer {
    address: String,
    weight: Option<u32>,
    check: Option<NewCheck>,
    ttl: Option<u64>,
}

/// The body of `PUT /servers/{address}` (the address is in the path).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PutServer {
    weight: Option<u32>,
    check: Option<NewCheck>,
    ttl: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCheck {
    #[serde(rename = "type")]
    kind: String,
    path: Option<String>,
}

/// Resolves `host:port` (an IP address, or a name resolved once now).
fn parse_address(address: &str) -> Result<SocketAddr, Reply> {
    match address.parse::<SocketAddr>() {
        Ok(a) => Ok(a),
        Err(_) => match address.to_socket_addrs().ok().and_then(|mut i| i.next()) {
            Some(a) if address.contains(':') => Ok(a),
            _ => Err(Reply::error(
                400,
                format!("`{address}` is not a valid host:port address"),
            )),
        },
    }
}

/// Checks the optional members of a registration into a [`Spec`].
fn spec_of(
    addr: SocketAddr,
    weight: Option<u32>,
    check: Option<NewCheck>,
    ttl: Option<u64>,
) -> Result<Spec, Reply> {
    let bad = |m: String| Reply::error(400, m);
    let weight = cluster::check_weight(weight.unwrap_or(1)).map_err(bad)?;
    let check = match check {
        None => None,
        Some(c) => cluster::check_from_parts(&c.kind, c.path).map_err(bad)?,
    };
    let ttl = match ttl {
        None => None,
        Some(t) => Some(cluster::check_ttl(t).map_err(bad)?),
    };
    Ok(Spec {
        addr,
        weight,
        check,
        ttl,
    })
}

fn registered(result: Result<(u16, BackendId), (u16, String)>, health: &Rc<Health>) -> Reply {
    match result {
        Ok((status, id)) => {
            let views = health.book.borrow().views();
            match views.iter().find(|b| b.backend.id == id) {
                Some(b) => Reply::json(status, server_json(b, BackendCounts::default())),
                None => Reply::json(status, json!({"id": id.0})),
            }
        }
        Err((status, msg)) => Reply::error(status, msg),
    }
}

async fn add_server(body: &[u8], health: &Rc<Health>) -> Reply {
    let new: NewServer = match serde_json::from_slice(body) {
        Ok(n) => n,
        Err(e) => return Reply::error(400, format!("invalid JSON: {e}")),
    };
    let spec = match parse_address(&new.address)
        .and_then(|addr| spec_of(addr, new.weight, new.check, new.ttl))
    {
        Ok(s) => s,
        Err(r) => return r,
    };
    registered(health.register(spec, Mode::Create).await, health)
}

async fn put_server(addr: SocketAddr, body: &[u8], health: &Rc<Health>) -> Reply {
    let put: PutServer = if body.iter().all(u8::is_ascii_whitespace) {
        PutServer::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(p) => p,
            Err(e) => return Reply::error(400, format!("invalid JSON: {e}")),
        }
    };
    let spec = match spec_of(addr, put.weight, put.check, put.ttl) {
        Ok(s) => s,
        Err(r) => return r,
    };
    registered(health.register(spec, Mode::Upsert).await, health)
}

async fn metrics_reply(health: &Rc<Health>) -> Reply {
    let scrape = health.scrape().await;
    let backends: Vec<BackendMetrics> = health
        .book
        .borrow()
        .views()
        .iter()
        .map(|b| BackendMetrics {
            id: b.backend.id,
            name: b.backend.name.clone(),
            up: b.up,
            breaker: b.breaker.as_number(),
            checks_ok: b.checks_ok,
            checks_failed: b.checks_failed,
        })
        .collect();
    let mut text = metrics::render(&scrape, &backends);
    if let Some(c) = &health.cluster {
        metrics::render_cluster(
            &mut text,
            metrics::ClusterMetrics {
                connected: c.connected.get(),
                resyncs: c.resyncs.get(),
                revision: c.revision.get(),
            },
        );
    }
    Reply {
        status: 200,
        content_type: "text/plain; version=0.0.4",
        body: text.into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abd", "abc"));
        assert!(!token_matches("ab", "abc"));
    }
}
