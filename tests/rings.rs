//! io_uring setup flags (`ring_setup_flags`, src/uring.rs): reported at
//! start and by `--check`, off when asked, refused when unknown, and
//! harmless to glommio's event loop: with COOP_TASKRUN a completion is
//! only seen at the next `io_uring_enter`, so an idle worker must still
//! notice a new request at once rather than at its next timer.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn startup_flags_line(lb: &Balancer) -> String {
    poll_until(READY_TIMEOUT, || {
        lb.stderr
            .snapshot()
            .into_iter()
            .map(|l| strip_ansi(&l))
            .find(|l| l.contains("io_uring setup flags"))
    })
    .expect("no io_uring setup flags line at startup")
}

#[test]
fn default_rings_get_coop_taskrun_and_single_issuer() {
    let backend = spawn_backend();
    let lb = spawn_balancer(&Config::for_backends(std::slice::from_ref(&backend)), &[]);
    let line = startup_flags_line(&lb);
    assert!(
        line.contains("io_uring setup flags COOP_TASKRUN|SINGLE_ISSUER:"),
        "{line}"
    );
    // This kernel (5.19+/6.0+ in CI) takes both on every ring.
    assert!(line.contains(" 0 without"), "{line}");
    assert!(!line.contains(": 0 rings with"), "{line}");
    assert_eq!(http_get(lb.port, "/").status, 200);
}

#[test]
fn an_empty_list_turns_them_off_and_unknown_names_are_refused() {
    let backend = spawn_backend();
    let config =
        Config::for_backends(std::slice::from_ref(&backend)).with("ring_setup_flags", "[]");
    let lb = spawn_balancer(&config, &[]);
    let line = startup_flags_line(&lb);
    assert!(line.contains("io_uring setup flags none"), "{line}");
    assert_eq!(http_get(lb.port, "/").status, 200);

    let bad = Config::new(&[backend.port]).with("ring_setup_flags", "[\"DEFER_TASKRUN\"]");
    let file = write_temp_file(&bad.to_toml(), ".toml");
    let r = run_balancer_to_exit(
        &["-f".as_ref(), file.path.as_os_str(), "--check".as_ref()],
        Duration::from_secs(10),
    );
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains("ring_setup_flags") && r.stderr.contains("DEFER_TASKRUN"),
        "{}",
        r.stderr
    );
}

#[test]
fn check_reports_the_flags_the_kernel_accepts() {
    let backend = spawn_backend();
    let file = write_temp_file(&Config::new(&[backend.port]).to_toml(), ".toml");
    let r = run_balancer_to_exit(
        &["-f".as_ref(), file.path.as_os_str(), "--check".as_ref()],
        Duration::from_secs(10),
    );
    assert_eq!(r.status.code(), Some(0), "{}", r.stderr);
    assert!(
        r.stdout
            .contains("io_uring setup flags COOP_TASKRUN|SINGLE_ISSUER"),
        "{}",
        r.stdout
    );
}

#[test]
fn spin_before_park_leaves_coop_taskrun_off() {
    let backend = spawn_backend();
    let config = Config::for_backends(std::slice::from_ref(&backend))
        .with("spin_before_park", "50")
        .with("workers", "1");
    let lb = spawn_balancer(&config, &[]);
    let line = startup_flags_line(&lb);
    assert!(
        line.contains("io_uring setup flags SINGLE_ISSUER:"),
        "{line}"
    );
    assert!(
        lb.stderr.joined().contains("COOP_TASKRUN is left off"),
        "no warning"
    );
    assert_eq!(http_get(lb.port, "/").status, 200);
}

#[test]
fn an_idle_worker_answers_at_once_with_cooperative_rings() {
    // One worker, keep-alive and fresh connections, with pauses long enough
    // for every executor to park: each request must be noticed when it
    // arrives, not at the next timer of the event loop.
    let backend = spawn_backend();
    let config = Config::for_backends(std::slice::from_ref(&backend))
        .with("workers", "1")
        .with("health_check_interval", "60000");
    let lb = spawn_balancer(&config, &[]);
    let mut keep = lb.connect();
    assert_eq!(keep.get("/").status, 200);
    let mut slowest = Duration::ZERO;
    for i in 0..6 {
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        let r = if i % 2 == 0 {
            keep.get("/")
        } else {
            http_get(lb.port, "/")
        };
        assert_eq!(r.status, 200);
        slowest = slowest.max(t.elapsed());
    }
    // Generous: a lost wake-up shows as seconds (the next timer), a
    // loaded CI box as tens of milliseconds.
    assert!(slowest < Duration::from_millis(500), "slowest {slowest:?}");
}
