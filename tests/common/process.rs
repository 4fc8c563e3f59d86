//! The real `tokend` binary as a child process: started with `tokend serve`
//! on a free loopback port, waited for until it serves, signalled or killed
//! (SIGKILL when dropped).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::api::{Accounts, Tokens, accounts_at, bearer, operator_secret, tokens_at};
use super::backend::store_for;

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

/// A loopback address that accepts every connection and never answers:
/// a wedged server, or another service's port. It stays open for the rest
/// of the test process.
pub fn silent_addr() -> std::net::SocketAddr {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let held: Vec<_> = silent.incoming().collect();
        drop(held);
    });
    addr
}

/// `cmd`'s output, or a failure naming `what` if it has not ended within
/// `limit` (it is killed then): for a client that must give up by itself.
pub async fn output_within(
    mut cmd: tokio::process::Command,
    limit: Duration,
    what: &str,
) -> std::process::Output {
    let run = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(limit, run)
        .await
        .unwrap_or_else(|_| panic!("{what} hung: still running after {limit:?}"))
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
        // A collector named in the test's own environment is not the test's.
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stderr(std::process::Stdio::null());
    if let Some(store) = store_for(dir)
        && !extra.contains(&"--store")
    {
        cmd.args(["--store", &store]);
    }
    cmd
}

/// Runs a `serve_command` and waits until *this* process serves: it is still
/// running, its operator credential exists (tokend binds only after writing
/// it, unless it was given one) and it holds the listening socket. `None`
/// if it exited first.
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
        if ready && listens_on(process.child.id(), addr) {
            return Some(process);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("tokend did not start serving on {addr} within 15 s");
}

/// Whether process `pid` holds the listening socket on `addr`. Asking the
/// port alone is not enough: when two tests were handed the same port, the
/// other test's server answers while this one is still on its way to exiting
/// with "address in use", and the test would then talk to a stranger.
fn listens_on(pid: u32, addr: std::net::SocketAddr) -> bool {
    const LISTEN: &str = "0A";
    // The header lines do not parse as sockets, and are skipped below.
    let table = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(t).ok())
        .collect::<Vec<_>>()
        .join("\n");
    let port = format!(":{:04X}", addr.port());
    let inodes: Vec<String> = table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 9 && f[1].ends_with(&port) && f[3] == LISTEN)
        .map(|f| format!("socket:[{}]", f[9]))
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|link| inodes.iter().any(|i| link.as_os_str() == i.as_str()))
    })
}

impl Process {
    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and waits: the stop must be a clean one (exit 0), which a
    /// test that restarts on the same data relies on.
    pub fn terminate(&mut self) {
        self.signal(15);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "tokend did not stop cleanly: {status}");
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

    /// A `TokenCache` in this (the test's) process, following this server
    /// as its operator, with the default configuration.
    pub async fn operator_cache(&self) -> tokend::client::TokenCache {
        tokend::client::TokenCache::connect(
            super::api::connect(&self.url()).await,
            &operator_secret(&self.dir),
            tokend::client::CacheConfig::default(),
        )
        .await
        .expect("cache connects")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `GET /metrics` from tokend's metrics address, as Prometheus would.
pub fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: tokend\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// The value of the first sample whose line starts with `series` (0 when
/// there is none yet).
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
