//! Request heads: parse, check, rewrite.
//!
//! [`parse`] reads a request head straight from the connection's buffer with
//! httparse, applies the checks a proxy must add on top (RFC 9112 §6.1, §6.3:
//! one unambiguous framing, no bare LF, exactly one valid Host, a target in
//! origin, absolute or asterisk form), and writes the head to forward into
//! `out` by copying runs of the original header lines and skipping only what
//! must change: hop-by-hop headers, `Content-Length` / `Transfer-Encoding`
//! (re-emitted in canonical form), `Expect: 100-continue` (answered by the
//! balancer), header names with underscores (dropped, like nginx's default),
//! `h2c` among the offered upgrades (dropped), and the forwarding fields
//! (below). An absolute-form target is sent in origin form with `Host` set
//! from its authority (RFC 9112 §3.2.2).
//!
//! Forwarding fields, written after the client's lines (one line each):
//!
//! | field | peer in `trusted_proxies` | any other peer |
//! | --- | --- | --- |
//! | `X-Forwarded-For` | incoming values, then the peer | the peer only |
//! | `X-Forwarded-Proto` | incoming values, else `http` | `http` |
//! | `X-Forwarded-Host` | incoming values, else the Host | the Host |
//! | `Forwarded` (on) | incoming values, then our element | our element |
//! | `Forwarded` (off) | incoming values | dropped |
//! | `X-Request-Id` | the incoming id if there is exactly one and it is acceptable, else ours | ours |
//!
//! "The Host" is the request's Host as received, or the authority of an
//! absolute-form target; with neither (HTTP/1.0), `X-Forwarded-Host` is
//! left out. Several incoming lines of one field are merged into one, in
//! order, empty values skipped.

use std::mem::MaybeUninit;
use std::ops::Range;

use super::forwarded::{Forwarding, push_forwarded_element, push_ip};
use super::framing::FramingHeaders;
use super::{
    BodyFraming, copy_kept_lines, has_bare_lf, is_hop_by_hop, line_end, list_elements, offset_in,
    push_decimal,
};
use crate::error::ProxyError;
use crate::request_id::RequestId;

/// Most header fields accepted in one request; more gets 431.
pub const MAX_HEADERS: usize = 100;
/// Longest request line accepted; longer gets 414 (nginx: 8 KiB buffers).
pub const MAX_REQUEST_LINE: usize = 8 * 1024;

/// The request method, as far as the proxy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// GET
    Get,
    /// HEAD: the response has no body whatever its headers say.
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
    /// OPTIONS
    Options,
    /// TRACE
    Trace,
    /// PATCH
    Patch,
    /// Any other token.
    Other,
}

impl Method {
    fn from_bytes(m: &[u8]) -> Method {
        match m {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }

    /// Idempotent methods (RFC 9110 §9.2.2) may be retried after a failure.
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Method::Get
                | Method::Head
                | Method::Put
                | Method::Delete
                | Method::Options
                | Method::Trace
        )
    }
}

/// What the proxy needs to know about a parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the buffer taken by the head (including leading empty lines).
    pub head_len: usize,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// The method.
    pub method: Method,
    /// Where the method is in the buffer (for logs).
    pub method_range: Range<usize>,
    /// Where the request target is in the buffer (for logs).
    pub target_range: Range<usize>,
    /// How the request body is framed (`UntilClose` never happens here).
    pub body: BodyFraming,
    /// The client allows the connection to stay open after the response.
    pub keep_alive: bool,
    /// The client asked for a protocol upgrade (forwarded as such).
    pub upgrade: bool,
    /// An HTTP/1.1 client sent `Expect: 100-continue` and waits before the
    /// body. Always false for HTTP/1.0, whose expectation is ignored (RFC
    /// 9110 §10.1.1).
    pub expect_continue: bool,
    /// The id sent as `X-Request-Id`: a trusted peer's, or the one made
    /// for this request ([`Forwarding::request_id`]).
    pub request_id: RequestId,
}

