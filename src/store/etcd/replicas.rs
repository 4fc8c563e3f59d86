//! Replicas: who else serves this keyspace, and how far each has applied.
//!
//! Owns this replica's name (kept in its data dir) and its registration (a
//! key under a lease, renewed), its progress reports (the revision its pump
//! has applied), the live map of every replica's report, the writer's wait
//! for all of them ([`Inner::everyone_applied`]), and fencing: this replica
//! refuses to verify once its lease may have expired ([`Inner::fenced`]),
//! and renews it only after finding its watch current. It must never let a
//! replica verify past the time writers elsewhere may stop waiting for it,
//! never renew on a watch it has not checked, and never wait for a replica
//! beyond its lease.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, PutOptions, WatchOptions};
use tokio::time::Instant;

use super::retry::{attempt, retried, unavailable};
use super::{Inner, etcd_revision};
use crate::domain::Revision;
use crate::error::{Error, reason};

/// How long a replica's registration outlives its last lease renewal. A
/// writer waits at most about this long for a replica that stopped
/// reporting.
const LEASE_TTL: Duration = Duration::from_secs(5);

/// How long a check that this replica's watch is current may take: a
/// renewal waits for it, and the lease (with verification) lapses after
/// four fifths of [`LEASE_TTL`] without one.
const WATCH_CHECK: Duration = Duration::from_millis(2500);

/// This replica's name: kept in the data dir, made on first start.
pub(super) fn replica_name(dir: &std::path::Path) -> Result<String, Error> {
    let path = dir.join("replica-id");
    let fail = |e: std::io::Error| {
        Error::invalid("data-dir", format!("cannot use {}: {e}", path.display()))
    };
    match std::fs::read_to_string(&path) {
        Ok(name) if !name.trim().is_empty() => return Ok(name.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| Error::Internal(e.to_string()))?;
    let name = base16ct::lower::encode_string(&bytes);
    std::fs::write(&path, &name).map_err(fail)?;
    Ok(name)
}

impl Inner {
    fn replica_key(&self) -> String {
        self.keys.replica(&self.replica)
    }

    /// Waits until every registered replica reports having applied `rev`,
    /// or has dropped out (its lease expired). Bounded by the lease: a
    /// replica that stops reporting is gone, and fenced, within it.
    pub(super) async fn everyone_applied(&self, rev: Revision) {
        let mut seen = self.replicas.subscribe();
        let deadline = Instant::now() + LEASE_TTL + Duration::from_secs(1);
        // This replica's own state already holds `rev` (it reports only
        // for the others).
        let me = self.replica_key();
        loop {
            let behind: Vec<String> = seen
                .borrow_and_update()
                .iter()
                .filter(|(k, applied)| **applied < rev && **k != me)
                .map(|(k, _)| k.clone())
                .collect();
            if behind.is_empty() {
                return;
            }
            match tokio::time::timeout_at(deadline, seen.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::warn!(
                        revision = rev,
                        ?behind,
                        "replicas neither applied a write nor dropped out in time"
                    );
                    return;
                }
            }
        }
    }

    /// Refuses to answer from memory once this replica's lease may have
    /// expired: writers elsewhere no longer wait for it, so its state may be
    /// missing a delete they have answered.
    pub(super) fn fenced(&self) -> Result<(), Error> {
        match *self.alive_until.lock().expect("lease clock") {
            Some(until) if Instant::now() < until => Ok(()),
            _ => Err(Error::Unavailable {
                reason: reason::STORE_UNAVAILABLE,
                message: "this replica has lost touch with etcd; try another".into(),
            }),
        }
    }

    /// Checks that this replica's watch has applied everything etcd had
    /// committed when the check began ([`Inner::sync`]), within
    /// [`WATCH_CHECK`]; returns when it began. A write committed after that
    /// instant may be missing here: this replica's clock ([`Inner::renewed`])
    /// counts from it, so it stops verifying at most four fifths of the
    /// lease later, before a writer waiting for it gives up (the lease and a
    /// second).
    /// A watch found stuck (behind, and applying nothing) is dropped and
    /// made again (`rewatch`).
    async fn watch_current(&self) -> Result<Instant, Error> {
        let began = Instant::now();
        let applied = *self.applied.borrow();
        match tokio::time::timeout(WATCH_CHECK, self.sync()).await {
            Ok(done) => done.map(|()| began),
            Err(_) => {
                // Stuck, not slow: a watch that applied nothing meanwhile.
                if *self.applied.borrow() == applied {
                    self.rewatch.notify_one();
                }
                Err(unavailable(
                    "checking the watch",
                    "it is behind the cluster",
                ))
            }
        }
    }

    fn renewed(&self, at: Instant, ttl: Duration) {
        // A margin under the TTL: etcd counts from when it renewed, which is
        // before we heard of it, and clocks drift.
        let until = at + ttl.mul_f64(0.8);
        *self.alive_until.lock().expect("lease clock") = Some(until);
    }
}

