//! HTTP/1.1 message heads and bodies, as the proxy sees them.
//!
//! - [`request`]: parse a client's request head with httparse, apply the
//!   checks httparse leaves to us (framing, smuggling, bare LF), and build the
//!   head forwarded to the backend from slices of the read buffer.
//! - [`response`]: the same for a backend's response head.
//! - [`forwarded`]: what the request rewrite needs to set the forwarding
//!   fields (peer, trust, request id), and how their values are spelled.
//! - `framing`: the one scan of `Content-Length`, `Transfer-Encoding` and
//!   `Connection` fields that both head parsers use.
//! - [`chunked`]: a strict, streaming chunked-coding decoder that re-emits
//!   the body in canonical form (or decoded, for HTTP/1.0 clients).
//! - [`canned`]: the small responses the balancer writes itself.
//! - [`status`]: the one table of status reason phrases, shared by the
//!   canned responses, the admin API and the test backend.
//!
//! Nothing here does I/O: the functions take bytes and return decisions, so
//! they are unit-tested, fuzzed and benchmarked on their own.

pub mod canned;
pub mod chunked;
pub mod forwarded;
mod framing;
pub mod request;
pub mod response;
pub mod status;

/// How a message body is delimited (RFC 9112 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body at all.
    None,
    /// Exactly this many bytes follow the head.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// The body runs until the sender closes (responses only).
    UntilClose,
}

/// Headers that describe one connection rather than the message; a proxy
/// never forwards them (RFC 9110 §7.6.1). `transfer-encoding` and
/// `content-length` are re-emitted by us in canonical form instead.
/// `http2-settings` only means something with an `h2c` upgrade, which is
/// never forwarded (RFC 9113 §3.1 leaves h2c upgrades deprecated).
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 9] = [
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"proxy-connection",
        b"upgrade",
        b"transfer-encoding",
        b"content-length",
        b"http2-settings",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Iterates the comma-separated elements of a header value, trimmed of
/// optional whitespace, skipping empty elements (RFC 9110 §5.6.1).
pub(crate) fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

/// Strips spaces and tabs at both ends.
pub(crate) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Byte offset of `inner` inside `outer`, both slices of the same buffer.
#[inline]
pub(crate) fn offset_in(outer: &[u8], inner: &[u8]) -> usize {
    inner.as_ptr() as usize - outer.as_ptr() as usize
}

/// End (exclusive, after the LF) of the line containing `pos`.
#[inline]
pub(crate) fn line_end(buf: &[u8], pos: usize) -> usize {
    match memchr::memchr(b'\n', &buf[pos..]) {
        Some(i) => pos + i + 1,
        None => buf.len(),
    }
}

/// Appends the header lines of `buf` that `keep` accepts to `out`, copying
/// runs of consecutive kept lines with one copy each (the original bytes,
/// line endings included). `headers` are httparse's slices into `buf`.
pub(crate) fn copy_kept_lines<'b>(
    buf: &[u8],
    headers: &[httparse::Header<'b>],
    out: &mut Vec<u8>,
    mut keep: impl FnMut(&httparse::Header<'b>) -> bool,
) {
    let mut run: Option<std::ops::Range<usize>> = None;
    for h in headers {
        let name = h.name.as_bytes();
        let start = offset_in(buf, name);
        let end = line_end(buf, start + name.len());
        if keep(h) {
            match &mut run {
                Some(r) if r.end == start => r.end = end,
                r => {
                    if let Some(prev) = r.replace(start..end) {
                        out.extend_from_slice(&buf[prev]);
                    }
                }
            }
        } else if let Some(prev) = run.take() {
            out.extend_from_slice(&buf[prev]);
        }
    }
    if let Some(prev) = run {
        out.extend_from_slice(&buf[prev]);
    }
}

/// True when every LF in `head` is preceded by CR. httparse accepts bare LF
/// line endings; a proxy that does not reject them can disagree with the
/// backend on where the head ends.
pub(crate) fn has_bare_lf(head: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r')
}

/// Appends a decimal number without going through `fmt`.
pub(crate) fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// The deterministic generator the property tests of this module share.
#[cfg(test)]
pub(crate) mod test_rng {
    /// splitmix64: small, deterministic, good enough to drive generators.
    pub(crate) struct Rng(pub(crate) u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
        pub(crate) fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }
        pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
        pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_lf_is_found() {
        assert!(!has_bare_lf(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(has_bare_lf(b"GET / HTTP/1.1\nHost: a\r\n\r\n"));
        assert!(has_bare_lf(b"GET / HTTP/1.1\r\nHost: a\r\n\n"));
    }

    #[test]
    fn decimal() {
        let mut v = Vec::new();
        push_decimal(&mut v, 0);
        v.push(b' ');
        push_decimal(&mut v, 1234567890);
        assert_eq!(v, b"0 1234567890");
    }

    #[test]
    fn list_elements_skip_empties() {
        let v: Vec<&[u8]> = list_elements(b" gzip ,, chunked").collect();
        assert_eq!(v, vec![&b"gzip"[..], &b"chunked"[..]]);
    }
}

/// The `Host` value and the path (before any query) of a forwarded request
/// head, as this balancer writes it: origin form on the request line, the
/// header names as the client sent them. No allocation; `None` for a head
/// without `Host` (HTTP/1.0).
pub fn host_and_path(head: &[u8]) -> (Option<&[u8]>, &[u8]) {
    let mut lines = head.split(|&b| b == b'\n');
    let first = lines.next().unwrap_or_default();
    let target = first.split(|&b| b == b' ').nth(1).unwrap_or_default();
    let path = match target.iter().position(|&b| b == b'?') {
        Some(q) => &target[..q],
        None => target,
    };
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line.len() > 5 && line[4] == b':' && line[..4].eq_ignore_ascii_case(b"host") {
            return (Some(line[5..].trim_ascii()), path);
        }
    }
    (None, path)
}
