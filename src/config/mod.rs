//! The configuration file: its TOML shape, validation, and the immutable
//! [`Config`] every executor reads.
//!
//! Parsing goes file -> [`FileConfig`] (serde, unknown keys rejected) ->
//! [`validate`] (a pure function that names the key at fault) -> [`Config`].
//! Every key of the original Ekilibri keeps its name, unit and meaning, so an
//! original `ekilibri.toml` runs unchanged: its top-level keys describe the
//! default pool, and `[pools.NAME]` tables add pools that `[[routes]]` send
//! requests to. One file per section: [`file`] (the serde shapes), [`pool`]
//! (per-pool settings, one type per concern), `address` (resolving and
//! refusing this process's own addresses), `logging`, `cluster`. This
//! module does not own runtime state: hot changes of the backend set go
//! through the control executor.

mod address;
mod cluster;
mod file;
mod logging;
pub mod pool;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub use address::{OwnAddresses, candidates, reaches};
pub use cluster::ClusterConfig;
pub use file::{FileConfig, PoolKeys};
pub use pool::{
    BackendLimits, BackendTimeouts, BreakerSettings, DEFAULT_POOL, HealthSettings, PoolConfig,
    ProxyProtocolVersion, RetrySettings,
};

use crate::error::ConfigError;
use crate::route::{RouteSpec, RouteTable};
use address::resolve;
use cluster::validate_cluster;
use file::RouteEntry;
use logging::validate_access_log;
use pool::{KeyError, ms, nonzero};

/// Listen address when the file has no `listen` key: the original's fixed port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Admin listener (metrics, API) when the file has no `admin_listen` key:
/// loopback only, so it is never exposed by default.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Passive check: failed requests tolerated within `fail_window` (original default).
pub const DEFAULT_MAX_FAILS: u32 = 5;
/// Passive check window in seconds (original default).
pub const DEFAULT_FAIL_WINDOW_S: u64 = 60;
/// Backend connect/read/write timeout in milliseconds (the original's defaults).
pub const DEFAULT_BACKEND_TIMEOUT_MS: u64 = 1000;
/// Health check path (the original's example and the test backend's route).
pub const DEFAULT_HEALTH_CHECK_PATH: &str = "/health";
/// Active check period: the original checked every 500 ms.
pub const DEFAULT_HEALTH_CHECK_INTERVAL_MS: u64 = 500;
/// Consecutive failed checks before a backend is marked down. One, as in the
/// original, where a single failed check removed the server.
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 1;
/// Consecutive passed checks before a down backend returns. One, so a backend
/// that recovers is back within one check interval.
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 1;
/// Idle keep-alive connections kept per backend *per worker*. Large enough
/// that a busy worker rarely reconnects; idle sockets cost ~1 fd each.
pub const DEFAULT_POOL_SIZE: usize = 64;
/// Largest request or response head accepted; beyond it the client gets 431.
/// nginx's default is 8 KiB x 4 large buffers; 64 KiB leaves room for big
/// cookies while bounding memory per connection.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Time a client has to send a complete request head once it has started
/// (nginx's `client_header_timeout` default is 60 s; we are stricter).
pub const DEFAULT_CLIENT_HEADER_TIMEOUT_MS: u64 = 10_000;
/// Longest silence while reading a request body (nginx `client_body_timeout`: 60 s).
pub const DEFAULT_CLIENT_BODY_TIMEOUT_MS: u64 = 30_000;
/// Longest a write to a client may block (nginx `send_timeout`: 60 s).
pub const DEFAULT_SEND_TIMEOUT_MS: u64 = 60_000;
/// Time an idle keep-alive client connection is kept open (nginx: 75 s).
pub const DEFAULT_KEEPALIVE_TIMEOUT_MS: u64 = 60_000;
/// Longest a graceful shutdown waits for in-flight requests.
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 10_000;
/// Extra attempts after a failure that is safe to retry.
pub const DEFAULT_RETRIES: u32 = 1;
/// Accept backlog of each worker's listen socket (glommio hard-codes 1024).
pub const DEFAULT_LISTEN_BACKLOG: u32 = 4096;
/// Consecutive failed requests that open a backend's circuit breaker.
pub const DEFAULT_BREAKER_THRESHOLD: u32 = 5;
/// How long an open breaker refuses traffic before letting trials through.
pub const DEFAULT_BREAKER_OPEN_MS: u64 = 5000;
/// Trial requests a half-open breaker lets through per worker (and the
/// successes that close it).
pub const DEFAULT_BREAKER_HALF_OPEN_REQUESTS: u32 = 1;
/// First retry backoff; doubled per retry, with jitter.
pub const DEFAULT_RETRY_BACKOFF_MS: u64 = 10;
/// Cap of the retry backoff.
pub const DEFAULT_RETRY_BACKOFF_MAX_MS: u64 = 250;
/// Retries allowed as a share of requests (Finagle/linkerd-style budget), so
/// a failing fleet sees at most ~20% extra load.
pub const DEFAULT_RETRY_BUDGET: f64 = 0.2;
/// Requests that may wait for a backend slot under `max_connections`, per
/// worker and backend.
pub const DEFAULT_QUEUE_SIZE: usize = 128;
/// Longest wait for a backend slot before a 503.
pub const DEFAULT_QUEUE_TIMEOUT_MS: u64 = 1000;

