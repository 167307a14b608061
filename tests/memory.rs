//! Memory that must not follow the size of a pool or the number of idle
//! clients: idle pooled backend connections hold no read buffer (they give
//! it back to a small per-worker stash and take one again when reused), and
//! neither do idle client connections, fresh or kept alive (they hold their
//! task and socket state only).

mod common;

use std::thread;
use std::time::Duration;

use common::*;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn idle_pooled_backend_connections_hold_no_read_buffer() {
    const N: usize = 200;
    let backend = spawn_backend();
    let config = Config::for_backends(std::slice::from_ref(&backend))
        .with("workers", "1")
        .with("pool_size", &N.to_string());
    let lb = spawn_balancer(&config, &[]);
    let pid = lb.guard.pid();
    // Warm up allocator arenas and the code paths with a few requests.
    for _ in 0..20 {
        assert_eq!(http_get(lb.port, "/").status, 200);
    }
    thread::sleep(Duration::from_millis(200));
    let before = rss_kib(pid);
    // N requests in flight at once: N backend connections, all pooled when
    // they are done.
    let port = lb.port;
    let threads: Vec<_> = (0..N)
        .map(|_| thread::spawn(move || try_request(port, "GET", "/sleep?ms=400")))
        .collect();
    for t in threads {
        assert!(matches!(t.join().unwrap(), Ok((200, _))));
    }
    // Freed memory goes back to the kernel on the control executor's next
    // heap trim (every 10 s).
    thread::sleep(Duration::from_millis(10_500));
    let after = rss_kib(pid);
    let per_conn = (after.saturating_sub(before)) * 1024 / N as u64;
    eprintln!("RSS {before} -> {after} KiB with {N} idle pooled connections: {per_conn} B each");
    // A held read buffer (32 KiB each) would be 6.4 MiB; what is left is
    // the connection's own state and allocator slack. The slack grew when
    // client connections started lending their buffers to a stash and
    // boxing each request's work (issue 15): after this burst of 200
    // concurrent requests, 7.0-7.3 KB per pooled connection stays resident
    // (2.7-2.9 KB before; 6.5 KB with 32 KiB buffers served by mmap, so the
    // buffers are not the cause), while an idle client connection went from
    // ~8 KB to ~1 KB. Not root-caused; the bound still fails on a held read
    // buffer.
    assert!(
        per_conn < 8 * 1024,
        "{per_conn} bytes of RSS per idle pooled connection"
    );
    // And they are reused: the next requests need no new connection.
    for _ in 0..20 {
        assert_eq!(http_get(lb.port, "/").status, 200);
    }
}

/// The soft open-file limit of this process.
fn nofile_soft_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

#[test]
fn idle_client_connections_hold_no_buffers() {
    let backend = spawn_backend();
    let config = Config::for_backends(std::slice::from_ref(&backend))
        .with("workers", "1")
        .with("keepalive_timeout", "60000")
        .with("client_header_timeout", "60000")
        .with("max_client_connections", "4000");
    let lb = spawn_balancer(&config, &[]);
    let pid = lb.guard.pid();
    let in_use = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let n = 1000usize.min(nofile_soft_limit().saturating_sub(in_use + 200));
    assert!(n >= 400, "open-file limit too low for this test");
    // Warm up allocator arenas and the code paths with a batch of
    // connections that is then closed.
    let warm: Vec<Conn> = (0..100)
        .map(|_| {
            let mut c = lb.connect();
            assert_eq!(c.get("/").status, 200);
            c
        })
        .collect();
    drop(warm);
    thread::sleep(Duration::from_millis(300));
    let before = rss_kib(pid);
    // Half of them fresh (accepted, nothing sent), half kept alive after
    // one request.
    let mut conns: Vec<Conn> = (0..n)
        .map(|i| {
            let mut c = lb.connect();
            if i % 2 == 1 {
                assert_eq!(c.get("/").status, 200);
            }
            c
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    let after = rss_kib(pid);
    let per_conn = (after.saturating_sub(before)) * 1024 / n as u64;
    eprintln!("RSS {before} -> {after} KiB with {n} idle client connections: {per_conn} B each");
    // Both kinds still work.
    for c in conns.iter_mut().step_by(97) {
        assert_eq!(c.get("/").status, 200);
    }
    // A 4 KiB read buffer each (the old behaviour) came to about 8 KiB per
    // connection; what is left is the task (~300 bytes of connection
    // state), the socket's glommio readiness source (~500 bytes) and
    // allocator slack: about 0.9 KiB here, under 1 KB at 10 000 connections
    // with the release binary. A glommio timer per idle wait (+130 B), a
    // boxed-in access-log capture or PROXY connection (+260 B) would fail
    // this bound.
    assert!(
        per_conn < 1536,
        "{per_conn} bytes of RSS per idle client connection"
    );
}
