//! Overload: 2,000 watch streams on the real binary, half of which never
//! read, while tokens are created and deleted. The stalled half must cost
//! bounded memory and must not slow the readers; each stalled stream later
//! gets every event it missed, in order (or OUT_OF_RANGE once retention has
//! dropped them); the 2,001st stream is refused with RESOURCE_EXHAUSTED; and
//! health checks are answered throughout.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokend::proto as pb;
use tokend::proto::token_service_client::TokenServiceClient;
use tokio::task::JoinSet;

const STREAMS: usize = 2_000;
/// Streams per HTTP/2 connection (the server allows 1,024).
const PER_CONNECTION: usize = 200;
/// Create + delete pairs per second while the streams are open.
const RATE: u64 = 25;
const DESCRIPTION: usize = 1_000;

/// Event revisions and when each reached a reader.
type Receipts = Vec<(i64, Instant)>;

/// `n` streams on connections of `PER_CONNECTION` each. A stalled client is
/// one that stops reading: once its HTTP/2 windows (hyper's defaults, 5 MB a
/// connection) are full, the server is the one left holding what it buffers.
async fn open_streams(url: &str, bearer: &Bearer, n: usize) -> Vec<Events> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n.div_ceil(PER_CONNECTION) {
        let mut c = TokenServiceClient::with_interceptor(connect(url).await, bearer.clone());
        for _ in 0..PER_CONNECTION.min(n - streams.len()) {
            streams.push(watch(&mut c, pb::WatchTokensRequest::default()).await);
        }
    }
    streams
}

/// Creates and deletes tokens at `RATE` pairs/s for `how_long`; returns
/// when each delete was sent, by the revision of its event.
async fn load(c: &mut Tokens, account: &str, how_long: Duration) -> HashMap<i64, Instant> {
    let mut sent = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    let end = Instant::now() + how_long;
    while Instant::now() < end {
        tick.tick().await;
        let (t, _) = c
            .create_token(pb::CreateTokenRequest {
                account_id: account.into(),
                name: "load".into(),
                description: "d".repeat(DESCRIPTION),
                modules: vec!["commerce".into()],
                ..Default::default()
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                (r.token.unwrap(), r.secret)
            })
            .expect("create under load");
        let at = Instant::now();
        let r = delete(c, &t.id).await.expect("delete under load");
        sent.insert(r.revision, at);
    }
    sent
}