/// io_uring submission queue entries per worker ring: glommio's default.
/// 1024 and 4096 measured the same CPU per request at 64 connections.
pub const DEFAULT_RING_DEPTH: usize = 128;

/// Largest weight a server may have; bounds the weighted round-robin schedule.
pub const MAX_WEIGHT: u32 = 1000;

/// How the next backend is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Rotation over the healthy backends that honours weights (smooth
    /// weighted rotation; with equal weights, a strict rotation).
    RoundRobin,
    /// The backend with the fewest in-flight requests (global count).
    LeastConnections,
    /// A uniformly random healthy backend.
    Random,
    /// The same as [`Strategy::RoundRobin`], kept as an accepted alias.
    WeightedRoundRobin,
    /// Consistent hash of the client IP: a client sticks to one backend.
    IpHash,
    /// Two random healthy backends, the one with fewer in-flight requests.
    PowerOfTwoChoices,
}

impl Strategy {
    const NAMES: &'static str =
        "RoundRobin, LeastConnections, Random, WeightedRoundRobin, IpHash, PowerOfTwoChoices";

    fn parse(s: &str) -> Option<Strategy> {
        Some(match s {
            "RoundRobin" => Strategy::RoundRobin,
            "LeastConnections" => Strategy::LeastConnections,
            "Random" => Strategy::Random,
            "WeightedRoundRobin" => Strategy::WeightedRoundRobin,
            "IpHash" => Strategy::IpHash,
            "PowerOfTwoChoices" => Strategy::PowerOfTwoChoices,
            _ => return None,
        })
    }

    /// True when the strategy needs the global in-flight count per backend.
    pub fn needs_inflight(self) -> bool {
        matches!(
            self,
            Strategy::LeastConnections | Strategy::PowerOfTwoChoices
        )
    }
}

/// One backend as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// The address as written in the file (used in logs and for hashing, so
    /// the same file maps clients the same way on every instance).
    pub name: String,
    /// The resolved address connections go to.
    pub addr: SocketAddr,
    /// Relative share of traffic for weighted strategies (1..=1000).
    pub weight: u32,
}

/// The validated, immutable configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address every worker binds with SO_REUSEPORT.
    pub listen: SocketAddr,
    /// Number of request workers (one pinned executor each).
    pub workers: usize,
    /// The pools of backends: the default pool (the top-level keys) first,
    /// then the `[pools.NAME]` tables in name order.
    pub pools: Vec<PoolConfig>,
    /// `[[routes]]`: which requests go to which pool (by index in `pools`).
    pub routes: RouteTable,
    /// Largest accepted request or response head, in bytes.
    pub max_header_bytes: usize,
    /// Time to receive a whole request head once its first byte arrived.
    pub client_header_timeout: Duration,
    /// Idle time allowed between requests on a client connection.
    pub keepalive_timeout: Duration,
    /// Longest silence while reading a request body (408 or close after).
    pub client_body_timeout: Duration,
    /// Longest a single write to a client may block before the connection
    /// is dropped (slow readers).
    pub send_timeout: Duration,
    /// Bound on graceful drain at shutdown.
    pub shutdown_timeout: Duration,
    /// Accept backlog per worker socket.
    pub listen_backlog: u32,
    /// glommio `spin_before_park`, off unless set (busy polling steals CPU
    /// from clients and backends on the same host).
    pub spin_before_park: Option<Duration>,
    /// Client connections per worker; beyond it new ones get 503 and close.
    pub max_client_connections: usize,
    /// Admin listener address (metrics, API), `None` when disabled.
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token every admin call must carry, when set.
    pub admin_token: Option<String>,
    /// Access log format.
    pub access_log: crate::access_log::Format,
    /// Where access log lines go: a file or stdout (`"-"`).
    pub access_log_path: crate::access_log::Target,
    /// The `access_log = "custom"` template, nginx `log_format` syntax.
    pub access_log_format: Option<crate::access_log::Template>,
    /// io_uring ring depth of each worker.
    pub ring_depth: usize,
    /// Extra io_uring setup flags for every ring ([`crate::uring`]).
    pub ring_setup_flags: u32,
    /// Pin each worker to its own CPU (thread-per-core). Turn off on hosts
    /// where the balancer shares its CPUs with other busy processes.
    pub pin_workers: bool,
    /// Cluster mode: the etcd registry shared with other instances, if any.
    pub cluster: Option<ClusterConfig>,
    /// Peers whose `X-Forwarded-*`, `Forwarded`, `X-Request-Id` and PROXY
    /// protocol headers are believed (`trusted_proxies`); from any other
    /// peer they are replaced. Empty by default: no one is trusted.
    pub trusted_proxies: crate::cidr::CidrSet,
    /// Every connection starts with a PROXY protocol (v1 or v2) header,
    /// accepted only from `trusted_proxies`.
    pub proxy_protocol: bool,
    /// Add an RFC 7239 `Forwarded` element to forwarded requests
    /// (`forwarded`, off by default: `X-Forwarded-*` is what most backends read).
    pub forwarded: bool,
}

