//! Regression tests for the RFC 9110 / 9112 defects of issue 13, over real
//! loopback sockets against the real binary: transfer codings a proxy must
//! not strip, canned errors to HEAD, out-of-range backend statuses, Host and
//! absolute-form targets, request trailers, `100 Continue` to HTTP/1.0
//! clients, `h2c` upgrades, absurd chunk sizes and a doubled space in the
//! request line. Each test names the exact bytes it expects.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// ---------------------------------------------------------------------------
// A recording origin
// ---------------------------------------------------------------------------

/// Maps a request path to the bytes the origin answers with. A reply that
/// contains `Connection: close` is followed by a close.
type Reply = Arc<dyn Fn(&str) -> Vec<u8> + Send + Sync>;

const OK_EMPTY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
const OK_GOOD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood";

/// One request as the origin received it: head and raw body (chunked
/// bodies undecoded, trailers included).
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    head: String,
    body: Vec<u8>,
}

/// A keep-alive HTTP/1.1 origin in threads that records every request and
/// answers as `reply` says; `/health` always gets an empty 200.
struct Origin {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    _server: ThreadedServer,
}

impl Origin {
    fn start(reply: Reply) -> Origin {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let server = ThreadedServer::start(move |s, _, _| serve(s, &seen2, &reply));
        Origin {
            port: server.port,
            seen,
            _server: server,
        }
    }

    /// Waits until `n` requests other than health checks have arrived.
    fn wait_seen(&self, n: usize) -> Vec<Seen> {
        let get = || -> Vec<Seen> {
            let all = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            all.iter()
                .filter(|s| s.path != "/health")
                .cloned()
                .collect()
        };
        poll_until(Duration::from_secs(5), || {
            let s = get();
            (s.len() >= n).then_some(s)
        })
        .unwrap_or_else(|| panic!("origin saw {:?}, expected {n} requests", get()))
    }
}

/// Reads from `s` into `buf` until `pat` is in it; returns the bytes up to
/// and including `pat`, leaving the rest in `buf`.
fn read_until(s: &mut TcpStream, buf: &mut Vec<u8>, pat: &[u8]) -> Option<Vec<u8>> {
    let mut tmp = [0u8; 16384];
    loop {
        if let Some(i) = find(buf, pat) {
            return Some(buf.drain(..i + pat.len()).collect());
        }
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

fn head_value(head: &str, name: &str) -> Option<String> {
    head.split("\r\n").skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

fn serve(mut s: TcpStream, seen: &Mutex<Vec<Seen>>, reply: &Reply) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    loop {
        let Some(head) = read_until(&mut s, &mut buf, b"\r\n\r\n") else {
            return;
        };
        let head = String::from_utf8_lossy(&head).into_owned();
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        let mut body = Vec::new();
        if head_value(&head, "transfer-encoding").is_some() {
            // Raw chunked body: size lines, data, last chunk and trailers.
            loop {
                let Some(line) = read_until(&mut s, &mut buf, b"\r\n") else {
                    return;
                };
                body.extend_from_slice(&line);
                let text = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
                let hex = text.split(';').next().unwrap_or("").trim();
                let Ok(size) = usize::from_str_radix(hex, 16) else {
                    return;
                };
                if size == 0 {
                    break;
                }
                let Some(data) = read_exact(&mut s, &mut buf, size + 2) else {
                    return;
                };
                body.extend_from_slice(&data);
            }
            loop {
                let Some(line) = read_until(&mut s, &mut buf, b"\r\n") else {
                    return;
                };
                body.extend_from_slice(&line);
                if line == b"\r\n" {
                    break;
                }
            }
        } else if let Some(n) = head_value(&head, "content-length") {
            let Some(data) = read_exact(&mut s, &mut buf, n.parse().unwrap_or(0)) else {
                return;
            };
            body = data;
        }
        let out = if path == "/health" {
            OK_EMPTY.to_vec()
        } else {
            reply(&path)
        };
        seen.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Seen { path, head, body });
        if s.write_all(&out).is_err() {
            return;
        }
        if find(&out, b"Connection: close").is_some() {
            let _ = s.shutdown(Shutdown::Both);
            return;
        }
    }
}

fn read_exact(s: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> Option<Vec<u8>> {
    let mut tmp = [0u8; 16384];
    while buf.len() < n {
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return None,
            Ok(k) => buf.extend_from_slice(&tmp[..k]),
        }
    }
    Some(buf.drain(..n).collect())
}

/// A balancer with one worker in front of `port`: no retries, breakers off,
/// so every request reaches that backend exactly once.
fn balancer_for(port: u16, extra: &[(&str, &str)]) -> Balancer {
    let mut config = Config::new(&[port])
        .with("workers", "1")
        .with("max_fails", "1000")
        .with("breaker_threshold", "0")
        .with("retries", "0");
    for (k, v) in extra {
        config.set(k, v);
    }
    spawn_balancer(&config, &[])
}

fn origin_and_balancer(reply: Reply) -> (Origin, Balancer) {
    let origin = Origin::start(reply);
    let bal = balancer_for(origin.port, &[]);
    (origin, bal)
}

fn preview(raw: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(&raw[..raw.len().min(160)]))
}

