//! Graceful shutdown on SIGTERM: in-flight requests finish, the process exits
//! with status 0 and stops accepting connections.

mod common;

use common::*;
use std::time::{Duration, Instant};

#[test]
fn sigterm_drains_in_flight_request_then_exits_zero() {
    let backend = spawn_backend();
    let tap = Tap::start(backend.port, b"/sleep");
    let config = Config::new(&[tap.port])
        .with("shutdown_timeout", "8000")
        .with("read_timeout", "8000");
    let mut balancer = spawn_balancer(&config, &[]);
    let port = balancer.port;

    let mut c = balancer.connect();
    let sent = Instant::now();
    c.send(&build_request("GET", "/sleep?ms=1500", &[], b""));
    assert!(
        tap.wait_hit_after(0, Duration::from_secs(10)),
        "the /sleep request never reached the backend"
    );
    balancer.guard.signal("TERM");
    let signalled = Instant::now();

    let resp = c.read_response();
    assert_eq!(
        resp.status, 200,
        "in-flight request after SIGTERM: {resp:?}"
    );
    assert_eq!(resp.backend_port(), backend.port);
    assert!(
        sent.elapsed() >= Duration::from_millis(1400),
        "response came after {:?}, before the backend could have slept 1.5 s",
        sent.elapsed()
    );

    let status = balancer
        .guard
        .wait_timeout(Duration::from_secs(5))
        .unwrap_or_else(|| {
            panic!(
                "balancer still running {:?} after SIGTERM; stderr:\n{}",
                signalled.elapsed(),
                balancer.stderr.joined()
            )
        });
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status:?}; stderr:\n{}",
        balancer.stderr.joined()
    );
    assert!(
        connection_refused(port),
        "port {port} still accepts connections after exit"
    );
}

#[test]
fn sigterm_with_idle_keepalive_connection_exits_promptly() {
    let backend = spawn_backend();
    let config = Config::for_backends(std::slice::from_ref(&backend))
        .with("shutdown_timeout", "8000")
        .with("keepalive_timeout", "60000");
    let mut balancer = spawn_balancer(&config, &[]);
    let port = balancer.port;
    let mut idle = balancer.connect();
    let resp = idle.get("/");
    assert_eq!(resp.status, 200, "{resp:?}");

    balancer.guard.signal("TERM");
    let signalled = Instant::now();
    // An idle keep-alive connection must not hold the drain open.
    let status = balancer
        .guard
        .wait_timeout(Duration::from_secs(4))
        .unwrap_or_else(|| {
            panic!(
                "balancer with only an idle client still running {:?} after SIGTERM",
                signalled.elapsed()
            )
        });
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert!(matches!(
        idle.wait_closed(Duration::from_secs(2)),
        CloseState::Closed(_)
    ));
    assert!(connection_refused(port));
}

#[test]
fn shutdown_timeout_bounds_the_drain() {
    let backend = spawn_backend();
    let tap = Tap::start(backend.port, b"/sleep");
    let config = Config::new(&[tap.port])
        .with("shutdown_timeout", "500")
        .with("read_timeout", "30000");
    let mut balancer = spawn_balancer(&config, &[]);
    let mut c = balancer.connect();
    c.send(&build_request("GET", "/sleep?ms=20000", &[], b""));
    assert!(
        tap.wait_hit_after(0, Duration::from_secs(10)),
        "the /sleep request never reached the backend"
    );
    balancer.guard.signal("TERM");
    let signalled = Instant::now();
    let status = balancer.guard.wait_timeout(Duration::from_secs(5));
    assert!(
        status.is_some(),
        "balancer still running {:?} after SIGTERM with shutdown_timeout = 500 ms",
        signalled.elapsed()
    );
    // The abandoned client is not left hanging.
    assert!(matches!(
        c.wait_closed(Duration::from_secs(2)),
        CloseState::Closed(_)
    ));
}
