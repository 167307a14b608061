//! The configuration file as written: serde shapes only, every key
//! optional, unknown keys rejected. [`super::validate`] turns them into the
//! typed [`super::Config`].
//!
//! The keys that describe a pool of backends (servers, strategy, timeouts,
//! health, retries, breaker, limits, pool size) are listed once, in
//! [`PoolKeys`]: a `[pools.NAME]` table is exactly a `PoolKeys`, and the
//! top level holds the same keys for the default pool, which the named
//! pools inherit from.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// Declares [`PoolKeys`] and the top-level [`FileConfig`] with the same
/// pool keys, so the list is written once.
macro_rules! file_shapes {
    ($($key:ident: $ty:ty,)*) => {
        /// The keys of one pool, as written in `[pools.NAME]` (or at the top
        /// level for the default pool). Every key is optional.
        #[derive(Debug, Clone, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct PoolKeys {
            $(
                #[allow(missing_docs)]
                pub $key: Option<$ty>,
            )*
        }

        impl PoolKeys {
            /// Fills every key this table leaves out from `parent`, except
            /// `servers`, which each pool lists for itself.
            pub fn inherit(mut self, parent: &PoolKeys) -> PoolKeys {
                $(
                    if self.$key.is_none() && stringify!($key) != "servers" {
                        self.$key = parent.$key.clone();
                    }
                )*
                self
            }
        }

        /// The file as written. Every key but `servers` is optional.
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct FileConfig {
            $(
                #[allow(missing_docs)]
                pub $key: Option<$ty>,
            )*
            /// Address every worker binds.
            pub listen: Option<String>,
            /// Request workers.
            pub workers: Option<i64>,
            /// Largest request or response head.
            pub max_header_bytes: Option<i64>,
            /// Client-side timeouts (ms).
            pub client_header_timeout: Option<u64>,
            #[allow(missing_docs)]
            pub keepalive_timeout: Option<u64>,
            #[allow(missing_docs)]
            pub client_body_timeout: Option<u64>,
            #[allow(missing_docs)]
            pub send_timeout: Option<u64>,
            #[allow(missing_docs)]
            pub shutdown_timeout: Option<u64>,
            #[allow(missing_docs)]
            pub listen_backlog: Option<u32>,
            #[allow(missing_docs)]
            pub spin_before_park: Option<u64>,
            #[allow(missing_docs)]
            pub max_client_connections: Option<usize>,
            #[allow(missing_docs)]
            pub admin_listen: Option<String>,
            #[allow(missing_docs)]
            pub admin_token: Option<String>,
            #[allow(missing_docs)]
            pub access_log: Option<String>,
            #[allow(missing_docs)]
            pub access_log_path: Option<String>,
            #[allow(missing_docs)]
            pub access_log_format: Option<String>,
            #[allow(missing_docs)]
            pub ring_depth: Option<usize>,
            #[allow(missing_docs)]
            pub ring_setup_flags: Option<Vec<String>>,
            #[allow(missing_docs)]
            pub pin_workers: Option<bool>,
            /// Peers whose forwarding headers and PROXY headers are believed.
            pub trusted_proxies: Option<Vec<String>>,
            /// Every connection starts with a PROXY protocol header.
            pub proxy_protocol: Option<bool>,
            /// Also send an RFC 7239 `Forwarded` header.
            pub forwarded: Option<bool>,
            /// The `[cluster]` table.
            pub cluster: Option<ClusterTable>,
            /// The `[pools.NAME]` tables.
            pub pools: Option<BTreeMap<String, PoolKeys>>,
            /// The `[[routes]]` array.
            pub routes: Option<Vec<RouteEntry>>,
        }

        impl FileConfig {
            /// Moves the top-level pool keys out: the default pool's table.
            pub fn take_pool_keys(&mut self) -> PoolKeys {
                PoolKeys {
                    $( $key: self.$key.take(), )*
                }
            }
        }
    };
}

file_shapes! {
    servers: Vec<ServerEntry>,
    strategy: String,
    max_fails: u32,
    fail_window: u64,
    connection_timeout: u64,
    write_timeout: u64,
    read_timeout: u64,
    health_check_path: String,
    health_check_interval: u64,
    health_check_timeout: u64,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    pool_size: i64,
    retries: u32,
    retry_backoff: u64,
    retry_backoff_max: u64,
    retry_budget: f64,
    retry_non_idempotent: bool,
    breaker_threshold: u32,
    breaker_open_duration: u64,
    breaker_half_open_requests: u32,
    max_connections: u32,
    queue_size: usize,
    queue_timeout: u64,
    send_proxy_protocol: String,
}

/// The `[cluster]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTable {
    pub(super) etcd: Option<Vec<String>>,
    pub(super) prefix: Option<String>,
    pub(super) timeout: Option<u64>,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) cert_file: Option<PathBuf>,
    pub(super) key_file: Option<PathBuf>,
}

/// A `servers` entry: `"host:port"` or `{ address = "host:port", weight = N }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ServerEntry {
    /// `"host:port"`, weight 1.
    Plain(String),
    /// `{ address = "host:port", weight = N }`.
    Table(ServerTable),
}

/// The table form of a `servers` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTable {
    pub(super) address: String,
    pub(super) weight: Option<i64>,
}

/// One `[[routes]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteEntry {
    /// `api.example.com` or `*.example.com`; any host when absent.
    pub(super) host: Option<String>,
    /// `/v1/`; any path when absent.
    pub(super) path_prefix: Option<String>,
    /// The pool the request goes to.
    pub(super) pool: String,
}
