//! Cluster mode: several balancers share one backend registry in etcd.
//!
//! This module owns the registry's data model (keys, the JSON value of a
//! registration, the messages between the etcd thread and the control
//! executor) and [`etcd`], the thread that talks to etcd. The control
//! executor owns what is *applied*: it receives [`Event`]s, turns them into
//! backend additions and removals, and sends [`Command`]s for admin writes.
//!
//! A registration of the default pool lives at `<prefix>servers/<ip:port>`,
//! one of pool NAME at `<prefix>pools/NAME/servers/<ip:port>`; its value is
//! [`Registration`] as JSON. A registration with a TTL is attached to an
//! etcd lease, so it disappears from every instance when its heartbeats
//! stop. Static `servers` from the file are never written to etcd.
//!
//! Failure model: the etcd thread reports [`Event::Disconnected`] once per
//! outage and the control executor keeps routing by the last pool it knew
//! (fail static). On reconnection the thread reads the whole prefix again
//! ([`Event::Resync`]) and watches from that revision, so changes made
//! while it was away are never missed.

#[cfg(feature = "cluster")]
pub mod etcd;

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::channel::bridge;
use crate::config::MAX_WEIGHT;
use crate::health::CheckSpec;

/// Longest TTL a registration may ask for (one day).
pub const MAX_TTL_S: u64 = 86_400;

/// The JSON value stored for one registered backend. Unknown members are
/// ignored, so a newer version may add some during a rolling upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// `ip:port` of the backend (must match the key).
    pub address: String,
    /// Balancing weight, 1..=1000.
    #[serde(default = "one")]
    pub weight: u32,
    /// How every instance checks it; `None` means the instance's
    /// `health_check_path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckValue>,
    /// Seconds a registration lives without a heartbeat (informational: the
    /// etcd lease enforces it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
}

fn one() -> u32 {
    1
}

/// The `check` member of a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckValue {
    /// `http` or `tcp`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Path of an http check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// A registration as the control executor applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The pool it joins (`default`: the top-level `servers`' pool).
    pub pool: String,
    /// The backend's address.
    pub addr: SocketAddr,
    /// Balancing weight.
    pub weight: u32,
    /// Health check (`None`: the configured `health_check_path`).
    pub check: Option<CheckSpec>,
    /// TTL in seconds, when leased.
    pub ttl: Option<u64>,
}

/// Checks a check specification from the API or from etcd.
pub fn check_from_parts(kind: &str, path: Option<String>) -> Result<Option<CheckSpec>, String> {
    match (kind, path) {
        ("http", Some(p)) if p.starts_with('/') && !p.bytes().any(|b| b <= b' ' || b == 0x7f) => {
            Ok(Some(CheckSpec::Http(p)))
        }
        ("http", None) => Ok(None),
        ("http", Some(p)) => Err(format!("invalid check path `{p}`")),
        ("tcp", None) => Ok(Some(CheckSpec::Tcp)),
        ("tcp", Some(_)) => Err("a tcp check takes no path".into()),
        (k, _) => Err(format!("unknown check type `{k}` (http or tcp)")),
    }
}

/// Checks a weight from the API or from etcd.
pub fn check_weight(weight: u32) -> Result<u32, String> {
    if (1..=MAX_WEIGHT).contains(&weight) {
        Ok(weight)
    } else {
        Err(format!("weight {weight} is out of range 1..={MAX_WEIGHT}"))
    }
}

/// Checks a TTL in seconds.
pub fn check_ttl(ttl: u64) -> Result<u64, String> {
    if (1..=MAX_TTL_S).contains(&ttl) {
        Ok(ttl)
    } else {
        Err(format!("ttl {ttl} is out of range 1..={MAX_TTL_S} seconds"))
    }
}

impl Spec {
    /// The canonical text of the address (`ip:port`, `[v6]:port`).
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// The value written to etcd.
    pub fn to_value(&self) -> Vec<u8> {
        let check = self.check.as_ref().map(|c| match c {
            CheckSpec::Http(p) => CheckValue {
                kind: "http".into(),
                path: Some(p.clone()),
            },
            CheckSpec::Tcp => CheckValue {
                kind: "tcp".into(),
                path: None,
            },
        });
        let r = Registration {
            address: self.address(),
            weight: self.weight,
            check,
            ttl: self.ttl,
        };
        // Serializing a struct of strings and integers cannot fail.
        serde_json::to_vec(&r).unwrap_or_default()
    }

