//! The measurements, each written once and run against either peer, so the
//! two sides do the same work by construction. Latencies go into
//! `hdrhistogram`s in microseconds.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use crate::peers::{Item, Peer, THREAD_ROLES, thread_cpu_time};

/// p50 / p99 / max, in milliseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50: ms(h.value_at_quantile(0.5)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

/// Watch streams per HTTP/2 connection (tokend allows 1,024).
const STREAMS_PER_CONNECTION: usize = 250;

/// Creates `n` items from `clients` concurrent clients.
pub async fn seed<P: Peer>(peer: &Arc<P>, n: usize, clients: usize) -> Vec<Item> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..clients {
        let (peer, next) = (peer.clone(), next.clone());
        tasks.spawn(async move {
            let c = peer.connect().await;
            let mut made = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return made;
                }
                made.push(peer.create(&c, i).await);
            }
        });
    }
    let mut items = Vec::with_capacity(n);
    while let Some(made) = tasks.join_next().await {
        items.extend(made.expect("seeding"));
    }
    items
}

pub struct FanOut {
    /// Send of the delete → each watcher's receipt of its event.
    pub receipt: Latency,
    /// Send of the delete → its reply.
    pub reply: Latency,
    /// Server RSS growth for the watchers, while idle, per stream (KiB).
    pub kib_per_idle_stream: f64,
}

/// W watchers of every change; `deletes` deletes at `rate` per second.
pub async fn fan_out<P: Peer>(peer: &Arc<P>, watchers: usize, deletes: usize, rate: f64) -> FanOut {
    let items = seed(peer, deletes, 8).await;
    let index: Arc<HashMap<String, usize>> = Arc::new(
        items
            .iter()
            .enumerate()
            .map(|(i, it)| (it.key.clone(), i))
            .collect(),
    );
    let sent: Arc<Vec<OnceLock<Instant>>> =
        Arc::new((0..deletes).map(|_| OnceLock::new()).collect());

    settle().await;
    let rss_before = peer.rss_kib();
    let mut streams = Vec::with_capacity(watchers);
    for _ in 0..watchers.div_ceil(STREAMS_PER_CONNECTION) {
        let c = peer.connect().await;
        let open = STREAMS_PER_CONNECTION.min(watchers - streams.len());
        let mut opening = JoinSet::new();
        for _ in 0..open {
            let c = c.clone();
            opening.spawn(async move { P::watch(&c, None).await });
        }
        while let Some(w) = opening.join_next().await {
            streams.push(w.expect("watch opens"));
        }
    }
    settle().await;
    let rss_idle = peer.rss_kib();

    let mut listening = JoinSet::new();
    for mut w in streams {
        let (index, sent) = (index.clone(), sent.clone());
        listening.spawn(async move {
            let mut heard = Vec::with_capacity(deletes);
            while heard.len() < deletes {
                let Some(changes) = P::next(&mut w).await else {
                    panic!("a watch stream ended early");
                };
                let now = Instant::now();
                for ch in changes.iter().filter(|c| c.deleted) {
                    if let Some(at) = index.get(&ch.key).and_then(|i| sent[*i].get()) {
                        heard.push(micros(now - *at));
                    }
                }
            }
            heard
        });
    }

    let c = peer.connect().await;
    let mut reply = histogram();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for (i, item) in items.iter().enumerate() {
        tick.tick().await;
        let at = Instant::now();
        sent[i].set(at).unwrap();
        P::delete(&c, item).await;
        reply.record(micros(at.elapsed())).unwrap();
    }

    let mut receipt = histogram();
    let deadline = Duration::from_secs(120);
    while let Some(heard) = tokio::time::timeout(deadline, listening.join_next())
        .await
        .expect("every watcher hears every delete")
    {
        for us in heard.expect("watcher") {
            receipt.record(us).unwrap();
        }
    }
    FanOut {
        receipt: Latency::of(&receipt),
        reply: Latency::of(&reply),
        kib_per_idle_stream: (rss_idle.saturating_sub(rss_before)) as f64 / watchers as f64,
    }
}

/// Lets the server's memory settle before a reading.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

