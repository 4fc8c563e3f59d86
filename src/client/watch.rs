//! [`Follow`]: the one resumable `WatchTokens` client, shared by
//! [`TokenCache`](super::TokenCache) and `tokend tokens watch`.
//!
//! Owns the client half of the watch contract (docs/contract.md §8): after a
//! dropped connection it waits a [`Backoff`], then reconnects with
//! `start_revision` = the last revision heard + 1 (the last change's, or the
//! last `SYNCED`/`PROGRESS` revision), so nothing is missed or repeated; when
//! the server answers `OUT_OF_RANGE` / `REVISION_COMPACTED` it lists again at
//! once (`send_initial`). A stream that started "from now" and broke before
//! it heard any revision lists too, since "from now" again would skip what
//! happened meanwhile.
//!
//! It must never decide for its caller whether to give up: every
//! interruption is an [`Update`], and a caller stops by not asking for the
//! next one. It keeps no tokens (what to do with a listing is the caller's
//! business) and never skips, reorders or repeats an event it was given.

use std::time::Duration;

use tonic::{Code, Status, Streaming};
use tonic_types::StatusExt;

use super::TokenClient;
use crate::error::reason;
use crate::proto as pb;

/// Where the next stream starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// With the next change (`start_revision` 0).
    Now,
    /// With a listing: a `SNAPSHOT` per live token, `SYNCED`, then every
    /// later change (`send_initial`).
    Listing,
    /// Replaying every event from this revision on (`start_revision`).
    At(i64),
}

impl Start {
    /// A `start_revision` as a person gives it: 0 means now.
    pub fn from_revision(revision: i64) -> Start {
        match revision {
            0 => Start::Now,
            n => Start::At(n),
        }
    }
}

/// The wait between reconnection attempts: `first`, doubling after each
/// failed attempt up to `max`, and `first` again once a stream opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The same wait every time.
    pub fn constant(wait: Duration) -> Backoff {
        Backoff {
            first: wait,
            max: wait,
        }
    }
}

impl Default for Backoff {
    /// 100 ms, up to 5 s.
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

/// What a [`Follow`] heard, or did. The event-bearing variants hold the
/// event as the server sent it.
#[derive(Debug)]
pub enum Update {
    /// One live token of a listing. Its revision is the listing's, which
    /// counts only once [`Update::Synced`] arrives.
    Snapshot(pb::TokenEvent),
    /// The listing is complete: it reflects every change up to the event's
    /// revision. A listing interrupted before this is abandoned, and the
    /// next listing starts over.
    Synced(pb::TokenEvent),
    /// A change (created, updated, enabled, disabled, deleted), in revision
    /// order, each exactly once.
    Change(pb::TokenEvent),
    /// Nothing in scope changed up to the event's revision.
    Progress(pb::TokenEvent),
    /// Reconnected after an interruption; the server replays from `from`.
    Resumed { from: i64 },
    /// Revision `from` is compacted away: a new listing follows at once.
    Relisting { from: i64 },
    /// An open stream broke. The next call waits `retry_in`, then
    /// reconnects from [`Follow::start`].
    Disconnected { status: Status, retry_in: Duration },
    /// Opening a stream failed. The next call waits `retry_in`, then tries
    /// again from [`Follow::start`].
    OpenFailed { status: Status, retry_in: Duration },
}

/// A `WatchTokens` subscription that survives dropped connections. Build it
/// with [`Follow::new`] and the setters, then call [`Follow::next`] for as
/// long as you want updates. Not cancel-safe across a reconnection: drop it
/// rather than abandon a `next()` half-way.
pub struct Follow {
    client: TokenClient,
    account_id: String,
    types: Vec<i32>,
    start: Start,
    backoff: Backoff,
    /// The wait after the next failure.
    delay: Duration,
    /// To wait before the next attempt.
    pause: Option<Duration>,
    stream: Option<Streaming<pb::TokenEvent>>,
    /// A stream broke or failed to open since the last one opened.
    interrupted: bool,
}

impl Follow {
    /// Every account the credential may see, every change type, the default
    /// [`Backoff`]. Nothing is sent until [`Follow::next`] (or
    /// [`Follow::connect`]).
    pub fn new(client: TokenClient, start: Start) -> Follow {
        let backoff = Backoff::default();
        Follow {
            client,
            account_id: String::new(),
            types: Vec::new(),
            start,
            backoff,
            delay: backoff.first,
            pause: None,
            stream: None,
            interrupted: false,
        }
    }

