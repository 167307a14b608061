//! The admin API and the metrics name the pool: `POST /servers` with a
//! `pool` member, `?pool=NAME` on `PUT`, `DELETE` and `GET /servers/...`,
//! `"pool"` in every server's JSON, a 400 naming the configured pools for
//! any other, and a `pool` label (before `backend`) on every per-backend
//! series.
//!
//! Each test runs the real binary with a default pool and a pool `api` that
//! `[[routes]] path_prefix = "/api/"` sends requests to, and tells the
//! backends apart by the `X-Backend-Port` header `ekilibri-backend` sets on
//! every answer.

mod common;
#[path = "common/prometheus.rs"]
mod prometheus;

use common::*;
use prometheus::{Exposition, parse_exposition};
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;

/// Deadline of every poll in this file.
const WAIT: Duration = Duration::from_secs(5);

/// The configuration: `default` with `default_backend`, pool `api` with
/// `api_backend` and its own health check path (`/stats`, which
/// `ekilibri-backend` answers with 200), and the route to it.
fn pools_toml(default_backend: &Backend, api_backend: &Backend) -> String {
    let mut toml = Config::for_backends(std::slice::from_ref(default_backend))
        .with("health_check_interval", "100")
        .to_toml();
    toml.push_str(&format!(
        "\n[pools.api]\nservers = [\"{}\"]\nhealth_check_path = \"/stats\"\n\n\
         [[routes]]\npath_prefix = \"/api/\"\npool = \"api\"\n",
        api_backend.addr()
    ));
    toml
}

/// One admin call on a fresh connection.
fn call(port: u16, method: &str, path: &str, body: &str) -> Response {
    let mut headers = vec![("Connection", "close")];
    let len = body.len().to_string();
    if method != "GET" {
        headers.push(("Content-Length", &len));
    }
    one_request(port, method, path, &headers, body.as_bytes())
}

/// One admin call answered with JSON: its status and value.
fn json(port: u16, method: &str, path: &str, body: &str) -> (u16, Value) {
    let r = call(port, method, path, body);
    (r.status, json_of(&r))
}

/// `GET /servers` (with `query`, e.g. `?pool=api`) as a list.
#[track_caller]
fn servers(port: u16, query: &str) -> Vec<Value> {
    match json(port, "GET", &format!("/servers{query}"), "") {
        (200, Value::Array(list)) => list,
        other => panic!("GET /servers{query}: {other:?}"),
    }
}

/// The server at `addr` in `pool`, as `GET /servers` lists it.
fn server(port: u16, pool: &str, addr: &str) -> Option<Value> {
    servers(port, "")
        .into_iter()
        .find(|s| s["pool"] == pool && s["address"] == addr)
}

/// Polls until the server at `addr` in `pool` is up.
#[track_caller]
fn wait_up(port: u16, pool: &str, addr: &str) {
    let up = poll_until(WAIT, || {
        server(port, pool, addr).filter(|s| s["health"] == "up")
    });
    assert!(
        up.is_some(),
        "{addr} in pool {pool} never came up: {:?}",
        servers(port, "")
    );
}

/// The backend ports that answered `n` fresh-connection requests for `path`.
fn ports_for(lb: &Balancer, path: &str, n: usize) -> HashSet<u16> {
    (0..n)
        .map(|_| {
            let r = http_get(lb.port, path);
            r.backend_port()
        })
        .collect()
}

/// Polls until requests for `path` reach exactly `ports`.
#[track_caller]
fn wait_ports(lb: &Balancer, path: &str, ports: &[u16]) {
    let want: HashSet<u16> = ports.iter().copied().collect();
    let mut last = HashSet::new();
    let seen = poll_until(WAIT, || {
        last = ports_for(lb, path, 12);
        (last == want).then_some(())
    });
    assert!(
        seen.is_some(),
        "{path}: reached {last:?}, expected {want:?}"
    );
}

