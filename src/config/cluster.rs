//! The `[cluster]` section: where the shared etcd registry lives.

use std::path::PathBuf;
use std::time::Duration;

use super::file::ClusterTable;
use super::{DEFAULT_CLUSTER_PREFIX, DEFAULT_CLUSTER_TIMEOUT_MS};

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

/// Checks the `[cluster]` table; errors name the key.
pub(super) fn validate_cluster(t: ClusterTable) -> Result<ClusterConfig, (&'static str, String)> {
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
