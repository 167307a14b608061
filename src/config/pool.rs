//! One pool of backends and its settings, one type per concern: backend
//! timeouts, health checks, retries, the circuit breaker and connection
//! limits, each validated by its own function.
//!
//! The default pool is the file's top level (the original Ekilibri keys);
//! each `[pools.NAME]` table inherits every key it leaves out from the top
//! level except `servers` ([`PoolKeys::inherit`]). Errors name the key as
//! the operator wrote it: `read_timeout` for the default pool,
//! `pools.api.read_timeout` for a named one.

use std::net::SocketAddr;
use std::time::Duration;

use super::address::resolve;
use super::file::{PoolKeys, ServerEntry};
use super::{
    DEFAULT_BACKEND_TIMEOUT_MS, DEFAULT_BREAKER_HALF_OPEN_REQUESTS, DEFAULT_BREAKER_OPEN_MS,
    DEFAULT_BREAKER_THRESHOLD, DEFAULT_FAIL_WINDOW_S, DEFAULT_HEALTH_CHECK_INTERVAL_MS,
    DEFAULT_HEALTH_CHECK_PATH, DEFAULT_HEALTHY_THRESHOLD, DEFAULT_MAX_FAILS, DEFAULT_POOL_SIZE,
    DEFAULT_QUEUE_SIZE, DEFAULT_QUEUE_TIMEOUT_MS, DEFAULT_RETRIES, DEFAULT_RETRY_BACKOFF_MAX_MS,
    DEFAULT_RETRY_BACKOFF_MS, DEFAULT_RETRY_BUDGET, DEFAULT_UNHEALTHY_THRESHOLD,
};
use super::{MAX_WEIGHT, ServerSpec, Strategy};

/// The name of the pool the top-level keys describe.
pub const DEFAULT_POOL: &str = "default";

/// A key at fault and what is wrong with it.
pub(super) type KeyError = (String, String);

/// Backend I/O time limits of a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendTimeouts {
    /// Connect timeout (routed calls and health checks).
    pub connect: Duration,
    /// Write timeout, per write.
    pub write: Duration,
    /// Read timeout, per read (time between bytes of the response).
    pub read: Duration,
}

/// Active and passive health checking of a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSettings {
    /// Path probed by active checks.
    pub path: String,
    /// Period of active checks.
    pub interval: Duration,
    /// Timeout of one active check.
    pub timeout: Duration,
    /// Consecutive passed checks that bring a backend back.
    pub healthy_threshold: u32,
    /// Consecutive failed checks that take a backend out.
    pub unhealthy_threshold: u32,
    /// Passive check: failures within `fail_window` that take a backend out.
    pub max_fails: u32,
    /// Passive check window.
    pub fail_window: Duration,
}

/// Retries of a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySettings {
    /// Extra attempts for safely retryable failures.
    pub retries: u32,
    /// Base of the exponential retry backoff.
    pub backoff: Duration,
    /// Cap of the retry backoff.
    pub backoff_max: Duration,
    /// Retries allowed as a fraction of requests.
    pub budget: f64,
    /// Also retry non-idempotent requests whose body was sent.
    pub non_idempotent: bool,
}

/// The circuit breaker of each backend of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open a breaker (0: breakers off).
    pub threshold: u32,
    /// How long an open breaker refuses traffic.
    pub open_duration: Duration,
    /// Concurrent trial requests per worker while half-open; as many
    /// successes close the breaker.
    pub half_open_requests: u32,
}

/// Concurrency limits on each backend of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendLimits {
    /// Concurrent requests per backend across the process (0: unlimited);
    /// each worker gets an equal share, rounded up.
    pub max_connections: u32,
    /// Requests waiting for a slot per worker and backend before 503.
    pub queue_size: usize,
    /// Longest wait for a slot before 503.
    pub queue_timeout: Duration,
}

/// Which PROXY protocol header to send to a pool's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocolVersion {
    /// The text header.
    V1,
    /// The binary header.
    V2,
}

/// One pool of backends and how it is served.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// `default` for the top level, else the `[pools.NAME]` name.
    pub name: String,
    /// The backends, in file order.
    pub servers: Vec<ServerSpec>,
    /// Backend selection strategy.
    pub strategy: Strategy,
    /// Backend I/O time limits.
    pub timeouts: BackendTimeouts,
    /// Health checking.
    pub health: HealthSettings,
    /// Retries.
    pub retry: RetrySettings,
    /// Circuit breakers.
    pub breaker: BreakerSettings,
    /// Concurrency limits.
    pub limits: BackendLimits,
    /// Idle keep-alive connections kept per backend per worker.
    pub pool_size: usize,
    /// PROXY protocol header sent on each backend connection, if any.
    pub send_proxy_protocol: Option<ProxyProtocolVersion>,
}

