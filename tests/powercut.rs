//! Power loss: tests/crash.rs's cycles, with the data dir on a file system
//! that loses what was not made durable (tests/common/powerfs). Each cycle
//! the real `tokend` binary is SIGKILLed at a random moment under writers
//! and resuming watchers, then the power is cut: every write not fsynced,
//! and every create, rename or unlink whose directory was not fsynced, is
//! lost; half the cuts tear the lost writes (a sector- or page-aligned
//! prefix is kept). tokend restarts on what is left and owes the clients
//! what tests/crash.rs checks: every acknowledged write, every acknowledged
//! delete, unanswered writes whole or absent, a gap-free log that agrees
//! with the state, watchers that heard exactly it.
//!
//! The seed is printed first; `TOKEND_POWERCUT_SEED=<n>` replays a run's
//! schedule and cuts, `TOKEND_POWERCUT_CYCLES=<n>` runs more cycles. A
//! second test proves the suite can fail: with the write-ahead log's fsync
//! skipped (fail point `sled-wal-skip-sync`) SIGKILLs alone lose nothing,
//! and power cuts lose acknowledged writes, which the checks must report.
//!
//! Only the embedded store has files to lose: on etcd (scripts/test.sh's
//! second pass) both tests say so and return.

mod common;

use common::powerfs::PowerFs;
use common::sled_only;
use common::workload::Cycles;
use rand::RngExt;

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

fn seed() -> u64 {
    env("TOKEND_POWERCUT_SEED").unwrap_or_else(rand::random)
}

const SKIP_SYNC: &[(&str, &str)] = &[("FAILPOINTS", "sled-wal-skip-sync=return")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_power_cuts() {
    if sled_only("a power cut of the data dir's file system") {
        return;
    }
    let seed = seed();
    let cycles = env("TOKEND_POWERCUT_CYCLES").unwrap_or(20);
    println!("power-cut seed {seed} ({cycles} cycles): rerun with TOKEND_POWERCUT_SEED={seed}");
    let mut fs = PowerFs::mount();
    let dir = fs.path().join("data");
    let campaign = Cycles {
        seed,
        cycles,
        what: "power cut",
        env: &[],
    };
    let mut torn_cuts = 0;
    let o = campaign
        .run(&dir, |_, rng| {
            let tear = rng.random_bool(0.5);
            torn_cuts += tear as u64;
            fs.cut(tear.then_some(rng));
        })
        .await;
    let t = fs.totals();
    println!(
        "{cycles} power cuts ({torn_cuts} tearing) after SIGKILLs at {:?} ms: {} acknowledged \
         writes, {} tokens, {} events, {} unanswered creates that happened; the cuts dropped \
         {} unsynced bytes and undid {} directory entries; {} files torn, {} bytes of torn \
         prefixes kept; {} bytes made durable by fsync, {} directory fsyncs",
        o.kill_ms,
        o.acked_writes,
        o.tokens,
        o.events,
        o.orphans,
        t.dropped_bytes,
        t.dropped_entries,
        t.torn_files,
        t.torn_bytes,
        t.synced_bytes,
        t.dir_syncs
    );
    assert!(o.acked_writes > 100 * cycles as usize / 10, "the load ran");
    assert!(t.dropped_bytes > 0, "the cuts dropped nothing: no test");
}

/// The suite's teeth: the same campaign with the log's fsync skipped. On
/// the same file system without cuts (what SIGKILL shows) it passes; with
/// cuts, the checks report a lost acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_logs_fsync_power_cuts_lose_acknowledged_writes() {
    if sled_only("a power cut of the data dir's file system") {
        return;
    }
    let seed = seed();
    println!("power-cut seed {seed}: rerun with TOKEND_POWERCUT_SEED={seed}");
    let campaign = move |cycles| Cycles {
        seed,
        cycles,
        what: "power cut",
        env: SKIP_SYNC,
    };

    let fs = PowerFs::mount();
    let o = campaign(3).run(&fs.path().join("data"), |_, _| {}).await;
    println!(
        "log fsync skipped, 3 SIGKILLs without power cuts: {} acknowledged writes, none lost",
        o.acked_writes
    );
    drop(fs);

    let cut = tokio::spawn(async move {
        let mut fs = PowerFs::mount();
        let dir = fs.path().join("data");
        campaign(5)
            .run(&dir, |_, _| {
                fs.cut(None);
            })
            .await
            .acked_writes
    })
    .await;
    let caught = match cut {
        Ok(acked) => panic!(
            "log fsync skipped: 5 power cuts lost none of {acked} acknowledged writes; \
             the power-cut test cannot tell a missing fsync"
        ),
        Err(e) => e.into_panic(),
    };
    let message = caught
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| caught.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    println!("log fsync skipped, power cuts: the checks reported: {message}");
    assert!(
        message.contains("acknowledged"),
        "expected a lost acknowledged write, got: {message}"
    );
}
