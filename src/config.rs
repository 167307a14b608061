//! The configuration file: its TOML shape, validation, and the immutable
//! [`Config`] every executor reads.
//!
//! Parsing goes file -> [`FileConfig`] (serde, unknown keys rejected) ->
//! [`validate`] (a pure function that names the key at fault) -> [`Config`].
//! Every key of the original Ekilibri keeps its name, unit and meaning, so an
//! original `ekilibri.toml` runs unchanged. This module does not own runtime
//! state: hot changes of the backend set go through the control executor.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigError;

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
    /// The backends, in file order.
    pub servers: Vec<ServerSpec>,
    /// Backend selection strategy.
    pub strategy: Strategy,
    /// Passive check: failures within `fail_window` that take a backend out.
    pub max_fails: u32,
    /// Passive check window.
    pub fail_window: Duration,
    /// Backend connect timeout (routed calls and health checks).
    pub connection_timeout: Duration,
    /// Backend write timeout, per write.
    pub write_timeout: Duration,
    /// Backend read timeout, per read (time between bytes of the response).
    pub read_timeout: Duration,
    /// Path probed by active health checks.
    pub health_check_path: String,
    /// Period of active health checks.
    pub health_check_interval: Duration,
    /// Timeout of one active health check.
    pub health_check_timeout: Duration,
    /// Consecutive passed checks that bring a backend back.
    pub healthy_threshold: u32,
    /// Consecutive failed checks that take a backend out.
    pub unhealthy_threshold: u32,
    /// Idle keep-alive connections kept per backend per worker.
    pub pool_size: usize,
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
    /// Extra attempts for safely retryable failures.
    pub retries: u32,
    /// Accept backlog per worker socket.
    pub listen_backlog: u32,
    /// glommio `spin_before_park`, off unless set (busy polling steals CPU
    /// from clients and backends on the same host).
    pub spin_before_park: Option<Duration>,
    /// Consecutive failures that open a breaker (0: breakers off).
    pub breaker_threshold: u32,
    /// How long an open breaker refuses traffic.
    pub breaker_open_duration: Duration,
    /// Concurrent trial requests per worker while half-open; as many
    /// successes close the breaker.
    pub breaker_half_open_requests: u32,
    /// Base of the exponential retry backoff.
    pub retry_backoff: Duration,
    /// Cap of the retry backoff.
    pub retry_backoff_max: Duration,
    /// Retries allowed as a fraction of requests.
    pub retry_budget: f64,
    /// Also retry non-idempotent requests whose body was sent.
    pub retry_non_idempotent: bool,
    /// Concurrent requests per backend across the process (0: unlimited);
    /// each worker gets an equal share, rounded up.
    pub max_connections: u32,
    /// Requests waiting for a slot per worker and backend before 503.
    pub queue_size: usize,
    /// Longest wait for a slot before 503.
    pub queue_timeout: Duration,
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
    /// Peers whose `X-Forwarded-*`, `Forwarded` and `X-Request-Id` fields
    /// are believed (`trusted_proxies`); from any other peer they are
    /// replaced. Empty by default: no one is trusted.
    pub trusted_proxies: crate::cidr::CidrSet,
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

/// The `[cluster]` section: where the shared backend registry lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// etcd client URLs (`http://host:port` or `https://host:port`).
    pub endpoints: Vec<String>,
    /// Key prefix; starts and ends with `/`.
    pub prefix: String,
    /// Time limit of one etcd call.
    pub timeout: Duration,
    /// etcd user name and password.
    pub user: Option<(String, String)>,
    /// CA certificate (PEM) that signs the etcd servers' certificates.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// Key (PEM) of the client certificate.
    pub key_file: Option<PathBuf>,
}

