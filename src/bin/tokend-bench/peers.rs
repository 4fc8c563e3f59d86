//! The systems under test, as real server processes on loopback with their
//! data on the same disk, behind one interface that does the same work on
//! each: tokend stores tokens and is driven through its own gRPC API; etcd
//! stores keys under a prefix and is driven through its v3 API; the floor
//! (`floor.rs`) speaks tokend's API and is driven by tokend's client.
//!
//! | work            | tokend                      | etcd                        |
//! |-----------------|-----------------------------|-----------------------------|
//! | create an item  | `CreateToken`               | `Put /tokens/<n>` (~300 B)  |
//! | delete it       | `DeleteToken` (durable)     | `Delete` (durable: WAL)     |
//! | look it up      | `VerifyToken` (its secret)  | `Get` (default: linearizable) |
//! | watch deletions | `WatchTokens` stream        | `Watch` prefix stream       |
//!
//! This module owns starting and stopping the processes and reading their
//! memory and fsync counters; it never measures anything itself.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, DeleteOptions, EventType as EtcdEvent, GetOptions, WatchOptions};
use tokend::client::Bearer;
use tokend::proto as pb;
use tokend::proto::account_service_client::AccountServiceClient;
use tokend::proto::token_service_client::TokenServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// One stored thing: a token (id, secret) or an etcd key. No Debug: it
/// holds a secret.
#[derive(Clone)]
pub struct Item {
    pub key: String,
    pub secret: String,
}

/// A change a watcher heard.
#[derive(Debug)]
pub struct Change {
    pub key: String,
    pub revision: i64,
    pub deleted: bool,
}

/// A server's fsyncs so far, from its fsync-duration histogram.
#[derive(Clone, Copy)]
pub struct Fsyncs {
    pub count: u64,
    /// Their time, summed. tokend's and the floor's include the log's
    /// `write` before the sync; etcd's is the `fdatasync` alone.
    pub seconds: f64,
}

impl Fsyncs {
    fn read(addr: SocketAddr, histogram: &str) -> Fsyncs {
        Fsyncs {
            count: sample(addr, &format!("{histogram}_count ")) as u64,
            seconds: sample(addr, &format!("{histogram}_sum ")),
        }
    }
}

pub trait Peer: Send + Sync + 'static {
    /// A client on its own connection; clones share it.
    type Conn: Clone + Send + Sync + 'static;
    type Watch: Send + 'static;

    fn pid(&self) -> u32;
    /// Every fsync the server has made (tokend: its commits; etcd: its WAL).
    fn fsyncs(&self) -> Fsyncs;
    fn connect(&self) -> impl Future<Output = Self::Conn> + Send;
    fn create(&self, c: &Self::Conn, n: usize) -> impl Future<Output = Item> + Send;
    /// Deletes durably; returns the revision of the deletion.
    fn delete(c: &Self::Conn, item: &Item) -> impl Future<Output = i64> + Send;
    fn lookup(c: &Self::Conn, item: &Item) -> impl Future<Output = ()> + Send;
    /// A stream of every change from `from` (None: from now). Returns once
    /// the server has set the stream up.
    fn watch(c: &Self::Conn, from: Option<i64>) -> impl Future<Output = Self::Watch> + Send;
    /// The next changes, or None when the stream ended.
    fn next(w: &mut Self::Watch) -> impl Future<Output = Option<Vec<Change>>> + Send;

    /// Resident memory of the server process, in KiB.
    fn rss_kib(&self) -> u64 {
        status_kib(self.pid(), "VmRSS")
    }
}

/// One of the memory figures of process `pid` in `/proc/<pid>/status`
/// (`VmRSS`, `RssAnon`, …), in KiB.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("server process");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// What a server's threads do, as their names tell: the split of its CPU
/// in section 2 (tokend's and the floor's; etcd's Go threads have no such
/// names).
pub const THREAD_ROLES: [&str; 4] = [
    "runtime (requests, planning)",
    "writer (log sync, answers)",
    "applier (sled)",
    "sled I/O pool",
];

fn thread_role(name: &str) -> Option<usize> {
    match name {
        "tokio-rt-worker" => Some(0),
        "tokend-writer" | "floor-writer" => Some(1),
        "tokend-apply" => Some(2),
        n if n.starts_with("sled-io") => Some(3),
        _ => None,
    }
}

