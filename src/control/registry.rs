//! Registered backends: admin API registrations (with optional TTL) and, in
//! cluster mode, the etcd registry applied to this instance.
//!
//! The control executor owns what is applied. In cluster mode every admin
//! write goes to etcd first and is applied here only once etcd has taken
//! it; the watch delivers the same change again (and everyone else's), and
//! per-key revisions make applying idempotent and ordered: a change older
//! than what a key already shows is ignored, so a direct apply and its
//! watch echo, or a resync racing a write, cannot undo each other.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::cluster_state::{ClusterState, Known};
use super::plane::Plane;
use crate::admin::{Mode, Refusal};
use crate::backend::{Backend, BackendId};
use crate::cluster::{self, Event, Item, Op, Spec, WriteOutcome};
use crate::health::{CheckSpec, Source};

/// The 503 of a cluster write that failed. A write that timed out after it
/// was sent may still have been committed; say so rather than claim it was
/// not applied (a refused or failed connection means it was not).
fn unavailable(e: &str) -> Refusal {
    let lower = e.to_ascii_lowercase();
    let sent = !lower.contains("connect")
        && ["timeout", "timed out", "did not answer", "no answer"]
            .iter()
            .any(|w| lower.contains(w));
    let outcome = if sent {
        "the change may or may not have been applied: check GET /servers before retrying"
    } else {
        "the change was not applied"
    };
    (
        503,
        format!("cluster store (etcd) unavailable: {e}; {outcome}"),
    )
}

impl Plane {
    /// The effective check of a registration.
    fn effective_check(&self, spec: &Spec) -> CheckSpec {
        spec.check.clone().unwrap_or_else(|| {
            CheckSpec::Http(self.book.borrow().check_path(&spec.pool).to_string())
        })
    }

    /// The backend at `addr` in pool `pool`, with its source.
    pub fn find_addr(&self, pool: &str, addr: SocketAddr) -> Option<(BackendId, Source)> {
        self.book
            .borrow()
            .views()
            .iter()
            .find(|b| b.backend.addr == addr && *b.backend.pool == *pool)
            .map(|b| (b.backend.id, b.source))
    }

    /// Adds a registered backend and starts probing it.
    fn add_registered(
        self: &Rc<Self>,
        spec: &Spec,
        source: Source,
        key: Option<String>,
    ) -> BackendId {
        let check = self.effective_check(spec);
        let id = self.add_backend(
            &spec.pool,
            spec.address(),
            spec.addr,
            spec.weight,
            check,
            source,
        );
        self.book.borrow_mut().set_registration(id, key, spec.ttl);
        id
    }

    /// Applies a changed registration to backend `id` (same address).
    /// Returns true when the workers need a new snapshot.
    fn update_registered(self: &Rc<Self>, id: BackendId, old: Option<&Spec>, spec: &Spec) -> bool {
        let mut publish = false;
        let views = self.book.borrow().views();
        let Some(info) = views.iter().find(|b| b.backend.id == id) else {
            return false;
        };
        if info.backend.weight != spec.weight {
            let b = Arc::new(Backend::in_pool(
                info.backend.pool.clone(),
                id,
                spec.address(),
                spec.addr,
                spec.weight,
            ));
            self.book.borrow_mut().replace_backend(id, b);
            publish = true;
        }
        let check = self.effective_check(spec);
        if old.is_none_or(|o| o.check != spec.check) && info.check != check {
            self.book.borrow_mut().set_check(id, check.clone());
            if let Some(b) = self
                .book
                .borrow()
                .views()
                .into_iter()
                .find(|b| b.backend.id == id)
            {
                self.spawn_probe(b.backend.id);
            }
        }
        let key = info.key.clone();
        self.book.borrow_mut().set_registration(id, key, spec.ttl);
        publish
    }