/// Takes a lease and registers this replica under it with its applied
/// revision, then checks its watch is current. Returns the lease.
///
/// The key first, the check after: a writer that does not see the key yet
/// does not wait for this replica, so this replica counts its clock from a
/// check that began once the key existed. A lease whose key may land late
/// (its put got no answer) is revoked, so that it cannot take the key over
/// from a later registration and let it expire under writers' eyes.
pub(super) async fn register(inner: &Inner) -> Result<i64, Error> {
    let mut client = inner.client.clone();
    let granted = attempt(client.lease_grant(LEASE_TTL.as_secs() as i64, None))
        .await
        .map_err(|e| unavailable("taking a lease", e))?;
    let lease = granted.id();
    let applied = *inner.applied.borrow();
    let put = attempt(client.put(
        inner.replica_key(),
        applied.to_string(),
        Some(PutOptions::new().with_lease(lease)),
    ))
    .await;
    let checked = match put {
        Ok(_) => inner.watch_current().await,
        Err(e) => Err(unavailable("registering", e)),
    };
    match checked {
        Ok(began) => {
            inner.renewed(began, Duration::from_secs(granted.ttl().max(0) as u64));
            inner.lease.store(lease, Ordering::Release);
            Ok(lease)
        }
        Err(e) => {
            // Best effort: it expires by itself within its TTL otherwise.
            let _ = attempt(client.lease_revoke(lease)).await;
            Err(e)
        }
    }
}

