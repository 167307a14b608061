//! The etcd client thread.
//!
//! `etcd-client` speaks gRPC through tonic and needs a tokio runtime, so it
//! gets its own thread (`ekilibri-etcd`) with a single-threaded one. The
//! thread keeps one view of the registry in sync and performs admin writes:
//!
//! 1. connect, read every key under `<prefix>servers/` (one range read) and
//!    send it as [`Event::Resync`];
//! 2. watch the prefix from the revision after that read, forwarding each
//!    change as [`Event::Put`] / [`Event::Delete`];
//! 3. meanwhile run [`Command`]s from the admin API, each bounded by the
//!    configured timeout;
//! 4. when the watch breaks (etcd down, compaction, partition caught by
//!    HTTP/2 keep-alive), send [`Event::Disconnected`] once, wait with capped
//!    exponential backoff and jitter, and start again at 1.
//!
//! Nothing here touches a request worker: the control executor is the only
//! peer, over a tokio unbounded channel (commands in) and a
//! [`crate::channel::bridge`] (events out) that wakes it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use tracing::{debug, info, warn};

use super::{Command, Event, Handle, Item, Op, Spec, WriteOutcome, key_for, servers_prefix};
use crate::channel::bridge;
use crate::config::ClusterConfig;

/// First reconnection delay.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest reconnection delay.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// HTTP/2 keep-alive ping interval. etcd answers pings more frequent than
/// its `--grpc-keepalive-min-time` (5 s by default) with GOAWAY
/// ("too many pings"), so stay well above it.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered: a silent etcd (partition, frozen
/// host) is noticed within interval + timeout.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the etcd thread for `config` and returns the control executor's
/// end of it. The thread ends when the handle is dropped.
pub fn spawn(config: ClusterConfig) -> std::io::Result<Handle> {
    let (cmd_tx, cmd_rx) = tokio::sync::mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = bridge::channel()?;
    let thread_config = config.clone();
    std::thread::Builder::new()
        .name("ekilibri-etcd".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    warn!("cluster mode disabled: cannot start the etcd client runtime: {e}");
                    let _ = ev_tx.send(Event::Disconnected(e.to_string()));
                    return;
                }
            };
            rt.block_on(run(thread_config, cmd_rx, ev_tx));
        })?;
    Ok(Handle {
        commands: cmd_tx,
        events: Some(ev_rx),
        config,
    })
}

/// Connection options from the configuration (credentials, TLS, timeouts).
fn options(config: &ClusterConfig) -> Result<ConnectOptions, String> {
    let mut o = ConnectOptions::new()
        .with_connect_timeout(config.timeout)
        .with_timeout(config.timeout)
        .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
        .with_keep_alive_while_idle(true)
        // A member that lost its leader (no quorum) cancels our watch
        // instead of serving stale data: we go fail-static and resync.
        .with_require_leader(true);
    if let Some((user, password)) = &config.user {
        // Tokens expire (etcd's --auth-token-ttl); fetch a new one when so.
        o = o
            .with_user(user.clone(), password.clone())
            .with_auto_token_refresh(true);
    }
    if let Some(ca) = &config.ca_file {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| format!("cannot read `{}`: {e}", p.display()))
        };
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        o = o.with_tls(tls);
    }
    Ok(o)
}

async fn connect(config: &ClusterConfig) -> Result<Client, String> {
    let opts = options(config)?;
    // The connect timeout bounds each endpoint; bound the whole call too.
    match tokio::time::timeout(
        config.timeout * 2,
        Client::connect(&config.endpoints, Some(opts)),
    )
    .await
    {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(describe(&e)),
        Err(_) => Err("connecting timed out".into()),
    }
}

