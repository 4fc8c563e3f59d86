//! The follower's delivery decisions, without a server: [`on_live`] as a
//! table, and real [`Watchers`] streams over a real [`Hub`] and an in-memory
//! [`Store`] whose publishing the tests do by hand, so that they can make
//! the gaps no well-behaved store makes on its own (see [`on_live`]).

use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::task::Waker;
use std::time::SystemTime;

use super::*;
use crate::command::{Command, Plan, TokenPatch};
use crate::domain::{AccountStatus, AccountType, Actor, TokenId};
use crate::state::State;
use crate::state::testkit::{World, actor, reason_of};
use crate::store::{AccessLog, Applied};

fn published(after: Revision, revision: Revision) -> Published {
    Published {
        after,
        event: Arc::new(Event {
            revision,
            kind: EventKind::Updated,
            subject: crate::domain::Subject::Account(crate::domain::Account {
                id: AccountId::from_number(1),
                name: "Acme".into(),
                kind: AccountType::Client,
                status: AccountStatus::Active,
                modules: Default::default(),
                revision: 1,
                audit: Default::default(),
                max_token_lifetime: None,
            }),
            time: SystemTime::UNIX_EPOCH,
            actor: actor(),
        }),
    }
}

#[test]
fn on_live_skips_what_was_sent_delivers_what_is_next_and_rereads_after_a_hole() {
    use Live::*;
    // (next owed, event's predecessor, event's revision, decision)
    let table = [
        (10, 8, 9, Skip),     // read from the log already
        (10, 0, 1, Skip),     // long ago
        (10, 9, 10, Deliver), // the very next one
        (10, 7, 12, Deliver), // etcd: revisions skip numbers, nothing lies between
        (10, 0, 10, Deliver), // the first event of a history
        (1, 0, 1, Deliver),
        (10, 10, 11, Reread), // 10 was never delivered
        (10, 11, 12, Reread), // nor 10 and 11
        (1, 1, 2, Reread),
    ];
    for (next, after, revision, want) in table {
        assert_eq!(
            on_live(next, &published(after, revision)),
            want,
            "next {next}, event {revision} after {after}"
        );
    }
}

/// A store that is only memory: a state and the log of events that built
/// it. It publishes nothing by itself; the tests publish to the hub by hand.
struct FakeStore {
    inner: Mutex<Fake>,
    access: AccessLog,
    /// Log reads never answer (an etcd that does not reply).
    stalled: AtomicBool,
}

struct Fake {
    state: Arc<State>,
    log: Vec<Arc<Event>>,
    /// The oldest revision the log still answers for.
    oldest: Revision,
}

impl FakeStore {
    fn new() -> FakeStore {
        FakeStore {
            inner: Mutex::new(Fake {
                state: Arc::new(State::default()),
                log: Vec::new(),
                oldest: 1,
            }),
            access: AccessLog::new(Duration::from_secs(60), []),
            stalled: AtomicBool::new(false),
        }
    }

    /// Makes everything `world` committed visible, as a store does once a
    /// change is durable (and before it publishes it).
    fn show(&self, world: &World) {
        let mut f = self.inner.lock().unwrap();
        f.state = Arc::new(world.state.clone());
        f.log = world.log.clone();
    }

    /// History before `oldest` is gone.
    fn compact(&self, oldest: Revision) {
        self.inner.lock().unwrap().oldest = oldest;
    }
}

#[async_trait::async_trait]
impl Store for FakeStore {
    async fn apply(&self, _: Command, _: Actor) -> Result<Applied, Error> {
        unreachable!("watch tests write to the world, not through the store")
    }

    async fn preview(&self, _: &Command, _: &Actor) -> Result<Plan, Error> {
        unreachable!("watch tests never preview")
    }

    fn state(&self) -> Arc<State> {
        self.inner.lock().unwrap().state.clone()
    }

    async fn events(&self, from: Revision, max: usize) -> Result<Vec<Arc<Event>>, Error> {
        if self.stalled.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
        let f = self.inner.lock().unwrap();
        let head = f.state.revision();
        if from < f.oldest && from <= head {
            return Err(Error::Compacted {
                requested: from,
                oldest: f.oldest,
            });
        }
        Ok(f.log
            .iter()
            .filter(|e| (from..=head).contains(&e.revision))
            .take(max)
            .cloned()
            .collect())
    }

    async fn token_events(
        &self,
        _: &TokenId,
        _: Revision,
        _: usize,
    ) -> Result<Vec<Arc<Event>>, Error> {
        unreachable!("watch streams never read audit trails")
    }

