//! What the request-head writer needs to set the forwarding headers, and
//! how their values are spelled.
//!
//! [`Forwarding`] is the one parameter the connection hands to
//! [`super::request::parse`]: the client's address, whether that peer is a
//! trusted proxy, whether the RFC 7239 `Forwarded` header is on, and the id
//! made for this request. The rules (which incoming field is kept, merged or
//! replaced) live with the rewrite in [`super::request`]; this module only
//! writes values: an IP address as `X-Forwarded-For` has it, and a
//! `Forwarded` element (RFC 7239 §4, §6) with its quoting.

use std::net::IpAddr;

use super::push_decimal;

/// The forwarding facts of one request, for [`super::request::parse`].
#[derive(Debug, Clone, Copy)]
pub struct Forwarding<'a> {
    /// The client's address (the TCP peer).
    pub peer: IpAddr,
    /// The peer is in `trusted_proxies`: its `X-Forwarded-*`, `Forwarded`
    /// and `X-Request-Id` fields are believed (kept or appended to) rather
    /// than replaced.
    pub trusted: bool,
    /// Add an RFC 7239 `Forwarded` element (`forwarded = true`).
    pub forwarded: bool,
    /// The id made for this request; sent unless a trusted peer sent an
    /// acceptable one. Empty: no `X-Request-Id` is written (tests).
    pub request_id: &'a [u8],
}

/// Writes `ip` as `X-Forwarded-For` carries it (`192.0.2.1`, `2001:db8::1`).
pub fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, b) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_decimal(out, u64::from(*b));
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{v6}");
        }
    }
}

/// Writes ekilibri's `Forwarded` element (RFC 7239 §4):
/// `for=<peer>;host=<host>;proto=http`. An IPv6 peer is bracketed and
/// quoted (`for="[2001:db8::1]"`, §6); `host` is left out when empty and
/// quoted when it is not a token (a port's `:`, an IPv6 literal).
pub fn push_forwarded_element(out: &mut Vec<u8>, peer: IpAddr, host: &[u8]) {
    out.extend_from_slice(b"for=");
    match peer {
        IpAddr::V4(_) => push_ip(out, peer),
        IpAddr::V6(_) => {
            out.extend_from_slice(b"\"[");
            push_ip(out, peer);
            out.extend_from_slice(b"]\"");
        }
    }
    if !host.is_empty() {
        out.extend_from_slice(b";host=");
        push_param_value(out, host);
    }
    out.extend_from_slice(b";proto=http");
}

/// Writes a `Forwarded` parameter value: as is when it is a token, else as
/// a quoted-string (`"` and `\` escaped).
fn push_param_value(out: &mut Vec<u8>, v: &[u8]) {
    if v.iter().all(|&b| is_tchar(b)) {
        out.extend_from_slice(v);
        return;
    }
    out.push(b'"');
    for &b in v {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// A token character (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(peer: &str, host: &[u8]) -> String {
        let mut out = Vec::new();
        push_forwarded_element(&mut out, peer.parse().unwrap(), host);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn forwarded_element_quotes_per_rfc7239() {
        assert_eq!(
            element("192.0.2.60", b"example.com"),
            "for=192.0.2.60;host=example.com;proto=http"
        );
        assert_eq!(
            element("2001:db8:cafe::17", b"example.com:8080"),
            "for=\"[2001:db8:cafe::17]\";host=\"example.com:8080\";proto=http"
        );
        assert_eq!(
            element("::1", b"[::1]:80"),
            "for=\"[::1]\";host=\"[::1]:80\";proto=http"
        );
        assert_eq!(element("10.0.0.1", b""), "for=10.0.0.1;proto=http");
        assert_eq!(
            element("10.0.0.1", b"a(b)=c"),
            "for=10.0.0.1;host=\"a(b)=c\";proto=http"
        );
        let mut out = Vec::new();
        push_param_value(&mut out, b"a\"b\\c");
        assert_eq!(out, b"\"a\\\"b\\\\c\"");
    }

    #[test]
    fn ips_as_x_forwarded_for_writes_them() {
        let mut out = Vec::new();
        push_ip(&mut out, "203.0.113.9".parse().unwrap());
        out.push(b' ');
        push_ip(&mut out, "2001:db8::1".parse().unwrap());
        assert_eq!(out, b"203.0.113.9 2001:db8::1");
    }
}
