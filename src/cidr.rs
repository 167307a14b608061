//! IP networks in CIDR notation and sets of them: which peers are trusted
//! proxies, allowed to report a client address (PROXY protocol,
//! X-Forwarded-For).
//!
//! Owns parsing (`"10.0.0.0/8"`, `"192.168.1.7"`, `"fe80::/10"`) and the
//! membership test. It does not own where the list comes from (config) or
//! what trusting a peer means (the request path).
//!
//! Decisions:
//!
//! - Host bits set after the prefix (`"10.0.0.1/8"`) are accepted and
//!   cleared, as nginx's `set_real_ip_from` does; [`Cidr`]'s `Display`
//!   shows the masked network, so a config echo reveals what was meant.
//! - An address without a prefix is one host (/32 or /128).
//! - IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are IPv4, both when
//!   looked up and when written as a network with a prefix of 96 or more
//!   (`::ffff:10.0.0.0/104` is `10.0.0.0/8`). An IPv6 network that merely
//!   covers the mapped range (`::/0`) does not match IPv4 peers: trust for
//!   them is given with an IPv4 network (`0.0.0.0/0`).
//! - Surrounding ASCII whitespace is ignored; anything else that is not an
//!   address, an optional `/` and a decimal prefix in range is refused.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Why a string is not a CIDR network; the message quotes the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR {input:?}: {reason}")]
pub struct CidrError {
    /// The text that was refused, as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// One IP network: an address with its host bits cleared and a prefix
/// length. IPv4-mapped IPv6 networks are stored as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Mask of the `prefix` leading bits of a `BITS`-wide address.
fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl Cidr {
    /// The network of `addr` with `prefix` leading bits, host bits
    /// cleared; `None` when the prefix is longer than the address (32 for
    /// IPv4, 128 for IPv6).
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        match addr {
            IpAddr::V4(a) if prefix <= 32 => Some(Cidr {
                network: Ipv4Addr::from(a.to_bits() & mask_v4(prefix)).into(),
                prefix,
            }),
            IpAddr::V6(a) if prefix <= 128 => match a.to_ipv4_mapped() {
                Some(v4) if prefix >= 96 => Cidr::new(v4.into(), prefix - 96),
                _ => Some(Cidr {
                    network: Ipv6Addr::from(a.to_bits() & mask_v6(prefix)).into(),
                    prefix,
                }),
            },
            _ => None,
        }
    }

    /// The network address (host bits zero).
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The number of leading bits that make up the network.
    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies in this network; an IPv4-mapped IPv6 `ip` is
    /// looked up as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => a.to_bits() & mask_v4(self.prefix) == n.to_bits(),
            (IpAddr::V6(n), IpAddr::V6(a)) => a.to_bits() & mask_v6(self.prefix) == n.to_bits(),
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// Parses `addr/prefix` or a bare `addr` (one host).
    fn from_str(input: &str) -> Result<Cidr, CidrError> {
        let err = |reason| CidrError {
            input: input.to_owned(),
            reason,
        };
        let s = input.trim_ascii();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| err("not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => {
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err("prefix length is not a decimal number"));
                }
                p.parse::<u8>()
                    .map_err(|_| err("prefix length out of range"))?
            }
        };
        if prefix > max {
            return Err(err(if max == 32 {
                "prefix length over 32 for IPv4"
            } else {
                "prefix length over 128 for IPv6"
            }));
        }
        Cidr::new(addr, prefix).ok_or_else(|| err("prefix length out of range"))
    }
}

impl fmt::Display for Cidr {
    /// `network/prefix`, always with the prefix.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// A set of networks, typically the trusted proxies. Lookups scan two
/// small arrays of (network, mask) integers: no allocation, no hashing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl CidrSet {
    /// An empty set: contains nothing.
    pub fn new() -> CidrSet {
        CidrSet::default()
    }

