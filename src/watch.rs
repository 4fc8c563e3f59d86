//! Watch streams: every committed change, delivered in revision order with no
//! gaps and no duplicates, to any number of subscribers.
//!
//! Revisions increase but need not be consecutive (see
//! [`crate::domain::Revision`]), so "no gap" is judged by each
//! [`Published`] event naming the revision of the one before it, never by
//! `revision == next`.
//!
//! Owns one follower per stream: a stream of notices that the gRPC response polls itself, with
//! no task and no queue of its own. A follower remembers `next`, the next
//! revision it owes its client. It subscribes to the hub *before* it reads the log, reads the log
//! from `next` up to the durable head, then follows the hub, skipping what it
//! already sent. Whenever the hub lags or shows a gap, it goes back to the
//! log. The same code serves a new stream, a `start_revision` replay, a slow
//! subscriber and a resume after restart.
//!
//! Memory per stream is bounded: a client that stops reading stops being
//! polled, the hub's ring is shared, and what a client misses while slow it
//! gets from the log, or ends with `OUT_OF_RANGE` once it falls behind
//! retention. This module must never buffer without bound, and never deliver
//! an event that is not durable (the hub only carries published events and
//! the log is read up to the durable head).

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_stream::Stream;

use crate::caller::{Caller, revokes};
use crate::domain::{AccountId, Event, EventKind, Revision, Token};
use crate::error::Error;
use crate::hub::{Hub, Published, Subscription};
use crate::store::Store;
use crate::telemetry;

/// What a stream delivers.
#[derive(Debug, Clone)]
pub enum Notice {
    /// A committed change.
    Change(Arc<Event>),
    /// `send_initial`: a live token as of the snapshot revision.
    Snapshot {
        revision: Revision,
        token: Arc<Token>,
    },
    /// `send_initial`: the snapshot is complete as of this revision.
    Synced(Revision),
    /// Idle stream: everything up to this revision has been delivered.
    Progress(Revision),
}

/// Where a stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// With the next change committed after the stream opens.
    Now,
    /// With the change at this revision (replayed from the log).
    At(Revision),
    /// With a snapshot of every live token, then `Synced`, then live changes.
    Snapshot,
}

/// Which changes a stream carries.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `None`: every account.
    pub account: Option<AccountId>,
    /// Empty: every kind.
    pub kinds: HashSet<EventKind>,
    /// The caller whose credential opened the stream: the stream ends with
    /// `UNAUTHENTICATED` right after a change that revokes it.
    pub credential: Option<Caller>,
}

impl Filter {
    fn wants_token(&self, token: &Token) -> bool {
        self.account.as_ref().is_none_or(|a| *a == token.account_id)
    }

    fn wants(&self, event: &Event) -> bool {
        event.token().is_some_and(|t| self.wants_token(t))
            && (self.kinds.is_empty() || self.kinds.contains(&event.kind))
    }
}

#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Open streams allowed at once; more get `RESOURCE_EXHAUSTED`.
    pub max_watchers: usize,
    /// A `Progress` notice is sent after this long without any other.
    pub progress_interval: Duration,
}

/// Opens watch streams and counts them.
#[derive(Clone)]
pub struct Watchers {
    store: Arc<dyn Store>,
    hub: Hub,
    config: WatchConfig,
    open: Arc<AtomicUsize>,
}

/// Log reads happen in pages of this many events, so that catching up a far
/// behind stream never holds more than one page in memory.
const LOG_PAGE: usize = 256;

