//! The first half of the write path of the embedded store: the planner
//! thread, which turns queued commands into the next batch for the log.
//!
//! A commit takes two threads, so that the work around a log sync overlaps
//! with it. The planner plans each command against its working state (the
//! state as it will be once everything planned so far is durable, so that
//! a command sees every one queued before it), and encodes what the log
//! and sled will hold, into a [`Planned`] batch. The writer thread
//! (`sled/durable.rs`) takes the whole batch when its last sync returned,
//! makes it durable with one sync, and only then publishes and answers it.
//! Whatever arrives meanwhile is planned into the next batch: on two cores,
//! the planning runs while the disk syncs, rather than between syncs.
//!
//! One planner means revisions come out gap-free in command order without
//! locks beyond the hand-off. It must never answer a command itself (its
//! answer rests on batches not yet durable, which may still fail: the
//! writer answers it with its batch, refusals included), never publish its
//! working state, and never write to the log or sled.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};

use super::layout::{self, EventLog, Writes};
use super::wal::{self, Wal};
use super::{Inner, Job};
use super::{apply, durable};
use crate::command::{self, Ctx, Plan};
use crate::domain::{Event, Subject, TokenId};
use crate::error::Error;
use crate::state::{Change, SecretOp, State};
use crate::store::Applied;
use crate::store::record::{self, EventRecord, TimeRecord};

/// Most commands one batch takes: bounds the latency a batch adds, and how
/// far the planner runs ahead of the log.
pub(super) const MAX_BATCH: usize = 1024;

/// A reply owed to a caller once its batch is durable.
pub(super) type Owed = (
    oneshot::Sender<Result<Applied, Error>>,
    Result<Applied, Error>,
);

/// Commands planned since the writer last took a batch: everything the
/// writer needs to make them durable, publish and answer them.
#[derive(Default)]
pub(super) struct Planned {
    /// The log record's payload: one entry per change (`wal.rs`).
    pub(super) payload: Vec<u8>,
    /// Each change's event, encoded as sled's event log keeps it.
    pub(super) encoded: Vec<Vec<u8>>,
    /// The same events, for the hub; their revisions are consecutive.
    pub(super) events: Vec<Arc<Event>>,
    /// What sled gets, but for the event log's own keys.
    pub(super) writes: Writes,
    /// True once `writes` holds last-access times (which skip the log).
    pub(super) access: bool,
    /// Tokens whose secret this batch erases: their pending access times
    /// are forgotten once it is durable.
    pub(super) erased: Vec<TokenId>,
    pub(super) owed: Vec<Owed>,
    /// The commit spans of the callers whose commands changed something.
    pub(super) committing: Vec<tracing::Span>,
    /// Set by a close: the last batch.
    pub(super) close: Option<oneshot::Sender<()>>,
}

impl Planned {
    fn is_empty(&self) -> bool {
        self.owed.is_empty() && !self.access && self.close.is_none()
    }
}

/// What the writer takes from the planner. Made and moved once per batch:
/// its size is one move, a box would be an allocation.
#[expect(clippy::large_enum_variant, reason = "moved once per batch")]
pub(super) enum Next {
    /// A batch, with the state it leaves when it changes anything.
    Batch(Planned, Option<Arc<State>>),
    /// Nothing came within the time the writer would wait.
    Idle,
    /// The planner is gone and everything it planned was taken.
    Done,
}

/// What the planner and the writer share.
pub(super) struct Handoff {
    shared: Mutex<Shared>,
    /// Signalled when a batch has something in it, or the planner is gone.
    ready: Condvar,
    /// Signalled when the writer took a batch, or is gone.
    taken: Condvar,
}

struct Shared {
    next: Planned,
    /// The planner's working state: the published one plus `next` and
    /// every batch the writer has taken but not yet published (and, once a
    /// batch failed, that batch too: never published, as the store refuses
    /// every write from then on).
    work: State,
    planner_gone: bool,
    writer_gone: bool,
}

impl Handoff {
    /// A panic while planning is caught (the store is poisoned before the
    /// lock is released), so a poisoned lock holds nothing half-done that
    /// the store would still write.
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next batch once there is one, with the state it leaves when it
    /// changes anything (to publish); [`Next::Idle`] if none came within
    /// `idle` (when given).
    pub(super) fn take(&self, idle: Option<Duration>) -> Next {
        let deadline = idle.map(|d| Instant::now() + d);
        let mut shared = self.lock();
        while shared.next.is_empty() {
            if shared.planner_gone {
                return Next::Done;
            }
            shared = match deadline {
                None => self
                    .ready
                    .wait(shared)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(at) => {
                    let Some(left) = at.checked_duration_since(Instant::now()) else {
                        return Next::Idle;
                    };
                    let (shared, _) = self
                        .ready
                        .wait_timeout(shared, left)
                        .unwrap_or_else(PoisonError::into_inner);
                    shared
                }
            };
        }
        let batch = std::mem::take(&mut shared.next);
        // A cheap clone (shared index nodes): the planner's next change
        // copies only the nodes on its path.
        let after = (!batch.events.is_empty()).then(|| Arc::new(shared.work.clone()));
        drop(shared);
        self.taken.notify_one();
        Next::Batch(batch, after)
    }

    /// Called as the writer thread ends, however it ends: the planner must
    /// not wait for room that will never come, and what it planned that the
    /// writer never took is refused (a writer that ends otherwise than by a
    /// close has poisoned the store).
    pub(super) fn writer_gone(&self, inner: &Inner) {
        let stranded = {
            let mut shared = self.lock();
            shared.writer_gone = true;
            std::mem::take(&mut shared.next)
        };
        self.taken.notify_one();
        for (reply, _) in stranded.owed {
            let _ = reply.send(Err(inner.refusal("committing")));
        }
    }