#[derive(Clone, Copy)]
pub struct Throughput {
    pub per_second: f64,
    pub latency: Latency,
    /// Operations per fsync the server made meanwhile (deletes only).
    pub per_fsync: Option<f64>,
    /// The share of the run's time the server spent in those fsyncs
    /// (deletes only). One writer syncs at a time: the rest of its time is
    /// the work it does around each sync and its wait for requests.
    pub in_fsync: Option<f64>,
    /// CPU time per operation, in µs, of the server and of this load tool:
    /// on a machine this small, where the cycles go decides the rate.
    pub cpu_us: f64,
    pub load_cpu_us: f64,
    /// The server's CPU µs per operation by [`THREAD_ROLES`] (the rest of
    /// `cpu_us` is other threads').
    pub thread_cpu_us: [f64; THREAD_ROLES.len()],
}

/// One run of a scenario, against the peer [`rounds`]' closure was called
/// with (a place in the array it returns).
pub type Run<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + 'a>>;

/// What a peer's runs are ranked by, to take the median one.
pub trait Ranked {
    fn rank(&self) -> f64;
}

impl Ranked for Throughput {
    fn rank(&self) -> f64 {
        self.per_second
    }
}

impl Ranked for FanOut {
    fn rank(&self) -> f64 {
        self.receipt.p99
    }
}

/// Runs a scenario against N peers for `rounds` rounds, each peer once per
/// round, in an order rotated by one each round, and returns each peer's
/// runs, whose median (by rate, or by receipt p99 for a fan-out) is its row
/// ([`Runs::median`]). On a shared machine one run moves by up to a third
/// with what the neighbours do (runs of this tool minutes apart, on the same
/// code); interleaved rounds spread a slow stretch over every peer, and a
/// median leaves out the round a burst hit. Each peer's figures all come
/// from one of its runs, so they stay consistent with one another (but for
/// the fan-out's memory per idle stream, which needs [`Runs::first`]).
/// `rounds` is odd, so that the median is a run rather than a choice
/// between two. Each run starts after a quiet
/// second: what the server before it left to do in the background (etcd
/// commits its backend every 100 ms) is done by then, so the order of
/// peers within a round gives none of them the other's leftovers.
pub async fn rounds<'a, T: Ranked, const N: usize>(
    rounds: usize,
    run: impl Fn(usize) -> Run<'a, T>,
) -> [Runs<T>; N] {
    assert!(rounds % 2 == 1, "an odd number of rounds, not {rounds}");
    let mut runs: [Vec<T>; N] = std::array::from_fn(|_| Vec::new());
    for round in 0..rounds {
        for k in 0..N {
            let peer = (k + round) % N;
            tokio::time::sleep(Duration::from_secs(1)).await;
            runs[peer].push(run(peer).await);
        }
    }
    runs.map(Runs)
}

/// One peer's runs of a scenario, in the order they ran.
pub struct Runs<T>(Vec<T>);

impl<T> Runs<T> {
    /// The first run: the only one of these on a server that had not run
    /// this scenario at this size before (memory growth needs it: later
    /// runs reuse what the first freed).
    pub fn first(&self) -> &T {
        &self.0[0]
    }
}

impl<T: Ranked> Runs<T> {
    /// The median run: the peer's row.
    pub fn median(mut self) -> T {
        self.0.sort_by(|a, b| a.rank().total_cmp(&b.rank()));
        self.0.swap_remove(self.0.len() / 2)
    }
}

/// CPU used by the server and by this process, per operation, since `start`.
struct CpuMeter {
    server: u32,
    /// Each thread's CPU at the start, by thread id: the server's, this
    /// process's.
    start: (HashMap<u32, Duration>, HashMap<u32, Duration>),
}

/// What [`CpuMeter::per_op`] measured, in µs per operation.
struct CpuUse {
    server: f64,
    load: f64,
    /// The server's, by [`THREAD_ROLES`].
    threads: [f64; THREAD_ROLES.len()],
}

impl CpuMeter {
    fn start(server: u32) -> CpuMeter {
        let by_thread = |pid| {
            thread_cpu_time(pid)
                .into_iter()
                .map(|(tid, _, cpu)| (tid, cpu))
                .collect()
        };
        CpuMeter {
            server,
            start: (by_thread(server), by_thread(std::process::id())),
        }
    }

    /// Each thread's CPU since the start, summed (a thread started during
    /// the run counts from zero; one that ended is missing), and the
    /// server's by role.
    fn per_op(&self, ops: usize) -> CpuUse {
        let per = |d: Duration| d.as_secs_f64() * 1e6 / ops.max(1) as f64;
        let since = |pid, start: &HashMap<u32, Duration>| {
            let mut all = Duration::ZERO;
            let mut roles = [Duration::ZERO; THREAD_ROLES.len()];
            for (tid, role, cpu) in thread_cpu_time(pid) {
                let used = cpu.saturating_sub(start.get(&tid).copied().unwrap_or_default());
                all += used;
                if let Some(role) = role {
                    roles[role] += used;
                }
            }
            (all, roles)
        };
        let (server, roles) = since(self.server, &self.start.0);
        let (load, _) = since(std::process::id(), &self.start.1);
        CpuUse {
            server: per(server),
            load: per(load),
            threads: roles.map(per),
        }
    }
}