impl PoolConfig {
    /// True for the pool of the file's top level.
    pub fn is_default(&self) -> bool {
        self.name == DEFAULT_POOL
    }
}

/// Names the key `key` of pool `pool` as the operator wrote it.
fn key_of(pool: &str, key: &str) -> String {
    if pool == DEFAULT_POOL {
        key.to_string()
    } else {
        format!("pools.{pool}.{key}")
    }
}

/// Checks a pool name: it becomes a metrics label and an etcd key segment.
pub(super) fn validate_name(name: &str) -> Result<(), KeyError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        return Err((
            format!("pools.{name}"),
            "a pool name is 1 to 64 letters, digits, `_` or `-`".into(),
        ));
    }
    if name == DEFAULT_POOL {
        return Err((
            format!("pools.{name}"),
            "`default` is the pool of the top-level keys; pick another name".into(),
        ));
    }
    Ok(())
}

/// Validates one pool's keys (already inherited from the top level for a
/// named pool). `may_be_empty`: cluster mode can fill the pool from etcd.
pub(super) fn validate_pool(
    name: &str,
    k: PoolKeys,
    may_be_empty: bool,
) -> Result<PoolConfig, KeyError> {
    let key = |k: &str| key_of(name, k);
    let servers = validate_servers(name, k.servers.clone(), may_be_empty)?;
    let strategy = match k.strategy.as_deref() {
        None => Strategy::RoundRobin,
        Some(s) => Strategy::parse(s).ok_or_else(|| {
            (
                key("strategy"),
                format!(
                    "unknown strategy `{s}` (expected one of {})",
                    Strategy::NAMES
                ),
            )
        })?,
    };
    let timeouts = BackendTimeouts {
        connect: nonzero(
            key("connection_timeout"),
            k.connection_timeout,
            DEFAULT_BACKEND_TIMEOUT_MS,
        )?,
        write: nonzero(
            key("write_timeout"),
            k.write_timeout,
            DEFAULT_BACKEND_TIMEOUT_MS,
        )?,
        read: nonzero(
            key("read_timeout"),
            k.read_timeout,
            DEFAULT_BACKEND_TIMEOUT_MS,
        )?,
    };
    let health = validate_health(name, &k, &timeouts)?;
    let retry = validate_retry(name, &k)?;
    let breaker = BreakerSettings {
        threshold: k.breaker_threshold.unwrap_or(DEFAULT_BREAKER_THRESHOLD),
        open_duration: nonzero(
            key("breaker_open_duration"),
            k.breaker_open_duration,
            DEFAULT_BREAKER_OPEN_MS,
        )?,
        half_open_requests: at_least_one(
            key("breaker_half_open_requests"),
            k.breaker_half_open_requests,
            DEFAULT_BREAKER_HALF_OPEN_REQUESTS,
        )?,
    };
    let limits = BackendLimits {
        max_connections: k.max_connections.unwrap_or(0),
        queue_size: k.queue_size.unwrap_or(DEFAULT_QUEUE_SIZE),
        queue_timeout: ms(k.queue_timeout, DEFAULT_QUEUE_TIMEOUT_MS),
    };
    let pool_size = match k.pool_size {
        None => DEFAULT_POOL_SIZE,
        Some(n) if (1..=1_000_000).contains(&n) => n as usize,
        Some(n) => {
            return Err((
                key("pool_size"),
                format!(
                    "{n} is out of range 1..=1000000 (idle connections per backend per worker)"
                ),
            ));
        }
    };
    let send_proxy_protocol = match k.send_proxy_protocol.as_deref() {
        None | Some("off") => None,
        Some("v1") => Some(ProxyProtocolVersion::V1),
        Some("v2") => Some(ProxyProtocolVersion::V2),
        Some(other) => {
            return Err((
                key("send_proxy_protocol"),
                format!("unknown value `{other}` (expected \"v1\", \"v2\" or \"off\")"),
            ));
        }
    };
    Ok(PoolConfig {
        name: name.to_string(),
        servers,
        strategy,
        timeouts,
        health,
        retry,
        breaker,
        limits,
        pool_size,
        send_proxy_protocol,
    })
}

