//! The control plane over real processes: fail fast on a panic in any
//! executor, liveness (`/health` 503 and the systemd watchdog), the admin
//! listener's own limits, and control tasks that do not wait on each other.
//!
//! Faults are injected with `EKILIBRI_TEST_FAULT`, which only debug builds
//! (the ones `cargo test` runs) read.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "a-test-token-of-sufficient-length";

fn admin_call(port: u16, method: &str, path: &str, auth: Option<&str>) -> Response {
    let mut headers = vec![("Connection", "close")];
    if let Some(a) = auth {
        headers.push(("Authorization", a));
    }
    if method != "GET" {
        headers.push(("Content-Length", "0"));
    }
    one_request(port, method, path, &headers, b"")
}

fn spawn_faulty(fault: &str, workers: usize) -> (Backend, Balancer) {
    let backend = spawn_backend();
    let config =
        Config::for_backends(std::slice::from_ref(&backend)).with("workers", &workers.to_string());
    let lb = spawn_balancer_with(
        &config.to_toml(),
        &[],
        &[("EKILIBRI_TEST_FAULT", fault)],
        &[],
    );
    (backend, lb)
}

#[track_caller]
fn assert_panic_exit(lb: &mut Balancer, thread: &str) {
    let status = lb
        .guard
        .wait_timeout(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("still running after the injected panic in {thread}"));
    assert_eq!(status.code(), Some(70), "exit status after a panic");
    let log = strip_ansi(&lb.stderr.joined());
    let line = log
        .lines()
        .find(|l| l.contains("panic:"))
        .unwrap_or_else(|| panic!("no panic line in:\n{log}"));
    assert!(line.contains(thread), "panic line names {thread}: {line}");
    assert!(line.contains("test fault injected"), "panic line: {line}");
}

#[test]
fn a_panicking_worker_ends_the_process_with_a_failure_status() {
    let (_b, mut lb) = spawn_faulty("panic:w1:300", 2);
    let start = Instant::now();
    assert_panic_exit(&mut lb, "ekilibri-w1");
    // 300 ms until the fault, then the hook exits at once.
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_panicking_control_executor_ends_the_process_with_a_failure_status() {
    let (_b, mut lb) = spawn_faulty("panic:control:300", 1);
    assert_panic_exit(&mut lb, "ekilibri-control");
}

#[test]
fn a_fault_for_another_executor_changes_nothing() {
    // A fault for an executor that does not exist changes nothing.
    let (_b, mut lb) = spawn_faulty("panic:w7:0", 1);
    thread::sleep(Duration::from_millis(500));
    assert!(lb.guard.try_wait().is_none(), "no fault for w7");
    assert_eq!(http_get(lb.port, "/").status, 200);
    lb.guard.signal("TERM");
    let st = lb
        .guard
        .wait_timeout(Duration::from_secs(10))
        .expect("exit");
    assert_eq!(st.code(), Some(0));
}

#[test]
fn a_stalled_worker_turns_health_503_naming_it_until_it_answers_again() {
    let (_b, lb) = spawn_faulty("stall:w1:800:4000", 2);
    let admin = admin_port(&lb);
    let ok = admin_call(admin, "GET", "/health", None);
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(json_of(&ok)["status"], "ok");
    let stalled = poll_until(Duration::from_secs(5), || {
        let r = admin_call(admin, "GET", "/health", None);
        (r.status == 503).then_some(r)
    })
    .expect("/health never answered 503 while w1 was stalled");
    let v = json_of(&stalled);
    assert_eq!(v["status"], "stalled", "{v}");
    let names: Vec<&str> = v["stalled"]
        .as_array()
        .expect("stalled list")
        .iter()
        .filter_map(|e| e["executor"].as_str())
        .collect();
    assert_eq!(names, ["ekilibri-w1"], "{v}");
    // The stall ends 4.8 s after start; the next heartbeat is answered.
    let back = poll_until(Duration::from_secs(6), || {
        let r = admin_call(admin, "GET", "/health", None);
        (r.status == 200).then_some(r)
    });
    assert!(back.is_some(), "/health stayed 503 after the stall ended");
}

#[test]
fn the_watchdog_is_fed_only_while_every_executor_answers() {
    let path = unique_temp_path(".notify");
    let sock = UnixDatagram::bind(&path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let pings: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let collector = {
        let pings = pings.clone();
        thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(9);
            let mut buf = [0u8; 512];
            while Instant::now() < end {
                if let Ok(n) = sock.recv(&mut buf)
                    && String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1")
                {
                    pings.lock().unwrap().push(Instant::now());
                }
            }
        })
    };
    let backend = spawn_backend();
    let config = Config::for_backends(std::slice::from_ref(&backend)).with("workers", "1");
    let notify = path.to_string_lossy().to_string();
    let _lb = spawn_balancer_with(
        &config.to_toml(),
        &[],
        &[
            ("NOTIFY_SOCKET", notify.as_str()),
            ("WATCHDOG_USEC", "400000"),
            ("EKILIBRI_TEST_FAULT", "stall:w0:1500:4000"),
        ],
        &[],
    );
    collector.join().unwrap();
    let _ = std::fs::remove_file(&path);
    let pings = pings.lock().unwrap().clone();
    assert!(pings.len() >= 5, "too few watchdog pings: {}", pings.len());
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    let longest = gaps.iter().max().copied().unwrap_or_default();
    // Every 200 ms normally; withheld from ~2 s into the 4 s stall until it
    // ends.
    assert!(
        longest >= Duration::from_millis(1200),
        "the watchdog was fed during the stall: longest gap {longest:?}"
    );
    let before = gaps
        .iter()
        .take_while(|g| **g < Duration::from_millis(1200));
    assert!(
        before.clone().count() >= 3 && before.clone().all(|g| *g < Duration::from_millis(600)),
        "not fed regularly before the stall: {gaps:?}"
    );
    let last = pings.last().copied().unwrap();
    let longest_end = pings
        .windows(2)
        .find(|w| w[1] - w[0] == longest)
        .map(|w| w[1])
        .unwrap();
    assert!(
        last > longest_end,
        "never fed again after the stall: {gaps:?}"
    );
}

