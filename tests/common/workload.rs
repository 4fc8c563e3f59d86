//! The crash suites' workload (tests/crash.rs, tests/powercut.rs): clients
//! creating, renaming, disabling, enabling and deleting tokens against the
//! real `tokend` binary while watchers listen, the ledger of what each
//! client was told, and [`Cycles`], the kill-and-restart campaign both
//! suites run (checked after every restart with [`super::checks`]).
//!
//! Owns the load and the ledger. It must never decide what a restart owes
//! (that is `checks`), nor mock a part of tokend: every write is a gRPC
//! call to the real server over loopback.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokend::proto as pb;
use tokend::proto::token_service_client::TokenServiceClient;
use tokio::task::JoinSet;

use super::api::*;
use super::backend::assert_follows;
use super::checks::{catch_up, check, check_log};
use super::process::{Process, spawn_tokend_with};

pub const WORKERS: u64 = 4;
pub const WATCHERS: usize = 2;

/// A change sent for a known token, not yet answered.
#[derive(Clone, Debug)]
pub enum Op {
    Rename(String),
    Disable,
    Enable,
    Delete,
}

/// No Debug: it holds a secret.
pub struct Known {
    /// Only the worker that created a token changes it, so the changes of
    /// one token are sequential and "the last acknowledged version" is exact.
    pub owner: u64,
    pub secret: String,
    pub acked: pb::Token,
    /// The global revision of its acknowledged DELETED event (0: the delete
    /// was in flight at a crash and turned out to have happened).
    pub deleted_at: Option<i64>,
    pub pending: Option<Op>,
}

/// What the clients were told, shared by the workers of a run.
#[derive(Default)]
pub struct Ledger {
    pub tokens: BTreeMap<String, Known>,
    /// Creates sent and not answered since the last check.
    pub pending_creates: usize,
    /// Tokens found after a restart that no answer named: those creates
    /// happened. Left alone from then on.
    pub orphans: BTreeSet<String>,
    /// Tokens changed since the last check, whose secrets it verifies.
    pub touched: BTreeSet<String>,
    pub acked_writes: usize,
}

pub type Shared = Arc<Mutex<Ledger>>;

/// One event as a watcher heard it.
#[derive(Clone, Debug, PartialEq)]
pub struct Heard {
    pub revision: i64,
    pub kind: i32,
    pub id: String,
    pub etag: String,
}

impl Heard {
    pub fn of(e: &pb::TokenEvent) -> Heard {
        let t = e.token.as_ref().expect("change events carry the token");
        Heard {
            revision: e.revision,
            kind: e.r#type,
            id: t.id.clone(),
            etag: t.etag.clone(),
        }
    }
}

/// A campaign: each cycle starts tokend on `dir`, checks it against the
/// ledger, runs the load and kills tokend (SIGKILL, waited for) at a random
/// moment up to 400 ms in. At the end the log and the watchers' recordings
/// are checked too.
pub struct Cycles<'a> {
    pub seed: u64,
    pub cycles: u64,
    /// What ends a cycle, for messages ("crash", "power cut").
    pub what: &'a str,
    /// Environment of every tokend started (e.g. `FAILPOINTS`).
    pub env: &'a [(&'a str, &'a str)],
}

/// What a campaign did.
pub struct Outcome {
    pub kill_ms: Vec<u128>,
    pub acked_writes: usize,
    pub tokens: usize,
    pub events: usize,
    /// Unanswered creates that turned out to have happened.
    pub orphans: usize,
}

impl Cycles<'_> {
    fn start(&self, dir: &Path) -> impl Future<Output = Process> {
        let env: Vec<(String, String)> = self
            .env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let dir = dir.to_path_buf();
        async move {
            spawn_tokend_with(&dir, &[], move |cmd| {
                cmd.envs(env.iter().map(|(k, v)| (k, v)));
            })
            .await
        }
    }

    /// Runs the campaign; `between(cycle, rng)` runs while tokend is down
    /// after each kill (a power cut, say), with the campaign's seeded rng.
    pub async fn run(&self, dir: &Path, mut between: impl FnMut(u64, &mut StdRng)) -> Outcome {
        let (seed, what) = (self.seed, self.what);
        let mut rng = StdRng::seed_from_u64(seed);
        let ledger = Shared::default();
        let mut run = None;
        let mut watchers = Vec::new();
        let mut kill_ms = Vec::new();

        for cycle in 0..self.cycles {
            let mut p = self.start(dir).await;
            let mut c = p.tokens().await;
            if run.is_none() {
                let r = Run::prepare(&p).await;
                watchers = vec![(r.base + 1, Vec::new()); WATCHERS];
                run = Some(r);
            } else {
                check(
                    &ledger,
                    &mut c,
                    &format!("seed {seed}, after {what} {cycle}"),
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
            kill_ms.push(after.as_millis());

            drain(&mut workers).await;
            collect(&mut listeners, &mut watchers).await;
            drop(p);
            between(cycle, &mut rng);
        }

        let run = run.expect("at least one cycle");
        let p = self.start(dir).await;
        let mut c = p.tokens().await;
        let context = format!("seed {seed}, after the last {what}");
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
        Outcome {
            kill_ms,
            acked_writes: l.acked_writes,
            tokens: l.tokens.len(),
            events: log.len(),
            orphans: l.orphans.len(),
        }
    }
}

/// The accounts every cycle writes to, and the revision before any token
/// event of the workload.
pub struct Run {
    pub accounts: Vec<String>,
    pub base: i64,
}

impl Run {
    pub async fn prepare(p: &Process) -> Run {
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
    pub fn load(
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

pub async fn client(url: String, bearer: Bearer) -> Option<Tokens> {
    let channel = tonic::transport::Channel::from_shared(url)
        .unwrap()
        .connect()
        .await
        .ok()?;
    Some(TokenServiceClient::with_interceptor(channel, bearer))
}

/// Writes until the server goes away. Any error before the test began to
/// stop the server is a failure.
pub async fn worker(
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
            // Everything a worker names was acknowledged: its accounts
            // before the workload began, its tokens when they were created
            // (pending ones are not picked). A restart that forgot one has
            // lost an acknowledged write, whichever call finds it first.
            assert!(
                status.code() != tonic::Code::NotFound,
                "worker {me}: an acknowledged write was lost: {status:?}"
            );
            assert!(
                stopping.load(Ordering::SeqCst),
                "worker {me}: unexpected error while the server ran: {status:?}"
            );
            return;
        }
    }
}

pub async fn create(
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

pub async fn change(
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
        Op::Rename(name) => (rename(c, &id, name).await?, None),
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
pub async fn listen(url: String, bearer: Bearer, from: i64) -> Vec<Heard> {
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

pub async fn drain(workers: &mut JoinSet<()>) {
    while let Some(r) = tokio::time::timeout(Duration::from_secs(20), workers.join_next())
        .await
        .expect("workers stop once the server is gone")
    {
        r.expect("worker");
    }
}

/// Appends what each watcher heard, and moves its resume point past it.
pub async fn collect(
    listeners: &mut JoinSet<(usize, Vec<Heard>)>,
    watchers: &mut [(i64, Vec<Heard>)],
) {
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
