//! A real etcd cluster (Debian's `etcd-server`) on loopback ports, with its
//! members' data in a temp dir. Killed when dropped. Plaintext, or
//! [`EtcdCluster::start_tls`]: TLS to clients with client certificates
//! required (peers stay plaintext: tokend never talks to a peer port).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::free_addr;

pub struct EtcdCluster {
    members: Vec<Option<Child>>,
    clients: Vec<SocketAddr>,
    /// Where each member answers `/health` in plaintext: its client port,
    /// or with TLS its metrics port.
    health: Vec<SocketAddr>,
    tls: bool,
    _dir: TempDir,
}

/// PEM files for a cluster that serves clients TLS and requires a client
/// certificate signed by `ca` (etcd's `--client-cert-auth`).
pub struct ServerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl EtcdCluster {
    /// Starts `n` members and waits until every one reports healthy.
    pub async fn start(n: usize) -> EtcdCluster {
        Self::start_with(n, None).await
    }

    /// Starts `n` members serving clients TLS with `tls`'s certificate and
    /// requiring client certificates signed by its CA.
    pub async fn start_tls(n: usize, tls: &ServerTls) -> EtcdCluster {
        Self::start_with(n, Some(tls)).await
    }

    /// Up to three tries, each on fresh ports: a port handed out by
    /// [`free_addr`] can be taken by another test before etcd binds it, and
    /// a member that cannot bind never becomes healthy.
    async fn start_with(n: usize, tls: Option<&ServerTls>) -> EtcdCluster {
        for attempt in 1..=3 {
            let cluster = Self::launch(n, tls);
            if cluster.wait_healthy(Duration::from_secs(30)).await {
                return cluster;
            }
            eprintln!("etcd cluster not healthy within 30 s (try {attempt}); again on other ports");
        }
        panic!("an etcd cluster of {n} never became healthy in 3 tries");
    }

    fn launch(n: usize, tls: Option<&ServerTls>) -> EtcdCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let clients: Vec<SocketAddr> = (0..n).map(|_| free_addr()).collect();
        let peers: Vec<SocketAddr> = (0..n).map(|_| free_addr()).collect();
        let health: Vec<SocketAddr> = match tls {
            None => clients.clone(),
            Some(_) => (0..n).map(|_| free_addr()).collect(),
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let initial = (0..n)
            .map(|i| format!("m{i}=http://{}", peers[i]))
            .collect::<Vec<_>>()
            .join(",");
        // One token per cluster, so two clusters of one test binary could
        // never take each other's members for their own.
        static LAUNCHED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let nth = LAUNCHED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = format!("tokend-test-{}-{nth}", std::process::id());
        let members = (0..n)
            .map(|i| {
                let mut etcd = Command::new("etcd");
                if let Some(tls) = tls {
                    etcd.arg("--client-cert-auth")
                        .arg("--trusted-ca-file")
                        .arg(&tls.ca)
                        .arg("--cert-file")
                        .arg(&tls.cert)
                        .arg("--key-file")
                        .arg(&tls.key)
                        .arg("--listen-metrics-urls")
                        .arg(format!("http://{}", health[i]));
                }
                let child = etcd
                    .args(["--name", &format!("m{i}"), "--data-dir"])
                    .arg(dir.path().join(format!("m{i}")))
                    .args([
                        "--listen-client-urls",
                        &format!("{scheme}://{}", clients[i]),
                        "--advertise-client-urls",
                        &format!("{scheme}://{}", clients[i]),
                        "--listen-peer-urls",
                        &format!("http://{}", peers[i]),
                        "--initial-advertise-peer-urls",
                        &format!("http://{}", peers[i]),
                        "--initial-cluster",
                        &initial,
                        "--initial-cluster-state",
                        "new",
                        "--initial-cluster-token",
                        &token,
                        "--logger",
                        "zap",
                        "--log-level",
                        "error",
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("etcd (Debian's etcd-server; scripts/test.sh installs it)");
                Some(child)
            })
            .collect();
        EtcdCluster {
            members,
            clients,
            health,
            tls: tls.is_some(),
            _dir: dir,
        }
    }

    /// Whether every member reports healthy within `within`.
    async fn wait_healthy(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        for addr in &self.health {
            while !healthy(*addr) {
                if Instant::now() >= deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        true
    }

    /// Member `i`'s client address.
    pub fn client(&self, i: usize) -> SocketAddr {
        self.clients[i]
    }

    /// `--store` for a tokend on this cluster, its keys under `prefix`.
    pub fn store(&self, prefix: &str) -> String {
        let all: Vec<usize> = (0..self.clients.len()).collect();
        self.store_on(&all, prefix)
    }

    /// `--store` naming only these members.
    pub fn store_on(&self, members: &[usize], prefix: &str) -> String {
        let hosts: Vec<String> = members
            .iter()
            .map(|&i| self.clients[i].to_string())
            .collect();
        let scheme = if self.tls { "etcds" } else { "etcd" };
        format!("{scheme}://{}/{prefix}", hosts.join(","))
    }

    /// Runs `etcdctl` against every member, over TLS with `client` (a CA
    /// bundle, certificate and key) on a TLS cluster, as `user` (`name:pw`)
    /// when given. Its stdout; panics with its output unless it succeeds.
    pub fn etcdctl(&self, client: Option<&ServerTls>, user: Option<&str>, args: &[&str]) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        let urls: Vec<String> = self
            .clients
            .iter()
            .map(|a| format!("{scheme}://{a}"))
            .collect();
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", urls.join(",")));
        if let Some(c) = client {
            cmd.arg(flag("--cacert", &c.ca))
                .arg(flag("--cert", &c.cert))
                .arg(flag("--key", &c.key));
        }
        if let Some(user) = user {
            cmd.arg(format!("--user={user}"));
        }
        let out = cmd
            .args(args)
            .output()
            .expect("etcdctl (Debian's etcd-client; scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("etcdctl prints UTF-8")
    }

    /// Pauses member `i` (SIGSTOP): it hangs, as a partitioned member or a
    /// stalled disk does. Its connections stay open and its calls go
    /// unanswered, unlike a member that is gone. [`EtcdCluster::resume`]
    /// undoes it; dropping the cluster kills it all the same.
    pub fn pause(&self, i: usize) {
        self.signal(i, libc::SIGSTOP);
    }

    pub fn resume(&self, i: usize) {
        self.signal(i, libc::SIGCONT);
    }

    fn signal(&self, i: usize, signal: i32) {
        let child = self.members[i].as_ref().expect("a live member");
        // SAFETY: a signal to our own child's pid.
        let sent = unsafe { libc::kill(child.id() as i32, signal) };
        assert_eq!(sent, 0, "signal {signal} to etcd member {i}");
    }

    /// Kills member `i` (SIGKILL): the rest keep a quorum when n ≥ 3.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl EtcdCluster {
    /// Compacts etcd's history up to `revision` (physically), through its
    /// JSON gateway on the first live member.
    pub fn compact(&self, revision: i64) {
        let i = self
            .members
            .iter()
            .position(Option::is_some)
            .expect("a live member");
        let addr = self.clients[i];
        let body = format!(r#"{{"revision":"{revision}","physical":true}}"#);
        let mut s = std::net::TcpStream::connect(addr).expect("etcd member");
        write!(
            s,
            "POST /v3/kv/compaction HTTP/1.0\r\nHost: {addr}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
            "{answer}"
        );
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

fn flag(name: &str, path: &Path) -> String {
    format!("{name}={}", path.display())
}

/// etcd's own `/health`: true once the member is in a cluster with a leader.
fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}