#[track_caller]
fn metrics(port: u16) -> Exposition {
    let r = call(port, "GET", "/metrics", "");
    assert_eq!(r.status, 200, "GET /metrics: {r:?}");
    let text = r.body_str();
    parse_exposition(&text).unwrap_or_else(|e| panic!("bad exposition: {e}\n{text}"))
}

#[test]
fn servers_are_registered_into_a_named_pool() {
    let d = spawn_backend();
    let a = spawn_backend();
    let extra = spawn_backend();
    let lb = spawn_balancer_toml(&pools_toml(&d, &a), &[]);
    let admin = admin_port(&lb);

    // Every server shows its pool.
    let list = servers(admin, "");
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(
        server(admin, "default", &d.addr()).expect("d")["source"],
        "config"
    );
    assert_eq!(
        server(admin, "api", &a.addr()).expect("a")["source"],
        "config"
    );
    let api_only = servers(admin, "?pool=api");
    assert_eq!(api_only.len(), 1, "{api_only:?}");
    assert_eq!(api_only[0]["address"], a.addr());

    // Into pool api, with the pool's own check path (no check given).
    let body = format!(r#"{{"address": "{}", "pool": "api"}}"#, extra.addr());
    let (status, v) = json(admin, "POST", "/servers", &body);
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["pool"], "api", "{v}");
    assert_eq!(v["check"]["path"], "/stats", "{v}");
    let extra_id = v["id"].as_u64().expect("id");
    wait_up(admin, "api", &extra.addr());
    // Routed to pool api: its two backends; never to the default pool's.
    wait_ports(&lb, "/api/x", &[a.port, extra.port]);
    wait_ports(&lb, "/", &[d.port]);

    // The same address in a second pool is a second backend.
    let body = format!(r#"{{"address": "{}"}}"#, extra.addr());
    let (status, v) = json(admin, "POST", "/servers", &body);
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["pool"], "default", "{v}");
    assert_eq!(v["check"]["path"], "/health", "{v}");
    assert_ne!(v["id"].as_u64(), Some(extra_id), "{v}");
    wait_up(admin, "default", &extra.addr());
    wait_ports(&lb, "/", &[d.port, extra.port]);
    // A second POST into the same pool is refused, in either pool.
    let (status, v) = json(admin, "POST", "/servers", &body);
    assert_eq!(status, 400, "{v}");

    // GET by address takes the pool.
    let (status, v) = json(
        admin,
        "GET",
        &format!("/servers/{}?pool=api", extra.addr()),
        "",
    );
    assert_eq!((status, v["id"].as_u64()), (200, Some(extra_id)), "{v}");

    // PUT into pool api by query parameter: an update of that backend.
    let (status, v) = json(
        admin,
        "PUT",
        &format!("/servers/{}?pool=api", extra.addr()),
        r#"{"weight": 3}"#,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["id"].as_u64(), &v["weight"]),
        (Some(extra_id), &Value::from(3)),
        "{v}"
    );
    // A body member and a query that disagree are refused.
    let r = call(
        admin,
        "PUT",
        &format!("/servers/{}?pool=api", extra.addr()),
        r#"{"pool": "default"}"#,
    );
    assert_eq!(r.status, 400, "{r:?}");

    // DELETE by address and pool removes that pool's backend only.
    let r = call(
        admin,
        "DELETE",
        &format!("/servers/{}?pool=api", extra.addr()),
        "",
    );
    assert_eq!(r.status, 204, "{r:?}");
    assert!(server(admin, "api", &extra.addr()).is_none());
    assert!(server(admin, "default", &extra.addr()).is_some());
    wait_ports(&lb, "/api/x", &[a.port]);
    wait_ports(&lb, "/", &[d.port, extra.port]);
    // Without `?pool`, the default pool's.
    let r = call(admin, "DELETE", &format!("/servers/{}", extra.addr()), "");
    assert_eq!(r.status, 204, "{r:?}");
    assert!(server(admin, "default", &extra.addr()).is_none());
    // By id, with a pool that is not the id's: no such server there.
    let a_id = server(admin, "api", &a.addr()).expect("a")["id"]
        .as_u64()
        .expect("id");
    let r = call(
        admin,
        "DELETE",
        &format!("/servers/{a_id}?pool=default"),
        "",
    );
    assert_eq!(r.status, 404, "{r:?}");
    assert!(server(admin, "api", &a.addr()).is_some());
}

