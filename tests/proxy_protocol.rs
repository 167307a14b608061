//! The PROXY protocol over real loopback sockets against the real binary:
//! headers taken in on a `proxy_protocol` listener (v1 and v2, trusted
//! peers only, bounded in time) and sent out to pools with
//! `send_proxy_protocol`, one backend connection per request.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ekilibri::proxy_protocol;

/// A balancer in front of one test backend whose listener takes PROXY
/// headers from `trusted`.
fn balancer_taking_headers(trusted: &str, extra: &str) -> (Backend, Balancer) {
    let b = spawn_backend();
    let toml = format!(
        "{}proxy_protocol = true\ntrusted_proxies = [\"{trusted}\"]\n{extra}",
        Config::for_backends(std::slice::from_ref(&b)).to_toml()
    );
    let lb = spawn_balancer_toml(&toml, &[]);
    (b, lb)
}

/// What the `/headers` route of the test backend saw, for a request sent
/// after `preamble` on a fresh connection.
fn headers_seen(lb: &Balancer, preamble: &[u8]) -> String {
    let mut c = lb.connect();
    c.send(preamble);
    c.send(b"GET /headers HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.body_str());
    r.body_str()
}

#[test]
fn v1_and_v2_headers_name_the_client() {
    let (_b, lb) = balancer_taking_headers("127.0.0.0/8", "");
    let seen = headers_seen(&lb, b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 8080\r\n");
    assert!(
        seen.contains("X-Forwarded-For: 203.0.113.7\r\n"),
        "v1: {seen}"
    );

    let mut v2 = Vec::new();
    let src: SocketAddr = "[2001:db8::7]:40001".parse().unwrap();
    let dst: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
    proxy_protocol::write_v2(&mut v2, src, dst);
    let seen = headers_seen(&lb, &v2);
    assert!(
        seen.contains("X-Forwarded-For: 2001:db8::7\r\n"),
        "v2: {seen}"
    );

    // UNKNOWN: the connection's own address stands.
    let seen = headers_seen(&lb, b"PROXY UNKNOWN\r\n");
    assert!(seen.contains("X-Forwarded-For: 127.0.0.1\r\n"), "{seen}");
}

#[test]
fn the_header_may_arrive_in_pieces_with_the_request() {
    let (_b, lb) = balancer_taking_headers("127.0.0.0/8", "");
    let mut c = lb.connect();
    for piece in [
        &b"PRO"[..],
        b"XY TCP4 198.51.100",
        b".2 127.0.0.1 1 2\r\nGET /hea",
    ] {
        c.send(piece);
        std::thread::sleep(Duration::from_millis(30));
    }
    c.send(b"ders HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_response();
    assert!(
        r.body_str().contains("X-Forwarded-For: 198.51.100.2\r\n"),
        "{}",
        r.body_str()
    );
    // Later requests on the connection keep the header's client.
    let r = c.get("/headers");
    assert!(r.body_str().contains("X-Forwarded-For: 198.51.100.2\r\n"));
}

/// Sends `bytes` and expects the balancer to close without a byte of answer.
fn assert_closed_silently(lb: &Balancer, bytes: &[u8], within: Duration) {
    let mut c = lb.connect();
    c.send(bytes);
    let started = Instant::now();
    match c.wait_closed(within) {
        CloseState::Closed(got) => assert!(
            got.is_empty(),
            "{:?}: answered {:?}",
            String::from_utf8_lossy(bytes),
            String::from_utf8_lossy(&got)
        ),
        CloseState::Open(got) => panic!(
            "{:?}: still open after {:?} ({:?})",
            String::from_utf8_lossy(bytes),
            started.elapsed(),
            String::from_utf8_lossy(&got)
        ),
    }
}

#[test]
fn connections_without_a_valid_header_are_closed() {
    let (_b, lb) = balancer_taking_headers("127.0.0.0/8", "");
    let wait = Duration::from_secs(3);
    assert_closed_silently(&lb, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", wait);
    assert_closed_silently(&lb, b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", wait);
    assert_closed_silently(&lb, b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", wait);
    assert_closed_silently(&lb, b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", wait);
    let mut v2 = Vec::new();
    proxy_protocol::write_v2(
        &mut v2,
        "1.2.3.4:5".parse().unwrap(),
        "5.6.7.8:9".parse().unwrap(),
    );
    v2[12] = 0x31; // version 3
    assert_closed_silently(&lb, &v2, wait);
    // The balancer still serves well-formed connections afterwards.
    let seen = headers_seen(&lb, b"PROXY TCP4 192.0.2.1 127.0.0.1 1 2\r\n");
    assert!(seen.contains("X-Forwarded-For: 192.0.2.1\r\n"));
}

#[test]
fn untrusted_peers_may_not_send_a_header() {
    // Only 10.0.0.0/8 may send headers; the test connects from 127.0.0.1.
    let (_b, lb) = balancer_taking_headers("10.0.0.0/8", "");
    assert_closed_silently(
        &lb,
        b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 8080\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n",
        Duration::from_secs(3),
    );
}

#[test]
fn a_dribbling_header_is_cut_at_the_header_timeout() {
    let (_b, lb) = balancer_taking_headers("127.0.0.0/8", "client_header_timeout = 400\n");
    let mut c = lb.connect();
    c.send(b"PROXY TCP4 ");
    let started = Instant::now();
    match c.wait_closed(Duration::from_secs(5)) {
        CloseState::Closed(got) => assert!(got.is_empty()),
        CloseState::Open(_) => panic!("a partial header kept the connection open"),
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
}

#[test]
fn config_needs_trusted_proxies_for_proxy_protocol() {
    let toml = format!("{}proxy_protocol = true\n", Config::new(&[9]).to_toml());
    let file = write_temp_file(&toml, ".toml");
    let r = run_balancer_to_exit(
        &["--check".as_ref(), "-f".as_ref(), file.path.as_os_str()],
        Duration::from_secs(10),
    );
    assert_ne!(r.status.code(), Some(0));
    assert!(
        r.stderr.contains("`proxy_protocol`") && r.stderr.contains("trusted_proxies"),
        "{}",
        r.stderr
    );
}

// ---------------------------------------------------------------------------
// Sending headers to backends
// ---------------------------------------------------------------------------

/// A backend that expects a PROXY header first on every connection,
/// records it, and answers every request on the connection with 200.
struct HeaderRecorder {
    server: ThreadedServer,
    headers: Arc<Mutex<Vec<Result<proxy_protocol::Header, String>>>>,
}

fn header_recorder() -> HeaderRecorder {
    let headers = Arc::new(Mutex::new(Vec::new()));
    let seen = headers.clone();
    let server = ThreadedServer::start(move |mut s: TcpStream, _, _| {
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let mut buf = Vec::new();
        let mut tmp = [0u8; 4096];
        let header = loop {
            match proxy_protocol::parse(&buf) {
                Ok(Some(h)) => break Ok(h),
                Ok(None) => {}
                Err(e) => break Err(e.to_string()),
            }
            match s.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let ok = header.is_ok();
        if let Ok(h) = &header {
            buf.drain(..h.header_len);
        }
        seen.lock().unwrap().push(header);
        if !ok {
            return;
        }
        loop {
            while find(&buf, b"\r\n\r\n").is_none() {
                match s.read(&mut tmp) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                }
            }
            let end = find(&buf, b"\r\n\r\n").map_or(0, |i| i + 4);
            buf.drain(..end);
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .is_err()
            {
                return;
            }
        }
    });
    HeaderRecorder { server, headers }
}

/// A balancer whose default pool is `rec`, sending `version` headers.
fn balancer_sending(rec: &HeaderRecorder, version: &str, extra: &str) -> Balancer {
    let toml = format!(
        "{}send_proxy_protocol = \"{version}\"\n{extra}",
        Config::new(&[rec.server.port])
            .with("health_check_path", "\"/\"")
            .to_toml()
    );
    spawn_balancer_toml(&toml, &[])
}

/// Waits until the recorder saw `n` headers from requests (health checks
/// connect too, but every one of them also starts with a header).
fn proxied_headers(rec: &HeaderRecorder) -> Vec<proxy_protocol::Header> {
    rec.headers
        .lock()
        .unwrap()
        .iter()
        .map(|h| {
            h.clone()
                .expect("every backend connection starts with a valid header")
        })
        .collect()
}

#[test]
fn pools_send_a_header_per_client_connection() {
    use std::sync::atomic::Ordering::SeqCst;
    for version in ["v1", "v2"] {
        let rec = header_recorder();
        let lb = balancer_sending(&rec, version, "");
        let before = rec.server.accepted.load(SeqCst);
        let mut a = lb.connect();
        let mut b = lb.connect();
        for _ in 0..3 {
            assert_eq!(a.get("/x").status, 200);
            assert_eq!(b.get("/x").status, 200);
        }
        let after = rec.server.accepted.load(SeqCst);
        // One backend connection per client connection, kept for its next
        // requests; never one shared by two clients (health checks may
        // open more, each with a LOCAL header and no addresses).
        let headers = proxied_headers(&rec);
        for client in [a.local_addr(), b.local_addr()] {
            let mine: Vec<_> = headers
                .iter()
                .filter(|h| h.source() == Some(client))
                .collect();
            assert_eq!(mine.len(), 1, "{version}: {client}: {headers:?}");
            assert_eq!(
                mine[0].destination().map(|d| d.port()),
                Some(lb.port),
                "{version}"
            );
        }
        let from_clients = headers.iter().filter(|h| h.addresses.is_some()).count();
        assert_eq!(from_clients, 2, "{version}: {headers:?}");
        assert!(after - before >= 2, "{version}");
    }
}

#[test]
fn a_header_taken_in_is_passed_on() {
    let rec = header_recorder();
    let lb = balancer_sending(
        &rec,
        "v2",
        "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]\n",
    );
    let mut c = lb.connect();
    c.send(b"PROXY TCP4 198.51.100.9 192.0.2.80 41000 80\r\n");
    assert_eq!(c.get("/y").status, 200);
    let want: SocketAddr = "198.51.100.9:41000".parse().unwrap();
    let h = proxied_headers(&rec)
        .into_iter()
        .find(|h| h.source() == Some(want))
        .expect("the backend saw the original client");
    assert_eq!(h.destination(), Some("192.0.2.80:80".parse().unwrap()));
}
