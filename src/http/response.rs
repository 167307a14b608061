//! Response heads from backends: parse, check, rewrite for the client.
//!
//! [`parse`] reads a backend's response head with httparse, decides the body
//! framing (RFC 9112 §6.3) and whether both connections may be kept alive,
//! and writes the head for the client into `out`: the status line as
//! `HTTP/1.1`, the backend's header lines copied in runs, hop-by-hop headers
//! dropped, and canonical framing and `Connection` headers appended. A
//! response whose framing is ambiguous (both Content-Length and
//! Transfer-Encoding, conflicting lengths, a body on 204), whose body has a
//! transfer coding other than chunked (we cannot remove a coding without
//! decoding it, RFC 9112 §6.1), or whose status is outside 100-599 is
//! refused with a 502 so it can never desynchronise or mislead the client.
//!
//! A final head also carries the request's id: the backend's `X-Request-Id`
//! lines are replaced by one with the id the backend was sent, so the
//! client, the backend and the access log see the same id.

use std::mem::MaybeUninit;

use super::framing::FramingHeaders;
use super::request::MAX_HEADERS;
use super::{BodyFraming, copy_kept_lines, has_bare_lf, is_hop_by_hop, line_end, push_decimal};
use crate::error::ProxyError;

/// What the client side asked for; it shapes the rewritten head.
#[derive(Debug, Clone, Copy)]
pub struct ClientSide<'a> {
    /// The request was HEAD (the response has no body).
    pub head_request: bool,
    /// The client's HTTP minor version.
    pub minor_version: u8,
    /// The client may keep the connection (its wish, and we are not draining).
    pub keep_alive: bool,
    /// The client asked for an upgrade, so a 101 is acceptable.
    pub upgrade: bool,
    /// The request's id, written as `X-Request-Id` on a final head in place
    /// of the backend's. Empty: the backend's lines pass as they are.
    pub request_id: &'a [u8],
}

/// A parsed backend response head and the decisions taken from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Bytes of the backend buffer taken by the head.
    pub head_len: usize,
    /// The status code.
    pub status: u16,
    /// A 1xx other than 101: forward (or drop) and read the next head.
    pub interim: bool,
    /// A 101 answering an upgrade: relay bytes both ways from now on.
    pub switching: bool,
    /// How the backend delimits the body.
    pub body: BodyFraming,
    /// Send the chunked body decoded (HTTP/1.0 client).
    pub dechunk: bool,
    /// The backend connection may be reused after the body.
    pub backend_keep_alive: bool,
    /// The client connection stays open after the body.
    pub client_keep_alive: bool,
}