/// The CPU time so far of each live thread of process `pid`: (thread id,
/// its place in [`THREAD_ROLES`] if it has one, time on a CPU). From the
/// scheduler's own count (`schedstat`, in nanoseconds) where the kernel
/// keeps one: `stat`'s user and system ticks are sampled at 100 Hz, coarser
/// than a whole run of the floor at 32 clients is long. A kernel built
/// without it (no `CONFIG_SCHED_INFO`) still has the ticks, so a run there
/// measures coarsely rather than reading zero. A thread that ends between
/// listing and reading is skipped.
pub fn thread_cpu_time(pid: u32) -> Vec<(u32, Option<usize>, Duration)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let tid = task.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
            let cpu = scheduled(&task.path()).or_else(|| ticked(&task.path()))?;
            Some((tid, thread_role(comm.trim_end()), cpu))
        })
        .collect()
}

/// A thread's time on a CPU by the scheduler's count.
fn scheduled(task: &std::path::Path) -> Option<Duration> {
    let schedstat = std::fs::read_to_string(task.join("schedstat")).ok()?;
    Some(Duration::from_nanos(
        schedstat.split(' ').next()?.parse().ok()?,
    ))
}

/// A thread's user and system time, in the kernel's clock ticks.
fn ticked(task: &std::path::Path) -> Option<Duration> {
    let stat = std::fs::read_to_string(task.join("stat")).ok()?;
    // Fields 14 and 15, counted after the command's closing parenthesis
    // (a command may hold spaces and parentheses of its own).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let per_second = rustix::param::clock_ticks_per_second().max(1);
    Some(Duration::from_nanos(ticks * 1_000_000_000 / per_second))
}

/// A server process, killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn wait_for_port(addr: SocketAddr, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited during start-up: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The sum of one Prometheus series at `/metrics` (a plain GET: the bench must not grow an HTTP
/// client for one line of text).
pub fn sample(addr: SocketAddr, series: &str) -> f64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("metrics endpoint");
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------- tokend

/// The `tokend` binary that sits beside this one.
pub fn tokend_bin() -> PathBuf {
    std::env::current_exe().unwrap().with_file_name("tokend")
}

/// `tokend serve` on sled in `data_dir` (or wherever `extra` says), as
/// every scenario runs it: on `addr`, metrics on `metrics`, logs at warning
/// level and thrown away.
pub fn tokend_command(
    data_dir: &Path,
    addr: SocketAddr,
    metrics: SocketAddr,
    extra: &[&str],
) -> Command {
    let mut command = Command::new(tokend_bin());
    command
        .args(["serve", "--listen", &addr.to_string(), "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .args([
            "--max-watchers",
            "20000",
            "--metrics-addr",
            &metrics.to_string(),
        ])
        // One log line per call is tokend's default; like etcd's, it is
        // turned down to warnings for the benchmark.
        .env("RUST_LOG", "warn")
        // Tracing is on only where a scenario asks for it.
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stderr(Stdio::null());
    command
}

pub type TokenClient = TokenServiceClient<InterceptedService<Channel, Bearer>>;

pub struct Tokend {
    process: Process,
    pub url: String,
    metrics: SocketAddr,
    auth: Bearer,
    /// The operator secret, for clients that make their own connection.
    pub credential: String,
    account: String,
    pub data_dir: PathBuf,
}

impl Tokend {
    /// Starts the `tokend` binary that sits beside this one, on sled.
    pub async fn start(root: &Path) -> Tokend {
        Tokend::start_with(root.join("tokend"), &[], &[]).await
    }

    /// Starts tokend with its records on `etcd` (the etcd backend), as one
    /// replica would run: the cost of going distributed.
    pub async fn start_on_etcd(root: &Path, etcd: &Etcd) -> Tokend {
        let store = format!("etcd://{}/tokend-bench", etcd.client_addr);
        Tokend::start_with(root.join("tokend-etcd"), &["--store", &store], &[]).await
    }

    /// Starts tokend on sled in `root/name`, exporting traces to `otlp`
    /// sampled at `ratio` (the standard `OTEL_TRACES_SAMPLER` variables),
    /// or with tracing off when `None`.
    pub async fn start_traced(root: &Path, name: &str, otlp: Option<(&str, f64)>) -> Tokend {
        let data_dir = root.join(name);
        match otlp {
            None => Tokend::start_with(data_dir, &[], &[]).await,
            Some((endpoint, ratio)) => {
                let ratio = ratio.to_string();
                let env = [
                    ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", &ratio),
                ];
                Tokend::start_with(data_dir, &["--otlp-endpoint", endpoint], &env).await
            }
        }
    }

