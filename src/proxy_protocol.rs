//! HAProxy PROXY protocol, versions 1 (text) and 2 (binary): parse the
//! header a downstream proxy puts at the start of a connection, and write
//! one for an upstream that expects it.
//!
//! Owns the wire format only: the pure [`parse`] over the first bytes of a
//! connection and the [`write_v1`] / [`write_v2`] encoders. It does not own
//! reading from sockets, deciding which peers may send a header (see
//! [`crate::cidr`]), or what the request path does with the addresses.
//!
//! Decisions where the specification leaves room:
//!
//! - Parsing is strict: v1 takes single spaces, addresses that parse and
//!   match the announced family, and decimal ports 0-65535 without leading
//!   zeros; v2 takes only the address family/transport bytes the
//!   specification defines.
//! - No addresses ([`Header::addresses`] is `None`, use the connection's own
//!   peer) for v1 `UNKNOWN` (whatever follows it up to CRLF is ignored, as
//!   the specification asks), v2 `LOCAL` (the whole block is discarded,
//!   family included), v2 `UNSPEC` and v2 `UNIX` families.
//! - v2 over UDP (`DGRAM` with `INET`/`INET6`) is [`Error::V2Datagram`]: the
//!   balancer only carries TCP, so such a header is a misconfigured sender.
//! - v2 TLVs are walked to check that their lengths tile the rest of the
//!   block exactly, then skipped (a `CRC32C` TLV is not verified).
//! - v2 blocks longer than [`MAX_V2_LEN`] are refused, so a header never
//!   needs more than 16 + 1024 bytes of buffer.
//! - Addresses are returned as sent: a v4-mapped IPv6 address stays IPv6
//!   (`IpAddr::to_canonical` turns it back into IPv4).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v1 signature, including the space that follows it.
const V1_PREFIX: &[u8] = b"PROXY ";

/// Longest v1 header the specification allows, CRLF included
/// (`PROXY UNKNOWN` plus two full IPv6 addresses and ports).
pub const V1_MAX_LEN: usize = 107;

/// The 12-byte v2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Fixed part of a v2 header: signature, version/command, family/transport
/// and the 16-bit length of what follows.
pub const V2_FIXED_LEN: usize = 16;

/// Largest v2 address-plus-TLV block accepted. The specification allows
/// 65 535 bytes; 1 KiB holds both IPv6 addresses (36 bytes) and the TLVs
/// real senders attach (AWS/GCP endpoint ids, ALPN, authority, TLS
/// summaries) while bounding the buffer a header may occupy.
pub const MAX_V2_LEN: usize = 1024;

/// v2 address block sizes, per family.
const V2_INET_LEN: usize = 12;
const V2_INET6_LEN: usize = 36;
const V2_UNIX_LEN: usize = 216;

/// Which version of the protocol a header was sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The human-readable text header (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary header starting with [`V2_SIGNATURE`].
    V2,
}

/// The original endpoints a downstream proxy reports for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// The client, as seen by the downstream proxy.
    pub source: SocketAddr,
    /// The address the client connected to on the downstream proxy.
    pub destination: SocketAddr,
}

/// A complete, valid PROXY protocol header at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Bytes the header occupies at the start of the buffer; what follows
    /// belongs to the proxied stream (the HTTP request).
    pub header_len: usize,
    /// The version the header was sent in.
    pub version: Version,
    /// The reported endpoints, or `None` when the header carries none that
    /// apply (v1 `UNKNOWN`, v2 `LOCAL`, `UNSPEC` or `UNIX`): the connection's
    /// own peer address is then the client.
    pub addresses: Option<Addresses>,
}

impl Header {
    /// The reported client address, if any.
    pub fn source(&self) -> Option<SocketAddr> {
        self.addresses.map(|a| a.source)
    }

    /// The reported destination address, if any.
    pub fn destination(&self) -> Option<SocketAddr> {
        self.addresses.map(|a| a.destination)
    }
}