/// Reads from `s` until it closes or `within` passes; true when it closed.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn admin_connections_are_capped_and_cannot_starve_the_proxy() {
    let backend = spawn_backend();
    let config = Config::for_backends(std::slice::from_ref(&backend))
        .with("workers", "1")
        .with("admin_token", &format!("\"{TOKEN}\""));
    let lb = spawn_balancer_with(
        &config.to_toml(),
        &[],
        &[],
        &["prlimit", "--nofile=256:256"],
    );
    let admin = admin_port(&lb);
    // 300 clients each send half a head and wait: more than the process
    // has descriptors.
    let mut held = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(("127.0.0.1", admin)).expect("connect admin");
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
        held.push(s);
    }
    // Beyond the cap, connections are closed at once.
    let mut open = 0;
    for s in held.iter_mut() {
        if !closed_within(s, Duration::from_millis(20)) {
            open += 1;
        }
    }
    assert!(open <= 64, "{open} admin connections held open (cap 64)");
    assert!(open >= 32, "only {open} admin connections served");
    // The proxy still serves.
    for _ in 0..20 {
        assert_eq!(http_get(lb.port, "/").status, 200);
    }
    // Half heads are answered 408 and closed once the 5 s head deadline
    // passes; then the admin API serves again.
    let started = Instant::now();
    let mut closed = 0;
    for s in held.iter_mut() {
        let left = Duration::from_secs(8).saturating_sub(started.elapsed());
        if closed_within(s, left.max(Duration::from_millis(10))) {
            closed += 1;
        }
    }
    assert_eq!(
        closed, 300,
        "held admin connections not closed by the head deadline"
    );
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "{:?}",
        started.elapsed()
    );
    let r = admin_call(admin, "GET", "/health", Some(&format!("Bearer {TOKEN}")));
    assert_eq!(r.status, 200, "{r:?}");
    let log = strip_ansi(&lb.stderr.joined());
    assert!(
        log.contains("admin connection limit reached"),
        "no warning about the cap:\n{log}"
    );
    assert!(!log.contains("Too many open files"), "{log}");
}

#[test]
fn the_token_is_checked_before_the_body_and_bearer_is_case_insensitive() {
    let backend = spawn_backend();
    let config = Config::for_backends(std::slice::from_ref(&backend))
        .with("admin_token", &format!("\"{TOKEN}\""));
    let lb = spawn_balancer(&config, &[]);
    let admin = admin_port(&lb);
    // A big announced body that never comes: 401 at once, not a wait.
    let mut s = TcpStream::connect(("127.0.0.1", admin)).unwrap();
    s.write_all(
        b"POST /servers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong-token-wrong-token-x\r\nContent-Length: 60000\r\n\r\n",
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let t = Instant::now();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).expect("answer before the body");
    assert_eq!(&head, b"HTTP/1.1 401", "{}", String::from_utf8_lossy(&head));
    assert!(t.elapsed() < Duration::from_secs(1));
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let r = admin_call(admin, "GET", "/health", Some(&format!("{scheme} {TOKEN}")));
        assert_eq!(r.status, 200, "{scheme}: {r:?}");
    }
    let r = admin_call(admin, "GET", "/health", Some(&format!("Basic {TOKEN}")));
    assert_eq!(r.status, 401);
}

