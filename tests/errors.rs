//! Error handling: unreachable or broken backends, timeouts and malformed
//! client requests. Every error is a complete HTTP/1.1 response with a
//! Content-Length.

mod common;

use common::*;
use std::time::{Duration, Instant};

#[test]
fn refused_backends_give_502_quickly() {
    let config = Config::new(&[closed_port(), closed_port()])
        .with("connection_timeout", "5000")
        .with("workers", "1");
    let balancer = spawn_balancer(&config, &[]);
    let mut c = balancer.connect();
    for _ in 0..3 {
        let start = Instant::now();
        let resp = c.get("/");
        let elapsed = start.elapsed();
        assert_eq!(resp.status, 502, "{resp:?}");
        resp.assert_complete_with_length();
        assert!(
            elapsed < Duration::from_millis(2000),
            "502 took {elapsed:?} (connection_timeout is 5 s)"
        );
    }
}

#[test]
fn garbage_from_backend_gives_502() {
    let fake = FakeBackend::start(b"garbage\r\n\r\n");
    let config = Config::new(&[fake.port])
        .with("workers", "1")
        .with("max_fails", "1000")
        .with("health_check_interval", "60000");
    let balancer = spawn_balancer(&config, &[]);
    let resp = http_get(balancer.port, "/");
    assert_eq!(resp.status, 502, "{resp:?}");
    resp.assert_complete_with_length();
    assert!(fake.accepted.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}

#[test]
fn slow_backend_gives_504_after_read_timeout() {
    let backend = spawn_backend();
    let config = Config::for_backends(std::slice::from_ref(&backend)).with("read_timeout", "500");
    let balancer = spawn_balancer(&config, &[]);
    let mut c = balancer.connect();
    let start = Instant::now();
    let resp = c.get("/sleep?ms=3000");
    let elapsed = start.elapsed();
    assert_eq!(resp.status, 504, "{resp:?}");
    resp.assert_complete_with_length();
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_millis(2000),
        "504 after {elapsed:?}, expected about 500 ms"
    );
}

/// Sends `raw`, expects a 400 and (if `must_close`) the connection closed.
fn expect_400(raw: &[u8], must_close: bool) {
    let backend = spawn_backend();
    let balancer = spawn_balancer(&Config::for_backends(std::slice::from_ref(&backend)), &[]);
    let mut c = balancer.connect();
    c.send(raw);
    let resp = c.read_response();
    assert_eq!(
        resp.status,
        400,
        "request {:?}: {resp:?}",
        String::from_utf8_lossy(raw)
    );
    resp.assert_complete_with_length();
    if must_close {
        match c.wait_closed(Duration::from_secs(5)) {
            CloseState::Closed(extra) => assert!(extra.is_empty(), "{extra:?}"),
            CloseState::Open(_) => panic!("connection left open after a 400"),
        }
    }
}

#[test]
fn malformed_request_line_gives_400_and_close() {
    expect_400(b"GARBAGE\r\n\r\n", true);
}

#[test]
fn content_length_with_transfer_encoding_gives_400() {
    expect_400(
        b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        false,
    );
}

#[test]
fn conflicting_content_lengths_give_400() {
    expect_400(
        b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        false,
    );
}

#[test]
fn balancer_survives_errors() {
    // After a series of bad requests the balancer still proxies normally.
    let backend = spawn_backend();
    let balancer = spawn_balancer(&Config::for_backends(std::slice::from_ref(&backend)), &[]);
    for raw in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: x\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"\x00\x01\x02\r\n\r\n",
    ] {
        let mut c = balancer.connect();
        let _ = c.try_send(raw);
        let _ = c.wait_closed(Duration::from_millis(500));
    }
    let resp = http_get(balancer.port, "/");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body_str(), format!("backend {}\n", backend.port));
}
