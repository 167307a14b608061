//! The admin API's routes: metrics, health, readiness, servers, stats,
//! reload. Every GET route also answers HEAD (the listener drops the body);
//! a method a route does not take gets 405 with `Allow`.
//!
//! A server is named by its id, or by its address and pool: the pool is the
//! `pool` member of a `POST`/`PUT` body or the `?pool=NAME` query parameter
//! ([`super::pool_param`]), `default` when neither is given.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};

use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{Api, Mode};
use super::pool_param;
use super::{Reply, Request};
use crate::backend::BackendId;
use crate::cluster::{self, Spec};
use crate::health::{BackendInfo, BreakerState, CheckSpec, Source};
use crate::metrics::{self, BackendCounts, BackendMetrics, MetricsSnapshot};

/// The path of a request target, without its query.
pub(super) fn path_of(target: &str) -> &str {
    target.split('?').next().unwrap_or("")
}

/// The methods a route takes (its 405's `Allow`); `None`: no such route.
fn allowed(path: &str) -> Option<&'static str> {
    match path {
        "/metrics" | "/health" | "/ready" | "/stats" | "/stats/detail" => Some("GET, HEAD"),
        "/servers" => Some("GET, HEAD, POST"),
        "/reload" => Some("POST"),
        p if p.starts_with("/servers/") => Some("GET, HEAD, PUT, DELETE"),
        _ => None,
    }
}

/// Whether the backends can take traffic: no executor stalled and at least
/// one backend up with its breaker not open.
fn ready(api: &impl Api) -> bool {
    api.stalled().is_empty()
        && api
            .backends()
            .iter()
            .any(|b| b.up && b.breaker != BreakerState::Open)
}