#[test]
fn an_unknown_pool_is_refused_naming_the_configured_ones() {
    let d = spawn_backend();
    let a = spawn_backend();
    let lb = spawn_balancer_toml(&pools_toml(&d, &a), &[]);
    let admin = admin_port(&lb);
    let addr = closed_port();
    let refused = |method: &str, path: &str, body: &str| {
        let (status, v) = json(admin, method, path, body);
        assert_eq!(status, 400, "{method} {path} {body}: {v}");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(
            msg.contains("`web`") && msg.contains("default, api"),
            "{method} {path}: {msg}"
        );
    };
    refused(
        "POST",
        "/servers",
        &format!(r#"{{"address": "127.0.0.1:{addr}", "pool": "web"}}"#),
    );
    refused("PUT", &format!("/servers/127.0.0.1:{addr}?pool=web"), "");
    refused(
        "PUT",
        &format!("/servers/127.0.0.1:{addr}"),
        r#"{"pool": "web"}"#,
    );
    refused("DELETE", &format!("/servers/{}?pool=web", d.addr()), "");
    refused("GET", "/servers?pool=web", "");
    // A misspelt parameter is refused rather than read as the default pool.
    let (status, v) = json(
        admin,
        "DELETE",
        &format!("/servers/{}?pol=api", a.addr()),
        "",
    );
    assert_eq!(status, 400, "{v}");
    assert_eq!(servers(admin, "").len(), 2, "nothing was added or removed");
}

#[test]
fn every_per_backend_series_names_its_pool() {
    let d = spawn_backend();
    let a = spawn_backend();
    let lb = spawn_balancer_toml(&pools_toml(&d, &a), &[]);
    let admin = admin_port(&lb);
    // The default pool's backend registered into pool api too.
    let body = format!(r#"{{"address": "{}", "pool": "api"}}"#, d.addr());
    let (status, v) = json(admin, "POST", "/servers", &body);
    assert_eq!(status, 201, "{v}");
    wait_up(admin, "api", &d.addr());
    wait_ports(&lb, "/api/x", &[a.port, d.port]);
    assert_eq!(http_get(lb.port, "/").backend_port(), d.port);

    let m = poll_until(WAIT, || {
        let m = metrics(admin);
        let counted = |pool: &str, addr: &str| {
            m.sum("lb_requests_total", &[("pool", pool), ("backend", addr)]) >= 1.0
        };
        (counted("api", &d.addr()) && counted("api", &a.addr()) && counted("default", &d.addr()))
            .then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "requests not counted by pool:\n{:?}",
            metrics(admin).samples
        )
    });

    // One address in two pools: two series in every per-backend family.
    for family in [
        "lb_backend_health_status",
        "lb_circuit_breaker_state",
        "lb_backend_response_seconds_count",
    ] {
        for (pool, addr) in [("default", d.addr()), ("api", d.addr()), ("api", a.addr())] {
            m.value(family, &[("pool", pool), ("backend", &addr)]);
        }
    }
    let a_addr = a.addr();
    let stray = [("pool", "default"), ("backend", a_addr.as_str())];
    assert_eq!(
        m.matching("lb_backend_health_status", &stray).count(),
        0,
        "a is not in the default pool"
    );
    for s in &m.samples {
        let per_backend = s.name.starts_with("lb_backend_")
            || s.name.starts_with("lb_circuit_breaker")
            || s.name.starts_with("lb_health_checks")
            || (s.name == "lb_requests_total" && s.labels["backend"] != "none");
        if per_backend {
            let pool = s.labels.get("pool").map(String::as_str);
            assert!(
                matches!(pool, Some("default" | "api")),
                "{} {:?} has no pool label",
                s.name,
                s.labels
            );
        }
    }
}
