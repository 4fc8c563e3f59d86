//! Test harness: a real tokend (gRPC over loopback, sled in a temp dir) and
//! real tonic clients. Nothing is mocked.
//!
//! With `TOKEND_TEST_ETCD=host:port,…` (scripts/test.sh's second pass) every
//! server the suite starts keeps its records on that etcd cluster instead,
//! under a key prefix named after its data dir: the same tests, the other
//! backend. Tests of what only the embedded store has (its files, its disk)
//! say so with [`sled_only`].

#![allow(dead_code)]

pub mod etcd;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;
pub use tokend::client::Bearer;
use tokend::proto as pb;
use tokend::proto::account_service_client::AccountServiceClient;
use tokend::proto::token_service_client::TokenServiceClient;
use tokend::server::{Config, Running, start};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The crate's own client credential, for tests whose secrets are ASCII.
pub fn bearer(secret: &str) -> Bearer {
    Bearer::new(secret).expect("ASCII secret")
}

pub type Tokens = TokenServiceClient<InterceptedService<Channel, Bearer>>;
pub type Accounts = AccountServiceClient<InterceptedService<Channel, Bearer>>;

pub async fn connect(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .expect("connect")
}

pub async fn tokens_at(url: &str, bearer: Bearer) -> Tokens {
    TokenServiceClient::with_interceptor(connect(url).await, bearer)
}

pub async fn accounts_at(url: &str, bearer: Bearer) -> Accounts {
    AccountServiceClient::with_interceptor(connect(url).await, bearer)
}

/// The secret tokend wrote to `<data-dir>/operator.token` on first start.
pub fn operator_secret(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("operator.token"))
        .expect("operator.token written on first start")
        .trim()
        .to_string()
}

pub use pb::EventType;

pub struct TestServer {
    pub addr: std::net::SocketAddr,
    running: Option<Running>,
    dir: Option<TempDir>,
    path: PathBuf,
    tweak: Tweak,
}

type Tweak = std::sync::Arc<dyn Fn(&mut Config) + Send + Sync>;

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts with a config adjusted by `tweak` (kept for restarts).
    pub async fn start_with(tweak: impl Fn(&mut Config) + Send + Sync + 'static) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().to_path_buf();
        let mut s = Self::boot(&path, std::sync::Arc::new(tweak)).await;
        s.dir = Some(dir);
        s
    }

    /// Starts on a data dir left by an earlier server (see [`TestServer::stop`]).
    pub async fn start_in(dir: TempDir) -> TestServer {
        Self::start_in_with(dir, |_| {}).await
    }

    pub async fn start_in_with(
        dir: TempDir,
        tweak: impl Fn(&mut Config) + Send + Sync + 'static,
    ) -> TestServer {
        let mut s = Self::boot(dir.path(), std::sync::Arc::new(tweak)).await;
        s.dir = Some(dir);
        s
    }

    async fn boot(path: &Path, tweak: Tweak) -> TestServer {
        let mut config = Config::new("127.0.0.1:0".parse().unwrap(), path.to_path_buf());
        config.shutdown_grace = Duration::from_secs(2);
        if let Some(store) = store_for(path) {
            config.store = store.parse().expect("an etcd store");
        }
        tweak(&mut config);
        let running = start(config).await.expect("server starts");
        TestServer {
            addr: running.addr,
            running: Some(running),
            dir: None,
            path: path.to_path_buf(),
            tweak,
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.path
    }

    /// Stops the server cleanly and starts a new one on the same data dir.
    pub async fn restart(mut self) -> TestServer {
        self.running
            .take()
            .unwrap()
            .stop()
            .await
            .expect("clean stop");
        let mut next = Self::boot(&self.path, self.tweak.clone()).await;
        next.dir = self.dir.take();
        next
    }

    /// Stops the server, keeping the data dir for inspection.
    pub async fn stop(mut self) -> TempDir {
        self.running
            .take()
            .unwrap()
            .stop()
            .await
            .expect("clean stop");
        self.dir.take().unwrap()
    }

    pub fn shutdown(&self) {
        self.running.as_ref().unwrap().shutdown();
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        connect(&self.url()).await
    }

    /// Where and as whom to connect, for spawned tasks.
    pub fn target(&self) -> (String, Bearer) {
        (self.url(), self.operator())
    }

    pub fn operator(&self) -> Bearer {
        bearer(&operator_secret(&self.path))
    }

    /// A TokenService client authenticated as the operator.
    pub async fn tokens(&self) -> Tokens {
        tokens_at(&self.url(), self.operator()).await
    }

    pub async fn tokens_as(&self, bearer: Bearer) -> Tokens {
        tokens_at(&self.url(), bearer).await
    }

    /// An AccountService client authenticated as the operator.
    pub async fn accounts(&self) -> Accounts {
        accounts_at(&self.url(), self.operator()).await
    }

    pub async fn accounts_as(&self, bearer: Bearer) -> Accounts {
        accounts_at(&self.url(), bearer).await
    }
}

