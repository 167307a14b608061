//! Regression tests for proxy-path defects of issue 13, over real sockets:
//!
//! - defect 1: a read timeout on a warm (pooled) connection gives 504 within
//!   `(retries + 1) × read_timeout` plus backoff, not 502 after an extra try;
//! - defect 10: an Upgrade tunnel relays each direction until it ends and
//!   propagates a half-close, so an answer sent after EOF still arrives;
//! - defect 13a: a response finished during a graceful drain carries
//!   `Connection: close`.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
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

#[test]
fn timeout_whose_retry_finds_no_backend_left_is_still_504() {
    // The only backend is slow, and its first timeout takes it out of
    // rotation (max_fails = 1): the retry finds no backend. The client must
    // learn what happened (a timeout: 504), not get a 502 "no backend" that
    // hides it. The backoff (100-200 ms) leaves the health executor time to
    // publish the change before the retry picks.
    let backend = spawn_backend();
    let config = Config::for_backends(std::slice::from_ref(&backend))
        .with("workers", "1")
        .with("read_timeout", "1000")
        .with("retries", "1")
        .with("retry_backoff", "200")
        .with("retry_backoff_max", "200")
        .with("max_fails", "1")
        .with("breaker_threshold", "0")
        .with("health_check_interval", "60000");
    let balancer = spawn_balancer(&config, &[]);
    let r = http_get(balancer.port, "/");
    assert_eq!(r.status, 200, "{r:?}");
    let t = Instant::now();
    let r = http_get(balancer.port, "/sleep?ms=2000");
    let elapsed = t.elapsed();
    assert_eq!(
        r.status,
        504,
        "after {elapsed:?}: {r:?}; log:\n{}",
        balancer.stderr.joined()
    );
    assert!(
        elapsed < Duration::from_millis(2700),
        "504 after {elapsed:?}"
    );
}

/// An origin that answers the first request on each connection (keep-alive)
/// and closes the connection without a word when a second one arrives: to
/// the balancer, a pooled connection that went stale. Stops when dropped.
struct StaleOrigin {
    port: u16,
    _server: ThreadedServer,
}

impl StaleOrigin {
    fn start() -> StaleOrigin {
        let server = ThreadedServer::start(|mut s, _, _| {
            let _ = s.set_read_timeout(Some(Duration::from_secs(8)));
            if !read_request_head(&mut s, &mut Vec::new()) {
                return;
            }
            let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh";
            if s.write_all(reply).is_err() {
                return;
            }
            // The next request (or EOF) ends the connection.
            let _ = s.read(&mut [0u8; 4096]);
        });
        StaleOrigin {
            port: server.port,
            _server: server,
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
// 10. Half-closed tunnels
// ---------------------------------------------------------------------------

/// What the tunnel origin does after its `101`.
#[derive(Clone, Copy)]
enum TunnelMode {
    /// Reads until EOF, then answers `pong:<what it read>` and closes.
    AnswerAfterEof,
    /// Sends `hello`, half-closes, then reads until EOF.
    HalfCloseFirst,
    /// Reads until EOF, then keeps the connection open without a word
    /// (until the origin is dropped, at most 8 s).
    SilentAfterEof,
    /// Echoes every byte until EOF.
    Echo,
}

/// An upgrade-capable origin on std sockets. A request with an `Upgrade`
/// header gets a `101` and then [`TunnelMode`]; anything else (health checks)
/// gets an empty 200 and a close. Every tunnel reports what it read from
/// the balancer on `received`.
struct TunnelOrigin {
    port: u16,
    received: mpsc::Receiver<Vec<u8>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl TunnelOrigin {
    fn start(mode: TunnelMode) -> TunnelOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind origin");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("local addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, received) = mpsc::channel();
        let stop2 = stop.clone();
        let handle = thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (tx, stop) = (tx.clone(), stop2.clone());
                        thread::spawn(move || serve_origin(s, mode, tx, &stop));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => break,
                }
            }
        });
        TunnelOrigin {
            port,
            received,
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for TunnelOrigin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Reads from `s` until EOF (or an error, or the socket's read timeout).
fn read_until_eof(s: &mut TcpStream, mut got: Vec<u8>) -> Vec<u8> {
    let mut tmp = [0u8; 4096];
    loop {
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&tmp[..n]),
        }
    }
}