    async fn tombstone(&self, _: &TokenId) -> Result<Option<crate::domain::Token>, Error> {
        unreachable!("watch streams never read tombstones")
    }

    async fn tombstones(
        &self,
        _: Option<&crate::domain::AccountId>,
        _: Option<&TokenId>,
        _: usize,
    ) -> Result<Vec<crate::domain::Token>, Error> {
        unreachable!("watch streams never read tombstones")
    }

    async fn oldest_revision(&self, _: Revision) -> Result<Revision, Error> {
        Ok(self.inner.lock().unwrap().oldest)
    }

    fn access_log(&self) -> &AccessLog {
        &self.access
    }

    fn page_key(&self) -> [u8; 32] {
        [0; 32]
    }

    async fn close(&self) {}
}

/// A world of one account and one token, a fake store showing it, a hub and
/// the watchers over them.
struct Rig {
    world: World,
    store: Arc<FakeStore>,
    hub: Hub,
    watchers: Watchers,
    account: AccountId,
    token: TokenId,
    /// Published up to here.
    published: Revision,
}

impl Rig {
    fn new(hub_capacity: usize) -> Rig {
        let mut world = World::default();
        let account = world.account(AccountType::Client, &["access-management", "billing"]);
        let (token, _) = world.token(&account, &["access-management"]);
        let store = Arc::new(FakeStore::new());
        store.show(&world);
        let hub = Hub::new(hub_capacity);
        let config = WatchConfig {
            max_watchers: 8,
            progress_interval: Duration::from_secs(3600),
        };
        let watchers = Watchers::new(store.clone(), hub.clone(), config);
        let published = world.state.revision();
        Rig {
            world,
            store,
            hub,
            watchers,
            account,
            token,
            published,
        }
    }

    async fn open(&self, start: Start) -> WatchStream {
        let filter = Filter::default();
        self.watchers.open(filter, start).await.expect("a stream")
    }

    /// Commits a rename of the token (in the world only: nothing visible,
    /// nothing published) and returns its revision.
    fn rename(&mut self) -> Revision {
        let revision = self.world.state.revision() + 1;
        self.rename_at(revision)
    }

    fn rename_at(&mut self, revision: Revision) -> Revision {
        self.world.commit_at(
            Command::UpdateToken {
                id: self.token.clone(),
                etag: None,
                patch: TokenPatch {
                    name: Some(format!("v{revision}")),
                    ..TokenPatch::default()
                },
            },
            revision,
        );
        revision
    }

    /// Makes every commit so far visible in the store.
    fn show(&self) {
        self.store.show(&self.world);
    }

    /// Publishes the committed event at `revision`, naming `after` as the
    /// one before it.
    fn publish(&mut self, after: Revision, revision: Revision) {
        let event = self.world.log.iter().find(|e| e.revision == revision);
        self.hub.publish(after, event.expect("committed").clone());
        self.published = revision;
    }

    /// What a store does: commit, make visible, publish after the last one
    /// it published.
    fn commit_rename(&mut self) -> Revision {
        let revision = self.rename();
        self.show();
        self.publish(self.published, revision);
        revision
    }
}

const NOTHING: [Revision; 0] = [];

/// Everything the stream has ready now, without waiting for anything. A
/// stream that never stops producing (a follower stuck on one revision)
/// fails the test instead of hanging it.
fn ready(stream: &mut WatchStream) -> Vec<Result<Notice, Error>> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    while let Poll::Ready(Some(item)) = Pin::new(&mut *stream).poll_next(&mut cx) {
        out.push(item);
        assert!(
            out.len() <= 1_000,
            "the stream never stops: {:?}",
            &out[..4]
        );
    }
    out
}

/// The revisions of the changes ready now; panics on anything else.
fn revisions(stream: &mut WatchStream) -> Vec<Revision> {
    changes(ready(stream))
}

