//! docs/contract.md §2, point by point: what deleting a token means.

mod common;

use common::*;
use std::time::Duration;
use tokend::proto as pb;
use tonic::Code;

/// §2.1: status DELETED, audit.deleted, secret hash erased (from the index and
/// the store), gone from the listing, one DELETED event with a new revision.
#[tokio::test]
async fn delete_is_one_atomic_change_that_erases_the_secret_hash() {
    let s = TestServer::start().await;
    let acc = create_account(&s, ALL_MODULES).await;
    let mut c = s.tokens().await;
    let (keep, keep_secret) = create_token(&mut c, &acc.id, "keep").await;
    let (t, secret) = create_token(&mut c, &acc.id, "ci-deploy").await;
    let mut events = watch(&mut c, pb::WatchTokensRequest::default()).await;

    let r = delete(&mut c, &t.id).await.unwrap();
    let tomb = r.token.unwrap();
    assert_eq!(tomb.status, pb::TokenStatus::Deleted as i32);
    assert_eq!(tomb.revision, t.revision + 1);
    let deleted = tomb.audit.as_ref().unwrap().deleted.as_ref().unwrap();
    assert_eq!(deleted.by, operator_id(&mut c).await);
    assert!(deleted.at.is_some());

    let e = next_change(&mut events).await;
    assert_eq!(e.r#type, EventType::Deleted as i32);
    assert_eq!(e.revision, r.revision);
    assert_eq!(e.token.unwrap().id, t.id);

    let list = c
        .list_tokens(pb::ListTokensRequest {
            account_id: acc.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = list.tokens.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, [keep.id.as_str()]);
    assert_eq!(list.total_size, 1);

    // On disk: the hash of its secret is in no key and no value of sled
    // (the live token's record held it; the event log never does).
    drop(c);
    drop(events);
    if sled_only("reading the sled files (tests/replicas.rs reads etcd's keys)") {
        return;
    }
    let dir = s.stop().await;
    let db = sled::open(dir.path().join("db")).unwrap();
    let tree = db.open_tree("tokend").unwrap();
    let hash = tokend::secret::hash(&secret);
    let keep_hash = tokend::secret::hash(&keep_secret);
    let finds = |bytes: &[u8], h: &[u8]| bytes.windows(h.len()).any(|w| w == h);
    let (mut held, mut entries) = (0, 0);
    for kv in tree.iter() {
        let (k, v) = kv.unwrap();
        assert!(
            !finds(&k, &hash) && !finds(&v, &hash),
            "the deleted hash is still in {k:?}"
        );
        held += finds(&v, &keep_hash) as usize;
        entries += 1;
    }
    // The check can see a hash: the live token's is there, once.
    assert_eq!(
        held, 1,
        "the live token's hash, in its record ({entries} entries)"
    );
    // The record on disk (src/store/record.rs: pinned field names).
    let stored: serde_json::Value =
        serde_json::from_slice(&tree.get(format!("d/{}", t.id)).unwrap().unwrap()).unwrap();
    assert_eq!(stored["status"], "Deleted", "{stored}");
}

/// §2.2: the answer comes after fsync. SIGKILL right after the answer must
/// not resurrect the token.
#[tokio::test]
async fn an_acknowledged_delete_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_tokend(dir.path(), &[]).await;
    let mut c = child.tokens().await;
    let mut a = child.accounts().await;
    let acc = a
        .create_account(pb::CreateAccountRequest {
            name: "Acme".into(),
            r#type: pb::AccountType::Client as i32,
            modules: vec!["commerce".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut secrets = Vec::new();
    for i in 0..20 {
        let (t, secret) = create_token(&mut c, &acc.id, &format!("t{i}")).await;
        secrets.push((t.id, secret));
    }
    // Delete half, concurrently, and kill the moment the last answer arrives.
    let mut set = tokio::task::JoinSet::new();
    for (id, _) in secrets.iter().step_by(2) {
        let mut c = c.clone();
        let id = id.clone();
        set.spawn(async move { delete(&mut c, &id).await.map(|_| ()) });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap().unwrap();
    }
    child.kill();

    let child = spawn_tokend(dir.path(), &[]).await;
    let mut c = child.tokens().await;
    for (i, (id, secret)) in secrets.iter().enumerate() {
        let v = verify(&mut c, secret).await;
        if i % 2 == 0 {
            assert_eq!(
                v.result,
                pb::VerifyResult::NotFound as i32,
                "{id} came back"
            );
            assert_eq!(
                get(&mut c, id, false).await.unwrap_err().code(),
                Code::NotFound
            );
        } else {
            assert!(v.valid, "{id} was lost");
        }
    }
    drop(child);
}

/// §2.3: afterwards verify fails, get is NOT_FOUND (tombstone with
/// show_deleted), list omits it, a second delete is NOT_FOUND, no mutation
/// works on it, and it stays that way across a restart.
#[tokio::test]
async fn a_deleted_token_is_gone_for_good() {
    let s = TestServer::start().await;
    let acc = create_account(&s, ALL_MODULES).await;
    let mut c = s.tokens().await;
    let (t, secret) = create_token(&mut c, &acc.id, "ci-deploy").await;
    assert!(verify(&mut c, &secret).await.valid);
    delete(&mut c, &t.id).await.unwrap();

    let s = s.restart().await;
    let mut c = s.tokens().await;
    let v = verify(&mut c, &secret).await;
    assert!(!v.valid);
    assert_eq!(v.result, pb::VerifyResult::NotFound as i32);
    assert!(v.token.is_none(), "verify must not reveal the tombstone");

    let e = get(&mut c, &t.id, false).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(reason(&e), "TOKEN_NOT_FOUND");
    let tomb = get(&mut c, &t.id, true).await.unwrap();
    assert_eq!(tomb.status, pb::TokenStatus::Deleted as i32);

    let list = c
        .list_tokens(pb::ListTokensRequest {
            account_id: acc.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(list.tokens.is_empty());
    let with_deleted = c
        .list_tokens(pb::ListTokensRequest {
            account_id: acc.id.clone(),
            show_deleted: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(with_deleted.tokens.len(), 1);

    assert_eq!(
        delete(&mut c, &t.id).await.unwrap_err().code(),
        Code::NotFound
    );
    let enable = c
        .enable_token(pb::EnableTokenRequest {
            id: t.id.clone(),
            etag: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(enable.code(), Code::NotFound);
    let update = c
        .update_token(pb::UpdateTokenRequest {
            token: Some(pb::Token {
                id: t.id.clone(),
                name: "resurrected".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(update.code(), Code::NotFound);
    // The tombstone itself did not change.
    assert_eq!(get(&mut c, &t.id, true).await.unwrap(), tomb);
}

/// A `show_deleted` list counts tombstones per account (without a
/// filter, from counts the store keeps; with one, by matching each), and
/// pages through them with the live tokens in id order: as the deletions
/// are applied, and as a restart reads the counts back.
#[tokio::test]
async fn show_deleted_counts_tombstones_per_account_with_and_without_a_filter() {
    let s = TestServer::start().await;
    let (a, b, none) = (
        create_account(&s, ALL_MODULES).await,
        create_account(&s, ALL_MODULES).await,
        create_account(&s, ALL_MODULES).await,
    );
    let mut c = s.tokens().await;
    let mut made = Vec::new();
    for (acc, name) in [(&a, "a1"), (&a, "a2"), (&a, "a3"), (&b, "b1"), (&b, "b2")] {
        made.push(create_token(&mut c, &acc.id, name).await.0);
    }
    create_token(&mut c, &none.id, "n1").await;
    for t in [&made[0], &made[2], &made[3]] {
        delete(&mut c, &t.id).await.unwrap();
    }
    check_counts(&mut c, [&a.id, &b.id, &none.id]).await;
    let s = s.restart().await;
    check_counts(&mut s.tokens().await, [&a.id, &b.id, &none.id]).await;
}

/// Accounts `a` (a1, a3 deleted, a2), `b` (b1 deleted, b2) and `n` (n1).
async fn check_counts(c: &mut Tokens, [a, b, n]: [&String; 3]) {
    let list = |account: &str, filter: &str, size: i32| pb::ListTokensRequest {
        account_id: account.into(),
        filter: filter.into(),
        page_size: size,
        show_deleted: true,
        ..Default::default()
    };
    // Every page of a list: its tokens' names, and each page's total_size.
    // In id order (ids are random: the names are sorted to compare).
    let mut pages = async |r: pb::ListTokensRequest| {
        let (mut ids, mut names, mut totals, mut r) = (vec![], vec![], vec![], r);
        loop {
            let page = c.list_tokens(r.clone()).await.unwrap().into_inner();
            ids.extend(page.tokens.iter().map(|t| t.id.clone()));
            names.extend(page.tokens.iter().map(|t| t.name.clone()));
            totals.push(page.total_size);
            if page.next_page_token.is_empty() {
                assert!(ids.is_sorted(), "{ids:?}");
                names.sort();
                return (names, totals);
            }
            r.page_token = page.next_page_token;
        }
    };
    let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        pages(list(a, "", 1)).await,
        (names(&["a1", "a2", "a3"]), vec![3; 3])
    );
    assert_eq!(
        pages(list(a, "", 10)).await,
        (names(&["a1", "a2", "a3"]), vec![3])
    );
    assert_eq!(
        pages(list(b, "", 10)).await,
        (names(&["b1", "b2"]), vec![2])
    );
    assert_eq!(pages(list(n, "", 10)).await, (names(&["n1"]), vec![1]));
    let deleted = "status = DELETED";
    assert_eq!(
        pages(list(a, deleted, 1)).await,
        (names(&["a1", "a3"]), vec![2, 2])
    );
    assert_eq!(pages(list(n, deleted, 1)).await, (names(&[]), vec![0]));
    let a3 = "name = \"a3\"";
    assert_eq!(pages(list(a, a3, 10)).await, (names(&["a3"]), vec![1]));
    // Unscoped: the three accounts' and the operator's own token.
    let (all, totals) = pages(list("", "", 2)).await;
    assert_eq!(all.len(), 7);
    assert!(totals.iter().all(|&t| t == 7), "{totals:?}");
}

/// §2.4: etag mismatch → ABORTED and nothing changes; validate_only changes
/// nothing and emits nothing; allow_missing makes missing a no-op.
#[tokio::test]
async fn delete_confirms_the_api_way() {
    let s = TestServer::start().await;
    let acc = create_account(&s, ALL_MODULES).await;
    let mut c = s.tokens().await;
    let (t, secret) = create_token(&mut c, &acc.id, "ci-deploy").await;
    let created_at = head(&mut c).await;
    let mut events = watch_from(&mut c, created_at).await;
    assert_eq!(
        next_change(&mut events).await.r#type,
        EventType::Created as i32
    );

    // A dialog shows the token: validate_only.
    let preview = c
        .delete_token(pb::DeleteTokenRequest {
            id: t.id.clone(),
            etag: t.etag.clone(),
            validate_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(preview.revision, 0);
    let shown = preview.token.unwrap();
    assert_eq!(shown.name, "ci-deploy");
    assert_eq!(
        shown, t,
        "the token as it is, with the etag that confirms it"
    );
    assert_eq!(
        get(&mut c, &t.id, false).await.unwrap().status,
        pb::TokenStatus::Active as i32
    );
    assert!(verify(&mut c, &secret).await.valid);

    // validate_only runs every check: a stale etag or a missing token fails.
    let stale = c
        .delete_token(pb::DeleteTokenRequest {
            id: t.id.clone(),
            etag: "0000000000000000".into(),
            validate_only: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);

    // Someone renames it between the dialog and the confirmation.
    let renamed = rename(&mut c, &t.id, "renamed").await.unwrap();
    let e = c
        .delete_token(pb::DeleteTokenRequest {
            id: t.id.clone(),
            etag: t.etag.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Aborted);
    assert_eq!(reason(&e), "ETAG_MISMATCH");
    assert!(verify(&mut c, &secret).await.valid, "nothing changed");

    // The UPDATED event is next; no event came from validate_only or the refusal.
    let e = next_change(&mut events).await;
    assert_eq!(e.r#type, EventType::Updated as i32);

    let ok = c
        .delete_token(pb::DeleteTokenRequest {
            id: t.id.clone(),
            etag: renamed.etag.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_change(&mut events).await.revision, ok.revision);

    // allow_missing: deleting what is gone (or never existed) is a no-op.
    for id in [t.id.as_str(), "TKN-0000-0000"] {
        let r = c
            .delete_token(pb::DeleteTokenRequest {
                id: id.into(),
                allow_missing: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.revision, 0);
        assert!(r.token.is_none());
        assert_eq!(delete(&mut c, id).await.unwrap_err().code(), Code::NotFound);
    }
    // Nothing else reached the stream.
    let quiet = tokio::time::timeout(Duration::from_millis(300), events.message()).await;
    assert!(quiet.is_err(), "no event for no-ops: {quiet:?}");
}

/// §2.5: the response is enough to print the confirmation message.
#[tokio::test]
async fn the_response_carries_the_tombstone_and_the_event_revision() {
    let s = TestServer::start().await;
    let acc = create_account(&s, ALL_MODULES).await;
    let mut c = s.tokens().await;
    let (t, _) = create_token(&mut c, &acc.id, "ci-deploy").await;
    let r = delete(&mut c, &t.id).await.unwrap();
    let tomb = r.token.as_ref().unwrap();
    let message = format!("API token '{}' ({}) was deleted.", tomb.name, tomb.id);
    assert_eq!(
        message,
        format!("API token 'ci-deploy' ({}) was deleted.", t.id)
    );
    assert!(r.revision > 0);
    // The revision is the deletion event's, replayable from the log.
    let mut replay = watch_from(&mut c, r.revision).await;
    let e = next_change(&mut replay).await;
    assert_eq!(
        (e.revision, e.r#type),
        (r.revision, EventType::Deleted as i32)
    );
}

/// §2.6: every open stream that may see the token hears of the deletion;
/// a stream for another account does not.
#[tokio::test]
async fn every_watcher_hears_of_the_deletion() {
    let s = TestServer::start().await;
    let acc = create_account(&s, ALL_MODULES).await;
    let other = create_account(&s, ALL_MODULES).await;
    let mut c = s.tokens().await;
    let (t, _) = create_token(&mut c, &acc.id, "ci-deploy").await;
    let mut watchers = Vec::new();
    for req in [
        pb::WatchTokensRequest::default(),
        pb::WatchTokensRequest {
            account_id: acc.id.clone(),
            ..Default::default()
        },
        pb::WatchTokensRequest {
            types: vec![EventType::Deleted as i32],
            ..Default::default()
        },
    ] {
        watchers.push(watch(&mut s.tokens().await, req).await);
    }
    let mut elsewhere = watch(
        &mut c,
        pb::WatchTokensRequest {
            account_id: other.id.clone(),
            ..Default::default()
        },
    )
    .await;
    let r = delete(&mut c, &t.id).await.unwrap();
    for w in &mut watchers {
        let e = next_change(w).await;
        assert_eq!(
            (e.r#type, e.revision),
            (EventType::Deleted as i32, r.revision)
        );
        assert_eq!(e.actor, operator_id(&mut c).await);
        assert!(e.time.is_some());
    }
    let quiet = tokio::time::timeout(Duration::from_millis(300), elsewhere.message()).await;
    assert!(quiet.is_err(), "another account's stream saw the deletion");
}

/// 50 concurrent deletes of one token: exactly one succeeds, exactly one event.
#[tokio::test]
async fn fifty_concurrent_deletes_of_one_token() {
    let s = TestServer::start().await;
    let acc = create_account(&s, ALL_MODULES).await;
    let mut c = s.tokens().await;
    let (t, _) = create_token(&mut c, &acc.id, "contended").await;
    let mut events = watch(&mut c, pb::WatchTokensRequest::default()).await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let mut c = s.tokens().await;
        let id = t.id.clone();
        set.spawn(async move { delete(&mut c, &id).await });
    }
    let (mut ok, mut not_found) = (0, 0);
    while let Some(r) = set.join_next().await {
        match r.unwrap() {
            Ok(_) => ok += 1,
            Err(e) if e.code() == Code::NotFound => not_found += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!((ok, not_found), (1, 49));
    assert_eq!(
        next_change(&mut events).await.r#type,
        EventType::Deleted as i32
    );
    let quiet = tokio::time::timeout(Duration::from_millis(300), events.message()).await;
    assert!(quiet.is_err(), "a second DELETED event");
}