    /// Only this account's tokens (empty: every account the credential may see).
    pub fn account(mut self, account_id: impl Into<String>) -> Follow {
        self.account_id = account_id.into();
        self
    }

    /// Only these change types (empty: all). Listings are not filtered.
    pub fn types(mut self, types: impl IntoIterator<Item = pb::EventType>) -> Follow {
        self.types = types.into_iter().map(|t| t as i32).collect();
        self
    }

    pub fn backoff(mut self, backoff: Backoff) -> Follow {
        self.backoff = backoff;
        self.delay = backoff.first;
        self
    }

    /// Opens the first stream now, so that the server's refusal (a bad
    /// credential, an account it may not watch) reaches the caller.
    pub async fn connect(mut self) -> Result<Follow, Status> {
        self.stream = Some(self.open().await?);
        Ok(self)
    }

    /// Where the next stream would start.
    pub fn start(&self) -> Start {
        self.start
    }

    /// The next update: an event from the stream, or what became of the
    /// connection. After an interruption it first waits its backoff.
    pub async fn next(&mut self) -> Update {
        let stream = match self.stream.as_mut() {
            Some(stream) => stream,
            None => {
                if let Some(pause) = self.pause.take() {
                    tokio::time::sleep(pause).await;
                }
                let from = self.start;
                let stream = match self.open().await {
                    Ok(stream) => stream,
                    Err(status) => return self.interrupt(status, false),
                };
                self.delay = self.backoff.first;
                let stream = self.stream.insert(stream);
                if let (true, Start::At(from)) = (std::mem::take(&mut self.interrupted), from) {
                    return Update::Resumed { from };
                }
                stream
            }
        };
        match stream.message().await {
            Ok(Some(event)) => self.heard(event),
            Ok(None) => self.interrupt(Status::unavailable("the watch stream ended"), true),
            Err(status) => self.interrupt(status, true),
        }
    }

    async fn open(&mut self) -> Result<Streaming<pb::TokenEvent>, Status> {
        let (start_revision, send_initial) = match self.start {
            Start::Now => (0, false),
            Start::Listing => (0, true),
            Start::At(n) => (n, false),
        };
        let request = pb::WatchTokensRequest {
            account_id: self.account_id.clone(),
            start_revision,
            send_initial,
            types: self.types.clone(),
        };
        Ok(self.client.watch_tokens(request).await?.into_inner())
    }

    fn heard(&mut self, event: pb::TokenEvent) -> Update {
        match pb::EventType::try_from(event.r#type).unwrap_or_default() {
            pb::EventType::Snapshot => Update::Snapshot(event),
            pb::EventType::Synced => {
                self.heard_up_to(event.revision);
                Update::Synced(event)
            }
            pb::EventType::Progress => {
                self.heard_up_to(event.revision);
                Update::Progress(event)
            }
            _ => {
                self.heard_up_to(event.revision);
                Update::Change(event)
            }
        }
    }

    /// Every event up to `revision` is delivered: resume after it.
    fn heard_up_to(&mut self, revision: i64) {
        let next = match self.start {
            Start::At(n) => n.max(revision + 1),
            Start::Now | Start::Listing => revision + 1,
        };
        self.start = Start::At(next);
    }

