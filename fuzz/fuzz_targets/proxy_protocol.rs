//! `proxy_protocol::parse` on arbitrary bytes: never panics; a complete
//! header lies within the buffer and within the version's bound, every
//! shorter prefix of it is "need more bytes" (an incremental reader never
//! gives up on a good header), and bytes after it change nothing. Then
//! addresses taken from the input are written with `write_v1` and
//! `write_v2`, followed by the input itself, and parse back to the same
//! addresses (v4-mapped when the families differ) and header length.
#![no_main]

use std::net::{IpAddr, SocketAddr};

use ekilibri::proxy_protocol::{
    self, Addresses, MAX_V2_LEN, V1_MAX_LEN, V2_FIXED_LEN, Version,
};
use libfuzzer_sys::fuzz_target;

/// An address from `b`: IPv6 when `v6`, else IPv4 from the first bytes.
fn addr(v6: bool, b: &[u8; 18]) -> SocketAddr {
    let port = u16::from_be_bytes([b[16], b[17]]);
    let ip: IpAddr = if v6 {
        let mut o = [0u8; 16];
        o.copy_from_slice(&b[..16]);
        o.into()
    } else {
        [b[0], b[1], b[2], b[3]].into()
    };
    SocketAddr::new(ip, port)
}

/// What a header for `src` -> `dst` must parse back to.
fn expected(src: SocketAddr, dst: SocketAddr) -> Addresses {
    let map = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) if src.is_ipv4() != dst.is_ipv4() => {
            SocketAddr::new(v4.to_ipv6_mapped().into(), a.port())
        }
        _ => a,
    };
    Addresses {
        source: map(src),
        destination: map(dst),
    }
}

fuzz_target!(|data: &[u8]| {
    match proxy_protocol::parse(data) {
        Ok(Some(h)) => {
            let bound = match h.version {
                Version::V1 => V1_MAX_LEN,
                Version::V2 => V2_FIXED_LEN + MAX_V2_LEN,
            };
            assert!(h.header_len > 0 && h.header_len <= data.len().min(bound));
            assert_eq!(proxy_protocol::parse(&data[..h.header_len]), Ok(Some(h)));
            for n in 0..h.header_len {
                assert_eq!(proxy_protocol::parse(&data[..n]), Ok(None), "prefix {n}");
            }
        }
        Ok(None) => assert!(data.len() < V2_FIXED_LEN + MAX_V2_LEN),
        Err(e) => {
            let _ = e.to_string();
        }
    }

    // Round trip of addresses taken from the input.
    let flags = data.first().copied().unwrap_or(0);
    let mut raw = [0u8; 36];
    for (r, b) in raw.iter_mut().zip(data.iter().skip(1)) {
        *r = *b;
    }
    let (mut a, mut b) = ([0u8; 18], [0u8; 18]);
    a.copy_from_slice(&raw[..18]);
    b.copy_from_slice(&raw[18..]);
    let (src, dst) = (addr(flags & 1 != 0, &a), addr(flags & 2 != 0, &b));
    let want = expected(src, dst);
    for (version, write) in [
        (Version::V1, proxy_protocol::write_v1 as fn(&mut Vec<u8>, SocketAddr, SocketAddr)),
        (Version::V2, proxy_protocol::write_v2),
    ] {
        let mut out = Vec::new();
        write(&mut out, src, dst);
        let len = out.len();
        out.extend_from_slice(data);
        let h = match proxy_protocol::parse(&out) {
            Ok(Some(h)) => h,
            other => panic!("{version:?} {src} -> {dst}: {other:?}"),
        };
        assert_eq!(h.header_len, len);
        assert_eq!(h.version, version);
        assert_eq!(h.addresses, Some(want), "{version:?} {src} -> {dst}");
    }
});
