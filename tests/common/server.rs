//! In-process test servers: a real tokend (gRPC over loopback) started by
//! `tokend::server::start` on a temp data dir, with clients for it, and
//! clean stops and restarts on the same data dir.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;
use tokend::server::{Config, Running, start};
use tonic::transport::Channel;

use super::api::{
    Accounts, Bearer, Tokens, accounts_at, bearer, connect, operator_secret, tokens_at,
};
use super::backend::store_for;

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

    async fn stop_running(&mut self) {
        let running = self.running.take().expect("a running server");
        running.stop().await.expect("clean stop");
    }

    /// Stops the server cleanly and starts a new one on the same data dir.
    pub async fn restart(mut self) -> TestServer {
        self.stop_running().await;
        let mut next = Self::boot(&self.path, self.tweak.clone()).await;
        next.dir = self.dir.take();
        next
    }

    /// Stops the server, keeping the data dir for inspection.
    pub async fn stop(mut self) -> TempDir {
        self.stop_running().await;
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
