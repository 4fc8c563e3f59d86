//! The write path of the embedded store: one writer thread, group commit
//! through the write-ahead log, and checkpoints of sled in the background.
//!
//! The writer takes every queued command, plans each against a working copy
//! of the state (so later commands in a batch see earlier ones), appends the
//! whole batch to the log as one record and `fdatasync`s it once: from then
//! on it is durable. It then applies the same batch to sled in memory,
//! publishes the new state, answers the callers and hands the events to the
//! hub, in that order. One writer means revisions come out gap-free in
//! commit order without locks, and concurrent writers share one sync.
//!
//! sled reaches the disk in checkpoints: every [`CHECKPOINT_EVERY`] or
//! [`SEGMENT_BYTES`] of log, the writer closes the log segment and the
//! checkpoint thread flushes sled and `fdatasync`s its file, then deletes
//! the segments sled now holds. At open, [`replay`] applies every logged
//! batch past sled's revision counter again.
//!
//! It must never answer or publish before the log's sync returned, never
//! delete a segment before sled's flush covering it returned, and never use
//! sled's `flush_async` (it deadlocks under concurrency).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};

use super::layout::{self, Writes};
use super::wal::{Entry, Wal};
use super::{Inner, Job, corrupt, io_error};
use crate::command::{self, Ctx, Plan};
use crate::domain::{Event, Revision, Subject, TokenId};
use crate::error::Error;
use crate::state::{Change, SecretOp, State};
use crate::store::Applied;
use crate::store::record::{self, EventRecord, TimeRecord};
use crate::telemetry;

/// Most commands one commit takes: bounds the latency a batch adds.
pub(super) const MAX_BATCH: usize = 1024;
/// How often sled is flushed at most, while writes come in: etcd's backend
/// commits every 100 ms too.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// A log segment this large is closed and checkpointed at once: bounds what
/// an open replays.
const SEGMENT_BYTES: u64 = 16 << 20;

/// Starts the writer thread, the only code that writes to the log (and to
/// sled after open), and its checkpoint thread, on `wal`.
pub(super) fn start_writer(
    inner: Arc<Inner>,
    wal: Wal,
    rx: mpsc::Receiver<Job>,
) -> std::io::Result<JoinHandle<()>> {
    let checkpoints = Checkpoints::start(inner.clone(), wal.dir().to_path_buf())?;
    let w = Writer {
        checkpoints,
        inner,
        wal,
        last_checkpoint: Instant::now(),
    };
    std::thread::Builder::new()
        .name("tokend-writer".into())
        .spawn(move || writer_loop(w, rx))
}

fn writer_loop(mut w: Writer, mut rx: mpsc::Receiver<Job>) {
    loop {
        let Some(first) = rx.blocking_recv() else {
            return;
        };
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        if let Some(done) = w.commit_batch(jobs) {
            w.close();
            tracing::info!("store closed");
            let _ = done.send(());
            return;
        }
        w.maybe_checkpoint();
    }
}

struct Writer {
    inner: Arc<Inner>,
    wal: Wal,
    checkpoints: Checkpoints,
    last_checkpoint: Instant,
}

/// A reply owed to a caller once the batch is durable.
type Owed = (
    oneshot::Sender<Result<Applied, Error>>,
    Result<Applied, Error>,
);