/// Reads the whole registry and opens a watch just after it.
async fn sync(
    config: &ClusterConfig,
    client: &mut Client,
) -> Result<(i64, u64, Vec<Item>, WatchStream), String> {
    let range = servers_prefix(&config.prefix);
    let resp = client
        .get(range.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| describe(&e))?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let cluster_id = resp.header().map_or(0, |h| h.cluster_id());
    let items = resp
        .kvs()
        .iter()
        .filter(|kv| is_registration(&config.prefix, kv.key()))
        .map(|kv| {
            item(
                &config.prefix,
                kv.key(),
                kv.value(),
                kv.mod_revision(),
                kv.lease(),
            )
        })
        .collect();
    let watch = client
        .watch(
            range.as_str(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await
        .map_err(|e| describe(&e))?;
    Ok((revision, cluster_id, items, watch))
}

/// One line for an etcd error: what failed and its root cause (tonic's
/// own messages nest the cause several levels deep).
fn describe(e: &etcd_client::Error) -> String {
    let (top, inner): (String, &dyn std::error::Error) = match e {
        etcd_client::Error::GRpcStatus(s) => {
            let msg = s.message();
            let top = if msg.is_empty() {
                format!("{:?}", s.code())
            } else {
                msg.to_string()
            };
            (top, s)
        }
        etcd_client::Error::TransportError(t) => ("transport error".to_string(), t),
        other => return other.to_string(),
    };
    let mut root: Option<&dyn std::error::Error> = None;
    let mut cur = inner.source();
    while let Some(c) = cur {
        root = Some(c);
        cur = c.source();
    }
    match root {
        Some(r) if !top.contains(&r.to_string()) => format!("{top}: {r}"),
        _ => top,
    }
}

/// True for keys laid out as registrations (`servers/...` or
/// `pools/NAME/servers/...` under the prefix).
fn is_registration(prefix: &str, key: &[u8]) -> bool {
    std::str::from_utf8(key).is_ok_and(|k| super::pool_of_key(prefix, k).is_some())
}

fn item(prefix: &str, key: &[u8], value: &[u8], mod_revision: i64, lease: i64) -> Item {
    let key = String::from_utf8_lossy(key).into_owned();
    let spec = Spec::from_value(prefix, &key, value);
    Item {
        key,
        spec,
        mod_revision,
        lease,
    }
}

/// Capped exponential backoff with jitter (50-100% of the step).
struct Backoff {
    step: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff { step: BACKOFF_MIN }
    }

    fn reset(&mut self) {
        self.step = BACKOFF_MIN;
    }

    fn next(&mut self) -> Duration {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let jitter = 0.5 + f64::from(nanos % 1000) / 2000.0;
        let d = self.step.mul_f64(jitter);
        self.step = (self.step * 2).min(BACKOFF_MAX);
        d
    }
}

/// Why the watch loop ended.
enum Ended {
    /// Reconnect and resynchronise.
    Resync(String),
    /// The control executor dropped its handle: stop.
    Stop,
}

async fn run(
    config: ClusterConfig,
    mut commands: tokio::sync::mpsc::UnboundedReceiver<Command>,
    events: bridge::Sender<Event>,
) {
    let mut client: Option<Client> = None;
    let mut backoff = Backoff::new();
    // None before the first attempt, then whether the last attempt worked:
    // an outage is logged and reported once, not on every retry.
    let mut connected: Option<bool> = None;
    loop {
        let attempt = async {
            if client.is_none() {
                client = Some(connect(&config).await?);
            }
            match client.as_mut() {
                Some(c) => sync(&config, c).await,
                None => Err("no client".to_string()),
            }
        }
        .await;
        let why = match attempt {
            Ok((revision, cluster_id, items, watch)) => {
                let n = items.len();
                let resync = Event::Resync {
                    revision,
                    cluster_id,
                    items,
                };
                if events.send(resync).is_err() {
                    return;
                }
                if connected != Some(true) {
                    info!(
                        revision,
                        registrations = n,
                        "cluster store connected: {} under {}",
                        config.endpoints.join(","),
                        config.prefix
                    );
                }
                connected = Some(true);
                backoff.reset();
                match watch_loop(&config, &mut client, watch, &mut commands, &events).await {
                    Ended::Stop => return,
                    Ended::Resync(why) => why,
                }
            }
            Err(e) => {
                // Start the next attempt from a fresh client: new
                // connections, a new auth token.
                client = None;
                e
            }
        };
        if connected.is_none() {
            warn!(
                "cannot reach the cluster store (etcd at {}): {why}; serving the static servers and retrying",
                config.endpoints.join(",")
            );
        } else if connected == Some(true) {
            warn!(
                "lost the cluster store (etcd at {}): {why}; serving the last known pool and retrying",
                config.endpoints.join(",")
            );
        }
        if connected != Some(false) {
            if events.send(Event::Disconnected(why)).is_err() {
                return;
            }
        } else {
            debug!("cluster store still unreachable: {why}");
        }
        connected = Some(false);
        // Wait before retrying, still answering admin writes (they fail
        // fast, or succeed if etcd is back before the timer).
        let pause = tokio::time::sleep(backoff.next());
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => break,
                cmd = commands.recv() => match cmd {
                    None => return,
                    Some(cmd) => execute(&config, &mut client, cmd).await,
                },
            }
        }
    }
}

async fn watch_loop(
    config: &ClusterConfig,
    client: &mut Option<Client>,
    mut watch: WatchStream,
    commands: &mut tokio::sync::mpsc::UnboundedReceiver<Command>,
    events: &bridge::Sender<Event>,
) -> Ended {
    loop {
        tokio::select! {
            msg = watch.message() => {
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => return Ended::Resync("the watch stream ended".into()),
                    Err(e) => return Ended::Resync(describe(&e)),
                };
                if resp.canceled() || resp.compact_revision() > 0 {
                    let reason = if resp.compact_revision() > 0 {
                        format!("the watch fell behind compaction (revision {})", resp.compact_revision())
                    } else {
                        format!("the watch was cancelled: {}", resp.cancel_reason())
                    };
                    return Ended::Resync(reason);
                }
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    // Other keys under the prefix are not ours to read.
                    if !is_registration(&config.prefix, kv.key()) {
                        continue;
                    }
                    let e = match ev.event_type() {
                        EventType::Put => Event::Put(item(
                            &config.prefix,
                            kv.key(),
                            kv.value(),
                            kv.mod_revision(),
                            kv.lease(),
                        )),
                        EventType::Delete => Event::Delete {
                            key: String::from_utf8_lossy(kv.key()).into_owned(),
                            revision: kv.mod_revision(),
                        },
                    };
                    if events.send(e).is_err() {
                        return Ended::Stop;
                    }
                }
                if let Some(h) = resp.header()
                    && events.send(Event::Revision(h.revision())).is_err()
                {
                    return Ended::Stop;
                }
            }
            cmd = commands.recv() => match cmd {
                None => return Ended::Stop,
                Some(cmd) => execute(config, client, cmd).await,
            },
        }
    }
}