/// Parses the request head at the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some(head))` with the
/// forwarded head written to `out`, or the error to answer with. `fwd` says
/// who the peer is and how far it is believed (module docs).
pub fn parse(
    buf: &[u8],
    max_header_bytes: usize,
    fwd: &Forwarding<'_>,
    out: &mut Vec<u8>,
) -> Result<Option<RequestHead>, ProxyError> {
    let mut slots: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
        [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_REQUEST_LINE && !buf[..MAX_REQUEST_LINE].contains(&b'\n') {
                return Err(ProxyError::UriTooLong);
            }
            if buf.len() >= max_header_bytes {
                return Err(ProxyError::HeaderTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(ProxyError::HeaderTooLarge),
        Err(httparse::Error::Version) => {
            // "HTTP/2.0" and friends are well-formed but unsupported; junk
            // in the version position is a plain bad request.
            return Err(if looks_like_other_version(buf) {
                ProxyError::VersionNotSupported
            } else {
                ProxyError::BadRequest("malformed request line")
            });
        }
        Err(_) => return Err(ProxyError::BadRequest("malformed request head")),
    };
    if head_len > max_header_bytes {
        return Err(ProxyError::HeaderTooLarge);
    }
    let head = &buf[..head_len];
    if has_bare_lf(head) {
        return Err(ProxyError::BadRequest("bare LF line ending"));
    }
    // httparse guarantees these are set on Complete.
    let (Some(method_s), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(ProxyError::BadRequest("malformed request line"));
    };
    let method_start = offset_in(buf, method_s.as_bytes());
    let first_lf = line_end(buf, method_start);
    if first_lf - method_start > MAX_REQUEST_LINE {
        return Err(ProxyError::UriTooLong);
    }
    let method = Method::from_bytes(method_s.as_bytes());
    if method_s == "CONNECT" {
        return Err(ProxyError::NotImplemented("CONNECT"));
    }
    let headers = &*req.headers;

    // Pass 1: learn framing and connection options.
    let mut framing = FramingHeaders::default();
    let mut host_count = 0u32;
    let mut host_value: &[u8] = &[];
    let mut upgrade_other = false;
    let mut upgrade_h2c = false;
    let mut expect_continue = false;
    let mut request_id_count = 0u32;
    let mut request_id_value: &[u8] = &[];
    for h in headers {
        let name = h.name.as_bytes();
        let value = h.value;
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                host_count += 1;
                host_value = value;
            }
            6 if name.eq_ignore_ascii_case(b"expect")
                && super::trim_ows(value).eq_ignore_ascii_case(b"100-continue") =>
            {
                expect_continue = true;
            }
            7 if name.eq_ignore_ascii_case(b"upgrade") => {
                for proto in list_elements(value) {
                    if is_h2c(proto) {
                        upgrade_h2c = true;
                    } else {
                        upgrade_other = true;
                    }
                }
            }
            12 if name.eq_ignore_ascii_case(b"x-request-id") => {
                request_id_count += 1;
                request_id_value = super::trim_ows(value);
            }
            _ => {
                framing.observe(name, value, ProxyError::BadRequest)?;
                if framing.te_empty {
                    return Err(ProxyError::BadRequest("empty Transfer-Encoding"));
                }
            }
        }
    }
    // A forwarded HTTP/1.1 request must keep its Host, whatever the
    // client's Connection header names.
    framing
        .conn_tokens
        .retain(|t| !t.eq_ignore_ascii_case(b"host"));
    let conn_tokens = &framing.conn_tokens;

    let body = if framing.te_seen {
        if minor == 0 {
            return Err(ProxyError::BadRequest(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if framing.content_length.is_some() {
            return Err(ProxyError::BadRequest(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if !framing.chunked_is_final() {
            return Err(ProxyError::BadRequest(
                "chunked is not the final transfer coding",
            ));
        }
        if framing.te_other {
            return Err(ProxyError::NotImplemented(
                "transfer coding other than chunked",
            ));
        }
        BodyFraming::Chunked
    } else if let Some(n) = framing.content_length {
        BodyFraming::Length(n)
    } else {
        BodyFraming::None
    };
    if host_count > 1 || (minor == 1 && host_count == 0) {
        return Err(ProxyError::BadRequest(
            "a request needs exactly one Host header",
        ));
    }
    if host_count == 1 && !is_valid_host(super::trim_ows(host_value)) {
        return Err(ProxyError::BadRequest("invalid Host"));
    }
    let absolute = absolute_form(path.as_bytes())?;
    let keep_alive = framing.persistent(minor);
    // h2c is never offered to a backend (the h2c smuggling route): with no
    // other protocol left, the request is a plain one.
    let upgrade = minor == 1 && framing.conn_upgrade && upgrade_other && body == BodyFraming::None;

    // Pass 2: write the forwarded head from runs of the original lines.
    out.clear();
    out.reserve(head_len + 64);
    out.extend_from_slice(method_s.as_bytes());
    out.push(b' ');
    match absolute {
        Some(AbsoluteTarget { authority, rest }) => {
            if !rest.starts_with(b"/") {
                out.push(b'/');
            }
            out.extend_from_slice(rest);
            out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
            out.extend_from_slice(authority);
            out.extend_from_slice(b"\r\n");
        }
        None => {
            out.extend_from_slice(path.as_bytes());
            out.extend_from_slice(b" HTTP/1.1\r\n");
        }
    }
    copy_kept_lines(buf, headers, out, |h| {
        let name = h.name.as_bytes();
        if is_hop_by_hop(name) {
            upgrade && !upgrade_h2c && name.eq_ignore_ascii_case(b"upgrade")
        } else if absolute.is_some() && name.len() == 4 && name.eq_ignore_ascii_case(b"host") {
            false
        } else if is_forwarding_field(name) {
            // Written after the client's lines (module docs).
            false
        } else if expect_continue && name.eq_ignore_ascii_case(b"expect") {
            false
        } else {
            !name.contains(&b'_') && !conn_tokens.iter().any(|t| t.eq_ignore_ascii_case(name))
        }
    });
    if minor == 0 && host_count == 0 && absolute.is_none() {
        // A 1.1 request must carry Host; an empty one is valid when the
        // target has no authority (RFC 9112 §3.2).
        out.extend_from_slice(b"Host: \r\n");
    }
    match body {
        BodyFraming::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        BodyFraming::None | BodyFraming::UntilClose => {}
    }
    if upgrade {
        if upgrade_h2c {
            push_upgrade_without_h2c(out, headers);
        }
        out.extend_from_slice(b"Connection: upgrade\r\n");
    }
    let host = match absolute {
        Some(a) => a.authority,
        None => super::trim_ows(host_value),
    };
    let mut request_id = RequestId::default();
    let kept = fwd.trusted && request_id_count == 1 && request_id.set(request_id_value);
    if !kept {
        request_id.set(fwd.request_id);
    }
    push_forwarding_fields(out, headers, fwd, host, request_id.as_bytes());
    out.extend_from_slice(b"\r\n");

    Ok(Some(RequestHead {
        head_len,
        minor_version: minor,
        method,
        method_range: method_start..method_start + method_s.len(),
        target_range: {
            let s = offset_in(buf, path.as_bytes());
            s..s + path.len()
        },
        body,
        keep_alive,
        upgrade,
        expect_continue: expect_continue && body != BodyFraming::None && minor == 1,
        request_id,
    }))
}

/// The fields [`push_forwarding_fields`] writes; the client's lines of them
/// are never copied as they are.
fn is_forwarding_field(name: &[u8]) -> bool {
    match name.len() {
        9 => name.eq_ignore_ascii_case(b"forwarded"),
        12 => name.eq_ignore_ascii_case(b"x-request-id"),
        15 => name.eq_ignore_ascii_case(b"x-forwarded-for"),
        16 => name.eq_ignore_ascii_case(b"x-forwarded-host"),
        17 => name.eq_ignore_ascii_case(b"x-forwarded-proto"),
        _ => false,
    }
}

/// Writes the forwarding fields by the rules of the module docs: `host` is
/// the Host as received (or the absolute target's authority), `request_id`
/// the id decided on. Allocates nothing beyond `out`.
fn push_forwarding_fields(
    out: &mut Vec<u8>,
    headers: &[httparse::Header<'_>],
    fwd: &Forwarding<'_>,
    host: &[u8],
    request_id: &[u8],
) {
    let trusted = fwd.trusted;
    out.extend_from_slice(b"X-Forwarded-For: ");
    if trusted && push_values(out, headers, b"x-forwarded-for") {
        out.extend_from_slice(b", ");
    }
    push_ip(out, fwd.peer);
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: ");
    if !(trusted && push_values(out, headers, b"x-forwarded-proto")) {
        out.extend_from_slice(b"http");
    }
    out.extend_from_slice(b"\r\n");
    let mark = out.len();
    out.extend_from_slice(b"X-Forwarded-Host: ");
    if !(trusted && push_values(out, headers, b"x-forwarded-host")) {
        out.extend_from_slice(host);
    }
    if host.is_empty() && out.len() == mark + b"X-Forwarded-Host: ".len() {
        out.truncate(mark);
    } else {
        out.extend_from_slice(b"\r\n");
    }
    if fwd.forwarded || trusted {
        let mark = out.len();
        out.extend_from_slice(b"Forwarded: ");
        let incoming = trusted && push_values(out, headers, b"forwarded");
        if fwd.forwarded {
            if incoming {
                out.extend_from_slice(b", ");
            }
            push_forwarded_element(out, fwd.peer, host);
        } else if !incoming {
            out.truncate(mark);
        }
        if out.len() > mark {
            out.extend_from_slice(b"\r\n");
        }
    }
    if !request_id.is_empty() {
        out.extend_from_slice(b"X-Request-Id: ");
        out.extend_from_slice(request_id);
        out.extend_from_slice(b"\r\n");
    }
}

/// Writes the non-empty values of every `name` field (lowercase), trimmed
/// and joined with `, `; returns whether there was one.
fn push_values(out: &mut Vec<u8>, headers: &[httparse::Header<'_>], name: &[u8]) -> bool {
    let mut any = false;
    for h in headers {
        let value = super::trim_ows(h.value);
        if value.is_empty()
            || h.name.len() != name.len()
            || !h.name.as_bytes().eq_ignore_ascii_case(name)
        {
            continue;
        }
        if any {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(value);
        any = true;
    }
    any
}

/// True when the request at the start of `buf` (which [`parse`] may have
/// refused) has the method HEAD, so that even an error answer to it carries
/// no body (RFC 9110 §9.3.2). Leading empty lines are skipped as [`parse`]
/// skips them.
pub fn is_head(buf: &[u8]) -> bool {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    buf[start..].starts_with(b"HEAD ")
}

/// The size limits [`parse`] applies to an incomplete head, for callers that
/// skip parsing while no new line has arrived.
pub fn check_partial_limits(buf: &[u8], max_header_bytes: usize) -> Result<(), ProxyError> {
    if buf.len() > MAX_REQUEST_LINE && memchr::memchr(b'\n', &buf[..MAX_REQUEST_LINE]).is_none() {
        return Err(ProxyError::UriTooLong);
    }
    if buf.len() >= max_header_bytes {
        return Err(ProxyError::HeaderTooLarge);
    }
    Ok(())
}

/// True when `value` is a valid Host: `uri-host [":" port]` (RFC 9112 §3.2,
/// RFC 3986 §3.2.2), where uri-host is an IPv6 literal in brackets or a
/// non-empty reg-name (which covers IPv4 addresses) and port is at most
/// 65535. A `,` is refused although the reg-name grammar allows it: some
/// recipients read Host as a list, and no DNS name contains one.
fn is_valid_host(value: &[u8]) -> bool {
    let port = if let Some(rest) = value.strip_prefix(b"[") {
        let Some(close) = memchr::memchr(b']', rest) else {
            return false;
        };
        let is_ipv6 = std::str::from_utf8(&rest[..close])
            .is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok());
        if !is_ipv6 {
            return false;
        }
        match &rest[close + 1..] {
            [] => return true,
            [b':', port @ ..] => port,
            _ => return false,
        }
    } else {
        let (host, port) = match memchr::memchr(b':', value) {
            Some(i) => (&value[..i], Some(&value[i + 1..])),
            None => (value, None),
        };
        if !is_reg_name(host) {
            return false;
        }
        match port {
            Some(p) => p,
            None => return true,
        }
    };
    // RFC 3986 allows an empty port ("host:"): it means the default one.
    port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
        && port.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 65535
}

/// A non-empty reg-name: unreserved, pct-encoded and sub-delims but `,`.
fn is_reg_name(host: &[u8]) -> bool {
    let mut i = 0;
    while i < host.len() {
        match host[i] {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {}
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b';' | b'=' => {}
            b'%' if host.len() > i + 2
                && host[i + 1].is_ascii_hexdigit()
                && host[i + 2].is_ascii_hexdigit() =>
            {
                i += 2;
            }
            _ => return false,
        }
        i += 1;
    }
    !host.is_empty()
}

/// An `http` or `https` absolute-form target, split for forwarding.
#[derive(Clone, Copy)]
struct AbsoluteTarget<'b> {
    /// A valid Host (so no userinfo); it replaces the client's Host.
    authority: &'b [u8],
    /// Path and query, possibly empty; forwarded in origin form.
    rest: &'b [u8],
}

/// Classifies the request target (RFC 9112 §3.2): `None` for origin form
/// (`/...`) and asterisk form (`*`), forwarded as they are; `Some` for an
/// `http` or `https` absolute form. Anything else is a bad request.
fn absolute_form(target: &[u8]) -> Result<Option<AbsoluteTarget<'_>>, ProxyError> {
    if target.first() == Some(&b'/') || target == b"*" {
        return Ok(None);
    }
    let after_scheme = if starts_with_ignore_case(target, b"http://") {
        &target[7..]
    } else if starts_with_ignore_case(target, b"https://") {
        &target[8..]
    } else {
        return Err(ProxyError::BadRequest("unsupported request target form"));
    };
    let end = after_scheme
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(after_scheme.len());
    let (authority, rest) = after_scheme.split_at(end);
    if !is_valid_host(authority) {
        return Err(ProxyError::BadRequest(
            "invalid authority in request target",
        ));
    }
    Ok(Some(AbsoluteTarget { authority, rest }))
}

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// An upgrade protocol (`name[/version]`) naming HTTP/2 over cleartext.
fn is_h2c(proto: &[u8]) -> bool {
    let name = proto.split(|&b| b == b'/').next().unwrap_or(proto);
    name.eq_ignore_ascii_case(b"h2c")
}

/// Writes one `Upgrade` field with the client's protocols but `h2c`, in
/// order (the caller knows at least one other protocol is there).
fn push_upgrade_without_h2c(out: &mut Vec<u8>, headers: &[httparse::Header<'_>]) {
    out.extend_from_slice(b"Upgrade: ");
    let mut first = true;
    for h in headers {
        if h.name.len() != 7 || !h.name.eq_ignore_ascii_case("upgrade") {
            continue;
        }
        for proto in list_elements(h.value).filter(|p| !is_h2c(p)) {
            if !first {
                out.extend_from_slice(b", ");
            }
            first = false;
            out.extend_from_slice(proto);
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// True when the request line ends in a well-formed `HTTP/x.y` other than
/// 1.0/1.1 (with 1.0 or 1.1 there, the error is elsewhere in the line).
fn looks_like_other_version(buf: &[u8]) -> bool {
    let line_len = buf
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(buf.len());
    let line = &buf[..line_len];
    match line.rsplit(|&b| b == b' ').next() {
        Some([b'H', b'T', b'T', b'P', b'/', major, b'.', minor]) => {
            major.is_ascii_digit()
                && minor.is_ascii_digit()
                && !(*major == b'1' && matches!(minor, b'0' | b'1'))
        }
        Some([b'H', b'T', b'T', b'P', b'/', major]) => major.is_ascii_digit(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    /// The id the tests' connection made for the request.
    const ID: &[u8] = b"0123456789abcdef0123456789abcdef";
    /// A trusted peer at 127.0.0.1, `Forwarded` off.
    const FWD: Forwarding<'static> = Forwarding {
        peer: IP,
        trusted: true,
        forwarded: false,
        request_id: ID,
    };

    fn ok(raw: &[u8]) -> (RequestHead, String) {
        ok_with(raw, &FWD)
    }

    fn ok_with(raw: &[u8], fwd: &Forwarding<'_>) -> (RequestHead, String) {
        let mut out = Vec::new();
        let h = parse(raw, 65536, fwd, &mut out)
            .expect("valid")
            .expect("complete");
        (h, String::from_utf8(out).unwrap())
    }

    /// The forwarding fields written for a request to `host` from
    /// 127.0.0.1 that carried none, and the end of the head.
    fn tail(host: &str) -> String {
        let xfh = if host.is_empty() {
            String::new()
        } else {
            format!("X-Forwarded-Host: {host}\r\n")
        };
        format!(
            "X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n{xfh}X-Request-Id: {}\r\n\r\n",
            String::from_utf8_lossy(ID)
        )
    }

    fn status(raw: &[u8]) -> Option<u16> {
        let mut out = Vec::new();
        parse(raw, 65536, &FWD, &mut out)
            .err()
            .and_then(|e| e.status())
    }

    #[test]
    fn simple_get_is_forwarded_with_xff() {
        let (h, out) = ok(b"GET /a?b=c HTTP/1.1\r\nHost: example\r\nAccept: */*\r\n\r\n");
        assert_eq!(h.method, Method::Get);
        assert_eq!(h.body, BodyFraming::None);
        assert!(h.keep_alive);
        assert_eq!(
            out,
            format!(
                "GET /a?b=c HTTP/1.1\r\nHost: example\r\nAccept: */*\r\n{}",
                tail("example")
            )
        );
    }

    #[test]
    fn partial_needs_more() {
        let mut out = Vec::new();
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\n", 65536, &FWD, &mut out).unwrap(),
            None
        );
    }

    #[test]
    fn hop_by_hop_and_connection_tokens_are_dropped() {
        let (h, out) = ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Foo\r\nX-Foo: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Bar: 2\r\nProxy-Connection: x\r\nUpgrade: h2c\r\nX_Under: 1\r\n\r\n");
        assert!(!h.keep_alive);
        assert!(!h.upgrade);
        assert_eq!(
            out,
            format!("GET / HTTP/1.1\r\nHost: a\r\nX-Bar: 2\r\n{}", tail("a"))
        );
    }

    /// A peer outside `trusted_proxies`, `Forwarded` off.
    const UNTRUSTED: Forwarding<'static> = Forwarding {
        trusted: false,
        ..FWD
    };

    /// The value of the one `name` line of a forwarded head (`None`: no
    /// such line; two lines fail the test).
    fn field(out: &str, name: &str) -> Option<String> {
        let mut found = out
            .split("\r\n")
            .filter_map(|l| l.split_once(": "))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name));
        let first = found.next().map(|(_, v)| v.to_string());
        assert!(found.next().is_none(), "two {name} lines in {out:?}");
        first
    }

    #[test]
    fn xff_is_appended_from_a_trusted_peer_and_replaced_from_others() {
        let raw = b"GET / HTTP/1.1\r\nX-Forwarded-For: 10.0.0.1\r\nHost: a\r\nx-forwarded-for: 10.0.0.2\r\nX-Forwarded-For:\r\n\r\n";
        let (_, out) = ok(raw);
        assert_eq!(
            field(&out, "X-Forwarded-For").as_deref(),
            Some("10.0.0.1, 10.0.0.2, 127.0.0.1"),
            "{out}"
        );
        let (_, out) = ok_with(raw, &UNTRUSTED);
        assert_eq!(field(&out, "X-Forwarded-For").as_deref(), Some("127.0.0.1"));
        // An IPv6 peer is written plainly, as nginx does.
        let v6 = Forwarding {
            peer: "2001:db8::7".parse().unwrap(),
            ..UNTRUSTED
        };
        let (_, out) = ok_with(raw, &v6);
        assert_eq!(
            field(&out, "X-Forwarded-For").as_deref(),
            Some("2001:db8::7")
        );
        // The underscore spelling is dropped, whoever sends it.
        let (_, out) = ok(b"GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 6.6.6.6\r\n\r\n");
        assert!(!out.contains("6.6.6.6"), "{out}");
    }

    #[test]
    fn proto_and_host_are_kept_from_a_trusted_peer_and_replaced_from_others() {
        let raw = b"GET / HTTP/1.1\r\nHost: inner:8080\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: outer.example\r\nx-forwarded-host: second\r\n\r\n";
        let (_, out) = ok(raw);
        assert_eq!(field(&out, "X-Forwarded-Proto").as_deref(), Some("https"));
        assert_eq!(
            field(&out, "X-Forwarded-Host").as_deref(),
            Some("outer.example, second")
        );
        let (_, out) = ok_with(raw, &UNTRUSTED);
        assert_eq!(field(&out, "X-Forwarded-Proto").as_deref(), Some("http"));
        assert_eq!(
            field(&out, "X-Forwarded-Host").as_deref(),
            Some("inner:8080")
        );
        // Absent (or empty) from a trusted peer: ours.
        let (_, out) = ok(b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: \r\n\r\n");
        assert_eq!(field(&out, "X-Forwarded-Proto").as_deref(), Some("http"));
        assert_eq!(field(&out, "X-Forwarded-Host").as_deref(), Some("a"));
        // An absolute-form target's authority is the host.
        let (_, out) = ok_with(
            b"GET http://abs.example:81/x HTTP/1.1\r\nHost: h\r\n\r\n",
            &UNTRUSTED,
        );
        assert_eq!(
            field(&out, "X-Forwarded-Host").as_deref(),
            Some("abs.example:81")
        );
        // HTTP/1.0 without Host: no X-Forwarded-Host at all.
        let (_, out) = ok_with(b"GET / HTTP/1.0\r\n\r\n", &UNTRUSTED);
        assert_eq!(field(&out, "X-Forwarded-Host"), None, "{out}");
    }

    #[test]
    fn forwarded_is_written_only_when_on_and_believed_only_from_trusted_peers() {
        let raw = b"GET / HTTP/1.1\r\nHost: a.example:8080\r\nForwarded: for=192.0.2.1\r\nforwarded: for=192.0.2.2;proto=https\r\n\r\n";
        // Off: a trusted peer's passes through (merged), another's is dropped.
        let (_, out) = ok(raw);
        assert_eq!(
            field(&out, "Forwarded").as_deref(),
            Some("for=192.0.2.1, for=192.0.2.2;proto=https")
        );
        let (_, out) = ok_with(raw, &UNTRUSTED);
        assert_eq!(field(&out, "Forwarded"), None, "{out}");
        let (_, out) = ok(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(field(&out, "Forwarded"), None, "{out}");
        // On: our element appended (trusted) or alone (untrusted).
        let on = Forwarding {
            forwarded: true,
            ..FWD
        };
        let (_, out) = ok_with(raw, &on);
        assert_eq!(
            field(&out, "Forwarded").as_deref(),
            Some(
                "for=192.0.2.1, for=192.0.2.2;proto=https, for=127.0.0.1;host=\"a.example:8080\";proto=http"
            )
        );
        let on_untrusted = Forwarding {
            trusted: false,
            ..on
        };
        let (_, out) = ok_with(raw, &on_untrusted);
        assert_eq!(
            field(&out, "Forwarded").as_deref(),
            Some("for=127.0.0.1;host=\"a.example:8080\";proto=http")
        );
        // IPv6 peers are quoted and bracketed (RFC 7239 §6); no Host, no host=.
        let v6 = Forwarding {
            peer: "2001:db8::1".parse().unwrap(),
            ..on_untrusted
        };
        let (_, out) = ok_with(b"GET / HTTP/1.0\r\n\r\n", &v6);
        assert_eq!(
            field(&out, "Forwarded").as_deref(),
            Some("for=\"[2001:db8::1]\";proto=http")
        );
        let (_, out) = ok_with(b"GET / HTTP/1.1\r\nHost: plain\r\n\r\n", &v6);
        assert_eq!(
            field(&out, "Forwarded").as_deref(),
            Some("for=\"[2001:db8::1]\";host=plain;proto=http")
        );
    }

    #[test]
    fn request_id_is_kept_only_from_a_trusted_peer_and_only_when_acceptable() {
        let ours = String::from_utf8_lossy(ID).into_owned();
        // Absent: ours.
        let (h, out) = ok(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(field(&out, "X-Request-Id"), Some(ours.clone()));
        assert_eq!(h.request_id.as_bytes(), ID);
        // Trusted and acceptable: kept, whitespace trimmed.
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id:  edge-7f3a:{1} \r\n\r\n";
        let (h, out) = ok(raw);
        assert_eq!(
            field(&out, "X-Request-Id").as_deref(),
            Some("edge-7f3a:{1}")
        );
        assert_eq!(h.request_id.as_bytes(), b"edge-7f3a:{1}");
        // Untrusted: replaced.
        let (h, out) = ok_with(raw, &UNTRUSTED);
        assert_eq!(field(&out, "X-Request-Id"), Some(ours.clone()));
        assert_eq!(h.request_id.as_bytes(), ID);
        // Trusted but not acceptable: replaced.
        let long = "a".repeat(crate::request_id::MAX_REQUEST_ID + 1);
        for bad in [
            "GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: a b\r\n\r\n".to_string(),
            "GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: \r\n\r\n".to_string(),
            format!("GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: {long}\r\n\r\n"),
            "GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: one\r\nx-request-id: two\r\n\r\n"
                .to_string(),
        ] {
            let (h, out) = ok(bad.as_bytes());
            assert_eq!(field(&out, "X-Request-Id"), Some(ours.clone()), "{bad:?}");
            assert_eq!(h.request_id.as_bytes(), ID);
        }
        let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: caf\xc3\xa9\r\n\r\n".to_vec();
        let (h, _) = ok(&raw);
        assert_eq!(h.request_id.as_bytes(), ID, "non-ASCII is replaced");
        // The longest acceptable one is kept.
        raw = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: {}\r\n\r\n",
            &long[1..]
        )
        .into_bytes();
        let (h, _) = ok(&raw);
        assert_eq!(h.request_id.as_bytes(), &long.as_bytes()[1..]);
        // No id made (tests): no field.
        let none = Forwarding {
            request_id: b"",
            ..UNTRUSTED
        };
        let (_, out) = ok_with(
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: x\r\n\r\n",
            &none,
        );
        assert_eq!(field(&out, "X-Request-Id"), None, "{out}");
    }

    #[test]
    fn forwarding_fields_come_once_each_after_the_clients_lines() {
        let (_, out) = ok_with(
            b"GET / HTTP/1.1\r\nX-Request-Id: r\r\nHost: a\r\nForwarded: for=x\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: b\r\nZ: 1\r\n\r\n",
            &Forwarding {
                forwarded: true,
                ..UNTRUSTED
            },
        );
        assert_eq!(
            out,
            format!(
                "GET / HTTP/1.1\r\nHost: a\r\nZ: 1\r\nX-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\nForwarded: for=127.0.0.1;host=a;proto=http\r\nX-Request-Id: {}\r\n\r\n",
                String::from_utf8_lossy(ID)
            )
        );
    }

    #[test]
    fn framing() {
        let (h, out) = ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n");
        assert_eq!(h.body, BodyFraming::Length(5));
        assert!(out.contains("Content-Length: 5\r\n"));
        let (h, out) = ok(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(h.body, BodyFraming::Chunked);
        assert!(out.contains("Transfer-Encoding: chunked\r\n"));
    }

    #[test]
    fn smuggling_attempts_are_rejected() {
        let s = |r: &[u8]| status(r);
        assert_eq!(s(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"), Some(400));
        assert_eq!(
            s(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            s(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            s(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            s(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n"),
            Some(400)
        );
        assert_eq!(s(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"), Some(400));
        assert_eq!(
            s(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Some(501)
        );
        assert_eq!(
            s(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(400)
        );
        assert_eq!(s(b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n"), Some(400));
        assert_eq!(s(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"), Some(400));
        assert_eq!(
            s(b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n"),
            Some(400)
        );
        assert_eq!(s(b"GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n"), Some(400));
        assert_eq!(s(b"GET / HTTP/1.1\r\n\r\n"), Some(400));
        assert_eq!(
            s(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            s(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"),
            Some(400)
        );
        assert_eq!(s(b"GARBAGE\r\n\r\n"), Some(400));
        assert_eq!(s(b"GET / HTTP/2.0\r\n\r\n"), Some(505));
    }

    #[test]
    fn limits() {
        let mut big = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..101 {
            big.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        big.extend_from_slice(b"\r\n");
        assert_eq!(status(&big), Some(431));
        let mut long = b"GET /".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_REQUEST_LINE + 10));
        assert_eq!(status(&long), Some(414));
        let mut out = Vec::new();
        let mut huge = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 2000));
        assert!(matches!(
            parse(&huge, 1024, &FWD, &mut out),
            Err(ProxyError::HeaderTooLarge)
        ));
    }

    #[test]
    fn http10_gets_host_and_keep_alive_rules() {
        let (h, out) = ok(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!h.keep_alive);
        assert_eq!(out, format!("GET / HTTP/1.1\r\nHost: \r\n{}", tail("")));
        let (h, _) = ok(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(h.keep_alive);
    }

    #[test]
    fn upgrade_and_expect() {
        let (h, out) =
            ok(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert!(h.upgrade);
        assert!(out.contains("Upgrade: websocket\r\n") && out.contains("Connection: upgrade\r\n"));
        let (h, out) =
            ok(b"PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
        assert!(h.expect_continue);
        assert!(!out.contains("Expect"));
    }

    #[test]
    fn leading_empty_line_is_not_forwarded() {
        let (h, out) = ok(b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(out.starts_with("GET / HTTP/1.1\r\n"));
        assert_eq!(h.head_len, 29);
    }

    // ---- Property tests: generated valid heads (deterministic PRNG) ----

    use crate::http::test_rng::Rng;

    const TCHARS: &[u8] =
        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~";

    fn token(rng: &mut Rng, max: usize) -> String {
        let n = 1 + rng.below(max);
        (0..n).map(|_| *rng.pick(TCHARS) as char).collect()
    }

    /// A valid Host value: a reg-name or an IPv6 literal, maybe a port.
    fn host(rng: &mut Rng) -> String {
        const REG: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+;=";
        let name = if rng.chance(10) {
            rng.pick(&["[::1]", "[2001:db8::7]", "[::ffff:10.0.0.1]"])
                .to_string()
        } else {
            let n = 1 + rng.below(12);
            (0..n).map(|_| *rng.pick(REG) as char).collect()
        };
        if rng.chance(50) {
            format!("{name}:{}", rng.below(65536))
        } else {
            name
        }
    }

    /// A header value without leading/trailing whitespace: visible ASCII,
    /// interior spaces and tabs, obs-text.
    fn field_value(rng: &mut Rng) -> Vec<u8> {
        let n = rng.below(24);
        let mut v: Vec<u8> = (0..n)
            .map(|_| match rng.below(20) {
                0 => b' ',
                1 => b'\t',
                2 => 0x80 + rng.below(128) as u8,
                _ => 0x21 + rng.below(0x7e - 0x21 + 1) as u8,
            })
            .collect();
        while matches!(v.first(), Some(b' ' | b'\t')) {
            v.remove(0);
        }
        while matches!(v.last(), Some(b' ' | b'\t')) {
            v.pop();
        }
        v
    }

    /// A generated valid request head and what the forwarded head must be.
    struct Generated {
        raw: Vec<u8>,
        method: String,
        target: String,
        /// The target as forwarded (absolute form becomes origin form).
        fwd_target: String,
        body: BodyFraming,
        keep_alive: bool,
        upgrade: bool,
        /// The forwarded header fields in order (name as sent, trimmed value).
        forwarded: Vec<(String, Vec<u8>)>,
    }

    fn generate(rng: &mut Rng) -> Generated {
        let minor: u8 = if rng.chance(85) { 1 } else { 0 };
        let method = match rng.below(12) {
            0..=7 => rng
                .pick(&[
                    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH",
                ])
                .to_string(),
            _ => loop {
                let t = token(rng, 10);
                if t != "CONNECT" {
                    break t;
                }
            },
        };
        let mut authority: Option<String> = None;
        let target = match rng.below(10) {
            0 if method == "OPTIONS" => "*".to_string(),
            1 => {
                let a = host(rng);
                let t = format!("http://{a}/{}", token(rng, 8));
                authority = Some(a);
                t
            }
            _ => {
                const PATH: &[u8] =
                    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/?=&%.-_~!$'()*+,;:@";
                let n = rng.below(40);
                let mut t = String::from("/");
                t.extend((0..n).map(|_| *rng.pick(PATH) as char));
                t
            }
        };

        let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
        const NAMES: &[&str] = &[
            "Accept",
            "User-Agent",
            "Cookie",
            "X-Custom",
            "Cache-Control",
            "Authorization",
            "X-Drop-Me",
            "X_Under",
            "x-a_b",
            "Accept-Encoding",
            "Origin",
            "Referer",
        ];
        for _ in 0..rng.below(12) {
            let name = if rng.chance(60) {
                rng.pick(NAMES).to_string()
            } else {
                token(rng, 16)
            };
            let lower = name.to_ascii_lowercase();
            // Names with a meaning of their own are generated below.
            if [
                "host",
                "content-length",
                "transfer-encoding",
                "connection",
                "upgrade",
                "expect",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "forwarded",
                "x-request-id",
                "te",
                "trailer",
                "keep-alive",
                "proxy-connection",
                "http2-settings",
            ]
            .contains(&lower.as_str())
            {
                continue;
            }
            headers.push((name, field_value(rng)));
        }
        let host_count = if minor == 1 { 1 } else { rng.below(2) };
        for _ in 0..host_count {
            let host = host(rng);
            headers.push((
                rng.pick(&["Host", "host", "HOST"]).to_string(),
                host.into_bytes(),
            ));
        }
        for _ in 0..rng.below(3) {
            let v = if rng.chance(20) {
                Vec::new()
            } else {
                format!(
                    "10.{}.{}.{}",
                    rng.below(256),
                    rng.below(256),
                    rng.below(256)
                )
                .into_bytes()
            };
            headers.push((
                rng.pick(&["X-Forwarded-For", "x-forwarded-for"])
                    .to_string(),
                v,
            ));
        }
        let mut conn_tokens: Vec<String> = Vec::new();
        for _ in 0..rng.below(3) {
            let n = 1 + rng.below(3);
            let toks: Vec<String> = (0..n)
                .map(|_| {
                    rng.pick(&[
                        "close",
                        "keep-alive",
                        "Keep-Alive",
                        "upgrade",
                        "Upgrade",
                        "X-Drop-Me",
                        "Cookie",
                        "x-custom",
                    ])
                    .to_string()
                })
                .collect();
            let sep = *rng.pick(&[",", ", ", " ,", ",\t", " , "]);
            conn_tokens.extend(toks.iter().cloned());
            headers.push(("Connection".to_string(), toks.join(sep).into_bytes()));
        }
        let upgrade_present = rng.chance(15);
        if upgrade_present {
            headers.push(("Upgrade".to_string(), b"websocket".to_vec()));
        }
        for name in ["Keep-Alive", "TE", "Trailer", "Proxy-Connection"] {
            if rng.chance(8) {
                headers.push((name.to_string(), b"x".to_vec()));
            }
        }
        let body = match rng.below(3) {
            0 => BodyFraming::None,
            1 => {
                let n = rng.next() % 1_000_000;
                for _ in 0..1 + rng.below(2) {
                    let v = if rng.chance(20) {
                        format!("{n}, {n}")
                    } else {
                        n.to_string()
                    };
                    headers.push(("Content-Length".to_string(), v.into_bytes()));
                }
                BodyFraming::Length(n)
            }
            _ if minor == 1 => {
                let v = rng.pick(&["chunked", "Chunked", "CHUNKED", ", chunked"]);
                headers.push(("Transfer-Encoding".to_string(), v.as_bytes().to_vec()));
                BodyFraming::Chunked
            }
            _ => BodyFraming::None,
        };
        if rng.chance(10) {
            let v: &[u8] = if rng.chance(70) {
                b"100-continue"
            } else {
                b"other"
            };
            headers.push(("Expect".to_string(), v.to_vec()));
        }
        // Shuffle (Fisher-Yates).
        for i in (1..headers.len()).rev() {
            let j = rng.below(i + 1);
            headers.swap(i, j);
        }

        // The documented rewrite, as a model.
        let lc = |s: &str| s.to_ascii_lowercase();
        let special = ["close", "keep-alive", "upgrade"];
        let conn_close = conn_tokens.iter().any(|t| lc(t) == "close");
        let conn_keep = conn_tokens.iter().any(|t| lc(t) == "keep-alive");
        let conn_upgrade = conn_tokens.iter().any(|t| lc(t) == "upgrade");
        let dropped_by_conn: Vec<String> = conn_tokens
            .iter()
            .map(|t| lc(t))
            .filter(|t| !special.contains(&t.as_str()))
            .collect();
        let upgrade = minor == 1 && conn_upgrade && upgrade_present && body == BodyFraming::None;
        let expect_continue = headers
            .iter()
            .any(|(n, v)| lc(n) == "expect" && v.eq_ignore_ascii_case(b"100-continue"));
        let hop = [
            "connection",
            "keep-alive",
            "te",
            "trailer",
            "proxy-connection",
            "upgrade",
            "transfer-encoding",
            "content-length",
            "http2-settings",
        ];
        let mut forwarded: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(a) = &authority {
            forwarded.push(("Host".to_string(), a.clone().into_bytes()));
        }
        forwarded.extend(
            headers
                .iter()
                .filter(|(n, _)| {
                    let l = lc(n);
                    if authority.is_some() && l == "host" {
                        false
                    } else if hop.contains(&l.as_str()) {
                        upgrade && l == "upgrade"
                    } else if l == "x-forwarded-for" || (expect_continue && l == "expect") {
                        false
                    } else {
                        !l.contains('_') && !dropped_by_conn.contains(&l)
                    }
                })
                .cloned(),
        );
        if minor == 0 && host_count == 0 && authority.is_none() {
            forwarded.push(("Host".to_string(), Vec::new()));
        }
        match body {
            BodyFraming::Length(n) => {
                forwarded.push(("Content-Length".to_string(), n.to_string().into_bytes()))
            }
            BodyFraming::Chunked => {
                forwarded.push(("Transfer-Encoding".to_string(), b"chunked".to_vec()))
            }
            _ => {}
        }
        if upgrade {
            forwarded.push(("Connection".to_string(), b"upgrade".to_vec()));
        }
        let mut xff: Vec<Vec<u8>> = headers
            .iter()
            .filter(|(n, v)| lc(n) == "x-forwarded-for" && !v.is_empty())
            .map(|(_, v)| v.clone())
            .collect();
        xff.push(b"127.0.0.1".to_vec());
        forwarded.push(("X-Forwarded-For".to_string(), xff.join(&b", "[..])));
        forwarded.push(("X-Forwarded-Proto".to_string(), b"http".to_vec()));
        let host = headers
            .iter()
            .find(|(n, _)| lc(n) == "host")
            .map(|(_, v)| v.clone());
        if let Some(h) = authority.clone().map(String::into_bytes).or(host) {
            forwarded.push(("X-Forwarded-Host".to_string(), h));
        }
        forwarded.push(("X-Request-Id".to_string(), ID.to_vec()));

        // Serialise with optional whitespace around values.
        let mut raw = Vec::new();
        if rng.chance(5) {
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(format!("{method} {target} HTTP/1.{minor}\r\n").as_bytes());
        for (n, v) in &headers {
            raw.extend_from_slice(n.as_bytes());
            raw.push(b':');
            let ows: &[&[u8]] = &[b"", b" ", b"  ", b"\t"];
            let w = *rng.pick(ows);
            raw.extend_from_slice(w);
            raw.extend_from_slice(v);
            let ows: &[&[u8]] = &[b"", b"", b" ", b"\t "];
            let w = *rng.pick(ows);
            raw.extend_from_slice(w);
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"\r\n");
        let fwd_target = match &authority {
            Some(a) => target["http://".len() + a.len()..].to_string(),
            None => target.clone(),
        };
        Generated {
            raw,
            method,
            target,
            fwd_target,
            body,
            keep_alive: if minor == 1 {
                !conn_close
            } else {
                conn_keep && !conn_close
            },
            upgrade,
            forwarded,
        }
    }

    #[test]
    fn property_forwarded_head_reparses_to_the_documented_rewrite() {
        let mut rng = Rng(0x5eed_0001);
        for case in 0..5000 {
            let g = generate(&mut rng);
            let show = || String::from_utf8_lossy(&g.raw).into_owned();
            let mut out = Vec::new();
            let h = match parse(&g.raw, 65536, &FWD, &mut out) {
                Ok(Some(h)) => h,
                other => panic!("case {case}: {other:?} for {:?}", show()),
            };
            assert_eq!(h.head_len, g.raw.len(), "case {case}: {:?}", show());
            assert_eq!(h.body, g.body, "case {case}: {:?}", show());
            assert_eq!(h.keep_alive, g.keep_alive, "case {case}: {:?}", show());
            assert_eq!(h.upgrade, g.upgrade, "case {case}: {:?}", show());
            assert_eq!(&g.raw[h.method_range.clone()], g.method.as_bytes());
            assert_eq!(&g.raw[h.target_range.clone()], g.target.as_bytes());
            assert!(!has_bare_lf(&out), "case {case}: bare LF in {out:?}");

            // The forwarded head, parsed strictly by httparse.
            let mut slots = [httparse::EMPTY_HEADER; 128];
            let mut req = httparse::Request::new(&mut slots);
            let n = match req.parse(&out) {
                Ok(httparse::Status::Complete(n)) => n,
                other => panic!(
                    "case {case}: forwarded head {other:?}: {:?}",
                    String::from_utf8_lossy(&out)
                ),
            };
            assert_eq!(n, out.len(), "case {case}");
            assert_eq!(req.method, Some(g.method.as_str()));
            assert_eq!(req.path, Some(g.fwd_target.as_str()));
            assert_eq!(req.version, Some(1));
            let got: Vec<(String, Vec<u8>)> = req
                .headers
                .iter()
                .map(|h| (h.name.to_string(), h.value.to_vec()))
                .collect();
            assert_eq!(
                got,
                g.forwarded,
                "case {case}: input {:?}\nforwarded {:?}",
                show(),
                String::from_utf8_lossy(&out)
            );

            // Forwarding the forwarded head again changes only X-Forwarded-For
            // (an HTTP/1.0 request without Host is forwarded with an empty
            // one, which ekilibri refuses from a client, as nginx does).
            let empty_host = g.forwarded.iter().any(|(n, v)| n == "Host" && v.is_empty());
            let mut again = Vec::new();
            match parse(&out, 65536, &FWD, &mut again) {
                Ok(Some(h2)) => {
                    assert!(!empty_host, "case {case}: empty Host accepted");
                    assert_eq!(h2.body, h.body);
                    assert_eq!(h2.method, h.method);
                    assert_eq!(h2.upgrade, h.upgrade);
                    // From a trusted peer, only the peer is appended to
                    // X-Forwarded-For; the other fields are kept.
                    let xff = |v: &[u8]| {
                        let s = memchr::memmem::find(v, b"\r\nX-Forwarded-For: ").expect("xff");
                        let e = s + memchr::memmem::find(&v[s + 2..], b"\r\n").expect("eol") + 2;
                        (v[..s].to_vec(), v[s..e].to_vec(), v[e..].to_vec())
                    };
                    let (before, line, after) = xff(&out);
                    assert_eq!(
                        xff(&again),
                        (before, [&line[..], b", 127.0.0.1"].concat(), after),
                        "case {case}"
                    );
                }
                Err(ProxyError::BadRequest("invalid Host")) if empty_host => {}
                other => panic!("case {case}: re-parse: {other:?}"),
            }

            // Every proper prefix asks for more bytes (sampled).
            if case % 10 == 0 {
                for cut in 0..g.raw.len() {
                    let mut o = Vec::new();
                    assert!(
                        matches!(parse(&g.raw[..cut], 65536, &FWD, &mut o), Ok(None)),
                        "case {case}: prefix of {cut} bytes of {:?}",
                        show()
                    );
                }
            }
        }
    }

    #[test]
    fn host_must_be_uri_host_and_port() {
        for good in [
            &b"a"[..],
            b"good.example",
            b"good.example:8080",
            b"good.example:",
            b"127.0.0.1:65535",
            b"[::1]",
            b"[::1]:80",
            b"[::ffff:10.0.0.1]",
            b"a%41b",
            b"x_y.example",
            b"!$&'()*+;=~",
        ] {
            assert!(is_valid_host(good), "{:?}", String::from_utf8_lossy(good));
        }
        for bad in [
            &b""[..],
            b"a b",
            b"a, b",
            b"a,b",
            b"user@evil.example",
            b"good.example/../x",
            b"a\\b",
            b":80",
            b"a:65536",
            b"a:123456",
            b"a:8x",
            b"a:-1",
            b"[::1",
            b"[::1]x",
            b"[v1.x]",
            b"[1.2.3.4]",
            b"a%4",
            b"a%zz",
            b"a\x80",
        ] {
            assert!(!is_valid_host(bad), "{:?}", String::from_utf8_lossy(bad));
            let raw = [&b"GET / HTTP/1.1\r\nHost: "[..], bad, b"\r\n\r\n"].concat();
            assert_eq!(
                status(&raw),
                Some(400),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn absolute_form_becomes_origin_form_with_its_authority_as_host() {
        let (_, out) =
            ok(b"GET http://evil.example/x?y HTTP/1.1\r\nA: 1\r\nHost: good\r\nB: 2\r\n\r\n");
        assert_eq!(
            out,
            format!(
                "GET /x?y HTTP/1.1\r\nHost: evil.example\r\nA: 1\r\nB: 2\r\n{}",
                tail("evil.example")
            )
        );
        let (_, out) = ok(b"GET HTTPS://a:1?q HTTP/1.0\r\n\r\n");
        assert_eq!(
            out,
            format!("GET /?q HTTP/1.1\r\nHost: a:1\r\n{}", tail("a:1"))
        );
        let (_, out) = ok(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(
            out.starts_with("OPTIONS * HTTP/1.1\r\nHost: a\r\n"),
            "{out}"
        );
        for bad in [
            &b"GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(status(bad), Some(400), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn h2c_is_removed_from_upgrades() {
        let (h, out) = ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AA\r\n\r\n");
        assert!(!h.upgrade);
        assert_eq!(out, format!("GET / HTTP/1.1\r\nHost: a\r\n{}", tail("a")));
        let (h, out) = ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: H2C, websocket\r\nUpgrade: h2c/1, x/2\r\n\r\n");
        assert!(h.upgrade);
        assert_eq!(
            out,
            format!(
                "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket, x/2\r\nConnection: upgrade\r\n{}",
                tail("a")
            )
        );
    }

    #[test]
    fn head_requests_are_recognised_before_parsing() {
        assert!(is_head(b"HEAD / HTTP/1.1\r\nHost: a b\r\n\r\n"));
        assert!(is_head(b"\r\nHEAD /"));
        assert!(!is_head(b"HEADER / HTTP/1.1\r\n"));
        assert!(!is_head(b"GET / HTTP/1.1\r\n"));
        assert!(!is_head(b"head / HTTP/1.1\r\n"));
        assert!(!is_head(b""));
    }

    #[test]
    fn http10_expectation_is_ignored() {
        let (h, out) = ok(b"PUT /x HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
        assert!(!h.expect_continue);
        assert!(!out.contains("Expect"), "{out}");
    }

    #[test]
    fn doubled_space_in_request_line_is_a_bad_request() {
        assert_eq!(status(b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n"), Some(400));
        assert_eq!(status(b"GET /  HTTP/1.1\r\nHost: a\r\n\r\n"), Some(400));
        assert_eq!(status(b"GET /  HTTP/1.0\r\n\r\n"), Some(400));
        assert_eq!(status(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n"), Some(505));
    }

    /// RFC 9110 §7.6.1 has proxies drop the fields a `Connection` header
    /// names, but a forwarded HTTP/1.1 request must still carry Host.
    #[test]
    fn connection_option_cannot_strip_host() {
        let (_, out) = ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: host\r\n\r\n");
        assert!(out.contains("\r\nHost: a\r\n"), "{out:?}");
    }
}
