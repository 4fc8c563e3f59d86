//! tokend-bench: tokend against etcd, side by side, in one run on one
//! machine, every figure a ratio tokend ÷ etcd.
//!
//!     scripts/bench.sh            # installs etcd and protoc if missing, writes BENCHMARKS.md
//!     scripts/bench.sh --smoke    # seconds; what CI runs to keep the tool working
//!     scripts/bench.sh --scale    # 1,000,000 tokens (scale.rs): its own section of BENCHMARKS.md
//!
//! Both servers run as processes on loopback with their data in one temp dir
//! on the same disk, both with warnings-only logs; the load comes from this
//! process. Scenarios alternate between the two so that the machine's
//! noise falls on both. Built only with `--features bench` (etcd's client
//! needs protoc to build).

mod floor;
mod mesh;
mod otlp;
mod peers;
mod profile;
mod report;
mod scale;
mod scenarios;

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use mesh::Revocation;
use peers::{Etcd, Tokend};
use report::Report;

#[derive(Parser)]
#[command(about = "Benchmark tokend against etcd on this machine")]
struct Args {
    /// Tiny sizes: checks that every scenario runs, measures nothing.
    #[arg(long)]
    smoke: bool,
    /// Where to write the report (Markdown).
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: std::path::PathBuf,
    /// Run only these scenarios (e.g. to profile one): fan-out, deletes,
    /// lookups, catch-up, mesh, floors, tracing; or `scale`, alone, which
    /// the full run leaves out, and which puts its section into the
    /// existing report at --out instead of writing a new one.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Tokens the scale scenario creates and deletes.
    #[arg(long, default_value_t = 1_000_000)]
    scale_tokens: usize,
    /// Old tombstones the scale scenario adds to its store of live tokens
    /// (default: ten times --scale-tokens).
    #[arg(long)]
    scale_old_tombstones: Option<u64>,
    /// Live records in the tree of sled's own floor (section 6; default
    /// 20,000, as many as `--profile-deletes` seeds). Past about
    /// 150,000 they outgrow the 64 MiB cache tokend gives sled.
    #[arg(long)]
    sled_tokens: Option<u32>,
    /// Internal: be the TokenCache process of the mesh scenario, following
    /// the tokend at this URL.
    #[arg(long, hide = true)]
    cache_probe: Option<String>,
    /// Profile one delete run (scripts/profile.sh): start tokend (or, with
    /// --floor, the floor server) alone, seed, then record its CPU with
    /// `perf record` into this file while this many clients delete.
    #[arg(long, value_names = ["CLIENTS", "PERF_DATA"], num_args = 2)]
    profile_deletes: Vec<String>,
    /// With --profile-deletes: profile the floor server (section 6)
    /// instead of tokend, to see which of tokend's costs the floor shares.
    #[arg(long, requires = "profile_deletes")]
    floor: bool,
    /// Internal: be the floor server (floor.rs).
    #[arg(long, hide = true, num_args = 3, value_names = ["LISTEN", "METRICS", "DIR"])]
    floor_server: Vec<String>,
    /// Internal: add old tombstones to a stopped sled data dir (scale.rs).
    #[arg(long, hide = true, num_args = 3, value_names = ["DIR", "N", "SAMPLE"])]
    add_old_tombstones: Vec<String>,
}

impl Args {
    fn runs(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == scenario)
    }
}

/// How much work each scenario does.
struct Sizes {
    /// (watchers, deletes, deletes per second, rounds)
    fan_out: Vec<(usize, usize, f64, usize)>,
    delete_clients: Vec<usize>,
    deletes_per_run: usize,
    /// Rounds of the deletes and lookups scenarios (`scenarios::rounds`).
    rounds: usize,
    items: usize,
    lookup_clients: Vec<usize>,
    lookup_time: Duration,
    /// Deletes timed until a cache in another process refuses them, and
    /// how far apart.
    cache_deletes: usize,
    cache_pace: Duration,
    catch_up: i64,
    floor_time: Duration,
    /// Live records of the tree sled's own floor deletes from.
    sled_tokens: u32,
    /// Tokens seeded for the tracing scenario's verifies.
    traced_items: usize,
}