impl Watchers {
    /// Streams end with `UNAVAILABLE` once `hub` closes (the server
    /// shutting down), and none opens after.
    pub fn new(store: Arc<dyn Store>, hub: Hub, config: WatchConfig) -> Watchers {
        Watchers {
            store,
            hub,
            config,
            open: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Streams open right now (the tests' view of the cap's count).
    #[cfg(test)]
    pub fn open_count(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Opens a stream. Fails at once (rather than as the stream's first
    /// message) when the cap is reached or `start` is already compacted.
    pub async fn open(&self, filter: Filter, start: Start) -> Result<WatchStream, Error> {
        if self.hub.is_closing() {
            return Err(Error::shutting_down());
        }
        // Subscribe before reading anything: every event committed from now
        // on is in `live`, every earlier one is in the log or the snapshot.
        let live = self.hub.subscribe();
        // One state for every decision below: the revision the stream starts
        // from, where history ends, and whether its credential still holds
        // (it may have been revoked since the interceptor looked).
        let state = self.store.state();
        if let Some(caller) = &filter.credential
            && !caller.still_valid(&state)
        {
            return Err(Error::Unauthenticated);
        }
        let next = match start {
            Start::Now => state.revision() + 1,
            // At or before the head, the log has to hold it; after it, it
            // is to come.
            Start::At(rev) if rev <= state.revision() => {
                let oldest = self.store.oldest_revision(state.revision()).await?;
                if rev < oldest {
                    return Err(Error::Compacted {
                        requested: rev,
                        oldest,
                    });
                }
                rev
            }
            Start::At(rev) => rev,
            Start::Snapshot => 0, // set by the follower from the snapshot it takes
        };
        // Counted (`tokend_watch_streams_open`) once it is sure to open, and
        // subscribed: a change made after the count shows is one the stream
        // delivers (from `live`, or in the snapshot it takes).
        let slot = Slot::take(&self.open, self.config.max_watchers)?;
        let follower = Follower {
            store: self.store.clone(),
            filter,
            next,
            history_until: state.revision(),
            live,
            progress_interval: self.config.progress_interval,
            delivery: metrics::histogram!(telemetry::WATCH_DELIVERY),
        };
        Ok(WatchStream {
            notices: Box::pin(follower.notices(start == Start::Snapshot)),
            done: false,
            _slot: slot,
        })
    }
}

/// One place in the watcher count; given back when the stream is dropped
/// (client gone, stream ended or server shutting down).
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>, max: usize) -> Result<Slot, Error> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .map_err(|_| Error::TooManyWatchers { limit: max })?;
        metrics::gauge!(telemetry::WATCH_STREAMS_OPEN).increment(1.0);
        Ok(Slot(open.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!(telemetry::WATCH_STREAMS_OPEN).decrement(1.0);
    }
}

/// The client's end of a watch: the follower's notices, ended after the
/// first error. The follower ends with `UNAVAILABLE` the moment the hub
/// closes (the server shutting down), even while it waits for an event or
/// for a log read: the close wakes it through the hub, so no stream polls
/// a shutdown signal of its own.
pub struct WatchStream {
    notices: Pin<Box<dyn Stream<Item = Result<Notice, Error>> + Send>>,
    done: bool,
    _slot: Slot,
}

impl Stream for WatchStream {
    type Item = Result<Notice, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.notices.as_mut().poll_next(cx) {
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                Poll::Ready(Some(Err(e)))
            }
            other => other,
        }
    }
}

/// What feeds one stream.
struct Follower {
    store: Arc<dyn Store>,
    filter: Filter,
    /// The next revision this stream owes its client.
    next: Revision,
    /// Changes up to here happened before the stream opened: replaying an
    /// old revocation of the credential must not end the stream.
    history_until: Revision,
    live: Subscription,
    progress_interval: Duration,
    /// How long after their commit this stream hands events on (looked up
    /// once: per event per stream, a registry lookup would add up).
    delivery: metrics::Histogram,
}

/// What woke a caught-up follower.
enum Woken {
    Live(Result<Published, RecvError>),
    Idle,
}

/// What a caught-up follower does with an event the hub delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Live {
    /// Already sent: the follower read it from the log before the hub
    /// delivered it.
    Skip,
    /// The next event owed: nothing lies between the last one sent and it.
    Deliver,
    /// Something between the last event sent and this one never came
    /// through this receiver: read the log from `next` (which has it, or
    /// answers that it is compacted). The head is already past this event,
    /// since a store makes a state visible before it publishes its events.
    Reread,
}

/// The delivery decision of a follower that owes its client `next`.
///
/// `Reread` needs an event whose predecessor this follower never delivered
/// while it was waiting on the hub. A store that keeps the hub's rules
/// (events published once, in order, each after its state is visible) never
/// makes one for a follower that subscribed before reading the head: its
/// receiver holds every event past that head, and the first one it does not
/// skip names a predecessor at or below the head. Two things do make one:
/// - etcd's pump reloading after its watch fell behind compaction: it
///   replaces the state and publishes the next event after the reloaded
///   head, so the events in between were never published. Delivering would
///   skip them silently; rereading ends the stream with `REVISION_COMPACTED`
///   (docs/contract.md §8.6), or replays what etcd still holds.
/// - a publisher that announces an event before its state is visible: a
///   follower that read head H and subscribed after event H+1 went out
///   receives H+2, naming H+1. sled swaps its state first, so not today.
///
/// A receiver that fell behind the ring is told so (`Lagged`), not shown a
/// gap. Unit tests: `src/watch/tests.rs`.
fn on_live(next: Revision, p: &Published) -> Live {
    if p.event.revision < next {
        Live::Skip
    } else if p.after < next {
        Live::Deliver
    } else {
        Live::Reread
    }
}

