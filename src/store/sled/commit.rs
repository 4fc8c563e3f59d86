//! The first half of the write path of the embedded store: planning, on
//! each caller's own task, into the next batch for the log.
//!
//! A caller plans its command against the working state (the state as it
//! will be once everything planned so far is durable, so that a command
//! sees every one planned before it), under the one lock it shares with the
//! writer thread, and encodes what the log and sled will hold into the
//! [`Planned`] batch. The writer thread (`sled/durable.rs`) takes the whole
//! batch when its last sync returned, makes it durable with one sync, and
//! only then publishes and answers it. Whatever is planned meanwhile goes
//! into the next batch: on two cores, the planning runs while the disk
//! syncs, rather than between syncs. Planning where the request already
//! runs is one thread hand-off fewer per commit than a planner thread of
//! its own (whose sleeps and wake-ups took about a tenth of the server's
//! CPU at one client, in a profile of `scripts/profile.sh 1`).
//!
//! The lock orders the commands: revisions come out gap-free in the order
//! they were planned. Planning must never answer a command itself (its
//! answer rests on batches not yet durable, which may still fail: the
//! writer answers it with its batch, refusals included), never publish its
//! working state, never write to the log or sled, and never hold the lock
//! across an `.await`.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Semaphore, oneshot};

use super::durable;
use super::layout::{self, Accessed, EventLog, Writes};
use super::wal::{self, Wal};
use super::{Inner, Job, apply};
use crate::command::{self, Ctx, Plan};
use crate::domain::{Event, Subject, TokenId};
use crate::error::Error;
use crate::state::{Change, SecretOp, State};
use crate::store::Applied;
use crate::store::record::{self, EventRecord, TimeRecord};

/// Most commands one batch takes: bounds the latency a batch adds, and how
/// far planning runs ahead of the log.
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

/// What the writer takes from the planning callers. Made and moved once
/// per batch: its size is one move, a box would be an allocation.
#[expect(clippy::large_enum_variant, reason = "moved once per batch")]
pub(super) enum Next {
    /// A batch, with the state it leaves when it changes anything.
    Batch(Planned, Option<Arc<State>>),
    /// Nothing came within the time the writer would wait.
    Idle,
    /// The store closed, or its handle is gone, and everything planned was
    /// taken.
    Done,
}

/// What the planning callers and the writer share: the store's front door.
pub(super) struct Handoff {
    shared: Mutex<Shared>,
    /// Signalled when a batch has something in it while the writer waits,
    /// or when the door closes.
    ready: Condvar,
    /// One permit per command the next batch may still take: a caller
    /// waits here (in order, without holding a thread) while a slow sync
    /// holds a full batch back. The writer gives the permits back as it
    /// takes a batch; closed once the writer is gone.
    room: Semaphore,
}

struct Shared {
    next: Planned,
    /// The working state: the published one plus `next` and every batch
    /// the writer has taken but not yet published (and, once a batch
    /// failed, that batch too: never published, as the store refuses every
    /// write from then on).
    work: State,
    /// False once a close was planned or the store's handle is gone:
    /// nothing more is planned.
    open: bool,
    writer_gone: bool,
    /// The writer sleeps on `ready`: the first caller to plan since wakes
    /// it, and only that one (a wake is a system call). Cleared by that
    /// caller, under the lock.
    writer_waiting: bool,
}

impl Handoff {
    /// A panic while planning is caught (the store is poisoned before the
    /// lock is released), so a poisoned lock holds nothing half-done that
    /// the store would still write.
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Plans `job` into the next batch, on the caller's task, once the
    /// batch has room for it. False if the store plans nothing more (it
    /// closed, or its writer is gone): the job is dropped, and with it its
    /// reply, which its caller reads as the store shutting down.
    pub(super) async fn submit(&self, inner: &Inner, job: Job) -> bool {
        if let Job::Apply { .. } = job {
            match self.room.acquire().await {
                // Given back by the writer, with the batch this job joins.
                Ok(permit) => permit.forget(),
                Err(_) => return false,
            }
        }
        let Some(wake) = self.plan_now(inner, job) else {
            return false;
        };
        if wake {
            // The first command planned while the writer sleeps wakes it,
            // but only after the runtime has run every other task ready
            // (and polled the sockets once): the requests that arrived
            // together join this batch, one sync for all, rather than
            // waking the writer for a batch of one. Alone, it costs one
            // turn of the scheduler. The wake is owed even if the caller
            // goes meanwhile (a cancelled request): no other caller would
            // wake the writer for what is planned.
            let _wake = Wake(&self.ready);
            tokio::task::yield_now().await;
        }
        true
    }