/// Sends `raw` on a fresh connection and asserts a complete `status` answer
/// with `Connection: close`, then a close with nothing after it.
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
    assert_eq!(resp.header("Connection"), Some("close"), "{}", preview(raw));
    match c.wait_closed(Duration::from_secs(3)) {
        CloseState::Closed(rest) => assert!(rest.is_empty(), "bytes after: {}", preview(&rest)),
        CloseState::Open(rest) => panic!(
            "connection left open after {status} for {} (then {})",
            preview(raw),
            preview(&rest)
        ),
    }
}

// ---------------------------------------------------------------------------
// 2. Response transfer codings other than chunked
// ---------------------------------------------------------------------------

/// RFC 9112 §6.1: a coding may be removed only by decoding it. ekilibri
/// does not decode gzip, so such a response is answered 502 (as HAProxy
/// does) instead of being relayed as plain chunked.
#[test]
fn response_transfer_coding_other_than_chunked_gives_502() {
    let reply: Reply = Arc::new(|path| {
        match path {
        "/one-line" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nGZIP!\r\n0\r\n\r\n"
            .to_vec(),
        "/two-lines" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nGZIP!\r\n0\r\n\r\n"
            .to_vec(),
        _ => OK_GOOD.to_vec(),
    }
    });
    let (_origin, bal) = origin_and_balancer(reply);
    for path in ["/one-line", "/two-lines"] {
        let mut c = bal.connect();
        let r = c.get(path);
        assert_eq!(r.status, 502, "{path}: {r:?}");
        r.assert_complete_with_length();
        assert!(!r.body_str().contains("GZIP"), "{path}: {r:?}");
        // The client connection is still usable.
        let r = c.get("/good");
        assert_eq!((r.status, r.body_str().as_str()), (200, "good"), "{r:?}");
    }
}

// ---------------------------------------------------------------------------
// 3. Canned errors to HEAD
// ---------------------------------------------------------------------------