    /// Registers a backend through the admin API: in cluster mode through
    /// etcd (503 when it cannot be reached), otherwise locally. Returns the
    /// status to answer (201 created, 200 updated or renewed) and the id.
    pub async fn register(
        self: &Rc<Self>,
        spec: Spec,
        mode: Mode,
    ) -> Result<(u16, BackendId), Refusal> {
        let addr = spec.addr;
        let pool = spec.pool.clone();
        if let Some(why) = self.own.refusal(&spec.address(), &[addr]) {
            return Err((400, why));
        }
        match self.find_addr(&pool, addr) {
            Some((_, Source::Config)) => {
                let status = if mode == Mode::Create { 400 } else { 409 };
                return Err((
                    status,
                    format!("server {addr} already exists: it is configured in the file"),
                ));
            }
            Some(_) if mode == Mode::Create => {
                return Err((400, format!("server {addr} already exists")));
            }
            _ => {}
        }
        let Some(cluster) = &self.cluster else {
            return Ok(self.register_locally(spec).await);
        };
        let op = match mode {
            Mode::Create => Op::Create(spec),
            Mode::Upsert => Op::Upsert(spec),
        };
        let status = match cluster.handle.write(op).await {
            Err(e) => return Err(unavailable(&e)),
            Ok(WriteOutcome::Exists) => {
                return Err((400, format!("server {addr} already exists in the cluster")));
            }
            Ok(WriteOutcome::Created(item)) => {
                self.apply_batch(vec![Event::Put(item)], true).await;
                201
            }
            Ok(WriteOutcome::Updated(item)) => {
                self.apply_batch(vec![Event::Put(item)], true).await;
                200
            }
            Ok(WriteOutcome::Renewed) => 200,
            Ok(other) => return Err((500, format!("unexpected answer from etcd: {other:?}"))),
        };
        match self.find_addr(&pool, addr) {
            Some((id, Source::Etcd)) => Ok((status, id)),
            _ => Err((
                500,
                format!("{addr} was written to etcd but is not applied here"),
            )),
        }
    }

    async fn register_locally(self: &Rc<Self>, spec: Spec) -> (u16, BackendId) {
        let mut publish = false;
        let deadline = spec.ttl.map(|t| Instant::now() + Duration::from_secs(t));
        let (status, id) = match self.find_addr(&spec.pool, spec.addr) {
            Some((id, _)) => {
                publish = self.update_registered(id, None, &spec);
                (200, id)
            }
            None => (201, self.add_registered(&spec, Source::Api, None)),
        };
        match deadline {
            Some(d) => self.expiry.borrow_mut().insert(id, d),
            None => self.expiry.borrow_mut().remove(&id),
        };
        // The timer task sleeps until the earliest expiry.
        self.timers.notify();
        if publish {
            self.publish();
        }
        (status, id)
    }

    /// Removes a backend through the admin API, by id or by address. Etcd
    /// registrations are deleted in etcd (so from every instance); this
    /// instance answers once its own in-flight requests to it are done.
    pub async fn deregister(
        self: &Rc<Self>,
        id: Option<BackendId>,
        pool: &str,
        addr: Option<SocketAddr>,
    ) -> Result<(), Refusal> {
        let views = self.book.borrow().views();
        let found = views.iter().find(|b| {
            Some(b.backend.id) == id || (Some(b.backend.addr) == addr && *b.backend.pool == *pool)
        });
        let (target, source, target_addr) = match found {
            Some(b) => (Some(b.backend.id), Some(b.source), Some(b.backend.addr)),
            None => (None, None, addr),
        };
        let pool = found.map_or(pool.to_string(), |b| b.backend.pool.to_string());
        let in_cluster = self.cluster.is_some() && matches!(source, None | Some(Source::Etcd));
        if let (Some(cluster), true, Some(a)) = (&self.cluster, in_cluster, target_addr) {
            let key = cluster::key_for(&cluster.handle.config.prefix, &pool, a);
            match cluster.handle.write(Op::Delete(pool.clone(), a)).await {
                Err(e) => return Err(unavailable(&e)),
                Ok(WriteOutcome::Deleted(revision)) => {
                    self.apply_batch(vec![Event::Delete { key, revision }], true)
                        .await;
                }
                Ok(WriteOutcome::NotFound) if target.is_none() => {
                    return Err((404, format!("no server {a}")));
                }
                // Gone from etcd already (expired, or deleted elsewhere);
                // the watch removes it here too.
                Ok(_) => {}
            }
            if let Some(id) = target {
                self.drain(id).await;
            }
            return Ok(());
        }
        match target {
            Some(id) if self.remove_backend(id).await => Ok(()),
            _ => Err((
                404,
                match (id, addr) {
                    (Some(i), _) => format!("no server with id {}", i.0),
                    (None, Some(a)) => format!("no server {a}"),
                    (None, None) => "no such server".into(),
                },
            )),
        }
    }