    async fn start_with(data_dir: PathBuf, extra: &[&str], env: &[(&str, &str)]) -> Tokend {
        let (addr, metrics) = (free_addr(), free_addr());
        let mut child = tokend_command(&data_dir, addr, metrics, extra)
            .envs(env.iter().copied())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{}: {e} (build it with --release)", tokend_bin().display())
            });
        wait_for_port(addr, &mut child, "tokend").await;
        let secret = std::fs::read_to_string(data_dir.join("operator.token")).unwrap();
        let credential = secret.trim().to_string();
        let auth = Bearer::new(&credential).expect("an ASCII secret");
        let url = format!("http://{addr}");
        let channel = Channel::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut accounts = AccountServiceClient::with_interceptor(channel, auth.clone());
        let account = accounts
            .create_account(pb::CreateAccountRequest {
                name: "Bench".into(),
                r#type: pb::AccountType::Client as i32,
                modules: vec!["commerce".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .id;
        Tokend {
            process: Process(child),
            url,
            metrics,
            auth,
            credential,
            account,
            data_dir,
        }
    }
}

impl Tokend {
    /// Starts the floor (`floor.rs`): this binary as a bare `TokenService`
    /// server, driven through the same client as tokend.
    pub async fn start_floor(root: &Path) -> Tokend {
        let data_dir = root.join("floor");
        let (addr, metrics) = (free_addr(), free_addr());
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg("--floor-server")
            .args([addr.to_string(), metrics.to_string()])
            .arg(&data_dir)
            .stderr(Stdio::null())
            .spawn()
            .expect("the floor server");
        wait_for_port(addr, &mut child, "the floor").await;
        Tokend {
            process: Process(child),
            url: format!("http://{addr}"),
            metrics,
            // Sent and ignored: the floor does not authenticate.
            auth: Bearer::new("floor").expect("an ASCII secret"),
            credential: String::new(),
            account: "ACC-floor".into(),
            data_dir,
        }
    }

    /// A connection of its own.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url.clone())
            .unwrap()
            .connect()
            .await
            .expect("connect to tokend")
    }
}

impl Peer for Tokend {
    type Conn = TokenClient;
    type Watch = tonic::Streaming<pb::TokenEvent>;

    fn pid(&self) -> u32 {
        self.process.0.id()
    }

    fn fsyncs(&self) -> Fsyncs {
        Fsyncs::read(self.metrics, "tokend_fsync_duration_seconds")
    }

    async fn connect(&self) -> TokenClient {
        TokenServiceClient::with_interceptor(self.channel().await, self.auth.clone())
    }

    async fn create(&self, c: &TokenClient, n: usize) -> Item {
        let r = c
            .clone()
            .create_token(pb::CreateTokenRequest {
                account_id: self.account.clone(),
                name: format!("bench {n}"),
                description: "created by tokend-bench".into(),
                modules: vec!["commerce".into()],
                ..Default::default()
            })
            .await
            .expect("create")
            .into_inner();
        Item {
            key: r.token.unwrap().id,
            secret: r.secret,
        }
    }

    async fn delete(c: &TokenClient, item: &Item) -> i64 {
        c.clone()
            .delete_token(pb::DeleteTokenRequest {
                id: item.key.clone(),
                ..Default::default()
            })
            .await
            .expect("delete")
            .into_inner()
            .revision
    }

    async fn lookup(c: &TokenClient, item: &Item) {
        let r = c
            .clone()
            .verify_token(pb::VerifyTokenRequest {
                secret: item.secret.clone(),
            })
            .await
            .expect("verify")
            .into_inner();
        assert!(r.valid, "a seeded token verifies");
    }

    async fn watch(c: &TokenClient, from: Option<i64>) -> Self::Watch {
        c.clone()
            .watch_tokens(pb::WatchTokensRequest {
                start_revision: from.unwrap_or(0),
                ..Default::default()
            })
            .await
            .expect("watch")
            .into_inner()
    }

