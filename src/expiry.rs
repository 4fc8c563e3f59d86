//! Expiry: turning a passed `expire_time` into a deletion.
//!
//! Owns the one background task per server that deletes expired tokens,
//! by the actor `expiry`, through the same [`Command::DeleteToken`] as any
//! caller: the hash is erased, the tombstone stays, and every watcher,
//! cache and sidecar hears `DELETED` as for any other delete.
//!
//! Refusing an expired secret never waits for this task: every verifier
//! decides from the record's `expire_time` and its own clock
//! ([`crate::state::State::verify`], [`crate::client::TokenCache`]). This
//! task only makes the refusal final and visible: it looks at start-up
//! (tokens that expired while tokend was down) and then every
//! `check_every`, so a token is deleted within that long of its expiry,
//! plus the commit.
//!
//! It must never delete a token that has not expired, nor a record that
//! changed since it looked: each delete carries the etag it read, so on
//! etcd, where every replica runs this task, the first replica's delete
//! commits and the others' become no-ops (`allow_missing`) or etag
//! mismatches, never a second event.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::command::Command;
use crate::domain::{Actor, TokenId};
use crate::error::Error;
use crate::store::Store;
use crate::telemetry;

/// How many deletions one pass sends at once: they share the store's group
/// commits, so a burst of expiries costs a few syncs, not one each.
const CONCURRENT_DELETES: usize = 64;

/// Deletes expired tokens until `shutdown`: at once, then every `check_every`.
pub async fn run(store: Arc<dyn Store>, check_every: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(check_every);
    // A pass that ran long is not followed by a burst of catch-up passes.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => delete_expired(&store, SystemTime::now()).await,
        }
    }
}

/// One pass: deletes every token expired at `now` in the latest state.
async fn delete_expired(store: &Arc<dyn Store>, now: SystemTime) {
    let due: Vec<(TokenId, String)> = store
        .state()
        .expired_by(now)
        .map(|t| (t.id.clone(), t.etag()))
        .collect();
    if due.is_empty() {
        return;
    }
    let outcomes = futures_util::stream::iter(due)
        .map(|(id, etag)| async move {
            let cmd = Command::DeleteToken {
                id: id.clone(),
                etag: Some(etag),
                allow_missing: true,
            };
            (id, store.apply(cmd, Actor::expiry()).await)
        })
        .buffer_unordered(CONCURRENT_DELETES)
        .collect::<Vec<_>>()
        .await;
    for (id, outcome) in outcomes {
        match outcome {
            Ok(applied) if applied.revision > 0 => {
                metrics::counter!(telemetry::TOKENS_EXPIRED).increment(1);
                tracing::info!(token = %id, revision = applied.revision, "token expired: deleted");
            }
            // Deleted elsewhere (another replica's pass), or changed since
            // this pass looked: the next pass sees the new record.
            Ok(_) | Err(Error::EtagMismatch { .. }) => {}
            Err(e) => {
                tracing::warn!(token = %id, error = %e, "deleting an expired token failed; retrying on the next pass");
            }
        }
    }
}
