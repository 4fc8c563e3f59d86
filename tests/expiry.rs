//! Tokens that expire: refused by every verifier at the instant (the
//! server's VerifyToken, ext_authz Check, API authentication, and a
//! `TokenCache` in this process with no server call), then deleted by
//! tokend itself as the actor `expiry`, heard by watchers like any delete,
//! across restarts; and the account's limit on lifetimes. Against a real
//! `tokend` process, on sled or (second pass) etcd.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use tokend::client::Verdict;
use tokend::proto::{self as pb, create_token_request::Expiration};

/// Creates a token with `modules` that expires `ttl` from now.
async fn issue_expiring(
    c: &mut Tokens,
    account_id: &str,
    modules: &[&str],
    ttl: Duration,
) -> (pb::Token, String) {
    let r = c
        .create_token(pb::CreateTokenRequest {
            account_id: account_id.into(),
            name: "short lived".into(),
            modules: modules.iter().map(|m| m.to_string()).collect(),
            expiration: Some(Expiration::Ttl(ttl.try_into().unwrap())),
            ..Default::default()
        })
        .await
        .expect("token created")
        .into_inner();
    (r.token.unwrap(), r.secret)
}

fn expire_time(t: &pb::Token) -> SystemTime {
    SystemTime::try_from(t.expire_time.unwrap()).unwrap()
}

/// Sleeps until just past `t`'s expiry.
async fn until_expired(t: &pb::Token) {
    let left = expire_time(t)
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(20)).await;
}

/// Sets (or, with `None`, removes) a token's expiry.
async fn set_expiry(
    c: &mut Tokens,
    id: &str,
    at: Option<SystemTime>,
) -> Result<pb::Token, tonic::Status> {
    c.update_token(pb::UpdateTokenRequest {
        token: Some(pb::Token {
            id: id.into(),
            expire_time: at.map(Into::into),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["expire_time".into()],
        }),
        etag: String::new(),
    })
    .await
    .map(|r| r.into_inner())
}

