//! The scale scenario's etcd side: the same number of records, each the
//! size of tokend's, put and deleted one key per request (as tokend's etcd
//! backend writes one token per transaction), then compacted and
//! defragmented, with a restart before every reading. One key per request
//! also keeps etcd's raft log as it would be: etcd snapshots, and keeps in
//! memory, a number of entries, not of bytes, so batches would inflate both.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, CompactionOptions, ConnectOptions};
use tokend::proto::create_token_request::Expiration;

use super::kit::{Progress, Server, pool};
use super::{ACCOUNTS, Footprint, Side, token_request};
use crate::peers::{etcd_command, free_addr};

/// Clients putting and deleting, as many as tokend's.
pub const CLIENTS: usize = super::WRITERS;
/// 8 GiB: etcd's default 2 GiB quota would not hold a million records and
/// their deletions until compaction.
const QUOTA: &str = "8589934592";

struct Etcd {
    server: Server,
    dir: PathBuf,
    url: String,
    startup: Duration,
}

/// Token `i`'s id, as tokend numbers them (its operator's is the first).
fn id(i: usize) -> String {
    format!(
        "TKN-{:04}-{:04}",
        (i + 2) / 10_000 % 10_000,
        (i + 2) % 10_000
    )
}

/// Token `i`'s key in etcd.
fn key(i: usize) -> String {
    format!("/tokend/tokens/{}", id(i))
}

/// Token `i`'s value in etcd: tokend's value for it while it is live (a tag
/// byte, the secret's 32-byte SHA-256, then the record's JSON as
/// `src/store/record.rs` shapes it, with ids of the same length), so that
/// both store records of the same size.
fn value(i: usize) -> Vec<u8> {
    let r = token_request(i, &format!("ACC-0000-{:04}", 2 + i % ACCOUNTS));
    let nanos = 100_000_000 + i % 900_000_000;
    let time = |secs: u64| format!("{{\"secs_since_epoch\":{secs},\"nanos_since_epoch\":{nanos}}}");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry = match &r.expiration {
        Some(Expiration::Ttl(d)) => format!(",\"expire_time\":{}", time(now + d.seconds as u64)),
        _ => String::new(),
    };
    let mut modules = r.modules.clone();
    modules.sort();
    let json = format!(
        "{{\"id\":\"{}\",\"account_id\":\"{}\",\"name\":\"{}\",\"description\":\"{}\",\
         \"icon\":null,\"status\":\"Active\",\"modules\":[\"{}\"],\"revision\":1,\
         \"audit\":{{\"created\":{{\"at\":{},\"by\":\"TKN-0000-0001\"}},\"updated\":null,\
         \"enabled\":null,\"disabled\":null,\"deleted\":null}}{expiry}}}",
        id(i),
        r.account_id,
        r.name,
        r.description,
        modules.join("\",\""),
        time(now),
    );
    let mut value = vec![b'L'];
    value.extend((0..32).map(|k| (i * 31 + k * 131) as u8));
    value.extend(json.into_bytes());
    value
}

impl Etcd {
    async fn start(dir: &Path) -> Etcd {
        let (client, peer) = (free_addr(), free_addr());
        let url = format!("http://{client}");
        let spawned = Instant::now();
        let child = etcd_command(dir, client, peer)
            .args(["--quota-backend-bytes", QUOTA])
            .spawn()
            .expect("etcd (apt-get install etcd-server)");
        let mut server = Server {
            child,
            what: "etcd",
        };
        let deadline = spawned + Duration::from_secs(600);
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(2));
        loop {
            if tokio::net::TcpStream::connect(client).await.is_ok()
                && let Ok(mut c) = Client::connect([&url], Some(options.clone())).await
                && c.get("/ready", None).await.is_ok()
            {
                break;
            }
            server.alive();
            assert!(Instant::now() < deadline, "etcd did not answer in 600 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Etcd {
            server,
            dir: dir.to_path_buf(),
            url,
            startup: spawned.elapsed(),
        }
    }

    async fn restart(self) -> Etcd {
        let dir = self.dir.clone();
        self.server.stop().await;
        Etcd::start(&dir).await
    }

    async fn footprint(&self) -> Footprint {
        self.server.footprint(&self.dir, self.startup).await
    }

    async fn clients(&self, n: usize) -> Vec<Client> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(
                Client::connect([&self.url], None)
                    .await
                    .expect("connect to etcd"),
            );
        }
        out
    }

    /// Puts (or deletes) every token's key, one at a time from each
    /// client; returns keys per second.
    async fn load(&self, n: usize, delete: bool) -> f64 {
        let what = if delete { "etcd deletes" } else { "etcd puts" };
        let progress = Progress::new(what.into(), n);
        let p = progress.clone();
        pool(self.clients(CLIENTS).await, n, move |mut c, i| {
            let p = p.clone();
            async move {
                if delete {
                    let r = c.delete(key(i), None).await.expect("an etcd delete");
                    assert_eq!(r.deleted(), 1, "{} was there", key(i));
                } else {
                    c.put(key(i), value(i), None).await.expect("an etcd put");
                }
                p.add(1);
            }
        })
        .await;
        progress.rate()
    }
}

/// etcd holding `n` records of tokend's size: empty, all live, all deleted
/// (then compacted and defragmented), each after a restart. Returns those,
/// the footprint before the last restart, and the mean value and the key
/// size.
pub async fn run(dir: &Path, n: usize) -> (Side, Footprint, (usize, usize)) {
    let e = Etcd::start(dir).await.restart().await;
    let mut side = Side {
        empty: e.footprint().await,
        ..Side::default()
    };
    side.create_rate = e.load(n, false).await;
    eprintln!("scale: etcd, {n} keys, restarting");
    let e = e.restart().await;
    side.live = e.footprint().await;
    side.delete_rate = e.load(n, true).await;
    let mut c = e.clients(1).await.remove(0);
    let head = c.get("/", None).await.expect("get");
    let revision = head.header().expect("a header").revision();
    eprintln!("scale: etcd, compacting to {revision} and defragmenting");
    c.compact(revision, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    c.defragment().await.expect("defragment");
    let compacted = e.footprint().await;
    eprintln!("scale: etcd, {n} deleted, restarting");
    let e = e.restart().await;
    side.deleted = e.footprint().await;
    e.server.stop().await;
    let sample = n.min(10_000);
    let mean = (0..sample).map(|i| value(i).len()).sum::<usize>() / sample.max(1);
    (side, compacted, (mean, key(0).len()))
}
