//! The embedded backend: a write-ahead log for durability, sled for the
//! records, one writer at a time, group commit.
//!
//! Owns the store's handle, what its threads share, and reading from it;
//! opening a data dir is `sled/open.rs`. A commit is durable once its
//! batch is in the log (`sled/wal.rs`), synced once for every command
//! planned together (the write path: each caller plans its command into
//! the next batch, `sled/commit.rs`, while the writer, `sled/durable.rs`,
//! syncs the batch before, on its thread or, for a lone request, on the
//! request's; the writer answers and publishes once its batch is durable);
//! sled gets the batch in memory right after, on the applier thread, and
//! reaches the disk in background checkpoints (`sled/apply.rs`). At open,
//! sled is brought up to the log's end before anything is served. Readers
//! use the published [`State`], and sled's event log once sled has caught
//! up with that state. What sled's own flush leaves unsynced, every flush
//! here syncs (`sled/files.rs`).
//!
//! The data dir: `db/` (sled; its layout and reading it back are in
//! `sled/layout.rs`, the retained event log in `sled/events.rs`, and
//! older formats brought to it at open in `sled/format.rs`) and `wal/`
//! (the log). It must never serve a revision that is not in the log, and
//! never open a data dir of a format it does not know (an older tokend,
//! which would not replay the log, refuses this one's by the same rule).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::Instrument;

use self::events::event_key;
use super::{AccessLog, Applied, Store};
use crate::command::Command;
use crate::domain::{AccountId, Actor, Event, Revision, Subject, Token, TokenId};
use crate::error::{Error, reason};
use crate::hub::Hub;
use crate::state::State;

mod apply;
mod commit;
mod compact;
mod durable;
mod events;
mod files;
mod format;
mod layout;
mod lz4;
mod open;
mod release;
mod restore;
mod shrink;
#[cfg(feature = "bench")]
pub mod synthetic;
mod tombstones;
mod wal;

/// The longest `close` waits for background work holding sled (a shrink
/// slice takes milliseconds; this only bounds a stuck one).
const CLOSE_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct SledConfig {
    pub data_dir: PathBuf,
    /// How many events the log keeps; older ones are compacted.
    pub retention: u64,
    /// How often a token's last-access time is written at most.
    pub access_interval: Duration,
    /// Tombstones deleted longer ago than this are shrunk (`sled/shrink.rs`).
    pub tombstone_shrink_after: Duration,
}

pub struct SledStore {
    inner: Arc<Inner>,
    /// Where commands are planned into the writer's next batch.
    handoff: Arc<commit::Handoff>,
    writer: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// The last-access ticker and the tombstone shrinker: they hold the
    /// store only while they work on it, and `close` ends them.
    background: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// What the writer, the planning callers and readers share.
struct Inner {
    db: sled::Db,
    tree: sled::Tree,
    /// The durable state; swapped by the writer after each log sync.
    state: RwLock<Arc<State>>,
    /// The last revision sled holds (in memory); [`Revision::MAX`] once a
    /// batch failed to apply, so that no reader waits for it forever.
    applied: tokio::sync::watch::Sender<Revision>,
    /// The highest revision a reader has waited for sled to reach
    /// (`sled/apply.rs`, `hurry`).
    wanted: AtomicU64,
    /// The applier thread, for `hurry` to wake.
    applier_thread: std::sync::OnceLock<std::thread::Thread>,
    /// The oldest revision sled's event log keeps: moved by the applier
    /// before it removes the keys below it (`sled/apply.rs`).
    oldest: AtomicU64,
    retention: u64,
    access: AccessLog,
    page_key: [u8; 32],
    /// sled's files, for the syncs that its flush leaves out.
    files: files::SledFiles,
    /// Set when a commit failed after sled may have taken part of it: from
    /// then on memory and disk may disagree, so writes are refused until a
    /// restart re-reads the disk.
    poisoned: AtomicBool,
    /// Held for writing while the shrinker moves tombstones into packs, for
    /// reading while a list walks them (`sled/tombstones.rs`).
    packing: RwLock<()>,
    /// Set by `close`: the shrinker starts no slice after it.
    closed: AtomicBool,
    /// What poisoned it, first failure only: every refusal repeats it, so
    /// the client's error says why, not only the log.
    poison_cause: std::sync::OnceLock<String>,
    hub: Hub,
    /// Last, so that it drops after `db` and `tree`: waits for sled's
    /// threads to let its lock go (`sled/release.rs`).
    _released: release::Released,
}

/// What a caller plans into the writer's next batch (`sled/commit.rs`).
/// Never queued: planned where it was made, and dropped.
#[expect(clippy::large_enum_variant, reason = "never stored or queued")]
enum Job {
    Apply {
        cmd: Command,
        actor: Actor,
        reply: oneshot::Sender<Result<Applied, Error>>,
        /// The caller's commit span (none unless its trace is kept): the
        /// batch's fsync span joins it.
        span: tracing::Span,
    },
    PersistAccess,
    Close(oneshot::Sender<()>),
}

impl Inner {
    /// Waits until sled holds every event up to `head`: the applier runs
    /// behind the published state, by up to a run of batches unless told
    /// that a reader waits.
    async fn caught_up(&self, head: Revision) -> Result<(), Error> {
        let mut applied = self.applied.subscribe();
        if *applied.borrow() < head {
            apply::hurry(self, head);
        }
        let reached = applied.wait_for(|&r| r >= head).await.map(|r| *r);
        if matches!(reached, Ok(Revision::MAX)) {
            return Err(self.refusal("reading the event log"));
        }
        Ok(())
    }