/// Why the start of a buffer is not a valid PROXY protocol header. The
/// connection should be closed: no byte of it can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The first bytes are neither a v1 nor a v2 signature.
    #[error("not a PROXY protocol header")]
    BadSignature,
    /// No CRLF within the first [`V1_MAX_LEN`] bytes.
    #[error("PROXY v1 header longer than {V1_MAX_LEN} bytes")]
    V1TooLong,
    /// The v1 line does not follow the grammar; the reason says where.
    #[error("malformed PROXY v1 header: {0}")]
    V1Malformed(&'static str),
    /// The v2 version nibble is not 2.
    #[error("PROXY v2 header with version {0}")]
    V2BadVersion(u8),
    /// The v2 command nibble is neither LOCAL (0) nor PROXY (1).
    #[error("PROXY v2 header with command {0}")]
    V2BadCommand(u8),
    /// The v2 family/transport byte is not one the specification defines.
    #[error("PROXY v2 header with address family/transport byte {0:#04x}")]
    V2BadFamily(u8),
    /// A v2 PROXY header for a UDP connection.
    #[error("PROXY v2 header for a datagram (UDP) connection")]
    V2Datagram,
    /// The v2 block length exceeds [`MAX_V2_LEN`].
    #[error("PROXY v2 block of {0} bytes (limit {MAX_V2_LEN})")]
    V2TooLong(usize),
    /// The v2 block is shorter than the addresses its family needs.
    #[error("PROXY v2 block of {len} bytes is shorter than its {need}-byte addresses")]
    V2ShortAddresses {
        /// The block length the header announces.
        len: usize,
        /// The address size of the announced family.
        need: usize,
    },
    /// A v2 TLV runs past the end of the block.
    #[error("PROXY v2 TLV runs past the end of the header")]
    V2BadTlv,
}

/// Parses a PROXY protocol header at the start of `buf`, the first bytes
/// received on a connection.
///
/// Returns `Ok(None)` while `buf` is a valid beginning of a header that
/// needs more bytes (at most [`V1_MAX_LEN`] for v1, [`V2_FIXED_LEN`] +
/// [`MAX_V2_LEN`] for v2), `Ok(Some(header))` once a whole header is there
/// (bytes after `header.header_len` are untouched), and `Err` as soon as
/// the bytes cannot start a valid header.
pub fn parse(buf: &[u8]) -> Result<Option<Header>, Error> {
    match buf.first() {
        None => Ok(None),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(Error::BadSignature),
    }
}

/// `true` when `buf` and `prefix` agree on their common length.
fn agrees(buf: &[u8], prefix: &[u8]) -> bool {
    let n = buf.len().min(prefix.len());
    buf[..n] == prefix[..n]
}

fn parse_v1(buf: &[u8]) -> Result<Option<Header>, Error> {
    if !agrees(buf, V1_PREFIX) {
        return Err(Error::BadSignature);
    }
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(lf) = memchr::memchr(b'\n', window) else {
        // Fail early on what can never become a header.
        if let Some(rest) = window.get(V1_PREFIX.len()..)
            && !["TCP4 ", "TCP6 ", "UNKNOWN ", "UNKNOWN\r"]
                .iter()
                .any(|p| agrees(rest, p.as_bytes()))
        {
            return Err(Error::V1Malformed("unknown protocol"));
        }
        if let Some(cr) = memchr::memchr(b'\r', window)
            && cr + 1 < window.len()
        {
            return Err(Error::V1Malformed("CR not followed by LF"));
        }
        return if buf.len() >= V1_MAX_LEN {
            Err(Error::V1TooLong)
        } else {
            Ok(None)
        };
    };
    if lf == 0 || window[lf - 1] != b'\r' {
        return Err(Error::V1Malformed("LF not preceded by CR"));
    }
    // As while incomplete: a CR anywhere else is refused, so that no
    // prefix of an accepted header is refused.
    if memchr::memchr(b'\r', &window[..lf - 1]).is_some() {
        return Err(Error::V1Malformed("CR not followed by LF"));
    }
    // The line between "PROXY " and CRLF; the prefix check above guarantees
    // the line is at least that long once an LF is found after it.
    let line = window
        .get(V1_PREFIX.len()..lf - 1)
        .ok_or(Error::V1Malformed("truncated signature"))?;
    let addresses = parse_v1_line(line)?;
    Ok(Some(Header {
        header_len: lf + 1,
        version: Version::V1,
        addresses,
    }))
}