    /// Parses and checks a value read from etcd under `key`.
    pub fn from_value(prefix: &str, key: &str, value: &[u8]) -> Result<Spec, String> {
        let pool = pool_of_key(prefix, key)
            .ok_or_else(|| "not a registration key (servers/ or pools/NAME/servers/)".to_string())?
            .to_string();
        let r: Registration =
            serde_json::from_slice(value).map_err(|e| format!("not a registration: {e}"))?;
        let addr: SocketAddr = r
            .address
            .parse()
            .map_err(|_| format!("address `{}` is not ip:port", r.address))?;
        let expected = key_for(prefix, &pool, addr);
        if key != expected {
            return Err(format!(
                "the key does not match the address `{}` (expected key `{expected}`)",
                r.address
            ));
        }
        let check = match r.check {
            None => None,
            Some(c) => check_from_parts(&c.kind, c.path)?,
        };
        let ttl = match r.ttl {
            None => None,
            Some(t) => Some(check_ttl(t)?),
        };
        Ok(Spec {
            pool,
            addr,
            weight: check_weight(r.weight)?,
            check,
            ttl,
        })
    }
}

/// The etcd key of the registration of `addr` in pool `pool`.
pub fn key_for(prefix: &str, pool: &str, addr: SocketAddr) -> String {
    if pool == crate::config::DEFAULT_POOL {
        format!("{prefix}servers/{addr}")
    } else {
        format!("{prefix}pools/{pool}/servers/{addr}")
    }
}

/// The pool a registration key belongs to, `None` when `key` is not a
/// registration key under `prefix`.
pub fn pool_of_key<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    let rest = key.strip_prefix(prefix)?;
    if rest.starts_with("servers/") {
        return Some(crate::config::DEFAULT_POOL);
    }
    let (pool, tail) = rest.strip_prefix("pools/")?.split_once('/')?;
    (tail.starts_with("servers/") && !pool.is_empty()).then_some(pool)
}

/// The range every instance reads and watches: the whole prefix (each
/// pool's registrations are under it).
pub fn servers_prefix(prefix: &str) -> String {
    prefix.to_string()
}

/// One key as read from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The full key.
    pub key: String,
    /// The registration, or why the value is unusable.
    pub spec: Result<Spec, String>,
    /// Revision of the last change of this key.
    pub mod_revision: i64,
    /// The lease the key is attached to (0: none).
    pub lease: i64,
}

/// etcd thread -> control executor.
#[derive(Debug)]
pub enum Event {
    /// The registry was read afresh at `revision`; `items` is all of it.
    Resync {
        /// Store revision of the read.
        revision: i64,
        /// etcd's cluster id: a new one means a new history (an etcd that
        /// lost or restored its data), whose revisions may be lower.
        cluster_id: u64,
        /// Every registration under the prefix.
        items: Vec<Item>,
    },
    /// A key was created or changed.
    Put(Item),
    /// A key was deleted (or its lease expired).
    Delete {
        /// The key.
        key: String,
        /// Revision of the deletion.
        revision: i64,
    },
    /// Everything up to this revision has been delivered.
    Revision(i64),
    /// The store cannot be reached (sent once per outage).
    Disconnected(String),
}

/// What an admin write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The key was created at this revision.
    Created(Item),
    /// An existing key was replaced at this revision.
    Updated(Item),
    /// The registration was already there and its lease (if any) renewed.
    Renewed,
    /// `create` found the key already there.
    Exists,
    /// The key was deleted at this revision.
    Deleted(i64),
    /// There was nothing to delete.
    NotFound,
}

/// What an admin write asks of the store.
#[derive(Debug)]
pub enum Op {
    /// Create the registration; [`WriteOutcome::Exists`] if the key exists.
    Create(Spec),
    /// Create, replace or renew the registration.
    Upsert(Spec),
    /// Delete the registration of this address in this pool.
    Delete(String, SocketAddr),
}

/// control executor -> etcd thread: one admin write and where to answer.
#[derive(Debug)]
pub struct Command {
    /// The write.
    pub op: Op,
    /// Receives the outcome, or why the store could not do it.
    pub reply: bridge::Sender<Result<WriteOutcome, String>>,
}

/// Starts the etcd client thread for `config` (see [`etcd`]).
#[cfg(feature = "cluster")]
pub fn spawn(config: crate::config::ClusterConfig) -> std::io::Result<Handle> {
    etcd::spawn(config)
}

