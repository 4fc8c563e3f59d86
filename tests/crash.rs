//! Crash safety: the real `tokend` binary, killed with SIGKILL at random
//! moments while several clients create, update, disable and delete tokens
//! and watchers listen; restarted on the same data dir, cycle after cycle.
//!
//! After every restart: each acknowledged write is there (a deleted token
//! stays deleted, its secret fails), each write that was in flight either
//! happened whole or not at all, and every token nobody heard of came from an
//! unanswered create. At the end: the event log is gap-free, has one CREATED
//! per id and agrees with the state, and the watchers, which resumed with
//! `start_revision` after each crash, heard exactly that log.
//!
//! The seed is printed first; `TOKEND_CRASH_SEED=<n>` replays a run and
//! `TOKEND_CRASH_CYCLES=<n>` runs more cycles. The same workload ended by
//! SIGTERM instead must lose nothing and exit within 5 s.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokend::proto as pb;
use tokend::proto::token_service_client::TokenServiceClient;
use tokio::task::JoinSet;

const WORKERS: u64 = 4;
const WATCHERS: usize = 2;

/// A change sent for a known token, not yet answered.
#[derive(Clone, Debug)]
enum Op {
    Rename(String),
    Disable,
    Enable,
    Delete,
}

/// No Debug: it holds a secret.
struct Known {
    /// Only the worker that created a token changes it, so the changes of
    /// one token are sequential and "the last acknowledged version" is exact.
    owner: u64,
    secret: String,
    acked: pb::Token,
    /// The global revision of its acknowledged DELETED event (0: the delete
    /// was in flight at a crash and turned out to have happened).
    deleted_at: Option<i64>,
    pending: Option<Op>,
}

/// What the clients were told, shared by the workers of a run.
#[derive(Default)]
struct Ledger {
    tokens: BTreeMap<String, Known>,
    /// Creates sent and not answered since the last check.
    pending_creates: usize,
    /// Tokens found after a restart that no answer named: those creates
    /// happened. Left alone from then on.
    orphans: BTreeSet<String>,
    /// Tokens changed since the last check, whose secrets it verifies.
    touched: BTreeSet<String>,
    acked_writes: usize,
}

type Shared = Arc<Mutex<Ledger>>;

/// One event as a watcher heard it.
#[derive(Clone, Debug, PartialEq)]
struct Heard {
    revision: i64,
    kind: i32,
    id: String,
    etag: String,
}

impl Heard {
    fn of(e: &pb::TokenEvent) -> Heard {
        let t = e.token.as_ref().expect("change events carry the token");
        Heard {
            revision: e.revision,
            kind: e.r#type,
            id: t.id.clone(),
            etag: t.etag.clone(),
        }
    }
}