/// Parses what follows `PROXY ` up to (not including) CRLF.
fn parse_v1_line(line: &[u8]) -> Result<Option<Addresses>, Error> {
    if let Some(rest) = line.strip_prefix(b"UNKNOWN") {
        // The specification asks receivers to ignore the rest of the line.
        return if rest.is_empty() || rest[0] == b' ' {
            Ok(None)
        } else {
            Err(Error::V1Malformed("unknown protocol"))
        };
    }
    let mut fields = line.split(|&b| b == b' ');
    let v6 = match fields.next() {
        Some(b"TCP4") => false,
        Some(b"TCP6") => true,
        _ => return Err(Error::V1Malformed("unknown protocol")),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(Error::V1Malformed("expected 4 fields after the protocol"));
    };
    let src = parse_v1_ip(src, v6)?;
    let dst = parse_v1_ip(dst, v6)?;
    let sport = parse_v1_port(sport)?;
    let dport = parse_v1_port(dport)?;
    Ok(Some(Addresses {
        source: SocketAddr::new(src, sport),
        destination: SocketAddr::new(dst, dport),
    }))
}

fn parse_v1_ip(field: &[u8], v6: bool) -> Result<IpAddr, Error> {
    let s = std::str::from_utf8(field).map_err(|_| Error::V1Malformed("non-ASCII address"))?;
    if v6 {
        s.parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| Error::V1Malformed("bad TCP6 address"))
    } else {
        s.parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| Error::V1Malformed("bad TCP4 address"))
    }
}

fn parse_v1_port(field: &[u8]) -> Result<u16, Error> {
    let bad = Error::V1Malformed("bad port");
    if field.is_empty() || field.len() > 5 || (field.len() > 1 && field[0] == b'0') {
        return Err(bad);
    }
    let mut n: u32 = 0;
    for &b in field {
        if !b.is_ascii_digit() {
            return Err(bad);
        }
        n = n * 10 + u32::from(b - b'0');
    }
    u16::try_from(n).map_err(|_| bad)
}

fn parse_v2(buf: &[u8]) -> Result<Option<Header>, Error> {
    if !agrees(buf, &V2_SIGNATURE) {
        return Err(Error::BadSignature);
    }
    let Some(fixed) = buf.get(..V2_FIXED_LEN) else {
        // Check the version/command byte as soon as it is there.
        if let Some(&vc) = buf.get(12) {
            check_version_command(vc)?;
        }
        return Ok(None);
    };
    let local = check_version_command(fixed[12])?;
    let family = fixed[13];
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > MAX_V2_LEN {
        return Err(Error::V2TooLong(len));
    }
    // Which addresses the block starts with, if the header is to be used.
    let need = if local {
        None
    } else {
        match family {
            0x00 => None,
            0x11 => Some(V2_INET_LEN),
            0x21 => Some(V2_INET6_LEN),
            0x31 | 0x32 => Some(V2_UNIX_LEN),
            0x12 | 0x22 => return Err(Error::V2Datagram),
            other => return Err(Error::V2BadFamily(other)),
        }
    };
    if let Some(need) = need
        && len < need
    {
        return Err(Error::V2ShortAddresses { len, need });
    }
    let header_len = V2_FIXED_LEN + len;
    let Some(block) = buf.get(V2_FIXED_LEN..header_len) else {
        return Ok(None);
    };
    let addresses = match need {
        None => None,
        Some(need) => {
            check_tlvs(&block[need..])?;
            v2_addresses(family, block)
        }
    };
    Ok(Some(Header {
        header_len,
        version: Version::V2,
        addresses,
    }))
}

/// Checks the v2 version/command byte; `true` for LOCAL, `false` for PROXY.
fn check_version_command(vc: u8) -> Result<bool, Error> {
    if vc >> 4 != 2 {
        return Err(Error::V2BadVersion(vc >> 4));
    }
    match vc & 0x0f {
        0 => Ok(true),
        1 => Ok(false),
        other => Err(Error::V2BadCommand(other)),
    }
}

/// Walks the TLVs after the addresses: each is a type byte, a 16-bit
/// big-endian length and that many bytes, and together they fill `tlvs`.
fn check_tlvs(mut tlvs: &[u8]) -> Result<(), Error> {
    while !tlvs.is_empty() {
        let [_, hi, lo, ..] = *tlvs else {
            return Err(Error::V2BadTlv);
        };
        let end = 3 + usize::from(u16::from_be_bytes([hi, lo]));
        tlvs = tlvs.get(end..).ok_or(Error::V2BadTlv)?;
    }
    Ok(())
}

