//! Hostile clients and hostile backends, over raw sockets against the real
//! binary: request smuggling attempts, malformed framing, oversized heads,
//! backends that answer ambiguously, slow clients, many idle connections
//! and descriptor exhaustion. Every test states the exact status expected
//! and whether the connection must be closed after it.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Tests that measure latency, CPU time or memory run one at a time so they
/// do not disturb each other on a small machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn preview(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(&raw[..raw.len().min(160)]).into_owned();
    if raw.len() > 160 {
        format!("{s:?}... ({} bytes)", raw.len())
    } else {
        format!("{s:?}")
    }
}

/// Sends `raw` on a fresh connection and asserts the balancer answers
/// `status` as a complete response with `Connection: close`, then closes
/// the connection with nothing after the response.
#[track_caller]
fn expect_reject(port: u16, raw: &[u8], status: u16) {
    let mut c = Conn::connect(port);
    c.send(raw);
    let resp = c.read_response();
    assert_eq!(
        resp.status,
        status,
        "request {} got {:?}",
        preview(raw),
        String::from_utf8_lossy(&resp.raw_head)
    );
    resp.assert_complete_with_length();
    assert_eq!(
        resp.header("Connection"),
        Some("close"),
        "{status} for {} must announce the close",
        preview(raw)
    );
    match c.wait_closed(Duration::from_secs(3)) {
        CloseState::Closed(rest) => assert!(
            rest.is_empty(),
            "bytes after the {status} for {}: {}",
            preview(raw),
            preview(&rest)
        ),
        CloseState::Open(rest) => panic!(
            "connection left open after {status} for {} (then {})",
            preview(raw),
            preview(&rest)
        ),
    }
}

/// A balancer in front of one real backend. Breakers off and a high
/// `max_fails`, so a test's deliberate failures never take the backend out.
fn setup(extra: &[(&str, &str)]) -> (Backend, Balancer) {
    let backend = spawn_backend();
    let mut config = Config::for_backends(std::slice::from_ref(&backend))
        .with("max_fails", "1000")
        .with("breaker_threshold", "0");
    for (k, v) in extra {
        config.set(k, v);
    }
    let balancer = spawn_balancer(&config, &[]);
    (backend, balancer)
}

/// A balancer in front of a [`Recorder`], whose health checks always pass.
fn setup_recorder(reply: Reply, extra: &[(&str, &str)]) -> (Recorder, Balancer) {
    let rec = Recorder::start(reply);
    let mut config = Config::new(&[rec.port])
        .with("workers", "1")
        .with("max_fails", "1000")
        .with("breaker_threshold", "0")
        .with("retries", "0");
    for (k, v) in extra {
        config.set(k, v);
    }
    let balancer = spawn_balancer(&config, &[]);
    (rec, balancer)
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let line = text
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad line {line:?}"))
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// utime + stime of a process, in clock ticks (all threads).
fn cpu_ticks(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after "pid (comm) " start at field 3 (state).
    let rest = &text[text.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f[11].parse().unwrap();
    let stime: u64 = f[12].parse().unwrap();
    utime + stime
}

fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// The soft open-file limit of this process.
fn nofile_soft_limit() -> u64 {
    let text = std::fs::read_to_string("/proc/self/limits").expect("read limits");
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    line.split_whitespace()
        .nth(3)
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// A GET that never panics: the status, or None on any failure.
fn try_get(port: u16, path: &str, timeout: Duration) -> Option<u16> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    while find(&got, b"\r\n").is_none() {
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&tmp[..n]),
        }
    }
    let line = String::from_utf8_lossy(&got);
    line.split(' ').nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------
// A recording fake backend
// ---------------------------------------------------------------------------

/// One request as the fake backend received it.
#[derive(Debug, Clone)]
struct Recorded {
    /// Which backend connection it came on (0, 1, ... in accept order).
    conn: usize,
    path: String,
    head: Vec<u8>,
    /// The body bytes exactly as received (chunked bodies undecoded).
    body: Vec<u8>,
}

impl Recorded {
    fn head_str(&self) -> String {
        String::from_utf8_lossy(&self.head).into_owned()
    }
}

/// What the fake backend does after reading a request.
enum Step {
    Send(Vec<u8>),
    Pause(Duration),
    Close,
}

/// Maps a request path to what the fake backend does.
type Reply = Arc<dyn Fn(&str) -> Vec<Step> + Send + Sync>;

const OK_EMPTY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
const OK_GOOD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood";

/// A keep-alive HTTP/1.1 backend in threads that records every request
/// (head and raw body) and answers as `reply` says. `/health` always gets
/// an empty 200, so the balancer's checks pass whatever a test does.
struct Recorder {
    port: u16,
    reqs: Arc<Mutex<Vec<Recorded>>>,
    _server: ThreadedServer,
}

impl Recorder {
    fn start(reply: Reply) -> Recorder {
        let reqs = Arc::new(Mutex::new(Vec::new()));
        let reqs2 = reqs.clone();
        let server =
            ThreadedServer::start(move |s, id, stop| serve_recorded(s, id, &reqs2, &reply, stop));
        Recorder {
            port: server.port,
            reqs,
            _server: server,
        }
    }

    /// Recorded requests, health checks left out.
    fn requests(&self) -> Vec<Recorded> {
        self.reqs
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path != "/health")
            .cloned()
            .collect()
    }

    fn wait_requests(&self, n: usize) -> Vec<Recorded> {
        poll_until(Duration::from_secs(5), || {
            let r = self.requests();
            (r.len() >= n).then_some(r)
        })
        .unwrap_or_else(|| panic!("backend saw {:?}, expected {n} requests", self.requests()))
    }
}

