//! Memory that must not follow the size of a pool: idle pooled backend
//! connections hold no read buffer (they give it back to a small per-worker
//! stash and take one again when reused).

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
    // A 16 KiB read buffer each would be 3.2 MiB; what is left is the
    // connection's own state (and allocator slack).
    assert!(
        per_conn < 6 * 1024,
        "{per_conn} bytes of RSS per idle pooled connection"
    );
    // And they are reused: the next requests need no new connection.
    for _ in 0..20 {
        assert_eq!(http_get(lb.port, "/").status, 200);
    }
}