/// io_uring setup flags by default: cooperative task running (no
/// inter-processor interrupt per completion while a worker runs) and a
/// single issuer per ring, as glommio uses its rings (see [`crate::uring`]).
pub const DEFAULT_RING_SETUP_FLAGS: u32 = crate::uring::COOP_TASKRUN | crate::uring::SINGLE_ISSUER;

/// Default etcd key prefix of cluster mode.
pub const DEFAULT_CLUSTER_PREFIX: &str = "/ekilibri/default/";
/// Default time limit of one etcd call, connecting included.
pub const DEFAULT_CLUSTER_TIMEOUT_MS: u64 = 2000;

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Parses and validates configuration text; `path` is only used in messages.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let file: FileConfig = toml::from_str(text).map_err(|e| parse_error(path, text, &e))?;
    validate(path, file)
}

/// Turns a TOML error into one line naming the line and, when it can be
/// found, the key.
fn parse_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let message = e.message().replace('\n', " ").trim().to_string();
    let (line, key) = match e.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let line_no = text[..start].matches('\n').count() + 1;
            let line_start = text[..start].rfind('\n').map(|i| i + 1).unwrap_or(0);
            let line_text = text[line_start..].lines().next().unwrap_or("");
            let key = match line_text.split_once('=') {
                Some((k, _)) if !message.contains('`') => {
                    let k = k.trim().trim_matches('"');
                    if k.is_empty() || k.starts_with('[') {
                        String::new()
                    } else {
                        format!("key `{k}`: ")
                    }
                }
                _ => String::new(),
            };
            (line_no, key)
        }
        None => (0, String::new()),
    };
    ConfigError::Parse {
        path: path.to_owned(),
        line,
        key,
        message,
    }
}

/// Validates a parsed file into a [`Config`], section by section: the
/// pools ([`pool`]), the routes, the listener and client side, the admin
/// API, the access log (`logging`), cluster mode (`cluster`) and the
/// io_uring rings. Pure apart from resolving host names.
pub fn validate(path: &Path, mut f: FileConfig) -> Result<Config, ConfigError> {
    let invalid = |(key, message): KeyError| ConfigError::Invalid {
        path: path.to_owned(),
        key,
        message,
    };
    let fixed = |key: &str, message: String| invalid((key.to_string(), message));

    let top = f.take_pool_keys();
    let pools = validate_pools(top, f.pools.take(), f.cluster.is_some()).map_err(invalid)?;
    let routes = validate_routes(f.routes.take(), &pools).map_err(invalid)?;

    let listen_s = f.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = resolve(listen_s).map_err(|m| fixed("listen", format!("`{listen_s}`: {m}")))?;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let workers = match f.workers {
        None => cpus,
        Some(n) if (1..=1024).contains(&n) => n as usize,
        Some(n) => return Err(fixed("workers", format!("{n} is out of range 1..=1024"))),
    };
    let client = validate_client_side(&f, workers).map_err(invalid)?;

    let (admin_listen, admin_token) = validate_admin(&f).map_err(invalid)?;
    // Only now are both listeners known: a backend at one of them would
    // send requests back into this process.
    let own = OwnAddresses {
        listen: Some(listen),
        admin: admin_listen,
    };
    for p in &pools {
        for s in &p.servers {
            if let Some(why) = own.refusal(&s.name, &candidates(&s.name, s.addr)) {
                return Err(fixed(&pool_key(&p.name, "servers"), why));
            }
        }
    }

    let access_log = match f.access_log.as_deref() {
        None => crate::access_log::Format::Off,
        Some(s) => crate::access_log::Format::parse(s).ok_or_else(|| {
            fixed(
                "access_log",
                format!("unknown format `{s}` (expected off, combined, json or custom)"),
            )
        })?,
    };
    let (access_log_path, access_log_format) = validate_access_log(
        access_log,
        f.access_log_path.as_deref(),
        f.access_log_format.as_deref(),
    )
    .map_err(|(key, message)| fixed(key, message))?;

    let cluster = match f.cluster.take() {
        None => None,
        Some(t) => Some(validate_cluster(t).map_err(|(key, message)| fixed(key, message))?),
    };
    let (ring_depth, ring_setup_flags) = validate_rings(&f).map_err(invalid)?;
    let (trusted_proxies, proxy_protocol) = validate_forwarding(&f).map_err(invalid)?;

    Ok(Config {
        listen,
        workers,
        pools,
        routes,
        max_header_bytes: client.max_header_bytes,
        client_header_timeout: client.client_header_timeout,
        keepalive_timeout: client.keepalive_timeout,
        client_body_timeout: client.client_body_timeout,
        send_timeout: client.send_timeout,
        shutdown_timeout: client.shutdown_timeout,
        listen_backlog: client.listen_backlog,
        spin_before_park: client.spin_before_park,
        max_client_connections: client.max_client_connections,
        admin_listen,
        admin_token,
        access_log,
        access_log_path,
        access_log_format,
        ring_depth,
        ring_setup_flags,
        pin_workers: f.pin_workers.unwrap_or(true),
        cluster,
        trusted_proxies,
        proxy_protocol,
        forwarded: f.forwarded.unwrap_or(false),
    })
}

