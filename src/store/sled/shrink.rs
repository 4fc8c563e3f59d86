//! Old tombstones shrunk on disk, in the background.
//!
//! A deleted token's tombstone (`d/<id>`) is written whole with the
//! deletion, so that `show_deleted` shows all of it while it is recent.
//! Once it was deleted `--tombstone-shrink-after` ago, this task shrinks it
//! to its shrunk record (`store/record/shrunk.rs`: id, account, name,
//! revision, created, and when and by whom deleted; about a hundred bytes
//! instead of the whole record) and moves it into its pack
//! (`sled/tombstones.rs`), out of `d/`. So `d/` holds the recent
//! tombstones only, and a pass walks those, not every tombstone ever made.
//!
//! Owns the walk over `d/`, a slice at a time, pausing as long as each
//! slice took (at most half a core), and a pass over all of them every
//! tenth of the age (at least a second, at most an hour): a young
//! tombstone is decoded once a pass, so passes are rare when the age is
//! long. It writes beside the applier: sled takes concurrent
//! writers, and nothing else writes a tombstone once it exists (ids are
//! never reused), except the replay at open, which may write a whole one
//! back under `d/` (packed again by the next pass; readers prefer it). A
//! shrink reaches the disk with the next checkpoint's flush; one a crash
//! lost is simply done again. It must never
//! touch a live token, the log or the issued ids, never shrink a tombstone
//! younger than the age, and never write once the store is poisoned. It
//! ends once the store is closed or dropped, and `close` waits out the
//! slice in flight: a slice holds sled, and with it the data dir's lock.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use super::Inner;
use super::{layout, tombstones};
use crate::error::Error;
use crate::store::record;

/// Tombstones looked at per slice.
const SLICE: usize = 1000;
/// The longest pause between two passes: an old tombstone is shrunk at
/// most this long (or a tenth of the age, if shorter) after its age passed.
const PASS_EVERY: Duration = Duration::from_secs(3600);

/// Runs until `inner` is dropped by everyone else (the store closed).
pub(super) async fn run(inner: std::sync::Weak<Inner>, after: Duration) {
    let pause = (after / 10).clamp(Duration::from_secs(1), PASS_EVERY);
    // Not at once: sled keeps the pages a pass reads in memory, and a
    // process that just opened need not hold every tombstone's page.
    tokio::time::sleep(pause).await;
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let Some(strong) = inner
            .upgrade()
            .filter(|i| !i.closed.load(Ordering::Acquire))
        else {
            return;
        };
        let from = cursor.take();
        let again = from.clone();
        let started = Instant::now();
        let slice = tokio::task::spawn_blocking(move || shrink_slice(&strong, from, after)).await;
        match slice {
            Ok(Ok(Some(next))) => {
                cursor = Some(next);
                tokio::time::sleep(started.elapsed()).await;
            }
            // A pass is over: the next one starts from the first again.
            Ok(Ok(None)) => tokio::time::sleep(pause).await,
            // sled failed: the same slice again, later.
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "shrinking old tombstones failed; trying again in a minute");
                cursor = again;
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "shrinking old tombstones stopped");
                return;
            }
        }
    }
}

/// Shrinks the old tombstones among the next [`SLICE`] after `from` (the
/// first ones when `None`); returns where the next slice starts, `None`
/// once the last was looked at (or the store is poisoned).
fn shrink_slice(
    inner: &Inner,
    from: Option<Vec<u8>>,
    after: Duration,
) -> Result<Option<Vec<u8>>, Error> {
    let failed = |e: sled::Error| super::io_error("shrinking old tombstones", e);
    let cutoff = SystemTime::now()
        .checked_sub(after)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let (start, end) = layout::tombstone_range();
    let start = match from {
        Some(k) => [&k[..], &[0]].concat(),
        None => start,
    };
    let (mut last, mut seen, mut old) = (None, 0, Vec::new());
    for item in inner.tree.range(start..end).take(SLICE) {
        seen += 1;
        let (k, v) = item.map_err(failed)?;
        last = Some(k.to_vec());
        // One that does not read is left whole, not retried every pass.
        let t = match layout::tombstone_id(&k).and_then(|id| layout::decode_tombstone(&id, &v)) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "a tombstone that does not read is left whole");
                continue;
            }
        };
        let is_old = t.audit.deleted.as_ref().is_some_and(|d| d.at <= cutoff);
        if let (true, Some(shrunk)) = (is_old, record::encode_shrunk(&t)) {
            old.push(tombstones::Old {
                id: t.id,
                shrunk,
                in_place: layout::is_shrunk_in_place(&v),
            });
        }
    }
    let shrunk = if old.is_empty() {
        0
    } else {
        let _packing = inner.packing.write().unwrap_or_else(|e| e.into_inner());
        // Right before the writes: nothing once poisoned.
        if inner.poisoned.load(Ordering::Acquire) {
            return Ok(None);
        }
        tombstones::pack(&inner.tree, old)?
    };
    if shrunk > 0 {
        metrics::counter!(crate::telemetry::TOMBSTONES_SHRUNK).increment(shrunk);
        tracing::debug!(shrunk, "old tombstones shrunk");
    }
    // A short slice was the pass's last.
    Ok(last.filter(|_| seen == SLICE))
}