/// `clients` clients, each on its own connection, delete `n` fresh items.
pub async fn deletes<P: Peer>(peer: &Arc<P>, clients: usize, n: usize) -> Throughput {
    let items = seed(peer, n, 32).await;
    delete_all(peer, clients, items).await
}

/// `clients` clients, each on its own connection, delete `items`: the timed
/// part of [`deletes`].
pub async fn delete_all<P: Peer>(peer: &Arc<P>, clients: usize, items: Vec<Item>) -> Throughput {
    let n = items.len();
    let items = Arc::new(items);
    let cpu = CpuMeter::start(peer.pid());
    let next = Arc::new(AtomicUsize::new(0));
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(peer.connect().await);
    }
    let fsyncs = peer.fsyncs();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for c in conns {
        let (items, next) = (items.clone(), next.clone());
        tasks.spawn(async move {
            let mut h = histogram();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else {
                    return h;
                };
                let at = Instant::now();
                P::delete(&c, item).await;
                h.record(micros(at.elapsed())).unwrap();
            }
        });
    }
    let mut all = histogram();
    while let Some(h) = tasks.join_next().await {
        all.add(h.expect("deleter")).unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu.per_op(n);
    let after = peer.fsyncs();
    let synced = after.count.saturating_sub(fsyncs.count).max(1);
    Throughput {
        per_second: n as f64 / elapsed,
        latency: Latency::of(&all),
        per_fsync: Some(n as f64 / synced as f64),
        in_fsync: Some((after.seconds - fsyncs.seconds) / elapsed),
        cpu_us: cpu.server,
        load_cpu_us: cpu.load,
        thread_cpu_us: cpu.threads,
    }
}

/// One kind of call a closed-loop client makes about an item.
pub trait Call: Send + 'static {
    fn call(&self, item: &Item) -> impl Future<Output = ()> + Send;
}

/// A peer's own lookup: tokend `VerifyToken`, etcd `Get`.
struct Lookup<P: Peer>(P::Conn);

impl<P: Peer> Call for Lookup<P> {
    fn call(&self, item: &Item) -> impl Future<Output = ()> + Send {
        P::lookup(&self.0, item)
    }
}

/// `clients` clients look up random items among `items` for `how_long`.
pub async fn lookups<P: Peer>(
    peer: &Arc<P>,
    items: &Arc<Vec<Item>>,
    clients: usize,
    how_long: Duration,
) -> Throughput {
    let mut callers = Vec::new();
    for _ in 0..clients {
        callers.push(Lookup::<P>(peer.connect().await));
    }
    closed_loop(peer.pid(), callers, items, how_long).await
}

/// Each caller, on its own connection, calls about random items among
/// `items`, one call at a time, for `how_long`; `server` is measured.
pub async fn closed_loop<C: Call>(
    server: u32,
    callers: Vec<C>,
    items: &Arc<Vec<Item>>,
    how_long: Duration,
) -> Throughput {
    let cpu = CpuMeter::start(server);
    let end = Instant::now() + how_long;
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (k, c) in callers.into_iter().enumerate() {
        let items = items.clone();
        tasks.spawn(async move {
            let mut h = histogram();
            // A stride walk: every client visits items in its own order.
            let mut i = k * 7919;
            while Instant::now() < end {
                i = (i + 104_729) % items.len();
                let at = Instant::now();
                c.call(&items[i]).await;
                h.record(micros(at.elapsed())).unwrap();
            }
            h
        });
    }
    let mut all = histogram();
    while let Some(h) = tasks.join_next().await {
        all.add(h.expect("caller")).unwrap();
    }
    let cpu = cpu.per_op(all.len() as usize);
    Throughput {
        per_second: all.len() as f64 / started.elapsed().as_secs_f64(),
        latency: Latency::of(&all),
        per_fsync: None,
        in_fsync: None,
        cpu_us: cpu.server,
        load_cpu_us: cpu.load,
        thread_cpu_us: cpu.threads,
    }
}