#[test]
fn a_ttl_drain_does_not_delay_a_sighup_reload() {
    let slow = spawn_backend();
    let toml = Config::new(&[closed_port()])
        .with("workers", "1")
        .with("health_check_interval", "100")
        .with("read_timeout", "10000")
        .to_toml();
    let lb = spawn_balancer_toml(&toml, &[]);
    let admin = admin_port(&lb);
    let r = one_request(
        admin,
        "PUT",
        &format!("/servers/{}", slow.addr()),
        &[
            ("Connection", "close"),
            ("Content-Type", "application/json"),
        ],
        br#"{"ttl": 1}"#,
    );
    assert!(r.status == 201 || r.status == 200, "{r:?}");
    // Wait until it routes (the configured one is down), then keep a slow
    // request in flight across its expiry.
    poll_until(Duration::from_secs(5), || {
        (try_request(lb.port, "GET", "/") == Ok((200, Some(slow.port)))).then_some(())
    })
    .expect("registered backend never routed");
    let port = lb.port;
    let inflight = thread::spawn(move || try_request(port, "GET", "/sleep?ms=4000"));
    // The registration expires ~1 s after the PUT; its drain then waits for
    // the request above.
    poll_until(Duration::from_secs(4), || {
        lb.stderr
            .joined()
            .contains("registration expired")
            .then_some(())
    })
    .expect("registration did not expire");
    let sent = Instant::now();
    lb.guard.signal("HUP");
    poll_until(Duration::from_secs(10), || {
        lb.stderr
            .joined()
            .contains("configuration reloaded")
            .then_some(())
    })
    .expect("reload never completed");
    let took = sent.elapsed();
    assert!(
        took < Duration::from_millis(1000),
        "the reload waited {took:?} behind a TTL drain"
    );
    assert_eq!(inflight.join().unwrap(), Ok((200, Some(slow.port))));
}

#[test]
fn a_worker_that_fell_behind_applies_only_the_newest_snapshot() {
    let backend = spawn_backend();
    let mut config = Config::for_backends(std::slice::from_ref(&backend)).with("workers", "1");
    let lb = spawn_balancer_with(
        &config.to_toml(),
        &[],
        &[
            ("RUST_LOG", "info,ekilibri::worker=debug"),
            ("EKILIBRI_TEST_FAULT", "stall:w0:800:2500"),
        ],
        &[],
    );
    thread::sleep(Duration::from_millis(1000));
    // Five reloads (each a new config and a new snapshot) while w0 sleeps.
    for weight in 2..7 {
        config.set(
            "servers",
            &format!(
                "[{{ address = \"{}\", weight = {weight} }}]",
                backend.addr()
            ),
        );
        std::fs::write(&lb.config.path, config.to_toml()).unwrap();
        let before = lb
            .stderr
            .joined()
            .matches("configuration reloaded:")
            .count();
        lb.guard.signal("HUP");
        poll_until(Duration::from_secs(3), || {
            (lb.stderr
                .joined()
                .matches("configuration reloaded:")
                .count()
                > before)
                .then_some(())
        })
        .expect("reload");
    }
    // After the stall the worker catches up in one step.
    poll_until(Duration::from_secs(5), || {
        (http_get(lb.port, "/").status == 200).then_some(())
    })
    .expect("worker serves again");
    thread::sleep(Duration::from_millis(300));
    let log = strip_ansi(&lb.stderr.joined());
    let applied_configs = log
        .lines()
        .filter(|l| {
            l.contains("worker=0")
                && l.contains("configuration reloaded")
                && !l.contains("reloaded:")
        })
        .count();
    assert_eq!(
        applied_configs, 1,
        "configs applied after the stall:\n{log}"
    );
    let last_reload = log.rfind("configuration reloaded:").unwrap();
    let snapshots_after = log[last_reload..]
        .lines()
        .filter(|l| l.contains("new health snapshot"))
        .count();
    assert_eq!(
        snapshots_after, 1,
        "snapshots applied after the stall:\n{log}"
    );
}
