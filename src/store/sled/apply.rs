//! sled behind the log: the applier thread, checkpoints, and the replay at
//! open.
//!
//! A committed batch is durable once the writer (`sled/durable.rs`) has
//! synced it to the log; sled only has to catch up. The applier thread
//! takes the writer's batches in commit order, gathers those of the next
//! [`APPLY_EVERY`] into one run (one tombstone count per account, one event
//! key and one revision-counter write for the whole run; the thread sleeps
//! out the run, so the writer's sends do not wake it), applies the run to
//! sled in memory and advances the applied revision, which readers of sled
//! (the event log, tombstones) wait for. The writer therefore answers and
//! publishes without waiting for sled. This is etcd's shape: its raft loop
//! persists the WAL, and its backend applies behind it and commits every
//! 100 ms.
//!
//! It keeps the event log's keys ([`EventLog`]): which ones sled holds,
//! which a run's trim removes, and the oldest revision readers may ask
//! for. One key per run (more, between batches, when its events are
//! many), not per commit: at one client a commit is one delete, and its
//! own event key, and the trim of an old one, were two of the four sled
//! writes it cost.
//!
//! The thread runs [`NICE`] steps below the process: no write's answer
//! and no live event waits for it (readers of sled hurry it, below), so on
//! a busy machine it yields the CPU to the writer and the runtime.
//!
//! A reader never waits out a run: [`hurry`] marks the revision it needs
//! and wakes this thread, which then applies everything queued at once.
//!
//! The same thread checkpoints: when the writer closes a log segment it
//! queues a checkpoint behind that segment's batches, so the flush that
//! follows covers all of them before the segment is deleted. It then makes
//! the writer's next segment ahead of its use (`wal/spare.rs`). A queued
//! checkpoint ends the run at once: its syncs then follow the commit that
//! made it due, while that commit's answers go out, instead of landing a
//! run later on whichever commit is syncing then (at a steady 100 deletes
//! a second, the next one). At open, [`replay`] applies every logged batch
//! again.
//!
//! It must never delete a segment before sled's flush covering it returned,
//! never advance the applied revision past a batch it has not applied,
//! never keep a waiting reader waiting for the rest of a run, never remove
//! an event key before the oldest revision readers may ask for has moved
//! past it, never do work a write's answer waits for (it runs at a lower
//! priority), and never use sled's `flush_async` (it deadlocks under
//! concurrency).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::events::EventLog;
use super::format;
use super::layout::{self, Writes};
use super::wal::{Entry, Spare, Wal};
use super::{Inner, corrupt, io_error};
use crate::domain::Revision;
use crate::domain::Subject;
use crate::error::Error;
use crate::state::{Change, SecretOp, State};
use crate::store::record::{self, EventRecord};
use crate::telemetry;

/// Batches the writer may run ahead of sled before it waits: room for a
/// checkpoint's flush (milliseconds) at full speed.
const QUEUE: usize = 4096;
/// How long the applier gathers committed batches into one run before it
/// applies them: at one client, a run of about ten deletes; under load,
/// several group commits. Readers do not wait for it (see [`hurry`]).
const APPLY_EVERY: Duration = Duration::from_millis(10);

/// What the writer hands the applier, in commit order.
pub(super) enum Work {
    Batch(Batch),
    /// Make what sled holds durable (last-access times, which skip the log).
    Flush,
    /// Flush, then delete the log segments below this sequence.
    Checkpoint(u64),
}

/// A committed batch, as sled gets it.
pub(super) struct Batch {
    pub(super) writes: Writes,
    /// Its last revision.
    pub(super) head: Revision,
    /// Its events as the event log keeps them (`record::encode_event`), the
    /// last at `head`; none for last-access times alone.
    pub(super) events: Vec<Vec<u8>>,
    /// The published state this batch replaced, for this thread to free
    /// when a caller committed the batch (`durable::Writer::commit`).
    pub(super) retired: Option<Arc<State>>,
}