impl Sizes {
    fn full() -> Sizes {
        Sizes {
            fan_out: vec![
                // A p99 of a few hundred deletes rests on its few worst:
                // rounds keep one stall from deciding it.
                (1, 400, 100.0, 5),
                (100, 200, 50.0, 5),
                // The receipts of one delete rise and fall together, so
                // these p99s, over hundreds of thousands of receipts, are
                // set by a few deletes too: one stalled delete moved the
                // 1,000-watcher ratio from 0.47 to 0.68 between runs, and
                // the 10,000-watcher one from 0.41 to 1.00. Three rounds,
                // as one takes most of a minute.
                (1_000, 300, 20.0, 3),
                (10_000, 20, 4.0, 3),
            ],
            delete_clients: vec![1, 8, 32, 128],
            deletes_per_run: 4_000,
            rounds: 5,
            items: 100_000,
            lookup_clients: vec![1, 8, 32, 128],
            lookup_time: Duration::from_secs(3),
            cache_deletes: 200,
            cache_pace: Duration::from_millis(20),
            catch_up: 100_000,
            floor_time: Duration::from_secs(2),
            sled_tokens: 20_000,
            traced_items: 20_000,
        }
    }

    fn smoke() -> Sizes {
        Sizes {
            fan_out: vec![(1, 10, 100.0, 3), (20, 5, 50.0, 3)],
            delete_clients: vec![1, 4],
            deletes_per_run: 50,
            // Three, so that the rotation runs.
            rounds: 3,
            items: 500,
            lookup_clients: vec![1, 4],
            lookup_time: Duration::from_millis(200),
            cache_deletes: 5,
            cache_pace: Duration::from_millis(20),
            catch_up: 400,
            floor_time: Duration::from_millis(200),
            sled_tokens: 500,
            traced_items: 200,
        }
    }
}