    /// Plans `job` under the lock; whether the caller must wake the writer
    /// (`None` if refused).
    fn plan_now(&self, inner: &Inner, job: Job) -> Option<bool> {
        let mut shared = self.lock();
        if !shared.open || shared.writer_gone {
            return None;
        }
        let closing = matches!(job, Job::Close(_));
        let has_room = matches!(job, Job::Apply { .. });
        let planned = std::panic::catch_unwind(AssertUnwindSafe(|| plan(inner, &mut shared, job)));
        if planned.is_err() {
            // Before the lock goes: the writer must not take a batch half
            // planned without seeing the store poisoned.
            apply::poison(inner, "planning a command", &"it panicked");
            // It panicked before its reply joined the batch (that is the
            // plan's last step): the writer will not give its room back.
            if has_room {
                self.room.add_permits(1);
            }
        }
        shared.open &= !closing;
        Some(std::mem::take(&mut shared.writer_waiting))
    }

    /// The next batch once there is one, with the state it leaves when it
    /// changes anything (to publish); [`Next::Idle`] if none came within
    /// `idle` (when given).
    pub(super) fn take(&self, idle: Option<Duration>) -> Next {
        let deadline = idle.map(|d| Instant::now() + d);
        let mut shared = self.lock();
        while shared.next.is_empty() {
            if !shared.open {
                return Next::Done;
            }
            shared.writer_waiting = true;
            shared = match deadline {
                None => self
                    .ready
                    .wait(shared)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(at) => {
                    let Some(left) = at.checked_duration_since(Instant::now()) else {
                        shared.writer_waiting = false;
                        return Next::Idle;
                    };
                    let (shared, _) = self
                        .ready
                        .wait_timeout(shared, left)
                        .unwrap_or_else(PoisonError::into_inner);
                    shared
                }
            };
            shared.writer_waiting = false;
        }
        let batch = std::mem::take(&mut shared.next);
        // A cheap clone (shared index nodes): the next change planned
        // copies only the nodes on its path.
        let after = (!batch.events.is_empty()).then(|| Arc::new(shared.work.clone()));
        drop(shared);
        self.room.add_permits(batch.owed.len());
        Next::Batch(batch, after)
    }

    /// Called as the writer thread ends, however it ends: no caller may
    /// wait for room that will never come, and what was planned that the
    /// writer never took is refused (a writer that ends otherwise than by a
    /// close has poisoned the store).
    pub(super) fn writer_gone(&self, inner: &Inner) {
        let stranded = {
            let mut shared = self.lock();
            shared.writer_gone = true;
            std::mem::take(&mut shared.next)
        };
        self.room.close();
        for (reply, _) in stranded.owed {
            let _ = reply.send(Err(inner.refusal("committing")));
        }
    }

    /// Called when the store's handle goes without a close: nothing more is
    /// planned, and the writer takes what is left, then ends.
    pub(super) fn shut(&self) {
        self.lock().open = false;
        self.ready.notify_one();
    }
}

/// Wakes the writer when dropped, however the caller's task ends.
struct Wake<'a>(&'a Condvar);

impl Drop for Wake<'_> {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

/// Starts the writer thread (which starts the applier) on `wal`, and
/// returns the door callers plan through, and the writer's handle.
pub(super) fn start_writer(
    inner: Arc<Inner>,
    wal: Wal,
    events: EventLog,
) -> std::io::Result<(Arc<Handoff>, JoinHandle<()>)> {
    let handoff = Arc::new(Handoff {
        shared: Mutex::new(Shared {
            next: Planned::default(),
            work: State::clone(&inner.state.read().expect("state lock")),
            open: true,
            writer_gone: false,
            writer_waiting: false,
        }),
        ready: Condvar::new(),
        room: Semaphore::new(MAX_BATCH),
    });
    let writer = durable::start(inner, wal, events, handoff.clone())?;
    Ok((handoff, writer))
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
                        let change = with_kept_secret(change, work);
                        record_change(inner, next, change, event);
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
fn record_change(inner: &Inner, next: &mut Planned, change: Change, event: Arc<Event>) {
    let encoded = record::encode::<EventRecord>(&event);
    wal::push_entry(&mut next.payload, &change.secret, &encoded);
    // After `with_kept_secret`, only Set leaves a token live.
    let secret = match &change.secret {
        SecretOp::Set(h) => Some(h),
        SecretOp::Keep | SecretOp::Erase(_) => None,
    };
    // Most tokens are deleted unused: their deletion skips a sled remove
    // (a third of a deletion's sled operations). Every time `l/` holds, or
    // a batch planned before this one writes, is in the access log until
    // this deletion commits (`forget`), and none is written after it
    // (`record_access` writes live tokens only).
    let accessed = match &change.subject {
        Subject::Token(t) if inner.access.get(&t.id).is_none() => Accessed::Never,
        _ => Accessed::Maybe,
    };
    layout::write_change(&mut next.writes, &change, secret, event.revision, accessed);
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

#[cfg(test)]
mod tests;