/// The writer's handle on the applier thread.
pub(super) struct Applier {
    queue: Option<SyncSender<Work>>,
    /// A checkpoint is queued or running (a run gathering ends).
    busy: Arc<AtomicBool>,
    /// Set by [`Applier::stop`]: a run in progress ends at once.
    closing: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Applier {
    /// Starts the thread on the event keys sled holds (`events`).
    pub(super) fn start(
        inner: Arc<Inner>,
        spare: Arc<Spare>,
        events: EventLog,
    ) -> std::io::Result<Applier> {
        let (queue, rx) = std::sync::mpsc::sync_channel::<Work>(QUEUE);
        let busy = Arc::new(AtomicBool::new(false));
        let closing = Arc::new(AtomicBool::new(false));
        let flags = (busy.clone(), closing.clone());
        let applying = inner.clone();
        let thread = std::thread::Builder::new()
            .name("tokend-apply".into())
            .spawn(move || {
                let _watch = Dead(&applying);
                lower_priority();
                let (busy, closing) = (&flags.0, &flags.1);
                apply_loop(&applying, &spare, events, busy, closing, rx)
            })?;
        // Readers wake it by its handle (`hurry`), which keeps no queue open.
        let _ = inner.applier_thread.set(thread.thread().clone());
        Ok(Applier {
            queue: Some(queue),
            busy,
            closing,
            thread: Some(thread),
        })
    }

    pub(super) fn send(&self, work: Work) {
        if let Some(q) = &self.queue {
            let checkpoint = matches!(work, Work::Checkpoint(_));
            if checkpoint {
                self.busy.store(true, Ordering::Release);
            }
            // Only fails once the thread is gone, which only a panic does
            // (and `Dead` has poisoned the store); the log holds everything.
            let _ = q.send(work);
            // The run it follows ends now (`apply_loop`).
            if checkpoint && let Some(t) = &self.thread {
                t.thread().unpark();
            }
        }
    }

    pub(super) fn checkpoint_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    /// Waits until everything queued is applied (and checkpointed).
    pub(super) fn stop(&mut self) {
        self.queue = None;
        if let Some(t) = self.thread.take() {
            self.closing.store(true, Ordering::Release);
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// A writer that ends without closing the store (a panic) still lets sled
/// catch up, and ends the thread, which would otherwise hold sled open.
impl Drop for Applier {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How many nice steps the applier thread runs below the process. No
/// write's answer and no live event waits for it (they go out before sled
/// has the batch), so on a machine with few cores the writer, the runtime
/// and the answers should win the CPU whenever they want it. 10 steps give
/// this thread about a tenth of the share of a thread at the process's
/// priority when they contend, and all of an idle core: sled still
/// catches up, and when it cannot, the writer waits on the full [`QUEUE`]
/// instead of growing it. Measured (alternating runs of `tokend-bench
/// --only deletes`, 3 each): 8 clients 0.63–0.73× the floor's deletes/s
/// against 0.56–0.57× without it. The price, on a saturated machine:
/// what waits for sled waits longer — a reader that hurries it (a watch
/// catching up from before the hub's buffer, `ListTokenEvents`, a token or
/// list with `show_deleted`), and the writer once the queue is full.
const NICE: libc::c_int = 10;

/// Lowers this thread's priority by [`NICE`] steps, relative to what it
/// started with (a service run at `Nice=5` puts the applier at 15), capped
/// at 19. On Linux the nice value belongs to the thread (setpriority(2):
/// `PRIO_PROCESS` with 0 is the calling thread), so only this thread and
/// the threads it starts later change: sled's extra I/O workers, which
/// serve only sled's writes and flushes.
#[cfg(target_os = "linux")]
fn lower_priority() {
    // getpriority(2) may return -1 as a nice value: errno tells.
    // SAFETY: errno is this thread's own.
    unsafe { *libc::__errno_location() = 0 };
    // SAFETY: takes plain integers and touches no memory.
    let now = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let failed =
        |e: std::io::Error| tracing::warn!(error = %e, "the sled applier keeps its priority");
    let e = std::io::Error::last_os_error();
    if now == -1 && e.raw_os_error() != Some(0) {
        return failed(e);
    }
    // SAFETY: as above.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, (now + NICE).min(19)) } != 0 {
        failed(std::io::Error::last_os_error());
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// Has the applier apply what it holds now, for a reader that needs
/// sled to reach `head`: it would otherwise wait for the rest of a run.
pub(super) fn hurry(inner: &Inner, head: Revision) {
    inner.wanted.fetch_max(head, Ordering::AcqRel);
    if let Some(t) = inner.applier_thread.get() {
        t.unpark();
    }
}

/// `spare`: the segment to make ahead of its use after a checkpoint, in
/// the log's directory, whose segments a checkpoint deletes.
fn apply_loop(
    inner: &Inner,
    spare: &Spare,
    mut log: EventLog,
    busy: &AtomicBool,
    closing: &AtomicBool,
    rx: Receiver<Work>,
) {
    // What sled holds; once a batch failed to apply, sled lacks it for good
    // (until a restart replays the log): readers are told so instead of
    // waiting for it.
    let mut sled_head = *inner.applied.borrow();
    while let Ok(first) = rx.recv() {
        let mut run: Vec<Batch> = Vec::new();
        // Flushes and checkpoints that come in during a run follow it: a
        // checkpoint then covers a few batches past its segment, which the
        // replay at open takes (it replays every logged batch).
        let mut after = Vec::new();
        let mut take = |work| match work {
            Work::Batch(batch) => run.push(batch),
            other => after.push(other),
        };
        let gather = matches!(first, Work::Batch(_));
        take(first);
        if gather {
            // Parked, not waiting on the queue: the writer's sends do not
            // wake it. `hurry`, a queued checkpoint and `stop` do (unpark).
            let (length, ends_for_checkpoint) = run_rule();
            let deadline = Instant::now() + length;
            while inner.wanted.load(Ordering::Acquire) <= sled_head
                && !closing.load(Ordering::Acquire)
                && !(ends_for_checkpoint && busy.load(Ordering::Acquire))
                && let Some(left) = deadline.checked_duration_since(Instant::now())
            {
                std::thread::park_timeout(left);
            }
            while let Ok(work) = rx.try_recv() {
                take(work);
            }
        }
        if let Some(head) = run.last().map(|b| b.head)
            && sled_head != Revision::MAX
        {
            sled_head = match run_writes(run, inner, &mut log).apply(&inner.tree) {
                Ok(()) => head,
                Err(e) => {
                    poison(inner, "applying a batch to sled", &e);
                    Revision::MAX
                }
            };
            inner.applied.send_replace(sled_head);
        }
        for work in after {
            match work {
                Work::Flush => {
                    if let Err(e) = flush(inner) {
                        poison(inner, "flushing last-access times", &e);
                    }
                }
                Work::Checkpoint(closed_below) => {
                    if !skip_checkpoint()
                        && let Err(e) = checkpoint(inner, spare.dir(), closed_below)
                    {
                        // The segments stay: nothing is lost, open replays
                        // them. A retry could not be trusted (see poison).
                        poison(inner, "a checkpoint", &e);
                    }
                    // The writer's next rotation then takes it at once
                    // (`wal/spare.rs`). A failure is one to sync the log's
                    // directory, or to make a file in it: nothing there
                    // can be trusted any more.
                    if !inner.poisoned.load(Ordering::Acquire)
                        && let Err(e) = spare.prepare()
                    {
                        poison(inner, "making the next log segment", &e);
                    }
                    busy.store(false, Ordering::Release);
                }
                Work::Batch(_) => unreachable!("batches join the run"),
            }
        }
    }
}

/// The writes of a run of batches, in commit order, ended by their events'
/// keys (one, unless they are many; a batch's events stay in one key), the
/// removal of the keys past retention and the revision counter
/// (`EventLog::append`). The oldest revision readers may ask for moves
/// first, so that one who reads a removed key's revision is told
/// OUT_OF_RANGE, not handed a gap.
fn run_writes(run: Vec<Batch>, inner: &Inner, log: &mut EventLog) -> Writes {
    let head = run.last().map_or(0, |b| b.head);
    let mut writes = Writes::default();
    let mut events = Vec::with_capacity(run.len());
    for batch in run {
        writes.append(batch.writes);
        if !batch.events.is_empty() {
            events.push(batch.events);
        }
        drop(batch.retired);
    }
    if !events.is_empty() {
        let batches: Vec<Vec<&[u8]>> = events
            .iter()
            .map(|b| b.iter().map(|e| &e[..]).collect())
            .collect();
        let kept = log.append(&mut writes, &batches, head, inner.retention);
        inner.oldest.store(kept, Ordering::Release);
    }
    writes
}

/// How long a run gathers batches ([`APPLY_EVERY`]), and whether a queued
/// checkpoint ends it sooner (it does). Tests hold runs back for a day with
/// `sled-apply-hold`: `return` ends one only for a reader or the close (a
/// reader must not wait out the run), `return(checkpoint)` for a checkpoint
/// too (a checkpoint must not wait out the run either).
fn run_rule() -> (Duration, bool) {
    fail::fail_point!("sled-apply-hold", |v| {
        let day = Duration::from_secs(86_400);
        (day, v.as_deref() == Some("checkpoint"))
    });
    (APPLY_EVERY, true)
}

/// Poisons the store if the applier thread ends by a panic (sled panics on
/// some internal errors): otherwise readers would wait for it forever, and
/// no checkpoint would run again.
struct Dead<'a>(&'a Inner);

impl Drop for Dead<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            poison(self.0, "the applier thread", &"it panicked");
            self.0.applied.send_replace(Revision::MAX);
        }
    }
}

/// sled's flush, then the syncs it leaves out (`sled/files.rs`): not
/// durable across a power loss without them.
fn flush(inner: &Inner) -> Result<(), Error> {
    inner
        .db
        .flush()
        .map_err(|e| io_error("flushing to disk", e))?;
    inner
        .files
        .sync()
        .map_err(|e| io_error("syncing to disk", e))
}

/// Stops all writes until a restart: after a failed sync (of the log,
/// sled's file or the log's directory) the kernel may have dropped what it
/// could not write and report success next time, so nothing on disk may be
/// trusted, or deleted, until open has replayed the log again.
pub(super) fn poison(inner: &Inner, doing: &str, e: &dyn std::fmt::Display) {
    tracing::error!(error = %e, "{doing} failed; refusing writes until restart");
    let _ = inner.poison_cause.set(format!("{doing}: {e}"));
    inner.poisoned.store(true, Ordering::Release);
}

/// Flushes sled, then deletes the log segments below `closed_below`, whose
/// every batch the flush covered. Nothing is deleted once the store is
/// poisoned: a flush that failed anywhere (this one, or another on the same
/// file) may be reported as a success after it.
pub(super) fn checkpoint(inner: &Inner, dir: &Path, closed_below: u64) -> Result<(), Error> {
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
/// last commit left it. Returns how many logged changes it applied, and
/// the event keys sled holds after it.
pub(super) fn replay(
    tree: &sled::Tree,
    batches: Vec<Vec<Entry>>,
    retention: u64,
) -> Result<(usize, EventLog), Error> {
    let stored = layout::revision(tree)?;
    let mut log = EventLog::load(tree, stored)?;
    let mut head: Option<Revision> = None;
    let mut applied = 0;
    for entries in batches {
        for Entry { secret, event } in &entries {
            let e = layout::decode::<EventRecord>("event in the write-ahead log", event)?;
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
                secret: secret.clone(),
            };
            // A log of format 2 may keep a live token's secret without
            // naming it: the record sled holds has it. Applied at once, so
            // that the next entry reads what this one wrote.
            let kept = match (&change.secret, &change.subject) {
                (SecretOp::Set(h), _) => Some(*h),
                (SecretOp::Keep, Subject::Token(t)) => format::stored_secret(tree, &t.id)?,
                _ => None,
            };
            let mut writes = Writes::default();
            let accessed = layout::Accessed::Maybe;
            let encoded = record::encode_subject(&change.subject);
            layout::write_change(
                &mut writes,
                &change,
                encoded,
                kept.as_ref(),
                e.revision,
                accessed,
            );
            writes
                .apply(tree)
                .map_err(|e| io_error("replaying the write-ahead log", e))?;
            head = Some(e.revision);
            applied += 1;
        }
        let Some(last) = head.filter(|_| !entries.is_empty()) else {
            continue;
        };
        let events: Vec<&[u8]> = entries.iter().map(|e| &e.event[..]).collect();
        let mut writes = Writes::default();
        log.append(&mut writes, &[events], last, retention);
        writes
            .apply(tree)
            .map_err(|e| io_error("replaying the write-ahead log", e))?;
    }
    match head {
        Some(h) if h < stored => Err(corrupt(
            "write-ahead log",
            format!("it ends at revision {h}, before the store's {stored}"),
        )),
        _ => Ok((applied, log)),
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::time::Duration;

    use crate::hub::Hub;
    use crate::store::sled::{SledConfig, SledStore};

    /// The nice value of every live thread named `name` in this process.
    fn nice_of_threads(name: &str) -> Vec<i64> {
        let mut nice = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim_end() != name {
                continue;
            }
            nice.push(nice_in(&task.path().join("stat")));
        }
        nice
    }

    /// The nice value of the calling thread, which started the store's.
    fn own_nice() -> i64 {
        nice_in(std::path::Path::new("/proc/thread-self/stat"))
    }

    /// Field 19 of a task's stat file, after the parenthesised name.
    fn nice_in(stat: &std::path::Path) -> i64 {
        let stat = std::fs::read_to_string(stat).unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        // Fields from the third (state) on: nice is the 19th field.
        after_name.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn the_applier_runs_below_the_threads_callers_wait_for() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(
            SledConfig {
                data_dir: dir.path().to_path_buf(),
                retention: 1000,
                access_interval: Duration::from_secs(60),
                tombstone_shrink_after: Duration::from_secs(3600),
            },
            Hub::new(16),
        )
        .unwrap();
        // A thread takes its name, and the applier lowers its priority,
        // once each has started running: on a busy machine, a moment later.
        let below = |writer: i64| (writer + i64::from(super::NICE)).min(19);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // Other tests' stores may run beside this one: every writer and
        // every applier must be as expected.
        let own = own_nice();
        let (writer, applier) = loop {
            let writer = nice_of_threads("tokend-writer");
            let applier = nice_of_threads("tokend-apply");
            // The applier starts before the writer: wait for both.
            let lowered = !writer.is_empty()
                && !applier.is_empty()
                && applier.iter().all(|&a| a == below(own));
            if lowered || std::time::Instant::now() > deadline {
                break (writer, applier);
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // The writer, whose sync every answer waits for, keeps the
        // priority of the thread that opened the store (whatever nice the
        // tests run at).
        assert!(
            !writer.is_empty() && writer.iter().all(|&w| w == own),
            "{writer:?}, {own}"
        );
        assert!(
            applier.iter().all(|&a| a == below(own)),
            "{applier:?}, {own}"
        );
        drop(store);
    }
}
