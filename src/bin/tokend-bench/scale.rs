//! The scale scenario (`tokend-bench --only scale`, `scripts/bench.sh
//! --scale [N]`; never part of the full run): what N live tokens, and N
//! tokens created and deleted, cost tokend on sled in memory, on disk and at
//! start-up; what etcd costs holding records of the same size; verify and
//! list latency with N live tokens; and what ten times as many old
//! tombstones add to the live store (written straight into a copy, as the
//! shrinker leaves them: `tokend::store::add_old_tombstones`).
//!
//! Each server runs on its own data dir in the run's temp dir (removed when
//! the run ends or fails), and every figure is taken after a clean restart
//! (SIGTERM, wait for the exit, start on the same dir): what a process
//! rebuilds from its disk, not what a long run left in its heap. Start-up
//! is from spawning the process until it answers (tokend: gRPC health
//! `SERVING`; etcd: a `Get`). etcd's side is `scale/etcd.rs`; the report
//! section, and how it lands in BENCHMARKS.md, `scale/report.rs`.

mod etcd;
mod kit;
pub mod report;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokend::client::Bearer;
use tokend::proto as pb;
use tokend::proto::account_service_client::AccountServiceClient;
use tokend::proto::create_token_request::Expiration;
use tokend::proto::token_service_client::TokenServiceClient;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::peers::{TokenClient, free_addr, sample, tokend_bin, tokend_command};
use crate::scenarios::Latency;
use kit::{Progress, Server, latency, micros, pool};

const ACCOUNTS: usize = 100;
/// Clients creating and deleting tokens.
const WRITERS: usize = 32;
/// Tokens whose secrets are kept for the verifies.
const SAMPLE: usize = 10_000;
const VERIFIES: usize = 20_000;
const VERIFIERS: usize = 16;
const LISTS: usize = 500;
const UNSCOPED_LISTS: usize = 5;
const PAGE: i32 = 50;
const DESCRIPTION_CHARS: usize = 200;
/// Accounts hold all four; each token two of them.
const MODULES: [&str; 4] = ["commerce", "billing", "helpdesk", "catalog-management"];
/// Old tombstones read back with `GetToken`.
const OLD_GETS: u64 = 1_000;
const SHRINK_FLAG: &str = "--tombstone-shrink-after";
/// The event log tokend keeps (`--retention`): small, so that the disk per
/// token is the tokens' own, not the log's, which `--retention` bounds
/// apart from them (README, Sizing).
pub const RETENTION: u64 = 1_000;

/// A server's footprint, read after a restart and 2 s of quiet.
#[derive(Clone, Copy, Debug, Default)]
pub struct Footprint {
    pub rss_kib: u64,
    /// The anonymous part of the RSS (the rest is mapped files, e.g.
    /// etcd's bbolt database, which the kernel may drop).
    pub anon_kib: u64,
    /// The most the RSS reached since the process started (`VmHWM`):
    /// start-up's peak.
    pub peak_kib: u64,
    /// Allocated bytes of every file in the data dir (`du -s`).
    pub disk: u64,
    pub startup: Duration,
}

/// One server's figures: empty, N live, N created and deleted.
#[derive(Default)]
pub struct Side {
    pub empty: Footprint,
    pub live: Footprint,
    /// tokend: the same after `tokend compact` (none if this tokend has no
    /// such command).
    pub live_compacted: Option<Footprint>,
    pub deleted: Footprint,
    /// Creates (or puts) and deletes per second while loading.
    pub create_rate: f64,
    pub delete_rate: f64,
}

/// A store of live tokens with `count` old tombstones added, as the
/// shrinker leaves them (`tokend::store::add_old_tombstones`: made through
/// the API, ten million would take hours), served: its footprint, how long
/// writing them took, and `GetToken` of some of them with `show_deleted`.
pub struct OldTombstones {
    pub count: u64,
    pub footprint: Footprint,
    pub written_in: Duration,
    pub get: Latency,
    /// One unscoped first page of `ListTokens` with `show_deleted`, and
    /// one with a filter.
    pub deleted_list: Duration,
    pub deleted_list_filtered: Duration,
}

