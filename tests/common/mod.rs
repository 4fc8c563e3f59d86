//! Test harness: a real tokend (gRPC over loopback, sled in a temp dir) and
//! real tonic clients. Nothing is mocked.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;
use tokend::proto as pb;
use tokend::proto::account_service_client::AccountServiceClient;
use tokend::proto::token_service_client::TokenServiceClient;
use tokend::server::{Config, Running, start};
use tonic::transport::Channel;

pub use pb::EventType;

pub struct TestServer {
    pub addr: std::net::SocketAddr,
    running: Option<Running>,
    dir: Option<TempDir>,
    path: PathBuf,
    tweak: fn(&mut Config),
}

fn no_tweak(_: &mut Config) {}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(no_tweak).await
    }

    /// Starts with a config adjusted by `tweak` (kept for restarts).
    pub async fn start_with(tweak: fn(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().to_path_buf();
        let mut s = Self::boot(&path, tweak).await;
        s.dir = Some(dir);
        s
    }

    async fn boot(path: &Path, tweak: fn(&mut Config)) -> TestServer {
        let mut config = Config::new("127.0.0.1:0".parse().unwrap(), path.to_path_buf());
        config.shutdown_grace = Duration::from_secs(2);
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
        let mut next = Self::boot(&self.path, self.tweak).await;
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

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect")
    }

    pub async fn tokens(&self) -> TokenServiceClient<Channel> {
        TokenServiceClient::new(self.channel().await)
    }

    pub async fn accounts(&self) -> AccountServiceClient<Channel> {
        AccountServiceClient::new(self.channel().await)
    }
}

pub const ALL_MODULES: &[&str] = &["access-management", "commerce", "billing"];

pub async fn create_account(s: &TestServer, modules: &[&str]) -> pb::Account {
    s.accounts()
        .await
        .create_account(pb::CreateAccountRequest {
            name: "Acme Inc.".into(),
            r#type: pb::AccountType::Client as i32,
            modules: modules.iter().map(|m| m.to_string()).collect(),
        })
        .await
        .expect("account created")
        .into_inner()
}

/// Creates a token and returns it with its secret.
pub async fn create_token(
    c: &mut TokenServiceClient<Channel>,
    account_id: &str,
    name: &str,
) -> (pb::Token, String) {
    let r = c
        .create_token(pb::CreateTokenRequest {
            account_id: account_id.into(),
            name: name.into(),
            description: "created by a test".into(),
            icon: String::new(),
            modules: vec!["commerce".into()],
        })
        .await
        .expect("token created")
        .into_inner();
    (r.token.unwrap(), r.secret)
}

pub async fn delete(
    c: &mut TokenServiceClient<Channel>,
    id: &str,
) -> Result<pb::DeleteTokenResponse, tonic::Status> {
    c.delete_token(pb::DeleteTokenRequest {
        id: id.into(),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

pub async fn verify(c: &mut TokenServiceClient<Channel>, secret: &str) -> pb::VerifyTokenResponse {
    c.verify_token(pb::VerifyTokenRequest {
        secret: secret.into(),
    })
    .await
    .expect("verify answers OK")
    .into_inner()
}

pub async fn get(
    c: &mut TokenServiceClient<Channel>,
    id: &str,
    show_deleted: bool,
) -> Result<pb::Token, tonic::Status> {
    c.get_token(pb::GetTokenRequest {
        id: id.into(),
        show_deleted,
    })
    .await
    .map(|r| r.into_inner())
}

pub type Events = tonic::Streaming<pb::TokenEvent>;

pub async fn watch(c: &mut TokenServiceClient<Channel>, req: pb::WatchTokensRequest) -> Events {
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
}

pub async fn spawn_tokend(dir: &Path, extra: &[&str]) -> Process {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["serve", "--listen", &addr.to_string(), "--data-dir"])
        .arg(dir)
        .args(extra)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let process = Process { child, addr };
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return process;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("tokend did not start listening on {addr}");
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
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
