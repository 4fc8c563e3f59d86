//! WatchTokens: order, no gaps, no duplicates, replay, resume, compaction,
//! snapshots, progress, slow subscribers and the subscriber cap.

mod common;

use common::*;
use std::time::Duration;
use tokend::proto as pb;
use tonic::Code;

/// Runs `n` mutations from `clients` concurrent clients on `account`: creates,
/// and a delete of every third token. Returns how many events that made.
async fn churn(
    (url, bearer): (String, Bearer),
    account: impl ToString,
    clients: usize,
    n: usize,
) -> usize {
    let account = account.to_string();
    let mut set = tokio::task::JoinSet::new();
    for k in 0..clients {
        let mut c = tokens_at(&url, bearer.clone()).await;
        let account = account.to_string();
        set.spawn(async move {
            let mut events = 0;
            for i in (k..n).step_by(clients) {
                let (t, _) = create_token(&mut c, &account, &format!("churn {i}")).await;
                events += 1;
                if i % 3 == 0 {
                    delete(&mut c, &t.id).await.unwrap();
                    events += 1;
                }
            }
            events
        });
    }
    let mut total = 0;
    while let Some(r) = set.join_next().await {
        total += r.unwrap();
    }
    total
}

/// Reads `count` change events and checks their revisions are exactly
/// `first, first+1, …` (on etcd: increasing from `first`, see
/// `assert_follows`). Returns the revision owed next.
async fn expect_consecutive(events: &mut Events, first: i64, count: usize) -> i64 {
    let mut prev = first - 1;
    for _ in 0..count {
        let e = next_change(events).await;
        assert_follows(prev, e.revision, "gap or duplicate");
        prev = e.revision;
    }
    prev + 1
}