fn serve_origin(mut s: TcpStream, mode: TunnelMode, tx: mpsc::Sender<Vec<u8>>, stop: &AtomicBool) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(8)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(8)));
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    let end = loop {
        if let Some(i) = find(&got, b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return,
            Ok(n) => got.extend_from_slice(&tmp[..n]),
        }
    };
    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
    if !head.contains("\r\nupgrade:") {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    let rest = got[end..].to_vec();
    if s.write_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\n",
    )
    .is_err()
    {
        return;
    }
    match mode {
        TunnelMode::AnswerAfterEof => {
            let got = read_until_eof(&mut s, rest);
            let mut answer = b"pong:".to_vec();
            answer.extend_from_slice(&got);
            let _ = s.write_all(&answer);
            let _ = s.shutdown(Shutdown::Write);
            let _ = tx.send(got);
        }
        TunnelMode::HalfCloseFirst => {
            let _ = s.write_all(b"hello");
            let _ = s.shutdown(Shutdown::Write);
            let got = read_until_eof(&mut s, rest);
            let _ = tx.send(got);
        }
        TunnelMode::SilentAfterEof => {
            let got = read_until_eof(&mut s, rest);
            let _ = tx.send(got);
            // Holding the socket is the point: only the balancer may end it.
            let _ = poll_until(Duration::from_secs(8), || {
                stop.load(Ordering::SeqCst).then_some(())
            });
        }
        TunnelMode::Echo => {
            if s.write_all(&rest).is_err() {
                return;
            }
            let mut tmp = [0u8; 4096];
            loop {
                match s.read(&mut tmp) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&tmp[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
        }
    }
}

const UPGRADE: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n";

fn tunnel_balancer(origin: &TunnelOrigin) -> Balancer {
    spawn_balancer(
        &Config::new(&[origin.port])
            .with("workers", "1")
            .with("read_timeout", "1000"),
        &[],
    )
}

fn open_tunnel(balancer: &Balancer) -> Conn {
    let mut c = balancer.connect();
    c.send(UPGRADE);
    let head = c.read_head();
    let (_, status, _, _) = parse_head(&head);
    assert_eq!(status, 101, "{:?}", String::from_utf8_lossy(&head));
    c
}

#[test]
fn tunnel_client_half_close_still_gets_the_backend_answer() {
    let origin = TunnelOrigin::start(TunnelMode::AnswerAfterEof);
    let balancer = tunnel_balancer(&origin);
    let mut failures = Vec::new();
    for i in 0..20 {
        let mut c = open_tunnel(&balancer);
        let msg = format!("ping {i}");
        c.send(msg.as_bytes());
        c.shutdown_write();
        let expected = format!("pong:{msg}");
        match c.wait_closed(Duration::from_secs(5)) {
            CloseState::Closed(got) if got == expected.as_bytes() => {}
            other => failures.push((i, other)),
        }
        match origin.received.recv_timeout(Duration::from_secs(5)) {
            Ok(got) if got == msg.as_bytes() => {}
            other => failures.push((i, CloseState::Open(format!("{other:?}").into_bytes()))),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 20 half-closed tunnels lost data: {failures:?}",
        failures.len()
    );
}

#[test]
fn tunnel_backend_half_close_still_relays_the_client_data() {
    let origin = TunnelOrigin::start(TunnelMode::HalfCloseFirst);
    let balancer = tunnel_balancer(&origin);
    let mut failures = Vec::new();
    for i in 0..20 {
        let mut c = open_tunnel(&balancer);
        // The backend's half-close reaches us as EOF after its bytes.
        match c.wait_closed(Duration::from_secs(5)) {
            CloseState::Closed(got) if got == b"hello" => {}
            other => failures.push((i, format!("client saw {other:?}"))),
        }
        // Our direction is still open: what we send now reaches the backend.
        let msg = format!("late {i}");
        if let Err(e) = c.try_send(msg.as_bytes()) {
            failures.push((i, format!("write after backend half-close: {e}")));
        }
        c.shutdown_write();
        match origin.received.recv_timeout(Duration::from_secs(5)) {
            Ok(got) if got == msg.as_bytes() => {}
            other => failures.push((i, format!("backend read {other:?}"))),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures in 20 half-closed tunnels: {failures:?}",
        failures.len()
    );
}

#[test]
fn half_closed_tunnel_idles_out_after_read_timeout() {
    // The client half-closes and the backend never answers nor closes: the
    // tunnel must not live forever, but it must wait `read_timeout` (1 s)
    // for an answer first.
    let origin = TunnelOrigin::start(TunnelMode::SilentAfterEof);
    let balancer = tunnel_balancer(&origin);
    let mut c = open_tunnel(&balancer);
    c.send(b"bye");
    c.shutdown_write();
    let t = Instant::now();
    let got = origin.received.recv_timeout(Duration::from_secs(5));
    assert_eq!(
        got.as_deref(),
        Ok(&b"bye"[..]),
        "the backend saw EOF after the data"
    );
    let state = c.wait_closed(Duration::from_secs(5));
    let elapsed = t.elapsed();
    assert_eq!(state, CloseState::Closed(Vec::new()), "after {elapsed:?}");
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3),
        "half-closed tunnel closed after {elapsed:?}, expected about read_timeout (1 s)"
    );
}

#[test]
fn open_tunnel_outlives_read_timeout_while_idle() {
    // Both directions open: no idle timeout applies (WebSockets may idle).
    let origin = TunnelOrigin::start(TunnelMode::Echo);
    let balancer = tunnel_balancer(&origin);
    let mut c = open_tunnel(&balancer);
    c.send(b"one");
    assert_eq!(c.read_exact_n(3), b"one");
    // Idling past read_timeout (1 s) is the behaviour under test.
    thread::sleep(Duration::from_millis(1500));
    c.send(b"two");
    assert_eq!(c.read_exact_n(3), b"two");
    c.shutdown_write();
    assert_eq!(
        c.wait_closed(Duration::from_secs(5)),
        CloseState::Closed(Vec::new())
    );
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