pub const ALL_MODULES: &[&str] = &["access-management", "commerce", "billing"];

pub async fn create_account(s: &TestServer, modules: &[&str]) -> pb::Account {
    new_account(&mut s.accounts().await, modules).await
}

pub async fn new_account(a: &mut Accounts, modules: &[&str]) -> pb::Account {
    a.create_account(pb::CreateAccountRequest {
        name: "Acme Inc.".into(),
        r#type: pb::AccountType::Client as i32,
        modules: modules.iter().map(|m| m.to_string()).collect(),
    })
    .await
    .expect("account created")
    .into_inner()
}

/// Creates a token (module `commerce`) and returns it with its secret.
pub async fn create_token(c: &mut Tokens, account_id: &str, name: &str) -> (pb::Token, String) {
    issue(c, account_id, name, &["commerce"]).await
}

/// Creates a token with `modules` and returns it with its secret.
pub async fn issue(
    c: &mut Tokens,
    account_id: &str,
    name: &str,
    modules: &[&str],
) -> (pb::Token, String) {
    let r = c
        .create_token(pb::CreateTokenRequest {
            account_id: account_id.into(),
            name: name.into(),
            description: "created by a test".into(),
            icon: String::new(),
            modules: modules.iter().map(|m| m.to_string()).collect(),
        })
        .await
        .expect("token created")
        .into_inner();
    (r.token.unwrap(), r.secret)
}