pub struct Scale {
    /// The commit the run started at ([`report::commit`]).
    pub commit: String,
    pub tokens: usize,
    pub tokend: Side,
    /// After `--tombstone-shrink-after 0s` and a restart, with how long the
    /// data dir took to stop shrinking, and the same after `tokend compact`;
    /// or why it was not measured.
    pub shrunk: Result<(Footprint, Duration, Option<Footprint>), String>,
    /// The live store (compacted) with old tombstones added, or why not.
    pub old: Result<OldTombstones, String>,
    pub etcd: Side,
    /// etcd right after the delete, compaction and defragmentation, before
    /// its restart.
    pub etcd_compacted: Footprint,
    /// Bytes of each etcd value (tokend's token value) and key.
    pub record_bytes: (usize, usize),
    pub verify: Latency,
    pub list: Latency,
    pub unscoped_list: Latency,
    pub took: Duration,
}

/// Runs the scenario with its data dirs under `root`: `tokens` live, then
/// deleted; `old_tombstones` added to a copy of the live store.
pub async fn run(root: &Path, tokens: usize, old_tombstones: u64) -> Scale {
    assert!(tokens >= ACCOUNTS, "--scale-tokens: at least {ACCOUNTS}");
    let started = Instant::now();
    let commit = report::commit();
    let dir = root.join("tokend");
    eprintln!("scale: tokend, empty");
    let t = Tokend::start(&dir, &[]).await.restart(&[]).await;
    let mut tokend = Side {
        empty: t.footprint().await,
        ..Side::default()
    };
    let accounts = Arc::new(t.create_accounts().await);
    let (ids, secrets, create_rate) = t.create_tokens(&accounts, tokens).await;
    tokend.create_rate = create_rate;
    eprintln!("scale: tokend, {tokens} live tokens, restarting");
    let t = t.restart(&[]).await;
    tokend.live = t.footprint().await;
    let verify = t.verifies(Arc::new(secrets)).await;
    let (list, unscoped_list) = t.lists(&accounts, tokens).await;
    let (t, live_compacted) = compact(t, &[]).await;
    tokend.live_compacted = live_compacted;
    let (t, old) = add_old_tombstones(t, &root.join("tokend-old"), old_tombstones).await;
    tokend.delete_rate = t.delete_all(ids).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    eprintln!("scale: tokend, {tokens} deleted, restarting");
    let t = t.restart(&[]).await;
    tokend.deleted = t.footprint().await;
    let shrunk = if shrinks() {
        Ok(shrink(t, tokens).await)
    } else {
        t.server.stop().await;
        Err(format!("this tokend has no `{SHRINK_FLAG}`"))
    };

    eprintln!("scale: etcd, empty");
    let (etcd, etcd_compacted, record_bytes) = etcd::run(&root.join("etcd"), tokens).await;
    Scale {
        commit,
        tokens,
        tokend,
        shrunk,
        old,
        etcd,
        etcd_compacted,
        record_bytes,
        verify,
        list,
        unscoped_list,
        took: started.elapsed(),
    }
}

