//! The test backend's own contract, checked directly (no balancer). The
//! balancer tests rely on it, so a failure here points at the backend (or
//! at the helpers in `common`) rather than at the balancer.

mod common;

use common::*;
use std::time::{Duration, Instant};

#[test]
fn backend_routes() {
    let b = spawn_backend();
    let mut c = Conn::connect(b.port);

    let r = c.get("/");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), format!("backend {}\n", b.port));
    assert_eq!(r.backend_port(), b.port);

    let r = c.get("/health");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());

    let r = c.request("POST", "/echo", &[("Content-Type", "x/y")], b"hello");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
    assert_eq!(r.header("Content-Type"), Some("x/y"));

    let r = c.get("/bytes/30");
    assert_eq!(r.body, bytes_pattern(30));

    let r = c.get("/chunked");
    assert!(r.chunked);
    assert_eq!(r.body_str(), "hello chunked world\n");
    assert_eq!(r.trailer("X-Trailer"), Some("done"));

    let r = c.get("/chunked?bytes=20000");
    assert_eq!(r.body, bytes_pattern(20000));

    let r = c.get("/status/204");
    assert_eq!(r.status, 204);
    let r = c.get("/status/418");
    assert_eq!((r.status, r.content_length()), (418, Some(0)));
    let r = c.get("/nope");
    assert_eq!(r.status, 404);

    let r = c.request("GET", "/headers", &[("X-A", "b  c")], b"");
    assert!(r.body_str().starts_with("GET /headers HTTP/1.1\r\n"));
    assert!(r.body_str().contains("\r\nX-A: b  c\r\n"));

    let r = c.get("/stats");
    assert!(r.body_str().starts_with("connections="), "{r:?}");

    let start = Instant::now();
    let r = c.get("/sleep?ms=200");
    assert_eq!(r.status, 200);
    assert!(start.elapsed() >= Duration::from_millis(190));

    let r = c.get("/close");
    assert_eq!(r.body, b"bye\n");
    assert!(matches!(
        c.wait_closed(Duration::from_secs(5)),
        CloseState::Closed(_)
    ));
}

#[test]
fn backend_stats_count_connections_and_requests() {
    let b = spawn_backend();
    let (c0, r0) = backend_stats(b.port);
    let mut c = Conn::connect(b.port);
    for _ in 0..5 {
        assert_eq!(c.get("/").status, 200);
    }
    let (c1, r1) = backend_stats(b.port);
    assert_eq!(c1 - c0, 2, "one client connection + one /stats connection");
    assert_eq!(r1 - r0, 6, "five requests + one /stats");
}

#[test]
fn backend_upgrade_echoes() {
    let b = spawn_backend();
    let mut c = Conn::connect(b.port);
    c.send(b"GET /upgrade HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 101);
    c.send(b"ping");
    assert_eq!(c.read_exact_n(4), b"ping");
    c.shutdown_write();
    assert!(matches!(
        c.wait_closed(Duration::from_secs(5)),
        CloseState::Closed(_)
    ));
}

#[test]
fn tap_relays_and_counts() {
    let b = spawn_backend();
    let tap = Tap::start(b.port, b"/sleep");
    let mut c = Conn::connect(tap.port);
    assert_eq!(c.get("/").backend_port(), b.port);
    assert_eq!(tap.hits(), 0);
    assert_eq!(c.get("/sleep?ms=1").status, 200);
    assert_eq!(tap.hits(), 1);
    let r = c.get("/bytes/100000");
    assert_eq!(r.body, bytes_pattern(100000));
}

#[test]
fn fake_backend_replies_garbage() {
    let fake = FakeBackend::start(b"garbage\r\n\r\n");
    let mut c = Conn::connect(fake.port);
    c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(c.read_to_close(), b"garbage\r\n\r\n");
}

#[test]
fn listening_line_parser() {
    assert_eq!(
        parse_listening_port("listening on 127.0.0.1:8080"),
        Some(8080)
    );
    assert_eq!(
        parse_listening_port(
            "\u{1b}[2m2024\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m ekilibri: listening on \u{1b}[3maddr\u{1b}[0m=127.0.0.1:41234 workers=2"
        ),
        Some(41234)
    );
    assert_eq!(parse_listening_port("listening on 127.0.0.1:0"), None);
    assert_eq!(parse_listening_port("connected to 127.0.0.1:80"), None);
}