impl Follower {
    /// The notices of one stream, ending with the error the client should
    /// see (or never, until the client goes away).
    fn notices(mut self, snapshot: bool) -> impl Stream<Item = Result<Notice, Error>> + Send {
        async_stream::try_stream! {
            if snapshot {
                let state = self.store.state();
                // Revocations between opening and this snapshot are never
                // replayed (the stream continues after it): check here.
                if let Some(caller) = &self.filter.credential
                    && !caller.still_valid(&state)
                {
                    Err(Error::CredentialRevoked("revoked"))?;
                }
                let revision = state.revision();
                for token in state.tokens_after(self.filter.account.as_ref(), None) {
                    // A snapshot of a million tokens does not hold a
                    // shutdown up: the hub's close is checked per token.
                    if self.live.is_closing() {
                        Err(Error::shutting_down())?;
                    }
                    if self.filter.wants_token(token) {
                        yield Notice::Snapshot { revision, token: token.clone() };
                    }
                }
                yield Notice::Synced(revision);
                self.next = revision + 1;
            }
            // One timer for the stream's life, pushed back only when it fires
            // early: re-arming it on every event would cost a timer-wheel
            // update per event per stream.
            let idle = tokio::time::sleep(self.progress_interval);
            tokio::pin!(idle);
            let mut last_sent = Instant::now();
            let mut page: VecDeque<Arc<Event>> = VecDeque::new();
            // Whether the log may hold events this stream owes: until it
            // first reads up to the head, and again after the hub lost
            // some for it. Once caught up, everything later comes through
            // the hub (it subscribed before reading the head), so the head
            // is not read per event: a burst of commits is followed in the
            // hub's ring rather than reread from the log, and ten thousand
            // streams do not each take the state's lock for every event.
            let mut behind = true;
            loop {
                let event = if let Some(event) = page.pop_front() {
                    event
                } else if behind
                    && let head = self.store.state().revision()
                    && self.next <= head
                {
                    // Behind the durable head: catch up from the log, a
                    // page at a time. Nothing there means no event lies
                    // between `next` and the head.
                    metrics::counter!(telemetry::WATCH_CATCHUPS).increment(1);
                    // Off the hub, its close is waited for beside the read
                    // (an etcd that does not answer must not hold a
                    // shutdown up); a catch-up of many pages checks it
                    // before each.
                    let read = tokio::select! {
                        biased;
                        () = self.live.closing() => Err(Error::shutting_down()),
                        read = self.store.events(self.next, LOG_PAGE) => read,
                    }?;
                    if read.is_empty() {
                        self.next = head + 1;
                    }
                    page.extend(read);
                    continue;
                } else {
                    behind = false;
                    // Caught up: the hub's next event, or progress when idle.
                    // The hub first: an event due makes progress moot, and
                    // the timer is not polled (a waker registered) for it.
                    let woken = tokio::select! {
                        biased;
                        received = self.live.recv() => Woken::Live(received),
                        () = &mut idle => Woken::Idle,
                    };
                    match woken {
                        Woken::Live(Ok(p)) => match on_live(self.next, &p) {
                            Live::Deliver => p.event,
                            Live::Skip => continue,
                            Live::Reread => {
                                behind = true;
                                continue;
                            }
                        },
                        // Events dropped from this receiver's ring: the log
                        // has them, and the head is already past them.
                        Woken::Live(Err(RecvError::Lagged(_))) => {
                            behind = true;
                            continue;
                        }
                        // The hub closed: the server is shutting down.
                        Woken::Live(Err(RecvError::Closed)) => {
                            Err(Error::shutting_down())?;
                            continue;
                        }
                        Woken::Idle => {
                            let due = last_sent + self.progress_interval;
                            if Instant::now() >= due {
                                // A stream that starts in the future has
                                // delivered nothing past the head yet:
                                // report the head.
                                let done = (self.next - 1).min(self.store.state().revision());
                                last_sent = Instant::now();
                                yield Notice::Progress(done);
                            }
                            idle.as_mut().reset(last_sent + self.progress_interval);
                            continue;
                        }
                    }
                };
                let committed = (event.revision > self.history_until).then_some(event.time);
                let (notice, revoked) = self.advance(event);
                if let Some(notice) = notice {
                    last_sent = Instant::now();
                    // Changes made while the stream was open: how far
                    // behind their commit it delivers (a replay of older
                    // history is not lag).
                    if let Some(at) = committed {
                        let lag = SystemTime::now().duration_since(at).unwrap_or_default();
                        self.delivery.record(lag.as_secs_f64());
                    }
                    yield notice;
                }
                if let Some(e) = revoked {
                    Err(e)?;
                }
            }
        }
    }

    /// Moves past `event`: the notice to send if the filter wants it, and
    /// the error that ends the stream if it revokes the stream's credential
    /// (sent after the event that did it).
    fn advance(&mut self, event: Arc<Event>) -> (Option<Notice>, Option<Error>) {
        debug_assert!(event.revision >= self.next, "no duplicates");
        self.next = event.revision + 1;
        let revoked = match &self.filter.credential {
            Some(caller) if event.revision > self.history_until => {
                revokes(caller, &event.subject).map(Error::CredentialRevoked)
            }
            _ => None,
        };
        let notice = self.filter.wants(&event).then_some(Notice::Change(event));
        (notice, revoked)
    }
}

#[cfg(test)]
mod tests;
