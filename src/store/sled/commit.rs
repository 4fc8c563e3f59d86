//! The first half of the write path of the embedded store: planning, on
//! each caller's own task, into the next batch for the log.
//!
//! A caller plans its command against the working state (the state as it
//! will be once everything planned so far is durable, so that a command
//! sees every one planned before it), under the one lock it shares with the
//! writer thread, and encodes what the log and sled will hold into the
//! [`Planned`] batch. The writer (`sled/durable.rs`) takes the whole batch
//! when its last sync returned, makes it durable with one sync, and only
//! then publishes and answers it. Whatever is planned meanwhile goes into
//! the next batch: on two cores, the planning runs while the disk syncs,
//! rather than between syncs. Planning where the request already runs is
//! one thread hand-off fewer per commit than a planner thread of its own
//! (whose sleeps and wake-ups took about a tenth of the server's CPU at one
//! client, in a profile of `scripts/profile.sh 1`); for the same reason a
//! lone request on a calm store commits its batch itself, at once, on its
//! own thread (`Handoff::commit_here`), rather than the writer's thread.
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
use std::time::{Duration, SystemTime};

use tokio::sync::{Semaphore, oneshot};

use super::durable;
use super::events::EventLog;
use super::layout::{self, Accessed, Writes};
use super::wal::{self, Wal};
use super::{Inner, Job, apply};
use crate::command::{self, Ctx, Plan};
use crate::domain::{Event, Subject, TokenId};
use crate::error::Error;
use crate::state::{Change, SecretOp, State};
use crate::store::Applied;
use crate::store::record::{self, TimeRecord};

/// Most commands one batch takes: bounds the latency a batch adds, and how
/// far planning runs ahead of the log.
pub(super) const MAX_BATCH: usize = 1024;