impl Writer {
    /// Plans, logs, applies and publishes one batch. Returns the close
    /// acknowledgement if the batch asked the writer to stop.
    fn commit_batch(&mut self, jobs: Vec<Job>) -> Option<oneshot::Sender<()>> {
        let inner = self.inner.clone();
        let now = SystemTime::now();
        let mut work = State::clone(&inner.state.read().expect("state lock"));
        let mut changes: Vec<Change> = Vec::new();
        let mut events: Vec<Arc<Event>> = Vec::new();
        let mut owed: Vec<Owed> = Vec::with_capacity(jobs.len());
        let mut persist_access = false;
        let mut close = None;
        let poisoned = inner.poisoned.load(Ordering::Acquire);

        for job in jobs {
            match job {
                Job::Apply { reply, .. } if poisoned => {
                    let e = io_error("committing", "an earlier write failed; restart tokend");
                    owed.push((reply, Err(e)));
                }
                Job::Apply { cmd, actor, reply } => {
                    let answer = match command::plan(&work, &cmd, &Ctx { now, actor: &actor }) {
                        Err(e) => Err(e),
                        Ok(Plan::Unchanged(subject)) => Ok(Applied {
                            revision: 0,
                            subject,
                            secret: None,
                        }),
                        Ok(Plan::Change(change, secret)) => {
                            let revision = work.revision() + 1;
                            work.apply(&change, revision);
                            events.push(Arc::new(change.event(revision, now, actor)));
                            let subject = Some(change.subject.clone());
                            changes.push(change);
                            Ok(Applied {
                                revision,
                                subject,
                                secret,
                            })
                        }
                    };
                    owed.push((reply, answer));
                }
                Job::PersistAccess => persist_access = true,
                Job::Close(done) => {
                    persist_access = true;
                    close = Some(done);
                }
            }
        }

        // Access times only of tokens still live after this batch: a deletion
        // in the same batch must not write its token's record back.
        let access: Vec<_> = if persist_access && !poisoned {
            inner
                .access
                .take_due(now, close.is_some())
                .into_iter()
                .filter(|(id, _)| work.secret_of(id).is_some())
                .collect()
        } else {
            Vec::new()
        };
        // Once poisoned nothing more is written, not even access times: sled
        // may hold part of the failed batch, and a write now could make it
        // durable under a revision counter that no longer matches.
        if !poisoned && (!changes.is_empty() || !access.is_empty()) {
            let started = Instant::now();
            match self.persist(&changes, &events, &access, work.revision()) {
                Ok(()) => {
                    tracing::debug!(
                        changes = changes.len(),
                        elapsed_us = started.elapsed().as_micros() as u64,
                        "batch committed"
                    );
                    for change in &changes {
                        if let (SecretOp::Erase(_), Subject::Token(t)) =
                            (&change.secret, &change.subject)
                        {
                            inner.access.forget(&t.id);
                        }
                    }
                    if !changes.is_empty() {
                        *inner.state.write().expect("state lock") = Arc::new(work);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "commit failed; refusing writes until restart");
                    inner.poisoned.store(true, Ordering::Release);
                    events.clear();
                    // Every answer of the batch was planned against state that
                    // includes the failed changes (an allow_missing delete
                    // behind a failed delete would say "gone"): none may stand.
                    for (_, answer) in owed.iter_mut() {
                        *answer = Err(e.clone());
                    }
                }
            }
        }

        // Durable and visible: answer, then announce. The state swap above
        // comes first so that a watcher that reads the log after subscribing
        // can never miss an event the hub already sent.
        for (reply, answer) in owed {
            let _ = reply.send(answer);
        }
        for event in events {
            // Revisions here are consecutive: the one before is revision - 1.
            inner.hub.publish(event.revision - 1, event);
        }
        close
    }

