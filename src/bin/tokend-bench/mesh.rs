//! tokend alone, as a mesh uses it (etcd has no counterpart): Envoy's
//! ext_authz `Check`, and how soon a `TokenCache` in another process
//! refuses a secret after its delete was answered.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use tokend::client::{CacheConfig, TokenCache, Verdict};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tonic::transport::Channel;

use crate::peers::{Item, Peer, Tokend};
use crate::scenarios::{Call, Latency, Throughput, closed_loop, histogram};

/// A sidecar asking about a request that carries an item's secret.
struct Check(AuthorizationClient<Channel>);

impl Call for Check {
    async fn call(&self, item: &Item) {
        let headers = HashMap::from([(
            "authorization".to_string(),
            format!("Bearer {}", item.secret),
        )]);
        let request = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(HttpRequest {
                        method: "GET".into(),
                        path: "/".into(),
                        headers,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        let r = self.0.clone().check(request).await.expect("check");
        let code = r.into_inner().status.map_or(-1, |s| s.code);
        assert_eq!(code, 0, "a seeded token is allowed");
    }
}

/// `clients` sidecars, each on its own connection, Check requests carrying
/// random seeded secrets for `how_long`.
pub async fn checks(
    tokend: &Arc<Tokend>,
    items: &Arc<Vec<Item>>,
    clients: usize,
    how_long: Duration,
) -> Throughput {
    let mut callers = Vec::new();
    for _ in 0..clients {
        callers.push(Check(AuthorizationClient::new(tokend.channel().await)));
    }
    closed_loop(tokend.pid(), callers, items, how_long).await
}

/// Deletes `items` one at a time, `pace` apart, while a `TokenCache` in a
/// child process (this binary, `--cache-probe`) watches: for each, the
/// time from the delete's answer to the cache's first refusal. The clocks
/// agree: both processes read the same system clock.
pub async fn cache_refusal(tokend: &Arc<Tokend>, items: &[Item], pace: Duration) -> Latency {
    let mut probe = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--cache-probe", &tokend.url])
        .env("TOKEND_BENCH_CREDENTIAL", &tokend.credential)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("cache probe");
    let mut stdin = probe.stdin.take().unwrap();
    for item in items {
        stdin
            .write_all(format!("{}\n", item.secret).as_bytes())
            .await
            .unwrap();
    }
    drop(stdin);
    let mut lines = BufReader::new(probe.stdout.take().unwrap()).lines();
    let ready = lines.next_line().await.unwrap();
    assert_eq!(ready.as_deref(), Some("ready"), "cache probe");

    let c = tokend.connect().await;
    let mut answered = Vec::new();
    for item in items {
        tokio::time::sleep(pace).await;
        Tokend::delete(&c, item).await;
        answered.push(unix_nanos(SystemTime::now()));
    }
    let mut h = histogram();
    for at in answered {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("a refusal per delete");
        let refused: i128 = line.parse().expect("nanoseconds");
        // The cache may hear the event before the deleter hears its answer.
        h.record(((refused - at) / 1000).max(1) as u64).unwrap();
    }
    Latency::of(&h)
}

fn unix_nanos(t: SystemTime) -> i128 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as i128
}

/// The child side of [`cache_refusal`]: reads secrets from stdin, warms a
/// cache with them, says `ready`, then prints, in order, when each one is
/// refused.
pub async fn cache_probe(url: String) {
    let credential = std::env::var("TOKEND_BENCH_CREDENTIAL").expect("credential");
    let mut secrets = Vec::new();
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = stdin.next_line().await.unwrap() {
        secrets.push(line);
    }
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    let cache = TokenCache::connect(channel, &credential, CacheConfig::default())
        .await
        .expect("cache connects");
    for s in &secrets {
        let v = cache.verify(s).await.unwrap();
        assert!(matches!(v, Verdict::Valid { .. }), "{v:?}");
    }
    println!("ready");
    for s in &secrets {
        loop {
            let seen = cache.revision();
            if !matches!(cache.verify(s).await.unwrap(), Verdict::Valid { .. }) {
                println!("{}", unix_nanos(SystemTime::now()));
                break;
            }
            cache.caught_up(seen + 1).await;
        }
    }
}