/// The default pool from the top-level keys, then each `[pools.NAME]`
/// (inheriting what it leaves out) in name order.
fn validate_pools(
    top: PoolKeys,
    named: Option<std::collections::BTreeMap<String, PoolKeys>>,
    cluster: bool,
) -> Result<Vec<PoolConfig>, KeyError> {
    let mut pools = Vec::new();
    for (name, keys) in named.unwrap_or_default() {
        pool::validate_name(&name)?;
        pools.push(pool::validate_pool(&name, keys.inherit(&top), cluster)?);
    }
    pools.insert(0, pool::validate_pool(DEFAULT_POOL, top, cluster)?);
    Ok(pools)
}

/// `[[routes]]`: every pool named exists; host and path syntax and
/// duplicates are [`RouteTable::new`]'s to judge.
fn validate_routes(
    entries: Option<Vec<RouteEntry>>,
    pools: &[PoolConfig],
) -> Result<RouteTable, KeyError> {
    let mut specs = Vec::new();
    for (i, r) in entries.unwrap_or_default().into_iter().enumerate() {
        let Some(pool) = pools.iter().position(|p| p.name == r.pool) else {
            let known: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
            return Err((
                format!("routes[{i}].pool"),
                format!("unknown pool `{}` (pools: {})", r.pool, known.join(", ")),
            ));
        };
        specs.push(RouteSpec {
            host: r.host,
            path_prefix: r.path_prefix,
            pool,
        });
    }
    RouteTable::new(specs).map_err(|e| (format!("routes[{}]", e.index()), e.to_string()))
}

/// The client side of the listener, validated together.
struct ClientSide {
    max_header_bytes: usize,
    client_header_timeout: Duration,
    keepalive_timeout: Duration,
    client_body_timeout: Duration,
    send_timeout: Duration,
    shutdown_timeout: Duration,
    listen_backlog: u32,
    spin_before_park: Option<Duration>,
    max_client_connections: usize,
}

/// Client-side limits and timeouts of the listener.
fn validate_client_side(f: &FileConfig, workers: usize) -> Result<ClientSide, KeyError> {
    let max_header_bytes = match f.max_header_bytes {
        None => DEFAULT_MAX_HEADER_BYTES,
        Some(n) if (1024..=1 << 20).contains(&n) => n as usize,
        Some(n) => {
            return Err((
                "max_header_bytes".into(),
                format!("{n} is out of range 1024..=1048576"),
            ));
        }
    };
    let nz = |key: &str, v: Option<u64>, default: u64| nonzero(key.to_string(), v, default);
    let listen_backlog = f.listen_backlog.unwrap_or(DEFAULT_LISTEN_BACKLOG);
    if listen_backlog == 0 {
        return Err(("listen_backlog".into(), "must be at least 1".into()));
    }
    let max_client_connections = match f.max_client_connections {
        Some(0) => {
            return Err(("max_client_connections".into(), "must be at least 1".into()));
        }
        Some(n) => n,
        None => default_client_connections(workers),
    };
    Ok(ClientSide {
        max_header_bytes,
        client_header_timeout: nz(
            "client_header_timeout",
            f.client_header_timeout,
            DEFAULT_CLIENT_HEADER_TIMEOUT_MS,
        )?,
        keepalive_timeout: nz(
            "keepalive_timeout",
            f.keepalive_timeout,
            DEFAULT_KEEPALIVE_TIMEOUT_MS,
        )?,
        client_body_timeout: nz(
            "client_body_timeout",
            f.client_body_timeout,
            DEFAULT_CLIENT_BODY_TIMEOUT_MS,
        )?,
        send_timeout: nz("send_timeout", f.send_timeout, DEFAULT_SEND_TIMEOUT_MS)?,
        shutdown_timeout: ms(f.shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT_MS),
        listen_backlog,
        spin_before_park: f
            .spin_before_park
            .filter(|&us| us > 0)
            .map(Duration::from_micros),
        max_client_connections,
    })
}

/// `admin_listen` and `admin_token`: off loopback, a token is required.
fn validate_admin(f: &FileConfig) -> Result<(Option<SocketAddr>, Option<String>), KeyError> {
    let admin_listen = match f.admin_listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN) {
        "" => None,
        s => Some(resolve(s).map_err(|m| ("admin_listen".to_string(), format!("`{s}`: {m}")))?),
    };
    let admin_token = f.admin_token.clone().filter(|t| !t.is_empty());
    if let Some(t) = &admin_token
        && (t.len() < 16 || t.bytes().any(|b| !b.is_ascii_graphic()))
    {
        return Err((
            "admin_token".into(),
            "must be at least 16 printable characters without spaces".into(),
        ));
    }
    if let Some(a) = admin_listen
        && !a.ip().is_loopback()
        && admin_token.is_none()
    {
        return Err((
            "admin_listen".into(),
            format!(
                "{a} is not a loopback address: set `admin_token` so the admin API is not open to the network"
            ),
        ));
    }
    Ok((admin_listen, admin_token))
}