    /// Called as the planner thread ends, however it ends: the writer takes
    /// what is left, then ends.
    fn planner_gone(&self) {
        self.lock().planner_gone = true;
        self.ready.notify_one();
    }
}

/// Starts the planner thread and the writer thread behind it (which starts
/// the applier), on `wal`. The handle is the planner's, which joins the
/// writer before it ends.
pub(super) fn start_writer(
    inner: Arc<Inner>,
    wal: Wal,
    events: EventLog,
    rx: mpsc::Receiver<Job>,
) -> std::io::Result<JoinHandle<()>> {
    let handoff = Arc::new(Handoff {
        shared: Mutex::new(Shared {
            next: Planned::default(),
            work: State::clone(&inner.state.read().expect("state lock")),
            planner_gone: false,
            writer_gone: false,
        }),
        ready: Condvar::new(),
        taken: Condvar::new(),
    });
    let writer = durable::start(inner.clone(), wal, events, handoff.clone())?;
    std::thread::Builder::new()
        .name("tokend-plan".into())
        .spawn(move || {
            {
                let _gone = PlannerGone(&handoff);
                planner_loop(&inner, &handoff, rx);
            }
            let _ = writer.join();
        })
}

struct PlannerGone<'a>(&'a Handoff);

impl Drop for PlannerGone<'_> {
    fn drop(&mut self) {
        self.0.planner_gone();
    }
}

fn planner_loop(inner: &Inner, handoff: &Handoff, mut rx: mpsc::Receiver<Job>) {
    let mut jobs = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        jobs.push(first);
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // What arrived together is planned under one hold of the lock: the
        // writer, waiting to take, gets it between holds.
        let mut shared = handoff.lock();
        while shared.next.owed.len() >= MAX_BATCH && !shared.writer_gone {
            shared = handoff
                .taken
                .wait(shared)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if shared.writer_gone {
            // Nothing would take them; their callers see the store stopped.
            return;
        }
        let mut closing = false;
        for job in jobs.drain(..) {
            closing |= matches!(job, Job::Close(_));
            let planned =
                std::panic::catch_unwind(AssertUnwindSafe(|| plan(inner, &mut shared, job)));
            if planned.is_err() {
                // Before the lock goes: the writer must not take a batch
                // half planned without seeing the store poisoned.
                apply::poison(inner, "planning a command", &"it panicked");
            }
        }
        drop(shared);
        handoff.ready.notify_one();
        if closing {
            return;
        }
    }
}

/// Plans one job into the next batch, at the current time (a job may have
/// waited for room behind a slow sync).
fn plan(inner: &Inner, shared: &mut Shared, job: Job) {
    let Shared { next, work, .. } = shared;
    let now = SystemTime::now();
    match job {
        // Once poisoned, refused; answered in order, like any other.
        Job::Apply { reply, .. } if inner.poisoned.load(Ordering::Acquire) => {
            next.owed.push((reply, Err(inner.refusal("committing"))));
        }
        Job::Apply {
            cmd,
            actor,
            reply,
            span,
        } => {
            let answer = match command::plan(work, &cmd, &Ctx { now, actor: &actor }) {
                Err(e) => Err(e),
                Ok(Plan::Unchanged(subject)) => Ok(Applied::unchanged(subject)),
                Ok(Plan::Change(planned, secret)) => {
                    let mut subjects = Vec::with_capacity(planned.len());
                    for change in planned {
                        let revision = work.revision() + 1;
                        work.apply(&change, revision);
                        let event = Arc::new(change.event(revision, now, actor.clone()));
                        subjects.push(change.subject.clone());
                        record_change(next, with_kept_secret(change, work), event);
                    }
                    next.committing.push(span);
                    Ok(Applied::committed(work.revision(), subjects, secret))
                }
            };
            next.owed.push((reply, answer));
        }
        Job::PersistAccess => record_access(inner, next, work, now, false),
        Job::Close(done) => {
            record_access(inner, next, work, now, true);
            next.close = Some(done);
        }
    }
}

/// Adds one planned change and its event to what the log and sled get.
fn record_change(next: &mut Planned, change: Change, event: Arc<Event>) {
    let encoded = record::encode::<EventRecord>(&event);
    wal::push_entry(&mut next.payload, &change.secret, &encoded);
    // After `with_kept_secret`, only Set leaves a token live.
    let secret = match &change.secret {
        SecretOp::Set(h) => Some(h),
        SecretOp::Keep | SecretOp::Erase(_) => None,
    };
    layout::write_change(&mut next.writes, &change, secret, event.revision);
    if let (SecretOp::Erase(_), Subject::Token(t)) = (&change.secret, &change.subject) {
        next.erased.push(t.id.clone());
    }
    next.encoded.push(encoded);
    next.events.push(event);
}

/// Adds the last-access times due (all of them at a close) of tokens still
/// live in the working state: a deletion planned before must not have its
/// token's record written back. Once poisoned, nothing more is written, not
/// even these: sled may hold part of the failed batch, and a write now
/// could make it durable under a revision counter that no longer matches.
fn record_access(inner: &Inner, next: &mut Planned, work: &State, now: SystemTime, all: bool) {
    if inner.poisoned.load(Ordering::Acquire) {
        return;
    }
    for (id, at) in inner.access.take_due(now, all) {
        if work.secret_of(&id).is_some() {
            next.writes
                .insert(layout::access_key(&id), record::encode::<TimeRecord>(&at));
            next.access = true;
        }
    }
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