/// Reads the TCP addresses of a block whose length was checked against its
/// family; `None` for UNIX sockets.
fn v2_addresses(family: u8, block: &[u8]) -> Option<Addresses> {
    let (src, dst, ports): (IpAddr, IpAddr, &[u8]) = match family {
        0x11 => {
            let a: [u8; 4] = block.get(0..4)?.try_into().ok()?;
            let b: [u8; 4] = block.get(4..8)?.try_into().ok()?;
            (a.into(), b.into(), block.get(8..12)?)
        }
        0x21 => {
            let a: [u8; 16] = block.get(0..16)?.try_into().ok()?;
            let b: [u8; 16] = block.get(16..32)?.try_into().ok()?;
            (a.into(), b.into(), block.get(32..36)?)
        }
        _ => return None,
    };
    let [s0, s1, d0, d1] = *ports else {
        return None;
    };
    Some(Addresses {
        source: SocketAddr::new(src, u16::from_be_bytes([s0, s1])),
        destination: SocketAddr::new(dst, u16::from_be_bytes([d0, d1])),
    })
}

/// Both addresses in one family: as they are when they agree, both as
/// IPv6 (IPv4 ones v4-mapped, `::ffff:a.b.c.d`) when they differ. The
/// specification has no mixed-family header, and mapping keeps the client
/// address, which `UNKNOWN`/`LOCAL` would drop.
fn same_family(src: SocketAddr, dst: SocketAddr) -> (IpAddr, IpAddr) {
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (s.into(), d.into()),
        (s, d) => (IpAddr::V6(to_v6(s)), IpAddr::V6(to_v6(d))),
    }
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Appends a v1 header (`PROXY TCP4|TCP6 src dst sport dport\r\n`) for a
/// connection from `src` to `dst` to `out`. Mixed families are sent as
/// TCP6 with the IPv4 address v4-mapped. IPv6 flow info and scope ids are
/// not carried. Allocates nothing beyond growing `out`.
pub fn write_v1(out: &mut Vec<u8>, src: SocketAddr, dst: SocketAddr) {
    let (s, d) = same_family(src, dst);
    let proto = if s.is_ipv4() { "TCP4" } else { "TCP6" };
    // Writing to a Vec cannot fail: io::Write for Vec<u8> only grows it.
    let _ = write!(
        out,
        "PROXY {proto} {s} {d} {} {}\r\n",
        src.port(),
        dst.port()
    );
}