/// `trusted_proxies` and `proxy_protocol`: a listener that takes PROXY
/// headers needs someone to take them from.
fn validate_forwarding(f: &FileConfig) -> Result<(crate::cidr::CidrSet, bool), KeyError> {
    let trusted = match &f.trusted_proxies {
        None => crate::cidr::CidrSet::new(),
        Some(list) => crate::cidr::CidrSet::parse(list).map_err(|e| {
            (
                "trusted_proxies".to_string(),
                format!("{e} (expected networks such as \"10.0.0.0/8\" or \"192.0.2.7\")"),
            )
        })?,
    };
    let proxy_protocol = f.proxy_protocol.unwrap_or(false);
    if proxy_protocol && trusted.is_empty() {
        return Err((
            "proxy_protocol".into(),
            "needs `trusted_proxies`: PROXY headers are accepted only from the proxies listed there".into(),
        ));
    }
    Ok((trusted, proxy_protocol))
}

/// `ring_depth` and `ring_setup_flags`.
fn validate_rings(f: &FileConfig) -> Result<(usize, u32), KeyError> {
    let ring_depth = f.ring_depth.unwrap_or(DEFAULT_RING_DEPTH);
    if !(32..=32768).contains(&ring_depth) || !ring_depth.is_power_of_two() {
        return Err((
            "ring_depth".into(),
            format!("{ring_depth} must be a power of two in 32..=32768"),
        ));
    }
    let flags = match &f.ring_setup_flags {
        None => DEFAULT_RING_SETUP_FLAGS,
        Some(names) => {
            let mut flags = 0;
            for name in names {
                flags |= crate::uring::flag_of(name).ok_or_else(|| {
                    (
                        "ring_setup_flags".to_string(),
                        format!(
                            "unknown flag `{name}` (known: {})",
                            crate::uring::describe(u32::MAX).replace('|', ", ")
                        ),
                    )
                })?;
            }
            flags
        }
    };
    Ok((ring_depth, flags))
}

/// Names key `key` of pool `pool` as written in the file.
fn pool_key(pool: &str, key: &str) -> String {
    if pool == DEFAULT_POOL {
        key.to_string()
    } else {
        format!("pools.{pool}.{key}")
    }
}

/// Client connections per worker when not configured: what the open-file
/// limit allows, counting one backend connection per client connection and
/// keeping 256 descriptors spare.
fn default_client_connections(workers: usize) -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    let nofile = if ok && lim.rlim_cur != libc::RLIM_INFINITY {
        lim.rlim_cur as usize
    } else {
        1 << 20
    };
    (nofile.saturating_sub(256) / (2 * workers.max(1))).max(64)
}

impl Config {
    /// One line describing the configuration, for `--check` and the startup log.
    pub fn summary(&self) -> String {
        let pools: Vec<String> = self
            .pools
            .iter()
            .map(|p| {
                let names: Vec<&str> = p.servers.iter().map(|s| s.name.as_str()).collect();
                format!("{} {:?} [{}]", p.name, p.strategy, names.join(", "))
            })
            .collect();
        format!(
            "listen {} workers {} pools {} routes {}",
            self.listen,
            self.workers,
            pools.join("; "),
            self.routes.len()
        )
    }

    /// The index in `pools` of the pool a request for `host` and `path`
    /// goes to: the first matching route's, else the default pool (0).
    #[inline]
    pub fn route(&self, host: Option<&[u8]>, path: &[u8]) -> usize {
        self.routes.lookup(host, path).unwrap_or(0)
    }

    /// The default pool: the file's top-level keys.
    pub fn default_pool(&self) -> &PoolConfig {
        &self.pools[0]
    }

    /// The pool named `name`, with its index.
    pub fn pool_named(&self, name: &str) -> Option<(usize, &PoolConfig)> {
        self.pools.iter().enumerate().find(|(_, p)| p.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("test.toml"), text)
    }