    /// The error of everything refused once the store is poisoned.
    fn refusal(&self, doing: &str) -> Error {
        let cause = self.poison_cause.get().map_or("", String::as_str);
        io_error(
            doing,
            format!("an earlier write failed ({cause}); restart tokend"),
        )
    }
}

fn io_error(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable {
        reason: reason::STORE_UNAVAILABLE,
        message: format!("storage failure while {context}: {e}"),
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("corrupt {what} in the data dir: {e}"))
}

#[async_trait::async_trait]
impl Store for SledStore {
    async fn apply(&self, cmd: Command, actor: Actor) -> Result<Applied, Error> {
        let span = crate::traces::commit_span();
        let (reply, answer) = oneshot::channel();
        let job = Job::Apply {
            cmd,
            actor,
            reply,
            span: span.clone(),
        };
        // Refused once the store closed: the reply goes with the job.
        self.handoff
            .submit(&self.inner, job)
            .instrument(span.clone())
            .await;
        let applied = answer
            .instrument(span.clone())
            .await
            .map_err(|_| Error::shutting_down())??;
        span.record("revision", applied.revision);
        Ok(applied)
    }

    fn state(&self) -> Arc<State> {
        self.inner.state.read().expect("state lock").clone()
    }

    async fn events(&self, from: Revision, max: usize) -> Result<Vec<Arc<Event>>, Error> {
        // Bounded by the published head (sled may already hold later ones),
        // and read once sled has it all.
        let head = self.state().revision();
        self.inner.caught_up(head).await?;
        let oldest = self.inner.oldest.load(Ordering::Acquire);
        if from < oldest && from <= head {
            return Err(Error::Compacted {
                requested: from,
                oldest,
            });
        }
        let mut out: Vec<Arc<Event>> = Vec::new();
        if from > head {
            return Ok(out);
        }
        // From the key of the commit that holds `from`: the last one at or
        // before it.
        let tree = &self.inner.tree;
        let start = match tree.range(event_key(0)..=event_key(from)).next_back() {
            Some(item) => item
                .map_err(|e| io_error("reading the event log", e))?
                .0
                .to_vec(),
            None => event_key(from),
        };
        'read: for item in tree.range(start..=event_key(head)) {
            let (_, v) = item.map_err(|e| io_error("reading the event log", e))?;
            for e in events::decode_events(&v)? {
                let expected = from + out.len() as u64;
                // Below `from`, or already read (a format-2 key beside the
                // commit replayed over it).
                if e.revision < expected {
                    continue;
                }
                if e.revision > head || out.len() == max {
                    break 'read;
                }
                if e.revision != expected {
                    // Compaction ran between our check and the read.
                    return Err(Error::Compacted {
                        requested: expected,
                        oldest: self.inner.oldest.load(Ordering::Acquire),
                    });
                }
                out.push(Arc::new(e));
            }
        }
        if out.is_empty() {
            return Err(Error::Compacted {
                requested: from,
                oldest: self.inner.oldest.load(Ordering::Acquire),
            });
        }
        Ok(out)
    }

    async fn token_events(
        &self,
        id: &TokenId,
        before: Revision,
        max: usize,
    ) -> Result<Vec<Arc<Event>>, Error> {
        // A walk over up to `retention` records: off the async workers.
        let (inner, id) = (self.inner.clone(), id.clone());
        let head = self.state().revision();
        inner.caught_up(head).await?;
        tokio::task::spawn_blocking(move || token_events(&inner, &id, head, before, max))
            .await
            .map_err(|e| Error::Internal(format!("reading a token's history: {e}")))?
    }

