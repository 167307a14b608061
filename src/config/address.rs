//! Addresses in the configuration: resolving `host:port`, and recognising
//! this process's own listeners so a backend can never be the balancer.

use std::net::{SocketAddr, ToSocketAddrs};

/// The addresses this ekilibri listens on. A backend at one of them would
/// send requests back into this process: to the proxy port, a loop through
/// the balancer until the connection limit; to the admin port, the admin API
/// served as if it were a backend. The file gives them (port 0 is unknown
/// until bound, and never matches); the control executor holds the bound
/// ones, so registrations are checked against the real ports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnAddresses {
    /// The proxy listener (`listen`).
    pub listen: Option<SocketAddr>,
    /// The admin listener (`admin_listen`), when enabled.
    pub admin: Option<SocketAddr>,
}

impl OwnAddresses {
    /// The config key of the listener a connection to `target` reaches.
    pub fn reached_by(&self, target: SocketAddr) -> Option<&'static str> {
        [("listen", self.listen), ("admin_listen", self.admin)]
            .into_iter()
            .find_map(|(key, own)| own.filter(|o| reaches(target, *o)).map(|_| key))
    }

    /// Why backend `name` is refused when one of `addrs` (what it resolves
    /// to) is this process's own listener; `None` when it is another server.
    pub fn refusal(&self, name: &str, addrs: &[SocketAddr]) -> Option<String> {
        addrs.iter().find_map(|a| {
            let key = self.reached_by(*a)?;
            let what = if key == "listen" {
                "its proxy port: every request would loop through the balancer"
            } else {
                "its admin API: the proxy port would serve the admin API"
            };
            Some(format!(
                "`{name}` is this ekilibri's own `{key}` address ({a} reaches {what}); a backend must be another server"
            ))
        })
    }
}

/// Every address `name` may stand for: itself when it is a literal
/// address, else all the resolver gives (a name that also resolves to this
/// process is refused whichever address comes first), and `resolved`.
pub fn candidates(name: &str, resolved: SocketAddr) -> Vec<SocketAddr> {
    let mut all = vec![resolved];
    if name.parse::<SocketAddr>().is_err()
        && let Ok(it) = name.to_socket_addrs()
    {
        all.extend(it.filter(|a| *a != resolved));
    }
    all
}

/// Whether a connection to `target` reaches a socket listening on
/// `listener`: the same port and, for a wildcard listener (`0.0.0.0`, `[::]`),
/// any address of this host; otherwise the same address. Connecting to
/// a wildcard address reaches the loopback address of its family.
pub fn reaches(target: SocketAddr, listener: SocketAddr) -> bool {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    if listener.port() == 0 || target.port() != listener.port() {
        return false;
    }
    let to = match target.ip().to_canonical() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let on = listener.ip().to_canonical();
    if on.is_unspecified() {
        is_local_ip(to)
    } else {
        to == on
    }
}

/// Whether `ip` is an address of this host: loopback, or one a socket can
/// bind (the kernel refuses to bind an address no interface has).
fn is_local_ip(ip: std::net::IpAddr) -> bool {
    ip.is_loopback() || std::net::TcpListener::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Resolves "host:port" to one socket address (the first the resolver gives).
pub(crate) fn resolve(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
        _ => return Err("not a valid \"host:port\" address".into()),
    }
    match s.to_socket_addrs() {
        Ok(mut it) => it
            .next()
            .ok_or_else(|| "the host name resolves to no address".to_string()),
        Err(e) => Err(format!("cannot resolve: {e}")),
    }
}
