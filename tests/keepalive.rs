//! Client keep-alive, pipelining, idle timeouts and backend connection reuse.

mod common;

use common::*;
use std::time::{Duration, Instant};

#[test]
fn pipelined_requests_get_responses_in_order() {
    let backend = spawn_backend();
    let balancer = spawn_balancer(&Config::for_backends(std::slice::from_ref(&backend)), &[]);
    let mut c = balancer.connect();
    let mut batch = Vec::new();
    batch.extend(build_request("GET", "/", &[], b""));
    batch.extend(build_request("GET", "/bytes/10", &[], b""));
    batch.extend(build_request(
        "POST",
        "/echo",
        &[("Content-Type", "text/plain")],
        b"pipelined body",
    ));
    batch.extend(build_request("GET", "/status/204", &[], b""));
    batch.extend(build_request("GET", "/bytes/26", &[], b""));
    c.send(&batch); // one write

    let r1 = c.read_response();
    assert_eq!(r1.status, 200, "{r1:?}");
    assert_eq!(r1.body_str(), format!("backend {}\n", backend.port));
    let r2 = c.read_response();
    assert_eq!(r2.status, 200, "{r2:?}");
    assert_eq!(r2.body, b"abcdefghij");
    let r3 = c.read_response();
    assert_eq!(r3.status, 200, "{r3:?}");
    assert_eq!(r3.body, b"pipelined body");
    let r4 = c.read_response();
    assert_eq!(r4.status, 204, "{r4:?}");
    let r5 = c.read_response();
    assert_eq!(r5.status, 200, "{r5:?}");
    assert_eq!(r5.body, b"abcdefghijklmnopqrstuvwxyz");
    // Nothing else arrives.
    match c.wait_closed(Duration::from_millis(200)) {
        CloseState::Open(extra) | CloseState::Closed(extra) => {
            assert!(extra.is_empty(), "unexpected extra bytes {extra:?}")
        }
    }
}

#[test]
fn keepalive_connection_serves_many_requests() {
    let backend = spawn_backend();
    let balancer = spawn_balancer(&Config::for_backends(std::slice::from_ref(&backend)), &[]);
    let mut c = balancer.connect();
    for i in 0..100 {
        let resp = c.get(&format!("/bytes/{}", i % 40));
        assert_eq!(resp.status, 200, "request {i}: {resp:?}");
        assert_eq!(resp.body, bytes_pattern(i % 40), "request {i}");
    }
}

#[test]
fn backend_connections_are_pooled_and_reused() {
    let backend = spawn_backend();
    let config = Config::for_backends(std::slice::from_ref(&backend))
        .with("workers", "1")
        .with("pool_size", "4")
        .with("health_check_interval", "60000");
    let balancer = spawn_balancer(&config, &[]);

    // A start-up health probe may land in the window: hence "at most 2".
    let (conns_before, reqs_before) = backend_stats(backend.port);
    let mut served = 0;
    for _ in 0..5 {
        let mut c = balancer.connect();
        for _ in 0..10 {
            let resp = c.get("/");
            assert_eq!(resp.status, 200, "{resp:?}");
            served += 1;
        }
    }
    let (conns_after, reqs_after) = backend_stats(backend.port);
    // The second /stats connection and request count themselves.
    let added_conns = conns_after - conns_before - 1;
    let added_reqs = reqs_after - reqs_before - 1;
    eprintln!(
        "{served} requests through the balancer: +{added_conns} backend connections, +{added_reqs} requests"
    );
    assert!(
        added_reqs >= served,
        "backend served {added_reqs} requests, expected at least {served}"
    );
    assert!(
        added_conns <= 2,
        "{served} sequential requests opened {added_conns} backend connections (expected <= 2)"
    );
}

#[test]
fn connection_close_from_client_closes_after_response() {
    let backend = spawn_backend();
    let balancer = spawn_balancer(&Config::for_backends(std::slice::from_ref(&backend)), &[]);
    let mut c = balancer.connect();
    let resp = c.request("GET", "/bytes/7", &[("Connection", "close")], b"");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, b"abcdefg");
    match c.wait_closed(Duration::from_secs(5)) {
        CloseState::Closed(extra) => assert!(extra.is_empty(), "{extra:?}"),
        CloseState::Open(_) => panic!("connection left open after Connection: close"),
    }
}