#[tokio::test]
async fn streams_opened_during_writes_switch_from_replay_to_live_without_gaps() {
    let s = TestServer::start_with(|c| c.hub_capacity = 16).await;
    let acc = create_account(&s, ALL_MODULES).await;
    let first = head(&mut s.tokens().await).await + 1;
    let before = churn(s.target(), &acc.id, 4, 60).await; // revisions first..

    // Watchers open from `first` while more writes are in flight: each
    // must replay the log, then follow live, then (the hub is tiny) lag and
    // go back to the log, and still see every revision exactly once.
    let writer = tokio::spawn(churn(s.target(), acc.id.clone(), 8, 300));
    let mut watchers = Vec::new();
    for _ in 0..4 {
        watchers.push(watch_from(&mut s.tokens().await, first).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let during = writer.await.unwrap();
    for w in &mut watchers {
        expect_consecutive(w, first, before + during).await;
    }
}

#[tokio::test]
async fn a_client_resumes_from_its_last_revision_and_misses_nothing() {
    let s = TestServer::start().await;
    let acc = create_account(&s, ALL_MODULES).await;
    let mut c = s.tokens().await;
    let mut w = watch(&mut c, pb::WatchTokensRequest::default()).await;
    let first = head(&mut c).await + 1;
    churn(s.target(), &acc.id, 1, 5).await; // 5 creates + 2 deletes = 7 events
    let next = expect_consecutive(&mut w, first, 4).await;
    drop(w); // the connection drops after 4 of them

    churn(s.target(), &acc.id, 2, 6).await; // more happens while away: 8 events
    let mut w = watch_from(&mut c, next).await;
    expect_consecutive(&mut w, next, 3 + 8).await;
}

#[tokio::test]
async fn history_older_than_retention_is_out_of_range() {
    if sled_only("--retention compaction (etcd's: tests/replicas.rs)") {
        return;
    }
    let s = TestServer::start_with(|c| c.retention = 10).await;
    let acc = create_account(&s, ALL_MODULES).await;
    let mut c = s.tokens().await;
    let before = head(&mut c).await;
    let events = churn(s.target(), &acc.id, 1, 21).await; // 28 events
    let head = before + events as i64;
    let oldest = head - 10 + 1;
    let e = c
        .watch_tokens(pb::WatchTokensRequest {
            start_revision: oldest - 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange);
    assert_eq!(reason(&e), "REVISION_COMPACTED");
    use tonic_types::StatusExt;
    let info = e.get_details_error_info().unwrap();
    assert_eq!(info.domain, "apitokens");
    assert_eq!(info.metadata["oldest_revision"], oldest.to_string());
    assert_eq!(
        e.metadata().get("x-oldest-revision").unwrap(),
        &oldest.to_string()
    );

    let mut w = watch_from(&mut c, oldest).await;
    expect_consecutive(&mut w, oldest, 10).await;

    // Retention survives a restart: the same window is still there.
    let s = s.restart().await;
    let mut c = s.tokens().await;
    let mut w = watch_from(&mut c, oldest).await;
    expect_consecutive(&mut w, oldest, 10).await;
}

#[tokio::test]
async fn send_initial_gives_a_snapshot_then_synced_then_live_changes() {
    let s = TestServer::start().await;
    let acc = create_account(&s, ALL_MODULES).await;
    let other = create_account(&s, ALL_MODULES).await;
    let mut c = s.tokens().await;
    let (a, _) = create_token(&mut c, &acc.id, "a").await;
    let (b, _) = create_token(&mut c, &acc.id, "b").await;
    let (gone, _) = create_token(&mut c, &acc.id, "gone").await;
    create_token(&mut c, &other.id, "elsewhere").await;
    let deleted = delete(&mut c, &gone.id).await.unwrap();

    let mut w = watch(
        &mut c,
        pb::WatchTokensRequest {
            account_id: acc.id.clone(),
            send_initial: true,
            ..Default::default()
        },
    )
    .await;
    let mut snapshot = Vec::new();
    let synced = loop {
        let e = next_change(&mut w).await;
        if e.r#type == EventType::Synced as i32 {
            break e;
        }
        assert_eq!(e.r#type, EventType::Snapshot as i32);
        snapshot.push(e.token.unwrap().id);
    };
    snapshot.sort();
    let mut want = vec![a.id.clone(), b.id.clone()];
    want.sort();
    assert_eq!(snapshot, want);
    assert_eq!(
        synced.revision, deleted.revision,
        "the snapshot reflects the head"
    );

    let r = delete(&mut c, &a.id).await.unwrap();
    let e = next_change(&mut w).await;
    assert_eq!(
        (e.r#type, e.revision),
        (EventType::Deleted as i32, r.revision)
    );

    let e = c
        .watch_tokens(pb::WatchTokensRequest {
            send_initial: true,
            start_revision: 3,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn idle_streams_get_progress_with_the_current_revision() {
    let s = TestServer::start_with(|c| c.progress_interval = Duration::from_millis(200)).await;
    let acc = create_account(&s, ALL_MODULES).await;
    let mut c = s.tokens().await;
    let (t, _) = create_token(&mut c, &acc.id, "x").await;
    // A stream that filters everything out still learns the revision moves on.
    let mut w = watch(
        &mut c,
        pb::WatchTokensRequest {
            types: vec![EventType::Deleted as i32],
            ..Default::default()
        },
    )
    .await;
    c.disable_token(pb::DisableTokenRequest {
        id: t.id.clone(),
        etag: String::new(),
    })
    .await
    .unwrap();
    assert_eq!(get(&mut c, &t.id, false).await.unwrap().revision, 2);
    let now = head(&mut c).await;
    // PROGRESS may come before the disable (the timer is independent of the
    // writes); within a few intervals one must report the disable's revision.
    let e = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let e = w.message().await.unwrap().unwrap();
            assert_eq!(e.r#type, EventType::Progress as i32, "only PROGRESS: {e:?}");
            assert!(e.revision <= now, "PROGRESS beyond the head");
            if e.revision == now {
                return e;
            }
        }
    })
    .await
    .expect("a PROGRESS with the current revision");
    assert!(e.token.is_none());
}

#[tokio::test]
async fn bad_watch_requests_are_refused_precisely() {
    let s = TestServer::start().await;
    let mut c = s.tokens().await;
    let cases = [
        (
            pb::WatchTokensRequest {
                start_revision: -1,
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            pb::WatchTokensRequest {
                account_id: "ACC-0000-0001".into(),
                ..Default::default()
            },
            Code::NotFound,
        ),
        (
            pb::WatchTokensRequest {
                account_id: "nope".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            pb::WatchTokensRequest {
                types: vec![EventType::Progress as i32],
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
    ];
    for (req, code) in cases {
        let e = c.watch_tokens(req.clone()).await.unwrap_err();
        assert_eq!(e.code(), code, "{req:?}");
    }
}

#[tokio::test]
async fn the_subscriber_cap_is_enforced_and_slots_come_back() {
    let s = TestServer::start_with(|c| c.max_watchers = 3).await;
    let mut c = s.tokens().await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(watch(&mut c, pb::WatchTokensRequest::default()).await);
    }
    let e = c
        .watch_tokens(pb::WatchTokensRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert_eq!(reason(&e), "TOO_MANY_WATCHERS");
    open.pop();
    // The server notices the client went away (RST_STREAM) shortly after.
    for _ in 0..500 {
        if c.watch_tokens(pb::WatchTokensRequest::default())
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the slot of a closed stream never came back");
}

/// Subscribers that never read while 10,000 events are written: readers keep
/// up, the server's memory stays bounded, and the stalled ones later get
/// every event in order, caught up from the log. The server runs as its own
/// process so that its memory is measured apart from the clients' buffers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscribers_cost_bounded_memory_and_lose_nothing() {
    const STALLED: usize = 32;
    const EVENTS: i64 = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_tokend(dir.path(), &["--hub-capacity", "1024"]).await;
    let mut a = server.accounts().await;
    let acc = a
        .create_account(pb::CreateAccountRequest {
            name: "Acme".into(),
            r#type: pb::AccountType::Client as i32,
            modules: vec![],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let client = || server.tokens();
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        // Each on its own connection, so HTTP/2 flow control stalls only it.
        stalled.push(watch(&mut client().await, pb::WatchTokensRequest::default()).await);
    }
    let mut reader = watch(&mut client().await, pb::WatchTokensRequest::default()).await;
    let first = head(&mut client().await).await + 1;
    let reading = tokio::spawn(async move {
        expect_consecutive(&mut reader, first, EVENTS as usize).await;
    });
    let rss_before = server.rss_kib();

    // 10,000 events of ~1 KB: buffering them per stalled stream would cost
    // the server 32 × ~10 MB, over 300 MiB. What may legitimately grow: the
    // state (~10 MB of tokens), sled's cache (64 MiB by its own count, which
    // leaves out its page overhead), sled's flush buffers when the store
    // checkpoints (within 100 ms of the last write), the hub's ring
    // (~1 MB) and the allocator's arenas: 95 to 125 MiB measured. The bound
    // is half of what buffering costs: even half the stalled streams
    // buffering everything would cross it.
    const BUFFERING_MIB: u64 = STALLED as u64 * EVENTS as u64 / 1024;
    let mut set = tokio::task::JoinSet::new();
    for k in 0..16 {
        let mut c = client().await;
        let acc = acc.id.clone();
        set.spawn(async move {
            for i in (k..EVENTS).step_by(16) {
                c.create_token(pb::CreateTokenRequest {
                    account_id: acc.clone(),
                    name: format!("fat {i}"),
                    description: "d".repeat(900),
                    ..Default::default()
                })
                .await
                .unwrap();
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(60), reading)
        .await
        .expect("the reading subscriber kept up")
        .unwrap();
    let grown_mib = server.rss_kib().saturating_sub(rss_before) / 1024;
    eprintln!("server RSS grew by {grown_mib} MiB while {STALLED} subscribers stalled");
    assert!(
        grown_mib < BUFFERING_MIB / 2,
        "server RSS grew by {grown_mib} MiB (bound {} MiB): stalled streams are buffering",
        BUFFERING_MIB / 2
    );

    for w in &mut stalled {
        expect_consecutive(w, first, EVENTS as usize).await;
    }
}
