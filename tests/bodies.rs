//! Request and response bodies of every framing, byte for byte.

mod common;

use common::*;
use std::time::Duration;

const MIB: usize = 1024 * 1024;

fn setup() -> (Backend, Balancer) {
    let backend = spawn_backend();
    let balancer = spawn_balancer(&Config::for_backends(std::slice::from_ref(&backend)), &[]);
    (backend, balancer)
}

#[test]
fn one_mib_content_length_upload_is_echoed() {
    let (_backend, balancer) = setup();
    let body = pseudo_random_bytes(MIB, 1);
    let mut c = balancer.connect();
    // build_request adds `Content-Length: 1048576`.
    let req = build_request(
        "POST",
        "/echo",
        &[("Content-Type", "application/x-test-binary")],
        &body,
    );
    let writer = c.send_in_background(req);
    let resp = c.read_response();
    writer.join().unwrap().expect("upload");
    assert_eq!(resp.status, 200, "{:?}", resp.raw_head);
    assert_eq!(
        resp.header("Content-Type"),
        Some("application/x-test-binary")
    );
    assert_bytes_eq(&resp.body, &body, "echoed 1 MiB body");
    // The connection is still usable.
    let resp = c.get("/bytes/3");
    assert_eq!(resp.body, b"abc");
}

#[test]
fn one_mib_chunked_upload_is_echoed() {
    let (_backend, balancer) = setup();
    let body = pseudo_random_bytes(MIB, 2);
    let chunked = encode_chunked(&body, &[1, 7, 100, 4093, 65536, 3, 30000, 12345]);
    let mut c = balancer.connect();
    let mut req = build_request(
        "POST",
        "/echo",
        &[
            ("Content-Type", "application/x-chunky"),
            ("Transfer-Encoding", "chunked"),
        ],
        b"",
    );
    req.extend_from_slice(&chunked);
    let writer = c.send_in_background(req);
    let resp = c.read_response();
    writer.join().unwrap().expect("upload");
    assert_eq!(resp.status, 200, "{:?}", resp.raw_head);
    assert_eq!(resp.header("Content-Type"), Some("application/x-chunky"));
    assert_bytes_eq(&resp.body, &body, "echoed chunked 1 MiB body");
    let resp = c.get("/bytes/3");
    assert_eq!(resp.body, b"abc");
}

#[test]
fn one_mib_content_length_download() {
    let (_backend, balancer) = setup();
    let mut c = balancer.connect();
    let resp = c.get(&format!("/bytes/{MIB}"));
    assert_eq!(resp.status, 200, "{:?}", resp.raw_head);
    assert_eq!(resp.content_length(), Some(MIB));
    assert_bytes_eq(&resp.body, &bytes_pattern(MIB), "/bytes/1048576");
    let resp = c.get("/bytes/3");
    assert_eq!(resp.body, b"abc");
}

#[test]
fn one_mib_chunked_download() {
    let (_backend, balancer) = setup();
    let mut c = balancer.connect();
    let resp = c.request(
        "GET",
        &format!("/chunked?bytes={MIB}"),
        &[("TE", "trailers")],
        b"",
    );
    assert_eq!(resp.status, 200, "{:?}", resp.raw_head);
    assert_bytes_eq(&resp.body, &bytes_pattern(MIB), "/chunked?bytes=1048576");
    let resp = c.get("/bytes/3");
    assert_eq!(resp.body, b"abc");
}

#[test]
fn chunked_response_trailer_arrives() {
    let (_backend, balancer) = setup();
    let mut c = balancer.connect();
    let resp = c.request("GET", "/chunked", &[("TE", "trailers")], b"");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(resp.chunked, "response should stay chunked: {resp:?}");
    assert_eq!(resp.body_str(), "hello chunked world\n");
    assert_eq!(resp.trailer("X-Trailer"), Some("done"), "{resp:?}");
    // The next response on the connection is intact after the trailer.
    let resp = c.get("/bytes/3");
    assert_eq!(resp.body, b"abc");
}

#[test]
fn chunked_decoder_self_check() {
    // The in-memory decoder agrees with the encoder (guards the helpers).
    let body = pseudo_random_bytes(10_000, 3);
    let mut enc = encode_chunked(&body, &[1, 999, 4096]);
    enc.truncate(enc.len() - 2);
    enc.extend_from_slice(b"X-T: v\r\n\r\nrest");
    let (dec, trailers, rest) = decode_chunked(&enc);
    assert_eq!(dec, body);
    assert_eq!(trailers, vec![("X-T".to_string(), "v".to_string())]);
    assert_eq!(rest, b"rest");
}

#[test]
fn expect_100_continue_is_honoured() {
    let (_backend, balancer) = setup();
    let mut c = balancer.connect();
    let body = b"hello continue";
    c.send(
        format!(
            "POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    // No body sent yet: the interim response must come first.
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let interim = c.read_response();
    assert_eq!(interim.status, 100, "{interim:?}");
    c.send(body);
    let resp = c.read_response();
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, body);
    assert_eq!(resp.header("Content-Type"), Some("text/plain"));
}