/// Sets an account's status (as the operator).
pub async fn set_account_status(
    s: &TestServer,
    id: &str,
    status: pb::AccountStatus,
) -> pb::Account {
    s.accounts()
        .await
        .update_account(pb::UpdateAccountRequest {
            account: Some(pb::Account {
                id: id.into(),
                status: status as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("account updated")
        .into_inner()
}

pub async fn delete(c: &mut Tokens, id: &str) -> Result<pb::DeleteTokenResponse, tonic::Status> {
    c.delete_token(pb::DeleteTokenRequest {
        id: id.into(),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

pub async fn verify(c: &mut Tokens, secret: &str) -> pb::VerifyTokenResponse {
    c.verify_token(pb::VerifyTokenRequest {
        secret: secret.into(),
    })
    .await
    .expect("verify answers OK")
    .into_inner()
}

pub async fn get(c: &mut Tokens, id: &str, show_deleted: bool) -> Result<pb::Token, tonic::Status> {
    c.get_token(pb::GetTokenRequest {
        id: id.into(),
        show_deleted,
    })
    .await
    .map(|r| r.into_inner())
}

pub type Events = tonic::Streaming<pb::TokenEvent>;

pub async fn watch(c: &mut Tokens, req: pb::WatchTokensRequest) -> Events {
    c.watch_tokens(req).await.expect("watch opens").into_inner()
}

/// The next event that is not PROGRESS, within 5 s.
pub async fn next_change(events: &mut Events) -> pb::TokenEvent {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(5), events.message())
            .await
            .expect("an event within 5 s")
            .expect("stream ok")
            .expect("stream open");
        if e.r#type != EventType::Progress as i32 {
            return e;
        }
    }
}

/// The `ErrorInfo.reason` of a status.
pub fn reason(s: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    s.get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

fn rss_of(path: &str) -> u64 {
    let status = std::fs::read_to_string(path).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The real `tokend` binary, started on a free loopback port. Killed (SIGKILL)
/// when dropped.
pub struct Process {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
    pub dir: PathBuf,
}

/// Starts tokend on a free port. `free_addr` can hand the same port to two
/// tests running at once; the loser exits at once, and is started again on
/// another port.
pub async fn spawn_tokend(dir: &Path, extra: &[&str]) -> Process {
    spawn_tokend_with(dir, extra, |_| {}).await
}

/// Like [`spawn_tokend`], with the command adjusted first (environment,
/// stderr, resource limits…).
pub async fn spawn_tokend_with(
    dir: &Path,
    extra: &[&str],
    adjust: impl Fn(&mut std::process::Command),
) -> Process {
    for _ in 0..5 {
        let addr = free_addr();
        let mut cmd = serve_command(dir, addr, extra);
        adjust(&mut cmd);
        if let Some(p) = launch(cmd, dir, addr).await {
            return p;
        }
    }
    panic!("tokend did not start on any of 5 free ports");
}

/// A loopback address with a port nobody listens on right now.
pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Starts tokend on `addr` (a port this test owns, e.g. for a restart).
pub async fn spawn_tokend_at(dir: &Path, addr: std::net::SocketAddr, extra: &[&str]) -> Process {
    launch(serve_command(dir, addr, extra), dir, addr)
        .await
        .unwrap_or_else(|| panic!("tokend exited instead of serving on {addr}"))
}

/// `tokend serve --listen <addr> --data-dir <dir> <extra…>`, stderr discarded.
pub fn serve_command(
    dir: &Path,
    addr: std::net::SocketAddr,
    extra: &[&str],
) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"));
    cmd.args(["serve", "--listen", &addr.to_string(), "--data-dir"])
        .arg(dir)
        .args(extra)
        .stderr(std::process::Stdio::null());
    if let Some(store) = store_for(dir)
        && !extra.contains(&"--store")
    {
        cmd.args(["--store", &store]);
    }
    cmd
}

/// The etcd cluster the suite runs on (`TOKEND_TEST_ETCD`), if any.
pub fn test_etcd() -> Option<String> {
    std::env::var("TOKEND_TEST_ETCD")
        .ok()
        .filter(|s| !s.is_empty())
}

/// `--store` for a server on data dir `dir`: None for sled; on the test etcd
/// cluster, a prefix named after the dir, so a restart on it finds the same
/// records.
pub fn store_for(dir: &Path) -> Option<String> {
    let hosts = test_etcd()?;
    let name: String = dir
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    Some(format!("etcd://{hosts}/{}", name.trim_matches('-')))
}

/// Asserts that `got` is the revision a stream owes after `prev`: the next
/// number on sled, whose one writer numbers events consecutively; a larger
/// one on etcd, whose revisions also count writes that are not events
/// (replica reports, access times, and every other tenant of the cluster).
pub fn assert_follows(prev: i64, got: i64, what: &str) {
    if test_etcd().is_some() {
        assert!(got > prev, "{what}: revision {got} after {prev}");
    } else {
        assert_eq!(got, prev + 1, "{what}");
    }
}

/// True, after saying why, when the suite runs on etcd and the calling test
/// is about what only the embedded store has: the caller returns.
pub fn sled_only(what: &str) -> bool {
    let skip = test_etcd().is_some();
    if skip {
        eprintln!("not on etcd: {what}");
    }
    skip
}

/// Runs a `serve_command` and waits until *this* process serves: it is still
/// running, its operator credential exists (tokend binds only after writing
/// it, unless it was given one) and the port answers. `None` if it exited
/// first.
pub async fn launch(
    mut cmd: std::process::Command,
    dir: &Path,
    addr: std::net::SocketAddr,
) -> Option<Process> {
    let own_credential = !cmd.get_args().any(|a| a == "--operator-token-file");
    let mut process = Process {
        child: cmd.spawn().unwrap(),
        addr,
        dir: dir.to_path_buf(),
    };
    for _ in 0..600 {
        if process.child.try_wait().unwrap().is_some() {
            return None;
        }
        let ready = !own_credential || dir.join("operator.token").exists();
        if ready && tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Some(process);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("tokend did not start serving on {addr} within 15 s");
}

impl Process {
    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by number (15 = SIGTERM, 2 = SIGINT).
    pub fn signal(&self, sig: i32) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Resident memory of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_of(&format!("/proc/{}/status", self.child.id()))
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn tokens(&self) -> Tokens {
        tokens_at(&self.url(), bearer(&operator_secret(&self.dir))).await
    }

    pub async fn accounts(&self) -> Accounts {
        accounts_at(&self.url(), bearer(&operator_secret(&self.dir))).await
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The id of the operator token (what audit entries and events name).
pub async fn operator_id(c: &mut Tokens) -> String {
    let list = c
        .list_tokens(pb::ListTokensRequest {
            filter: r#"name = "operator""#.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    list.tokens
        .into_iter()
        .find(|t| t.name == "operator")
        .expect("the bootstrap operator token")
        .id
}

/// The current global revision: what a `send_initial` snapshot reflects.
pub async fn head(c: &mut Tokens) -> i64 {
    let mut w = watch(
        c,
        pb::WatchTokensRequest {
            send_initial: true,
            ..Default::default()
        },
    )
    .await;
    loop {
        let e = next_change(&mut w).await;
        if e.r#type == EventType::Synced as i32 {
            return e.revision;
        }
    }
}