/// mimalloc rather than glibc's malloc (Cargo.toml says why). The bench
/// and its floor server use the same one as tokend, so that the floor stays
/// tokend's pipeline minus the database.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Some(url) = args.cache_probe {
        return mesh::cache_probe(url).await;
    }
    if let [dir, n, sample] = &args.add_old_tombstones[..] {
        let number = |s: &str| s.parse().expect("a number");
        return scale::add_old_tombstones_here(dir.as_ref(), number(n), number(sample));
    }
    if let [listen, metrics, dir] = &args.floor_server[..] {
        let addr = |a: &str| a.parse().expect("a socket address");
        return floor::serve(addr(listen), addr(metrics), dir.as_ref()).await;
    }
    if let [clients, out] = &args.profile_deletes[..] {
        let clients = clients.parse().expect("a number of clients");
        return profile::deletes(clients, args.floor, out.as_ref()).await;
    }
    if args.only.iter().any(|s| s == "scale") {
        assert_eq!(args.only.len(), 1, "--only scale runs alone");
        return scale(&args).await;
    }
    let mut sizes = if args.smoke {
        Sizes::smoke()
    } else {
        Sizes::full()
    };
    sizes.sled_tokens = args.sled_tokens.unwrap_or(sizes.sled_tokens);
    let root = tempfile::tempdir_in(std::env::temp_dir()).expect("temp dir");
    let mut report = Report::new(args.smoke, sizes.rounds, Etcd::version());

    eprintln!(
        "starting tokend, etcd and the floor in {}",
        root.path().display()
    );
    let tokend = Arc::new(Tokend::start(root.path()).await);
    let etcd = Arc::new(Etcd::start(root.path()).await);
    let floor = Arc::new(Tokend::start_floor(root.path()).await);
    let on_etcd = Arc::new(Tokend::start_on_etcd(root.path(), &etcd).await);

    if args.runs("floors") {
        eprintln!("6. floors");
        report.floors(
            scenarios::fsync_floor(&tokend.data_dir, sizes.floor_time),
            scenarios::grpc_floor(sizes.floor_time).await,
            [1.0, 1.0 / 3.0].map(|scale| {
                let sled = scenarios::sled_floor(root.path(), sizes.sled_tokens, scale);
                (sizes.sled_tokens, scale, sled)
            }),
        );
    }

    for &(watchers, deletes, rate, rounds) in sizes.fan_out.iter().filter(|_| args.runs("fan-out"))
    {
        eprintln!(
            "1. fan-out: {watchers} watchers, {deletes} deletes at {rate}/s, {rounds} rounds"
        );
        let [t, e, f] = scenarios::rounds(rounds, |peer| -> scenarios::Run<'_, _> {
            match peer {
                0 => Box::pin(scenarios::fan_out(&tokend, watchers, deletes, rate)),
                1 => Box::pin(scenarios::fan_out(&etcd, watchers, deletes, rate)),
                _ => Box::pin(scenarios::fan_out(&floor, watchers, deletes, rate)),
            }
        })
        .await
        .map(|runs| {
            // Memory grows for new streams only in a server's first run:
            // later runs reuse what the streams before them freed (their
            // medians read about 0 KiB a stream).
            let cold = runs.first().kib_per_idle_stream;
            scenarios::FanOut {
                kib_per_idle_stream: cold,
                ..runs.median()
            }
        });
        report.fan_out((watchers, rate, rounds), &t, &e, &f);
    }

    for &clients in sizes.delete_clients.iter().filter(|_| args.runs("deletes")) {
        eprintln!(
            "2. durable deletes: {clients} clients, {} rounds",
            sizes.rounds
        );
        let n = sizes.deletes_per_run;
        let [t, e, f] = scenarios::rounds(sizes.rounds, |peer| -> scenarios::Run<'_, _> {
            match peer {
                0 => Box::pin(scenarios::deletes(&tokend, clients, n)),
                1 => Box::pin(scenarios::deletes(&etcd, clients, n)),
                _ => Box::pin(scenarios::deletes(&floor, clients, n)),
            }
        })
        .await
        .map(scenarios::Runs::median);
        report.deletes(clients, &t, &e, &f);
        let d = scenarios::deletes(&on_etcd, clients, n).await;
        report.distributed_deletes(clients, &d, &t, &e);
    }

    if args.runs("mesh") {
        eprintln!("7. mesh: delete answered -> cache in another process refuses");
        let items = scenarios::seed(&tokend, sizes.cache_deletes, 8).await;
        report.cache_refusal(
            items.len(),
            mesh::cache_refusal(&tokend, &items, sizes.cache_pace, Revocation::Delete).await,
        );
        eprintln!("7. mesh: leak report sent -> cache and Check refuse");
        let items = scenarios::seed(&tokend, sizes.cache_deletes, 8).await;
        let cache =
            mesh::cache_refusal(&tokend, &items, sizes.cache_pace, Revocation::LeakReport).await;
        let items = scenarios::seed(&tokend, sizes.cache_deletes, 8).await;
        let check = mesh::check_refusal_after_report(&tokend, &items).await;
        report.leak_refusal(items.len(), cache, check);
    }

    if args.runs("tracing") {
        eprintln!("9. tracing overhead: 32 clients, off / 100% / 1% sampled");
        report.tracing(tracing_overhead(root.path(), &sizes).await);
    }

    if !(args.runs("lookups") || args.runs("catch-up") || args.runs("mesh")) {
        return finish(&args, &report);
    }
    eprintln!("3. seeding {} items on each side", sizes.items);
    let mut t_items = scenarios::seed(&tokend, sizes.items, 64).await;
    let mut e_items = scenarios::seed(&etcd, sizes.items, 64).await;
    let (t_mark, e_mark) = (t_items.pop().unwrap(), e_items.pop().unwrap());
    let (t_items, e_items) = (Arc::new(t_items), Arc::new(e_items));
    let d_items = if args.runs("lookups") {
        Arc::new(scenarios::seed(&on_etcd, sizes.items / 10, 64).await)
    } else {
        Arc::default()
    };
    for &clients in sizes.lookup_clients.iter().filter(|_| args.runs("lookups")) {
        eprintln!("3. lookups: {clients} clients, {} rounds", sizes.rounds);
        let time = sizes.lookup_time;
        let [t, e] = scenarios::rounds(sizes.rounds, |peer| -> scenarios::Run<'_, _> {
            match peer {
                0 => Box::pin(scenarios::lookups(&tokend, &t_items, clients, time)),
                _ => Box::pin(scenarios::lookups(&etcd, &e_items, clients, time)),
            }
        })
        .await
        .map(scenarios::Runs::median);
        report.lookups(clients, &t, &e);
        let d = scenarios::lookups(&on_etcd, &d_items, clients, time).await;
        report.distributed_lookups(clients, &d, &t, &e);
    }

    for &clients in sizes.lookup_clients.iter().filter(|_| args.runs("mesh")) {
        eprintln!("7. mesh: ext_authz Check, {clients} clients");
        let t = mesh::checks(&tokend, &t_items, clients, sizes.lookup_time).await;
        report.checks(clients, &t);
    }

    if args.runs("catch-up") {
        eprintln!("5. catch-up: {} events behind", sizes.catch_up);
        let t = scenarios::catch_up(&tokend, &t_mark, sizes.catch_up).await;
        let e = scenarios::catch_up(&etcd, &e_mark, sizes.catch_up).await;
        report.catch_up(sizes.catch_up, t, e);
    }
    finish(&args, &report);
}