/// Runs one admin write, bounded by the configured timeout, and answers.
async fn execute(config: &ClusterConfig, client: &mut Option<Client>, cmd: Command) {
    let result = match tokio::time::timeout(config.timeout * 2, write(config, client, cmd.op)).await
    {
        Ok(r) => r,
        Err(_) => Err(format!(
            "etcd did not answer within {} ms",
            config.timeout.as_millis() * 2
        )),
    };
    if let Err(e) = &result {
        debug!("cluster write failed: {e}");
    }
    // The admin handler may have given up waiting; nothing to do then.
    let _ = cmd.reply.send(result);
}

async fn write(
    config: &ClusterConfig,
    client: &mut Option<Client>,
    op: Op,
) -> Result<WriteOutcome, String> {
    if client.is_none() {
        *client = Some(connect(config).await?);
    }
    let Some(c) = client.as_mut() else {
        return Err("no client".into());
    };
    let err = |e: etcd_client::Error| describe(&e);
    match op {
        Op::Create(spec) => {
            let key = key_for(&config.prefix, &spec.pool, spec.addr);
            let lease = match spec.ttl {
                Some(ttl) => c.lease_grant(ttl as i64, None).await.map_err(err)?.id(),
                None => 0,
            };
            let put = TxnOp::put(
                key.as_str(),
                spec.to_value(),
                Some(PutOptions::new().with_lease(lease)),
            );
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([put]);
            let resp = c.txn(txn).await.map_err(err)?;
            if !resp.succeeded() {
                if lease != 0 {
                    let _ = c.lease_revoke(lease).await;
                }
                return Ok(WriteOutcome::Exists);
            }
            let revision = resp.header().map_or(0, |h| h.revision());
            Ok(WriteOutcome::Created(Item {
                key,
                spec: Ok(spec),
                mod_revision: revision,
                lease,
            }))
        }
        Op::Upsert(spec) => {
            let key = key_for(&config.prefix, &spec.pool, spec.addr);
            let value = spec.to_value();
            let current = c.get(key.as_str(), None).await.map_err(err)?;
            let existing = current.kvs().first().map(|kv| {
                (
                    Spec::from_value(&config.prefix, &key, kv.value()),
                    kv.lease(),
                )
            });
            // Compare meaning, not bytes: a value another writer formatted
            // differently is still the same registration.
            if let Some((Ok(current), lease)) = &existing
                && *current == spec
            {
                match (spec.ttl, *lease) {
                    (None, 0) => return Ok(WriteOutcome::Renewed),
                    (Some(_), l) if l != 0 => {
                        // A heartbeat: one keep-alive on the existing lease.
                        let (mut keeper, mut stream) = c.lease_keep_alive(l).await.map_err(err)?;
                        keeper.keep_alive().await.map_err(err)?;
                        if let Some(r) = stream.message().await.map_err(err)?
                            && r.ttl() > 0
                        {
                            return Ok(WriteOutcome::Renewed);
                        }
                        // The lease expired just now: register afresh.
                    }
                    _ => {}
                }
            }
            let lease = match spec.ttl {
                Some(ttl) => c.lease_grant(ttl as i64, None).await.map_err(err)?.id(),
                None => 0,
            };
            let resp = c
                .put(
                    key.as_str(),
                    value,
                    Some(PutOptions::new().with_lease(lease)),
                )
                .await
                .map_err(err)?;
            let revision = resp.header().map_or(0, |h| h.revision());
            let item = Item {
                key,
                spec: Ok(spec),
                mod_revision: revision,
                lease,
            };
            Ok(if existing.is_some() {
                WriteOutcome::Updated(item)
            } else {
                WriteOutcome::Created(item)
            })
        }
        Op::Delete(pool, addr) => {
            let key = key_for(&config.prefix, &pool, addr);
            let resp = c.delete(key.as_str(), None).await.map_err(err)?;
            if resp.deleted() == 0 {
                Ok(WriteOutcome::NotFound)
            } else {
                Ok(WriteOutcome::Deleted(
                    resp.header().map_or(0, |h| h.revision()),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let mut b = Backoff::new();
        let first = b.next();
        assert!(first >= BACKOFF_MIN / 2 && first <= BACKOFF_MIN);
        for _ in 0..20 {
            let d = b.next();
            assert!(d <= BACKOFF_MAX, "{d:?}");
        }
        assert!(b.next() >= BACKOFF_MAX / 2);
        b.reset();
        assert!(b.next() <= BACKOFF_MIN);
    }
}