/// A blocking reader with its own buffer.
struct Reader {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Reader {
    fn fill(&mut self) -> Option<()> {
        let mut tmp = [0u8; 16384];
        match self.s.read(&mut tmp) {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                Some(())
            }
        }
    }

    fn until(&mut self, pat: &[u8]) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf, pat) {
                return Some(self.buf.drain(..i + pat.len()).collect());
            }
            self.fill()?;
        }
    }

    fn exact(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            self.fill()?;
        }
        Some(self.buf.drain(..n).collect())
    }

    /// A whole chunked body, raw.
    fn chunked_raw(&mut self) -> Option<Vec<u8>> {
        let mut raw = Vec::new();
        loop {
            let line = self.until(b"\r\n")?;
            raw.extend_from_slice(&line);
            let text = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
            let hex = text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(hex, 16).ok()?;
            if size == 0 {
                loop {
                    let t = self.until(b"\r\n")?;
                    raw.extend_from_slice(&t);
                    if t == b"\r\n" {
                        return Some(raw);
                    }
                }
            }
            raw.extend_from_slice(&self.exact(size + 2)?);
        }
    }
}

fn header_value(head: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(head);
    text.split("\r\n").skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

fn serve_recorded(
    s: TcpStream,
    id: usize,
    reqs: &Mutex<Vec<Recorded>>,
    reply: &Reply,
    stop: &AtomicBool,
) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut w = s.try_clone().unwrap();
    let mut r = Reader { s, buf: Vec::new() };
    while !stop.load(Ordering::SeqCst) {
        let Some(head) = r.until(b"\r\n\r\n") else {
            return;
        };
        let line = String::from_utf8_lossy(&head[..find(&head, b"\r\n").unwrap_or(0)]).into_owned();
        let path = line.split(' ').nth(1).unwrap_or("").to_string();
        let chunked = header_value(&head, "transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let body = if chunked {
            r.chunked_raw()
        } else if let Some(cl) = header_value(&head, "content-length") {
            r.exact(cl.parse().unwrap_or(0))
        } else {
            Some(Vec::new())
        };
        let Some(body) = body else {
            return;
        };
        reqs.lock().unwrap().push(Recorded {
            conn: id,
            path: path.clone(),
            head,
            body,
        });
        let steps = if path == "/health" {
            vec![Step::Send(OK_EMPTY.to_vec())]
        } else {
            reply(&path)
        };
        for step in steps {
            match step {
                Step::Send(b) => {
                    if w.write_all(&b).is_err() {
                        return;
                    }
                }
                Step::Pause(d) => thread::sleep(d),
                Step::Close => {
                    let _ = w.shutdown(Shutdown::Both);
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Client-side smuggling and malformed requests
// ---------------------------------------------------------------------------

#[test]
fn ambiguous_request_framing_is_rejected_and_closed() {
    let (_b, bal) = setup(&[]);
    let p = bal.port;
    let post = |extra: &str| format!("POST /echo HTTP/1.1\r\nHost: a\r\n{extra}\r\n");
    // CL + TE.
    expect_reject(
        p,
        post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n").as_bytes(),
        400,
    );
    expect_reject(
        p,
        post("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n").as_bytes(),
        400,
    );
    // Differing Content-Lengths, as two fields and as a list.
    expect_reject(
        p,
        post("Content-Length: 5\r\nContent-Length: 6\r\n").as_bytes(),
        400,
    );
    expect_reject(p, post("Content-Length: 5, 6\r\n").as_bytes(), 400);
    expect_reject(p, post("Content-Length: +5\r\n").as_bytes(), 400);
    // Transfer codings other than a single final chunked.
    for te in [
        "chunked, identity",
        "xchunked",
        "identity",
        "chunked, chunked",
        "chunked\r\nTransfer-Encoding: chunked",
        "",
    ] {
        expect_reject(
            p,
            post(&format!("Transfer-Encoding: {te}\r\n")).as_bytes(),
            400,
        );
    }
    expect_reject(
        p,
        post("Transfer-Encoding: gzip, chunked\r\n").as_bytes(),
        501,
    );
    // Transfer-Encoding in HTTP/1.0.
    expect_reject(
        p,
        b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        400,
    );
    // The balancer still serves afterwards.
    assert_eq!(http_get(p, "/").status, 200);
}

#[test]
fn invalid_chunked_bodies_are_rejected_and_closed() {
    let (_b, bal) = setup(&[]);
    let head = "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    for body in [
        &b"fffffffffffffffff\r\nhello\r\n0\r\n\r\n"[..], // 17 hex digits: overflow
        b"10000000000000000\r\nhello\r\n0\r\n\r\n",      // 2^64
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"+5\r\nhello\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"5hello\r\n0\r\n\r\n",                    // no CRLF after the size
        b"5\nhello\r\n0\r\n\r\n",                  // bare LF after the size
        b"5\rhello\r\n0\r\n\r\n",                  // bare CR after the size
        b"5;ext\nx\r\nhello\r\n0\r\n\r\n",         // LF inside an extension
        b"\r\nhello\r\n0\r\n\r\n",                 // empty size line
        b" 5\r\nhello\r\n0\r\n\r\n",               // leading space
        b"5\r\nhelloXX\r\n0\r\n\r\n",              // data longer than its size
        b"5\r\nhello\n0\r\n\r\n",                  // bare LF after data
        b"5\r\nhello\r\n0\r\nBad Name: x\r\n\r\n", // malformed trailer
        b"5\r\nhello\r\n0\r\nX: a\nb\r\n\r\n",     // bare LF in trailer
    ] {
        let mut raw = head.as_bytes().to_vec();
        raw.extend_from_slice(body);
        expect_reject(bal.port, &raw, 400);
    }
    // A chunk-size line over 4 KiB (extensions) is refused, not buffered.
    let mut raw = head.as_bytes().to_vec();
    raw.extend_from_slice(b"5;");
    raw.extend(std::iter::repeat_n(b'a', 5000));
    raw.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
    expect_reject(bal.port, &raw, 400);
    assert_eq!(http_get(bal.port, "/").status, 200);
}

#[test]
fn malformed_heads_are_rejected_and_closed() {
    let (_b, bal) = setup(&[]);
    let p = bal.port;
    for (raw, status) in [
        (&b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"[..], 400), // whitespace before colon
        (b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400), // obs-fold
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n", 400), // NUL in a value
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n", 400), // bare CR in a value
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x7fc\r\n\r\n", 400), // DEL in a value
        (b"GET / HTTP/1.1\nHost: a\n\n", 400),                    // bare LF everywhere
        (b"GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n", 400),      // one bare LF
        (b"GET / HTTP/1.1\r\nHost: a\r\n\n", 400),                // bare LF ending the head
        (b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),              // invalid method token
        (b"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400), // no Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400), // two Hosts
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"GET / HTTP/3.0\r\nHost: a\r\n\r\n", 505),
        (b"GET / HTTX/1.1\r\nHost: a\r\n\r\n", 400),
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 501),
    ] {
        expect_reject(p, raw, status);
    }
    assert_eq!(http_get(p, "/").status, 200);
}

#[test]
fn oversized_heads_are_rejected_and_closed() {
    let (_b, bal) = setup(&[]);
    // A request line over 8 KiB: 414.
    let mut long = b"GET /".to_vec();
    long.extend(std::iter::repeat_n(b'a', 9000));
    long.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
    expect_reject(bal.port, &long, 414);
    // 101 header fields: 431.
    let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..101 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    expect_reject(bal.port, &many, 431);
    // 100 fields in all is still fine.
    let mut hundred = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..98 {
        hundred.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    hundred.extend_from_slice(b"Connection: close\r\n\r\n");
    let mut c = bal.connect();
    c.send(&hundred);
    assert_eq!(c.read_response().status, 200);
    // A head over max_header_bytes (64 KiB): 431.
    let mut big = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for _ in 0..9 {
        big.extend_from_slice(b"X-Big: ");
        big.extend(std::iter::repeat_n(b'b', 8000));
        big.extend_from_slice(b"\r\n");
    }
    big.extend_from_slice(b"\r\n");
    expect_reject(bal.port, &big, 431);
    assert_eq!(http_get(bal.port, "/").status, 200);
}

/// An absolute-form target goes out in origin form with Host from its
/// authority (tests/rfc_defects.rs has the details).
#[test]
fn absolute_and_asterisk_forms_are_forwarded() {
    let reply: Reply = Arc::new(|_| vec![Step::Send(OK_GOOD.to_vec())]);
    let (rec, bal) = setup_recorder(reply, &[]);
    let mut c = bal.connect();
    c.send(b"GET http://x/headers HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_response();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"good"[..]), "{r:?}");
    c.send(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_response();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"good"[..]), "{r:?}");
    let reqs = rec.wait_requests(2);
    assert!(
        reqs[0]
            .head_str()
            .starts_with("GET /headers HTTP/1.1\r\nHost: x\r\n"),
        "{}",
        reqs[0].head_str()
    );
    assert!(
        reqs[1].head_str().starts_with("OPTIONS * HTTP/1.1\r\n"),
        "{}",
        reqs[1].head_str()
    );
}

#[test]
fn chunked_trailers_are_filtered_and_the_body_is_canonical() {
    let reply: Reply = Arc::new(|_| vec![Step::Send(OK_EMPTY.to_vec())]);
    let (rec, bal) = setup_recorder(reply, &[]);
    let mut c = bal.connect();
    c.send(
        b"POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;name=value\r\nhello\r\nA ; x\r\n0123456789\r\n00\r\n\
          Content-Length: 99\r\nTransfer-Encoding: chunked\r\nHost: evil\r\n\
          Connection: close\r\nX-Forwarded-For: 6.6.6.6\r\nX-Trailer: kept\r\n\r\n",
    );
    let r = c.read_response();
    assert_eq!(r.status, 200, "{r:?}");
    let reqs = rec.wait_requests(1);
    let got = &reqs[0];
    assert_eq!(got.path, "/t");
    assert_eq!(
        header_value(&got.head, "transfer-encoding").as_deref(),
        Some("chunked")
    );
    assert!(header_value(&got.head, "content-length").is_none());
    assert_eq!(
        String::from_utf8_lossy(&got.body),
        "5\r\nhello\r\na\r\n0123456789\r\n0\r\nX-Trailer: kept\r\n\r\n",
        "the chunked body the backend received"
    );
    // The connection goes on.
    let r = c.get("/again");
    assert_eq!(r.status, 200);
}

#[test]
fn underscore_headers_are_dropped_and_xff_is_appended() {
    // Appended only from a trusted peer (tests/forwarded.rs has the rest).
    let (_b, bal) = setup(&[("trusted_proxies", "[\"127.0.0.0/8\"]")]);
    let r = one_request(
        bal.port,
        "GET",
        "/headers",
        &[
            ("X_Under", "1"),
            ("X-Keep", "2"),
            ("x_forwarded_for", "9.9.9.9"),
            ("X-Forwarded-For", "10.1.2.3"),
        ],
        b"",
    );
    assert_eq!(r.status, 200);
    let seen = r.body_str();
    assert!(!seen.contains("X_Under"), "{seen}");
    assert!(!seen.contains("9.9.9.9"), "{seen}");
    assert!(seen.contains("\r\nX-Keep: 2\r\n"), "{seen}");
    assert!(
        seen.contains("\r\nX-Forwarded-For: 10.1.2.3, 127.0.0.1\r\n"),
        "{seen}"
    );
    assert_eq!(seen.matches("X-Forwarded-For").count(), 1, "{seen}");
    // Without a client value, only the client address.
    let r = http_get(bal.port, "/headers");
    assert!(
        r.body_str().contains("\r\nX-Forwarded-For: 127.0.0.1\r\n"),
        "{}",
        r.body_str()
    );
}

#[test]
fn connection_header_cannot_strip_host() {
    let reply: Reply = Arc::new(|_| vec![Step::Send(OK_GOOD.to_vec())]);
    let (rec, bal) = setup_recorder(reply, &[]);
    let mut c = bal.connect();
    c.send(b"GET /h HTTP/1.1\r\nHost: a\r\nConnection: host\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    let reqs = rec.wait_requests(1);
    assert_eq!(
        header_value(&reqs[0].head, "host").as_deref(),
        Some("a"),
        "{}",
        reqs[0].head_str()
    );
}

#[test]
fn pipelined_body_is_never_read_as_a_request() {
    let reply: Reply = Arc::new(|path| {
        let body = format!("seen {path}");
        vec![Step::Send(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )]
    });
    let (rec, bal) = setup_recorder(reply, &[]);
    let smuggled = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    // The whole exchange in one write, then again split at every few bytes.
    for split in [usize::MAX, 7, 1] {
        let mut raw = format!(
            "POST /first HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            smuggled.len()
        )
        .into_bytes();
        raw.extend_from_slice(smuggled);
        raw.extend_from_slice(b"GET /second HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let before = rec.requests().len();
        let mut c = bal.connect();
        if split == usize::MAX {
            c.send(&raw);
        } else {
            for part in raw.chunks(split.max(1) * 11) {
                c.send(part);
                thread::sleep(Duration::from_millis(1));
            }
        }
        let r1 = c.read_response();
        assert_eq!((r1.status, r1.body_str().as_str()), (200, "seen /first"));
        let r2 = c.read_response();
        assert_eq!((r2.status, r2.body_str().as_str()), (200, "seen /second"));
        match c.wait_closed(Duration::from_secs(3)) {
            CloseState::Closed(rest) => {
                assert!(rest.is_empty(), "a third response: {}", preview(&rest))
            }
            CloseState::Open(rest) => panic!("left open after close; got {}", preview(&rest)),
        }
        let reqs = rec.wait_requests(before + 2);
        let new = &reqs[before..];
        assert_eq!(new.len(), 2, "{new:?}");
        assert_eq!(new[0].path, "/first");
        assert_eq!(new[0].body, smuggled, "the first body, as a body");
        assert_eq!(new[1].path, "/second");
    }
    // A 10-byte body that starts like a request line.
    let mut c = bal.connect();
    c.send(b"POST /ten HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nGET / HTTPGET /next HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(c.read_response().body_str(), "seen /ten");
    assert_eq!(c.read_response().body_str(), "seen /next");
    assert!(rec.requests().iter().all(|r| r.path != "/smuggled"));
}

// ---------------------------------------------------------------------------
// Hostile backends
// ---------------------------------------------------------------------------

/// Sends `bad_path` then `/good` on one client connection (or a new one if
/// the balancer closed it) and checks the backend connection that carried
/// the bad response was never used again.
fn check_bad_backend(rec: &Recorder, bal: &Balancer, bad_path: &str, expect: u16) {
    let mut c = bal.connect();
    let r = c.get(bad_path);
    assert_eq!(r.status, expect, "{bad_path}: {r:?}");
    if expect >= 500 {
        r.assert_complete_with_length();
    }
    // Let any late bytes of the bad response arrive.
    thread::sleep(Duration::from_millis(150));
    let r = if r.header("Connection") == Some("close") {
        assert!(matches!(
            c.wait_closed(Duration::from_secs(3)),
            CloseState::Closed(_)
        ));
        http_get(bal.port, "/good")
    } else {
        c.get("/good")
    };
    assert_eq!(
        (r.status, r.body_str().as_str()),
        (200, "good"),
        "after {bad_path}: {r:?}"
    );
    let reqs = rec.requests();
    let bad = reqs
        .iter()
        .rposition(|q| q.path == bad_path)
        .expect("bad request recorded");
    let bad_conn = reqs[bad].conn;
    let reused: Vec<&Recorded> = reqs[bad + 1..]
        .iter()
        .filter(|q| q.conn == bad_conn)
        .collect();
    assert!(
        reused.is_empty(),
        "backend connection {bad_conn} reused after {bad_path}: {reused:?}"
    );
}

fn hostile_backend() -> (Recorder, Balancer) {
    let reply: Reply = Arc::new(|path| match path {
        "/cl-te" => vec![Step::Send(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
        )],
        "/te-cl" => vec![Step::Send(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n0\r\n\r\n"
                .to_vec(),
        )],
        "/two-cl" => vec![Step::Send(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 4\r\n\r\nokay".to_vec(),
        )],
        "/te-gzip" => vec![Step::Send(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxxxx".to_vec(),
        )],
        "/bare-lf" => vec![Step::Send(
            b"HTTP/1.1 200 OK\nContent-Length: 2\r\n\r\nok".to_vec(),
        )],
        "/204-cl" => vec![Step::Send(
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
        )],
        "/204-te" => vec![Step::Send(
            b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
        )],
        "/bad-chunk" => vec![Step::Send(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n"
                .to_vec(),
        )],
        "/garbage-same-write" => vec![Step::Send(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokGARBAGE".to_vec(),
        )],
        "/204-body-same-write" => {
            vec![Step::Send(b"HTTP/1.1 204 No Content\r\n\r\nhello".to_vec())]
        }
        "/garbage-late" => vec![
            Step::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()),
            Step::Pause(Duration::from_millis(50)),
            Step::Send(b"GARBAGE".to_vec()),
        ],
        "/chunked-garbage-late" => vec![
            Step::Send(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                    .to_vec(),
            ),
            Step::Pause(Duration::from_millis(50)),
            Step::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil".to_vec()),
        ],
        "/huge-head" => {
            let mut r = b"HTTP/1.1 200 OK\r\n".to_vec();
            for _ in 0..10 {
                r.extend_from_slice(b"X-Big: ");
                r.extend(std::iter::repeat_n(b'b', 8000));
                r.extend_from_slice(b"\r\n");
            }
            r.extend_from_slice(b"Content-Length: 0\r\n\r\n");
            vec![Step::Send(r)]
        }
        "/close" => vec![Step::Close],
        _ => vec![Step::Send(OK_GOOD.to_vec())],
    });
    setup_recorder(reply, &[])
}

#[test]
fn ambiguous_backend_responses_give_502_and_are_not_reused() {
    let (rec, bal) = hostile_backend();
    for path in [
        "/cl-te", "/te-cl", "/two-cl", "/te-gzip", "/bare-lf", "/204-cl", "/204-te", "/close",
    ] {
        check_bad_backend(&rec, &bal, path, 502);
    }
}

#[test]
fn invalid_chunked_response_gives_502_or_a_truncated_close() {
    let (rec, bal) = hostile_backend();
    let mut c = bal.connect();
    c.send(b"GET /bad-chunk HTTP/1.1\r\nHost: a\r\n\r\n");
    // A complete 502 may leave the connection open (the request had no body,
    // so the client connection is still in sync); anything else must close.
    let got = match c.wait_closed(Duration::from_secs(3)) {
        CloseState::Closed(got) => got,
        CloseState::Open(got) if got.starts_with(b"HTTP/1.1 502 ") => got,
        CloseState::Open(got) => panic!("left open: {}", preview(&got)),
    };
    assert!(
        !got.windows(7).any(|w| w == b"helloXX"),
        "invalid chunk relayed: {}",
        preview(&got)
    );
    // Nothing relayed yet: a complete 502. Head already relayed: a close
    // that truncates the chunked body. Never a silent close.
    if got.starts_with(b"HTTP/1.1 502 ") {
        let (_, _, _, headers) = parse_head(&got[..find(&got, b"\r\n\r\n").unwrap() + 4]);
        assert!(
            headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        );
    } else {
        assert!(
            got.starts_with(b"HTTP/1.1 200 OK\r\n"),
            "expected a 502 or a truncated 200, got {}",
            preview(&got)
        );
    }
    let r = http_get(bal.port, "/good");
    assert_eq!(r.body_str(), "good");
    let reqs = rec.requests();
    let bad_conn = reqs.iter().find(|q| q.path == "/bad-chunk").unwrap().conn;
    assert!(
        reqs.iter()
            .all(|q| q.path == "/bad-chunk" || q.conn != bad_conn)
    );
}

/// The body relay reads on while a backend has more ready, but never waits
/// for more: a `Content-Length` response whose first 32 KiB (head
/// included: exactly the backend read buffer, so the read that took them
/// filled it) are followed by a pause has those bytes at the client during
/// the pause, and the rest after it.
#[test]
fn a_length_body_that_pauses_is_relayed_as_it_arrives() {
    const REST: usize = 25_000;
    let head = |first: usize| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            first + REST
        )
        .into_bytes()
    };
    // The backend read buffer (`BACKEND_BUF`) is 32 KiB.
    let first_len = 32 * 1024 - head(30_000).len();
    let reply: Reply = Arc::new(move |path| match path {
        "/pause" => {
            let mut first = head(first_len);
            first.extend(std::iter::repeat_n(b'a', first_len));
            vec![
                Step::Send(first),
                Step::Pause(Duration::from_millis(1500)),
                Step::Send(vec![b'b'; REST]),
            ]
        }
        _ => vec![Step::Send(OK_GOOD.to_vec())],
    });
    let (_rec, bal) = setup_recorder(reply, &[("read_timeout", "5000")]);
    let mut c = bal.connect();
    let start = Instant::now();
    c.send(b"GET /pause HTTP/1.1\r\nHost: a\r\n\r\n");
    let head = c.read_head();
    assert!(head.starts_with(b"HTTP/1.1 200 "), "{}", preview(&head));
    let first = c.read_exact_n(first_len);
    let t = start.elapsed();
    assert!(
        t < Duration::from_millis(1000),
        "the first {first_len} bytes took {t:?}: held back until the pause ended"
    );
    assert!(first.iter().all(|&b| b == b'a'));
    let rest = c.read_exact_n(REST);
    assert!(rest.iter().all(|&b| b == b'b'));
    assert!(start.elapsed() >= Duration::from_millis(1400));
    assert_eq!(c.get("/good").body_str(), "good");
}

#[test]
fn trailing_garbage_in_the_same_read_does_not_poison_the_pool() {
    let (rec, bal) = hostile_backend();
    check_bad_backend(&rec, &bal, "/garbage-same-write", 200);
    check_bad_backend(&rec, &bal, "/204-body-same-write", 204);
}

#[test]
fn trailing_garbage_arriving_late_does_not_poison_the_pool() {
    let (rec, bal) = hostile_backend();
    check_bad_backend(&rec, &bal, "/garbage-late", 200);
}

#[test]
fn unsolicited_late_response_is_never_relayed() {
    let (rec, bal) = hostile_backend();
    check_bad_backend(&rec, &bal, "/chunked-garbage-late", 200);
}

// ---------------------------------------------------------------------------
// Slow clients
// ---------------------------------------------------------------------------

#[test]
fn slowloris_head_gets_408_while_others_are_served() {
    let _g = serial();
    let (_b, bal) = setup(&[("workers", "1"), ("client_header_timeout", "1000")]);
    let mut fast = bal.connect();
    assert_eq!(fast.get("/").status, 200);

    let slow = TcpStream::connect(("127.0.0.1", bal.port)).unwrap();
    slow.set_nodelay(true).unwrap();
    let mut writer = slow.try_clone().unwrap();
    let mut reader = slow;
    reader
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let done2 = done.clone();
    let start = Instant::now();
    let trickle = thread::spawn(move || {
        let mut bytes = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ".to_vec();
        bytes.extend(std::iter::repeat_n(b'z', 40));
        for b in bytes {
            if done2.load(Ordering::SeqCst) || writer.write_all(&[b]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    });
    let read = thread::spawn(move || {
        let mut got = Vec::new();
        let mut tmp = [0u8; 1024];
        loop {
            match reader.read(&mut tmp) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&tmp[..n]),
            }
        }
        (got, start.elapsed())
    });

    // Meanwhile, on the same (only) worker: 50 quick requests.
    thread::sleep(Duration::from_millis(150));
    let mut worst = Duration::ZERO;
    for _ in 0..50 {
        let t = Instant::now();
        let r = fast.get("/");
        let e = t.elapsed();
        assert_eq!(r.status, 200);
        worst = worst.max(e);
        thread::sleep(Duration::from_millis(10));
    }
    let (got, elapsed) = read.join().unwrap();
    done.store(true, Ordering::SeqCst);
    trickle.join().unwrap();
    println!("slowloris: closed after {elapsed:?}; worst concurrent request {worst:?}");
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 408 "),
        "slowloris got {}",
        preview(&got)
    );
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed <= Duration::from_millis(1700),
        "slowloris connection ended after {elapsed:?}, expected ~1 s (client_header_timeout)"
    );
    assert!(
        worst < Duration::from_millis(50),
        "a request took {worst:?} during slowloris"
    );
}

#[test]
fn slow_body_upload_gets_408_and_close() {
    let (_b, bal) = setup(&[("client_body_timeout", "500")]);
    let bodies: [&[u8]; 2] = [
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789",
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    ];
    for raw in bodies {
        let mut c = bal.connect();
        let start = Instant::now();
        c.send(raw);
        let closed = c.wait_closed(Duration::from_secs(3));
        let elapsed = start.elapsed();
        let got = match closed {
            CloseState::Closed(got) => got,
            CloseState::Open(got) => panic!(
                "slow upload {} still open after {elapsed:?}; got {}",
                preview(raw),
                preview(&got)
            ),
        };
        assert!(
            got.is_empty() || got.starts_with(b"HTTP/1.1 408 "),
            "slow upload got {}",
            preview(&got)
        );
        assert!(
            elapsed >= Duration::from_millis(400) && elapsed < Duration::from_millis(1500),
            "slow upload ended after {elapsed:?}, expected ~500 ms"
        );
    }
    assert_eq!(http_get(bal.port, "/").status, 200);
}

// ---------------------------------------------------------------------------
// Resource exhaustion
// ---------------------------------------------------------------------------

#[test]
fn idle_keepalive_connections_cost_little_memory() {
    let _g = serial();
    let (_b, bal) = setup(&[
        ("workers", "1"),
        ("keepalive_timeout", "60000"),
        ("client_header_timeout", "60000"),
    ]);
    let pid = bal.guard.pid();
    let limit = nofile_soft_limit();
    let in_use = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0) as u64;
    let n = 2000u64.min(limit.saturating_sub(in_use + 300)) as usize;
    assert!(n >= 500, "open-file limit {limit} too low for this test");

    let mut active = bal.connect();
    for _ in 0..50 {
        assert_eq!(active.get("/").status, 200);
    }
    // Warm the allocator with a first batch that is then closed.
    let warm: Vec<Conn> = (0..100)
        .map(|_| {
            let mut c = bal.connect();
            assert_eq!(c.get("/").status, 200);
            c
        })
        .collect();
    drop(warm);
    thread::sleep(Duration::from_millis(300));
    let before = proc_status_kib(pid, "VmRSS:");
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = bal.connect();
        assert_eq!(c.get("/").status, 200);
        conns.push(c);
    }
    thread::sleep(Duration::from_millis(300));
    let after = proc_status_kib(pid, "VmRSS:");
    let per_conn = (after.saturating_sub(before) * 1024) / n as u64;
    println!(
        "idle keep-alive: {n} connections, VmRSS {before} KiB -> {after} KiB, \
         {per_conn} bytes per idle connection (target 8192)"
    );
    let t = Instant::now();
    for _ in 0..20 {
        assert_eq!(active.get("/").status, 200);
    }
    assert!(t.elapsed() < Duration::from_secs(2));
    // A few of the idle ones still work.
    for c in conns.iter_mut().step_by(400) {
        assert_eq!(c.get("/").status, 200);
    }
    assert!(
        per_conn < 16 * 1024,
        "{per_conn} bytes per idle connection (limit 16 KiB, target 8 KiB)"
    );
}

#[test]
fn descriptor_exhaustion_is_survived() {
    let _g = serial();
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("skipping: prlimit (util-linux) not installed");
        return;
    }
    let (_b, bal) = setup(&[("workers", "1")]);
    let pid = bal.guard.pid();
    assert_eq!(http_get(bal.port, "/").status, 200);
    let base = fd_count(pid);
    assert!(base < 48, "balancer already uses {base} descriptors");
    let st = Command::new("prlimit")
        .args(["--nofile=64:64", "--pid", &pid.to_string()])
        .status()
        .expect("run prlimit");
    assert!(st.success(), "prlimit failed: {st}");

    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], bal.port));
    let mut held = Vec::new();
    for _ in 0..100 {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            held.push(s);
        }
    }
    // Some of them send a request, which needs a backend descriptor too.
    for s in held.iter_mut().step_by(10) {
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    }
    thread::sleep(Duration::from_millis(500));
    let fds = fd_count(pid);
    let hz = clock_ticks_per_second();
    let t0 = cpu_ticks(pid);
    thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pid) - t0;
    println!(
        "fd exhaustion: {} client connections opened, balancer holds {fds} fds (limit 64), \
         CPU {used}/{hz} ticks over 1 s",
        held.len()
    );
    let mut guard = bal.guard;
    assert!(
        guard.try_wait().is_none(),
        "balancer died under fd exhaustion; stderr:\n{}",
        bal.stderr.joined()
    );
    assert!(
        used * 5 <= hz,
        "balancer burnt {used}/{hz} CPU ticks in 1 s while out of descriptors"
    );
    drop(held);
    let ok = poll_until(Duration::from_secs(5), || {
        (try_get(bal.port, "/", Duration::from_secs(1)) == Some(200)).then_some(())
    });
    assert!(
        ok.is_some(),
        "balancer does not serve again after the descriptors were freed; stderr:\n{}",
        bal.stderr.joined()
    );
    assert!(guard.try_wait().is_none());
}