fn seed() -> u64 {
    std::env::var("TOKEND_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_cycles() {
    let seed = seed();
    let cycles: u64 = std::env::var("TOKEND_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    println!("crash test seed {seed} ({cycles} cycles): rerun with TOKEND_CRASH_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let ledger = Shared::default();
    let mut run = None;
    let mut watchers = Vec::new();
    let mut kill_times = Vec::new();

    for cycle in 0..cycles {
        let mut p = spawn_tokend(dir.path(), &[]).await;
        let mut c = p.tokens().await;
        if run.is_none() {
            let r = Run::prepare(&p).await;
            watchers = vec![(r.base + 1, Vec::new()); WATCHERS];
            run = Some(r);
        } else {
            check(
                &ledger,
                &mut c,
                &format!("seed {seed}, after crash {cycle}"),
            )
            .await;
        }
        let run = run.as_ref().unwrap();
        let stopping = Arc::new(AtomicBool::new(false));
        let (mut workers, mut listeners) =
            run.load(&p, &ledger, &stopping, &watchers, seed ^ cycle);

        let after = Duration::from_millis(rng.random_range(0..400));
        tokio::time::sleep(after).await;
        stopping.store(true, Ordering::SeqCst);
        p.kill();
        kill_times.push(after.as_millis());

        drain(&mut workers).await;
        collect(&mut listeners, &mut watchers).await;
    }

    let run = run.unwrap();
    let p = spawn_tokend(dir.path(), &[]).await;
    let mut c = p.tokens().await;
    let context = format!("seed {seed}, after the last crash");
    check(&ledger, &mut c, &context).await;
    let log = check_log(&ledger, &mut c, run.base, &context).await;
    for (i, (next, heard)) in watchers.iter_mut().enumerate() {
        heard.extend(catch_up(&mut c, *next, log.last().map_or(0, |h| h.revision)).await);
        assert!(
            *heard == log,
            "{context}: watcher {i} heard {} events, the log has {}; first difference at {:?}",
            heard.len(),
            log.len(),
            heard.iter().zip(&log).position(|(a, b)| a != b)
        );
    }
    let l = ledger.lock().unwrap();
    println!(
        "{cycles} SIGKILLs at {kill_times:?} ms: {} acknowledged writes, {} tokens, {} events, \
         {} unanswered creates that happened",
        l.acked_writes,
        l.tokens.len(),
        log.len(),
        l.orphans.len()
    );
    assert!(l.acked_writes > 100 * cycles as usize / 10, "the load ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_load_loses_no_acknowledged_write_and_exits_within_5s() {
    let seed = seed();
    println!("seed {seed}: rerun with TOKEND_CRASH_SEED={seed}");
    let dir = tempfile::tempdir().unwrap();
    let ledger = Shared::default();
    let mut p = spawn_tokend(dir.path(), &[]).await;
    let run = Run::prepare(&p).await;
    let mut watchers = vec![(run.base + 1, Vec::new())];
    let stopping = Arc::new(AtomicBool::new(false));
    let (mut workers, mut listeners) = run.load(&p, &ledger, &stopping, &watchers, seed);
    tokio::time::sleep(Duration::from_millis(500)).await;

    stopping.store(true, Ordering::SeqCst);
    let sent = Instant::now();
    p.signal(15);
    let status = loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "still running 5 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let took = sent.elapsed();
    assert!(status.success(), "{status:?}");
    drain(&mut workers).await;
    collect(&mut listeners, &mut watchers).await;

    let p = spawn_tokend(dir.path(), &[]).await;
    let mut c = p.tokens().await;
    let context = format!("seed {seed}, after SIGTERM");
    check(&ledger, &mut c, &context).await;
    let log = check_log(&ledger, &mut c, run.base, &context).await;
    let (next, heard) = &mut watchers[0];
    heard.extend(catch_up(&mut c, *next, log.last().unwrap().revision).await);
    assert!(
        *heard == log,
        "{context}: the watcher heard a different history"
    );
    let l = ledger.lock().unwrap();
    println!(
        "SIGTERM under load: exited in {took:?}; {} acknowledged writes, {} unanswered",
        l.acked_writes,
        l.pending_creates + l.tokens.values().filter(|k| k.pending.is_some()).count()
    );
    assert!(l.acked_writes > 50, "the load ran");
}

/// The accounts every cycle writes to, and the revision before any token
/// event of the workload.
struct Run {
    accounts: Vec<String>,
    base: i64,
}

impl Run {
    async fn prepare(p: &Process) -> Run {
        let mut a = p.accounts().await;
        let mut accounts = Vec::new();
        for _ in 0..2 {
            accounts.push(new_account(&mut a, ALL_MODULES).await.id);
        }
        // No account changes from here on, so token events are consecutive.
        let base = head(&mut p.tokens().await).await;
        Run { accounts, base }
    }

    /// Starts the workers and the watchers against `p`.
    fn load(
        &self,
        p: &Process,
        ledger: &Shared,
        stopping: &Arc<AtomicBool>,
        watchers: &[(i64, Vec<Heard>)],
        seed: u64,
    ) -> (JoinSet<()>, JoinSet<(usize, Vec<Heard>)>) {
        let bearer = bearer(&operator_secret(&p.dir));
        let mut workers = JoinSet::new();
        for w in 0..WORKERS {
            workers.spawn(worker(
                p.url(),
                bearer.clone(),
                w,
                seed.wrapping_mul(31).wrapping_add(w),
                self.accounts.clone(),
                ledger.clone(),
                stopping.clone(),
            ));
        }
        let mut listeners = JoinSet::new();
        for (i, (next, _)) in watchers.iter().enumerate() {
            let (url, bearer, next) = (p.url(), bearer.clone(), *next);
            listeners.spawn(async move { (i, listen(url, bearer, next).await) });
        }
        (workers, listeners)
    }
}

async fn client(url: String, bearer: Bearer) -> Option<Tokens> {
    let channel = tonic::transport::Channel::from_shared(url)
        .unwrap()
        .connect()
        .await
        .ok()?;
    Some(TokenServiceClient::with_interceptor(channel, bearer))
}

/// Writes until the server goes away. Any error before the test began to
/// stop the server is a failure.
async fn worker(
    url: String,
    bearer: Bearer,
    me: u64,
    seed: u64,
    accounts: Vec<String>,
    ledger: Shared,
    stopping: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let Some(mut c) = client(url, bearer).await else {
        assert!(
            stopping.load(Ordering::SeqCst),
            "worker {me} could not connect"
        );
        return;
    };
    loop {
        // 40% creates; otherwise a change to one of this worker's live tokens.
        let target = {
            let l = ledger.lock().unwrap();
            let mine: Vec<&Known> = l
                .tokens
                .values()
                .filter(|k| k.owner == me && k.deleted_at.is_none() && k.pending.is_none())
                .collect();
            (rng.random_range(0..10) >= 4 && !mine.is_empty())
                .then(|| mine[rng.random_range(0..mine.len())].acked.clone())
        };
        let outcome = match target {
            None => create(&mut c, &mut rng, me, &accounts, &ledger).await,
            Some(t) => change(&mut c, &mut rng, t, &ledger).await,
        };
        if let Err(status) = outcome {
            assert!(
                stopping.load(Ordering::SeqCst),
                "worker {me}: unexpected error while the server ran: {status:?}"
            );
            return;
        }
    }
}

async fn create(
    c: &mut Tokens,
    rng: &mut StdRng,
    me: u64,
    accounts: &[String],
    ledger: &Shared,
) -> Result<(), tonic::Status> {
    ledger.lock().unwrap().pending_creates += 1;
    let r = c
        .create_token(pb::CreateTokenRequest {
            account_id: accounts[rng.random_range(0..accounts.len())].clone(),
            name: format!("w{me} n{}", rng.random_range(0..1_000_000)),
            description: "x".repeat(rng.random_range(0..600)),
            modules: vec!["commerce".into()],
            ..Default::default()
        })
        .await?
        .into_inner();
    let t = r.token.unwrap();
    let mut l = ledger.lock().unwrap();
    l.pending_creates -= 1;
    l.acked_writes += 1;
    l.touched.insert(t.id.clone());
    let known = Known {
        owner: me,
        secret: r.secret,
        acked: t.clone(),
        deleted_at: None,
        pending: None,
    };
    assert!(
        l.tokens.insert(t.id.clone(), known).is_none(),
        "{} was issued twice",
        t.id
    );
    Ok(())
}

async fn change(
    c: &mut Tokens,
    rng: &mut StdRng,
    t: pb::Token,
    ledger: &Shared,
) -> Result<(), tonic::Status> {
    let active = t.status == pb::TokenStatus::Active as i32;
    let op = match rng.random_range(0..6) {
        0..=2 => Op::Delete,
        3 | 4 => Op::Rename(format!("renamed {}", rng.random_range(0..1_000_000))),
        _ if active => Op::Disable,
        _ => Op::Enable,
    };
    ledger
        .lock()
        .unwrap()
        .tokens
        .get_mut(&t.id)
        .unwrap()
        .pending = Some(op.clone());
    let id = t.id.clone();
    let (token, deleted_at) = match &op {
        Op::Delete => {
            let r = delete(c, &id).await?;
            (r.token.unwrap(), Some(r.revision))
        }
        Op::Rename(name) => {
            let r = c
                .update_token(pb::UpdateTokenRequest {
                    token: Some(pb::Token {
                        id: id.clone(),
                        name: name.clone(),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["name".into()],
                    }),
                    etag: String::new(),
                })
                .await?;
            (r.into_inner(), None)
        }
        Op::Disable => {
            let r = c
                .disable_token(pb::DisableTokenRequest {
                    id: id.clone(),
                    etag: String::new(),
                })
                .await?;
            (r.into_inner(), None)
        }
        Op::Enable => {
            let r = c
                .enable_token(pb::EnableTokenRequest {
                    id: id.clone(),
                    etag: String::new(),
                })
                .await?;
            (r.into_inner(), None)
        }
    };
    let mut l = ledger.lock().unwrap();
    l.acked_writes += 1;
    l.touched.insert(id.clone());
    let k = l.tokens.get_mut(&id).unwrap();
    assert_eq!(
        token.revision,
        k.acked.revision + 1,
        "{id}: {op:?} skipped a version"
    );
    k.acked = token;
    k.deleted_at = deleted_at;
    k.pending = None;
    Ok(())
}

/// Records every change event from `from` on, until the stream breaks.
async fn listen(url: String, bearer: Bearer, from: i64) -> Vec<Heard> {
    let mut heard = Vec::new();
    let Some(mut c) = client(url, bearer).await else {
        return heard;
    };
    let Ok(stream) = c
        .watch_tokens(pb::WatchTokensRequest {
            start_revision: from,
            ..Default::default()
        })
        .await
    else {
        return heard;
    };
    let mut stream = stream.into_inner();
    while let Ok(Some(e)) = stream.message().await {
        if e.r#type != EventType::Progress as i32 {
            heard.push(Heard::of(&e));
        }
    }
    heard
}

/// Reads change events from `from` through `head` (inclusive).
async fn catch_up(c: &mut Tokens, from: i64, head: i64) -> Vec<Heard> {
    let mut heard = Vec::new();
    if from > head {
        return heard;
    }
    let mut w = watch_from(c, from).await;
    loop {
        let e = next_change(&mut w).await;
        heard.push(Heard::of(&e));
        if e.revision >= head {
            return heard;
        }
    }
}

async fn drain(workers: &mut JoinSet<()>) {
    while let Some(r) = tokio::time::timeout(Duration::from_secs(20), workers.join_next())
        .await
        .expect("workers stop once the server is gone")
    {
        r.expect("worker");
    }
}

/// Appends what each watcher heard, and moves its resume point past it.
async fn collect(listeners: &mut JoinSet<(usize, Vec<Heard>)>, watchers: &mut [(i64, Vec<Heard>)]) {
    while let Some(r) = tokio::time::timeout(Duration::from_secs(20), listeners.join_next())
        .await
        .expect("streams end once the server is gone")
    {
        let (i, heard) = r.expect("watcher");
        let (next, all) = &mut watchers[i];
        if let Some(first) = heard.first() {
            assert_follows(
                *next - 1,
                first.revision,
                &format!("watcher {i} resumed at the wrong revision"),
            );
        }
        if let Some(last) = heard.last() {
            *next = last.revision + 1;
        }
        all.extend(heard);
    }
}

/// Every token, tombstones included, by id.
async fn state(c: &mut Tokens) -> BTreeMap<String, pb::Token> {
    let mut all = BTreeMap::new();
    let mut page_token = String::new();
    loop {
        let page = c
            .list_tokens(pb::ListTokensRequest {
                page_size: 1000,
                page_token,
                show_deleted: true,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        all.extend(page.tokens.into_iter().map(|t| (t.id.clone(), t)));
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

/// Compares the restarted server with what the clients were told.
async fn check(ledger: &Shared, c: &mut Tokens, context: &str) {
    let state = state(c).await;
    let operator = operator_id(c).await;
    let touched = reconcile(&mut ledger.lock().unwrap(), &state, &operator, context);

    // Secrets agree with the state: a deleted token's secret fails.
    for (id, secret, deleted, status) in touched {
        let v = verify(c, &secret).await;
        let expected = if deleted {
            pb::VerifyResult::NotFound
        } else if status == pb::TokenStatus::Disabled as i32 {
            pb::VerifyResult::Disabled
        } else {
            pb::VerifyResult::Valid
        };
        assert_eq!(v.result, expected as i32, "{context}: verify of {id}");
        if deleted {
            let e = get(c, &id, false).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::NotFound, "{context}: get of {id}");
        }
    }
}

/// Checks every token against the ledger and learns which unanswered writes
/// happened. Returns (id, secret, deleted, status) of the tokens changed since
/// the last check.
fn reconcile(
    l: &mut Ledger,
    state: &BTreeMap<String, pb::Token>,
    operator: &str,
    context: &str,
) -> Vec<(String, String, bool, i32)> {
    let unknown: Vec<String> = state
        .keys()
        .filter(|id| !l.tokens.contains_key(*id) && !l.orphans.contains(*id) && **id != operator)
        .cloned()
        .collect();
    assert!(
        unknown.len() <= l.pending_creates,
        "{context}: {} tokens nobody created ({} creates were unanswered)",
        unknown.len(),
        l.pending_creates
    );
    l.orphans.extend(unknown);
    l.pending_creates = 0;

    for (id, k) in l.tokens.iter_mut() {
        let t = state
            .get(id)
            .unwrap_or_else(|| panic!("{context}: acknowledged create of {id} was lost"));
        if k.deleted_at.is_some() {
            assert_eq!(
                t.status,
                pb::TokenStatus::Deleted as i32,
                "{context}: acknowledged delete of {id} was undone"
            );
            continue;
        }
        match k.pending.take() {
            // The unanswered change happened, whole.
            Some(op) if t.revision == k.acked.revision + 1 => {
                let whole = match &op {
                    Op::Rename(name) => t.name == *name,
                    Op::Disable => t.status == pb::TokenStatus::Disabled as i32,
                    Op::Enable => t.status == pb::TokenStatus::Active as i32,
                    Op::Delete => t.status == pb::TokenStatus::Deleted as i32,
                };
                assert!(whole, "{context}: {id} after an unanswered {op:?}: {t:?}");
                if matches!(op, Op::Delete) {
                    k.deleted_at = Some(0);
                }
                k.acked = t.clone();
                l.touched.insert(id.clone());
            }
            // Otherwise it is exactly as last acknowledged.
            _ => assert!(
                t.etag == k.acked.etag
                    && t.revision == k.acked.revision
                    && t.status == k.acked.status
                    && t.name == k.acked.name,
                "{context}: {id} is {t:?}, was acknowledged as {:?}",
                k.acked
            ),
        }
    }

    std::mem::take(&mut l.touched)
        .into_iter()
        .map(|id| {
            let k = &l.tokens[&id];
            (id, k.secret.clone(), k.deleted_at.is_some(), k.acked.status)
        })
        .collect()
}

/// The log after `base`: consecutive, one CREATED per id and nothing after
/// DELETED, every acknowledged delete at its revision, and replayed it
/// gives the state.
async fn check_log(ledger: &Shared, c: &mut Tokens, base: i64, context: &str) -> Vec<Heard> {
    let head = head(c).await;
    let log = catch_up(c, base + 1, head).await;
    let mut prev = base;
    for h in &log {
        assert_follows(prev, h.revision, &format!("{context}: the log has a gap"));
        prev = h.revision;
    }
    let mut last: BTreeMap<&str, &Heard> = BTreeMap::new();
    for h in &log {
        let before = last.insert(&h.id, h);
        match before {
            None => assert_eq!(h.kind, EventType::Created as i32, "{context}: {h:?} first"),
            Some(b) => {
                assert_ne!(
                    h.kind,
                    EventType::Created as i32,
                    "{context}: {} created twice",
                    h.id
                );
                assert_ne!(
                    b.kind,
                    EventType::Deleted as i32,
                    "{context}: {h:?} after deletion"
                );
            }
        }
    }
    let state = state(c).await;
    let operator = operator_id(c).await;
    assert_eq!(
        last.len(),
        state.len() - 1,
        "{context}: the log names other tokens than the state"
    );
    for (id, t) in state.iter().filter(|(id, _)| **id != operator) {
        let h = last
            .get(id.as_str())
            .unwrap_or_else(|| panic!("{context}: {id} has no event"));
        assert_eq!(
            h.etag, t.etag,
            "{context}: the log's last word on {id} is stale"
        );
    }
    let l = ledger.lock().unwrap();
    for (id, k) in &l.tokens {
        if let Some(rev) = k.deleted_at.filter(|r| *r > 0) {
            let h = log
                .binary_search_by_key(&rev, |h| h.revision)
                .map(|i| &log[i])
                .unwrap_or_else(|_| {
                    panic!("{context}: revision {rev}, acknowledged as the deletion of {id}, is not in the log")
                });
            assert!(
                h.id == *id && h.kind == EventType::Deleted as i32,
                "{context}: revision {rev} acknowledged as the deletion of {id} is {h:?}"
            );
        }
    }
    log
}