/// Without the `cluster` feature there is no etcd client to start.
#[cfg(not(feature = "cluster"))]
pub fn spawn(_config: crate::config::ClusterConfig) -> std::io::Result<Handle> {
    Err(std::io::Error::other(
        "this build has no cluster support (cargo feature `cluster`)",
    ))
}

/// The control executor's end of the etcd thread.
pub struct Handle {
    commands: tokio::sync::mpsc::UnboundedSender<Command>,
    events: Option<bridge::Receiver<Event>>,
    /// The configuration the thread runs with.
    pub config: crate::config::ClusterConfig,
}

impl Handle {
    /// The thread's events, for the one task that follows them (once).
    pub fn take_events(&mut self) -> Option<bridge::Receiver<Event>> {
        self.events.take()
    }

    /// Sends a write to the etcd thread and waits for its outcome (woken by
    /// the answer, never polling), at most the configured timeout twice
    /// plus a second.
    pub async fn write(&self, op: Op) -> Result<WriteOutcome, String> {
        let (tx, rx) = bridge::channel().map_err(|e| e.to_string())?;
        let mut rx = rx.attach();
        self.commands
            .send(Command { op, reply: tx })
            .map_err(|_| "the etcd client thread has stopped".to_string())?;
        let limit = self.config.timeout * 2 + Duration::from_secs(1);
        let answer = async { Some(rx.recv().await) };
        let timeout = async {
            glommio::timer::sleep(limit).await;
            None
        };
        match futures_lite::future::or(answer, timeout).await {
            Some(Some(r)) => r,
            Some(None) => Err("the etcd client thread has stopped".into()),
            None => Err("no answer from etcd in time".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/ekilibri/t/";

    #[test]
    fn values_round_trip() {
        let s = Spec {
            pool: "default".into(),
            addr: "127.0.0.1:9001".parse().unwrap(),
            weight: 3,
            check: Some(CheckSpec::Http("/ping".into())),
            ttl: Some(5),
        };
        let key = key_for(P, "default", s.addr);
        assert_eq!(key, "/ekilibri/t/servers/127.0.0.1:9001");
        assert_eq!(Spec::from_value(P, &key, &s.to_value()), Ok(s));
        let v6 = Spec {
            pool: "api".into(),
            addr: "[::1]:80".parse().unwrap(),
            weight: 1,
            check: Some(CheckSpec::Tcp),
            ttl: None,
        };
        let key = key_for(P, "api", v6.addr);
        assert_eq!(key, "/ekilibri/t/pools/api/servers/[::1]:80");
        assert_eq!(Spec::from_value(P, &key, &v6.to_value()), Ok(v6));
        assert_eq!(pool_of_key(P, "/ekilibri/t/pools/x/other"), None);
        assert_eq!(pool_of_key(P, "/ekilibri/t/leader"), None);
        assert_eq!(pool_of_key(P, "/other/servers/1.2.3.4:5"), None);
    }

    #[test]
    fn minimal_value_from_another_writer() {
        let key = "/ekilibri/t/servers/127.0.0.1:9";
        let s = Spec::from_value(P, key, br#"{"address":"127.0.0.1:9"}"#).unwrap();
        assert_eq!((s.weight, s.check, s.ttl), (1, None, None));
        // Members a newer version may add are ignored.
        let s = Spec::from_value(P, key, br#"{"address":"127.0.0.1:9","zone":"b"}"#).unwrap();
        assert_eq!(s.weight, 1);
    }

    #[test]
    fn bad_values_are_refused() {
        let key = "/ekilibri/t/servers/127.0.0.1:9";
        for (v, why) in [
            (&b"not json"[..], "not a registration"),
            (br#"{"address":"127.0.0.1:10"}"#, "does not match"),
            (br#"{"address":"localhost:9"}"#, "not ip:port"),
            (br#"{"address":"127.0.0.1:9","weight":0}"#, "out of range"),
            (br#"{"address":"127.0.0.1:9","ttl":0}"#, "out of range"),
            (
                br#"{"address":"127.0.0.1:9","check":{"type":"udp"}}"#,
                "unknown check",
            ),
            (
                br#"{"address":"127.0.0.1:9","check":{"type":"http","path":"x"}}"#,
                "invalid check path",
            ),
        ] {
            let e = Spec::from_value(P, key, v).unwrap_err();
            assert!(e.contains(why), "{v:?}: {e}");
        }
    }
}