/// p50, p99 and max of the delete-to-receipt latencies, in ms.
fn latencies(sent: &HashMap<i64, Instant>, receipts: &[Receipts]) -> (f64, f64, f64) {
    let mut ms: Vec<f64> = receipts
        .iter()
        .flatten()
        .filter_map(|(rev, at)| sent.get(rev).map(|s| (*at - *s).as_secs_f64() * 1e3))
        .collect();
    assert!(!ms.is_empty(), "the readers heard the deletes");
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99), ms[ms.len() - 1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_streams_half_stalled() {
    let dir = tempfile::tempdir().unwrap();
    // A hub ring of 16 events: a stalled stream soon falls off it, so
    // catching up is the log's job, the path that costs no memory per stream.
    let cap = STREAMS.to_string();
    let flags = ["--max-watchers", &cap, "--hub-capacity", "16"];
    let p = spawn_tokend(dir.path(), &flags).await;
    let url = p.url();
    let bearer = bearer(&operator_secret(&p.dir));
    let account = new_account(&mut p.accounts().await, ALL_MODULES).await.id;
    let mut c = p.tokens().await;
    let rss_idle = p.rss_kib();

    // Health, polled on its own connection from start to end.
    let stop = Arc::new(AtomicBool::new(false));
    let health = {
        let (url, stop) = (url.clone(), stop.clone());
        tokio::spawn(async move {
            let mut h = tonic_health::pb::health_client::HealthClient::new(connect(&url).await);
            let (mut checks, mut slowest) = (0, Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    h.check(tonic_health::pb::HealthCheckRequest::default()),
                )
                .await
                .expect("health answers within 10 s")
                .expect("health answers OK")
                .into_inner();
                assert_eq!(r.status, 1, "SERVING");
                slowest = slowest.max(t.elapsed());
                checks += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (checks, slowest)
        })
    };

    // Readers: record when each event arrives.
    let readers = open_streams(&url, &bearer, STREAMS / 2).await;
    let receipts: Vec<Arc<Mutex<Receipts>>> =
        (0..readers.len()).map(|_| Default::default()).collect();
    let mut reading = JoinSet::new();
    for (mut s, r) in readers.into_iter().zip(receipts.iter().cloned()) {
        reading.spawn(async move {
            while let Ok(Some(e)) = s.message().await {
                r.lock().unwrap().push((e.revision, Instant::now()));
            }
        });
    }
    // Once every reader has heard the load's last delete (30 s at most: a
    // reader held up behind the stalled streams would wait for ever), what
    // each heard, every delete included.
    let heard_all = |sent: HashMap<i64, Instant>| {
        let receipts = &receipts;
        async move {
            let last = *sent.keys().max().unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            let heard = |r: &Mutex<Receipts>| r.lock().unwrap().last().is_some_and(|e| e.0 >= last);
            while !receipts.iter().all(|r| heard(r)) {
                assert!(
                    Instant::now() < deadline,
                    "a reader never heard revision {last}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let taken: Vec<Receipts> = receipts
                .iter()
                .map(|r| std::mem::take(&mut *r.lock().unwrap()))
                .collect();
            for r in &taken {
                let got: HashSet<i64> = r
                    .iter()
                    .map(|e| e.0)
                    .filter(|rev| sent.contains_key(rev))
                    .collect();
                assert_eq!(got.len(), sent.len(), "a reader missed deletes");
            }
            (latencies(&sent, &taken), last)
        }
    };

    // Baseline: only readers.
    let sent = load(&mut c, &account, Duration::from_secs(2)).await;
    let (baseline, _) = heard_all(sent).await;
    let rss_readers = p.rss_kib();

    // Now 1,000 streams that never read, then the same load again.
    let first_missed = head(&mut c).await + 1;
    let stalled = open_streams(&url, &bearer, STREAMS / 2).await;
    let refused = c
        .watch_tokens(pb::WatchTokensRequest::default())
        .await
        .expect_err("stream 2,001 is refused");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    let mut rss_peak = p.rss_kib();
    let sampling = {
        let pid = p.child.id();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(rss_of_pid(pid));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        })
    };
    let sent = load(&mut c, &account, Duration::from_secs(4)).await;
    // The last event of the load is its last delete (`head` would need a
    // stream, and all 2,000 are taken).
    let (loaded, last) = heard_all(sent).await;
    stop.store(true, Ordering::Relaxed);
    rss_peak = rss_peak.max(sampling.await.unwrap());
    let (checks, slowest_health) = health.await.unwrap();

    println!(
        "RSS: idle {} MiB, +1,000 readers {} MiB, peak with 1,000 stalled {} MiB",
        rss_idle / 1024,
        rss_readers / 1024,
        rss_peak / 1024
    );
    println!(
        "delete→reader latency (ms) p50/p99/max: readers alone {:.1}/{:.1}/{:.1}, \
         with 1,000 stalled {:.1}/{:.1}/{:.1}",
        baseline.0, baseline.1, baseline.2, loaded.0, loaded.1, loaded.2
    );
    println!("health: {checks} checks, slowest {slowest_health:?}");

    // Each stalled stream now reads: every event since it opened, in order,
    // or OUT_OF_RANGE if retention dropped what it missed.
    let (mut caught_up, mut out_of_range) = (0, 0);
    let mut draining = JoinSet::new();
    for mut s in stalled {
        draining.spawn(async move {
            let mut next = first_missed;
            loop {
                let e = match tokio::time::timeout(Duration::from_secs(30), s.message()).await {
                    Err(_) => panic!("a stalled stream stayed silent at revision {next}"),
                    Ok(Err(status)) if status.code() == tonic::Code::OutOfRange => return false,
                    Ok(r) => r.expect("stream ok").expect("stream open"),
                };
                if e.r#type == EventType::Progress as i32 {
                    continue;
                }
                assert_follows(next - 1, e.revision, "a stalled stream skipped or repeated");
                if e.revision == last {
                    return true;
                }
                next = e.revision + 1;
            }
        });
    }
    while let Some(r) = draining.join_next().await {
        if r.unwrap() {
            caught_up += 1;
        } else {
            out_of_range += 1;
        }
    }
    println!("stalled streams: {caught_up} caught up, {out_of_range} ended OUT_OF_RANGE");
    // Retention (100,000 events) covers everything they missed, so every
    // one catches up; past retention it would be OUT_OF_RANGE, which
    // tests/watch.rs shows.
    assert_eq!((caught_up, out_of_range), (STREAMS / 2, 0));

    // Memory. A stalled stream holds its follower's state, tonic's encode
    // buffer and what HTTP/2 queued for a peer that stopped granting window:
    // allow 64 KiB each (measured: about 7). The events themselves are
    // shared, and what a stream missed waits in the log, not in memory. 32 MiB more for the tokens the load
    // creates and sled's cache warming. Without the bound each stalled
    // stream would hold the whole flow: 1,000 × 300 events × 1 KB = 300 MB.
    let budget_kib = rss_readers + 1_000 * 64 + 32 * 1024;
    assert!(
        rss_peak < budget_kib,
        "peak RSS {rss_peak} KiB over the budget {budget_kib} KiB"
    );
    // Readers kept their latency: the stalled half does not sit in their
    // way (were it in their way, they would wait for it: seconds, or for
    // ever). The margin is for a busy machine's scheduling stalls.
    assert!(
        loaded.1 < (baseline.1 * 5.0).max(baseline.1 + 1_000.0),
        "readers' p99 went from {:.1} ms to {:.1} ms",
        baseline.1,
        loaded.1
    );
    assert!(
        slowest_health < Duration::from_secs(5),
        "{slowest_health:?}"
    );
    reading.abort_all();
}

fn rss_of_pid(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
