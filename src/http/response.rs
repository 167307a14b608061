//! Response heads from backends: parse, check, rewrite for the client.
//!
//! [`parse`] reads a backend's response head with httparse, decides the body
//! framing (RFC 9112 §6.3) and whether both connections may be kept alive,
//! and writes the head for the client into `out`: the status line as
//! `HTTP/1.1`, the backend's header lines copied in runs, hop-by-hop headers
//! dropped, and canonical framing and `Connection` headers appended. A
//! response whose framing is ambiguous (both Content-Length and
//! Transfer-Encoding, conflicting lengths, a body on 204) is refused with a
//! 502 so it can never desynchronise the client connection.

use std::mem::MaybeUninit;
use std::ops::Range;

use super::request::MAX_HEADERS;
use super::{
    BodyFraming, has_bare_lf, is_hop_by_hop, line_end, list_elements, offset_in,
    parse_content_length, push_decimal,
};
use crate::error::ProxyError;

/// What the client side asked for; it shapes the rewritten head.
#[derive(Debug, Clone, Copy)]
pub struct ClientSide {
    /// The request was HEAD (the response has no body).
    pub head_request: bool,
    /// The client's HTTP minor version.
    pub minor_version: u8,
    /// The client may keep the connection (its wish, and we are not draining).
    pub keep_alive: bool,
    /// The client asked for an upgrade, so a 101 is acceptable.
    pub upgrade: bool,
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
    client: ClientSide,
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
    let headers = &*resp.headers;

    let mut content_length: Option<u64> = None;
    let mut saw_cl = false;
    let mut te_seen = false;
    let mut te_last_chunked = false;
    let mut te_chunked_count = 0u32;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut conn_tokens: Vec<&[u8]> = Vec::new();
    for h in headers {
        let name = h.name.as_bytes();
        match name.len() {
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for tok in list_elements(h.value) {
                    if tok.eq_ignore_ascii_case(b"close") {
                        conn_close = true;
                    } else if tok.eq_ignore_ascii_case(b"keep-alive") {
                        conn_keep_alive = true;
                    } else if !tok.eq_ignore_ascii_case(b"upgrade") {
                        conn_tokens.push(tok);
                    }
                }
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                let n = parse_content_length(h.value)
                    .ok_or(ProxyError::BadResponse("invalid Content-Length"))?;
                if saw_cl && content_length != Some(n) {
                    return Err(ProxyError::BadResponse("conflicting Content-Length"));
                }
                saw_cl = true;
                content_length = Some(n);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                te_seen = true;
                for coding in list_elements(h.value) {
                    te_last_chunked = coding.eq_ignore_ascii_case(b"chunked");
                    if te_last_chunked {
                        te_chunked_count += 1;
                    }
                }
            }
            _ => {}
        }
    }
    if te_seen && saw_cl {
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
        if !te_last_chunked || te_chunked_count != 1 {
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
    let backend_keep_alive = !interim
        && !switching
        && body != BodyFraming::UntilClose
        && if minor == 1 {
            !conn_close
        } else {
            conn_keep_alive && !conn_close
        };
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
    let mut run: Option<Range<usize>> = None;
    for h in headers {
        let name = h.name.as_bytes();
        let hs = offset_in(buf, name);
        let he = line_end(buf, hs + name.len());
        let keep = if is_hop_by_hop(name) {
            switching && name.eq_ignore_ascii_case(b"upgrade")
        } else {
            !conn_tokens.iter().any(|t| t.eq_ignore_ascii_case(name))
        };
        match (&mut run, keep) {
            (Some(r), true) if r.end == hs => r.end = he,
            (r, true) => {
                if let Some(prev) = r.take() {
                    out.extend_from_slice(&buf[prev]);
                }
                *r = Some(hs..he);
            }
            (r, false) => {
                if let Some(prev) = r.take() {
                    out.extend_from_slice(&buf[prev]);
                }
            }
        }
    }
    if let Some(prev) = run {
        out.extend_from_slice(&buf[prev]);
    }
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
}