/// The file as written. Every key but `servers` is optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    servers: Option<Vec<ServerEntry>>,
    strategy: Option<String>,
    max_fails: Option<u32>,
    fail_window: Option<u64>,
    connection_timeout: Option<u64>,
    write_timeout: Option<u64>,
    read_timeout: Option<u64>,
    health_check_path: Option<String>,
    pool_size: Option<i64>,
    listen: Option<String>,
    workers: Option<i64>,
    max_header_bytes: Option<i64>,
    client_header_timeout: Option<u64>,
    keepalive_timeout: Option<u64>,
    client_body_timeout: Option<u64>,
    send_timeout: Option<u64>,
    health_check_interval: Option<u64>,
    health_check_timeout: Option<u64>,
    healthy_threshold: Option<u32>,
    unhealthy_threshold: Option<u32>,
    shutdown_timeout: Option<u64>,
    retries: Option<u32>,
    listen_backlog: Option<u32>,
    spin_before_park: Option<u64>,
    breaker_threshold: Option<u32>,
    breaker_open_duration: Option<u64>,
    breaker_half_open_requests: Option<u32>,
    retry_backoff: Option<u64>,
    retry_backoff_max: Option<u64>,
    retry_budget: Option<f64>,
    retry_non_idempotent: Option<bool>,
    max_connections: Option<u32>,
    queue_size: Option<usize>,
    queue_timeout: Option<u64>,
    max_client_connections: Option<usize>,
    admin_listen: Option<String>,
    admin_token: Option<String>,
    access_log: Option<String>,
    access_log_path: Option<String>,
    access_log_format: Option<String>,
    ring_depth: Option<usize>,
    ring_setup_flags: Option<Vec<String>>,
    pin_workers: Option<bool>,
    cluster: Option<ClusterTable>,
    trusted_proxies: Option<Vec<String>>,
    forwarded: Option<bool>,
}

/// The `[cluster]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterTable {
    etcd: Option<Vec<String>>,
    prefix: Option<String>,
    timeout: Option<u64>,
    username: Option<String>,
    password: Option<String>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

