//! Rolling replacement: one `RollToken` call makes a successor and retires
//! the old token in the same commit, as two events in revision order (the
//! successor's CREATED, then the old token's UPDATED or DELETED). With a
//! grace, the old secret works until the grace ends and is then refused by
//! VerifyToken, ext_authz Check and a `TokenCache`, and deleted by tokend;
//! without one, it is gone at once. Against a real `tokend` process, on
//! sled or (second pass) etcd, where the two events need two revisions of
//! one commit.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use tokend::client::Verdict;
use tokend::proto as pb;

async fn roll(
    c: &mut Tokens,
    id: &str,
    grace: Duration,
) -> Result<pb::RollTokenResponse, tonic::Status> {
    c.roll_token(pb::RollTokenRequest {
        id: id.into(),
        grace: Some(grace.try_into().unwrap()),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

fn is_valid(v: &Verdict) -> bool {
    matches!(v, Verdict::Valid { .. })
}

/// The two events of a roll, in order, from `events`.
async fn both_events(events: &mut Events) -> (pb::TokenEvent, pb::TokenEvent) {
    (next_change(events).await, next_change(events).await)
}

#[tokio::test]
async fn a_roll_with_grace_keeps_the_old_secret_until_the_grace_ends_then_every_verifier_refuses_it()
 {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_tokend(dir.path(), &["--expiry-check", "100ms"]).await;
    let acc = new_account(&mut p.accounts().await, ALL_MODULES).await;
    let mut c = p.tokens().await;
    let (old, old_secret) = issue(&mut c, &acc.id, "deploy bot", &["commerce"]).await;
    let before = head(&mut c).await;
    let mut events = watch_from(&mut c, before + 1).await;
    let cache = p.operator_cache().await;
    assert!(is_valid(&cache.verify(&old_secret).await.unwrap()));

    // Long enough for the checks during the grace below (a dozen calls and
    // new connections, on a loaded machine and on etcd too); the test
    // sleeps until it ends anyway.
    let grace = Duration::from_secs(6);
    let r = roll(&mut c, &old.id, grace).await.expect("rolled");
    let rolled_at = SystemTime::now();
    let successor = r.token.clone().unwrap();
    let replaced = r.replaced.clone().unwrap();
    assert_ne!(successor.id, old.id);
    assert_eq!(successor.replaces, old.id);
    assert_eq!(
        (&successor.name, &successor.description, &successor.modules),
        (&old.name, &old.description, &old.modules)
    );
    assert_eq!(replaced.replaced_by, successor.id);
    assert_eq!(replaced.status, pb::TokenStatus::Active as i32);
    let ends = SystemTime::try_from(replaced.expire_time.unwrap()).unwrap();
    assert!(ends <= rolled_at + grace && ends + Duration::from_secs(5) > rolled_at + grace);
    assert!(r.secret.starts_with(&format!("idt:{}:", successor.id)));

    // One commit, two events: the successor first, then the old token.
    let (created, updated) = both_events(&mut events).await;
    assert_eq!(created.r#type, pb::EventType::Created as i32);
    assert_eq!(created.token.as_ref().unwrap().id, successor.id);
    assert_eq!(updated.r#type, pb::EventType::Updated as i32);
    assert_eq!(updated.token.as_ref().unwrap().replaced_by, successor.id);
    assert!(before < created.revision && created.revision < updated.revision);
    assert_eq!(r.revision, updated.revision);
    // A stream resumed between the two gets the second, and only it.
    let mut resumed = watch_from(&mut c, created.revision + 1).await;
    assert_eq!(next_change(&mut resumed).await, updated);
    let mut replayed = watch_from(&mut c, created.revision).await;
    assert_eq!(
        both_events(&mut replayed).await,
        (created.clone(), updated.clone())
    );

    // During the grace both secrets work, everywhere.
    for secret in [&old_secret, &r.secret] {
        assert_eq!(
            verify(&mut c, secret).await.result,
            pb::VerifyResult::Valid as i32
        );
        assert_eq!(authz_check(&p.url(), secret).await.0, 0);
        assert!(is_valid(&cache.verify(secret).await.unwrap()));
    }

    // Then the old one is refused at the instant, and deleted by tokend.
    let left = ends.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(20)).await;
    let v = cache.verify(&old_secret).await.unwrap();
    assert!(matches!(v, Verdict::Expired | Verdict::NotFound), "{v:?}");
    assert_eq!(authz_check(&p.url(), &old_secret).await.0, 16);
    let result = verify(&mut c, &old_secret).await.result;
    assert!(
        result == pb::VerifyResult::Expired as i32 || result == pb::VerifyResult::NotFound as i32
    );
    let deleted = next_change(&mut events).await;
    assert_eq!(deleted.r#type, pb::EventType::Deleted as i32);
    assert_eq!(deleted.token.as_ref().unwrap().id, old.id);
    assert_eq!(deleted.actor, "expiry");
    assert!(is_valid(&cache.verify(&r.secret).await.unwrap()));
    assert_eq!(authz_check(&p.url(), &r.secret).await.0, 0);

    // The tombstone still says what replaced it; the successor's history
    // starts with its creation at the first of the two revisions.
    let tomb = get(&mut c, &old.id, true).await.unwrap();
    assert_eq!(tomb.replaced_by, successor.id);
    let trail = c
        .list_token_events(pb::ListTokenEventsRequest {
            token_id: successor.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(trail.len(), 1);
    assert_eq!(trail[0].revision, created.revision);
}

#[tokio::test]
async fn a_roll_without_grace_deletes_the_old_token_in_the_same_commit_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut p = spawn_tokend_at(dir.path(), addr, &[]).await;
    let acc = new_account(&mut p.accounts().await, ALL_MODULES).await;
    let mut c = p.tokens().await;
    let (old, old_secret) = create_token(&mut c, &acc.id, "ci").await;
    let cache = p.operator_cache().await;
    assert!(is_valid(&cache.verify(&old_secret).await.unwrap()));
    let before = head(&mut c).await;
    let mut events = watch_from(&mut c, before + 1).await;

    let r = roll(&mut c, &old.id, Duration::ZERO).await.expect("rolled");
    let replaced = r.replaced.clone().unwrap();
    assert_eq!(replaced.status, pb::TokenStatus::Deleted as i32);
    assert_eq!(replaced.replaced_by, r.token.as_ref().unwrap().id);
    // Answered only once both are committed: the old secret is already
    // refused by the server and by ext_authz.
    assert_eq!(
        verify(&mut c, &old_secret).await.result,
        pb::VerifyResult::NotFound as i32
    );
    assert_eq!(authz_check(&p.url(), &old_secret).await.0, 16);
    assert_eq!(
        verify(&mut c, &r.secret).await.result,
        pb::VerifyResult::Valid as i32
    );
    let (created, deleted) = both_events(&mut events).await;
    assert_eq!(created.r#type, pb::EventType::Created as i32);
    assert_eq!(deleted.r#type, pb::EventType::Deleted as i32);
    assert_eq!(deleted.token.as_ref().unwrap().id, old.id);
    assert!(created.revision < deleted.revision);
    // The cache heard the deletion.
    tokio::time::timeout(Duration::from_secs(30), cache.caught_up(deleted.revision))
        .await
        .expect("the cache hears the deletion");
    assert_eq!(
        cache.verify(&old_secret).await.unwrap(),
        Verdict::NotFound,
        "the cache refuses the old secret"
    );

    // After a restart the same records and the same two events, replayed
    // from the store (not from a live process's memory).
    p.kill();
    drop(cache);
    let p = spawn_tokend_at(dir.path(), addr, &[]).await;
    let mut c = p.tokens().await;
    let mut replayed = watch_from(&mut c, created.revision).await;
    assert_eq!(both_events(&mut replayed).await, (created.clone(), deleted));
    let mut resumed = watch_from(&mut c, created.revision + 1).await;
    assert_eq!(next_change(&mut resumed).await.token.unwrap().id, old.id);
    let successor = get(&mut c, &r.token.unwrap().id, false).await.unwrap();
    assert_eq!(successor.replaces, old.id);
    assert_eq!(
        verify(&mut c, &r.secret).await.result,
        pb::VerifyResult::Valid as i32
    );
    assert_eq!(
        verify(&mut c, &old_secret).await.result,
        pb::VerifyResult::NotFound as i32
    );
}

#[tokio::test]
async fn rolls_are_refused_with_a_precise_reason_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_tokend(dir.path(), &[]).await;
    let acc = new_account(&mut p.accounts().await, ALL_MODULES).await;
    let mut c = p.tokens().await;
    let (t, _) = create_token(&mut c, &acc.id, "target").await;
    let (disabled, _) = create_token(&mut c, &acc.id, "disabled").await;
    c.disable_token(pb::DisableTokenRequest {
        id: disabled.id.clone(),
        etag: String::new(),
    })
    .await
    .unwrap();
    let (replaced, _) = create_token(&mut c, &acc.id, "replaced").await;
    roll(&mut c, &replaced.id, Duration::from_secs(3600))
        .await
        .unwrap();
    let (_, plain) = create_token(&mut c, &acc.id, "no access management").await;
    let mut unprivileged = tokens_at(&p.url(), bearer(&plain)).await;

    let base = head(&mut c).await;
    let request = |id: &str| pb::RollTokenRequest {
        id: id.into(),
        ..Default::default()
    };
    let cases: Vec<(&str, pb::RollTokenRequest, tonic::Code, &str)> = vec![
        (
            "disabled",
            request(&disabled.id),
            tonic::Code::FailedPrecondition,
            "TOKEN_NOT_ACTIVE",
        ),
        (
            "already replaced",
            request(&replaced.id),
            tonic::Code::FailedPrecondition,
            "TOKEN_REPLACED",
        ),
        (
            "missing",
            request("TKN-9999-9999"),
            tonic::Code::NotFound,
            "TOKEN_NOT_FOUND",
        ),
        (
            "no id",
            request(""),
            tonic::Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
        (
            "grace too long",
            pb::RollTokenRequest {
                grace: Some(Duration::from_secs(8 * 86_400).try_into().unwrap()),
                ..request(&t.id)
            },
            tonic::Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
        (
            "negative grace",
            pb::RollTokenRequest {
                grace: Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                }),
                ..request(&t.id)
            },
            tonic::Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
        (
            "stale etag",
            pb::RollTokenRequest {
                etag: "\"stale\"".into(),
                ..request(&t.id)
            },
            tonic::Code::Aborted,
            "ETAG_MISMATCH",
        ),
        (
            "expiry in the past",
            pb::RollTokenRequest {
                expiration: Some(pb::roll_token_request::Expiration::ExpireTime(
                    (SystemTime::now() - Duration::from_secs(60)).into(),
                )),
                ..request(&t.id)
            },
            tonic::Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
    ];
    for (name, req, code, why) in cases {
        let e = c.roll_token(req).await.unwrap_err();
        assert_eq!(
            (e.code(), reason(&e).as_str()),
            (code, why),
            "{name}: {e:?}"
        );
    }
    let e = unprivileged.roll_token(request(&t.id)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);

    // validate_only: the plan, without a secret or a change.
    let preview = c
        .roll_token(pb::RollTokenRequest {
            validate_only: true,
            grace: Some(Duration::from_secs(60).try_into().unwrap()),
            ..request(&t.id)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(preview.secret, "");
    assert_eq!(preview.revision, 0);
    assert_eq!(preview.token.unwrap().replaces, t.id);
    assert!(preview.replaced.unwrap().expire_time.is_some());

    assert_eq!(
        head(&mut c).await,
        base,
        "no refusal or preview committed anything"
    );
    let now = get(&mut c, &t.id, false).await.unwrap();
    assert_eq!((now.etag, now.replaced_by), (t.etag, String::new()));
}

/// Rolls race each other and plain writes: each token is replaced exactly
/// once, and every stream still sees revisions strictly increasing, the
/// successor's CREATED before the old token's change.
#[tokio::test]
async fn concurrent_rolls_and_writes_keep_one_successor_each_and_every_stream_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_tokend(dir.path(), &[]).await;
    let acc = new_account(&mut p.accounts().await, ALL_MODULES).await;
    let mut c = p.tokens().await;
    let before = head(&mut c).await;
    let mut events = watch_from(&mut c, before + 1).await;
    let mut targets = Vec::new();
    for i in 0..4 {
        targets.push(
            create_token(&mut c, &acc.id, &format!("target {i}"))
                .await
                .0,
        );
    }
    let mut tasks = tokio::task::JoinSet::new();
    // Two rollers per token: exactly one wins.
    for t in &targets {
        for _ in 0..2 {
            let (url, id, secret) = (p.url(), t.id.clone(), operator_secret(dir.path()));
            tasks.spawn(async move {
                let mut c = tokens_at(&url, bearer(&secret)).await;
                roll(&mut c, &id, Duration::from_secs(3600))
                    .await
                    .map(|_| ())
            });
        }
    }
    // And plain creations between them.
    for i in 0..2 {
        let (url, secret, acc) = (p.url(), operator_secret(dir.path()), acc.id.clone());
        tasks.spawn(async move {
            let mut c = tokens_at(&url, bearer(&secret)).await;
            for j in 0..10 {
                create_token(&mut c, &acc, &format!("writer {i} {j}")).await;
            }
            Ok(())
        });
    }
    let mut refused = 0;
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r.unwrap() {
            assert_eq!(reason(&e), "TOKEN_REPLACED", "{e:?}");
            refused += 1;
        }
    }
    assert_eq!(refused, targets.len(), "one roll of each token lost");

    // 4 creations, 4 rolls of two events, 20 creations.
    let mut last = before;
    let mut successors = std::collections::HashMap::new();
    for _ in 0..(4 + 4 * 2 + 20) {
        let e = next_change(&mut events).await;
        assert!(e.revision > last, "{} after {last}", e.revision);
        last = e.revision;
        let t = e.token.unwrap();
        if !t.replaces.is_empty() {
            successors.insert(t.replaces.clone(), t.id.clone());
        } else if !t.replaced_by.is_empty() {
            assert_eq!(
                successors.get(&t.id),
                Some(&t.replaced_by),
                "the successor's CREATED came first"
            );
        }
    }
    assert_eq!(successors.len(), targets.len());
    assert_eq!(last, head(&mut c).await);
}

/// A roll cut short by a crash is all or nothing. On sled the process dies
/// just after the roll's one log record is synced: after a restart both
/// changes are there, in order. On etcd it dies after reserving a revision
/// and before the commit: after a restart neither is, the old token can be
/// rolled again, and the reservation is only a gap in the revisions.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_roll_cut_short_by_a_crash_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn_tokend(dir.path(), &[]).await;
    let acc = new_account(&mut p.accounts().await, ALL_MODULES).await;
    let (old, old_secret) = create_token(&mut p.tokens().await, &acc.id, "ci").await;
    let before = head(&mut p.tokens().await).await;
    p.kill();

    let on_etcd = test_etcd().is_some();
    let failpoint = if on_etcd {
        "etcd-revision-reserved=return"
    } else {
        "sled-wal-synced=return"
    };
    let dying = spawn_tokend_with(dir.path(), &[], move |cmd| {
        cmd.env("FAILPOINTS", failpoint);
    })
    .await;
    let cut = roll(&mut dying.tokens().await, &old.id, Duration::ZERO).await;
    assert!(cut.is_err(), "the process died before answering: {cut:?}");
    drop(dying);

    let p = spawn_tokend(dir.path(), &[]).await;
    let mut c = p.tokens().await;
    let now = get(&mut c, &old.id, true).await.unwrap();
    let list = c
        .list_tokens(pb::ListTokensRequest {
            account_id: acc.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tokens;
    if on_etcd {
        // Nothing of it: the old token as it was, no successor.
        assert_eq!(
            (now.etag, now.replaced_by),
            (old.etag.clone(), String::new())
        );
        assert_eq!(list.len(), 1);
        assert_eq!(
            verify(&mut c, &old_secret).await.result,
            pb::VerifyResult::Valid as i32
        );
        let again = roll(&mut c, &old.id, Duration::ZERO)
            .await
            .expect("rolled after the crash");
        let mut events = watch_from(&mut c, before + 1).await;
        let (created, deleted) = both_events(&mut events).await;
        assert_eq!(created.token.unwrap().id, again.token.unwrap().id);
        assert!(created.revision < deleted.revision);
        assert_eq!(deleted.revision, head(&mut c).await);
    } else {
        // All of it, whole and in order, though nobody was answered.
        assert_eq!(now.status, pb::TokenStatus::Deleted as i32);
        let successor = list
            .iter()
            .find(|t| t.replaces == old.id)
            .expect("the successor");
        assert_eq!(now.replaced_by, successor.id);
        let mut events = watch_from(&mut c, before + 1).await;
        let (created, deleted) = both_events(&mut events).await;
        assert_eq!(
            (created.revision, deleted.revision),
            (before + 1, before + 2)
        );
        assert_eq!(created.token.unwrap().id, successor.id);
        assert_eq!(deleted.token.unwrap().id, old.id);
    }
}