/// A token's DELETED event on `events`, waiting at most `within`.
async fn deletion(events: &mut Events, id: &str, within: Duration) -> pb::TokenEvent {
    tokio::time::timeout(within, async {
        loop {
            let e = next_change(events).await;
            if e.r#type == pb::EventType::Deleted as i32 && e.token.as_ref().unwrap().id == id {
                return e;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no DELETED event for {id} within {within:?}"))
}

#[tokio::test]
async fn every_verifier_refuses_a_token_at_its_expiry_before_tokend_deletes_it() {
    let dir = tempfile::tempdir().unwrap();
    // tokend's own deletion would come an hour later: whatever refuses the
    // secret below decides from the expiry alone.
    let p = spawn_tokend(dir.path(), &["--expiry-check", "1h"]).await;
    let acc = new_account(&mut p.accounts().await, ALL_MODULES).await;
    let mut c = p.tokens().await;
    // Long enough for the checks before the expiry below (new connections,
    // a cache), on a loaded machine and on etcd too; the test sleeps until
    // it anyway.
    let ttl = Duration::from_secs(6);
    let (t, secret) = issue_expiring(&mut c, &acc.id, &["access-management"], ttl).await;
    let created =
        SystemTime::try_from(t.audit.clone().unwrap().created.unwrap().at.unwrap()).unwrap();
    assert_eq!(
        expire_time(&t),
        created + ttl,
        "a lifetime counts from the commit"
    );

    let cache = p.operator_cache().await;
    // First from the server, then from memory: both show the expiry.
    for _ in 0..2 {
        match cache.verify(&secret).await.unwrap() {
            Verdict::Valid {
                expire_time: at, ..
            } => {
                assert_eq!(at, Some(expire_time(&t)), "the cache shows the expiry")
            }
            other => panic!("{other:?}"),
        }
    }
    let asked = cache.stats().server_verifications;
    assert_eq!(asked, 1, "the second answer came from memory");
    assert_eq!(
        verify(&mut c, &secret).await.result,
        pb::VerifyResult::Valid as i32
    );
    assert_eq!(
        authz_check(&p.url(), &secret).await.0,
        0,
        "Check allows it before"
    );
    let mut own = tokens_at(&p.url(), bearer(&secret)).await;
    own.get_token(pb::GetTokenRequest {
        id: t.id.clone(),
        show_deleted: false,
    })
    .await
    .expect("the token authenticates before its expiry");

    until_expired(&t).await;
    assert_eq!(cache.verify(&secret).await.unwrap(), Verdict::Expired);
    assert_eq!(
        cache.stats().server_verifications,
        asked,
        "the cache decided from its own clock, without asking the server"
    );
    let v = verify(&mut c, &secret).await;
    assert_eq!(v.result, pb::VerifyResult::Expired as i32, "{v:?}");
    assert!(!v.valid);
    assert_eq!(v.token.unwrap().id, t.id);
    assert_eq!(
        authz_check(&p.url(), &secret).await,
        (16, "token_expired".to_string())
    );
    let refused = own
        .get_token(pb::GetTokenRequest {
            id: t.id.clone(),
            show_deleted: false,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert_eq!(reason(&refused), "CREDENTIAL_EXPIRED");

    // Not deleted yet, and nothing can bring it back.
    let now = get(&mut c, &t.id, false).await.unwrap();
    assert_eq!(now.status, pb::TokenStatus::Active as i32);
    let later = SystemTime::now() + Duration::from_secs(3600);
    let revived = set_expiry(&mut c, &t.id, Some(later)).await.unwrap_err();
    assert_eq!(revived.code(), tonic::Code::FailedPrecondition);
    assert_eq!(reason(&revived), "TOKEN_EXPIRED");
    assert_eq!(
        get(&mut c, &t.id, false).await.unwrap().etag,
        now.etag,
        "unchanged"
    );
}

#[tokio::test]
async fn tokend_deletes_an_expired_token_as_expiry_and_watchers_hear_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_tokend(dir.path(), &["--expiry-check", "100ms"]).await;
    let acc = new_account(&mut p.accounts().await, ALL_MODULES).await;
    let mut c = p.tokens().await;
    let (kept, kept_secret) = create_token(&mut c, &acc.id, "forever").await;
    let mut events = watch(&mut c, pb::WatchTokensRequest::default()).await;
    let (t, secret) = issue_expiring(&mut c, &acc.id, &["commerce"], Duration::from_secs(1)).await;

    let e = deletion(&mut events, &t.id, Duration::from_secs(10)).await;
    assert_eq!(e.actor, "expiry");
    let tombstone = e.token.unwrap();
    assert_eq!(tombstone.status, pb::TokenStatus::Deleted as i32);
    let deleted = tombstone.audit.unwrap().deleted.unwrap();
    assert_eq!(deleted.by, "expiry");
    let late = SystemTime::try_from(deleted.at.unwrap())
        .unwrap()
        .duration_since(expire_time(&t))
        .expect("deleted after its expiry, never before");
    eprintln!("deleted {late:?} after its expiry (--expiry-check 100ms)");
    assert_eq!(
        verify(&mut c, &secret).await.result,
        pb::VerifyResult::NotFound as i32
    );
    assert_eq!(
        get(&mut c, &t.id, true).await.unwrap().status,
        pb::TokenStatus::Deleted as i32
    );
    assert_eq!(
        verify(&mut c, &kept_secret).await.result,
        pb::VerifyResult::Valid as i32
    );
    assert_eq!(get(&mut c, &kept.id, false).await.unwrap().revision, 1);
}

#[tokio::test]
async fn a_token_that_expired_while_tokend_was_down_is_refused_and_deleted_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn_tokend(dir.path(), &["--expiry-check", "1h"]).await;
    let acc = new_account(&mut p.accounts().await, ALL_MODULES).await;
    let mut c = p.tokens().await;
    let (t, secret) = issue_expiring(&mut c, &acc.id, &["commerce"], Duration::from_secs(1)).await;
    let before = head(&mut c).await;
    p.terminate();

    until_expired(&t).await;
    // An hour between passes: only the pass at start-up can delete it.
    let p = spawn_tokend(dir.path(), &["--expiry-check", "1h"]).await;
    let mut c = p.tokens().await;
    let mut events = watch_from(&mut c, before + 1).await;
    let e = deletion(&mut events, &t.id, Duration::from_secs(10)).await;
    assert_eq!(e.actor, "expiry");
    assert_eq!(
        verify(&mut c, &secret).await.result,
        pb::VerifyResult::NotFound as i32
    );
}

#[tokio::test]
async fn an_accounts_max_lifetime_bounds_its_tokens_and_lists_find_what_lapses() {
    let s = TestServer::start().await;
    let day = Duration::from_secs(24 * 3600);
    let acc = s
        .accounts()
        .await
        .create_account(pb::CreateAccountRequest {
            name: "Limited".into(),
            r#type: pb::AccountType::Client as i32,
            modules: vec!["commerce".into()],
            max_token_lifetime: Some(Duration::from_secs(30 * 24 * 3600).try_into().unwrap()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acc.max_token_lifetime.unwrap().seconds, 30 * 24 * 3600);
    let mut c = s.tokens().await;

    // No expiry asked: the account's limit gives one.
    let (t, _) = create_token(&mut c, &acc.id, "defaulted").await;
    let created =
        SystemTime::try_from(t.audit.clone().unwrap().created.unwrap().at.unwrap()).unwrap();
    assert_eq!(expire_time(&t), created + 30 * day);
    let (short, _) = issue_expiring(&mut c, &acc.id, &["commerce"], day).await;

    let before = head(&mut c).await;
    let refusals = [
        (
            Some(Expiration::Ttl((31 * day).try_into().unwrap())),
            tonic::Code::FailedPrecondition,
            "LIFETIME_EXCEEDED",
        ),
        (
            Some(Expiration::Ttl(prost_types::Duration {
                seconds: 0,
                nanos: 0,
            })),
            tonic::Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
        (
            Some(Expiration::Ttl(prost_types::Duration {
                seconds: -5,
                nanos: 0,
            })),
            tonic::Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
        (
            Some(Expiration::ExpireTime((SystemTime::now() - day).into())),
            tonic::Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
        (
            Some(Expiration::ExpireTime(prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: 0,
            })),
            tonic::Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
    ];
    for (expiration, code, why) in refusals {
        let e = c
            .create_token(pb::CreateTokenRequest {
                account_id: acc.id.clone(),
                name: "refused".into(),
                expiration,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), reason(&e).as_str()),
            (code, why),
            "{expiration:?}: {}",
            e.message()
        );
    }
    // Removing an expiry is exceeding the limit too.
    let e = set_expiry(&mut c, &t.id, None).await.unwrap_err();
    assert_eq!(reason(&e), "LIFETIME_EXCEEDED", "{}", e.message());
    assert_eq!(head(&mut c).await, before, "nothing refused was written");

    // What lapses within two days: the short one only.
    let soon = humantime::format_rfc3339(SystemTime::now() + 2 * day).to_string();
    let listed = |filter: String| {
        let mut c = c.clone();
        let account_id = acc.id.clone();
        async move {
            c.list_tokens(pb::ListTokensRequest {
                account_id,
                filter,
                ..Default::default()
            })
            .await
            .map(|r| {
                r.into_inner()
                    .tokens
                    .into_iter()
                    .map(|t| t.id)
                    .collect::<Vec<_>>()
            })
        }
    };
    assert_eq!(
        listed(format!("expire_time < \"{soon}\"")).await.unwrap(),
        vec![short.id.clone()]
    );
    let mut later = listed(format!("expire_time > \"{soon}\"")).await.unwrap();
    later.sort();
    assert_eq!(later, vec![t.id.clone()]);
    let bad = listed("expire_time < soon".into()).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
}