    /// Makes one batch durable in the log, then applies it to sled. Access
    /// times alone (no change) skip the log: they are flushed with sled.
    fn persist(
        &mut self,
        changes: &[Change],
        events: &[Arc<Event>],
        access: &[(TokenId, SystemTime)],
        head: Revision,
    ) -> Result<(), Error> {
        let inner = &self.inner;
        let encoded: Vec<Vec<u8>> = events
            .iter()
            .map(|e| record::encode::<EventRecord>(e))
            .collect();
        if !changes.is_empty() {
            let started = Instant::now();
            let entries = changes
                .iter()
                .zip(&encoded)
                .map(|(c, e)| (&c.secret, &e[..]));
            self.wal
                .append(entries)
                .map_err(|e| io_error("writing the write-ahead log", e))?;
            metrics::histogram!(telemetry::FSYNC_DURATION).record(started.elapsed().as_secs_f64());
            metrics::histogram!(telemetry::COMMIT_BATCH_SIZE).record(changes.len() as f64);
            fail::fail_point!("sled-wal-synced", |_| std::process::abort());
        }

        let mut writes = Writes::default();
        for ((change, event), bytes) in changes.iter().zip(events).zip(encoded) {
            layout::write_change(&mut writes, change, event.revision, bytes);
        }
        for (id, at) in access {
            writes.insert(layout::access_key(id), record::encode::<TimeRecord>(at));
        }
        // `oldest` moves before the keys go, so a reader sees OUT_OF_RANGE
        // rather than a gap.
        let oldest = inner.oldest.load(Ordering::Acquire);
        let kept = layout::finish_batch(&mut writes, head, oldest, inner.retention);
        inner.oldest.store(kept, Ordering::Release);
        writes
            .apply(&inner.tree)
            .map_err(|e| io_error("writing a batch", e))?;
        if changes.is_empty() {
            flush(inner)?;
        }
        Ok(())
    }

    /// Closes the log segment and has sled checkpointed, when one is due
    /// and none is running.
    fn maybe_checkpoint(&mut self) {
        let due = self.wal.len() >= SEGMENT_BYTES
            || (self.wal.len() > 0 && self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY);
        if !due || self.checkpoints.busy() || self.inner.poisoned.load(Ordering::Acquire) {
            return;
        }
        match self.wal.rotate() {
            Ok(closed_below) => {
                self.last_checkpoint = Instant::now();
                self.checkpoints.request(closed_below);
            }
            Err(e) => poison(&self.inner, "starting a log segment", &e),
        }
    }

    /// At shutdown: one last checkpoint, after which the log is empty.
    fn close(&mut self) {
        self.checkpoints.stop();
        if self.inner.poisoned.load(Ordering::Acquire) {
            return;
        }
        let done = self
            .wal
            .rotate()
            .map_err(|e| io_error("starting a log segment", e))
            .and_then(|closed_below| checkpoint(&self.inner, self.wal.dir(), closed_below));
        if let Err(e) = done {
            tracing::warn!(error = %e, "last checkpoint failed; the log is replayed at open");
        }
    }
}

/// sled's flush ends in sync_file_range, which flushes neither the drive's
/// write cache nor the file's size: not durable across a power loss. One
/// fdatasync of its file after it makes it so.
fn flush(inner: &Inner) -> Result<(), Error> {
    inner
        .db
        .flush()
        .map_err(|e| io_error("flushing to disk", e))?;
    inner
        .log_file
        .sync_data()
        .map_err(|e| io_error("syncing to disk", e))
}

/// Stops all writes until a restart: after a failed sync (of the log,
/// sled's file or the log's directory) the kernel may have dropped what it
/// could not write and report success next time, so nothing on disk may be
/// trusted, or deleted, until open has replayed the log again.
fn poison(inner: &Inner, doing: &str, e: &dyn std::fmt::Display) {
    tracing::error!(error = %e, "{doing} failed; refusing writes until restart");
    inner.poisoned.store(true, Ordering::Release);
}

/// Flushes sled, then deletes the log segments below `closed_below`, whose
/// every batch the flush covered. Nothing is deleted once the store is
/// poisoned: a flush that failed anywhere (this one, or the writer's on the
/// same file) may be reported as a success after it.
pub(super) fn checkpoint(
    inner: &Inner,
    dir: &std::path::Path,
    closed_below: u64,
) -> Result<(), Error> {
    let started = Instant::now();
    flush(inner)?;
    fail::fail_point!("sled-checkpoint-flushed", |_| std::process::abort());
    if inner.poisoned.load(Ordering::Acquire) {
        return Err(io_error("checkpointing", "an earlier write failed"));
    }
    Wal::remove_before(dir, closed_below).map_err(|e| io_error("removing log segments", e))?;
    metrics::histogram!(telemetry::CHECKPOINT_DURATION).record(started.elapsed().as_secs_f64());
    Ok(())
}