#[test]
fn idle_keepalive_connection_is_closed_after_keepalive_timeout() {
    let backend = spawn_backend();
    let config =
        Config::for_backends(std::slice::from_ref(&backend)).with("keepalive_timeout", "300");
    let balancer = spawn_balancer(&config, &[]);
    let mut c = balancer.connect();
    let resp = c.get("/");
    assert_eq!(resp.status, 200, "{resp:?}");
    let start = Instant::now();
    match c.wait_closed(Duration::from_secs(5)) {
        CloseState::Closed(extra) => assert!(extra.is_empty(), "{extra:?}"),
        CloseState::Open(_) => {
            panic!("idle connection still open 5 s after a 300 ms keepalive_timeout")
        }
    }
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "closed after {:?}, before the keepalive_timeout",
        start.elapsed()
    );
}

/// Idle timeouts are enforced by the worker's idle sweep (no timer per
/// wait): a silent fresh connection closes after `client_header_timeout`,
/// a kept-alive one after `keepalive_timeout`, each about on time; every
/// request restarts the wait, and a request in flight longer than the idle
/// timeout is not cut by it.
#[test]
fn idle_sweep_closes_on_time_restarts_per_request_and_spares_busy_connections() {
    let backend = spawn_backend();
    let config = Config::for_backends(std::slice::from_ref(&backend))
        .with("keepalive_timeout", "400")
        .with("client_header_timeout", "600")
        .with("read_timeout", "5000");
    let balancer = spawn_balancer(&config, &[]);
    let closed_after = |c: &mut Conn| {
        let start = Instant::now();
        match c.wait_closed(Duration::from_secs(5)) {
            CloseState::Closed(extra) => assert!(extra.is_empty(), "{extra:?}"),
            CloseState::Open(_) => panic!("idle connection still open after 5 s"),
        }
        start.elapsed()
    };
    // Fresh and silent: client_header_timeout.
    let mut fresh = balancer.connect();
    let t = closed_after(&mut fresh);
    assert!(
        t >= Duration::from_millis(550) && t < Duration::from_millis(1000),
        "fresh connection closed after {t:?} (client_header_timeout 600 ms)"
    );
    // Kept alive: keepalive_timeout, counted from the last response.
    let mut kept = balancer.connect();
    assert_eq!(kept.get("/").status, 200);
    let t = closed_after(&mut kept);
    assert!(
        t >= Duration::from_millis(350) && t < Duration::from_millis(800),
        "kept-alive connection closed after {t:?} (keepalive_timeout 400 ms)"
    );
    // Each request restarts the wait: five gaps of 250 ms (1.25 s in all)
    // on one connection.
    let mut c = balancer.connect();
    for i in 0..5 {
        assert_eq!(c.get("/").status, 200, "request {i}");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(c.get("/").status, 200);
    // A request slower than the idle timeouts is not cut.
    let r = c.get("/sleep?ms=1200");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(c.get("/").status, 200);
}

#[test]
fn incomplete_request_head_is_dropped_after_client_header_timeout() {
    let backend = spawn_backend();
    let config =
        Config::for_backends(std::slice::from_ref(&backend)).with("client_header_timeout", "300");
    let balancer = spawn_balancer(&config, &[]);
    let mut c = balancer.connect();
    c.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ");
    match c.wait_closed(Duration::from_secs(5)) {
        CloseState::Closed(extra) => {
            // A 408 before closing is fine; a proxied 200 is not.
            if !extra.is_empty() {
                let text = String::from_utf8_lossy(&extra);
                assert!(
                    text.starts_with("HTTP/1.1 408"),
                    "unexpected reply to an incomplete head: {text:?}"
                );
            }
        }
        CloseState::Open(_) => {
            panic!("slow client still connected 5 s after a 300 ms client_header_timeout")
        }
    }
}
