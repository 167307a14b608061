//! Request forwarding: what the backend receives and what the client gets.

mod common;

use common::*;
use std::time::Duration;

/// One backend behind a one-worker balancer.
fn setup() -> (Backend, Balancer) {
    let backend = spawn_backend();
    let balancer = spawn_balancer(
        &Config::for_backends(std::slice::from_ref(&backend)),
        &["--workers", "1"],
    );
    (backend, balancer)
}

/// Header lines of a raw request head as received by the backend (without
/// the request line and the final blank line).
fn head_lines(raw: &str) -> (String, Vec<String>) {
    let head = raw.split("\r\n\r\n").next().unwrap();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap().to_string();
    (request_line, lines.map(|l| l.to_string()).collect())
}

fn header_names(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l.split(':').next().unwrap().trim().to_ascii_lowercase())
        .collect()
}

#[test]
fn get_root_is_proxied_to_the_backend() {
    let (backend, balancer) = setup();
    let resp = http_get(balancer.port, "/");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body_str(), format!("backend {}\n", backend.port));
    assert_eq!(resp.backend_port(), backend.port);
}

#[test]
fn backend_status_codes_pass_through() {
    let (_backend, balancer) = setup();
    let mut c = balancer.connect();
    for code in [200u16, 201, 204, 301, 304, 404, 418, 500, 503] {
        let resp = c.get(&format!("/status/{code}"));
        assert_eq!(resp.status, code, "{resp:?}");
        assert!(resp.body.is_empty(), "{resp:?}");
    }
    let resp = c.get("/no/such/route");
    assert_eq!(resp.status, 404, "{resp:?}");
    // The connection is still usable after all those responses.
    let resp = c.get("/bytes/3");
    assert_eq!(resp.body, b"abc");
}

#[test]
fn hop_by_hop_headers_are_dropped_and_others_kept_in_order() {
    let (_backend, balancer) = setup();
    let mut c = balancer.connect();
    let req = concat!(
        "GET /headers HTTP/1.1\r\n",
        "Host: example.test:1234\r\n",
        "X-First: one\r\n",
        "Connection: keep-alive, X-Foo\r\n",
        "Keep-Alive: timeout=5\r\n",
        "X-MiXeD-CaSe: a  b,c;d=\"e\"\r\n",
        "TE: trailers\r\n",
        "Trailer: X-Bar\r\n",
        "Proxy-Connection: keep-alive\r\n",
        "X-Foo: secret\r\n",
        "Upgrade: h2c\r\n",
        "Accept: */*\r\n",
        "X-Last: last\r\n",
        "\r\n"
    );
    c.send(req.as_bytes());
    let resp = c.read_response();
    assert_eq!(resp.status, 200, "{resp:?}");
    let received = resp.body_str();
    let (request_line, lines) = head_lines(&received);
    assert_eq!(request_line, "GET /headers HTTP/1.1", "head:\n{received}");
    let names = header_names(&lines);
    for dropped in [
        "keep-alive",
        "te",
        "trailer",
        "proxy-connection",
        "upgrade",
        "x-foo",
    ] {
        assert!(
            !names.iter().any(|n| n == dropped),
            "hop-by-hop header {dropped:?} was forwarded:\n{received}"
        );
    }
    // The balancer may set its own Connection header, but never forward the
    // client's one.
    for l in &lines {
        if l.to_ascii_lowercase().starts_with("connection:") {
            assert!(
                !l.to_ascii_lowercase().contains("x-foo"),
                "client's Connection header was forwarded:\n{received}"
            );
        }
    }
    // End-to-end headers: exact bytes, original order, Host unchanged.
    let expected = [
        "Host: example.test:1234",
        "X-First: one",
        "X-MiXeD-CaSe: a  b,c;d=\"e\"",
        "Accept: */*",
        "X-Last: last",
    ];
    let mut last = None;
    for e in expected {
        let pos = lines
            .iter()
            .position(|l| l == e)
            .unwrap_or_else(|| panic!("{e:?} not forwarded verbatim:\n{received}"));
        if let Some(prev) = last {
            assert!(pos > prev, "{e:?} out of order:\n{received}");
        }
        last = Some(pos);
    }
    assert_eq!(
        names.iter().filter(|n| *n == "host").count(),
        1,
        "exactly one Host:\n{received}"
    );
    let xff: Vec<&String> = lines
        .iter()
        .filter(|l| l.to_ascii_lowercase().starts_with("x-forwarded-for:"))
        .collect();
    assert_eq!(xff.len(), 1, "one X-Forwarded-For:\n{received}");
    assert_eq!(
        xff[0].split_once(':').unwrap().1.trim(),
        "127.0.0.1",
        "{received}"
    );
}

#[test]
/// With no `trusted_proxies` (the default) a client's X-Forwarded-For is
/// replaced, not appended to (tests/forwarded.rs covers a trusted peer).
fn x_forwarded_for_from_an_untrusted_client_is_replaced() {
    let (_backend, balancer) = setup();
    let resp = one_request(
        balancer.port,
        "GET",
        "/headers",
        &[("X-Forwarded-For", "10.0.0.1"), ("X-After", "1")],
        b"",
    );
    assert_eq!(resp.status, 200, "{resp:?}");
    let received = resp.body_str();
    let (_, lines) = head_lines(&received);
    let xff: Vec<&String> = lines
        .iter()
        .filter(|l| l.to_ascii_lowercase().starts_with("x-forwarded-for:"))
        .collect();
    assert_eq!(xff.len(), 1, "one X-Forwarded-For:\n{received}");
    assert_eq!(
        xff[0].split_once(':').unwrap().1.trim(),
        "127.0.0.1",
        "{received}"
    );
    assert!(lines.iter().any(|l| l == "X-After: 1"), "{received}");
}