    async fn tombstone(&self, id: &TokenId) -> Result<Option<Token>, Error> {
        self.inner.caught_up(self.state().revision()).await?;
        let (inner, id) = (self.inner.clone(), id.clone());
        // A pack is tens of KB to read and parse: off the async threads.
        tokio::task::spawn_blocking(move || tombstones::get(&inner.tree, &id))
            .await
            .map_err(|e| Error::Internal(format!("reading a tombstone: {e}")))?
    }

    async fn tombstones(
        &self,
        account: Option<&AccountId>,
        after: Option<&TokenId>,
        max: usize,
    ) -> Result<Vec<Token>, Error> {
        let inner = self.inner.clone();
        inner.caught_up(self.state().revision()).await?;
        let (account, after) = (account.cloned(), after.cloned());
        tokio::task::spawn_blocking(move || {
            let _packing = inner.packing.read().unwrap_or_else(|e| e.into_inner());
            tombstones::list(&inner.tree, account.as_ref(), after.as_ref(), max)
        })
        .await
        .map_err(|e| Error::Internal(format!("reading tombstones: {e}")))?
    }

    async fn oldest_revision(&self, head: Revision) -> Result<Revision, Error> {
        self.inner.caught_up(head).await?;
        Ok(self.inner.oldest.load(Ordering::Acquire))
    }

    fn access_log(&self) -> &AccessLog {
        &self.inner.access
    }

    fn page_key(&self) -> [u8; 32] {
        self.inner.page_key
    }

    fn disk_bytes(&self) -> Option<u64> {
        self.inner.db.size_on_disk().ok()
    }

    async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.handoff.submit(&self.inner, Job::Close(done)).await {
            let _ = closed.await;
        }
        let handle = self.writer.lock().expect("writer handle").take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        // Every other holder of sled, and with it of the data dir's lock,
        // must be gone before this returns, so that whoever closed the
        // store can open the dir again once they drop it (sled's own
        // threads are waited for then: `sled/release.rs`). The background
        // tasks end here: one that took the store up just after the wait
        // below would drop sled after its owner had. A shrink slice already
        // on a blocking thread runs to its end (a slice is bounded); readers
        // hold the store only while a caller holds the store itself, which
        // the server waits for.
        self.inner.closed.store(true, Ordering::Release);
        let background = std::mem::take(&mut *self.background.lock().expect("background tasks"));
        for task in &background {
            task.abort();
        }
        for task in background {
            let _ = task.await;
        }
        let started = std::time::Instant::now();
        while Arc::strong_count(&self.inner) > 1 && started.elapsed() < CLOSE_WAIT {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A store dropped without a close: the writer takes what was planned,
/// then ends (a close has already shut the door; this does nothing then).
impl Drop for SledStore {
    fn drop(&mut self) {
        self.handoff.shut();
    }
}

/// Token `id`'s events in the log up to `head`, before `before` (0: all),
/// newest first, at most `max`. The log is keyed by revision alone, so this
/// walks it back from the end; only a record whose bytes name the token is
/// decoded (ids are fixed-width and appear verbatim in it).
fn token_events(
    inner: &Inner,
    id: &TokenId,
    head: Revision,
    before: Revision,
    max: usize,
) -> Result<Vec<Arc<Event>>, Error> {
    let end = if before == 0 {
        head
    } else {
        head.min(before - 1)
    };
    let mut out = Vec::new();
    if end == 0 || max == 0 {
        return Ok(out);
    }
    let names_it = memchr::memmem::Finder::new(id.as_str());
    'read: for item in inner.tree.range(event_key(0)..=event_key(end)).rev() {
        let (_, v) = item.map_err(|e| io_error("reading the event log", e))?;
        // Searched inflated: compression may split the id.
        let v = events::inflate_events(&v)?;
        if names_it.find(&v).is_none() {
            continue;
        }
        for event in events::decode_events(&v)?.into_iter().rev() {
            // Newest first, each once, none past `end`.
            let below = out.last().map_or(end + 1, |e: &Arc<Event>| e.revision);
            if event.revision >= below {
                continue;
            }
            if matches!(&event.subject, Subject::Token(t) if &t.id == id) {
                out.push(Arc::new(event));
                if out.len() == max {
                    break 'read;
                }
            }
        }
    }
    Ok(out)
}