/// Answers one authenticated request (`/ready` needs no token).
pub(super) async fn route(req: Request, api: &impl Api) -> Reply {
    let path = path_of(&req.path);
    let Some(allow) = allowed(path) else {
        return Reply::error(404, "not found");
    };
    if !allow.split(", ").any(|m| m == req.method) {
        return Reply::not_allowed(allow);
    }
    // HEAD is GET without the body, which the listener leaves out.
    let method = match req.method.as_str() {
        "HEAD" => "GET",
        m => m,
    };
    match (method, path) {
        ("GET", "/metrics") => metrics_reply(api).await,
        // For load balancers and orchestrators in front of this one: no
        // token, and nothing but yes or no.
        ("GET", "/ready") => {
            if ready(api) {
                Reply::text(200, "ready\n")
            } else {
                Reply::text(503, "not ready\n")
            }
        }
        ("GET", "/health") => {
            let book = api.backends();
            let up = book
                .iter()
                .filter(|b| b.up && b.breaker != BreakerState::Open)
                .count();
            // Liveness: every executor answered its heartbeat recently.
            let stalled = api.stalled();
            let mut v = json!({
                "status": if stalled.is_empty() { "ok" } else { "stalled" },
                "workers": api.workers(),
                "backends": book.len(),
                "backends_up": up,
            });
            if !stalled.is_empty() {
                v["stalled"] = stalled
                    .iter()
                    .map(|(name, silent)| {
                        json!({"executor": name, "silent_ms": silent.as_millis() as u64})
                    })
                    .collect();
            }
            if let Some(c) = api.cluster() {
                v["cluster"] = json!({
                    "connected": c.connected,
                    "revision": c.revision,
                    "resyncs": c.resyncs,
                    "prefix": c.prefix,
                    "endpoints": c.endpoints,
                });
            }
            Reply::json(if stalled.is_empty() { 200 } else { 503 }, v)
        }
        ("GET", "/servers") => {
            // `?pool=NAME` lists one pool's servers.
            let pool = match pool_query(&req.path, api) {
                Ok(p) => p,
                Err(r) => return r,
            };
            let scrape = api.scrape().await;
            let per = per_backend(&scrape);
            let list: Vec<Value> = api
                .backends()
                .iter()
                .filter(|b| pool.as_deref().is_none_or(|p| *b.backend.pool == *p))
                .map(|b| server_json(b, per.get(&b.backend.id).copied().unwrap_or_default()))
                .collect();
            Reply::json(200, Value::Array(list))
        }
        ("POST", "/servers") => match pool_param::pool_query(&req.path) {
            Ok(None) => add_server(&req.body, api).await,
            Ok(Some(_)) => Reply::error(
                400,
                "POST /servers takes the pool as the body's `pool` member, not a query parameter",
            ),
            Err(why) => Reply::error(400, why),
        },
        ("GET", "/stats") => {
            let scrape = api.scrape().await;
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
            let scrape = api.scrape().await;
            let per = per_backend(&scrape);
            let list: Vec<Value> = api
                .backends()
                .iter()
                .map(|b| {
                    let c = per.get(&b.backend.id).copied().unwrap_or_default();
                    json!({
                        "id": b.backend.id.0,
                        "pool": &*b.backend.pool,
                        "address": b.backend.name,
                        "server": {"success": c.success, "failed": c.failed},
                        "inflight": c.inflight,
                    })
                })
                .collect();
            Reply::json(200, Value::Array(list))
        }
        ("POST", "/reload") => match api.reload() {
            Ok(msg) => Reply::json(200, json!({"reloaded": true, "message": msg})),
            Err(msg) => Reply::json(400, json!({"reloaded": false, "error": msg})),
        },
        (m, p) if p.starts_with("/servers/") => {
            let target = &p["/servers/".len()..];
            let id = target.parse::<u32>().ok().map(BackendId);
            let addr = target.parse::<SocketAddr>().ok();
            // Given with an id, the pool must be the id's; with an address,
            // it says which of the address's backends is meant.
            let asked = match pool_query(&req.path, api) {
                Ok(p) => p,
                Err(r) => return r,
            };
            let pool = asked
                .clone()
                .unwrap_or_else(|| crate::config::DEFAULT_POOL.to_string());
            let in_pool = |b: &BackendInfo| {
                if Some(b.backend.id) == id {
                    asked.as_deref().is_none_or(|p| *b.backend.pool == *p)
                } else {
                    Some(b.backend.addr) == addr && *b.backend.pool == *pool
                }
            };
            match m {
                "DELETE" if id.is_some() || addr.is_some() => {
                    if id.is_some() && asked.is_some() && !api.backends().iter().any(in_pool) {
                        return Reply::error(404, format!("no server `{target}` in pool `{pool}`"));
                    }
                    match api.deregister(id, &pool, addr).await {
                        Ok(()) => Reply::empty(204),
                        Err((status, msg)) => Reply::error(status, msg),
                    }
                }
                "PUT" => match addr {
                    Some(a) => put_server(a, asked.as_deref(), &req.body, api).await,
                    None => Reply::error(
                        404,
                        format!("PUT takes the server's address: /servers/ip:port, not `{target}`"),
                    ),
                },
                "GET" => {
                    let views = api.backends();
                    match views.iter().find(|b| in_pool(b)) {
                        Some(b) => Reply::json(200, server_json(b, BackendCounts::default())),
                        None if id.is_some() && asked.is_none() => {
                            Reply::error(404, format!("no server `{target}`"))
                        }
                        None => Reply::error(404, format!("no server `{target}` in pool `{pool}`")),
                    }
                }
                _ => Reply::error(404, format!("no server `{target}`")),
            }
        }
        // `allowed` and this match list the same routes.
        _ => Reply::error(404, "not found"),
    }
}

