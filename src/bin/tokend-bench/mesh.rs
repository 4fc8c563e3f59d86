//! tokend alone, as a mesh uses it (etcd has no counterpart): Envoy's
//! ext_authz `Check`, and how soon a `TokenCache` in another process
//! refuses a secret after its delete was answered, or after a leak report
//! naming it was sent (and how soon `Check` does).

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

use crate::peers::{Item, Peer, TokenClient, Tokend};
use crate::scenarios::{Call, Latency, Throughput, closed_loop, histogram};
use tokend::proto as pb;

/// A sidecar asking about a request that carries an item's secret.
struct Check(AuthorizationClient<Channel>);

impl Check {
    /// Whether a request carrying `item`'s secret is let through.
    async fn allows(client: &AuthorizationClient<Channel>, item: &Item) -> bool {
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
        let r = client.clone().check(request).await.expect("check");
        r.into_inner().status.map_or(-1, |s| s.code) == 0
    }
}

impl Call for Check {
    async fn call(&self, item: &Item) {
        assert!(
            Check::allows(&self.0, item).await,
            "a seeded token is allowed"
        );
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

/// How a watched secret is revoked, and from when the wait is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revocation {
    /// `DeleteToken`, counted from its answer.
    Delete,
    /// `ReportLeakedSecrets` naming the secret, counted from sending it:
    /// the reporter's view, the whole round trip included.
    LeakReport,
}

/// A leak report naming `item`'s secret, as an operator's scanner sends it.
async fn report_leak(c: &TokenClient, item: &Item) {
    let r = c
        .clone()
        .report_leaked_secrets(pb::ReportLeakedSecretsRequest {
            secrets: vec![pb::LeakedSecret {
                secret: item.secret.clone(),
                url: "https://example.com/bench".into(),
                source: "bench".into(),
            }],
        })
        .await
        .expect("leak report")
        .into_inner();
    assert!(r.verdicts[0].true_positive, "a seeded secret is live");
}

/// Revokes `items` one at a time, `pace` apart, while a `TokenCache` in a
/// child process (this binary, `--cache-probe`) watches: for each, the
/// time from the revocation (see [`Revocation`]) to the cache's first
/// refusal. The clocks agree: both processes read the same system clock.
pub async fn cache_refusal(
    tokend: &Arc<Tokend>,
    items: &[Item],
    pace: Duration,
    how: Revocation,
) -> Latency {
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
        let sent = unix_nanos(SystemTime::now());
        match how {
            Revocation::Delete => {
                Tokend::delete(&c, item).await;
                answered.push(unix_nanos(SystemTime::now()));
            }
            Revocation::LeakReport => {
                report_leak(&c, item).await;
                answered.push(sent);
            }
        }
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

/// For each of `items`, one at a time: from sending a leak report naming
/// its secret to the first `Check` that denies a request carrying it.
pub async fn check_refusal_after_report(tokend: &Arc<Tokend>, items: &[Item]) -> Latency {
    let c = tokend.connect().await;
    let authz = AuthorizationClient::new(tokend.channel().await);
    let mut h = histogram();
    for item in items {
        let sent = std::time::Instant::now();
        report_leak(&c, item).await;
        while Check::allows(&authz, item).await {}
        h.record((sent.elapsed().as_micros() as u64).max(1))
            .unwrap();
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
