//! Regression tests for proxy-path defects of issue 13, over real sockets:
//!
//! - defect 1: a read timeout on a warm (pooled) connection gives 504 within
//!   `(retries + 1) × read_timeout` plus backoff, not 502 after an extra try;
//! - defect 13a: a response finished during a graceful drain carries
//!   `Connection: close`.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// 1. A slow backend behind a warm pool gives 504
// ---------------------------------------------------------------------------

#[test]
fn read_timeout_on_warm_pool_is_504_within_bound_every_time() {
    let backends = spawn_backends(3);
    // Taps count the `/sleep` attempts that reach each backend.
    let taps: Vec<Tap> = backends
        .iter()
        .map(|b| Tap::start(b.port, b"/sleep"))
        .collect();
    let ports: Vec<u16> = taps.iter().map(|t| t.port).collect();
    // Passive health and the breaker are off: this test is about what one
    // request sees, not about ejecting slow backends (which would turn the
    // later requests into fast 502s by design).
    let read_timeout = Duration::from_millis(1000);
    let backoff_max = Duration::from_millis(250);
    let config = Config::new(&ports)
        .with("workers", "1")
        .with("read_timeout", "1000")
        .with("retries", "1")
        .with("retry_budget", "1.0")
        .with("retry_backoff_max", "250")
        .with("max_fails", "1000")
        .with("breaker_threshold", "0");
    let balancer = spawn_balancer(&config, &[]);

    // Warm the pools: every backend has idle keep-alive connections.
    for i in 0..30 {
        let r = http_get(balancer.port, "/");
        assert_eq!(r.status, 200, "warm-up GET {i}: {r:?}");
    }

    let bound = read_timeout * 2 + backoff_max + Duration::from_millis(500);
    let mut seen = Vec::new();
    for i in 0..10 {
        let before: usize = taps.iter().map(Tap::hits).sum();
        let t = Instant::now();
        let r = http_get(balancer.port, "/sleep?ms=2000");
        let elapsed = t.elapsed();
        let attempts = taps.iter().map(Tap::hits).sum::<usize>() - before;
        seen.push((r.status, elapsed, attempts));
        assert_eq!(
            r.status,
            504,
            "request {i}: {} after {elapsed:?} with {attempts} attempts (so far {seen:?}); log:\n{}",
            r.status,
            balancer.stderr.joined()
        );
        assert!(
            elapsed >= read_timeout * 2 - Duration::from_millis(50) && elapsed <= bound,
            "request {i}: 504 after {elapsed:?}, expected within {bound:?} (so far {seen:?})"
        );
        assert_eq!(
            attempts, 2,
            "request {i}: retries = 1 allows 2 attempts (so far {seen:?})"
        );
    }
    eprintln!("status, elapsed, attempts: {seen:?}");
}

/// An origin that answers the first request on each connection (keep-alive)
/// and closes the connection without a word when a second one arrives: to
/// the balancer, a pooled connection that went stale. Stops when dropped.
struct StaleOrigin {
    port: u16,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl StaleOrigin {
    fn start() -> StaleOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind origin");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("local addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        thread::spawn(move || {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_read_timeout(Some(Duration::from_secs(8)));
                            let mut got = Vec::new();
                            let mut tmp = [0u8; 4096];
                            while find(&got, b"\r\n\r\n").is_none() {
                                match s.read(&mut tmp) {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => got.extend_from_slice(&tmp[..n]),
                                }
                            }
                            let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh";
                            if s.write_all(reply).is_err() {
                                return;
                            }
                            // The next request (or EOF) ends the connection.
                            let _ = s.read(&mut tmp);
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => break,
                }
            }
        });
        StaleOrigin {
            port,
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for StaleOrigin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[test]
fn stale_pooled_connection_is_still_retried_once_for_free() {
    // The counterpart of the test above: a pooled connection that is closed
    // before any response byte is still retried on a fresh connection, even
    // with `retries = 0`.
    let origin = StaleOrigin::start();
    let config = Config::new(&[origin.port])
        .with("workers", "1")
        .with("retries", "0")
        .with("health_check_interval", "60000");
    let balancer = spawn_balancer(&config, &[]);
    for i in 0..10 {
        let r = http_get(balancer.port, "/");
        assert_eq!(r.status, 200, "GET {i}: {r:?}");
        assert_eq!(r.body, b"fresh", "GET {i}");
    }
}

// ---------------------------------------------------------------------------
// 13a. Connection: close on a response finished during a drain
// ---------------------------------------------------------------------------

#[test]
fn response_finished_during_drain_says_connection_close() {
    let backend = spawn_backend();
    let tap = Tap::start(backend.port, b"/sleep");
    let config = Config::new(&[tap.port])
        .with("workers", "1")
        .with("shutdown_timeout", "8000")
        .with("read_timeout", "8000");
    let mut balancer = spawn_balancer(&config, &[]);

    let mut c = balancer.connect();
    // A keep-alive request (HTTP/1.1 default) in flight when SIGTERM comes.
    c.send(&build_request("GET", "/sleep?ms=1000", &[], b""));
    assert!(
        tap.wait_hit_after(0, Duration::from_secs(10)),
        "the /sleep request never reached the backend"
    );
    balancer.guard.signal("TERM");

    let resp = c.read_response();
    assert_eq!(resp.status, 200, "{resp:?}");
    let connection = resp.header("Connection").unwrap_or("");
    assert!(
        connection.eq_ignore_ascii_case("close"),
        "a response finished during a drain must say `Connection: close`: {resp:?}"
    );
    // And the balancer does close it.
    assert!(matches!(
        c.wait_closed(Duration::from_secs(5)),
        CloseState::Closed(_)
    ));
    assert!(
        balancer
            .guard
            .wait_timeout(Duration::from_secs(8))
            .is_some()
    );
}