    async fn next(w: &mut Self::Watch) -> Option<Vec<Change>> {
        let e = w.message().await.ok()??;
        let changes = e
            .token
            .map(|t| Change {
                key: t.id,
                revision: e.revision,
                deleted: e.r#type == pb::EventType::Deleted as i32,
            })
            .into_iter()
            .collect();
        Some(changes)
    }
}

// ------------------------------------------------------------------ etcd

const PREFIX: &str = "/tokens/";

/// Debian's `etcd` as one member named `bench` in `data_dir`, with default
/// durability, serving clients on `client`; logs at warning level and
/// thrown away.
pub fn etcd_command(data_dir: &Path, client: SocketAddr, peer: SocketAddr) -> Command {
    let mut command = Command::new("etcd");
    command
        .args(["--name", "bench", "--data-dir"])
        .arg(data_dir)
        .args([
            "--listen-client-urls",
            &format!("http://{client}"),
            "--advertise-client-urls",
            &format!("http://{client}"),
            "--listen-peer-urls",
            &format!("http://{peer}"),
            "--initial-advertise-peer-urls",
            &format!("http://{peer}"),
            "--initial-cluster",
            &format!("bench=http://{peer}"),
            "--logger",
            "zap",
            "--log-level",
            "warn",
        ])
        .stderr(Stdio::null());
    command
}

pub struct Etcd {
    process: Process,
    pub client_addr: SocketAddr,
}

impl Etcd {
    /// Starts Debian's `etcd` as one member with default durability.
    pub async fn start(root: &Path) -> Etcd {
        let (client, peer) = (free_addr(), free_addr());
        let mut child = etcd_command(&root.join("etcd"), client, peer)
            .spawn()
            .expect("etcd (apt-get install etcd-server)");
        wait_for_port(client, &mut child, "etcd").await;
        let etcd = Etcd {
            process: Process(child),
            client_addr: client,
        };
        // Ready once it has a leader and answers.
        let mut c = etcd.connect().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.get("/ready", None).await.is_err() {
            assert!(Instant::now() < deadline, "etcd never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        etcd
    }

    pub fn version() -> String {
        Command::new("etcd")
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(str::to_string))
            .unwrap_or_else(|| "etcd (version unknown)".into())
    }
}

impl Peer for Etcd {
    type Conn = Client;
    type Watch = etcd_client::WatchStream;

    fn pid(&self) -> u32 {
        self.process.0.id()
    }

    fn fsyncs(&self) -> Fsyncs {
        Fsyncs::read(self.client_addr, "etcd_disk_wal_fsync_duration_seconds")
    }

    async fn connect(&self) -> Client {
        Client::connect([format!("http://{}", self.client_addr)], None)
            .await
            .expect("connect to etcd")
    }

    async fn create(&self, c: &Client, n: usize) -> Item {
        // About the size of a token record.
        let key = format!("{PREFIX}{n:010}");
        let value = format!(
            "{{\"name\":\"bench {n}\",\"description\":\"{}\"}}",
            "x".repeat(280)
        );
        c.clone().put(key.clone(), value, None).await.expect("put");
        Item {
            key,
            secret: String::new(),
        }
    }

    async fn delete(c: &Client, item: &Item) -> i64 {
        let r = c
            .clone()
            .delete(item.key.clone(), None::<DeleteOptions>)
            .await
            .expect("delete");
        assert_eq!(r.deleted(), 1, "{} existed", item.key);
        r.header().map_or(0, |h| h.revision())
    }

    async fn lookup(c: &Client, item: &Item) {
        let r = c
            .clone()
            .get(item.key.clone(), None::<GetOptions>)
            .await
            .expect("get");
        assert_eq!(r.kvs().len(), 1, "a seeded key is there");
    }

    async fn watch(c: &Client, from: Option<i64>) -> Self::Watch {
        let mut options = WatchOptions::new().with_prefix();
        if let Some(rev) = from {
            options = options.with_start_revision(rev);
        }
        c.clone().watch(PREFIX, Some(options)).await.expect("watch")
    }

    async fn next(w: &mut Self::Watch) -> Option<Vec<Change>> {
        let r = w.message().await.ok()??;
        Some(
            r.events()
                .iter()
                .filter_map(|e| {
                    let kv = e.kv()?;
                    Some(Change {
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        revision: kv.mod_revision(),
                        deleted: e.event_type() == EtcdEvent::Delete,
                    })
                })
                .collect(),
        )
    }
}