    #[test]
    fn trusted_proxies_and_forwarded() {
        let c = p("servers = ['127.0.0.1:1']").unwrap();
        assert!(c.trusted_proxies.is_empty() && !c.forwarded);
        let c = p(
            "servers = ['127.0.0.1:1']\ntrusted_proxies = ['10.0.0.0/8', '::1']\nforwarded = true",
        )
        .unwrap();
        assert!(c.trusted_proxies.contains("10.1.2.3".parse().unwrap()));
        assert!(c.trusted_proxies.contains("::1".parse().unwrap()));
        assert!(!c.trusted_proxies.contains("11.0.0.1".parse().unwrap()));
        assert!(c.forwarded);
        for bad in ["10.0.0.0/33", "example.com", ""] {
            let e = p(&format!(
                "servers = ['127.0.0.1:1']\ntrusted_proxies = ['{bad}']"
            ))
            .unwrap_err()
            .to_string();
            assert!(e.contains("`trusted_proxies`") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn original_file_runs_unchanged() {
        let c = p(r#"
servers = ["127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083"]
strategy = "LeastConnections"
max_fails = 5
fail_window = 60
connection_timeout = 1000
write_timeout = 1000
read_timeout = 1000
health_check_path = "/health"
pool_size = 10
"#)
        .expect("valid");
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        let d = c.default_pool();
        assert_eq!(d.servers.len(), 3);
        assert_eq!(d.strategy, Strategy::LeastConnections);
        assert_eq!(d.pool_size, 10);
        assert_eq!(d.timeouts.read, Duration::from_millis(1000));
        assert_eq!(c.pools.len(), 1);
        assert!(c.routes.is_empty());
    }

    #[test]
    fn servers_mix_strings_and_tables() {
        let c = p(r#"servers = ["127.0.0.1:1", { address = "127.0.0.1:2", weight = 3 }]"#).unwrap();
        assert_eq!(c.default_pool().servers[0].weight, 1);
        assert_eq!(c.default_pool().servers[1].weight, 3);
        assert_eq!(c.default_pool().strategy, Strategy::RoundRobin);
    }

    fn err(text: &str) -> String {
        p(text).expect_err("must fail").to_string()
    }

    #[test]
    fn own_addresses_in_any_spelling() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(reaches(a("127.0.0.1:80"), a("127.0.0.1:80")));
        assert!(!reaches(a("127.0.0.1:81"), a("127.0.0.1:80")));
        assert!(!reaches(a("127.0.0.2:80"), a("127.0.0.1:80")));
        assert!(reaches(a("[::ffff:127.0.0.1]:80"), a("127.0.0.1:80")));
        assert!(reaches(a("0.0.0.0:80"), a("127.0.0.1:80")));
        // A wildcard listener is reached through any local address.
        assert!(reaches(a("127.0.0.1:80"), a("0.0.0.0:80")));
        assert!(reaches(a("127.0.0.9:80"), a("0.0.0.0:80")));
        assert!(reaches(a("[::1]:80"), a("[::]:80")));
        assert!(reaches(a("[::1]:80"), a("0.0.0.0:80")));
        assert!(!reaches(a("192.0.2.1:80"), a("0.0.0.0:80")));
        // Port 0 is not bound yet: it matches nothing.
        assert!(!reaches(a("127.0.0.1:0"), a("127.0.0.1:0")));

        let own = OwnAddresses {
            listen: Some(a("127.0.0.1:8080")),
            admin: Some(a("127.0.0.1:9090")),
        };
        assert_eq!(own.reached_by(a("127.0.0.1:9090")), Some("admin_listen"));
        assert_eq!(own.reached_by(a("127.0.0.1:8080")), Some("listen"));
        assert_eq!(own.reached_by(a("127.0.0.1:8081")), None);
        let why = own
            .refusal(
                "localhost:8080",
                &candidates("localhost:8080", a("[::1]:8080")),
            )
            .unwrap_or_default();
        assert!(why.contains("`listen`"), "{why}");
    }

    #[test]
    fn servers_cannot_be_the_balancer_itself() {
        for (file, key) in [
            ("servers = [\"127.0.0.1:8080\"]", "own `listen`"),
            ("servers = [\"127.0.0.1:9090\"]", "own `admin_listen`"),
            (
                "servers = [\"localhost:7000\"]\nlisten = \"0.0.0.0:7000\"",
                "own `listen`",
            ),
            (
                "servers = [\"127.0.0.1:7001\"]\nadmin_listen = \"127.0.0.1:7001\"",
                "own `admin_listen`",
            ),
        ] {
            let e = err(file);
            assert!(
                e.contains("key `servers`") && e.contains(key),
                "{file}: {e}"
            );
        }
        assert!(p("servers = [\"127.0.0.1:8081\"]").is_ok());
        assert!(p("servers = [\"127.0.0.1:9090\"]\nadmin_listen = \"\"").is_ok());
    }

    #[test]
    fn admin_needs_a_token_off_loopback() {
        let e = err("servers = ['127.0.0.1:1']\nadmin_listen = '0.0.0.0:9090'");
        assert!(
            e.contains("`admin_listen`") && e.contains("admin_token"),
            "{e}"
        );
        let c = p("servers = ['127.0.0.1:1']\nadmin_listen = '0.0.0.0:9090'\nadmin_token = '0123456789abcdef0123'").unwrap();
        assert!(c.admin_token.is_some());
        let c = p("servers = ['127.0.0.1:1']\nadmin_listen = ''").unwrap();
        assert!(c.admin_listen.is_none());
        let c = p("servers = ['127.0.0.1:1']").unwrap();
        assert_eq!(c.admin_listen, Some("127.0.0.1:9090".parse().unwrap()));
    }

    #[test]
    fn access_log_keys() {
        use crate::access_log::{Format, Target};
        let c = p("servers = ['127.0.0.1:1']").unwrap();
        assert_eq!(c.access_log, Format::Off);
        assert_eq!(c.access_log_path, Target::Stdout);
        let c = p("servers = ['127.0.0.1:1']\naccess_log = 'custom'\naccess_log_path = '/tmp/a.log'\naccess_log_format = '$remote_addr $status'").unwrap();
        assert_eq!(c.access_log, Format::Custom);
        assert_eq!(c.access_log_path, Target::File("/tmp/a.log".into()));
        assert!(c.access_log_format.is_some());
        for (body, key, what) in [
            (
                "access_log_format = '$status $nope'",
                "`access_log_format`",
                "$nope",
            ),
            (
                "access_log = 'json'\naccess_log_format = '$status'",
                "`access_log_format`",
                "custom",
            ),
            ("access_log = 'custom'", "`access_log`", "access_log_format"),
            (
                "access_log_path = 'relative.log'",
                "`access_log_path`",
                "absolute",
            ),
            ("access_log = 'nginx'", "`access_log`", "custom"),
            (
                "access_log = 'json'\naccess_log_path = '/nonexistent-ekilibri/a.log'",
                "`access_log_path`",
                "/nonexistent-ekilibri",
            ),
        ] {
            let e = err(&format!("servers = ['127.0.0.1:1']\n{body}"));
            assert!(e.contains(key) && e.contains(what), "{body}: {e}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let e = err(r#"servers = ["127.0.0.1:1"]
bogus = 1"#);
        assert!(e.contains("bogus") && e.contains("test.toml"), "{e}");
        let e = err("servers = []");
        assert!(e.contains("`servers`") && e.contains("empty"), "{e}");
        let e = err(r#"servers = ["nonsense"]"#);
        assert!(e.contains("`servers`") && e.contains("nonsense"), "{e}");
        let e = err(r#"servers = ["127.0.0.1:1"]
pool_size = 0"#);
        assert!(e.contains("`pool_size`"), "{e}");
        let e = err(r#"servers = ["127.0.0.1:1"]
strategy = "Fastest""#);
        assert!(e.contains("`strategy`") && e.contains("Fastest"), "{e}");
        let e = err(r#"servers = ["127.0.0.1:1"]
pool_size = "ten""#);
        assert!(e.contains("pool_size") && e.contains(":2:"), "{e}");
        let e = err("servers = [");
        assert!(e.contains("test.toml:"), "{e}");
        let e = err(r#"servers = ["127.0.0.1:1", "127.0.0.1:1"]"#);
        assert!(e.contains("twice"), "{e}");
        let e = err(r#"servers = [{ address = "127.0.0.1:1", weight = 0 }]"#);
        assert!(e.contains("weight"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    #[cfg(feature = "cluster")]
    fn cluster_section() {
        let base = "servers = ['127.0.0.1:1']\n[cluster]\n";
        let c = p(&format!(
            "{base}etcd = ['http://127.0.0.1:2379', 'http://10.0.0.2:2379/']"
        ))
        .unwrap();
        let cl = c.cluster.expect("cluster section");
        assert_eq!(cl.prefix, DEFAULT_CLUSTER_PREFIX);
        assert_eq!(
            cl.timeout,
            Duration::from_millis(DEFAULT_CLUSTER_TIMEOUT_MS)
        );
        assert_eq!(cl.endpoints.len(), 2);
        assert!(p("servers = ['127.0.0.1:1']").unwrap().cluster.is_none());
        let only_etcd = p("servers = []\n[cluster]\netcd = ['http://e:1']").unwrap();
        assert!(only_etcd.default_pool().servers.is_empty() && only_etcd.cluster.is_some());
        let c = p(&format!(
            "{base}etcd = ['http://e:2379']\nprefix = '/ekilibri/prod/'\ntimeout = 500\nusername = 'u'\npassword = 'p'"
        ))
        .unwrap();
        let cl = c.cluster.unwrap();
        assert_eq!(cl.user, Some(("u".into(), "p".into())));
        assert_eq!(cl.timeout, Duration::from_millis(500));
        for (body, key, what) in [
            ("prefix = '/x/'", "cluster.etcd", "required"),
            ("etcd = []", "cluster.etcd", "empty"),
            ("etcd = ['ftp://e:1']", "cluster.etcd", "http://"),
            ("etcd = ['http://e']", "cluster.etcd", "port"),
            ("etcd = ['http://e:0']", "cluster.etcd", "port"),
            (
                "etcd = ['http://e:1', 'https://f:1']",
                "cluster.etcd",
                "mixes",
            ),
            (
                "etcd = ['http://e:1']\nprefix = 'x/'",
                "cluster.prefix",
                "start",
            ),
            (
                "etcd = ['http://e:1']\nprefix = '/x'",
                "cluster.prefix",
                "end",
            ),
            (
                "etcd = ['http://e:1']\nprefix = '/a b/'",
                "cluster.prefix",
                "printable",
            ),
            (
                "etcd = ['http://e:1']\ntimeout = 5",
                "cluster.timeout",
                "range",
            ),
            (
                "etcd = ['http://e:1']\nusername = 'u'",
                "cluster.password",
                "required",
            ),
            (
                "etcd = ['http://e:1']\npassword = 'p'",
                "cluster.username",
                "required",
            ),
            ("etcd = ['https://e:1']", "cluster.ca_file", "required"),
            (
                "etcd = ['http://e:1']\nca_file = '/etc/hostname'",
                "cluster.ca_file",
                "https",
            ),
            (
                "etcd = ['https://e:1']\nca_file = '/nonexistent/ca.pem'",
                "cluster.ca_file",
                "cannot read",
            ),
            (
                "etcd = ['https://e:1']\nca_file = '/etc/hostname'\ncert_file = '/etc/hostname'",
                "cluster.key_file",
                "together",
            ),
        ] {
            let e = err(&format!("{base}{body}"));
            assert!(e.contains(key) && e.contains(what), "{body}: {e}");
            assert!(!e.contains('\n'));
        }
        let e = err(&format!("{base}etcd = ['http://e:1']\nendpoints = 1"));
        assert!(e.contains("endpoints"), "{e}");
    }

    const POOLS: &str = r#"
servers = ["127.0.0.1:8081"]
read_timeout = 700
retries = 2

[pools.api]
servers = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 2 }]
strategy = "LeastConnections"
health_check_path = "/healthz"
read_timeout = 300

[pools.static]
servers = ["127.0.0.1:8081"]
send_proxy_protocol = "v2"

[[routes]]
host = "API.example.com"
path_prefix = "/v1/"
pool = "api"

[[routes]]
host = "*.example.com"
pool = "static"
"#;

    #[test]
    fn pools_inherit_the_top_level_and_routes_name_them() {
        let c = p(POOLS).expect("valid");
        let names: Vec<&str> = c.pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["default", "api", "static"]);
        let (i, api) = c.pool_named("api").unwrap();
        assert_eq!(i, 1);
        assert_eq!(api.strategy, Strategy::LeastConnections);
        assert_eq!(api.timeouts.read, Duration::from_millis(300));
        // Inherited from the top level, not the built-in default.
        assert_eq!(api.retry.retries, 2);
        assert_eq!(api.health.path, "/healthz");
        assert_eq!(api.servers[1].weight, 2);
        let (_, st) = c.pool_named("static").unwrap();
        assert_eq!(st.timeouts.read, Duration::from_millis(700));
        assert_eq!(st.send_proxy_protocol, Some(ProxyProtocolVersion::V2));
        assert_eq!(st.health.path, DEFAULT_HEALTH_CHECK_PATH);
        // The same address in two pools is two backends.
        assert_eq!(st.servers[0].addr, c.default_pool().servers[0].addr);
        assert_eq!(c.default_pool().send_proxy_protocol, None);
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.route(Some(b"api.EXAMPLE.com:8080"), b"/v1/x?q"), 1);
        assert_eq!(c.route(Some(b"api.example.com"), b"/v2/"), 2);
        assert_eq!(c.route(Some(b"www.example.com"), b"/"), 2);
        assert_eq!(c.route(Some(b"example.com"), b"/v1/"), 0);
        assert_eq!(c.route(None, b"/v1/"), 0);
    }

    #[test]
    fn pool_and_route_errors_name_the_key() {
        for (body, key, what) in [
            (
                "[pools.api]\nservers = ['127.0.0.1:1']\nread_timeout = 0",
                "`pools.api.read_timeout`",
                "at least 1",
            ),
            (
                "[pools.api]\nstrategy = 'Random'",
                "`pools.api.servers`",
                "required",
            ),
            ("[pools.api]\nservers = []", "`pools.api.servers`", "empty"),
            (
                "[pools.default]\nservers = ['127.0.0.1:1']",
                "`pools.default`",
                "top-level",
            ),
            (
                "[pools.'a b']\nservers = ['127.0.0.1:1']",
                "`pools.a b`",
                "letters",
            ),
            (
                "[pools.api]\nservers = ['127.0.0.1:1']\nsend_proxy_protocol = 'v3'",
                "`pools.api.send_proxy_protocol`",
                "v3",
            ),
            (
                "[pools.api]\nservers = ['127.0.0.1:1']\nbogus = 1",
                "bogus",
                "unknown field",
            ),
            (
                "[[routes]]\nhost = 'a'\npool = 'nope'",
                "`routes[0].pool`",
                "nope",
            ),
            ("[[routes]]\npool = 'default'", "routes[0]", "host"),
            (
                "[[routes]]\nhost = 'a'\npool = 'default'\n[[routes]]\nhost = 'A'\npool = 'default'",
                "routes[1]",
                "routes[0]",
            ),
            (
                "[[routes]]\nhost = 'a.*.com'\npool = 'default'",
                "routes[0]",
                "a.*.com",
            ),
            (
                "[pools.api]\nservers = ['127.0.0.1:8080']",
                "`pools.api.servers`",
                "own `listen`",
            ),
        ] {
            let e = err(&format!("servers = ['127.0.0.1:1']\n{body}"));
            assert!(e.contains(key) && e.contains(what), "{body}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
