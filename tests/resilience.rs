//! Health and resilience (issue #3): active and passive health checks, the
//! circuit breaker, the retry policy and budget, backend capacity limits and
//! the client connection limit, all against the real `ekilibri` binary.
//!
//! Every test uses `workers = 1` unless stated, so routing is deterministic.
//! Fake backends are std listeners in threads; real ones are
//! `ekilibri-backend` processes owned by a `ProcGuard`. Waits poll against
//! deadlines; timing assertions are about the balancer's configured
//! intervals, with room for a loaded two-core machine.

mod common;

use common::*;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// A client that reports failures instead of panicking
// ---------------------------------------------------------------------------

/// One response as read by [`Http`].
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `X-Backend-Port`, which every `ekilibri-backend` response carries.
    fn backend_port(&self) -> Option<u16> {
        self.header("X-Backend-Port")?.trim().parse().ok()
    }

    /// A complete HTTP/1.1 response whose Content-Length matches the body
    /// (how the balancer's own error responses must look).
    fn assert_complete(&self) {
        let cl: usize = self
            .header("Content-Length")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no Content-Length: {self:?}"));
        assert_eq!(cl, self.body.len(), "Content-Length vs body: {self:?}");
    }
}

/// A keep-alive client connection whose operations return `io::Result`, for
/// loops that must record failures (or retry) rather than panic.
struct Http {
    stream: TcpStream,
    buf: Vec<u8>,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl Http {
    fn connect(port: u16) -> io::Result<Http> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Http {
            stream,
            buf: Vec::new(),
        })
    }

    fn send(&mut self, method: &str, path: &str, body: &[u8]) -> io::Result<()> {
        self.stream
            .write_all(&build_request(method, path, &[], body))
    }

    fn request(&mut self, method: &str, path: &str, body: &[u8]) -> io::Result<Reply> {
        self.send(method, path, body)?;
        self.read_reply()
    }

    fn get(&mut self, path: &str) -> io::Result<Reply> {
        self.request("GET", path, b"")
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 16 * 1024];
        let n = self.stream.read(&mut tmp)?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    fn fill_more(&mut self) -> io::Result<()> {
        match self.fill()? {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed; buffered {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Reads one response (to a non-HEAD request).
    fn read_reply(&mut self) -> io::Result<Reply> {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill_more()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status: u16 = status_line
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
            .and_then(|rest| rest.get(..3))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        for line in lines.filter(|l| !l.is_empty()) {
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
            headers.push((k.to_string(), v.trim().to_string()));
        }
        let mut reply = Reply {
            status,
            headers,
            body: Vec::new(),
        };
        if (100..200).contains(&status) || status == 204 || status == 304 {
            return Ok(reply);
        }
        match reply.header("Content-Length") {
            Some(v) => {
                let n: usize = v
                    .trim()
                    .parse()
                    .map_err(|_| invalid(format!("bad Content-Length {v:?}")))?;
                while self.buf.len() < n {
                    self.fill_more()?;
                }
                reply.body = self.buf.drain(..n).collect();
            }
            None => {
                while self.fill()? > 0 {}
                reply.body = std::mem::take(&mut self.buf);
            }
        }
        Ok(reply)
    }
}

/// `GET path` on a fresh connection.
fn get_once(port: u16, path: &str) -> io::Result<Reply> {
    Http::connect(port)?.get(path)
}

// ---------------------------------------------------------------------------
// Balancer log
// ---------------------------------------------------------------------------

/// True if `line` names `127.0.0.1:PORT` exactly (not a longer port).
fn mentions_port(line: &str, port: u16) -> bool {
    let pat = format!("127.0.0.1:{port}");
    line.match_indices(&pat).any(|(i, _)| {
        !line[i + pat.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

fn log_lines(b: &Balancer) -> Vec<String> {
    b.stderr.snapshot().iter().map(|l| strip_ansi(l)).collect()
}

/// Polls the balancer's stderr until a line matches; returns when it was seen.
fn wait_log(b: &Balancer, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<Instant> {
    poll_until(timeout, || {
        log_lines(b).iter().any(|l| pred(l)).then(Instant::now)
    })
}

/// "backend is down" (active or passive) for this backend.
fn is_down_line(line: &str, port: u16) -> bool {
    line.contains("backend is down") && mentions_port(line, port)
}

/// Waits for the balancer to log that the backend on `port` is down.
#[track_caller]
fn expect_down(b: &Balancer, port: u16, timeout: Duration) -> Instant {
    wait_log(b, timeout, |l| is_down_line(l, port)).unwrap_or_else(|| {
        panic!(
            "no `backend is down` for 127.0.0.1:{port} within {timeout:?}; log:\n{}",
            log_lines(b).join("\n")
        )
    })
}

// ---------------------------------------------------------------------------
// A real backend on a chosen port
// ---------------------------------------------------------------------------

/// Starts `ekilibri-backend -p PORT`; Err(output) if it exits (bind failed).
fn try_spawn_backend_on(port: u16) -> Result<ProcGuard, String> {
    let mut child = Command::new(BACKEND_BIN)
        .args(["-p", &port.to_string()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ekilibri-backend");
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut guard = ProcGuard::new("ekilibri-backend", child);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent && let Some(p) = parse_listening_port(&line) {
                let _ = tx.send(p);
                sent = true;
            }
        }
    });
    let err_text = Arc::new(Mutex::new(String::new()));
    let err2 = err_text.clone();
    thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        err2.lock().unwrap().push_str(&s);
    });
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(p) => {
                assert_eq!(p, port, "backend listens on another port");
                return Ok(guard);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = guard.wait_timeout(Duration::from_secs(2));
                thread::sleep(Duration::from_millis(20)); // let stderr be collected
                return Err(format!(
                    "exited ({status:?}): {}",
                    err_text.lock().unwrap().trim()
                ));
            }
        }
        if Instant::now() >= deadline {
            panic!("ekilibri-backend -p {port} not ready within {READY_TIMEOUT:?}");
        }
    }
}

/// Starts a backend on `port`, retrying for a while if the port is briefly
/// still taken.
fn spawn_backend_on(port: u16) -> ProcGuard {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match try_spawn_backend_on(port) {
            Ok(g) => return g,
            Err(e) if Instant::now() < deadline => {
                eprintln!("ekilibri-backend -p {port}: {e}; retrying");
                thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("cannot start ekilibri-backend -p {port}: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Scripted fake backends
// ---------------------------------------------------------------------------

const HEALTH_OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// What a [`Script`] backend does with a connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Behaviour {
    /// Reads the request and never answers (health checks included); holds
    /// the connection until the peer closes it.
    Hang,
    /// Answers `GET /health` with 200; any other request is left unread and
    /// the socket dropped, which makes the kernel send a reset.
    ResetUnlessHealth,
    /// Answers `GET /health` with 200; for any other request reads the head
    /// and closes without a response.
    CloseUnlessHealth,
}

/// A fake backend in threads. Non-health requests are recorded with the
/// time their request line arrived.
struct Script {
    port: u16,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    requests: Arc<Mutex<Vec<(Instant, String)>>>,
    health: Arc<AtomicUsize>,
}

impl Script {
    fn start(behaviour: Behaviour) -> Script {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let health = Arc::new(AtomicUsize::new(0));
        let (stop2, requests2, health2) = (stop.clone(), requests.clone(), health.clone());
        let handle = thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (stop3, requests3, health3) =
                            (stop2.clone(), requests2.clone(), health2.clone());
                        thread::spawn(move || {
                            script_conn(s, behaviour, &stop3, &requests3, &health3)
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => break,
                }
            }
        });
        Script {
            port,
            stop,
            handle: Some(handle),
            requests,
            health,
        }
    }

    /// Non-health requests seen so far: (arrival, request line).
    fn requests(&self) -> Vec<(Instant, String)> {
        self.requests.lock().unwrap().clone()
    }

    fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    fn count_method(&self, method: &str) -> usize {
        let prefix = format!("{method} ");
        self.requests()
            .iter()
            .filter(|(_, l)| l.starts_with(&prefix))
            .count()
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Reads until the end of a request head (or EOF, error, 3 s).
fn read_head(s: &mut TcpStream) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    while find(&got, b"\r\n\r\n").is_none() && start.elapsed() < Duration::from_secs(3) {
        match s.read(&mut tmp) {
            Ok(0) => return,
            Ok(n) => got.extend_from_slice(&tmp[..n]),
            Err(e) if is_timeout(&e) => {}
            Err(_) => return,
        }
    }
}

fn script_conn(
    mut s: TcpStream,
    behaviour: Behaviour,
    stop: &AtomicBool,
    requests: &Mutex<Vec<(Instant, String)>>,
    health: &AtomicUsize,
) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    // Look at the request line without consuming it, so that a reset can
    // leave the request unread.
    let start = Instant::now();
    let mut tmp = [0u8; 4096];
    let line = loop {
        if stop.load(Ordering::SeqCst) || start.elapsed() > Duration::from_secs(5) {
            return;
        }
        match s.peek(&mut tmp) {
            Ok(0) => return,
            Ok(n) => {
                if let Some(i) = find(&tmp[..n], b"\r\n") {
                    break String::from_utf8_lossy(&tmp[..i]).into_owned();
                }
                if n == tmp.len() {
                    return;
                }
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) if is_timeout(&e) => {}
            Err(_) => return,
        }
    };
    let is_health = line.starts_with("GET /health ");
    if is_health {
        health.fetch_add(1, Ordering::SeqCst);
    } else {
        requests.lock().unwrap().push((Instant::now(), line));
    }
    match (behaviour, is_health) {
        (Behaviour::Hang, _) => {
            read_head(&mut s);
            while !stop.load(Ordering::SeqCst) {
                match s.read(&mut tmp) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if is_timeout(&e) => {}
                    Err(_) => return,
                }
            }
        }
        (_, true) => {
            read_head(&mut s);
            let _ = s.write_all(HEALTH_OK);
            let _ = s.shutdown(Shutdown::Both);
        }
        (Behaviour::ResetUnlessHealth, false) => drop(s),
        (Behaviour::CloseUnlessHealth, false) => {
            read_head(&mut s);
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Sends `KILL` to a backend and waits until it is gone.
fn kill_backend(b: &mut Backend) {
    b.guard.signal("KILL");
    assert!(
        b.guard.wait_timeout(Duration::from_secs(5)).is_some(),
        "backend {} did not die",
        b.port
    );
}

// ---------------------------------------------------------------------------
// 1. Killing a backend under traffic
// ---------------------------------------------------------------------------

/// One request of the traffic thread.
#[derive(Debug)]
struct Sample {
    sent: Instant,
    result: Result<(u16, Option<u16>), String>,
}

#[test]
fn killing_a_backend_under_traffic_loses_no_idempotent_request() {
    let mut backends = spawn_backends(3);
    let ports: Vec<u16> = backends.iter().map(|b| b.port).collect();
    let dead = ports[1];
    let config = Config::for_backends(&backends)
        .with("workers", "1")
        .with("retries", "1")
        .with("health_check_interval", "100");
    let balancer = spawn_balancer(&config, &[]);
    let port = balancer.port;

    // Sequential GET / on keep-alive connections (a new one every 25
    // requests, and after any error) until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let (stop2, samples2) = (stop.clone(), samples.clone());
    let traffic = thread::spawn(move || {
        let mut conn: Option<Http> = None;
        let mut on_conn = 0;
        while !stop2.load(Ordering::SeqCst) {
            if conn.is_none() || on_conn >= 25 {
                conn = Http::connect(port).ok();
                on_conn = 0;
            }
            let sent = Instant::now();
            let result = match conn.as_mut() {
                Some(c) => c
                    .get("/")
                    .map(|r| (r.status, r.backend_port()))
                    .map_err(|e| e.to_string()),
                None => Err("connect to the balancer failed".to_string()),
            };
            on_conn += 1;
            if !matches!(result, Ok((200, _))) {
                conn = None;
            }
            samples2.lock().unwrap().push(Sample { sent, result });
        }
    });

    // Let traffic reach all three backends for at least 0.5 s, then kill one.
    let start = Instant::now();
    let warmed = poll_until(Duration::from_secs(8), || {
        let s = samples.lock().unwrap();
        let all = ports.iter().all(|p| {
            s.iter()
                .any(|x| matches!(x.result, Ok((200, Some(q))) if q == *p))
        });
        (all && start.elapsed() >= Duration::from_millis(500)).then_some(())
    });
    if warmed.is_none() {
        stop.store(true, Ordering::SeqCst);
        let _ = traffic.join();
        panic!(
            "traffic did not reach all backends: {:?}",
            samples.lock().unwrap().iter().take(10).collect::<Vec<_>>()
        );
    }
    let killed_at = Instant::now();
    kill_backend(&mut backends[1]);
    let down = wait_log(&balancer, Duration::from_secs(3), |l| is_down_line(l, dead));
    // Keep the traffic going for 1.5 s after the kill.
    let until = killed_at + Duration::from_millis(1500);
    while Instant::now() < until {
        thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    traffic.join().expect("traffic thread");

    let samples = samples.lock().unwrap();
    let failures: Vec<&Sample> = samples
        .iter()
        .filter(|s| !matches!(s.result, Ok((200, _))))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} idempotent requests failed around the kill of backend {dead} (killed {:?} after start): {:?}\nlog:\n{}",
        failures.len(),
        samples.len(),
        killed_at - start,
        failures
            .iter()
            .take(5)
            .map(|s| (s.sent.saturating_duration_since(killed_at), &s.result))
            .collect::<Vec<_>>(),
        log_lines(&balancer).join("\n")
    );
    let down = down.unwrap_or_else(|| {
        panic!(
            "the killed backend was never marked down; log:\n{}",
            log_lines(&balancer).join("\n")
        )
    });
    let after: Vec<u16> = samples
        .iter()
        .filter(|s| s.sent >= down)
        .filter_map(|s| s.result.as_ref().ok().and_then(|r| r.1))
        .collect();
    assert!(
        after.len() >= 20,
        "only {} requests after the backend was marked down",
        after.len()
    );
    assert!(
        !after.contains(&dead),
        "a response named the dead backend {dead} after it was marked down"
    );
    let seen = count(&after);
    for p in [ports[0], ports[2]] {
        assert!(
            seen.get(&p).copied().unwrap_or(0) > 0,
            "backend {p} got no traffic after the kill: {seen:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// 2. All backends dead
// ---------------------------------------------------------------------------

#[test]
fn all_backends_dead_gives_fast_502() {
    let mut backends = spawn_backends(2);
    let config = Config::for_backends(&backends)
        .with("workers", "1")
        .with("health_check_interval", "100");
    let balancer = spawn_balancer(&config, &[]);
    let ok = get_once(balancer.port, "/").expect("request before the kill");
    assert_eq!(ok.status, 200, "{ok:?}");

    for b in &mut backends {
        kill_backend(b);
    }
    for b in &backends {
        expect_down(&balancer, b.port, Duration::from_secs(3));
    }
    let first = poll_until(Duration::from_secs(5), || {
        get_once(balancer.port, "/")
            .ok()
            .filter(|r| r.status == 502)
    })
    .expect("no 502 after every backend died");
    first.assert_complete();

    // Fresh connections and one keep-alive connection: every answer is a
    // complete 502, each well under 300 ms.
    let mut keep = Http::connect(balancer.port).expect("connect");
    for i in 0..10 {
        let t = Instant::now();
        let r = if i % 2 == 0 {
            get_once(balancer.port, "/")
        } else {
            keep.get("/")
        }
        .unwrap_or_else(|e| panic!("request {i}: {e}"));
        let elapsed = t.elapsed();
        assert_eq!(r.status, 502, "request {i}: {r:?}");
        r.assert_complete();
        assert!(
            elapsed < Duration::from_millis(300),
            "request {i}: 502 took {elapsed:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// 3. A revived backend comes back
// ---------------------------------------------------------------------------

#[test]
fn revived_backend_on_same_port_gets_traffic_again() {
    let mut backends = spawn_backends(2);
    let revived = backends[0].port;
    let config = Config::for_backends(&backends)
        .with("workers", "1")
        .with("health_check_interval", "200");
    let balancer = spawn_balancer(&config, &[]);
    let seen = poll_until(Duration::from_secs(3), || {
        get_once(balancer.port, "/")
            .ok()
            .filter(|r| r.backend_port() == Some(revived))
    });
    assert!(
        seen.is_some(),
        "backend {revived} never served before the kill"
    );

    kill_backend(&mut backends[0]);
    let down = expect_down(&balancer, revived, Duration::from_secs(3));
    // Out of rotation: every request succeeds on the other backend.
    for _ in 0..6 {
        let r = get_once(balancer.port, "/").expect("request while one is down");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.backend_port(), Some(backends[1].port), "{r:?}");
    }

    let _revived_guard = spawn_backend_on(revived);
    let ready = Instant::now();
    let mut failures = Vec::new();
    let back = poll_until(Duration::from_secs(5), || {
        match get_once(balancer.port, "/") {
            Ok(r) if r.status == 200 => {
                (r.backend_port() == Some(revived)).then(|| ready.elapsed())
            }
            other => {
                failures.push(format!("{other:?}"));
                None
            }
        }
    });
    assert!(
        failures.is_empty(),
        "requests failed while the backend came back: {failures:?}"
    );
    let took = back.unwrap_or_else(|| {
        panic!(
            "backend {revived} (down since {:?} before restart) got no traffic within 5 s of restarting; log:\n{}",
            ready - down,
            log_lines(&balancer).join("\n")
        )
    });
    assert!(
        took < Duration::from_secs(1),
        "backend {revived} took {took:?} to get traffic again (health_check_interval 200 ms)"
    );
}

// ---------------------------------------------------------------------------
// 4. A backend whose health check hangs
// ---------------------------------------------------------------------------

#[test]
fn backend_with_hanging_health_check_is_removed() {
    let backend = spawn_backend();
    let hang = Script::start(Behaviour::Hang);
    let config = Config::new(&[backend.port, hang.port])
        .with("workers", "1")
        .with("health_check_timeout", "300")
        .with("health_check_interval", "100")
        .with("read_timeout", "500");
    let balancer = spawn_balancer(&config, &[]);
    expect_down(&balancer, hang.port, Duration::from_secs(3));
    let line = log_lines(&balancer)
        .into_iter()
        .find(|l| is_down_line(l, hang.port))
        .unwrap();
    assert!(line.contains("timed out"), "unexpected reason: {line}");

    let before = hang.request_count();
    let mut c = Http::connect(balancer.port).expect("connect");
    for i in 0..20 {
        let t = Instant::now();
        let r = if i % 2 == 0 {
            c.get("/")
        } else {
            get_once(balancer.port, "/")
        }
        .unwrap_or_else(|e| panic!("request {i}: {e}"));
        let elapsed = t.elapsed();
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.backend_port(), Some(backend.port), "request {i}: {r:?}");
        assert!(
            elapsed < Duration::from_millis(400),
            "request {i} took {elapsed:?}: was it tried on the hanging backend?"
        );
    }
    assert_eq!(
        hang.request_count(),
        before,
        "requests reached the hanging backend after it was removed: {:?}",
        hang.requests()
    );
    // Health checks keep probing it (each one timing out).
    assert!(
        poll_until(Duration::from_secs(3), || {
            (hang.health.load(Ordering::SeqCst) >= 3).then_some(())
        })
        .is_some(),
        "health checks stopped probing the hanging backend"
    );
    assert_eq!(hang.request_count(), before);
}

// ---------------------------------------------------------------------------
// 5. A backend that resets every request
// ---------------------------------------------------------------------------

#[test]
fn resetting_backend_is_retried_or_gives_502() {
    let backend = spawn_backend();
    let reset = Script::start(Behaviour::ResetUnlessHealth);

    // With a healthy backend next to it, GETs are retried there. Passive
    // health and the breaker are off so the resetting backend stays in
    // rotation; a budget of one retry per request never runs out.
    let config = Config::new(&[reset.port, backend.port])
        .with("workers", "1")
        .with("retries", "1")
        .with("retry_budget", "1.0")
        .with("max_fails", "1000")
        .with("breaker_threshold", "0")
        .with("health_check_interval", "60000");
    let balancer = spawn_balancer(&config, &[]);
    let mut c = Http::connect(balancer.port).expect("connect");
    for i in 0..20 {
        let r = if i % 2 == 0 {
            c.get("/")
        } else {
            get_once(balancer.port, "/")
        }
        .unwrap_or_else(|e| panic!("GET {i} with a healthy backend available: {e}"));
        assert_eq!(r.status, 200, "GET {i}: {r:?}");
        assert_eq!(r.backend_port(), Some(backend.port), "GET {i}: {r:?}");
    }
    assert!(
        reset.request_count() >= 10,
        "round robin should have tried the resetting backend for half the requests, got {}",
        reset.request_count()
    );
    drop(c);
    drop(balancer);

    // As the only backend: a 502 each time, quickly, and the balancer lives.
    let reset_only = Script::start(Behaviour::ResetUnlessHealth);
    let config = Config::new(&[reset_only.port])
        .with("workers", "1")
        .with("retries", "1")
        .with("max_fails", "1000")
        .with("breaker_threshold", "0")
        .with("health_check_interval", "60000");
    let mut balancer = spawn_balancer(&config, &[]);
    let mut c = Http::connect(balancer.port).expect("connect");
    let n = 6;
    for i in 0..n {
        let t = Instant::now();
        let r = if i % 2 == 0 {
            get_once(balancer.port, "/")
        } else {
            c.get("/")
        }
        .unwrap_or_else(|e| panic!("GET {i} to a resetting backend: {e}"));
        let elapsed = t.elapsed();
        assert_eq!(r.status, 502, "GET {i}: {r:?}");
        r.assert_complete();
        assert!(elapsed < Duration::from_secs(2), "GET {i} took {elapsed:?}");
    }
    let tries = reset_only.request_count();
    assert!(
        (n..=2 * n).contains(&tries),
        "{n} requests with retries = 1 made {tries} attempts"
    );
    assert!(
        balancer.guard.try_wait().is_none(),
        "balancer exited; log:\n{}",
        log_lines(&balancer).join("\n")
    );
    let r = get_once(balancer.port, "/").expect("balancer still serving");
    assert_eq!(r.status, 502, "{r:?}");
}

// ---------------------------------------------------------------------------
// 6. Circuit breaker schedule
// ---------------------------------------------------------------------------

#[test]
fn circuit_breaker_opens_and_half_opens_on_schedule() {
    let backend = spawn_backend();
    let fake = Script::start(Behaviour::CloseUnlessHealth);
    let config = Config::new(&[backend.port, fake.port])
        .with("workers", "1")
        .with("retries", "0")
        .with("breaker_threshold", "3")
        .with("breaker_open_duration", "1000")
        .with("max_fails", "1000")
        .with("health_check_interval", "60000");
    let balancer = spawn_balancer(&config, &[]);
    let is_breaker = |l: &str, what: &str| {
        l.contains("circuit breaker") && l.contains(what) && mentions_port(l, fake.port)
    };

    // Sequential requests every ~5 ms until the breaker has opened, gone
    // half-open and re-opened after its failed trial.
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut conn: Option<Http> = None;
    let mut statuses = Vec::new();
    let mut done = false;
    while Instant::now() < deadline && !done {
        if conn.is_none() {
            conn = Some(Http::connect(balancer.port).expect("connect"));
        }
        match conn.as_mut().unwrap().get("/") {
            Ok(r) => {
                if r.header("Connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                {
                    conn = None;
                }
                statuses.push(r.status);
            }
            Err(e) => panic!(
                "request {} failed at the transport level: {e}",
                statuses.len()
            ),
        }
        let lines = log_lines(&balancer);
        done = lines.iter().any(|l| is_breaker(l, "HalfOpen -> Open"));
        thread::sleep(Duration::from_millis(5));
    }
    let lines = log_lines(&balancer);
    let pos = |what: &str| lines.iter().position(|l| is_breaker(l, what));
    let (opened, half, reopened) = (
        pos("Closed -> Open"),
        pos("Open -> HalfOpen"),
        pos("HalfOpen -> Open"),
    );
    assert!(
        matches!((opened, half, reopened), (Some(a), Some(b), Some(c)) if a < b && b < c),
        "expected Closed -> Open, Open -> HalfOpen, HalfOpen -> Open in order; log:\n{}",
        lines.join("\n")
    );

    let reqs = fake.requests();
    let n502 = statuses.iter().filter(|&&s| s == 502).count();
    let others: Vec<u16> = statuses
        .iter()
        .copied()
        .filter(|&s| s != 200 && s != 502)
        .collect();
    assert!(others.is_empty(), "unexpected statuses {others:?}");
    assert_eq!(
        n502,
        reqs.len(),
        "every request that reached the failing backend (and only those) must be a 502"
    );

    // The open period is the one long silence towards the failing backend:
    // at least `breaker_threshold` failures before it, a trial after it.
    let times: Vec<Instant> = reqs.iter().map(|(t, _)| *t).collect();
    let (gap_at, gap) = times
        .windows(2)
        .enumerate()
        .map(|(i, w)| (i, w[1] - w[0]))
        .max_by_key(|&(_, g)| g)
        .expect("the failing backend saw fewer than two requests");
    let before = gap_at + 1;
    let after = times.len() - before;
    assert!(
        (3..=5).contains(&before),
        "{before} failed requests before the breaker opened (threshold 3)"
    );
    assert!(
        gap >= Duration::from_millis(900),
        "the failing backend got a request {gap:?} after the breaker opened (open for 1000 ms)"
    );
    assert!(
        gap <= Duration::from_millis(1700),
        "no trial request until {gap:?} after the breaker opened (open for 1000 ms)"
    );
    assert!(
        (1..=2).contains(&after),
        "{after} requests reached the backend while half-open (1 trial per worker)"
    );
    assert!(
        statuses.len() > n502 + 20,
        "traffic kept flowing to the healthy backend while the breaker was open"
    );
}

// ---------------------------------------------------------------------------
// 7. max_connections, queue_size, queue_timeout
// ---------------------------------------------------------------------------

#[test]
fn backend_capacity_queue_and_timeout_give_503() {
    let backend = spawn_backend();
    let tap = Tap::start(backend.port, b"/sleep");
    let config = Config::new(&[tap.port])
        .with("workers", "1")
        .with("max_connections", "1")
        .with("queue_size", "1")
        .with("queue_timeout", "300")
        .with("health_check_interval", "60000");
    let balancer = spawn_balancer(&config, &[]);

    // A holds the only slot.
    let mut a = Http::connect(balancer.port).expect("connect A");
    let a_sent = Instant::now();
    a.send("GET", "/sleep?ms=1500", b"").expect("send A");
    assert!(
        tap.wait_hit_after(0, Duration::from_secs(5)),
        "A never reached the backend"
    );

    // B waits in the queue: no answer while it is there.
    let mut b = Http::connect(balancer.port).expect("connect B");
    let b_sent = Instant::now();
    b.send("GET", "/", b"").expect("send B");
    b.stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut probe = [0u8; 1];
    match b.stream.peek(&mut probe) {
        Err(e) if is_timeout(&e) => {}
        other => panic!("B answered at once instead of queueing: {other:?}"),
    }
    b.stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();

    // C finds the queue full: 503 at once.
    let c_sent = Instant::now();
    let c = get_once(balancer.port, "/").expect("C");
    let c_took = c_sent.elapsed();
    assert_eq!(c.status, 503, "C: {c:?}");
    c.assert_complete();
    assert!(
        c_took < Duration::from_millis(250),
        "C (queue full) took {c_took:?}; it should be refused at once"
    );

    // B times out in the queue after queue_timeout.
    let rb = b.read_reply().expect("B reply");
    let b_took = b_sent.elapsed();
    assert_eq!(rb.status, 503, "B: {rb:?}");
    rb.assert_complete();
    assert!(
        b_took >= Duration::from_millis(280) && b_took < Duration::from_millis(1000),
        "B got its 503 after {b_took:?}, expected about 300 ms (queue_timeout)"
    );

    // A completes normally, then the slot is free again.
    let ra = a.read_reply().expect("A reply");
    assert_eq!(ra.status, 200, "A: {ra:?}");
    assert!(a_sent.elapsed() >= Duration::from_millis(1400));
    let t = Instant::now();
    let d = get_once(balancer.port, "/").expect("D");
    assert_eq!(d.status, 200, "D after A finished: {d:?}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "D took {:?}",
        t.elapsed()
    );
}

// ---------------------------------------------------------------------------
// 8. max_client_connections
// ---------------------------------------------------------------------------

/// Connects and expects the over-limit answer: a 503 and a close.
#[track_caller]
fn expect_refused_connection(port: u16) {
    let mut c = Conn::connect(port);
    let r = c.read_response();
    assert_eq!(r.status, 503, "over-limit connection: {r:?}");
    r.assert_complete_with_length();
    match c.wait_closed(Duration::from_secs(3)) {
        CloseState::Closed(extra) => assert!(extra.is_empty(), "{extra:?}"),
        CloseState::Open(_) => panic!("over-limit connection left open after its 503"),
    }
}

#[test]
fn client_connection_limit_refuses_with_503_then_recovers() {
    let backend = spawn_backend();
    let config = Config::for_backends(std::slice::from_ref(&backend))
        .with("workers", "1")
        .with("max_client_connections", "2");
    let balancer = spawn_balancer(&config, &[]);

    let mut c1 = balancer.connect();
    assert_eq!(c1.get("/").status, 200);
    let mut c2 = balancer.connect();
    assert_eq!(c2.get("/").status, 200);
    // Both idle and kept alive: a third is refused.
    expect_refused_connection(balancer.port);

    drop(c1);
    let served = poll_until(Duration::from_secs(3), || {
        let mut h = Http::connect(balancer.port).ok()?;
        match h.get("/") {
            Ok(r) if r.status == 200 => Some(h),
            _ => None,
        }
    });
    let mut c3 = served.expect("no new connection served after one of the two closed");
    assert_eq!(
        c2.get("/").status,
        200,
        "the remaining connection still works"
    );
    assert_eq!(c3.get("/").expect("keep-alive on the new one").status, 200);
    // Two open again: the limit still holds.
    expect_refused_connection(balancer.port);
}

// ---------------------------------------------------------------------------
// 9. What is retried: connect refused always, a sent POST never
// ---------------------------------------------------------------------------

#[test]
fn post_is_retried_after_connect_refused() {
    let backend = spawn_backend();
    // Up at the first (and, with a 60 s interval, only) health check, then
    // gone: connections to it are refused but it stays in rotation until
    // passive health takes it out after `max_fails` failures.
    let gone = FakeBackend::start(HEALTH_OK);
    let gone_port = gone.port;
    let config = Config::new(&[gone_port, backend.port])
        .with("workers", "1")
        .with("retries", "1")
        .with("max_fails", "3")
        .with("breaker_threshold", "0")
        .with("health_check_interval", "60000");
    let balancer = spawn_balancer(&config, &[]);
    assert!(
        poll_until(Duration::from_secs(3), || {
            (gone.accepted.load(Ordering::SeqCst) >= 1).then_some(())
        })
        .is_some(),
        "the first health check never reached the backend"
    );
    drop(gone);
    assert!(connection_refused(gone_port));
    assert!(
        !log_lines(&balancer)
            .iter()
            .any(|l| is_down_line(l, gone_port)),
        "backend marked down before the test: {}",
        log_lines(&balancer).join("\n")
    );

    let mut c = Http::connect(balancer.port).expect("connect");
    for i in 0..4 {
        let body = format!("post body {i}");
        let r = c
            .request("POST", "/echo", body.as_bytes())
            .unwrap_or_else(|e| panic!("POST {i}: {e}"));
        assert_eq!(r.status, 200, "POST {i}: {r:?}");
        assert_eq!(r.body, body.as_bytes(), "POST {i}");
        assert_eq!(r.backend_port(), Some(backend.port));
    }
    // Proof the POSTs were tried on the refusing backend first: passive
    // health counted three failed requests, yet every POST succeeded.
    expect_down(&balancer, gone_port, Duration::from_secs(2));
}

#[test]
fn post_is_not_retried_after_it_was_sent_but_get_is() {
    let backend = spawn_backend();
    let fake = Script::start(Behaviour::CloseUnlessHealth);
    let config = Config::new(&[fake.port, backend.port])
        .with("workers", "1")
        .with("retries", "1")
        .with("retry_budget", "1.0")
        .with("max_fails", "1000")
        .with("breaker_threshold", "0")
        .with("health_check_interval", "60000");
    let balancer = spawn_balancer(&config, &[]);

    // Round robin alternates: one POST reaches the fake, which reads it and
    // closes. It may have taken effect, so it is answered 502, not retried.
    let mut statuses = Vec::new();
    for i in 0..2 {
        let body = format!("payment {i}");
        let r = Http::connect(balancer.port)
            .and_then(|mut h| h.request("POST", "/echo", body.as_bytes()))
            .unwrap_or_else(|e| panic!("POST {i}: {e}"));
        match r.status {
            200 => assert_eq!(r.body, body.as_bytes()),
            502 => r.assert_complete(),
            _ => panic!("POST {i}: {r:?}"),
        }
        statuses.push(r.status);
    }
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        vec![200, 502],
        "one POST must hit the failing backend and get a 502"
    );
    assert_eq!(fake.count_method("POST"), 1, "{:?}", fake.requests());

    // GETs that fail the same way are retried on the other backend.
    let mut c = Http::connect(balancer.port).expect("connect");
    for i in 0..6 {
        let r = c.get("/").unwrap_or_else(|e| panic!("GET {i}: {e}"));
        assert_eq!(r.status, 200, "GET {i}: {r:?}");
        assert_eq!(r.backend_port(), Some(backend.port));
    }
    assert!(
        fake.count_method("GET") >= 3,
        "GETs were not tried on the failing backend: {:?}",
        fake.requests()
    );
}

#[test]
fn retry_budget_bounds_retries() {
    let backend = spawn_backend();
    let fake = Script::start(Behaviour::CloseUnlessHealth);
    // No per-request share: only the starting allowance (5 retries) and the
    // floor of 5 retries per second since the worker started.
    let config = Config::new(&[fake.port, backend.port])
        .with("workers", "1")
        .with("retries", "1")
        .with("retry_budget", "0.0")
        .with("retry_backoff", "0")
        .with("max_fails", "1000")
        .with("breaker_threshold", "0")
        .with("health_check_interval", "60000");
    let t0 = Instant::now();
    let balancer = spawn_balancer(&config, &[]);
    let mut c: Option<Http> = None;
    let mut n502 = 0;
    let mut n200 = 0;
    for i in 0..60 {
        if c.is_none() {
            c = Some(Http::connect(balancer.port).expect("connect"));
        }
        let r = c
            .as_mut()
            .unwrap()
            .get("/")
            .unwrap_or_else(|e| panic!("GET {i}: {e}"));
        match r.status {
            200 => n200 += 1,
            502 => n502 += 1,
            _ => panic!("GET {i}: {r:?}"),
        }
        if r.header("Connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            c = None;
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let tried_fake = fake.count_method("GET");
    assert!(
        n502 <= tried_fake,
        "{n502} 502s but only {tried_fake} requests reached the failing backend"
    );
    let retried = tried_fake - n502;
    let allowance = 5.0 + 5.0 * elapsed + 1.0;
    assert!(
        retried >= 1,
        "no GET was retried at all ({n200} ok, {n502} 502)"
    );
    assert!(
        (retried as f64) <= allowance,
        "{retried} retries in {elapsed:.2} s with retry_budget = 0 (allowance {allowance:.1}); {n502} 502s, {tried_fake} requests hit the failing backend"
    );
    assert!(n502 > 0, "the budget never ran out");
}

// ---------------------------------------------------------------------------
// 10. Startup with every backend down
// ---------------------------------------------------------------------------

#[test]
fn startup_with_all_backends_down_then_one_comes_up() {
    let (a, b) = (closed_port(), closed_port());
    let config = Config::new(&[a, b])
        .with("workers", "1")
        .with("health_check_interval", "200");
    let balancer = spawn_balancer(&config, &[]);
    expect_down(&balancer, a, Duration::from_secs(3));
    expect_down(&balancer, b, Duration::from_secs(3));
    let t = Instant::now();
    let r = get_once(balancer.port, "/").expect("request with no backend");
    assert_eq!(r.status, 502, "{r:?}");
    r.assert_complete();
    assert!(t.elapsed() < Duration::from_millis(300));

    let _up = spawn_backend_on(a);
    let ready = Instant::now();
    let took = poll_until(Duration::from_secs(5), || {
        get_once(balancer.port, "/")
            .ok()
            .filter(|r| r.status == 200)
            .map(|r| (ready.elapsed(), r))
    });
    let (took, r) = took.unwrap_or_else(|| {
        panic!(
            "no 200 within 5 s of backend {a} starting; log:\n{}",
            log_lines(&balancer).join("\n")
        )
    });
    assert_eq!(r.backend_port(), Some(a), "{r:?}");
    assert!(
        took < Duration::from_secs(1),
        "traffic flowed {took:?} after the backend started (health_check_interval 200 ms)"
    );
    // And it keeps flowing.
    for _ in 0..5 {
        let r = get_once(balancer.port, "/").expect("request");
        assert_eq!(r.status, 200, "{r:?}");
    }
}