/// A watcher resuming `behind` revisions back: time until it has heard the
/// change at the head. `mark` is an item to delete, which sets the head.
pub async fn catch_up<P: Peer>(peer: &Arc<P>, mark: &Item, behind: i64) -> Duration {
    let c = peer.connect().await;
    let head = P::delete(&c, mark).await;
    let started = Instant::now();
    let mut w = P::watch(&c, Some(head - behind + 1)).await;
    loop {
        let changes = P::next(&mut w)
            .await
            .expect("the catch-up stream stays open");
        if changes.iter().any(|ch| ch.revision >= head) {
            return started.elapsed();
        }
    }
}

/// Sequential write + fdatasync of 512 bytes in `dir`: the disk's floor
/// for durable writes one at a time.
pub fn fsync_floor(dir: &std::path::Path, how_long: Duration) -> f64 {
    use std::io::{Seek, Write};
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = [7u8; 512];
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < how_long {
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.write_all(&block).unwrap();
        f.sync_data().unwrap();
        n += 1;
    }
    let _ = std::fs::remove_file(&path);
    n as f64 / started.elapsed().as_secs_f64()
}

/// The sizes of a bench token's values in tokend's sled tree: its live
/// record (JSON, its secret's hash in front) and its tombstone (JSON),
/// read off a data dir after a `tokend-bench`-shaped create and delete.
const LIVE_BYTES: f64 = 378.0;
const TOMBSTONE_BYTES: f64 = 430.0;

/// sled 0.34 alone, in this process: the two writes tokend's applier makes
/// for each delete (the live record's key removed, the tombstone's key
/// inserted, in one tree) for `tokens` live records of a tree in `dir`,
/// deleted in an order unrelated to their ids' as the bench's are, on one
/// thread with nothing else running in it. The calling thread's CPU µs per
/// delete, the median of three trees: the price of those writes before
/// tokend does anything around them. `scale` shrinks both values (1.0:
/// tokend's JSON), for what a more compact encoding would save there.
pub fn sled_floor(dir: &std::path::Path, tokens: u32, scale: f64) -> f64 {
    let key = |prefix: &str, n: u32| format!("{prefix}TKN-{:04}-{:04}", n / 10_000, n % 10_000);
    // Distinct numbers spread over the id space, and a delete order that
    // strides through them (7,919 is a prime that divides no bench size).
    let number = |i: u32| (u64::from(i) * 2_654_435_761 % 100_000_000) as u32;
    let order = |j: u32| (u64::from(j) * 7_919 % u64::from(tokens)) as u32;
    let (live, tombstone) = (
        vec![7u8; (LIVE_BYTES * scale) as usize],
        vec![9u8; (TOMBSTONE_BYTES * scale) as usize],
    );
    let mut runs: Vec<f64> = (0..3)
        .map(|_| {
            let at = tempfile::tempdir_in(dir).expect("temp dir");
            // As tokend opens its store (`store/sled/open.rs`).
            let db = sled::Config::new()
                .path(at.path())
                .cache_capacity(64 * 1024 * 1024)
                .flush_every_ms(None)
                .open()
                .expect("sled");
            let tree = db.open_tree("tokend").expect("tree");
            for i in 0..tokens {
                tree.insert(key("t/", number(i)), live.as_slice())
                    .expect("insert");
            }
            db.flush().expect("flush");
            let started = thread_cpu();
            for j in 0..tokens {
                let n = number(order(j));
                tree.remove(key("t/", n)).expect("remove");
                tree.insert(key("d/", n), tombstone.as_slice())
                    .expect("insert");
            }
            (thread_cpu() - started).as_secs_f64() * 1e6 / f64::from(tokens)
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[1]
}

/// This thread's time on a CPU so far.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a timespec to write into.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(r, 0, "the thread's CPU clock");
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// A gRPC call that does nothing (the standard health check, served by
/// tonic in this process), one at a time: the loopback + HTTP/2 + gRPC
/// floor under any call.
pub async fn grpc_floor(how_long: Duration) -> (Latency, f64) {
    let (reporter, service) = tonic_health::server::health_reporter();
    drop(reporter);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming),
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut h = histogram();
    let started = Instant::now();
    while started.elapsed() < how_long {
        let at = Instant::now();
        client
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .unwrap();
        h.record(micros(at.elapsed())).unwrap();
    }
    let rate = h.len() as f64 / started.elapsed().as_secs_f64();
    server.abort();
    (Latency::of(&h), rate)
}