#[test]
fn header_named_in_connection_is_dropped() {
    let (_backend, balancer) = setup();
    let mut c = balancer.connect();
    c.send(
        b"GET /headers HTTP/1.1\r\nHost: h\r\nX-Foo: 1\r\nX-Keep: 2\r\nConnection: close, X-Foo\r\n\r\n",
    );
    let resp = c.read_response();
    assert_eq!(resp.status, 200, "{resp:?}");
    let received = resp.body_str();
    let (_, lines) = head_lines(&received);
    let names = header_names(&lines);
    assert!(!names.iter().any(|n| n == "x-foo"), "{received}");
    assert!(lines.iter().any(|l| l == "X-Keep: 2"), "{received}");
    for l in &lines {
        assert!(
            !l.to_ascii_lowercase().contains("x-foo"),
            "X-Foo leaked:\n{received}"
        );
    }
    // `Connection: close` from the client: the balancer closes after replying.
    assert!(
        matches!(c.wait_closed(Duration::from_secs(5)), CloseState::Closed(ref b) if b.is_empty()),
        "connection not closed after `Connection: close`"
    );
}

#[test]
fn large_request_head_is_forwarded() {
    let (_backend, balancer) = setup();
    // 40 headers of 500 bytes each: about 20 KiB of head.
    let values: Vec<(String, String)> = (0..40)
        .map(|i| {
            let v: String = (0..500)
                .map(|j| (b'A' + ((i + j) % 26) as u8) as char)
                .collect();
            (format!("X-Big-{i:02}"), v)
        })
        .collect();
    let headers: Vec<(&str, &str)> = values
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let resp = one_request(balancer.port, "GET", "/headers", &headers, b"");
    assert_eq!(resp.status, 200, "{:?}", resp.raw_head);
    let received = resp.body_str();
    assert!(received.len() > 20_000, "{}", received.len());
    let (_, lines) = head_lines(&received);
    let mut last = 0;
    for (k, v) in &values {
        let want = format!("{k}: {v}");
        let pos = lines
            .iter()
            .position(|l| *l == want)
            .unwrap_or_else(|| panic!("{k} not forwarded verbatim"));
        assert!(pos >= last, "{k} out of order");
        last = pos;
    }
}

#[test]
fn oversized_request_head_gets_431() {
    let (_backend, balancer) = setup();
    let mut c = balancer.connect();
    let mut req = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n".to_vec();
    // 80 headers of 1000 bytes: about 80 KB, more than the 64 KiB default.
    for i in 0..80 {
        req.extend_from_slice(format!("X-Pad-{i:02}: ").as_bytes());
        req.extend(std::iter::repeat_n(b'p', 1000));
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    // The balancer may answer and close before reading all of it.
    let writer = c.send_in_background(req);
    let resp = c.read_response();
    let _ = writer.join();
    assert_eq!(resp.status, 431, "{resp:?}");
    resp.assert_complete_with_length();
}

#[test]
fn http10_request_is_answered_and_connection_closed() {
    let (backend, balancer) = setup();
    let mut c = balancer.connect();
    c.send(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let resp = c.read_response();
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body_str(), format!("backend {}\n", backend.port));
    assert!(resp.version.starts_with("HTTP/1."), "{resp:?}");
    match c.wait_closed(Duration::from_secs(5)) {
        CloseState::Closed(extra) => assert!(extra.is_empty(), "extra bytes {extra:?}"),
        CloseState::Open(extra) => {
            panic!("HTTP/1.0 connection left open (extra bytes {extra:?})")
        }
    }
}

#[test]
fn all_methods_are_forwarded() {
    let (_backend, balancer) = setup();
    let mut c = balancer.connect();
    for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let body: &[u8] = if matches!(method, "POST" | "PUT" | "PATCH") {
            b"data"
        } else {
            b""
        };
        let resp = c.request(method, "/headers", &[], body);
        assert_eq!(resp.status, 200, "{method}: {resp:?}");
        let received = resp.body_str();
        let (request_line, lines) = head_lines(&received);
        assert_eq!(request_line, format!("{method} /headers HTTP/1.1"));
        if !body.is_empty() {
            assert!(
                lines
                    .iter()
                    .any(|l| l.eq_ignore_ascii_case("content-length: 4")),
                "{method}: body framing not forwarded:\n{received}"
            );
        }
    }
    // HEAD: same headers as GET, no body; the connection stays in sync.
    let resp = c.request("HEAD", "/bytes/100", &[], b"");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.content_length(), Some(100), "{resp:?}");
    let resp = c.get("/bytes/4");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, b"abcd");
}

#[test]
fn head_response_has_no_body_and_pipelining_continues() {
    let (_backend, balancer) = setup();
    let mut c = balancer.connect();
    c.send(b"HEAD /bytes/100 HTTP/1.1\r\nHost: h\r\n\r\nGET /bytes/5 HTTP/1.1\r\nHost: h\r\n\r\n");
    let head = c.read_response_for("HEAD");
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.content_length(), Some(100), "{head:?}");
    // If the balancer sent a body for HEAD, these bytes would be `abc...`.
    let next = c.read_response();
    assert_eq!(next.status, 200, "{next:?}");
    assert_eq!(next.body, b"abcde");
}