/// The revisions of `notices`, every one a change; panics on anything else.
fn changes(notices: Vec<Result<Notice, Error>>) -> Vec<Revision> {
    notices
        .into_iter()
        .map(|n| match n {
            Ok(Notice::Change(e)) => e.revision,
            other => panic!("expected a change, got {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn a_live_event_after_a_hole_sends_the_follower_back_to_the_log() {
    let mut rig = Rig::new(64);
    let mut stream = rig.open(Start::Now).await;
    assert_eq!(
        revisions(&mut stream),
        NOTHING,
        "caught up, waiting on the hub"
    );
    // 3..=5 become visible but are never published (as across etcd's
    // reload after compaction); 6 is published after 5.
    for _ in 3..=5 {
        rig.rename();
    }
    let six = rig.rename();
    rig.show();
    rig.publish(5, six);
    assert_eq!(
        revisions(&mut stream),
        [3, 4, 5, 6],
        "the hole is read from the log"
    );
    assert_eq!(rig.commit_rename(), 7);
    assert_eq!(revisions(&mut stream), [7]);
}

#[tokio::test]
async fn a_hole_the_log_no_longer_holds_ends_the_stream_compacted() {
    let mut rig = Rig::new(64);
    let mut stream = rig.open(Start::Now).await;
    assert_eq!(revisions(&mut stream), NOTHING);
    for _ in 3..=5 {
        rig.rename();
    }
    let six = rig.rename();
    rig.show();
    rig.store.compact(6);
    rig.publish(5, six);
    let got = ready(&mut stream);
    assert!(
        matches!(
            got.as_slice(),
            [Err(Error::Compacted {
                requested: 3,
                oldest: 6
            })]
        ),
        "{got:?}"
    );
    assert!(ready(&mut stream).is_empty(), "the stream ended");
}

#[tokio::test]
async fn a_publisher_ahead_of_its_state_is_caught_by_the_gap_check() {
    // The case the hub's order rules out on sled: a follower reads head 2,
    // subscribes after 3 was published, then hears 4 (after 3) and 5.
    let mut rig = Rig::new(64);
    let (three, four, five) = (rig.rename(), rig.rename(), rig.rename());
    rig.publish(2, three);
    let mut stream = rig.open(Start::Now).await;
    assert_eq!(revisions(&mut stream), NOTHING);
    rig.show();
    rig.publish(three, four);
    rig.publish(four, five);
    assert_eq!(revisions(&mut stream), [3, 4, 5]);
}

#[tokio::test]
async fn a_stream_opened_mid_batch_misses_nothing_and_repeats_nothing() {
    // sled's order: a batch 3..=5 made visible at once, then published one
    // by one; streams open between two of those publishes.
    let mut rig = Rig::new(64);
    let (three, four, five) = (rig.rename(), rig.rename(), rig.rename());
    rig.show();
    rig.publish(2, three);
    let mut now = rig.open(Start::Now).await;
    let mut replay = rig.open(Start::At(2)).await;
    rig.publish(three, four);
    assert_eq!(revisions(&mut now), NOTHING);
    assert_eq!(revisions(&mut replay), [2, 3, 4, 5]);
    rig.publish(four, five);
    assert_eq!(revisions(&mut now), NOTHING);
    assert_eq!(revisions(&mut replay), NOTHING);
    rig.commit_rename();
    assert_eq!(revisions(&mut now), [6]);
    assert_eq!(revisions(&mut replay), [6]);
}

#[tokio::test]
async fn live_events_already_read_from_the_log_are_skipped() {
    let mut rig = Rig::new(64);
    let mut stream = rig.open(Start::At(1)).await;
    // Published after the stream subscribed, before it first read the log:
    // it reads 1..=4 there (1 is an account's: not sent), then hears 3 and
    // 4 again from the hub.
    rig.commit_rename();
    rig.commit_rename();
    assert_eq!(revisions(&mut stream), [2, 3, 4]);
    rig.commit_rename();
    assert_eq!(revisions(&mut stream), [5]);
}

#[tokio::test]
async fn revisions_that_skip_numbers_are_not_holes() {
    let mut rig = Rig::new(64);
    let mut now = rig.open(Start::Now).await;
    let mut future = rig.open(Start::At(11)).await;
    for revision in [10, 13, 17] {
        rig.rename_at(revision);
        rig.show();
        rig.publish(rig.published, revision);
    }
    assert_eq!(revisions(&mut now), [10, 13, 17]);
    assert_eq!(revisions(&mut future), [13, 17]);
}

#[tokio::test]
async fn a_follower_that_lagged_behind_the_hub_catches_up_from_the_log() {
    let mut rig = Rig::new(16);
    let mut stream = rig.open(Start::Now).await;
    assert_eq!(revisions(&mut stream), NOTHING);
    let last = (0..100).map(|_| rig.commit_rename()).last().unwrap();
    let got = revisions(&mut stream);
    assert_eq!(got, (3..=last).collect::<Vec<_>>());
    rig.commit_rename();
    assert_eq!(revisions(&mut stream), [last + 1]);
}

/// A batch is made visible whole, then published event by event: a
/// caught-up follower takes the batch from the hub. It must not go to the
/// log because the head moved past the event it just sent (on sled that
/// read waits for the applier; at ten thousand streams, reading the head per
/// event was a lock taken per event per stream).
#[tokio::test]
async fn a_caught_up_follower_takes_a_whole_batch_from_the_hub() {
    let mut rig = Rig::new(64);
    let mut stream = rig.open(Start::Now).await;
    assert_eq!(revisions(&mut stream), NOTHING);
    let batch: Vec<Revision> = (0..3).map(|_| rig.rename()).collect();
    rig.show();
    for &revision in &batch {
        rig.publish(revision - 1, revision);
    }
    // Any log read from here on never answers.
    rig.store.stalled.store(true, Ordering::Relaxed);
    assert_eq!(revisions(&mut stream), batch, "all three from the hub");
}

#[tokio::test]
async fn a_snapshot_stream_continues_right_after_its_snapshot() {
    let mut rig = Rig::new(64);
    let mut stream = rig.open(Start::Snapshot).await;
    rig.commit_rename(); // 3: published after subscribing, before the snapshot
    let got = ready(&mut stream);
    assert!(
        matches!(&got[..], [Ok(Notice::Snapshot { revision: 3, token }), Ok(Notice::Synced(3))] if token.id == rig.token),
        "{got:?}"
    );
    rig.commit_rename();
    assert_eq!(revisions(&mut stream), [4]);
}

#[tokio::test]
async fn a_filter_sends_its_account_and_kinds_but_moves_past_everything() {
    let mut rig = Rig::new(64);
    let other = rig.world.account(AccountType::Client, &[]);
    let (theirs, _) = rig.world.token(&other, &[]);
    rig.show();
    rig.published = rig.world.state.revision();
    let filter = Filter {
        account: Some(rig.account.clone()),
        kinds: HashSet::from([EventKind::Disabled]),
        credential: None,
    };
    let mut stream = rig.watchers.open(filter, Start::Now).await.unwrap();
    rig.world.disable_token(&theirs);
    rig.show();
    rig.publish(rig.published, rig.world.state.revision());
    rig.commit_rename();
    rig.world.disable_token(&rig.token.clone());
    rig.show();
    let disabled = rig.world.state.revision();
    rig.publish(rig.published, disabled);
    assert_eq!(revisions(&mut stream), [disabled]);
}

#[tokio::test]
async fn a_revoked_credential_ends_the_stream_after_the_event_that_revoked_it() {
    let mut rig = Rig::new(64);
    let caller = crate::caller::Caller {
        token: rig.world.token_rec(&rig.token),
        account: rig.world.account_rec(&rig.account),
    };
    let filter = Filter {
        account: Some(rig.account.clone()),
        kinds: HashSet::new(),
        credential: Some(caller),
    };
    let mut stream = rig.watchers.open(filter, Start::Now).await.unwrap();
    rig.commit_rename();
    rig.world
        .set_account_status(&rig.account.clone(), AccountStatus::Disabled);
    rig.show();
    let revoked = rig.world.state.revision();
    rig.publish(rig.published, revoked);
    let got = ready(&mut stream);
    // The account event is not sent (§8.11), the stream still ends.
    assert!(
        matches!(&got[..], [Ok(Notice::Change(e)), Err(Error::CredentialRevoked(_))] if e.revision == 3),
        "{got:?}"
    );
    assert_eq!(
        reason_of(got[1].as_ref().unwrap_err()),
        "CREDENTIAL_REVOKED"
    );
}

#[tokio::test]
async fn an_old_revocation_replayed_from_the_log_does_not_end_the_stream() {
    let mut rig = Rig::new(64);
    rig.world.disable_token(&rig.token.clone());
    rig.world.commit(Command::EnableToken {
        id: rig.token.clone(),
        etag: None,
    });
    let caller = crate::caller::Caller {
        token: rig.world.token_rec(&rig.token),
        account: rig.world.account_rec(&rig.account),
    };
    // The last change before the stream opens strips the credential's
    // rights (the interceptor looked just before it): history too.
    rig.world.commit(Command::UpdateToken {
        id: rig.token.clone(),
        etag: None,
        patch: TokenPatch {
            modules: Some(Default::default()),
            ..TokenPatch::default()
        },
    });
    rig.show();
    let filter = Filter {
        credential: Some(caller),
        ..Filter::default()
    };
    let mut stream = rig.watchers.open(filter, Start::At(1)).await.unwrap();
    assert_eq!(revisions(&mut stream), [2, 3, 4, 5]);
    // A revocation after the stream opened does end it.
    rig.world.disable_token(&rig.token.clone());
    rig.show();
    rig.publish(5, 6);
    let got = ready(&mut stream);
    assert!(
        matches!(&got[..], [Ok(Notice::Change(e)), Err(Error::CredentialRevoked("disabled"))] if e.revision == 6),
        "{got:?}"
    );
}

#[tokio::test]
async fn opening_refuses_compacted_history_revoked_credentials_and_too_many_streams() {
    let mut rig = Rig::new(64);
    rig.store.compact(2);
    let e = rig
        .watchers
        .open(Filter::default(), Start::At(1))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            e,
            Error::Compacted {
                requested: 1,
                oldest: 2
            }
        ),
        "{e:?}"
    );
    assert!(
        rig.watchers
            .open(Filter::default(), Start::At(2))
            .await
            .is_ok()
    );

    let (gone, _) = rig.world.token(&rig.account, &[]);
    let stale = crate::caller::Caller {
        token: rig.world.token_rec(&gone),
        account: rig.world.account_rec(&rig.account),
    };
    rig.world.delete_token(&gone);
    rig.show();
    let filter = Filter {
        credential: Some(stale),
        ..Filter::default()
    };
    let e = rig.watchers.open(filter, Start::Now).await.err().unwrap();
    assert_eq!(reason_of(&e), "UNAUTHENTICATED");

    let mut streams = Vec::new();
    for _ in 0..8 {
        streams.push(rig.open(Start::Now).await);
    }
    assert_eq!(rig.watchers.open_count(), 8);
    let e = rig
        .watchers
        .open(Filter::default(), Start::Now)
        .await
        .err()
        .unwrap();
    assert!(matches!(e, Error::TooManyWatchers { limit: 8 }), "{e:?}");
    drop(streams);
    assert_eq!(rig.watchers.open_count(), 0);
    assert!(
        rig.watchers
            .open(Filter::default(), Start::Now)
            .await
            .is_ok()
    );
}

/// The notices ready now: every one a change but the last, which is the
/// shutdown's `UNAVAILABLE`; after it, the stream has ended.
fn ends_shutting_down(stream: &mut WatchStream) -> Vec<Revision> {
    let mut got = ready(stream);
    let last = got.pop();
    assert!(
        matches!(last, Some(Err(Error::Unavailable { reason, .. })) if reason == crate::error::reason::SHUTTING_DOWN),
        "ends shutting down: {last:?}"
    );
    assert!(ready(stream).is_empty(), "nothing after the end");
    changes(got)
}

#[tokio::test]
async fn closing_the_hub_ends_waiting_streams_and_opens_no_more() {
    let mut rig = Rig::new(64);
    let mut waiting = rig.open(Start::Now).await;
    let mut snapshot = rig.open(Start::Snapshot).await;
    assert_eq!(revisions(&mut waiting), NOTHING);
    assert_eq!(ready(&mut snapshot).len(), 2, "the token, then synced");
    assert_eq!(rig.commit_rename(), 3);
    // Opened after 3 went out: it waits for 4, and only the close wakes it.
    let mut idle = rig.open(Start::Now).await;
    assert_eq!(revisions(&mut idle), NOTHING);
    rig.hub.close();
    // An event published before the close still goes out.
    assert_eq!(ends_shutting_down(&mut waiting), [3]);
    assert_eq!(ends_shutting_down(&mut snapshot), [3]);
    assert_eq!(ends_shutting_down(&mut idle), NOTHING);
    assert!(matches!(
        rig.watchers.open(Filter::default(), Start::Now).await,
        Err(Error::Unavailable { .. })
    ));
}

#[tokio::test]
async fn closing_the_hub_ends_a_stream_waiting_for_a_log_read() {
    let mut rig = Rig::new(64);
    let first = rig.rename();
    rig.show();
    rig.store.stalled.store(true, Ordering::Relaxed);
    let mut stream = rig.open(Start::At(first)).await;
    assert!(ready(&mut stream).is_empty(), "waiting for the log");
    rig.hub.close();
    assert_eq!(ends_shutting_down(&mut stream), NOTHING);
}

#[tokio::test]
async fn a_stream_that_lagged_past_the_close_ends_too() {
    // The ring keeps 16: the close's wake-up is dropped for a receiver 20
    // behind, which is told it lagged, and ends all the same.
    let mut rig = Rig::new(16);
    let mut stream = rig.open(Start::Now).await;
    assert_eq!(revisions(&mut stream), NOTHING);
    for _ in 0..20 {
        rig.commit_rename();
    }
    rig.hub.close();
    for _ in 0..20 {
        rig.commit_rename();
    }
    // Whatever it sends before the end is in order and gap-free.
    let delivered = ends_shutting_down(&mut stream);
    assert!(
        (3..).zip(&delivered).all(|(want, got)| want == *got),
        "{delivered:?}"
    );
}
