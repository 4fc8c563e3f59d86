//! The write path of the embedded store: one writer thread, group commit
//! through the write-ahead log.
//!
//! The writer takes every queued command, plans each against a working copy
//! of the state (so later commands in a batch see earlier ones), appends the
//! whole batch to the log as one record and `fdatasync`s it once: from then
//! on it is durable. It then publishes the new state, answers the callers,
//! hands the events to the hub and the batch's sled writes to the applier
//! (`sled/apply.rs`), in that order. One writer means revisions come out
//! gap-free in commit order without locks, and concurrent writers share one
//! sync.
//!
//! Every [`CHECKPOINT_EVERY`] or [`SEGMENT_BYTES`] of log, the writer closes
//! the log segment and queues a checkpoint behind its batches.
//!
//! It must never answer or publish before the log's sync returned, and
//! never write to sled itself: sled gets batches only through the applier,
//! in commit order.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};

use super::apply::{self, Applier, Work};
use super::layout::{self, EventLog, Writes};
use super::wal::{self, Wal};
use super::{Inner, Job, io_error};
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

/// Starts the writer thread, the only code that writes to the log, and the
/// applier thread behind it, on `wal`.
pub(super) fn start_writer(
    inner: Arc<Inner>,
    wal: Wal,
    events: EventLog,
    rx: mpsc::Receiver<Job>,
) -> std::io::Result<JoinHandle<()>> {
    let applier = Applier::start(inner.clone(), wal.dir().to_path_buf())?;
    let w = Writer {
        applier,
        inner,
        wal,
        events,
        last_checkpoint: Instant::now(),
        fsync_duration: metrics::histogram!(telemetry::FSYNC_DURATION),
        batch_size: metrics::histogram!(telemetry::COMMIT_BATCH_SIZE),
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
    /// The event keys sled will hold once the applier has caught up.
    events: EventLog,
    applier: Applier,
    last_checkpoint: Instant,
    /// Registered once, at open (after the exporter is installed).
    fsync_duration: metrics::Histogram,
    batch_size: metrics::Histogram,
}

/// `change` as the log and sled record it: a token change that kept its
/// secret carries the hash it kept (`after`, the state once it is applied,
/// holds it) as if set again. sled's record of a live token holds the hash
/// (`layout.rs`), and is rewritten whole: this way neither the writer nor
/// the replay at open has to read sled to keep it.
fn with_kept_secret(mut change: Change, after: &State) -> Change {
    if let (SecretOp::Keep, Subject::Token(t)) = (&change.secret, &change.subject)
        && let Some(h) = after.secret_of(&t.id)
    {
        change.secret = SecretOp::Set(*h);
    }
    change
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
        let mut committing: Vec<tracing::Span> = Vec::new();
        let mut persist_access = false;
        let mut close = None;
        let mut for_sled = None;
        // The state this batch replaces: freed only once the batch is
        // answered (dropping a state frees every index node its successor
        // copied: up to a tenth of the writer's time, none of it owed to
        // a caller).
        let mut retired: Option<Arc<State>> = None;
        let poisoned = inner.poisoned.load(Ordering::Acquire);

        for job in jobs {
            match job {
                Job::Apply { reply, .. } if poisoned => {
                    let e = inner.refusal("committing");
                    owed.push((reply, Err(e)));
                }
                Job::Apply {
                    cmd,
                    actor,
                    reply,
                    span,
                } => {
                    let answer = match command::plan(&work, &cmd, &Ctx { now, actor: &actor }) {
                        Err(e) => Err(e),
                        Ok(Plan::Unchanged(subject)) => Ok(Applied::unchanged(subject)),
                        Ok(Plan::Change(planned, secret)) => {
                            let mut subjects = Vec::with_capacity(planned.len());
                            for change in planned {
                                let revision = work.revision() + 1;
                                work.apply(&change, revision);
                                events.push(Arc::new(change.event(revision, now, actor.clone())));
                                subjects.push(change.subject.clone());
                                changes.push(with_kept_secret(change, &work));
                            }
                            committing.push(span);
                            Ok(Applied::committed(work.revision(), subjects, secret))
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
            let span = crate::traces::batch_span(&committing, changes.len());
            let persisted =
                span.in_scope(|| self.persist(&changes, &events, &access, work.revision()));
            match persisted {
                Ok(writes) => {
                    for_sled = Some((writes, work.revision()));
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
                        let mut published = inner.state.write().expect("state lock");
                        retired = Some(std::mem::replace(&mut *published, Arc::new(work)));
                    }
                }
                Err(e) => {
                    apply::poison(&inner, "a commit", &e);
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
        // sled last: on two cores, a woken applier would take the CPU the
        // answers and the watchers' wake-ups need.
        if let Some((writes, head)) = for_sled {
            self.to_sled(writes, head, changes.is_empty());
        }
        drop(retired);
        close
    }

    /// Hands a durable batch's sled writes to the applier; access times
    /// alone, which skipped the log, are flushed behind them.
    fn to_sled(&self, writes: Writes, head: Revision, access_only: bool) {
        self.applier.send(Work::Batch { writes, head });
        if access_only {
            self.applier.send(Work::Flush);
        }
    }

    /// Makes one batch durable in the log and returns its sled writes.
    /// Access times alone (no change) skip the log.
    fn persist(
        &mut self,
        changes: &[Change],
        events: &[Arc<Event>],
        access: &[(TokenId, SystemTime)],
        head: Revision,
    ) -> Result<Writes, Error> {
        let inner = &self.inner;
        let encoded: Vec<Vec<u8>> = events
            .iter()
            .map(|e| record::encode::<EventRecord>(e))
            .collect();
        let mut writes = Writes::default();
        // One event per change, in the same order.
        for (change, event) in changes.iter().zip(events) {
            // After `with_kept_secret`, only Set leaves a token live.
            let secret = match &change.secret {
                SecretOp::Set(h) => Some(h),
                SecretOp::Keep | SecretOp::Erase(_) => None,
            };
            layout::write_change(&mut writes, change, secret, event.revision);
        }
        for (id, at) in access {
            writes.insert(layout::access_key(id), record::encode::<TimeRecord>(at));
        }
        if let Some(first) = events.first().map(|e| e.revision) {
            let payload = wal::encode_payload(
                changes
                    .iter()
                    .zip(&encoded)
                    .map(|(c, e)| (&c.secret, &e[..])),
            );
            let started = Instant::now();
            self.wal
                .append(&payload)
                .map_err(|e| io_error("writing the write-ahead log", e))?;
            self.fsync_duration.record(started.elapsed().as_secs_f64());
            self.batch_size.record(changes.len() as f64);
            fail::fail_point!("sled-wal-synced", |_| std::process::abort());
            // `oldest` moves before the keys go, so a reader sees
            // OUT_OF_RANGE rather than a gap.
            let retained = layout::encode_events(encoded.iter().map(|e| &e[..]));
            let kept = self
                .events
                .append(&mut writes, first, head, retained, inner.retention);
            inner.oldest.store(kept, Ordering::Release);
        }
        Ok(writes)
    }

    /// Closes the log segment and has sled checkpointed, when one is due
    /// and none is running.
    fn maybe_checkpoint(&mut self) {
        let due = self.wal.len() >= SEGMENT_BYTES
            || (self.wal.len() > 0 && self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY);
        if !due || self.applier.checkpoint_busy() || self.inner.poisoned.load(Ordering::Acquire) {
            return;
        }
        match self.wal.rotate() {
            Ok(closed_below) => {
                self.last_checkpoint = Instant::now();
                self.applier.send(Work::Checkpoint(closed_below));
            }
            Err(e) => apply::poison(&self.inner, "starting a log segment", &e),
        }
    }

    /// At shutdown: sled catches up, then one last checkpoint, after which
    /// the log is empty.
    fn close(&mut self) {
        self.applier.stop();
        if self.inner.poisoned.load(Ordering::Acquire) {
            return;
        }
        let done = self
            .wal
            .rotate()
            .map_err(|e| io_error("starting a log segment", e))
            .and_then(|closed_below| apply::checkpoint(&self.inner, self.wal.dir(), closed_below));
        if let Err(e) = done {
            tracing::warn!(error = %e, "last checkpoint failed; the log is replayed at open");
        }
    }
}