/// [`register`], tried for up to 10 s: at open, the watch starts from the
/// load and may need a few seconds to catch up on a busy cluster.
pub(super) async fn register_at_open(inner: &Inner) -> Result<i64, Error> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match register(inner).await {
            Ok(lease) => return Ok(lease),
            Err(e) if Instant::now() >= until => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Renews the lease and reports the applied revision whenever it moves;
/// registers again if the renewals fail. A lease whose renewals failed is
/// never renewed again: a registration tried since may have taken its key
/// and then lost it (its own lease revoked), and renewing the old one would
/// keep this replica verifying with no key that writers wait for. Until a
/// registration succeeds, its clock runs out and it refuses.
pub(super) async fn keep_registered(inner: Arc<Inner>, lease: i64) {
    let mut lease = Some(lease);
    loop {
        if let Some(l) = lease.take()
            && let Err(e) = renew_and_report(&inner, l).await
        {
            tracing::warn!(error = %e, "replica registration lost; registering again");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        match register(&inner).await {
            Ok(l) => lease = Some(l),
            Err(e) => tracing::warn!(error = %e, "cannot register with etcd"),
        }
    }
}

async fn renew_and_report(inner: &Inner, lease: i64) -> Result<(), Error> {
    let mut client = inner.client.clone();
    let (mut keeper, mut answers) = attempt(client.lease_keep_alive(lease))
        .await
        .map_err(|e| unavailable("renewing the lease", e))?;
    let mut applied = inner.applied.subscribe();
    let mut members = inner.replicas.subscribe();
    let mut left = inner.left_rotation();
    let mut renew = tokio::time::interval(LEASE_TTL / 4);
    // When the check before each renewal still unanswered began, oldest
    // first: etcd answers renewals in order, and each answer extends this
    // replica's clock from its own renewal's check, never a later one's.
    let mut sent: VecDeque<Instant> = VecDeque::new();
    // Said once per spell, not every tick.
    let mut behind = false;
    let mut reported = None;
    loop {
        tokio::select! {
            _ = renew.tick() => {
                // A member that hangs holds the stream: a new one (through
                // another member, as likely as not) is taken well before
                // the lease runs out.
                if sent.front().is_some_and(|at| at.elapsed() > LEASE_TTL / 2) {
                    return Err(unavailable("renewing the lease", "etcd did not answer"));
                }
                // Renewed only while the watch keeps up: a replica whose
                // watch stalled lets its lease go, and stops verifying (its
                // clock counts from the last check), before writers
                // elsewhere stop waiting for it.
                match inner.watch_current().await {
                    Ok(began) => {
                        behind = false;
                        keeper.keep_alive().await.map_err(|e| unavailable("renewing the lease", e))?;
                        sent.push_back(began);
                    }
                    Err(e) => {
                        if !behind {
                            behind = true;
                            tracing::warn!(error = %e, "not renewing the lease while this replica's watch is not current");
                        }
                    }
                }
            }
            answer = answers.message() => {
                let answer = answer
                    .map_err(|e| unavailable("renewing the lease", e))?
                    .ok_or_else(|| unavailable("renewing the lease", "stream ended"))?;
                if answer.ttl() <= 0 {
                    return Err(unavailable("renewing the lease", "it expired"));
                }
                if let Some(began) = sent.pop_front() {
                    inner.renewed(began, Duration::from_secs(answer.ttl() as u64));
                }
            }
            changed = applied.changed() => {
                changed.map_err(|_| Error::shutting_down())?;
            }
            changed = members.changed() => {
                changed.map_err(|_| Error::shutting_down())?;
            }
            Ok(()) = left.changed() => {
                // The stream may be on the member that left: the same
                // lease, through the members in the rotation. Renewals sent
                // on the old stream are answered there or never, so their
                // checks extend nothing.
                (keeper, answers) = attempt(client.lease_keep_alive(lease))
                    .await
                    .map_err(|e| unavailable("renewing the lease", e))?;
                sent.clear();
            }
        }
        // Reports are for the other replicas' writers: a replica alone
        // makes none (an etcd write per event saved), and reports the moment
        // another one appears. Only the latest matters: they coalesce.
        let me = inner.replica_key();
        let watched = members.borrow_and_update().keys().any(|k| *k != me);
        let rev = *applied.borrow_and_update();
        if watched && reported != Some(rev) {
            // The key keeps its lease (`ignore_lease`): a report that lands
            // late, after a registration under a new lease, cannot move
            // the key back to this one. A key gone (its lease expired)
            // fails the put, and this replica registers again.
            attempt(client.put(
                me,
                rev.to_string(),
                Some(PutOptions::new().with_ignore_lease()),
            ))
            .await
            .map_err(|e| unavailable("reporting progress", e))?;
            reported = Some(rev);
        }
    }
}

/// The registered replicas now, and the revision to follow them from.
pub(super) async fn load_replicas(inner: &Inner) -> Result<Revision, Error> {
    let r = retried("listing replicas", &inner.client, |mut c| async move {
        c.get(inner.keys.replicas(), Some(GetOptions::new().with_prefix()))
            .await
    })
    .await?;
    let mut map = HashMap::new();
    for kv in r.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let applied = String::from_utf8_lossy(kv.value()).parse().unwrap_or(0);
        map.insert(key, applied);
    }
    inner.replicas.send_replace(map);
    Ok(r.header().map_or(0, |h| etcd_revision(h.revision())))
}

/// Keeps `replicas` current: reports, arrivals, and departures (lease
/// expiry deletes the key).
pub(super) async fn follow_replicas(inner: Arc<Inner>, mut after: Revision) {
    loop {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(after as i64 + 1);
        let mut left = inner.left_rotation();
        let watched = attempt(
            inner
                .client
                .clone()
                .watch(inner.keys.replicas(), Some(options)),
        )
        .await;
        let mut stream = match watched {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch replicas");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            let r = tokio::select! {
                m = stream.message() => match m {
                    Ok(Some(r)) if !r.canceled() => r,
                    _ => break,
                },
                Ok(()) = left.changed() => break,
            };
            inner.replicas.send_modify(|map| {
                for e in r.events() {
                    let Some(kv) = e.kv() else { continue };
                    after = after.max(etcd_revision(kv.mod_revision()));
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    match e.event_type() {
                        EventType::Put => {
                            let applied = String::from_utf8_lossy(kv.value()).parse().unwrap_or(0);
                            map.insert(key, applied);
                        }
                        EventType::Delete => {
                            map.remove(&key);
                        }
                    }
                }
            });
        }
        // Broken, compacted, or maybe on a member that left the rotation:
        // start again from a fresh listing.
        match load_replicas(&inner).await {
            Ok(rev) => after = rev,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