/// Parses the response head at the start of `buf`; `Ok(None)` means more
/// bytes are needed. On success the client's head is in `out`.
pub fn parse(
    buf: &[u8],
    max_header_bytes: usize,
    client: ClientSide<'_>,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, ProxyError> {
    let mut slots: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
        [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= max_header_bytes {
                return Err(ProxyError::BadResponse("response head too large"));
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ProxyError::BadResponse("too many response headers"));
        }
        Err(_) => return Err(ProxyError::BadResponse("malformed response head")),
    };
    if head_len > max_header_bytes {
        return Err(ProxyError::BadResponse("response head too large"));
    }
    if has_bare_lf(&buf[..head_len]) {
        return Err(ProxyError::BadResponse("bare LF in response head"));
    }
    let (Some(status), Some(minor)) = (resp.code, resp.version) else {
        return Err(ProxyError::BadResponse("malformed status line"));
    };
    if !(100..=599).contains(&status) {
        return Err(ProxyError::BadResponse("status code outside 100-599"));
    }
    let headers = &*resp.headers;

    let mut framing = FramingHeaders::default();
    for h in headers {
        framing.observe(h.name.as_bytes(), h.value, ProxyError::BadResponse)?;
    }
    let FramingHeaders {
        content_length,
        te_seen,
        ref conn_tokens,
        ..
    } = framing;
    if te_seen && content_length.is_some() {
        return Err(ProxyError::BadResponse(
            "both Content-Length and Transfer-Encoding",
        ));
    }

    let interim = (100..200).contains(&status) && status != 101;
    let switching = status == 101;
    if switching && !client.upgrade {
        return Err(ProxyError::BadResponse("101 without an upgrade request"));
    }
    let body = if interim || switching || client.head_request || status == 304 {
        BodyFraming::None
    } else if status == 204 {
        if te_seen || content_length.unwrap_or(0) != 0 {
            return Err(ProxyError::BadResponse("204 response with a body"));
        }
        BodyFraming::None
    } else if te_seen {
        // `gzip, chunked` relayed as `chunked` would hand the client gzip
        // bytes as the payload; we do not decode, so we refuse.
        if !framing.chunked_is_final() || framing.te_other {
            return Err(ProxyError::BadResponse(
                "unsupported response transfer coding",
            ));
        }
        BodyFraming::Chunked
    } else if let Some(n) = content_length {
        BodyFraming::Length(n)
    } else {
        BodyFraming::UntilClose
    };
    // An HTTP/1.0 message with Transfer-Encoding has faulty framing (RFC
    // 9112 §6.1): relay it, then close the backend connection.
    let faulty_framing = minor == 0 && te_seen;
    let backend_keep_alive = !interim
        && !switching
        && body != BodyFraming::UntilClose
        && !faulty_framing
        && framing.persistent(minor);
    let dechunk = body == BodyFraming::Chunked && client.minor_version == 0;
    let client_keep_alive =
        client.keep_alive && !switching && body != BodyFraming::UntilClose && !dechunk;

    // Rewrite for the client.
    out.clear();
    out.reserve(head_len + 48);
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(0);
    let status_end = line_end(buf, start);
    out.extend_from_slice(b"HTTP/1.1");
    // httparse validated "HTTP/1.x" (8 bytes) at `start`.
    out.extend_from_slice(&buf[start + 8..status_end]);
    let with_id = !interim && !client.request_id.is_empty();
    copy_kept_lines(buf, headers, out, |h| {
        let name = h.name.as_bytes();
        if is_hop_by_hop(name) {
            switching && name.eq_ignore_ascii_case(b"upgrade")
        } else if with_id && name.len() == 12 && name.eq_ignore_ascii_case(b"x-request-id") {
            false
        } else {
            !conn_tokens.iter().any(|t| t.eq_ignore_ascii_case(name))
        }
    });
    match body {
        BodyFraming::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyFraming::Chunked if !dechunk => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
        BodyFraming::None if !interim && !switching && status != 204 => {
            // HEAD and 304 keep the length the backend announced.
            if let Some(n) = content_length {
                out.extend_from_slice(b"Content-Length: ");
                push_decimal(out, n);
                out.extend_from_slice(b"\r\n");
            }
        }
        _ => {}
    }
    if with_id {
        out.extend_from_slice(b"X-Request-Id: ");
        out.extend_from_slice(client.request_id);
        out.extend_from_slice(b"\r\n");
    }
    if switching {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    } else if !interim {
        if !client_keep_alive {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if client.minor_version == 0 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");

    Ok(Some(ResponseHead {
        head_len,
        status,
        interim,
        switching,
        body,
        dechunk,
        backend_keep_alive,
        client_keep_alive,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const C11: ClientSide = ClientSide {
        head_request: false,
        minor_version: 1,
        keep_alive: true,
        upgrade: false,
        request_id: b"",
    };

    fn ok(raw: &[u8], c: ClientSide) -> (ResponseHead, String) {
        let mut out = Vec::new();
        let h = parse(raw, 65536, c, &mut out)
            .expect("valid")
            .expect("complete");
        (h, String::from_utf8(out).unwrap())
    }

    fn bad(raw: &[u8]) -> bool {
        let mut out = Vec::new();
        matches!(
            parse(raw, 65536, C11, &mut out),
            Err(ProxyError::BadResponse(_))
        )
    }

    #[test]
    fn length_response() {
        let (h, out) = ok(b"HTTP/1.1 200 OK\r\nServer: b\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello", C11);
        assert_eq!(h.body, BodyFraming::Length(5));
        assert!(h.backend_keep_alive && h.client_keep_alive);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nServer: b\r\nContent-Length: 5\r\n\r\n"
        );
    }

    #[test]
    fn request_id_replaces_the_backends_on_final_heads_only() {
        let c = ClientSide {
            request_id: b"abc123",
            ..C11
        };
        let (_, out) = ok(
            b"HTTP/1.1 200 OK\r\nX-Request-Id: backend\r\nA: 1\r\nx-request-id: two\r\nContent-Length: 0\r\n\r\n",
            c,
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nA: 1\r\nContent-Length: 0\r\nX-Request-Id: abc123\r\n\r\n"
        );
        let (_, out) = ok(b"HTTP/1.1 103 Early Hints\r\nX-Request-Id: b\r\n\r\n", c);
        assert_eq!(out, "HTTP/1.1 103 Early Hints\r\nX-Request-Id: b\r\n\r\n");
        let (_, out) = ok(b"HTTP/1.1 204 No Content\r\nX-Request-Id: b\r\n\r\n", C11);
        assert_eq!(out, "HTTP/1.1 204 No Content\r\nX-Request-Id: b\r\n\r\n");
    }

    #[test]
    fn http10_backend_until_close() {
        let (h, out) = ok(b"HTTP/1.0 200 OK\r\nX: y\r\n\r\n", C11);
        assert_eq!(h.body, BodyFraming::UntilClose);
        assert!(!h.backend_keep_alive && !h.client_keep_alive);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nX: y\r\nConnection: close\r\n\r\n");
    }

    #[test]
    fn chunked_to_http10_client_is_decoded() {
        let c = ClientSide {
            minor_version: 0,
            ..C11
        };
        let (h, out) = ok(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", c);
        assert!(h.dechunk && !h.client_keep_alive);
        assert!(!out.contains("chunked") && out.contains("Connection: close"));
    }

    #[test]
    fn no_body_statuses() {
        let head = ClientSide {
            head_request: true,
            ..C11
        };
        let (h, out) = ok(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", head);
        assert_eq!(h.body, BodyFraming::None);
        assert!(out.contains("Content-Length: 100\r\n"));
        let (h, _) = ok(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n",
            C11,
        );
        assert_eq!(h.body, BodyFraming::None);
        let (h, _) = ok(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", C11);
        assert!(h.interim);
    }

    #[test]
    fn ambiguous_responses_are_refused() {
        assert!(bad(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(bad(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
        ));
        assert!(bad(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"));
        assert!(bad(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"));
        assert!(bad(b"garbage\r\n\r\n"));
        assert!(bad(b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n"));
        assert!(bad(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"
        ));
    }

    #[test]
    fn codings_other_than_chunked_and_odd_statuses_are_refused() {
        assert!(bad(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        ));
        assert!(bad(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        for status in ["000", "099", "600", "999"] {
            let raw = format!("HTTP/1.1 {status} Odd\r\nContent-Length: 0\r\n\r\n");
            assert!(bad(raw.as_bytes()), "{status}");
        }
        for status in [100, 599] {
            let raw = format!("HTTP/1.1 {status} Edge\r\nContent-Length: 0\r\n\r\n");
            assert_eq!(ok(raw.as_bytes(), C11).0.status, status);
        }
    }

    #[test]
    fn switching_protocols_keeps_upgrade() {
        let c = ClientSide {
            upgrade: true,
            ..C11
        };
        let (h, out) = ok(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n",
            c,
        );
        assert!(h.switching);
        assert_eq!(
            out,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\n"
        );
    }

    #[test]
    fn closing_client_gets_connection_close() {
        let c = ClientSide {
            keep_alive: false,
            ..C11
        };
        let (h, out) = ok(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", c);
        assert!(h.backend_keep_alive && !h.client_keep_alive);
        assert!(out.ends_with("Connection: close\r\n\r\n"));
    }

    // ---- Property test: generated valid response heads (deterministic PRNG) ----

    use crate::http::test_rng::Rng;

    fn visible(rng: &mut Rng, max: usize) -> Vec<u8> {
        let n = rng.below(max);
        let mut v: Vec<u8> = (0..n)
            .map(|_| match rng.below(16) {
                0 => b' ',
                1 => 0x80 + rng.below(128) as u8,
                _ => 0x21 + rng.below(0x7e - 0x21 + 1) as u8,
            })
            .collect();
        while matches!(v.first(), Some(b' ')) {
            v.remove(0);
        }
        while matches!(v.last(), Some(b' ')) {
            v.pop();
        }
        v
    }

    #[test]
    fn property_client_head_reparses_to_the_documented_rewrite() {
        let mut rng = Rng(0x7e5b_0001);
        const STATUSES: &[u16] = &[
            100, 101, 102, 103, 200, 201, 204, 206, 301, 304, 404, 500, 503,
        ];
        const NAMES: &[&str] = &[
            "Server",
            "Date",
            "Content-Type",
            "Set-Cookie",
            "X-Drop",
            "Cache-Control",
            "ETag",
            "Vary",
        ];
        for case in 0..5000 {
            let status = if rng.chance(70) {
                STATUSES[rng.below(STATUSES.len())]
            } else {
                200 + rng.below(400) as u16
            };
            let minor = if rng.chance(85) { 1u8 } else { 0 };
            let client = ClientSide {
                head_request: rng.chance(15),
                minor_version: if rng.chance(80) { 1 } else { 0 },
                keep_alive: rng.chance(80),
                upgrade: status == 101 || rng.chance(5),
                request_id: b"",
            };
            let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
            for _ in 0..rng.below(10) {
                headers.push((
                    NAMES[rng.below(NAMES.len())].to_string(),
                    visible(&mut rng, 30),
                ));
            }
            let mut conn_tokens: Vec<&str> = Vec::new();
            for _ in 0..rng.below(3) {
                let toks: Vec<&str> = (0..1 + rng.below(2))
                    .map(|_| {
                        [
                            "close",
                            "keep-alive",
                            "Keep-Alive",
                            "upgrade",
                            "X-Drop",
                            "vary",
                        ][rng.below(6)]
                    })
                    .collect();
                conn_tokens.extend(&toks);
                headers.push(("Connection".into(), toks.join(", ").into_bytes()));
            }
            for name in ["Keep-Alive", "TE", "Trailer", "Proxy-Connection", "Upgrade"] {
                if rng.chance(8) || (name == "Upgrade" && status == 101) {
                    headers.push((name.into(), b"x".to_vec()));
                }
            }
            let (cl, te) = match rng.below(3) {
                _ if status == 204 => (rng.chance(30).then_some(0u64), false),
                0 => (None, false),
                1 => (Some(rng.next() % 100_000), false),
                _ => (None, true),
            };
            if let Some(n) = cl {
                for _ in 0..1 + rng.below(2) {
                    headers.push(("Content-Length".into(), n.to_string().into_bytes()));
                }
            }
            if te {
                headers.push(("Transfer-Encoding".into(), b"chunked".to_vec()));
            }
            for i in (1..headers.len()).rev() {
                let j = rng.below(i + 1);
                headers.swap(i, j);
            }
            let mut raw = format!("HTTP/1.{minor} {status} ").into_bytes();
            raw.extend(visible(&mut rng, 20));
            raw.extend_from_slice(b"\r\n");
            for (n, v) in &headers {
                raw.extend_from_slice(n.as_bytes());
                raw.extend_from_slice(b": ");
                raw.extend_from_slice(v);
                raw.extend_from_slice(b"\r\n");
            }
            raw.extend_from_slice(b"\r\n");
            let show = String::from_utf8_lossy(&raw).into_owned();

            // The documented behaviour, as a model.
            let tok = |t: &str| conn_tokens.iter().any(|c| c.eq_ignore_ascii_case(t));
            let interim = (100..200).contains(&status) && status != 101;
            let switching = status == 101;
            let body =
                if interim || switching || client.head_request || status == 304 || status == 204 {
                    BodyFraming::None
                } else if te {
                    BodyFraming::Chunked
                } else if let Some(n) = cl {
                    BodyFraming::Length(n)
                } else {
                    BodyFraming::UntilClose
                };
            let faulty_framing = minor == 0 && te;
            let backend_keep_alive = !interim
                && !switching
                && body != BodyFraming::UntilClose
                && !faulty_framing
                && if minor == 1 {
                    !tok("close")
                } else {
                    tok("keep-alive") && !tok("close")
                };
            let dechunk = body == BodyFraming::Chunked && client.minor_version == 0;
            let client_keep_alive =
                client.keep_alive && !switching && body != BodyFraming::UntilClose && !dechunk;
            let by_conn: Vec<String> = conn_tokens
                .iter()
                .map(|t| t.to_ascii_lowercase())
                .filter(|t| !["close", "keep-alive", "upgrade"].contains(&t.as_str()))
                .collect();
            let mut expected: Vec<(String, Vec<u8>)> = headers
                .iter()
                .filter(|(n, _)| {
                    let l = n.to_ascii_lowercase();
                    if is_hop_by_hop(l.as_bytes()) {
                        switching && l == "upgrade"
                    } else {
                        !by_conn.contains(&l)
                    }
                })
                .cloned()
                .collect();
            match body {
                BodyFraming::Length(n) => {
                    expected.push(("Content-Length".into(), n.to_string().into_bytes()))
                }
                BodyFraming::Chunked if !dechunk => {
                    expected.push(("Transfer-Encoding".into(), b"chunked".to_vec()))
                }
                BodyFraming::None if !interim && !switching && status != 204 => {
                    if let Some(n) = cl {
                        expected.push(("Content-Length".into(), n.to_string().into_bytes()));
                    }
                }
                _ => {}
            }
            if switching {
                expected.push(("Connection".into(), b"upgrade".to_vec()));
            } else if !interim {
                if !client_keep_alive {
                    expected.push(("Connection".into(), b"close".to_vec()));
                } else if client.minor_version == 0 {
                    expected.push(("Connection".into(), b"keep-alive".to_vec()));
                }
            }

            let mut out = Vec::new();
            let h = match parse(&raw, 65536, client, &mut out) {
                Ok(Some(h)) => h,
                other => panic!("case {case}: {other:?} for {show:?} ({client:?})"),
            };
            assert_eq!(
                (
                    h.head_len,
                    h.status,
                    h.interim,
                    h.switching,
                    h.body,
                    h.dechunk
                ),
                (raw.len(), status, interim, switching, body, dechunk),
                "case {case}: {show:?}"
            );
            assert_eq!(
                (h.backend_keep_alive, h.client_keep_alive),
                (backend_keep_alive, client_keep_alive),
                "case {case}: {show:?} {client:?}"
            );
            assert!(!has_bare_lf(&out));
            let mut slots = [httparse::EMPTY_HEADER; 128];
            let mut resp = httparse::Response::new(&mut slots);
            assert_eq!(
                resp.parse(&out),
                Ok(httparse::Status::Complete(out.len())),
                "case {case}: {:?}",
                String::from_utf8_lossy(&out)
            );
            assert_eq!((resp.version, resp.code), (Some(1), Some(status)));
            let got: Vec<(String, Vec<u8>)> = resp
                .headers
                .iter()
                .map(|h| (h.name.to_string(), h.value.to_vec()))
                .collect();
            assert_eq!(
                got,
                expected,
                "case {case}: {show:?} -> {:?}",
                String::from_utf8_lossy(&out)
            );
        }
    }
}
