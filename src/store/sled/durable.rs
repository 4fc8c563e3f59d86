//! The second half of the write path of the embedded store: the writer,
//! the only code that writes to the log, and its thread.
//!
//! The writer sits behind one lock (in `commit::Handoff`): its thread
//! commits with it, and so does a lone caller on a calm store, which
//! commits its own batch rather than wake the thread (`commit.rs`). Either
//! way, one at a time: a batch is taken from the callers under that lock.
//!
//! It takes the batch callers have planned (`sled/commit.rs`), appends it
//! to the log as one record and `fdatasync`s it once: from then on it is
//! durable. It then publishes the state the batch leaves, answers the
//! callers, hands the events to the hub and the batch's sled writes, its
//! events among them, to the applier (`sled/apply.rs`), in that order, and
//! takes the next batch: all that was planned since it took this one
//! (mostly while it synced). Concurrent writers share one sync.
//!
//! Every [`CHECKPOINT_EVERY`] or [`SEGMENT_BYTES`] of log, the writer closes
//! the log segment and queues a checkpoint behind its batches. When writes
//! stop, it still does so once [`CHECKPOINT_EVERY`] has passed since the
//! last rotation, so that an idle store's log holds nothing for long (its
//! records carry the hashes of secrets set and erased: docs/contract.md
//! §2.1).
//!
//! It must never answer or publish before the log's sync returned, never
//! write a batch to the log before the one planned before it is durable (a
//! batch is planned on the state its predecessors leave: it may only become
//! durable behind them, and fails with them), and never write to sled
//! itself: sled gets batches only through the applier, in commit order.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::apply::{self, Applier, Batch, Work};
use super::commit::{Handoff, Planned};
use super::events::EventLog;
use super::wal::Wal;
use super::{Inner, io_error};
use crate::domain::Revision;
use crate::error::Error;
use crate::state::State;
use crate::telemetry;

/// How often sled is flushed at most, while writes come in: etcd's backend
/// commits every 100 ms too.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// A log segment this large is closed and checkpointed at once: bounds what
/// an open replays.
const SEGMENT_BYTES: u64 = 16 << 20;

/// Spawns the writer thread on `handoff`, whose writer it commits with.
pub(super) fn spawn(inner: Arc<Inner>, handoff: Arc<Handoff>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("tokend-writer".into())
        .spawn(move || writer_loop(&inner, &handoff))
}

/// Tells the callers the writer is gone, however the writer ends; a panic
/// poisons the store first, so that nothing more is planned.
struct Gone<'a>(&'a Inner, &'a Handoff);

impl Drop for Gone<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            apply::poison(self.0, "the writer thread", &"it panicked");
        }
        self.1.writer_gone(self.0);
    }
}

/// Commits every batch no caller committed itself, and checkpoints.
fn writer_loop(inner: &Inner, handoff: &Handoff) {
    let _gone = Gone(inner, handoff);
    loop {
        let idle = match handoff.writer().as_ref() {
            Some(w) => w.idle_wait(),
            None => return,
        };
        if !handoff.wait(idle) {
            return;
        }
        let mut writer = handoff.writer();
        let Some(w) = writer.as_mut() else { return };
        // None if a caller committed it meanwhile (`commit_here`).
        if let Some((batch, after)) = handoff.take_batch(false)
            && let Some(done) = w.commit(batch, after, false)
        {
            w.close();
            tracing::info!("store closed");
            let _ = done.send(());
            return;
        }
        w.maybe_checkpoint();
    }
}

/// The log's one writer, behind the lock in [`Handoff`].
pub(super) struct Writer {
    inner: Arc<Inner>,
    wal: Wal,
    /// The last durable revision.
    head: Revision,
    applier: Applier,
    last_checkpoint: Instant,
    /// Registered once, at open (after the exporter is installed).
    fsync_duration: metrics::Histogram,
    batch_size: metrics::Histogram,
}

impl Writer {
    /// The writer on `wal`, with the applier thread behind it started
    /// (which keeps the event log's keys, `events`, from then on).
    pub(super) fn open(inner: Arc<Inner>, wal: Wal, events: EventLog) -> std::io::Result<Writer> {
        let applier = Applier::start(inner.clone(), wal.spare(), events)?;
        let head = inner.state.read().expect("state lock").revision();
        Ok(Writer {
            applier,
            inner,
            wal,
            head,
            last_checkpoint: Instant::now(),
            fsync_duration: metrics::histogram!(telemetry::FSYNC_DURATION),
            batch_size: metrics::histogram!(telemetry::COMMIT_BATCH_SIZE),
        })
    }