    /// Removes local registrations whose TTL passed without a renewal. Each
    /// removal drains in its own task, so a slow request to an expired
    /// backend delays neither a reload, a breaker tick nor shutdown.
    pub fn expire_registrations(self: &Rc<Self>) {
        let now = Instant::now();
        let expired: Vec<BackendId> = self
            .expiry
            .borrow()
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let name = self
                .book
                .borrow()
                .views()
                .into_iter()
                .find(|b| b.backend.id == id)
                .map(|b| b.backend.name.clone())
                .unwrap_or_default();
            warn!(backend = %name, "registration expired: no renewal within its ttl");
            self.expiry.borrow_mut().remove(&id);
            if self.forget(id) {
                self.publish();
                let plane = self.clone();
                glommio::spawn_local(async move { plane.drain(id).await }).detach();
            }
        }
    }

    /// The earliest TTL deadline of a local registration.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.expiry.borrow().values().min().copied()
    }

    /// Follows the etcd thread: applies its events in batches until it
    /// stops. Wakes only when the thread sends something.
    pub async fn follow_cluster(self: Rc<Self>, events: crate::channel::bridge::Receiver<Event>) {
        let mut events = events.attach();
        while let Some(first) = events.recv().await {
            let mut batch = vec![first];
            batch.extend(std::iter::from_fn(|| events.try_recv()).take(1023));
            self.apply_batch(batch, false).await;
        }
    }

    /// Applies events from etcd, or an admin write's own result (`direct`),
    /// then publishes one snapshot if routing changed.
    async fn apply_batch(self: &Rc<Self>, events: Vec<Event>, direct: bool) {
        let Some(cluster) = &self.cluster else { return };
        let mut publish = false;
        let mut removed = Vec::new();
        for ev in events {
            match ev {
                Event::Resync {
                    revision,
                    cluster_id,
                    items,
                } => {
                    cluster.resyncs.set(cluster.resyncs.get() + 1);
                    cluster.connected.set(true);
                    let new_cluster =
                        cluster.cluster_id.get() != 0 && cluster.cluster_id.get() != cluster_id;
                    if new_cluster || revision < cluster.seen.get() {
                        // An etcd that lost or restored its data: its
                        // revisions start again. This read is the truth.
                        warn!(
                            revision,
                            previous = cluster.seen.get(),
                            "the cluster store's history restarted (new cluster id or lower revision); applying its registry as it is now"
                        );
                        for k in cluster.keys.borrow_mut().values_mut() {
                            k.revision = 0;
                        }
                        cluster.revision.set(0);
                        cluster.seen.set(0);
                    }
                    cluster.cluster_id.set(cluster_id);
                    cluster.seen.set(cluster.seen.get().max(revision));
                    let present: HashSet<&str> = items.iter().map(|i| i.key.as_str()).collect();
                    let gone: Vec<String> = cluster
                        .keys
                        .borrow()
                        .iter()
                        .filter(|(k, v)| {
                            v.applied.is_some()
                                && v.revision <= revision
                                && !present.contains(k.as_str())
                        })
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in gone {
                        if let Some(id) = self.apply_delete(cluster, &key, revision) {
                            removed.push(id);
                        }
                    }
                    for item in items {
                        publish |= self.apply_put(cluster, item);
                    }
                    cluster.revision.set(cluster.revision.get().max(revision));
                    cluster.resynced.set(true);
                }
                Event::Put(item) => {
                    if !direct {
                        cluster.seen.set(cluster.seen.get().max(item.mod_revision));
                    }
                    cluster
                        .revision
                        .set(cluster.revision.get().max(item.mod_revision));
                    publish |= self.apply_put(cluster, item);
                }
                Event::Delete { key, revision } => {
                    if !direct {
                        cluster.seen.set(cluster.seen.get().max(revision));
                    }
                    cluster.revision.set(cluster.revision.get().max(revision));
                    if let Some(id) = self.apply_delete(cluster, &key, revision) {
                        removed.push(id);
                    }
                }
                Event::Revision(r) => {
                    cluster.seen.set(cluster.seen.get().max(r));
                    cluster.revision.set(cluster.revision.get().max(r));
                }
                Event::Disconnected(_) => cluster.connected.set(false),
            }
        }
        if publish || !removed.is_empty() {
            self.publish();
        }
    }

    /// Applies one key's new value; returns true when routing changed.
    fn apply_put(self: &Rc<Self>, cluster: &ClusterState, item: Item) -> bool {
        let known = cluster.keys.borrow().get(&item.key).cloned();
        if known
            .as_ref()
            .is_some_and(|k| k.revision >= item.mod_revision)
        {
            return false;
        }
        let applied = known.and_then(|k| k.applied);
        let mut publish = false;
        let mut shadowed = None;
        // This process's own listeners are never a backend: such an entry
        // is as unusable here as an invalid one.
        let spec = item
            .spec
            .and_then(|s| match self.own.refusal(&s.address(), &[s.addr]) {
                Some(why) => Err(why),
                None => Ok(s),
            });
        let now_applied = match spec {
            Err(why) => {
                warn!(key = %item.key, "ignoring an invalid registration in etcd: {why}");
                if let Some((id, _)) = applied {
                    publish |= self.forget(id);
                }
                None
            }
            Ok(spec) => match applied {
                Some((id, old)) if old.addr == spec.addr && old.pool == spec.pool => {
                    if old != spec {
                        publish |= self.update_registered(id, Some(&old), &spec);
                    }
                    Some((id, spec))
                }
                _ => match self.find_addr(&spec.pool, spec.addr) {
                    Some((_, source)) => {
                        warn!(
                            key = %item.key,
                            "ignoring the etcd registration of {}: the same address is already a {} backend here",
                            spec.addr,
                            if source == Source::Config { "configured" } else { "registered" }
                        );
                        shadowed = Some(spec);
                        None
                    }
                    None => {
                        let id = self.add_registered(&spec, Source::Etcd, Some(item.key.clone()));
                        info!(backend = %spec.addr, key = %item.key, "backend registered in the cluster; it takes traffic once a check passes");
                        Some((id, spec))
                    }
                },
            },
        };
        cluster.keys.borrow_mut().insert(
            item.key,
            Known {
                revision: item.mod_revision,
                applied: now_applied,
                shadowed,
            },
        );
        publish
    }

    /// Applies registrations that a configured backend with the same
    /// address kept out, once that backend is gone (after a reload).
    pub fn reapply_shadowed(self: &Rc<Self>) {
        let Some(cluster) = &self.cluster else { return };
        let waiting: Vec<(String, Spec)> = cluster
            .keys
            .borrow()
            .iter()
            .filter_map(|(k, v)| v.shadowed.clone().map(|s| (k.clone(), s)))
            .collect();
        for (key, spec) in waiting {
            if self.find_addr(&spec.pool, spec.addr).is_some() {
                continue;
            }
            let id = self.add_registered(&spec, Source::Etcd, Some(key.clone()));
            info!(backend = %spec.addr, key = %key, "backend registered in the cluster; it takes traffic once a check passes");
            if let Some(k) = cluster.keys.borrow_mut().get_mut(&key) {
                k.applied = Some((id, spec));
                k.shadowed = None;
            }
        }
    }

    /// Applies a deletion; returns the backend removed, if one was.
    fn apply_delete(&self, cluster: &ClusterState, key: &str, revision: i64) -> Option<BackendId> {
        let known = cluster.keys.borrow().get(key).cloned();
        if known.as_ref().is_some_and(|k| k.revision >= revision) {
            return None;
        }
        cluster.keys.borrow_mut().insert(
            key.to_string(),
            Known {
                revision,
                applied: None,
                shadowed: None,
            },
        );
        let (id, spec) = known?.applied?;
        if self.forget(id) {
            info!(backend = %spec.addr, key, "backend deregistered from the cluster; in-flight requests finish");
            Some(id)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::unavailable;

    #[test]
    fn unavailable_says_whether_the_write_may_have_landed() {
        let (status, m) = unavailable("tcp connect error: Connection refused (os error 111)");
        assert_eq!(status, 503);
        assert!(
            m.starts_with("cluster store (etcd) unavailable: tcp connect"),
            "{m}"
        );
        assert!(m.ends_with("the change was not applied"), "{m}");
        assert!(
            unavailable("connecting timed out")
                .1
                .ends_with("not applied")
        );
        for e in [
            "Timeout expired",
            "etcd did not answer within 4000 ms",
            "no answer from etcd in time",
        ] {
            assert!(unavailable(e).1.contains("may or may not"), "{e}");
        }
    }
}