/// The `servers` list: resolved, weights in range, no address twice.
fn validate_servers(
    pool: &str,
    entries: Option<Vec<ServerEntry>>,
    may_be_empty: bool,
) -> Result<Vec<ServerSpec>, KeyError> {
    let key = key_of(pool, "servers");
    // A named pool in cluster mode may be filled from etcd alone.
    let entries = match entries {
        None if may_be_empty && pool != DEFAULT_POOL => Some(Vec::new()),
        e => e,
    };
    let entries = entries.ok_or_else(|| {
        (
            key.clone(),
            "is required: list the backends as \"host:port\"".to_string(),
        )
    })?;
    if entries.is_empty() && !may_be_empty {
        return Err((
            key,
            "is empty: list at least one backend (or add a [cluster] section)".into(),
        ));
    }
    let mut servers: Vec<ServerSpec> = Vec::with_capacity(entries.len());
    for entry in entries {
        let (name, weight) = match entry {
            ServerEntry::Plain(s) => (s, 1),
            ServerEntry::Table(t) => (t.address, t.weight.unwrap_or(1)),
        };
        if !(1..=MAX_WEIGHT as i64).contains(&weight) {
            return Err((
                key,
                format!("`{name}`: weight {weight} is out of range 1..={MAX_WEIGHT}"),
            ));
        }
        let addr: SocketAddr =
            resolve(&name).map_err(|m| (key.clone(), format!("`{name}`: {m}")))?;
        if servers.iter().any(|s| s.addr == addr) {
            return Err((key, format!("`{name}` is listed twice")));
        }
        servers.push(ServerSpec {
            name,
            addr,
            weight: weight as u32,
        });
    }
    Ok(servers)
}

/// Active and passive health keys.
fn validate_health(
    pool: &str,
    k: &PoolKeys,
    timeouts: &BackendTimeouts,
) -> Result<HealthSettings, KeyError> {
    let key = |k: &str| key_of(pool, k);
    let path = k
        .health_check_path
        .clone()
        .unwrap_or_else(|| DEFAULT_HEALTH_CHECK_PATH.to_string());
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err((
            key("health_check_path"),
            format!("`{path}` must start with '/' and contain no spaces or control characters"),
        ));
    }
    let max_fails = at_least_one(key("max_fails"), k.max_fails, DEFAULT_MAX_FAILS)?;
    let fail_window = Duration::from_secs(k.fail_window.unwrap_or(DEFAULT_FAIL_WINDOW_S));
    if fail_window.is_zero() {
        return Err((key("fail_window"), "must be at least 1 second".into()));
    }
    let interval = nonzero(
        key("health_check_interval"),
        k.health_check_interval,
        DEFAULT_HEALTH_CHECK_INTERVAL_MS,
    )?;
    let timeout = match k.health_check_timeout {
        Some(v) => nonzero(key("health_check_timeout"), Some(v), 0)?,
        None => timeouts.connect + timeouts.read,
    };
    Ok(HealthSettings {
        path,
        interval,
        timeout,
        healthy_threshold: at_least_one(
            key("healthy_threshold"),
            k.healthy_threshold,
            DEFAULT_HEALTHY_THRESHOLD,
        )?,
        unhealthy_threshold: at_least_one(
            key("unhealthy_threshold"),
            k.unhealthy_threshold,
            DEFAULT_UNHEALTHY_THRESHOLD,
        )?,
        max_fails,
        fail_window,
    })
}

/// Retry keys.
fn validate_retry(pool: &str, k: &PoolKeys) -> Result<RetrySettings, KeyError> {
    let key = |k: &str| key_of(pool, k);
    let retries = k.retries.unwrap_or(DEFAULT_RETRIES);
    if retries > 10 {
        return Err((key("retries"), format!("{retries} is more than 10")));
    }
    let backoff = ms(k.retry_backoff, DEFAULT_RETRY_BACKOFF_MS);
    let backoff_max = ms(k.retry_backoff_max, DEFAULT_RETRY_BACKOFF_MAX_MS);
    if backoff_max < backoff {
        return Err((
            key("retry_backoff_max"),
            "must not be smaller than retry_backoff".into(),
        ));
    }
    let budget = k.retry_budget.unwrap_or(DEFAULT_RETRY_BUDGET);
    if !(0.0..=10.0).contains(&budget) {
        return Err((
            key("retry_budget"),
            format!("{budget} is out of range 0.0..=10.0"),
        ));
    }
    Ok(RetrySettings {
        retries,
        backoff,
        backoff_max,
        budget,
        non_idempotent: k.retry_non_idempotent.unwrap_or(false),
    })
}

/// Milliseconds, or the default.
pub(super) fn ms(v: Option<u64>, default: u64) -> Duration {
    Duration::from_millis(v.unwrap_or(default))
}

/// Milliseconds that must not be zero.
pub(super) fn nonzero(key: String, v: Option<u64>, default: u64) -> Result<Duration, KeyError> {
    let d = ms(v, default);
    if d.is_zero() {
        Err((key, "must be at least 1 millisecond".into()))
    } else {
        Ok(d)
    }
}

/// A count that must be at least one.
fn at_least_one(key: String, v: Option<u32>, default: u32) -> Result<u32, KeyError> {
    match v.unwrap_or(default) {
        0 => Err((key, "must be at least 1".into())),
        n => Ok(n),
    }
}