    fn interrupt(&mut self, status: Status, was_open: bool) -> Update {
        self.stream = None;
        // A listing cannot be compacted; should a server say so anyway,
        // it gets the backoff rather than an immediate loop.
        if compacted(&status) && self.start != Start::Listing {
            let from = match self.start {
                Start::At(n) => n,
                Start::Now | Start::Listing => 0,
            };
            self.start = Start::Listing;
            return Update::Relisting { from };
        }
        if self.start == Start::Now {
            self.start = Start::Listing;
        }
        self.interrupted = true;
        let retry_in = self.delay;
        self.pause = Some(retry_in);
        self.delay = (self.delay * 2).min(self.backoff.max);
        if was_open {
            Update::Disconnected { status, retry_in }
        } else {
            Update::OpenFailed { status, retry_in }
        }
    }
}

/// `OUT_OF_RANGE` / `REVISION_COMPACTED`: the history asked for is gone.
fn compacted(status: &Status) -> bool {
    status.code() == Code::OutOfRange
        && status
            .get_details_error_info()
            .is_some_and(|info| info.reason == reason::REVISION_COMPACTED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Bearer;
    use tonic_types::ErrorDetails;

    /// A follower whose server is never asked: these tests drive its
    /// bookkeeping by hand.
    fn follow(start: Start) -> Follow {
        let channel = tonic::transport::Channel::from_static("http://127.0.0.1:1").connect_lazy();
        let client =
            pb::token_service_client::TokenServiceClient::with_interceptor(channel, Bearer::none());
        Follow::new(client, start)
    }

    fn event(kind: pb::EventType, revision: i64) -> pb::TokenEvent {
        pb::TokenEvent {
            revision,
            r#type: kind as i32,
            ..Default::default()
        }
    }

    fn compaction() -> Status {
        Status::with_error_details(
            Code::OutOfRange,
            "compacted",
            ErrorDetails::with_error_info(
                reason::REVISION_COMPACTED,
                crate::error::DOMAIN,
                std::collections::HashMap::new(),
            ),
        )
    }

    #[tokio::test]
    async fn resumes_after_the_last_revision_heard_and_snapshots_do_not_count() {
        let mut f = follow(Start::Listing);
        assert!(matches!(
            f.heard(event(pb::EventType::Snapshot, 7)),
            Update::Snapshot(_)
        ));
        assert_eq!(f.start(), Start::Listing);
        assert!(matches!(
            f.heard(event(pb::EventType::Synced, 7)),
            Update::Synced(_)
        ));
        assert_eq!(f.start(), Start::At(8));
        assert!(matches!(
            f.heard(event(pb::EventType::Deleted, 9)),
            Update::Change(_)
        ));
        assert_eq!(f.start(), Start::At(10));
        assert!(matches!(
            f.heard(event(pb::EventType::Progress, 12)),
            Update::Progress(_)
        ));
        assert_eq!(f.start(), Start::At(13));
        // A progress notice never moves the resume point backwards.
        f.heard(event(pb::EventType::Progress, 5));
        assert_eq!(f.start(), Start::At(13));
    }

    #[tokio::test]
    async fn a_compacted_resume_point_lists_at_once_and_other_failures_back_off() {
        let mut f = follow(Start::At(4)).backoff(Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_millis(300),
        });
        assert!(matches!(
            f.interrupt(compaction(), true),
            Update::Relisting { from: 4 }
        ));
        assert_eq!(f.start(), Start::Listing);
        assert_eq!(f.pause, None, "a relisting does not wait");
        // Compaction while listing is not believed: it waits like any failure.
        let waits: Vec<_> = (0..4)
            .map(|_| match f.interrupt(compaction(), false) {
                Update::OpenFailed { retry_in, .. } => retry_in.as_millis(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(waits, [100, 200, 300, 300]);
        assert_eq!(f.start(), Start::Listing);
    }

    #[tokio::test]
    async fn a_stream_from_now_that_broke_before_any_revision_lists() {
        let mut f = follow(Start::Now);
        assert!(matches!(
            f.interrupt(Status::unavailable("gone"), true),
            Update::Disconnected { .. }
        ));
        assert_eq!(f.start(), Start::Listing);

        let mut f = follow(Start::from_revision(0));
        f.heard(event(pb::EventType::Created, 3));
        f.interrupt(Status::unavailable("gone"), true);
        assert_eq!(f.start(), Start::At(4), "heard something: resumes");
    }
}