/// Whether this tokend can shrink old tombstones (`serve --help` lists the
/// flag).
fn shrinks() -> bool {
    std::process::Command::new(tokend_bin())
        .args(["serve", "--help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(SHRINK_FLAG))
}

/// Whether this tokend has `tokend compact`.
fn compacts() -> bool {
    std::process::Command::new(tokend_bin())
        .args(["compact", "--help"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Stops `t`, runs `tokend compact` on its data dir, and starts it again
/// with `extra`: the server, and its footprint then (none if this tokend
/// cannot compact, and `t` is returned as it was).
async fn compact(t: Tokend, extra: &[&str]) -> (Tokend, Option<Footprint>) {
    if !compacts() {
        return (t, None);
    }
    eprintln!("scale: tokend, compacting");
    let dir = t.dir.clone();
    t.server.stop().await;
    let out = std::process::Command::new(tokend_bin())
        .args(["compact", "--data-dir"])
        .arg(&dir)
        .output()
        .expect("run tokend compact");
    assert!(
        out.status.success(),
        "tokend compact: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("scale: {}", String::from_utf8_lossy(&out.stdout));
    let t = Tokend::start(&dir, extra).await;
    let footprint = t.footprint().await;
    (t, Some(footprint))
}

/// Restarts `t` shrinking every tombstone, waits until it has shrunk all
/// `tokens` (`tokend_tombstones_shrunk_total`; at most 600 s, or 60 s
/// without progress), then restarts it again, still with the flag; then
/// compacts it.
async fn shrink(t: Tokend, tokens: usize) -> (Footprint, Duration, Option<Footprint>) {
    let flag = [SHRINK_FLAG, "0s"];
    eprintln!("scale: tokend, shrinking tombstones");
    let t = t.restart(&flag).await;
    let started = Instant::now();
    let (mut last, mut progressed) = (0.0, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let shrunk = sample(t.metrics, "tokend_tombstones_shrunk_total");
        if shrunk > last {
            (last, progressed) = (shrunk, Instant::now());
        }
        if shrunk >= tokens as f64
            || progressed.elapsed() >= Duration::from_secs(60)
            || started.elapsed() >= Duration::from_secs(600)
        {
            eprintln!("scale: {shrunk} tombstones shrunk");
            break;
        }
    }
    let waited = started.elapsed();
    let t = t.restart(&flag).await;
    let footprint = t.footprint().await;
    let (t, compacted) = compact(t, &flag).await;
    t.server.stop().await;
    (footprint, waited, compacted)
}

/// Stops `t`, copies its data dir to `copy`, adds `n` old tombstones to
/// the copy and serves it: what that costs, or why it was not measured;
/// then `t` again, as it was.
async fn add_old_tombstones(
    t: Tokend,
    copy: &Path,
    n: u64,
) -> (Tokend, Result<OldTombstones, String>) {
    let dir = t.dir.clone();
    t.server.stop().await;
    let old = if n == 0 {
        Err("none were asked for (`--scale-old-tombstones 0`)".into())
    } else {
        serve_with_old_tombstones(&dir, copy, n).await
    };
    (Tokend::start(&dir, &[]).await, old)
}

async fn serve_with_old_tombstones(
    dir: &Path,
    copy: &Path,
    n: u64,
) -> Result<OldTombstones, String> {
    assert!(!copy.exists(), "{} exists", copy.display());
    let status = std::process::Command::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(dir)
        .arg(copy)
        .status()
        .expect("run cp");
    assert!(status.success(), "copy the data dir");
    eprintln!("scale: tokend, adding {n} old tombstones to a copy");
    // In a process of its own: when it exits, sled's lock on the copy is
    // gone (in this process, sled's threads can hold it a moment longer).
    let started = Instant::now();
    let out = std::process::Command::new(std::env::current_exe().expect("tokend-bench's path"))
        .arg("--add-old-tombstones")
        .arg(copy)
        .args([n.to_string(), OLD_GETS.to_string()])
        .output()
        .expect("run tokend-bench --add-old-tombstones");
    let written_in = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    let count: u64 = match lines.next().map(str::parse) {
        Some(Ok(count)) if out.status.success() => count,
        _ => {
            std::fs::remove_dir_all(copy).expect("remove the copy");
            return Err(format!(
                "adding them failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    };
    let ids: Vec<String> = lines.map(String::from).collect();
    eprintln!("scale: {count} old tombstones written in {written_in:?}");
    // A filtered `show_deleted` page reads every tombstone: more than the
    // default 30 s must not end the run.
    let old = Tokend::start(copy, &["--request-timeout", "10m"]).await;
    let footprint = old.footprint().await;
    let mut c = old.clients(1).await.remove(0);
    let mut gets = Vec::new();
    for id in ids {
        let at = Instant::now();
        let got = c
            .get_token(pb::GetTokenRequest {
                id,
                show_deleted: true,
            })
            .await
            .expect("an old tombstone reads");
        gets.push(micros(at.elapsed()));
        assert_eq!(got.into_inner().status, pb::TokenStatus::Deleted as i32);
    }
    // First pages with `show_deleted`: unfiltered, `total_size` is
    // counted; filtered, every tombstone is matched.
    let mut deleted_lists = Vec::new();
    for filter in ["", "name = \"old 1\""] {
        let at = Instant::now();
        let page = c
            .list_tokens(pb::ListTokensRequest {
                page_size: PAGE,
                show_deleted: true,
                filter: filter.into(),
                ..Default::default()
            })
            .await
            .expect("list with show_deleted")
            .into_inner();
        deleted_lists.push(at.elapsed());
        let want = if filter.is_empty() { count } else { 1 };
        assert!(
            page.total_size as u64 >= want,
            "{filter:?}: every match counted"
        );
    }
    old.server.stop().await;
    std::fs::remove_dir_all(copy).expect("remove the copy");
    Ok(OldTombstones {
        count,
        footprint,
        written_in,
        get: latency(gets),
        deleted_list: deleted_lists[0],
        deleted_list_filtered: deleted_lists[1],
    })
}

/// `tokend-bench --add-old-tombstones DIR N SAMPLE`: adds them to the
/// stopped store in DIR, then prints how many, and the ids of the sample,
/// a line each.
pub fn add_old_tombstones_here(dir: &Path, n: u64, sample: u64) {
    let (count, ids) =
        tokend::store::add_old_tombstones(dir, n, sample).expect("add old tombstones");
    println!("{count}");
    for id in ids {
        println!("{id}");
    }
}

// --------------------------------------------------------------- tokend

struct Tokend {
    server: Server,
    dir: PathBuf,
    url: String,
    metrics: std::net::SocketAddr,
    auth: Bearer,
    startup: Duration,
}

/// Token `i` of account `account` (the `i % ACCOUNTS`th): its name, description, modules and
/// lifetime (every other token expires, 30 to 395 days ahead).
fn token_request(i: usize, account: &str) -> pb::CreateTokenRequest {
    const TEXT: &str = "Deploys the storefront from CI; rotated by the platform team every \
                        quarter, owned by the commerce squad, paged through the on-call rota. ";
    let mut description = format!("Scale token {i}. ");
    description.extend(
        TEXT.chars()
            .cycle()
            .take(DESCRIPTION_CHARS - description.len()),
    );
    let ttl = prost_types::Duration {
        seconds: (30 + (i / 2 % 366) as i64) * 86_400,
        nanos: 0,
    };
    pb::CreateTokenRequest {
        account_id: account.to_string(),
        name: format!("scale {i}"),
        description,
        modules: vec![
            MODULES[i % 4].to_string(),
            MODULES[(i + 1 + i / 4 % 3) % 4].to_string(),
        ],
        expiration: i.is_multiple_of(2).then_some(Expiration::Ttl(ttl)),
        ..Default::default()
    }
}

impl Tokend {
    async fn start(dir: &Path, extra: &[&str]) -> Tokend {
        let (addr, metrics) = (free_addr(), free_addr());
        let url = format!("http://{addr}");
        let spawned = Instant::now();
        let child = tokend_command(dir, addr, metrics, extra)
            .args(["--retention", &RETENTION.to_string()])
            .spawn()
            .expect("tokend beside tokend-bench (build with --release --bins)");
        let mut server = Server {
            child,
            what: "tokend",
        };
        let deadline = spawned + Duration::from_secs(600);
        while !serving(&url).await {
            server.alive();
            assert!(Instant::now() < deadline, "tokend did not serve in 600 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let startup = spawned.elapsed();
        let secret = std::fs::read_to_string(dir.join("operator.token")).expect("operator.token");
        Tokend {
            server,
            dir: dir.to_path_buf(),
            url,
            metrics,
            auth: Bearer::new(secret.trim()).expect("an ASCII secret"),
            startup,
        }
    }

    async fn restart(self, extra: &[&str]) -> Tokend {
        let dir = self.dir.clone();
        self.server.stop().await;
        Tokend::start(&dir, extra).await
    }

    async fn footprint(&self) -> Footprint {
        self.server.footprint(&self.dir, self.startup).await
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(self.url.clone())
            .unwrap()
            .connect()
            .await
            .expect("connect to tokend")
    }

    async fn clients(&self, n: usize) -> Vec<TokenClient> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(TokenServiceClient::with_interceptor(
                self.channel().await,
                self.auth.clone(),
            ));
        }
        out
    }

    async fn create_accounts(&self) -> Vec<String> {
        let mut c = AccountServiceClient::with_interceptor(self.channel().await, self.auth.clone());
        let mut ids = Vec::new();
        for i in 0..ACCOUNTS {
            let r = c
                .create_account(pb::CreateAccountRequest {
                    name: format!("Scale {i}"),
                    r#type: pb::AccountType::Client as i32,
                    modules: MODULES.map(String::from).to_vec(),
                    ..Default::default()
                })
                .await
                .expect("create an account");
            ids.push(r.into_inner().id);
        }
        ids
    }

    /// Creates `n` tokens; returns their ids, the secrets of a sample spread
    /// over them, and the creates per second.
    async fn create_tokens(
        &self,
        accounts: &Arc<Vec<String>>,
        n: usize,
    ) -> (Vec<String>, Vec<String>, f64) {
        let stride = (n / SAMPLE).max(1);
        let progress = Progress::new("tokend creates".into(), n);
        let (accounts, p) = (accounts.clone(), progress.clone());
        let made = pool(self.clients(WRITERS).await, n, move |mut c, i| {
            let request = token_request(i, &accounts[i % ACCOUNTS]);
            let p = p.clone();
            async move {
                let r = c.create_token(request).await.expect("create a token");
                p.add(1);
                let r = r.into_inner();
                let id = r.token.expect("the created token").id;
                (id, i.is_multiple_of(stride).then_some(r.secret))
            }
        })
        .await;
        let (ids, secrets): (Vec<String>, Vec<Option<String>>) = made.into_iter().unzip();
        let secrets = secrets.into_iter().flatten().collect();
        (ids, secrets, progress.rate())
    }

    async fn verifies(&self, secrets: Arc<Vec<String>>) -> Latency {
        eprintln!("scale: {VERIFIES} verifies from {VERIFIERS} clients");
        let verify = move |mut c: TokenClient, i: usize| {
            let secret = secrets[i * 7919 % secrets.len()].clone();
            async move {
                let at = Instant::now();
                let r = c.verify_token(pb::VerifyTokenRequest { secret }).await;
                assert!(r.expect("verify").into_inner().valid, "a live token");
                micros(at.elapsed())
            }
        };
        let clients = self.clients(VERIFIERS).await;
        pool(clients.clone(), 1_000, verify.clone()).await;
        latency(pool(clients, VERIFIES, verify).await)
    }

    /// `LISTS` first pages of one account's tokens with a filter, one at a
    /// time, and `UNSCOPED_LISTS` of every token, unfiltered.
    async fn lists(&self, accounts: &[String], tokens: usize) -> (Latency, Latency) {
        eprintln!("scale: {LISTS} filtered lists, {UNSCOPED_LISTS} unscoped");
        let in_120_days = SystemTime::now() + Duration::from_secs(120 * 86_400);
        let cutoff = humantime::format_rfc3339_seconds(in_120_days);
        let per_account = tokens.div_ceil(ACCOUNTS).max(1);
        let filter = |k: usize| {
            let a = k % ACCOUNTS;
            let i = (a + ACCOUNTS * (k * 7919 % per_account)).min(tokens.saturating_sub(1));
            match k / ACCOUNTS % 4 {
                0 => "status = ACTIVE".to_string(),
                1 => format!("name = \"scale {i}\""),
                2 => "modules:billing AND status = ACTIVE".to_string(),
                _ => format!("expire_time < \"{cutoff}\""),
            }
        };
        let mut c = self.clients(1).await.remove(0);
        for k in 0..20 {
            list(&mut c, &accounts[k % ACCOUNTS], filter(k)).await;
        }
        let mut scoped = Vec::new();
        for k in 0..LISTS {
            scoped.push(list(&mut c, &accounts[k % ACCOUNTS], filter(k)).await);
        }
        let mut unscoped = Vec::new();
        for _ in 0..UNSCOPED_LISTS {
            unscoped.push(list(&mut c, "", String::new()).await);
        }
        (latency(scoped), latency(unscoped))
    }

    /// Deletes every token of `ids`; returns deletes per second.
    async fn delete_all(&self, ids: Vec<String>) -> f64 {
        let n = ids.len();
        let ids = Arc::new(ids);
        let progress = Progress::new("tokend deletes".into(), n);
        let p = progress.clone();
        pool(self.clients(WRITERS).await, n, move |mut c, i| {
            let id = ids[i].clone();
            let p = p.clone();
            async move {
                let request = pb::DeleteTokenRequest {
                    id,
                    ..Default::default()
                };
                c.delete_token(request).await.expect("delete a token");
                p.add(1);
            }
        })
        .await;
        progress.rate()
    }
}

/// One first page of `account`'s tokens (every account's for "") matching
/// `filter`: its latency in µs.
async fn list(c: &mut TokenClient, account: &str, filter: String) -> u64 {
    let at = Instant::now();
    c.list_tokens(pb::ListTokensRequest {
        account_id: account.to_string(),
        page_size: PAGE,
        filter,
        ..Default::default()
    })
    .await
    .expect("list tokens");
    micros(at.elapsed())
}

/// Whether gRPC health says `SERVING` at `url`.
async fn serving(url: &str) -> bool {
    let Ok(channel) = Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
    else {
        return false;
    };
    let r = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await;
    r.is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
}