/// A `servers` entry: `"host:port"` or `{ address = "host:port", weight = N }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ServerEntry {
    Plain(String),
    Table(ServerTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerTable {
    address: String,
    weight: Option<i64>,
}

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

fn ms(v: Option<u64>, default: u64) -> Duration {
    Duration::from_millis(v.unwrap_or(default))
}

/// Validates a parsed file into a [`Config`]. Pure apart from resolving
/// host names in `servers` and `listen`.
pub fn validate(path: &Path, f: FileConfig) -> Result<Config, ConfigError> {
    let invalid = |key: &'static str, message: String| ConfigError::Invalid {
        path: path.to_owned(),
        key,
        message,
    };

    let entries = f.servers.ok_or_else(|| {
        invalid(
            "servers",
            "is required: list the backends as \"host:port\"".into(),
        )
    })?;
    // With a cluster registry the pool may come from etcd alone.
    if entries.is_empty() && f.cluster.is_none() {
        return Err(invalid(
            "servers",
            "is empty: list at least one backend (or add a [cluster] section)".into(),
        ));
    }
    let mut servers = Vec::with_capacity(entries.len());
    for entry in entries {
        let (name, weight) = match entry {
            ServerEntry::Plain(s) => (s, 1),
            ServerEntry::Table(t) => (t.address, t.weight.unwrap_or(1)),
        };
        if !(1..=MAX_WEIGHT as i64).contains(&weight) {
            return Err(invalid(
                "servers",
                format!("`{name}`: weight {weight} is out of range 1..={MAX_WEIGHT}"),
            ));
        }
        let addr = resolve(&name).map_err(|m| invalid("servers", format!("`{name}`: {m}")))?;
        if servers.iter().any(|s: &ServerSpec| s.addr == addr) {
            return Err(invalid("servers", format!("`{name}` is listed twice")));
        }
        servers.push(ServerSpec {
            name,
            addr,
            weight: weight as u32,
        });
    }

    let strategy = match f.strategy.as_deref() {
        None => Strategy::RoundRobin,
        Some(s) => Strategy::parse(s).ok_or_else(|| {
            invalid(
                "strategy",
                format!(
                    "unknown strategy `{s}` (expected one of {})",
                    Strategy::NAMES
                ),
            )
        })?,
    };

    let listen_s = f.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = resolve(listen_s).map_err(|m| invalid("listen", format!("`{listen_s}`: {m}")))?;

    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let workers = match f.workers {
        None => cpus,
        Some(n) if (1..=1024).contains(&n) => n as usize,
        Some(n) => return Err(invalid("workers", format!("{n} is out of range 1..=1024"))),
    };

    let pool_size = match f.pool_size {
        None => DEFAULT_POOL_SIZE,
        Some(n) if (1..=1_000_000).contains(&n) => n as usize,
        Some(n) => {
            return Err(invalid(
                "pool_size",
                format!(
                    "{n} is out of range 1..=1000000 (idle connections per backend per worker)"
                ),
            ));
        }
    };

    let max_header_bytes = match f.max_header_bytes {
        None => DEFAULT_MAX_HEADER_BYTES,
        Some(n) if (1024..=1 << 20).contains(&n) => n as usize,
        Some(n) => {
            return Err(invalid(
                "max_header_bytes",
                format!("{n} is out of range 1024..=1048576"),
            ));
        }
    };

    let max_fails = f.max_fails.unwrap_or(DEFAULT_MAX_FAILS);
    if max_fails == 0 {
        return Err(invalid("max_fails", "must be at least 1".into()));
    }
    let fail_window = Duration::from_secs(f.fail_window.unwrap_or(DEFAULT_FAIL_WINDOW_S));
    if fail_window.is_zero() {
        return Err(invalid("fail_window", "must be at least 1 second".into()));
    }

    let health_check_path = f
        .health_check_path
        .unwrap_or_else(|| DEFAULT_HEALTH_CHECK_PATH.to_string());
    if !health_check_path.starts_with('/')
        || health_check_path.bytes().any(|b| b <= b' ' || b == 0x7f)
    {
        return Err(invalid(
            "health_check_path",
            format!(
                "`{health_check_path}` must start with '/' and contain no spaces or control characters"
            ),
        ));
    }

    let nonzero = |key: &'static str, v: Option<u64>, default: u64| {
        let d = ms(v, default);
        if d.is_zero() {
            Err(invalid(key, "must be at least 1 millisecond".into()))
        } else {
            Ok(d)
        }
    };
    let connection_timeout = nonzero(
        "connection_timeout",
        f.connection_timeout,
        DEFAULT_BACKEND_TIMEOUT_MS,
    )?;
    let write_timeout = nonzero("write_timeout", f.write_timeout, DEFAULT_BACKEND_TIMEOUT_MS)?;
    let read_timeout = nonzero("read_timeout", f.read_timeout, DEFAULT_BACKEND_TIMEOUT_MS)?;
    let health_check_interval = nonzero(
        "health_check_interval",
        f.health_check_interval,
        DEFAULT_HEALTH_CHECK_INTERVAL_MS,
    )?;
    let health_check_timeout = match f.health_check_timeout {
        Some(v) => nonzero("health_check_timeout", Some(v), 0)?,
        None => connection_timeout + read_timeout,
    };
    let client_header_timeout = nonzero(
        "client_header_timeout",
        f.client_header_timeout,
        DEFAULT_CLIENT_HEADER_TIMEOUT_MS,
    )?;
    let keepalive_timeout = nonzero(
        "keepalive_timeout",
        f.keepalive_timeout,
        DEFAULT_KEEPALIVE_TIMEOUT_MS,
    )?;
    let shutdown_timeout = ms(f.shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT_MS);
    let client_body_timeout = nonzero(
        "client_body_timeout",
        f.client_body_timeout,
        DEFAULT_CLIENT_BODY_TIMEOUT_MS,
    )?;
    let send_timeout = nonzero("send_timeout", f.send_timeout, DEFAULT_SEND_TIMEOUT_MS)?;

    let healthy_threshold = f.healthy_threshold.unwrap_or(DEFAULT_HEALTHY_THRESHOLD);
    if healthy_threshold == 0 {
        return Err(invalid("healthy_threshold", "must be at least 1".into()));
    }
    let unhealthy_threshold = f.unhealthy_threshold.unwrap_or(DEFAULT_UNHEALTHY_THRESHOLD);
    if unhealthy_threshold == 0 {
        return Err(invalid("unhealthy_threshold", "must be at least 1".into()));
    }
    let retries = f.retries.unwrap_or(DEFAULT_RETRIES);
    if retries > 10 {
        return Err(invalid("retries", format!("{retries} is more than 10")));
    }
    let listen_backlog = f.listen_backlog.unwrap_or(DEFAULT_LISTEN_BACKLOG);
    if listen_backlog == 0 {
        return Err(invalid("listen_backlog", "must be at least 1".into()));
    }
    let spin_before_park = f
        .spin_before_park
        .filter(|&us| us > 0)
        .map(Duration::from_micros);

    let breaker_open_duration = nonzero(
        "breaker_open_duration",
        f.breaker_open_duration,
        DEFAULT_BREAKER_OPEN_MS,
    )?;
    let breaker_half_open_requests = f
        .breaker_half_open_requests
        .unwrap_or(DEFAULT_BREAKER_HALF_OPEN_REQUESTS);
    if breaker_half_open_requests == 0 {
        return Err(invalid(
            "breaker_half_open_requests",
            "must be at least 1".into(),
        ));
    }
    let retry_backoff = ms(f.retry_backoff, DEFAULT_RETRY_BACKOFF_MS);
    let retry_backoff_max = ms(f.retry_backoff_max, DEFAULT_RETRY_BACKOFF_MAX_MS);
    if retry_backoff_max < retry_backoff {
        return Err(invalid(
            "retry_backoff_max",
            "must not be smaller than retry_backoff".into(),
        ));
    }
    let retry_budget = f.retry_budget.unwrap_or(DEFAULT_RETRY_BUDGET);
    if !(0.0..=10.0).contains(&retry_budget) {
        return Err(invalid(
            "retry_budget",
            format!("{retry_budget} is out of range 0.0..=10.0"),
        ));
    }
    let queue_timeout = ms(f.queue_timeout, DEFAULT_QUEUE_TIMEOUT_MS);
    let max_client_connections = match f.max_client_connections {
        Some(0) => {
            return Err(invalid(
                "max_client_connections",
                "must be at least 1".into(),
            ));
        }
        Some(n) => n,
        None => default_client_connections(workers),
    };

    let admin_listen = match f.admin_listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN) {
        "" => None,
        s => Some(resolve(s).map_err(|m| invalid("admin_listen", format!("`{s}`: {m}")))?),
    };
    let admin_token = f.admin_token.filter(|t| !t.is_empty());
    if let Some(t) = &admin_token
        && (t.len() < 16 || t.bytes().any(|b| !b.is_ascii_graphic()))
    {
        return Err(invalid(
            "admin_token",
            "must be at least 16 printable characters without spaces".into(),
        ));
    }
    if let Some(a) = admin_listen
        && !a.ip().is_loopback()
        && admin_token.is_none()
    {
        return Err(invalid(
            "admin_listen",
            format!(
                "{a} is not a loopback address: set `admin_token` so the admin API is not open to the network"
            ),
        ));
    }
    // Only now are both listeners known: a backend at one of them would
    // send requests back into this process.
    let own = OwnAddresses {
        listen: Some(listen),
        admin: admin_listen,
    };
    for s in &servers {
        if let Some(why) = own.refusal(&s.name, &candidates(&s.name, s.addr)) {
            return Err(invalid("servers", why));
        }
    }
    let access_log = match f.access_log.as_deref() {
        None => crate::access_log::Format::Off,
        Some(s) => crate::access_log::Format::parse(s).ok_or_else(|| {
            invalid(
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
    .map_err(|(key, message)| invalid(key, message))?;

    let cluster = match f.cluster {
        None => None,
        Some(t) => Some(validate_cluster(t).map_err(|(key, message)| invalid(key, message))?),
    };

    let (trusted_proxies, forwarded) =
        validate_forwarding(f.trusted_proxies.as_deref(), f.forwarded)
            .map_err(|(key, message)| invalid(key, message))?;

    let ring_depth = f.ring_depth.unwrap_or(DEFAULT_RING_DEPTH);
    if !(32..=32768).contains(&ring_depth) || !ring_depth.is_power_of_two() {
        return Err(invalid(
            "ring_depth",
            format!("{ring_depth} must be a power of two in 32..=32768"),
        ));
    }

    let ring_setup_flags = match f.ring_setup_flags {
        None => DEFAULT_RING_SETUP_FLAGS,
        Some(names) => {
            let mut flags = 0;
            for name in &names {
                flags |= crate::uring::flag_of(name).ok_or_else(|| {
                    invalid(
                        "ring_setup_flags",
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

    Ok(Config {
        listen,
        workers,
        servers,
        strategy,
        max_fails,
        fail_window,
        connection_timeout,
        write_timeout,
        read_timeout,
        health_check_path,
        health_check_interval,
        health_check_timeout,
        healthy_threshold,
        unhealthy_threshold,
        pool_size,
        max_header_bytes,
        client_header_timeout,
        keepalive_timeout,
        client_body_timeout,
        send_timeout,
        shutdown_timeout,
        retries,
        listen_backlog,
        spin_before_park,
        breaker_threshold: f.breaker_threshold.unwrap_or(DEFAULT_BREAKER_THRESHOLD),
        breaker_open_duration,
        breaker_half_open_requests,
        retry_backoff,
        retry_backoff_max,
        retry_budget,
        retry_non_idempotent: f.retry_non_idempotent.unwrap_or(false),
        max_connections: f.max_connections.unwrap_or(0),
        queue_size: f.queue_size.unwrap_or(DEFAULT_QUEUE_SIZE),
        queue_timeout,
        max_client_connections,
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
        forwarded,
    })
}

/// Checks `trusted_proxies` (CIDR networks or single addresses) and
/// `forwarded`; an error names the key and the bad entry.
fn validate_forwarding(
    trusted_proxies: Option<&[String]>,
    forwarded: Option<bool>,
) -> Result<(crate::cidr::CidrSet, bool), (&'static str, String)> {
    let set = crate::cidr::CidrSet::parse(trusted_proxies.unwrap_or_default()).map_err(|e| {
        (
            "trusted_proxies",
            format!("{e} (expected networks such as \"10.0.0.0/8\" or \"192.0.2.7\")"),
        )
    })?;
    Ok((set, forwarded.unwrap_or(false)))
}

/// Checks `access_log_path` and `access_log_format` against `access_log`;
/// errors name the key.
fn validate_access_log(
    format: crate::access_log::Format,
    path: Option<&str>,
    template: Option<&str>,
) -> Result<
    (
        crate::access_log::Target,
        Option<crate::access_log::Template>,
    ),
    (&'static str, String),
> {
    use crate::access_log::{Format, Target, Template};
    let target = Target::parse(path.unwrap_or("-")).map_err(|m| ("access_log_path", m))?;
    let template = match template {
        None => None,
        Some(t) => Some(Template::parse(t).map_err(|m| ("access_log_format", m))?),
    };
    // Like the TLS files of [cluster]: a missing directory is a config
    // error `--check` reports (permissions show when the file is opened).
    if let Target::File(p) = &target
        && format.is_on()
        && let Some(dir) = p.parent()
        && !dir.is_dir()
    {
        return Err((
            "access_log_path",
            format!("directory `{}` does not exist", dir.display()),
        ));
    }
    match (format, &template) {
        (Format::Custom, None) => Err((
            "access_log",
            "\"custom\" needs `access_log_format` (an nginx log_format template)".into(),
        )),
        (Format::Combined | Format::Json, Some(_)) => Err((
            "access_log_format",
            "applies only with access_log = \"custom\"".into(),
        )),
        _ => Ok((target, template)),
    }
}

/// Checks the `[cluster]` table; errors name the key.
fn validate_cluster(t: ClusterTable) -> Result<ClusterConfig, (&'static str, String)> {
    if !cfg!(feature = "cluster") {
        return Err((
            "cluster",
            "this ekilibri was built without cluster support (cargo feature `cluster`)".into(),
        ));
    }
    let endpoints = t.etcd.ok_or((
        "cluster.etcd",
        "is required: list the etcd client URLs, e.g. [\"http://127.0.0.1:2379\"]".to_string(),
    ))?;
    if endpoints.is_empty() {
        return Err((
            "cluster.etcd",
            "is empty: list at least one etcd client URL".into(),
        ));
    }
    let mut https = 0;
    for e in &endpoints {
        let rest = if let Some(r) = e.strip_prefix("https://") {
            https += 1;
            r
        } else if let Some(r) = e.strip_prefix("http://") {
            r
        } else {
            return Err((
                "cluster.etcd",
                format!("`{e}` is not an http:// or https:// URL"),
            ));
        };
        let hostport = rest.strip_suffix('/').unwrap_or(rest);
        let ok = match hostport.rsplit_once(':') {
            Some((host, port)) => {
                !host.is_empty()
                    && !host.contains(['/', '?', '#', '@', ' '])
                    && port.parse::<u16>().is_ok_and(|p| p != 0)
            }
            None => false,
        };
        if !ok {
            return Err((
                "cluster.etcd",
                format!("`{e}` needs a host and a port, e.g. http://127.0.0.1:2379"),
            ));
        }
    }
    if https != 0 && https != endpoints.len() {
        return Err((
            "cluster.etcd",
            "mixes http:// and https:// endpoints: use one scheme for all".into(),
        ));
    }
    let prefix = t
        .prefix
        .unwrap_or_else(|| DEFAULT_CLUSTER_PREFIX.to_string());
    if !prefix.starts_with('/')
        || !prefix.ends_with('/')
        || prefix.len() < 2
        || prefix.bytes().any(|b| !b.is_ascii_graphic())
    {
        return Err((
            "cluster.prefix",
            format!(
                "`{prefix}` must start and end with `/` and hold printable characters only, e.g. \"/ekilibri/prod/\""
            ),
        ));
    }
    let timeout = t.timeout.unwrap_or(DEFAULT_CLUSTER_TIMEOUT_MS);
    if !(100..=60_000).contains(&timeout) {
        return Err((
            "cluster.timeout",
            format!("{timeout} ms is out of range 100..=60000"),
        ));
    }
    let user = match (t.username, t.password) {
        (None, None) => None,
        (Some(u), Some(p)) if !u.is_empty() => Some((u, p)),
        (Some(_), Some(_)) => return Err(("cluster.username", "is empty".into())),
        (Some(_), None) => return Err(("cluster.password", "is required with `username`".into())),
        (None, Some(_)) => return Err(("cluster.username", "is required with `password`".into())),
    };
    let tls_files = [
        ("cluster.ca_file", &t.ca_file),
        ("cluster.cert_file", &t.cert_file),
        ("cluster.key_file", &t.key_file),
    ];
    for (key, file) in tls_files {
        if let Some(path) = file {
            if https == 0 {
                return Err((
                    key,
                    "is set but the etcd endpoints are http://: use https:// URLs for TLS".into(),
                ));
            }
            if let Err(e) = std::fs::metadata(path) {
                return Err((key, format!("cannot read `{}`: {e}", path.display())));
            }
        }
    }
    if t.cert_file.is_some() != t.key_file.is_some() {
        let key = if t.cert_file.is_some() {
            "cluster.key_file"
        } else {
            "cluster.cert_file"
        };
        return Err((key, "cert_file and key_file go together".into()));
    }
    if https != 0 && t.ca_file.is_none() {
        return Err((
            "cluster.ca_file",
            "is required with https:// endpoints: the CA that signs the etcd certificates".into(),
        ));
    }
    Ok(ClusterConfig {
        endpoints,
        prefix,
        timeout: Duration::from_millis(timeout),
        user,
        ca_file: t.ca_file,
        cert_file: t.cert_file,
        key_file: t.key_file,
    })
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
/// `listener`: the same port and, for a wildcard listener (0.0.0.0, [::]),
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
fn resolve(s: &str) -> Result<SocketAddr, String> {
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

impl Config {
    /// One line describing the configuration, for `--check` and the startup log.
    pub fn summary(&self) -> String {
        let names: Vec<&str> = self.servers.iter().map(|s| s.name.as_str()).collect();
        format!(
            "listen {} workers {} strategy {:?} backends [{}]",
            self.listen,
            self.workers,
            self.strategy,
            names.join(", ")
        )
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
        assert_eq!(c.servers.len(), 3);
        assert_eq!(c.strategy, Strategy::LeastConnections);
        assert_eq!(c.pool_size, 10);
        assert_eq!(c.read_timeout, Duration::from_millis(1000));
    }

    #[test]
    fn servers_mix_strings_and_tables() {
        let c = p(r#"servers = ["127.0.0.1:1", { address = "127.0.0.1:2", weight = 3 }]"#).unwrap();
        assert_eq!(c.servers[0].weight, 1);
        assert_eq!(c.servers[1].weight, 3);
        assert_eq!(c.strategy, Strategy::RoundRobin);
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
        assert!(only_etcd.servers.is_empty() && only_etcd.cluster.is_some());
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
}