    /// Logs, publishes and answers one batch; `after` is the state it
    /// leaves, when it changes any. Returns the close acknowledgement if
    /// the batch asked the writer to stop. `here`: a caller commits its
    /// own batch (`Handoff::commit_here`), and waits for all of this.
    pub(super) fn commit(
        &mut self,
        mut batch: Planned,
        after: Option<Arc<State>>,
        here: bool,
    ) -> Option<oneshot::Sender<()>> {
        let inner = self.inner.clone();
        let mut to_sled = false;
        // The state this batch replaces, freed once the batch is answered:
        // dropping a state frees every index node its successor copied
        // (3–4 µs of a one-client delete). A caller committing here would
        // wait for that, so the applier frees it, with the batch. The
        // writer's thread frees its own: a queue of batches behind a slow
        // sled must not hold a state each.
        let mut retired = None;
        if inner.poisoned.load(Ordering::Acquire) {
            // Planned on a batch that failed (an allow_missing delete behind
            // a failed delete would say "gone"): no answer of it may stand.
            fail_all(&mut batch, inner.refusal("committing"));
        } else if !batch.events.is_empty() || batch.access {
            let started = Instant::now();
            let span = crate::traces::batch_span(&batch.committing, batch.events.len());
            match span.in_scope(|| self.persist(&batch)) {
                Ok(()) => {
                    to_sled = true;
                    tracing::debug!(
                        changes = batch.events.len(),
                        elapsed_us = started.elapsed().as_micros() as u64,
                        "batch committed"
                    );
                    for id in &batch.erased {
                        inner.access.forget(id);
                    }
                    if let Some(after) = after {
                        let mut published = inner.state.write().expect("state lock");
                        retired = Some(std::mem::replace(&mut *published, after));
                    }
                }
                Err(e) => {
                    apply::poison(&inner, "a commit", &e);
                    fail_all(&mut batch, e);
                }
            }
        }

        // Durable and visible: answer, then announce. The state swap above
        // comes first so that a watcher that reads the log after subscribing
        // can never miss an event the hub already sent.
        for (reply, answer) in batch.owed {
            let _ = reply.send(answer);
        }
        let access_only = batch.events.is_empty();
        for event in batch.events {
            // Revisions here are consecutive: the one before is revision - 1.
            inner.hub.publish(event.revision - 1, event);
        }
        // sled last: on two cores, a woken applier would take the CPU the
        // answers and the watchers' wake-ups need. Access times alone, which
        // skipped the log, are flushed behind them.
        if to_sled {
            self.applier.send(Work::Batch(Batch {
                writes: batch.writes,
                head: self.head,
                events: batch.encoded,
                retired: retired.take_if(|_| here),
            }));
            if access_only {
                self.applier.send(Work::Flush);
            }
        }
        drop(retired);
        batch.close
    }

    /// Makes a batch's changes durable in the log. Access times alone skip
    /// it. The batch's events reach sled's event log through the applier,
    /// which keeps that log's keys (`sled/apply.rs`).
    fn persist(&mut self, batch: &Planned) -> Result<(), Error> {
        let Some(last) = batch.events.last() else {
            return Ok(());
        };
        let started = Instant::now();
        self.wal
            .append(&batch.payload)
            .map_err(|e| io_error("writing the write-ahead log", e))?;
        self.fsync_duration.record(started.elapsed().as_secs_f64());
        self.batch_size.record(batch.events.len() as f64);
        fail::fail_point!("sled-wal-synced", |_| std::process::abort());
        self.head = last.revision;
        Ok(())
    }

    /// How long the writer waits for a batch before it looks whether a
    /// checkpoint is due: until one is, and at least a tenth of the
    /// interval (a checkpoint still running defers the next). No limit
    /// while the log segment is empty, or once the store is poisoned (no
    /// checkpoint runs then: the log stays for the next open to replay).
    pub(super) fn idle_wait(&self) -> Option<Duration> {
        let to_checkpoint = self.wal.len() > 0 && !self.inner.poisoned.load(Ordering::Acquire);
        to_checkpoint.then(|| {
            CHECKPOINT_EVERY
                .saturating_sub(self.last_checkpoint.elapsed())
                .max(CHECKPOINT_EVERY / 10)
        })
    }

    /// True while the log segment holds a record: a checkpoint is due.
    pub(super) fn log_holds_records(&self) -> bool {
        self.wal.len() > 0
    }

    /// Closes the log segment and has sled checkpointed, when one is due
    /// and none is running.
    pub(super) fn maybe_checkpoint(&mut self) {
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

/// Fails every command of a batch that cannot be durable, and announces
/// none of it.
fn fail_all(batch: &mut Planned, e: Error) {
    for (_, answer) in batch.owed.iter_mut() {
        *answer = Err(e.clone());
    }
    batch.events.clear();
}