/// Verifies and deletes at 32 clients on three tokends with the same seed:
/// tracing off, and exporting to an OTLP receiver in this process sampled
/// at 100% and at 1%. Three rounds in rotated order (each configuration
/// runs first once), so that the machine's drift falls on every
/// configuration alike.
async fn tracing_overhead(root: &std::path::Path, sizes: &Sizes) -> report::Tracing {
    let sink = otlp::Sink::start().await;
    let endpoint = sink.endpoint();
    let configs = [
        ("off", None),
        ("on, 100% sampled", Some((endpoint.as_str(), 1.0))),
        ("on, 1% sampled", Some((endpoint.as_str(), 0.01))),
    ];
    let mut peers = Vec::new();
    for (i, &(label, otlp)) in configs.iter().enumerate() {
        let peer = Arc::new(Tokend::start_traced(root, &format!("tokend-traced-{i}"), otlp).await);
        let items = Arc::new(scenarios::seed(&peer, sizes.traced_items, 64).await);
        peers.push((label, peer, items));
    }
    let mut runs: Vec<report::TracedRun> = Vec::new();
    for round in 0..peers.len() {
        for i in (0..peers.len()).map(|i| (i + round) % peers.len()) {
            let (label, peer, items) = &peers[i];
            let verifies = scenarios::lookups(peer, items, 32, sizes.lookup_time).await;
            let deletes = scenarios::deletes(peer, 32, sizes.deletes_per_run).await;
            runs.push(report::TracedRun {
                label,
                verifies,
                deletes,
            });
        }
    }
    // Give the last batches of spans time to arrive (5 s batching).
    tokio::time::sleep(Duration::from_secs(6)).await;
    report::Tracing {
        runs,
        spans: sink.spans(),
    }
}

/// The scale scenario (scale.rs), its section put into the report at
/// `--out` in place of the previous one.
async fn scale(args: &Args) {
    let root = tempfile::tempdir_in(std::env::temp_dir()).expect("temp dir");
    eprintln!(
        "scale: {} tokens, data in {}",
        args.scale_tokens,
        root.path().display()
    );
    let old = args
        .scale_old_tombstones
        .unwrap_or(10 * args.scale_tokens as u64);
    let run = scale::run(root.path(), args.scale_tokens, old).await;
    let section = scale::report::render(&run, &report::machine(), &Etcd::version());
    scale::report::write_into(&args.out, &section);
    println!("{section}");
    eprintln!("wrote the scale section into {}", args.out.display());
}

/// Writes the report, with the scale section of the one it replaces (a
/// run of its own) carried over.
fn finish(args: &Args, report: &Report) {
    let text = scale::report::carry_over(report.render(), &args.out);
    std::fs::write(&args.out, &text).expect("write the report");
    println!("{text}");
    eprintln!("wrote {}", args.out.display());
}