/// The checkpoint thread, so that sled's flush never holds up a commit.
struct Checkpoints {
    requests: Option<std::sync::mpsc::Sender<u64>>,
    busy: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpoints {
    fn start(inner: Arc<Inner>, dir: PathBuf) -> std::io::Result<Checkpoints> {
        let (requests, rx) = std::sync::mpsc::channel::<u64>();
        let busy = Arc::new(AtomicBool::new(false));
        let flag = busy.clone();
        let thread = std::thread::Builder::new()
            .name("tokend-checkpoint".into())
            .spawn(move || {
                for closed_below in rx {
                    // Idle again when this one ends, however it ends.
                    let _idle = Idle(&flag);
                    if skip_checkpoint() {
                        continue;
                    }
                    if let Err(e) = checkpoint(&inner, &dir, closed_below) {
                        // The segments stay: nothing is lost, open replays
                        // them. A retry could not be trusted (see poison).
                        poison(&inner, "a checkpoint", &e);
                    }
                }
            })?;
        Ok(Checkpoints {
            requests: Some(requests),
            busy,
            thread: Some(thread),
        })
    }

    fn busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    fn request(&self, closed_below: u64) {
        if let Some(r) = &self.requests {
            self.busy.store(true, Ordering::Release);
            if r.send(closed_below).is_err() {
                self.busy.store(false, Ordering::Release);
            }
        }
    }

    fn stop(&mut self) {
        self.requests = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Clears the checkpoint thread's busy flag when dropped.
struct Idle<'a>(&'a AtomicBool);

impl Drop for Idle<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The crash tests' way to let the log run far ahead of sled.
fn skip_checkpoint() -> bool {
    fail::fail_point!("sled-checkpoint-skip", |_| true);
    false
}

/// Applies every logged batch to sled again, oldest first, and flushes:
/// what a crash between a log sync and a checkpoint left behind. All of
/// them, not only those past sled's revision counter: sled may have kept
/// some writes of a batch and lost others, and every write sets a key to
/// its value after that batch, so the log's order ends each key where the
/// last commit left it. Returns how many logged changes it applied.
pub(super) fn replay(
    tree: &sled::Tree,
    batches: Vec<Vec<Entry>>,
    retention: u64,
) -> Result<usize, Error> {
    let stored = layout::revision(tree)?;
    let mut oldest = layout::oldest_event(tree, stored)?;
    let mut head: Option<Revision> = None;
    let mut applied = 0;
    for entries in batches {
        let mut writes = Writes::default();
        let mut first = None;
        for Entry { secret, event } in entries {
            let e = layout::decode::<EventRecord>("event in the write-ahead log", &event)?;
            // Increasing; consecutive past sled's revision, and the first
            // one sled must already reach: a hole there means lost commits.
            // (Below it, a hole is a checkpointed segment whose deletion
            // reached the disk before an older one's.)
            let prev = head.unwrap_or(0);
            let expected = if e.revision <= stored && e.revision > prev {
                e.revision
            } else {
                prev.max(stored) + 1
            };
            if e.revision != expected {
                return Err(corrupt(
                    "write-ahead log",
                    format!(
                        "revision {} where {expected} was due (the store is at {stored})",
                        e.revision
                    ),
                ));
            }
            let change = Change {
                kind: e.kind,
                subject: e.subject,
                secret,
            };
            layout::write_change(&mut writes, &change, e.revision, event);
            first.get_or_insert(e.revision);
            head = Some(e.revision);
            applied += 1;
        }
        let (Some(first), Some(last)) = (first, head) else {
            continue;
        };
        // Events written again below the oldest kept go again too.
        oldest = layout::finish_batch(&mut writes, last, oldest.min(first), retention);
        writes
            .apply(tree)
            .map_err(|e| io_error("replaying the write-ahead log", e))?;
    }
    match head {
        Some(h) if h < stored => Err(corrupt(
            "write-ahead log",
            format!("it ends at revision {h}, before the store's {stored}"),
        )),
        _ => Ok(applied),
    }
}
