//! Forwarding fields and request ids (issue 16), over real loopback sockets
//! against the real binary: what the backend receives (`ekilibri-backend`'s
//! `/headers` answers with the request head it got), what the client gets
//! back and what the access log writes. The client is always 127.0.0.1:
//! `trusted_proxies = ["127.0.0.0/8"]` trusts it, `["10.0.0.0/8"]` does not.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// A balancer in front of `backend` trusting `trusted`, with `forwarded`,
/// logging `$request_id $request` to `log`.
fn balancer(backend: &Backend, trusted: &str, forwarded: bool, log: &TempFile) -> Balancer {
    let config = Config::for_backends(std::slice::from_ref(backend))
        .with("trusted_proxies", &format!("[\"{trusted}\"]"))
        .with("forwarded", if forwarded { "true" } else { "false" })
        .with("access_log", "\"custom\"")
        .with("access_log_format", "'$request_id $request'")
        .with(
            "access_log_path",
            &format!("\"{}\"", log.path.to_str().expect("UTF-8 temp path")),
        );
    spawn_balancer(&config, &[])
}

fn temp_log() -> TempFile {
    TempFile {
        path: unique_temp_path(".log"),
    }
}

/// Every value of field `name` in the request head the backend echoed.
fn seen(r: &Response, name: &str) -> Vec<String> {
    r.body_str()
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

/// The one value of `name` the backend saw (`None`: none; two fail).
fn seen_one(r: &Response, name: &str) -> Option<String> {
    let v = seen(r, name);
    assert!(
        v.len() <= 1,
        "{name} twice at the backend: {:?}",
        r.body_str()
    );
    v.into_iter().next()
}

/// The `(id, request line)` pairs of the access log, once `n` are there.
fn log_lines(path: &Path, n: usize) -> Vec<(String, String)> {
    let read = || -> Vec<(String, String)> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(id, req)| (id.to_string(), req.to_string()))
            .collect()
    };
    poll_until(WAIT, || {
        let l = read();
        (l.len() >= n).then_some(l)
    })
    .unwrap_or_else(|| panic!("fewer than {n} log lines: {:?}", read()))
}