/// Commands planned in a row while no commit ran before a caller commits
/// its own batch (`Handoff::commit_here`).
const CALM: u8 = 4;

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
    /// Held by whoever commits a batch: the writer thread, or a caller
    /// committing its own (`commit_here`). Batches are taken under it, so
    /// they reach the log one at a time, in the order they were planned.
    /// Emptied as the writer thread ends.
    writer: Mutex<Option<durable::Writer>>,
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
    /// Commands planned in a row while no commit ran: a caller commits its
    /// own only after [`CALM`] of them (`commit_here`).
    calm: u8,
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
        let apply = matches!(job, Job::Apply { .. });
        if apply {
            match self.room.acquire().await {
                // Given back by the writer, with the batch this job joins.
                Ok(permit) => permit.forget(),
                Err(_) => return false,
            }
        }
        let Some(turn) = self.plan_now(inner, job) else {
            return false;
        };
        if turn == Turn::Joined {
            return true;
        }
        // The first command planned while the writer sleeps owes it the
        // wake, even if the caller goes meanwhile (a cancelled request): no
        // other caller would wake the writer for what is planned.
        let wake = Wake(&self.ready);
        if turn == Turn::Calm {
            // The last commands found no company: the caller commits its
            // batch itself, at once, without two thread hand-offs (waking
            // the writer, and the writer waking the caller with its
            // answer): at one client, a sixth of each delete's time and a
            // quarter of its CPU in the floor's interleaved runs.
            if apply && self.commit_here(inner) {
                std::mem::forget(wake);
            }
        } else {
            // The caller lets the runtime run every other task ready (and
            // poll the sockets once), so that the requests that arrived
            // together join this batch, one sync for all, then wakes the
            // writer. Not on a calm store: the yield wakes the runtime's
            // other thread (tokio wakes a parked one to share the queue a
            // yielded task joins), only for it to find nothing and sleep
            // again (at one client, per delete, 1.9 futex calls and 2.3
            // epoll waits with it against 0.05 and 1.25 without, and 7%
            // more CPU).
            tokio::task::yield_now().await;
        }
        true
    }

    /// Commits the next batch on the caller's thread, and true, if it holds
    /// one command (the caller's), no commit is running, and none ran while
    /// the last [`CALM`] commands were planned. It blocks the caller's
    /// runtime thread for one sync, as the writer thread would block. Under
    /// concurrent load the writer thread commits instead: its wake-up lets
    /// more commands join each batch (at 8 clients, committing every lone
    /// batch here cost a tenth of the deletes per second).
    fn commit_here(&self, inner: &Inner) -> bool {
        {
            let shared = self.lock();
            if shared.calm < CALM || shared.next.owed.len() != 1 {
                return false;
            }
        }
        let Ok(mut writer) = self.writer.try_lock() else {
            return false;
        };
        let Some(writer) = writer.as_mut() else {
            return false;
        };
        let Some((batch, after)) = self.take_batch(true) else {
            return false;
        };
        let committed = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let had_log = writer.log_holds_records();
            let close = writer.commit(batch, after, true);
            debug_assert!(close.is_none(), "a close is the writer's");
            writer.maybe_checkpoint();
            had_log
        }));
        let wake = {
            let mut shared = self.lock();
            // What was planned meanwhile went unannounced (the writer was
            // not waiting for it): the writer commits it.
            let planned = !shared.next.is_empty();
            shared.writer_waiting = !planned;
            // The writer sleeps without a deadline while the log is empty:
            // now that it is not, it must wake to checkpoint it in time.
            planned || matches!(committed, Ok(false))
        };
        if wake {
            self.ready.notify_one();
        }
        if committed.is_err() {
            apply::poison(inner, "a commit", &"it panicked");
        }
        true
    }

    /// Plans `job` under the lock; what the caller must do next (`None` if
    /// refused).
    fn plan_now(&self, inner: &Inner, job: Job) -> Option<Turn> {
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
        let first = std::mem::take(&mut shared.writer_waiting);
        shared.calm = if first {
            shared.calm.saturating_add(1)
        } else {
            0
        };
        Some(match first {
            false => Turn::Joined,
            true if shared.calm >= CALM => Turn::Calm,
            true => Turn::First,
        })
    }

    /// Waits until the next batch has something in it, `idle` at most
    /// (when given), or until woken; false once the store closed, or its
    /// handle is gone, and everything planned was taken.
    pub(super) fn wait(&self, idle: Option<Duration>) -> bool {
        let mut shared = self.lock();
        if shared.next.is_empty() {
            if !shared.open {
                return false;
            }
            shared.writer_waiting = true;
            shared = match idle {
                None => self
                    .ready
                    .wait(shared)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(idle) => {
                    self.ready
                        .wait_timeout(shared, idle)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
            shared.writer_waiting = false;
        }
        true
    }

    /// Whether the writer sleeps with nothing to commit and nothing to
    /// checkpoint, so that a command planned now is planned while it sleeps
    /// (for tests, which must not guess it from a pause).
    #[cfg(test)]
    pub(super) fn settled(&self) -> bool {
        let waiting = self.lock().writer_waiting;
        waiting
            && self
                .writer
                .try_lock()
                .is_ok_and(|w| w.as_ref().is_some_and(|w| !w.log_holds_records()))
    }

    /// The writer's lock, for the writer thread: commits wait for it.
    pub(super) fn writer(&self) -> MutexGuard<'_, Option<durable::Writer>> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next batch, if it has anything, with the state it leaves when it
    /// changes anything (to publish). Called with the writer's lock held.
    /// For a caller committing its own (`here`), none holding a close (the
    /// writer thread's to end with).
    pub(super) fn take_batch(&self, here: bool) -> Option<(Planned, Option<Arc<State>>)> {
        let mut shared = self.lock();
        if shared.next.is_empty() || (here && shared.next.close.is_some()) {
            return None;
        }
        let batch = std::mem::take(&mut shared.next);
        // A cheap clone (shared index nodes): the next change planned
        // copies only the nodes on its path.
        let after = (!batch.events.is_empty()).then(|| Arc::new(shared.work.clone()));
        drop(shared);
        self.room.add_permits(batch.owed.len());
        Some((batch, after))
    }

    /// Called as the writer thread ends, however it ends: no caller may
    /// wait for room that will never come, and what was planned that the
    /// writer never took is refused (a writer that ends otherwise than by a
    /// close has poisoned the store).
    pub(super) fn writer_gone(&self, inner: &Inner) {
        // Its `Inner` goes with it: a close waits for that.
        self.writer().take();
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

/// What a caller does once its command is planned.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// The writer is awake, or an earlier caller wakes it: nothing.
    Joined,
    /// The first since the writer slept: it lets others join, then wakes
    /// the writer.
    First,
    /// The first, on a calm store: it commits the batch itself at once
    /// (`commit_here`), or wakes the writer if it cannot.
    Calm,
}

/// Wakes the writer when dropped, however the caller's task ends.
struct Wake<'a>(&'a Condvar);

impl Drop for Wake<'_> {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

/// Starts the writer (which starts the applier) on `wal`, and its thread,
/// and returns the door callers plan through, and the thread's handle.
pub(super) fn start_writer(
    inner: Arc<Inner>,
    wal: Wal,
    events: EventLog,
) -> std::io::Result<(Arc<Handoff>, JoinHandle<()>)> {
    let writer = durable::Writer::open(inner.clone(), wal, events)?;
    let handoff = Arc::new(Handoff {
        shared: Mutex::new(Shared {
            next: Planned::default(),
            work: State::clone(&inner.state.read().expect("state lock")),
            open: true,
            writer_gone: false,
            writer_waiting: false,
            calm: 0,
        }),
        ready: Condvar::new(),
        room: Semaphore::new(MAX_BATCH),
        writer: Mutex::new(Some(writer)),
    });
    let thread = durable::spawn(inner, handoff.clone())?;
    Ok((handoff, thread))
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
    let (encoded, record) = record::encode_event(&event);
    wal::push_entry(&mut next.payload, &change.secret, &encoded);
    // After `with_kept_secret`, only Set leaves a token live.
    let secret = match &change.secret {
        SecretOp::Set(h) => Some(h),
        SecretOp::Keep | SecretOp::Erase => None,
    };
    // Most tokens are deleted unused: their deletion skips a sled remove
    // (a third of a deletion's sled operations). Every time `l/` holds, or
    // a batch planned before this one writes, is in the access log until
    // this deletion commits (`forget`), and none is written after it
    // (`record_access` writes live tokens only).
    // Only a deletion's write reads it: other changes skip the lookup.
    let accessed = match &change.subject {
        Subject::Token(t) if t.is_deleted() && inner.access.get(&t.id).is_none() => Accessed::Never,
        _ => Accessed::Maybe,
    };
    layout::write_change(
        &mut next.writes,
        &change,
        record,
        secret,
        event.revision,
        accessed,
    );
    if let (SecretOp::Erase, Subject::Token(t)) = (&change.secret, &change.subject) {
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
