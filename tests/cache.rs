//! `tokend::client::TokenCache` against a real server: a verifier in the
//! caller's memory that the watch stream keeps current.

mod common;

use std::time::Duration;

use common::*;
use tokend::client::{CacheConfig, CacheError, TokenCache, Verdict};
use tokend::proto as pb;

/// A server on a fixed port, so that the cache reconnects to its restart.
async fn server(retention: u64) -> TestServer {
    let addr = free_addr();
    TestServer::start_with(move |c| {
        c.listen = addr;
        c.retention = retention;
    })
    .await
}

async fn cache(s: &TestServer, config: CacheConfig) -> TokenCache {
    TokenCache::connect(s.channel().await, &operator_secret(s.data_dir()), config)
        .await
        .expect("cache connects")
}

fn valid(v: &Verdict, token_id: &str) {
    match v {
        Verdict::Valid { token_id: id, .. } => assert_eq!(id, token_id),
        other => panic!("expected valid, got {other:?}"),
    }
}

#[tokio::test]
async fn secrets_met_once_are_verified_locally_and_a_delete_applies_at_its_event() {
    let s = server(1000).await;
    let acc = create_account(&s, ALL_MODULES).await;
    let mut c = s.tokens().await;
    let (t, secret) = issue(&mut c, &acc.id, "gw", &["billing"]).await;
    let (o, other) = create_token(&mut c, &acc.id, "other").await;
    let cache = cache(&s, CacheConfig::default()).await;
    // The test's own view of the changes, for their revisions.
    let mut events = watch(&mut c, pb::WatchTokensRequest::default()).await;

    let v = cache.verify(&secret).await.unwrap();
    assert_eq!(
        v,
        Verdict::Valid {
            token_id: t.id.clone(),
            account_id: acc.id.clone(),
            modules: vec!["billing".into()],
            expire_time: None,
        }
    );
    assert_eq!(cache.stats().server_verifications, 1);
    for _ in 0..100 {
        valid(&cache.verify(&secret).await.unwrap(), &t.id);
    }
    assert_eq!(
        cache.stats().server_verifications,
        1,
        "met before: answered from memory"
    );
    assert_eq!(cache.verify("tkn_nope").await.unwrap(), Verdict::Malformed);
    valid(&cache.verify(&other).await.unwrap(), &o.id);

    // Disable, enable, delete: each applies as soon as its event is in,
    // without asking the server.
    let asked = cache.stats().server_verifications;
    c.disable_token(pb::DisableTokenRequest {
        id: t.id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    cache
        .caught_up(next_change(&mut events).await.revision)
        .await;
    assert_eq!(cache.verify(&secret).await.unwrap(), Verdict::Disabled);

    c.enable_token(pb::EnableTokenRequest {
        id: t.id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    cache
        .caught_up(next_change(&mut events).await.revision)
        .await;
    valid(&cache.verify(&secret).await.unwrap(), &t.id);

    let deleted = delete(&mut c, &t.id).await.unwrap();
    cache.caught_up(deleted.revision).await;
    assert_eq!(cache.verify(&secret).await.unwrap(), Verdict::NotFound);
    assert_eq!(
        cache.stats().server_verifications,
        asked,
        "disable, enable and delete were all decided locally"
    );
    valid(&cache.verify(&other).await.unwrap(), &o.id);
}

#[tokio::test]
async fn a_restart_is_resumed_from_the_last_revision_without_losing_a_delete() {
    let s = server(1000).await;
    let acc = create_account(&s, ALL_MODULES).await;
    let mut c = s.tokens().await;
    let (t, secret) = create_token(&mut c, &acc.id, "in-use").await;
    let cache = cache(
        &s,
        CacheConfig {
            retry: Duration::from_millis(300),
            ..Default::default()
        },
    )
    .await;
    valid(&cache.verify(&secret).await.unwrap(), &t.id);

    // The server restarts; the delete lands before the cache is back.
    let s = s.restart().await;
    let mut c = s.tokens().await;
    let deleted = delete(&mut c, &t.id).await.unwrap();
    cache.caught_up(deleted.revision).await;

    assert_eq!(cache.verify(&secret).await.unwrap(), Verdict::NotFound);
    let stats = cache.stats();
    assert!(stats.resumes >= 1, "{stats:?}");
    assert_eq!(stats.resyncs, 0, "resumed, not listed again: {stats:?}");
    assert_eq!(stats.server_verifications, 1);
}

#[tokio::test]
async fn a_compacted_resume_point_makes_the_cache_list_again() {
    if sled_only("--retention compaction (etcd's: tests/replicas.rs)") {
        return;
    }
    // The server keeps 5 events; the cache misses more than that.
    let s = server(5).await;
    let acc = create_account(&s, ALL_MODULES).await;
    let mut c = s.tokens().await;
    let (gone, gone_secret) = create_token(&mut c, &acc.id, "gone").await;
    let (kept, kept_secret) = create_token(&mut c, &acc.id, "kept").await;
    let cache = cache(
        &s,
        CacheConfig {
            retry: Duration::from_secs(1),
            ..Default::default()
        },
    )
    .await;
    valid(&cache.verify(&gone_secret).await.unwrap(), &gone.id);
    valid(&cache.verify(&kept_secret).await.unwrap(), &kept.id);

    // While the cache is away, the writes happen on another port (the same
    // data), so that no retry of the cache can reach them live; then the
    // server is back where the cache looks.
    let port = s.addr;
    let dir = s.stop().await;
    let elsewhere = TestServer::start_in_with(dir, move |c| c.retention = 5).await;
    let mut c = elsewhere.tokens().await;
    let deleted = delete(&mut c, &gone.id).await.unwrap();
    for i in 0..10 {
        create_token(&mut c, &acc.id, &format!("filler {i}")).await;
    }
    drop(c);
    let dir = elsewhere.stop().await;
    let _s = TestServer::start_in_with(dir, move |c| {
        c.listen = port;
        c.retention = 5;
    })
    .await;
    cache.caught_up(deleted.revision + 10).await;

    let stats = cache.stats();
    assert_eq!(stats.resyncs, 1, "{stats:?}");
    assert_eq!(cache.verify(&gone_secret).await.unwrap(), Verdict::NotFound);
    valid(&cache.verify(&kept_secret).await.unwrap(), &kept.id);
    assert_eq!(
        cache.stats().server_verifications,
        2,
        "the deletion was learnt from the listing"
    );
}

#[tokio::test]
async fn a_cache_cut_off_longer_than_its_bound_fails_closed_then_recovers() {
    let s = server(1000).await;
    let acc = create_account(&s, ALL_MODULES).await;
    let mut c = s.tokens().await;
    let (t, secret) = create_token(&mut c, &acc.id, "svc").await;
    // Room for the checks within it on a loaded machine: the staleness
    // clock starts when the stream breaks, during the stop.
    let bound = Duration::from_secs(3);
    let revalidate = Duration::from_millis(100);
    let cache = cache(
        &s,
        CacheConfig {
            max_staleness: bound,
            retry: Duration::from_millis(100),
            revalidate_after: revalidate,
            ..Default::default()
        },
    )
    .await;
    valid(&cache.verify(&secret).await.unwrap(), &t.id);

    let addr = s.url();
    let dir = s.stop().await;
    // Within the bound it still answers what it knows, a secret due for
    // re-confirmation too: the server's absence is no reason to refuse it.
    let stopped = std::time::Instant::now();
    valid(&cache.verify(&secret).await.unwrap(), &t.id);
    tokio::time::sleep(revalidate * 2).await;
    let asked = cache.stats().server_verifications;
    valid(&cache.verify(&secret).await.unwrap(), &t.id);
    assert_eq!(
        cache.stats().server_verifications,
        asked + 1,
        "it was due, and tried the server first"
    );
    assert!(stopped.elapsed() < bound, "the test itself ran too slowly");
    tokio::time::sleep(bound.saturating_sub(stopped.elapsed()) + Duration::from_millis(200)).await;
    match cache.verify(&secret).await {
        Err(CacheError::Stale(down)) => assert!(down > bound, "{down:?}"),
        other => panic!("expected a stale refusal, got {other:?}"),
    }

    // Back on the same port and data: the cache reconnects and answers again.
    let addr: std::net::SocketAddr = addr.trim_start_matches("http://").parse().unwrap();
    let _s = TestServer::start_in_with(dir, move |c| c.listen = addr).await;
    for _ in 0..500 {
        if cache.verify(&secret).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    valid(&cache.verify(&secret).await.unwrap(), &t.id);
    assert!(cache.stats().resumes >= 1);
}
