//! Binary upgrade with SIGUSR2: a new process takes the listening sockets,
//! the old one drains and exits 0, and under steady traffic not one request
//! fails. A new process that cannot start leaves the old one serving.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::*;

/// Kills a process by pid when dropped (the new process is not our child).
struct PidGuard(u32);

impl PidGuard {
    fn alive(&self) -> bool {
        std::path::Path::new(&format!("/proc/{}", self.0)).exists()
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.0))
                .unwrap_or_default()
                .contains(") Z")
    }

    fn signal(&self, sig: &str) {
        let _ = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.0.to_string()])
            .status();
    }
}

impl Drop for PidGuard {
    fn drop(&mut self) {
        self.signal("KILL");
    }
}

#[derive(Default)]
struct Counts {
    ok: AtomicUsize,
    failed: AtomicUsize,
    closes: AtomicUsize,
}

/// One response on a kept-alive connection: (status, server said close).
fn exchange(s: &mut TcpStream) -> Result<(u16, bool), String> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut tmp).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before a response".into());
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or("bad status line")?;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or("no content-length")?;
    while buf.len() < head_end + len {
        let n = s.read(&mut tmp).map_err(|e| format!("read body: {e}"))?;
        if n == 0 {
            return Err("closed inside the body".into());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    Ok((status, head.contains("connection: close")))
}

fn connect(port: u16) -> Result<TcpStream, String> {
    let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.set_write_timeout(Some(Duration::from_secs(5))).ok();
    Ok(s)
}

/// Fresh connections every few ms, and keep-alive clients that reconnect
/// only after `Connection: close`; every failure is recorded.
fn traffic(port: u16, stop: Arc<AtomicBool>, counts: Arc<Counts>) -> Vec<JoinHandle<Vec<String>>> {
    let mut threads = Vec::new();
    for _ in 0..3 {
        let (stop, counts) = (stop.clone(), counts.clone());
        threads.push(thread::spawn(move || {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match try_request(port, "GET", "/") {
                    Ok((200, _)) => {
                        counts.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        counts.failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("fresh: {other:?}"));
                    }
                }
                thread::sleep(Duration::from_millis(3));
            }
            errors
        }));
    }
    for _ in 0..4 {
        let (stop, counts) = (stop.clone(), counts.clone());
        threads.push(thread::spawn(move || {
            let mut errors = Vec::new();
            let mut conn: Option<TcpStream> = None;
            while !stop.load(Ordering::Relaxed) {
                let s = match conn.as_mut() {
                    Some(s) => s,
                    None => match connect(port) {
                        Ok(s) => conn.insert(s),
                        Err(e) => {
                            counts.failed.fetch_add(1, Ordering::Relaxed);
                            errors.push(format!("keep-alive {e}"));
                            thread::sleep(Duration::from_millis(3));
                            continue;
                        }
                    },
                };
                match exchange(s) {
                    Ok((200, close)) => {
                        counts.ok.fetch_add(1, Ordering::Relaxed);
                        if close {
                            counts.closes.fetch_add(1, Ordering::Relaxed);
                            conn = None;
                        }
                    }
                    other => {
                        counts.failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("keep-alive: {other:?}"));
                        conn = None;
                    }
                }
                thread::sleep(Duration::from_millis(2));
            }
            errors
        }));
    }
    threads
}

fn new_pid(lb: &Balancer) -> Option<u32> {
    upgraded_pid(&lb.stderr)
}

#[test]
fn sigusr2_hands_over_without_failing_a_request() {
    let backends = spawn_backends(2);
    // A fixed port: an ordinary start refuses a port another process
    // listens on; the hand-over must take it over all the same.
    let fixed = closed_port();
    let config = Config::for_backends(&backends)
        .with("workers", "2")
        .with("listen", &format!("\"127.0.0.1:{fixed}\""));
    let mut lb = spawn_balancer(&config, &[]);
    let port = lb.port;
    assert_eq!(port, fixed);
    let second = run_balancer_to_exit(
        &["-f".as_ref(), lb.config.path.as_os_str()],
        Duration::from_secs(10),
    );
    assert_eq!(second.status.code(), Some(1), "{}", second.stderr);
    assert!(
        second.stderr.contains("address already in use"),
        "{}",
        second.stderr
    );
    let admin = admin_port(&lb);
    let old_pid = lb.guard.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let threads = traffic(port, stop.clone(), counts.clone());
    thread::sleep(Duration::from_millis(500));
    let before = counts.ok.load(Ordering::Relaxed);
    assert!(before > 50, "traffic did not start: {before}");

    lb.guard.signal("USR2");
    let status = lb
        .guard
        .wait_timeout(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the old process did not exit:\n{}", lb.stderr.joined()));
    assert_eq!(status.code(), Some(0), "{}", lb.stderr.joined());
    let new = PidGuard(new_pid(&lb).expect("no new_pid in the log"));
    assert_ne!(new.0, old_pid);
    assert!(new.alive(), "the new process is gone");
    // The new process alone serves now, the proxy and the admin port alike.
    let at_exit = counts.ok.load(Ordering::Relaxed);
    thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    let errors: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let after = counts.ok.load(Ordering::Relaxed);
    assert!(
        errors.is_empty(),
        "{} failed requests: {:?}",
        errors.len(),
        &errors[..errors.len().min(10)]
    );
    assert!(
        after > at_exit + 50,
        "no traffic after the hand-over: {at_exit} -> {after}"
    );
    assert!(
        counts.closes.load(Ordering::Relaxed) >= 1,
        "keep-alive clients never saw Connection: close from the old process"
    );
    let r = one_request(admin, "GET", "/health", &[("Connection", "close")], b"");
    assert_eq!(r.status, 200);
    let log = strip_ansi(&lb.stderr.joined());
    assert!(log.contains("took over from the previous process"), "{log}");
    new.signal("TERM");
    assert!(
        poll_until(Duration::from_secs(15), || (!new.alive()).then_some(())).is_some(),
        "the new process did not stop on SIGTERM"
    );
}

#[test]
fn a_new_process_that_cannot_start_leaves_the_old_one_serving() {
    let backends = spawn_backends(1);
    let config = Config::for_backends(&backends).with("workers", "1");
    let lb = spawn_balancer(&config, &[]);
    let good = std::fs::read_to_string(&lb.config.path).unwrap();
    std::fs::write(&lb.config.path, "servers = [\"not an address\"]\n").unwrap();
    lb.guard.signal("USR2");
    let failed = poll_until(Duration::from_secs(20), || {
        lb.stderr
            .joined()
            .contains("upgrade failed, this instance keeps serving")
            .then_some(())
    });
    assert!(failed.is_some(), "{}", lb.stderr.joined());
    assert_eq!(http_get(lb.port, "/").status, 200);
    assert!(new_pid(&lb).is_none());

    // Another SIGUSR2 with a good file succeeds.
    std::fs::write(&lb.config.path, good).unwrap();
    let t = Instant::now();
    lb.guard.signal("USR2");
    let pid = poll_until(Duration::from_secs(20), || new_pid(&lb))
        .unwrap_or_else(|| panic!("second upgrade did not happen:\n{}", lb.stderr.joined()));
    let new = PidGuard(pid);
    assert!(t.elapsed() < Duration::from_secs(20));
    assert_eq!(http_get(lb.port, "/").status, 200);
    drop(new);
}