/// The configured pool a `?pool=NAME` query names, `None` when it names
/// none; a 400 for an unknown pool or another parameter.
fn pool_query(target: &str, api: &impl Api) -> Result<Option<String>, Reply> {
    match pool_param::pool_query(target) {
        Ok(None) => Ok(None),
        Ok(Some(q)) => pool_param::resolve(&api.config(), None, Some(q))
            .map(Some)
            .map_err(|why| Reply::error(400, why)),
        Err(why) => Err(Reply::error(400, why)),
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
        "pool": &*b.backend.pool,
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
    /// The pool it joins (`default` when absent).
    pool: Option<String>,
    weight: Option<u32>,
    check: Option<NewCheck>,
    ttl: Option<u64>,
}

/// The body of `PUT /servers/{address}` (the address is in the path).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PutServer {
    /// The pool (or `?pool=NAME`; both must agree when both are given).
    pool: Option<String>,
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
    pool: String,
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
        pool,
        addr,
        weight,
        check,
        ttl,
    })
}

fn registered(result: Result<(u16, BackendId), (u16, String)>, api: &impl Api) -> Reply {
    match result {
        Ok((status, id)) => {
            let views = api.backends();
            match views.iter().find(|b| b.backend.id == id) {
                Some(b) => Reply::json(status, server_json(b, BackendCounts::default())),
                None => Reply::json(status, json!({"id": id.0})),
            }
        }
        Err((status, msg)) => Reply::error(status, msg),
    }
}

async fn add_server(body: &[u8], api: &impl Api) -> Reply {
    let new: NewServer = match serde_json::from_slice(body) {
        Ok(n) => n,
        Err(e) => return Reply::error(400, format!("invalid JSON: {e}")),
    };
    let pool = match pool_param::resolve(&api.config(), new.pool.as_deref(), None) {
        Ok(p) => p,
        Err(why) => return Reply::error(400, why),
    };
    let spec = match parse_address(&new.address)
        .and_then(|addr| spec_of(pool, addr, new.weight, new.check, new.ttl))
    {
        Ok(s) => s,
        Err(r) => return r,
    };
    // A name is refused when any address it resolves to is this process.
    let addrs = crate::config::candidates(&new.address, spec.addr);
    if let Some(why) = api.own_addresses().refusal(&new.address, &addrs) {
        return Reply::error(400, why);
    }
    registered(api.register(spec, Mode::Create).await, api)
}

async fn put_server(addr: SocketAddr, query: Option<&str>, body: &[u8], api: &impl Api) -> Reply {
    let put: PutServer = if body.iter().all(u8::is_ascii_whitespace) {
        PutServer::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(p) => p,
            Err(e) => return Reply::error(400, format!("invalid JSON: {e}")),
        }
    };
    let pool = match pool_param::resolve(&api.config(), put.pool.as_deref(), query) {
        Ok(p) => p,
        Err(why) => return Reply::error(400, why),
    };
    let spec = match spec_of(pool, addr, put.weight, put.check, put.ttl) {
        Ok(s) => s,
        Err(r) => return r,
    };
    registered(api.register(spec, Mode::Upsert).await, api)
}

async fn metrics_reply(api: &impl Api) -> Reply {
    let scrape = api.scrape().await;
    let backends: Vec<BackendMetrics> = api
        .backends()
        .iter()
        .map(|b| BackendMetrics {
            id: b.backend.id,
            pool: b.backend.pool.to_string(),
            name: b.backend.name.clone(),
            up: b.up,
            breaker: b.breaker.as_number(),
            checks_ok: b.checks_ok,
            checks_failed: b.checks_failed,
        })
        .collect();
    let mut text = metrics::render(&scrape, &backends);
    metrics::render_build_info(&mut text);
    // Read here, on the control executor, when scraped: never per request.
    metrics::process::render(&mut text, &metrics::process::read());
    if let Some(c) = api.cluster() {
        metrics::render_cluster(
            &mut text,
            metrics::ClusterMetrics {
                connected: c.connected,
                resyncs: c.resyncs,
                revision: c.revision,
            },
        );
    }
    Reply {
        status: 200,
        content_type: "text/plain; version=0.0.4",
        body: text.into_bytes(),
        allow: None,
    }
}