fn is_generated(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What a proxy in front of ekilibri would send.
const FROM_A_PROXY: &[(&str, &str)] = &[
    ("X-Forwarded-For", "203.0.113.9"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "shop.example"),
    ("Forwarded", "for=203.0.113.9;proto=https"),
    ("X-Request-Id", "edge-42"),
];

#[test]
fn a_trusted_peer_is_believed() {
    let backend = spawn_backend();
    let log = temp_log();
    let lb = balancer(&backend, "127.0.0.0/8", false, &log);
    let r = one_request(lb.port, "GET", "/headers?trusted", FROM_A_PROXY, b"");
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(
        seen(&r, "X-Forwarded-For"),
        ["203.0.113.9, 127.0.0.1"],
        "appended"
    );
    assert_eq!(seen(&r, "X-Forwarded-Proto"), ["https"]);
    assert_eq!(seen(&r, "X-Forwarded-Host"), ["shop.example"]);
    assert_eq!(
        seen(&r, "Forwarded"),
        ["for=203.0.113.9;proto=https"],
        "passed on while `forwarded` is off"
    );
    assert_eq!(seen(&r, "X-Request-Id"), ["edge-42"]);
    assert_eq!(r.header("X-Request-Id"), Some("edge-42"));
    let lines = log_lines(&log.path, 1);
    assert_eq!(lines[0].0, "edge-42", "{lines:?}");
}

#[test]
fn an_untrusted_peer_is_replaced() {
    let backend = spawn_backend();
    let log = temp_log();
    let lb = balancer(&backend, "10.0.0.0/8", false, &log);
    let r = one_request(lb.port, "GET", "/headers?untrusted", FROM_A_PROXY, b"");
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(seen(&r, "X-Forwarded-For"), ["127.0.0.1"], "replaced");
    assert_eq!(seen(&r, "X-Forwarded-Proto"), ["http"]);
    assert_eq!(seen(&r, "X-Forwarded-Host"), ["127.0.0.1"], "the Host sent");
    assert_eq!(seen(&r, "Forwarded"), Vec::<String>::new(), "dropped");
    let id = seen_one(&r, "X-Request-Id").expect("an id at the backend");
    assert!(is_generated(&id), "{id}");
    assert_eq!(r.header("X-Request-Id"), Some(id.as_str()));
    let lines = log_lines(&log.path, 1);
    assert_eq!(lines[0].0, id, "{lines:?}");
}

#[test]
fn generated_ids_are_unique_and_the_same_at_backend_client_and_log() {
    let backend = spawn_backend();
    let log = temp_log();
    let lb = balancer(&backend, "127.0.0.0/8", false, &log);
    let mut c = lb.connect();
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = c.request("GET", &format!("/headers?n={i}"), &[], b"");
        assert_eq!(r.status, 200);
        let id = seen_one(&r, "X-Request-Id").expect("an id at the backend");
        assert!(is_generated(&id), "{id}");
        assert_eq!(r.header("X-Request-Id"), Some(id.as_str()), "request {i}");
        ids.push((id, format!("GET /headers?n={i} HTTP/1.1")));
    }
    // An unacceptable incoming id, even from a trusted peer, is replaced.
    let long = "x".repeat(201);
    let r = c.request("GET", "/headers?long", &[("X-Request-Id", &long)], b"");
    let id = seen_one(&r, "X-Request-Id").expect("an id at the backend");
    assert!(is_generated(&id), "{id}");
    ids.push((id, "GET /headers?long HTTP/1.1".to_string()));
    let mut lines = log_lines(&log.path, ids.len());
    lines.sort();
    ids.sort();
    assert_eq!(lines, ids);
    let mut unique: Vec<&String> = ids.iter().map(|(id, _)| id).collect();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "ids repeat: {ids:?}");
}

#[test]
fn forwarded_is_added_only_when_on() {
    let backend = spawn_backend();
    let log = temp_log();
    let off = balancer(&backend, "10.0.0.0/8", false, &log);
    let r = one_request(off.port, "GET", "/headers", &[], b"");
    assert_eq!(seen(&r, "Forwarded"), Vec::<String>::new());
    drop(off);

    let log = temp_log();
    let on = balancer(&backend, "10.0.0.0/8", true, &log);
    let r = one_request(
        on.port,
        "GET",
        "/headers",
        &[("Host", "shop.example:8443"), ("Forwarded", "for=6.6.6.6")],
        b"",
    );
    assert_eq!(
        seen(&r, "Forwarded"),
        ["for=127.0.0.1;host=\"shop.example:8443\";proto=http"],
        "the untrusted element is replaced"
    );
    assert_eq!(seen(&r, "X-Forwarded-Host"), ["shop.example:8443"]);
    drop(on);

    let log = temp_log();
    let trusted = balancer(&backend, "127.0.0.0/8", true, &log);
    let r = one_request(trusted.port, "GET", "/headers", FROM_A_PROXY, b"");
    assert_eq!(
        seen(&r, "Forwarded"),
        ["for=203.0.113.9;proto=https, for=127.0.0.1;host=127.0.0.1;proto=http"],
        "appended to a trusted peer's"
    );
}

#[test]
fn errors_of_our_own_carry_the_id() {
    let backend = spawn_backend();
    let log = temp_log();
    let lb = balancer(&backend, "10.0.0.0/8", false, &log);
    // A malformed head: 400, with the id made for it.
    let mut c = lb.connect();
    c.send(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 400);
    let id = r
        .header("X-Request-Id")
        .expect("an id on the 400")
        .to_string();
    assert!(is_generated(&id), "{id}");
    let lines = log_lines(&log.path, 1);
    assert_eq!(lines[0].0, id, "{lines:?}");
}