/// Appends a v2 header (PROXY command, STREAM transport, INET or INET6
/// family, no TLVs) for a connection from `src` to `dst` to `out`. Mixed
/// families are sent as INET6 with the IPv4 address v4-mapped. IPv6 flow
/// info and scope ids are not carried. Allocates nothing beyond growing
/// `out`.
pub fn write_v2(out: &mut Vec<u8>, src: SocketAddr, dst: SocketAddr) {
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21); // version 2, PROXY
    match same_family(src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11); // INET, STREAM
            out.extend_from_slice(&(V2_INET_LEN as u16).to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.push(0x21); // INET6, STREAM
            out.extend_from_slice(&(V2_INET6_LEN as u16).to_be_bytes());
            out.extend_from_slice(&to_v6(s).octets());
            out.extend_from_slice(&to_v6(d).octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
}

/// Appends the header of a connection the sender makes on its own behalf,
/// not for a client (a health check): v1 `PROXY UNKNOWN`, v2 `LOCAL`. The
/// receiver then uses the connection's own addresses.
pub fn write_local(out: &mut Vec<u8>, v2: bool) {
    if v2 {
        out.extend_from_slice(&V2_SIGNATURE);
        out.push(0x20); // version 2, LOCAL
        out.push(0x00); // UNSPEC
        out.extend_from_slice(&0u16.to_be_bytes());
    } else {
        out.extend_from_slice(b"PROXY UNKNOWN\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_headers_carry_no_addresses() {
        for v2 in [false, true] {
            let mut out = Vec::new();
            write_local(&mut out, v2);
            out.extend_from_slice(b"GET /");
            let h = parse(&out).expect("valid").expect("complete");
            assert_eq!(h.addresses, None);
            assert_eq!(&out[h.header_len..], b"GET /");
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn addrs(src: &str, dst: &str) -> Option<Addresses> {
        Some(Addresses {
            source: sa(src),
            destination: sa(dst),
        })
    }

    /// Every strict prefix of `buf[..header_len]` is incomplete, the whole
    /// header parses to `want`, and so does the header with bytes after it.
    fn check_incremental(bytes: &[u8], want: Header) {
        for n in 0..want.header_len {
            assert_eq!(parse(&bytes[..n]), Ok(None), "prefix of {n} bytes");
        }
        assert_eq!(parse(&bytes[..want.header_len]), Ok(Some(want)));
        let mut more = bytes[..want.header_len].to_vec();
        more.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(parse(&more), Ok(Some(want)));
    }

    fn v2(vc: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.push(vc);
        b.push(fam);
        b.extend_from_slice(&(block.len() as u16).to_be_bytes());
        b.extend_from_slice(block);
        b
    }

    const V4_BLOCK: [u8; 12] = [192, 168, 0, 1, 192, 168, 0, 11, 0xdc, 0x04, 0x01, 0xbb];

    // -- v1 -----------------------------------------------------------------

    #[test]
    fn v1_spec_examples() {
        let b = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n";
        let h = parse(b).unwrap().unwrap();
        assert_eq!(h.header_len, 47);
        assert_eq!(h.version, Version::V1);
        assert_eq!(h.addresses, addrs("192.168.0.1:56324", "192.168.0.11:443"));
        assert_eq!(h.source(), Some(sa("192.168.0.1:56324")));
        assert_eq!(h.destination(), Some(sa("192.168.0.11:443")));

        let b = b"PROXY TCP6 ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
        assert!(
            parse(b).is_err(),
            "the spec's elided example is not an address"
        );

        let long = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
                    ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        let h = parse(long.as_bytes()).unwrap().unwrap();
        assert_eq!(h.header_len, long.len());
        assert_eq!(h.source().unwrap().port(), 65535);

        let worst = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
                     ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(worst.len(), V1_MAX_LEN);
        let h = parse(worst.as_bytes()).unwrap().unwrap();
        assert_eq!((h.header_len, h.addresses), (V1_MAX_LEN, None));
    }

    #[test]
    fn v1_unknown() {
        for line in ["PROXY UNKNOWN\r\n", "PROXY UNKNOWN whatever follows\r\n"] {
            let h = parse(line.as_bytes()).unwrap().unwrap();
            assert_eq!(h.header_len, line.len());
            assert_eq!(h.addresses, None);
            assert_eq!(h.source(), None);
        }
        assert!(parse(b"PROXY UNKNOWNX\r\n").is_err());
        assert!(parse(b"PROXY UNKNOWNX").is_err(), "refused before the CRLF");
        // A bare CR is refused in a whole line as in a partial one.
        assert!(parse(b"PROXY UNKNOWN a\rb\r\n").is_err());
        assert!(parse(b"PROXY UNKNOWN a\rb").is_err());
    }

    #[test]
    fn v1_tcp6_and_mapped() {
        let b = b"PROXY TCP6 2001:db8::1 ::ffff:10.0.0.1 1 0\r\n";
        let h = parse(b).unwrap().unwrap();
        assert_eq!(h.addresses, addrs("[2001:db8::1]:1", "[::ffff:10.0.0.1]:0"));
    }

    #[test]
    fn v1_incremental() {
        let b = b"PROXY TCP6 2001:db8::1 2001:db8::2 8080 80\r\n";
        let want = Header {
            header_len: b.len(),
            version: Version::V1,
            addresses: addrs("[2001:db8::1]:8080", "[2001:db8::2]:80"),
        };
        check_incremental(b, want);
        let b = b"PROXY UNKNOWN\r\n";
        let want = Header {
            header_len: b.len(),
            version: Version::V1,
            addresses: None,
        };
        check_incremental(b, want);
    }

    #[test]
    fn v1_invalid() {
        let bad: &[&[u8]] = &[
            b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 080\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 00\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 +8\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 -1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 100000\r\n",
            b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP6 ::1 1.2.3.4 1 2\r\n",
            b"PROXY TCP6 [::1] ::1 1 2\r\n",
            b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",
            b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\t\r\n",
            b"PROXY TCP4\r\n",
            b"PROXY \r\n",
            b"PROXY\r\n",
            b"PROXY\n",
            b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.\xff 1 2\r\n",
        ];
        for b in bad {
            assert!(parse(b).is_err(), "{:?}", String::from_utf8_lossy(b));
        }
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n"),
            Err(Error::V1Malformed("bad port"))
        );
    }

    #[test]
    fn v1_ports_edges() {
        let h = parse(b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.addresses, addrs("0.0.0.0:0", "255.255.255.255:65535"));
    }

    #[test]
    fn v1_over_long() {
        let mut b = b"PROXY UNKNOWN ".to_vec();
        b.resize(V1_MAX_LEN - 1, b'a');
        assert_eq!(parse(&b), Ok(None));
        b.push(b'a');
        assert_eq!(parse(&b), Err(Error::V1TooLong));
        // A CRLF just past the limit does not help.
        b.extend_from_slice(b"\r\n");
        assert_eq!(parse(&b), Err(Error::V1TooLong));
        // 108 bytes with CR as the 107th is still too long.
        let mut b = b"PROXY UNKNOWN ".to_vec();
        b.resize(V1_MAX_LEN - 1, b'a');
        b.extend_from_slice(b"\r\n");
        assert_eq!(parse(&b), Err(Error::V1TooLong));
    }

    #[test]
    fn v1_fails_early() {
        assert_eq!(parse(b"G"), Err(Error::BadSignature));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(Error::BadSignature));
        assert_eq!(parse(b"PROXZ"), Err(Error::BadSignature));
        assert_eq!(parse(b"PROXY-"), Err(Error::BadSignature));
        assert!(parse(b"PROXY G").is_err());
        assert!(parse(b"PROXY TCP4-").is_err());
        assert!(parse(b"PROXY UNKNOWN\rX").is_err());
        assert_eq!(parse(b"PROXY TCP"), Ok(None));
        assert_eq!(parse(b"PROXY UNKNOWN\r"), Ok(None));
    }

    // -- v2 -----------------------------------------------------------------

    #[test]
    fn v2_inet() {
        let b = v2(0x21, 0x11, &V4_BLOCK);
        let h = parse(&b).unwrap().unwrap();
        assert_eq!(h.header_len, 28);
        assert_eq!(h.version, Version::V2);
        assert_eq!(h.addresses, addrs("192.168.0.1:56324", "192.168.0.11:443"));
    }

    #[test]
    fn v2_inet6() {
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst: Ipv6Addr = "::ffff:10.1.2.3".parse().unwrap();
        let mut block = src.octets().to_vec();
        block.extend_from_slice(&dst.octets());
        block.extend_from_slice(&[0x1f, 0x90, 0, 80]);
        let b = v2(0x21, 0x21, &block);
        let want = Header {
            header_len: 52,
            version: Version::V2,
            addresses: addrs("[2001:db8::1]:8080", "[::ffff:10.1.2.3]:80"),
        };
        check_incremental(&b, want);
    }

    #[test]
    fn v2_tlvs_skipped() {
        let mut block = V4_BLOCK.to_vec();
        block.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']); // ALPN
        block.extend_from_slice(&[0x04, 0x00, 0x00]); // NOOP, empty
        block.extend_from_slice(&[0xEA, 0x00, 0x03, 1, 2, 3]); // AWS
        let b = v2(0x21, 0x11, &block);
        let want = Header {
            header_len: 16 + block.len(),
            version: Version::V2,
            addresses: addrs("192.168.0.1:56324", "192.168.0.11:443"),
        };
        check_incremental(&b, want);
    }

    #[test]
    fn v2_bad_tlvs() {
        for tail in [
            &[0x01][..],
            &[0x01, 0x00],
            &[0x01, 0x00, 0x01],
            &[0x01, 0x00, 0x02, 9],
        ] {
            let mut block = V4_BLOCK.to_vec();
            block.extend_from_slice(tail);
            assert_eq!(
                parse(&v2(0x21, 0x11, &block)),
                Err(Error::V2BadTlv),
                "{tail:?}"
            );
        }
    }

    #[test]
    fn v2_without_addresses() {
        // LOCAL: the block, family included, is discarded.
        for (fam, block) in [
            (0x00, &[][..]),
            (0x11, &V4_BLOCK[..]),
            (0xff, &[1, 2, 3][..]),
        ] {
            let b = v2(0x20, fam, block);
            let want = Header {
                header_len: 16 + block.len(),
                version: Version::V2,
                addresses: None,
            };
            check_incremental(&b, want);
        }
        // PROXY with UNSPEC: no addresses, whatever the block holds.
        let h = parse(&v2(0x21, 0x00, &[7; 5])).unwrap().unwrap();
        assert_eq!((h.header_len, h.addresses), (21, None));
        // PROXY over unix sockets: valid, no IP addresses.
        for fam in [0x31, 0x32] {
            let h = parse(&v2(0x21, fam, &[0; 216])).unwrap().unwrap();
            assert_eq!((h.header_len, h.addresses), (232, None));
        }
    }

    #[test]
    fn v2_invalid() {
        assert_eq!(
            parse(&v2(0x11, 0x11, &V4_BLOCK)),
            Err(Error::V2BadVersion(1))
        );
        assert_eq!(
            parse(&v2(0x31, 0x11, &V4_BLOCK)),
            Err(Error::V2BadVersion(3))
        );
        assert_eq!(
            parse(&v2(0x22, 0x11, &V4_BLOCK)),
            Err(Error::V2BadCommand(2))
        );
        assert_eq!(
            parse(&v2(0x2f, 0x11, &V4_BLOCK)),
            Err(Error::V2BadCommand(15))
        );
        // Version/command is judged as soon as its byte arrives.
        assert_eq!(
            parse(&v2(0x11, 0x11, &V4_BLOCK)[..13]),
            Err(Error::V2BadVersion(1))
        );
        assert_eq!(
            parse(&v2(0x23, 0x11, &V4_BLOCK)[..13]),
            Err(Error::V2BadCommand(3))
        );
        for fam in [0x01, 0x02, 0x10, 0x13, 0x20, 0x30, 0x41, 0xff] {
            assert_eq!(
                parse(&v2(0x21, fam, &[0; 216])),
                Err(Error::V2BadFamily(fam))
            );
        }
        assert_eq!(parse(&v2(0x21, 0x12, &V4_BLOCK)), Err(Error::V2Datagram));
        assert_eq!(parse(&v2(0x21, 0x22, &[0; 36])), Err(Error::V2Datagram));
        assert_eq!(
            parse(&v2(0x21, 0x11, &V4_BLOCK[..11])),
            Err(Error::V2ShortAddresses { len: 11, need: 12 })
        );
        assert_eq!(
            parse(&v2(0x21, 0x21, &[0; 35])),
            Err(Error::V2ShortAddresses { len: 35, need: 36 })
        );
        assert_eq!(
            parse(&v2(0x21, 0x31, &[0; 215])),
            Err(Error::V2ShortAddresses {
                len: 215,
                need: 216
            })
        );
        // A short address block is refused before its bytes arrive.
        assert!(parse(&v2(0x21, 0x11, &V4_BLOCK[..11])[..16]).is_err());
    }

    #[test]
    fn v2_length_cap() {
        let mut block = V4_BLOCK.to_vec();
        block.extend_from_slice(&[0x04, 0x03, 0xf1]);
        block.resize(MAX_V2_LEN, 0);
        let b = v2(0x21, 0x11, &block);
        let h = parse(&b).unwrap().unwrap();
        assert_eq!(h.header_len, V2_FIXED_LEN + MAX_V2_LEN);
        assert_eq!(parse(&b[..b.len() - 1]), Ok(None));
        // One byte over is refused from the fixed part alone.
        let mut fixed = V2_SIGNATURE.to_vec();
        fixed.extend_from_slice(&[0x21, 0x11, 0x04, 0x01]);
        assert_eq!(parse(&fixed), Err(Error::V2TooLong(1025)));
        fixed[14..16].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(parse(&fixed), Err(Error::V2TooLong(65535)));
    }

    #[test]
    fn v2_bad_signature_fails_early() {
        for i in 0..V2_SIGNATURE.len() {
            let mut b = V2_SIGNATURE[..=i].to_vec();
            assert_eq!(parse(&b), Ok(None), "prefix {i}");
            if i > 0 {
                b[i] ^= 0x01;
                assert_eq!(parse(&b), Err(Error::BadSignature), "byte {i}");
            }
        }
        // An HTTP request line ending in CRLF CRLF is not a v2 signature.
        assert_eq!(parse(b"\r\n\r\nGET"), Err(Error::BadSignature));
    }

    // -- encoding -------------------------------------------------------------

    const PAIRS: [(&str, &str); 5] = [
        ("192.168.0.1:56324", "192.168.0.11:443"),
        ("0.0.0.0:0", "255.255.255.255:65535"),
        ("[2001:db8::1]:8080", "[2001:db8::2]:80"),
        ("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535", "[::]:0"),
        ("[::ffff:1.2.3.4]:1", "[::1]:2"),
    ];

    #[test]
    fn round_trips() {
        for (s, d) in PAIRS {
            let (src, dst) = (sa(s), sa(d));
            for (version, write) in [
                (
                    Version::V1,
                    write_v1 as fn(&mut Vec<u8>, SocketAddr, SocketAddr),
                ),
                (Version::V2, write_v2),
            ] {
                let mut out = b"kept".to_vec();
                write(&mut out, src, dst);
                let len = out.len() - 4;
                out.extend_from_slice(b"GET / HTTP/1.1\r\n");
                let h = parse(&out[4..]).unwrap().unwrap();
                assert_eq!(h.header_len, len, "{version:?} {s} {d}");
                assert_eq!(h.version, version);
                assert_eq!(h.addresses, addrs(s, d), "{version:?}");
                assert_eq!(&out[..4], b"kept");
            }
        }
    }

    #[test]
    fn writes_expected_bytes() {
        let mut out = Vec::new();
        write_v1(&mut out, sa("192.168.0.1:56324"), sa("192.168.0.11:443"));
        assert_eq!(out, b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");
        out.clear();
        write_v2(&mut out, sa("192.168.0.1:56324"), sa("192.168.0.11:443"));
        assert_eq!(out, v2(0x21, 0x11, &V4_BLOCK));
        out.clear();
        write_v1(&mut out, sa("[::1]:1"), sa("[2001:db8::2]:2"));
        assert_eq!(out, b"PROXY TCP6 ::1 2001:db8::2 1 2\r\n");
    }

    #[test]
    fn mixed_families_are_v4_mapped() {
        let (src, dst) = (sa("10.0.0.1:1000"), sa("[2001:db8::1]:443"));
        for write in [write_v1, write_v2] {
            let mut out = Vec::new();
            write(&mut out, src, dst);
            let h = parse(&out).unwrap().unwrap();
            assert_eq!(
                h.addresses,
                addrs("[::ffff:10.0.0.1]:1000", "[2001:db8::1]:443")
            );
            let canonical = h.source().map(|s| s.ip().to_canonical());
            assert_eq!(canonical, Some(src.ip()));
            // And the other way round.
            let mut out = Vec::new();
            write(&mut out, dst, src);
            let h = parse(&out).unwrap().unwrap();
            assert_eq!(
                h.addresses,
                addrs("[2001:db8::1]:443", "[::ffff:10.0.0.1]:1000")
            );
        }
        let mut out = Vec::new();
        write_v1(&mut out, src, dst);
        assert_eq!(out, b"PROXY TCP6 ::ffff:10.0.0.1 2001:db8::1 1000 443\r\n");
    }

    #[test]
    fn longest_v1_fits() {
        let s = sa("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535");
        let mut out = Vec::new();
        write_v1(&mut out, s, s);
        assert!(out.len() <= V1_MAX_LEN);
        assert!(parse(&out).unwrap().is_some());
    }

    #[test]
    fn errors_display() {
        assert_eq!(
            Error::V2TooLong(2000).to_string(),
            "PROXY v2 block of 2000 bytes (limit 1024)"
        );
        assert_eq!(
            Error::V1Malformed("bad port").to_string(),
            "malformed PROXY v1 header: bad port"
        );
    }
}
