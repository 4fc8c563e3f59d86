//! The bootstrap lock: replicas that start together on one cluster take
//! turns making the operator credential (`crate::bootstrap`), each seeing
//! what the one before it made.
//!
//! Owns the lock's lease. It is granted with a time to live, so that a
//! replica that dies holding the lock lets the others go on, and kept alive
//! for as long as its holder works, however long that takes (etcd electing
//! a leader, a large store's sync): a lease left to run out under a slow
//! holder would hand the lock to the next replica while the holder still
//! acts on what it read, and both would make an Operations account. It
//! must never keep the lock once the guard is dropped.

use std::any::Any;
use std::time::Duration;

use etcd_client::{Client, LockOptions};
use tokio_util::task::AbortOnDropHandle;

use super::Inner;
use super::retry::{attempt, retried, unavailable};
use crate::error::Error;

/// The lease's time to live, in seconds: how long the others wait for a
/// holder that died. Renewed at a third of it.
fn ttl() -> i64 {
    // The tests' short lease, to outlast it without waiting a minute.
    fail::fail_point!("etcd-bootstrap-lease-ttl", |s: Option<String>| {
        s.and_then(|s| s.parse().ok()).unwrap_or(15)
    });
    15
}

/// Takes the bootstrap lock; held until the returned guard drops.
pub(super) async fn take(inner: &Inner) -> Result<Box<dyn Any + Send>, Error> {
    let name = inner.keys.bootstrap_lock();
    let client = &inner.client;
    let doing = "taking the bootstrap lock";
    let ttl = ttl();
    // A grant whose answer was lost leaves a lease no one uses, which runs
    // out.
    let lease = retried(doing, client, |mut c| async move {
        c.lease_grant(ttl, None).await
    })
    .await?
    .id();
    // Renewed from now on: the wait below may be long (another replica's
    // bootstrap), and the lease must not run out while this one waits.
    let renewing = AbortOnDropHandle::new(tokio::spawn(renew(
        client.clone(),
        lease,
        Duration::from_secs(ttl.max(1) as u64) / 3,
    )));
    let held = Held {
        client: client.clone(),
        lease,
        _renewing: renewing,
    };
    // Made once and not bounded: waiting for another replica's bootstrap
    // is this call's job, however long the other's writes take. A member
    // that hangs fails it within HTTP/2's pings (9 s).
    client
        .clone()
        .lock(name, Some(LockOptions::new().with_lease(lease)))
        .await
        .map_err(|e| unavailable(doing, e))?;
    inner.sync().await?;
    Ok(Box::new(held))
}

/// Keeps `lease` alive, renewing it `every` so often, until aborted. A
/// renewal that fails is said and tried again on a new stream; if etcd
/// stays out of reach past the lease's life, the lease runs out and the
/// lock is lost as it would be to a dead holder: nothing better is left.
async fn renew(mut client: Client, lease: i64, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let renewed = async {
            let (mut keeper, mut answers) = attempt(client.lease_keep_alive(lease))
                .await
                .map_err(|e| e.to_string())?;
            loop {
                attempt(keeper.keep_alive())
                    .await
                    .map_err(|e| e.to_string())?;
                match attempt(answers.message()).await {
                    Ok(Some(answer)) if answer.ttl() > 0 => {}
                    Ok(_) => return Ok(()),
                    Err(e) => return Err(e.to_string()),
                }
                tick.tick().await;
            }
        };
        match renewed.await {
            Err(e) => {
                tracing::warn!(error = %e, "renewing the bootstrap lock's lease failed; trying again");
            }
            Ok(()) => {
                tracing::warn!("the bootstrap lock's lease ran out while held");
                return;
            }
        }
    }
}

/// The lock, held: revoking its lease releases it.
struct Held {
    client: Client,
    lease: i64,
    _renewing: AbortOnDropHandle<()>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let (mut client, lease) = (self.client.clone(), self.lease);
        tokio::spawn(async move {
            let _ = attempt(client.lease_revoke(lease)).await;
        });
    }
}