/// RFC 9110 §9.3.2: a HEAD answer ends at its head. A 504 of the balancer's
/// own with a body would be read by a pipelining client as the start of the
/// next response.
#[test]
fn canned_error_to_head_has_no_body_and_pipelining_stays_in_sync() {
    let backend = spawn_backend();
    let bal = balancer_for(backend.port, &[("read_timeout", "1000")]);
    let mut c = bal.connect();
    c.send(
        b"HEAD /sleep?ms=1500 HTTP/1.1\r\nHost: a\r\n\r\n\
          GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    let head = c.read_response_for("HEAD");
    assert_eq!(head.status, 504, "{head:?}");
    assert!(
        head.content_length().is_some_and(|n| n > 0),
        "the HEAD answer keeps the Content-Length a GET would get: {head:?}"
    );
    assert_ne!(head.header("Connection"), Some("close"), "{head:?}");
    let next = c.read_response();
    assert_eq!(next.status, 200, "pipelined GET after the 504: {next:?}");
    assert_eq!(next.body_str(), format!("backend {}\n", backend.port));
}

/// The same for a 502 (no backend answers) on a kept-alive connection.
#[test]
fn canned_502_to_head_has_no_body() {
    let bal = balancer_for(closed_port(), &[]);
    let mut c = bal.connect();
    c.send(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let head = c.read_response_for("HEAD");
    assert_eq!(head.status, 502, "{head:?}");
    assert_eq!(head.content_length(), Some("Bad Gateway\n".len()));
    let get = c.read_response();
    assert_eq!(get.status, 502, "{get:?}");
    assert_eq!(get.body_str(), "Bad Gateway\n");
}

/// A request refused before it is proxied (here for its Host) is answered
/// and closed; to HEAD, the answer is still only a head.
#[test]
fn refused_head_request_gets_a_head_only_answer() {
    let (_origin, bal) = origin_and_balancer(Arc::new(|_| OK_GOOD.to_vec()));
    let mut c = bal.connect();
    c.send(b"HEAD / HTTP/1.1\r\nHost: a b\r\n\r\n");
    let r = c.read_response_for("HEAD");
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.content_length(), Some("Bad Request\n".len()));
    assert_eq!(r.header("Connection"), Some("close"));
    match c.wait_closed(Duration::from_secs(3)) {
        CloseState::Closed(rest) => assert!(rest.is_empty(), "after the head: {}", preview(&rest)),
        CloseState::Open(rest) => panic!("left open (then {})", preview(&rest)),
    }
}

// ---------------------------------------------------------------------------
// 4. Backend status codes outside 100-599
// ---------------------------------------------------------------------------

#[test]
fn backend_status_outside_100_to_599_gives_502() {
    let reply: Reply = Arc::new(|path| match path {
        "/999" => b"HTTP/1.1 999 Odd\r\nContent-Length: 4\r\n\r\nodd!".to_vec(),
        "/600" => b"HTTP/1.1 600 Odd\r\nContent-Length: 4\r\n\r\nodd!".to_vec(),
        "/099" => b"HTTP/1.1 099 Odd\r\nContent-Length: 4\r\n\r\nodd!".to_vec(),
        "/599" => b"HTTP/1.1 599 Edge\r\nContent-Length: 4\r\n\r\ngood".to_vec(),
        _ => OK_GOOD.to_vec(),
    });
    let (_origin, bal) = origin_and_balancer(reply);
    for path in ["/999", "/600", "/099"] {
        let r = bal.connect().get(path);
        assert_eq!(r.status, 502, "{path}: {r:?}");
        r.assert_complete_with_length();
    }
    let r = bal.connect().get("/599");
    assert_eq!((r.status, r.body_str().as_str()), (599, "good"), "{r:?}");
}

// ---------------------------------------------------------------------------
// 5. Host validation and absolute-form targets
// ---------------------------------------------------------------------------

/// RFC 9112 §3.2: a server MUST answer 400 to a Host with an invalid value.
#[test]
fn invalid_host_gets_400_and_close() {
    let (origin, bal) = origin_and_balancer(Arc::new(|_| OK_GOOD.to_vec()));
    for host in [
        "good.example evil.example",
        "a, b",
        "a,b",
        "user@evil.example",
        "good.example/../x",
        "good.example\\x",
        "",
        "good.example:80x",
        "good.example:123456",
        ":80",
        "[::1",
        "[not-ipv6]:80",
        "a%zz",
    ] {
        let raw = format!("GET /h HTTP/1.1\r\nHost: {host}\r\n\r\n");
        expect_reject(bal.port, raw.as_bytes(), 400);
    }
    // An HTTP/1.0 request with an invalid Host is refused too.
    expect_reject(bal.port, b"GET /h HTTP/1.0\r\nHost: a b\r\n\r\n", 400);
    // Valid forms are forwarded unchanged.
    let valid = [
        "good.example",
        "GOOD.example:8080",
        "127.0.0.1",
        "127.0.0.1:80",
        "[::1]",
        "[::1]:8080",
        "xn--bcher-kva.example",
        "a%41b",
        "under_score.example",
        "localhost:0",
        "empty.port:",
    ];
    let mut c = bal.connect();
    for host in valid {
        let raw = format!("GET /h HTTP/1.1\r\nHost: {host}\r\n\r\n");
        c.send(raw.as_bytes());
        let r = c.read_response();
        assert_eq!(r.status, 200, "Host {host:?}: {r:?}");
    }
    let seen = origin.wait_seen(valid.len());
    for (s, host) in seen.iter().zip(valid) {
        assert_eq!(head_value(&s.head, "host").as_deref(), Some(host), "{s:?}");
    }
}

/// RFC 9112 §3.2.2: with an absolute-form target the target's authority
/// wins over Host. ekilibri sends origin-form with Host set from the
/// authority, as nginx does.
#[test]
fn absolute_form_is_sent_in_origin_form_with_its_authority_as_host() {
    let (origin, bal) = origin_and_balancer(Arc::new(|_| OK_GOOD.to_vec()));
    let mut c = bal.connect();
    for raw in [
        &b"GET http://evil.example/x?q=1 HTTP/1.1\r\nHost: good.example\r\nAccept: */*\r\n\r\n"[..],
        b"GET HTTP://Evil.Example:8080 HTTP/1.1\r\nHost: good.example\r\n\r\n",
        b"GET https://evil.example?q HTTP/1.1\r\nHost: good.example\r\n\r\n",
        b"GET http://[::1]:81/y HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: good.example\r\n\r\n",
    ] {
        c.send(raw);
        let r = c.read_response();
        assert_eq!(r.status, 200, "{}: {r:?}", preview(raw));
    }
    let seen = origin.wait_seen(5);
    let expect = [
        ("GET /x?q=1 HTTP/1.1\r\n", "evil.example"),
        ("GET / HTTP/1.1\r\n", "Evil.Example:8080"),
        ("GET /?q HTTP/1.1\r\n", "evil.example"),
        ("GET /y HTTP/1.1\r\n", "[::1]:81"),
        ("OPTIONS * HTTP/1.1\r\n", "good.example"),
    ];
    for (s, (line, host)) in seen.iter().zip(expect) {
        assert!(s.head.starts_with(line), "{:?}", s.head);
        assert_eq!(
            // Lines named Host (X-Forwarded-Host is another field).
            s.head
                .split("\r\n")
                .filter(|l| l
                    .split_once(':')
                    .is_some_and(|(n, _)| n.eq_ignore_ascii_case("host")))
                .count(),
            1,
            "exactly one Host: {:?}",
            s.head
        );
        assert_eq!(head_value(&s.head, "host").as_deref(), Some(host), "{s:?}");
    }
    assert!(
        seen[0].head.contains("\r\nAccept: */*\r\n"),
        "{:?}",
        seen[0]
    );
    // An authority with userinfo, an empty one, or a target that is none of
    // origin-, absolute- or asterisk-form is refused.
    for raw in [
        &b"GET http://user@evil.example/ HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET http://a b/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET x HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET ftp://evil.example/ HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        expect_reject(bal.port, raw, 400);
    }
    // Host is still required and must be valid with an absolute-form target.
    expect_reject(bal.port, b"GET http://a/ HTTP/1.1\r\n\r\n", 400);
    expect_reject(
        bal.port,
        b"GET http://a/ HTTP/1.1\r\nHost: a b\r\n\r\n",
        400,
    );
}

// ---------------------------------------------------------------------------
// 6. Request trailers
// ---------------------------------------------------------------------------

/// Names with `_` are dropped from heads (backends may read `X_Foo` as
/// `X-Foo`); trailers must not be a way around that.
#[test]
fn request_trailer_names_with_underscore_are_dropped() {
    let (origin, bal) = origin_and_balancer(Arc::new(|_| OK_EMPTY.to_vec()));
    let mut c = bal.connect();
    c.send(
        b"POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\nX_Under: 1\r\nX-Ok: 2\r\nx_forwarded_for: 6.6.6.6\r\n\r\n",
    );
    assert_eq!(c.read_response().status, 200);
    let seen = origin.wait_seen(1);
    assert_eq!(
        String::from_utf8_lossy(&seen[0].body),
        "5\r\nhello\r\n0\r\nX-Ok: 2\r\n\r\n",
        "the chunked body the backend received"
    );
}

// ---------------------------------------------------------------------------
// 7. 100 Continue and HTTP/1.0
// ---------------------------------------------------------------------------

/// RFC 9110 §10.1.1: a 100-continue expectation in an HTTP/1.0 request is
/// ignored, so no `100 Continue` precedes the final response. The HTTP/1.1
/// request in the same test shows the check can see a 100.
#[test]
fn http10_client_gets_no_100_continue() {
    let backend = spawn_backend();
    let tap = Tap::start(backend.port, b"POST /echo");
    let bal = balancer_for(tap.port, &[]);
    for minor in [1, 0] {
        let before = tap.hits();
        let mut c = bal.connect();
        c.send(
            format!(
                "POST /echo HTTP/1.{minor}\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
            )
            .as_bytes(),
        );
        // The head reached the backend, so the balancer is past the point
        // where it would answer 100 Continue.
        assert!(tap.wait_hit_after(before, Duration::from_secs(5)));
        if minor == 1 {
            // ekilibri waits for its 100 before the body's read.
            let first = c.read_response();
            assert_eq!(first.status, 100, "{first:?}");
        }
        c.send(b"hello");
        let r = c.read_response();
        assert_eq!(r.status, 200, "HTTP/1.{minor} (no 100 for 1.0): {r:?}");
        assert_eq!(r.body_str(), "hello");
    }
}

// ---------------------------------------------------------------------------
// 8. h2c upgrades
// ---------------------------------------------------------------------------

/// `Upgrade: h2c` through a proxy is the h2c smuggling route: ekilibri
/// removes h2c from the offered protocols; with none left the request is
/// a plain one.
#[test]
fn h2c_is_never_offered_to_the_backend() {
    let (origin, bal) = origin_and_balancer(Arc::new(|path| match path {
        "/mixed" => {
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\ngood".to_vec()
        }
        _ => OK_GOOD.to_vec(),
    }));
    let mut c = bal.connect();
    c.send(
        b"GET /only HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    );
    let r = c.read_response();
    assert_eq!((r.status, r.body_str().as_str()), (200, "good"), "{r:?}");
    // A plain request: the connection goes on.
    let r = c.get("/after");
    assert_eq!(r.status, 200, "{r:?}");
    let mut c = bal.connect();
    c.send(
        b"GET /mixed HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\
          Upgrade: H2C, websocket\r\nUpgrade: h2c/1\r\nHTTP2-Settings: AA\r\n\r\n",
    );
    assert_eq!(c.read_response().status, 200);
    let seen = origin.wait_seen(3);
    let only = &seen[0].head;
    assert!(!only.to_ascii_lowercase().contains("upgrade"), "{only:?}");
    assert!(!only.contains("HTTP2-Settings"), "{only:?}");
    let mixed = &seen[2].head;
    assert_eq!(
        head_value(mixed, "upgrade").as_deref(),
        Some("websocket"),
        "{mixed:?}"
    );
    assert_eq!(mixed.matches("pgrade:").count(), 1, "{mixed:?}");
    assert!(!mixed.contains("HTTP2-Settings"), "{mixed:?}");
    assert_eq!(
        head_value(mixed, "connection").as_deref(),
        Some("upgrade"),
        "{mixed:?}"
    );
}

// ---------------------------------------------------------------------------
// 9. Absurd chunk sizes
// ---------------------------------------------------------------------------

#[test]
fn huge_request_chunk_size_gets_400_at_once() {
    let (_origin, bal) = origin_and_balancer(Arc::new(|_| OK_EMPTY.to_vec()));
    expect_reject(
        bal.port,
        b"POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n7fffffffffffffff\r\nabc",
        400,
    );
    expect_reject(
        bal.port,
        b"POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000001\r\nabc",
        400,
    );
}

#[test]
fn huge_response_chunk_size_gives_502() {
    let reply: Reply = Arc::new(|path| match path {
        "/huge" => {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7fffffffffffffff\r\nabc".to_vec()
        }
        _ => OK_GOOD.to_vec(),
    });
    let (_origin, bal) = origin_and_balancer(reply);
    let mut c = bal.connect();
    c.send(b"GET /huge HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 502, "{r:?}");
    r.assert_complete_with_length();
}

// ---------------------------------------------------------------------------
// 13b. A doubled space in the request line
// ---------------------------------------------------------------------------

/// RFC 9112 §3: the request line's parts are separated by single spaces.
/// ekilibri is strict (400 and close), as documented in the README.
#[test]
fn doubled_space_in_request_line_gets_400() {
    let (origin, bal) = origin_and_balancer(Arc::new(|_| OK_GOOD.to_vec()));
    expect_reject(bal.port, b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    expect_reject(bal.port, b"GET /  HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    let r = http_get(bal.port, "/fine");
    assert_eq!(r.status, 200);
    assert_eq!(origin.wait_seen(1).len(), 1);
}