    /// Parses every string of `items` as a [`Cidr`]; the first bad one is
    /// the error.
    pub fn parse<I, S>(items: I) -> Result<CidrSet, CidrError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = CidrSet::new();
        for item in items {
            set.insert(item.as_ref().parse()?);
        }
        Ok(set)
    }

    /// Adds `cidr` to the set.
    pub fn insert(&mut self, cidr: Cidr) {
        match cidr.network {
            IpAddr::V4(n) => self.v4.push((n.to_bits(), mask_v4(cidr.prefix))),
            IpAddr::V6(n) => self.v6.push((n.to_bits(), mask_v6(cidr.prefix))),
        }
    }

    /// Whether `ip` lies in any network of the set; an IPv4-mapped IPv6
    /// `ip` is looked up as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(a) => {
                let a = a.to_bits();
                self.v4.iter().any(|&(n, m)| a & m == n)
            }
            IpAddr::V6(a) => {
                let a = a.to_bits();
                self.v6.iter().any(|&(n, m)| a & m == n)
            }
        }
    }

    /// The number of networks in the set.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether the set has no network.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl FromIterator<Cidr> for CidrSet {
    fn from_iter<I: IntoIterator<Item = Cidr>>(iter: I) -> CidrSet {
        let mut set = CidrSet::new();
        for c in iter {
            set.insert(c);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_networks_and_hosts() {
        for (input, shown) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("192.168.1.7", "192.168.1.7/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("::1/128", "::1/128"),
            ("::1", "::1/128"),
            ("fe80::/10", "fe80::/10"),
            ("::/0", "::/0"),
            (" 172.16.0.0/12\t", "172.16.0.0/12"),
            ("10.0.0.0/008", "10.0.0.0/8"),
        ] {
            assert_eq!(cidr(input).to_string(), shown, "{input}");
        }
        let c = cidr("fe80::/10");
        assert_eq!((c.network(), c.prefix_len()), (ip("fe80::"), 10));
    }

    #[test]
    fn host_bits_are_cleared() {
        assert_eq!(cidr("10.0.0.1/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("10.0.0.1/8"), cidr("10.0.0.0/8"));
        assert_eq!(cidr("fe80::1234/10").to_string(), "fe80::/10");
        assert_eq!(cidr("255.255.255.255/0").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("192.168.1.255/31").to_string(), "192.168.1.254/31");
    }

    #[test]
    fn mapped_networks_are_ipv4() {
        assert_eq!(cidr("::ffff:10.1.2.3/104"), cidr("10.0.0.0/8"));
        assert_eq!(cidr("::ffff:10.1.2.3"), cidr("10.1.2.3/32"));
        assert_eq!(cidr("::ffff:0.0.0.0/96"), cidr("0.0.0.0/0"));
        // Shorter than /96 stays IPv6.
        assert_eq!(cidr("::ffff:0:0/80").network(), ip("::"));
    }

    #[test]
    fn rejects_garbage_naming_the_input() {
        for input in [
            "",
            "/",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0.0/256",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "10.0.0.0/ 8",
            "10.0.0/8",
            "10.0.0.256/8",
            "010.0.0.0/8",
            "::1/129",
            "::1/1000",
            "fe80::1%eth0/64",
            "[::1]/128",
            "example.com",
            "10.0.0.0/8 10.0.0.0/9",
            "10.0.0.0/0x8",
        ] {
            let e = input.parse::<Cidr>().unwrap_err();
            assert_eq!(e.input, input);
            assert!(
                e.to_string()
                    .starts_with(&format!("invalid CIDR {input:?}: ")),
                "{e}"
            );
        }
        assert_eq!(
            "10.0.0.0/33".parse::<Cidr>().unwrap_err().to_string(),
            "invalid CIDR \"10.0.0.0/33\": prefix length over 32 for IPv4"
        );
        assert_eq!(
            "nope".parse::<Cidr>().unwrap_err().to_string(),
            "invalid CIDR \"nope\": not an IP address"
        );
    }

    #[test]
    fn new_checks_the_prefix() {
        assert_eq!(Cidr::new(ip("10.1.2.3"), 33), None);
        assert_eq!(Cidr::new(ip("::"), 129), None);
        assert_eq!(Cidr::new(ip("10.1.2.3"), 16), Some(cidr("10.1.0.0/16")));
    }

    #[test]
    fn cidr_contains() {
        let c = cidr("10.0.0.0/8");
        assert!(c.contains(ip("10.0.0.0")));
        assert!(c.contains(ip("10.255.255.255")));
        assert!(!c.contains(ip("11.0.0.0")));
        assert!(!c.contains(ip("9.255.255.255")));
        assert!(c.contains(ip("::ffff:10.1.2.3")));
        assert!(
            !c.contains(ip("::a01:203")),
            "IPv4-compatible is not mapped"
        );
        let c = cidr("fe80::/10");
        assert!(c.contains(ip("fe80::1")));
        assert!(c.contains(ip("febf:ffff::1")));
        assert!(!c.contains(ip("fec0::")));
        assert!(!c.contains(ip("10.0.0.1")));
        assert!(cidr("0.0.0.0/0").contains(ip("255.255.255.255")));
        assert!(cidr("::/0").contains(ip("2001:db8::1")));
        assert!(!cidr("::/0").contains(ip("::ffff:1.2.3.4")));
        assert!(!cidr("::/0").contains(ip("1.2.3.4")));
        let host = cidr("192.168.1.7");
        assert!(host.contains(ip("192.168.1.7")));
        assert!(!host.contains(ip("192.168.1.6")));
        assert!(cidr("::ffff:192.168.1.0/120").contains(ip("192.168.1.7")));
    }

    #[test]
    fn set_contains() {
        let set = CidrSet::parse(["10.0.0.0/8", "192.168.1.7", "::1", "fe80::/10"]).unwrap();
        assert_eq!(set.len(), 4);
        assert!(!set.is_empty());
        for yes in [
            "10.9.8.7",
            "192.168.1.7",
            "::1",
            "fe80::abcd",
            "::ffff:10.0.0.1",
        ] {
            assert!(set.contains(ip(yes)), "{yes}");
        }
        for no in [
            "11.0.0.1",
            "192.168.1.8",
            "::2",
            "fec0::1",
            "::ffff:192.168.1.8",
            "127.0.0.1",
        ] {
            assert!(!set.contains(ip(no)), "{no}");
        }
        let empty = CidrSet::new();
        assert!(empty.is_empty());
        assert!(!empty.contains(ip("10.0.0.1")));
    }

    #[test]
    fn set_parse_reports_the_bad_item() {
        let items = vec!["10.0.0.0/8".to_string(), "10.0.0.0/99".to_string()];
        let e = CidrSet::parse(&items).unwrap_err();
        assert_eq!(e.input, "10.0.0.0/99");
    }

    #[test]
    fn set_from_iter() {
        let set: CidrSet = [cidr("10.0.0.0/8"), cidr("::/0")].into_iter().collect();
        assert_eq!(set.len(), 2);
        assert!(set.contains(ip("10.1.1.1")));
        assert!(set.contains(ip("2001:db8::1")));
        assert!(!set.contains(ip("1.1.1.1")));
    }

    #[test]
    fn every_prefix_length() {
        let a = ip("255.255.255.255");
        for p in 0..=32u8 {
            let c = Cidr::new(a, p).unwrap();
            assert!(c.contains(a));
            assert_eq!(c.contains(ip("0.0.0.0")), p == 0, "/{p}");
        }
        let a = ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
        for p in 0..=128u8 {
            let c = Cidr::new(a, p).unwrap();
            assert!(c.contains(a));
            assert_eq!(c.contains(ip("::")), p == 0, "/{p}");
        }
    }
}
