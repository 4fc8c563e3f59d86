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
//! A third cuts the power under pages sled keeps in files of their own
//! (`db/blobs/`), which its flush never syncs.
//!
//! Only the embedded store has files to lose: on etcd (scripts/test.sh's
//! second pass) the tests say so and return.

mod common;

use common::powerfs::PowerFs;
use common::workload::Cycles;
use common::{
    get, new_account, next_change, sled_only, spawn_tokend, spawn_tokend_with, watch_from,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::path::Path;
use tokend::proto as pb;

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

/// sled writes a page of over 128 KiB to a file of its own under
/// `db/blobs/`, and its flush syncs neither that file nor its name
/// (`src/store/sled/files.rs`). Descriptions of random letters, which LZ4
/// cannot shrink, made by concurrent clients (large commits, so event keys
/// of tens of KB), fill pages of the event log past that size; a page the
/// log's growth splits off is not written again, and stays in its file.
/// After a clean stop, whose last checkpoint empties the write-ahead log
/// (nothing is left to replay), and a power cut, tokend must open and give
/// back every token and every event. Before the checkpoints synced those
/// files, the cut took them, and with them pages sled could no longer read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_sled_keeps_in_files_of_their_own_survive_a_power_cut() {
    if sled_only("a power cut of the data dir's file system") {
        return;
    }
    let seed = seed();
    println!("seed {seed}: rerun with TOKEND_POWERCUT_SEED={seed}");
    let mut fs = PowerFs::mount();
    let dir = fs.path().join("data");
    let made = fill_with_pages_of_their_own(&dir, seed).await;
    let blobs = blob_files(&dir).len();
    let cut = fs.cut(None);
    println!(
        "{blobs} files in db/blobs; the cut dropped {} bytes and {} names",
        cut.dropped_bytes, cut.dropped_entries
    );

    // What it says if it cannot open what the cut left is the test's to show.
    let tokend = spawn_tokend_with(&dir, &[], |c| {
        c.env("RUST_LOG", "error")
            .stderr(std::process::Stdio::inherit());
    })
    .await;
    let mut tokens = tokend.tokens().await;
    for (id, description) in &made {
        let t = get(&mut tokens, id, false)
            .await
            .expect("every token is back");
        assert!(t.description == *description, "{id}: another description");
    }
    // The log from the start: the operator's own token (made at the first
    // start), then these, each once.
    let mut events = watch_from(&mut tokens, 1).await;
    next_change(&mut events).await;
    let mut heard = std::collections::BTreeSet::new();
    for _ in 0..made.len() {
        let e = next_change(&mut events).await;
        let id = e.token.expect("a token event").id;
        assert!(
            made.contains_key(&id),
            "{id}: not one of the tokens made here"
        );
        assert!(heard.insert(id.clone()), "{id} heard twice");
    }
}

/// Fills a new store at `dir` with 1,280 tokens, each with a description
/// of random letters as long as allowed (LZ4 cannot shrink them), from 16
/// clients at once, then stops tokend cleanly: its last checkpoint empties
/// the log, so that sled's files alone hold them. Some of sled's pages are
/// then over 128 KiB, in files of their own under `db/blobs/`. Each token's
/// id and description.
async fn fill_with_pages_of_their_own(
    dir: &Path,
    seed: u64,
) -> std::collections::BTreeMap<String, String> {
    let mut tokend = spawn_tokend(dir, &[]).await;
    let account = new_account(&mut tokend.accounts().await, &["commerce"]).await;
    let tokens = tokend.tokens().await;
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..16u64 {
        let (mut tokens, account_id) = (tokens.clone(), account.id.clone());
        let mut rng = StdRng::seed_from_u64(seed ^ client);
        clients.spawn(async move {
            let mut made = Vec::new();
            for i in 0..80 {
                let description: String = (0..tokend::domain::DESCRIPTION_MAX_CHARS)
                    .map(|_| rng.random_range('a'..='z'))
                    .collect();
                let t = tokens
                    .create_token(pb::CreateTokenRequest {
                        account_id: account_id.clone(),
                        name: format!("c{client} t{i}"),
                        description: description.clone(),
                        modules: vec!["commerce".into()],
                        ..Default::default()
                    })
                    .await
                    .expect("created")
                    .into_inner()
                    .token
                    .expect("a token");
                made.push((t.id, description));
            }
            made
        });
    }
    let made: std::collections::BTreeMap<String, String> =
        clients.join_all().await.into_iter().flatten().collect();
    drop(tokens);
    tokend.terminate();
    assert!(
        !blob_files(dir).is_empty(),
        "no page of over 128 KiB in db/blobs: this test needs one to cut the power under"
    );
    made
}

/// The files sled keeps pages of their own in.
fn blob_files(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir.join("db").join("blobs"))
        .map(|d| d.map(|e| e.expect("a blob file").path()).collect())
        .unwrap_or_default()
}

/// A store that lost files sled keeps pages in (a power cut before tokend
/// synced them, a disk, a hand) cannot be opened: sled 0.34 panics as it
/// recovers. `tokend serve` and `tokend compact` must say so and what to
/// do, and exit with an error, not a Rust panic and its backtrace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_missing_page_files_is_refused_with_what_to_do() {
    if sled_only("files of sled's to lose") {
        return;
    }
    let seed = seed();
    println!("seed {seed}: rerun with TOKEND_POWERCUT_SEED={seed}");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    fill_with_pages_of_their_own(&dir, seed).await;
    for blob in blob_files(&dir) {
        std::fs::remove_file(blob).unwrap();
    }
    for command in ["serve", "compact"] {
        let mut tokend = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"));
        tokend.arg(command).arg("--data-dir").arg(&dir);
        if command == "serve" {
            tokend.args(["--listen", "127.0.0.1:0"]);
        }
        let out = tokend
            .env("RUST_BACKTRACE", "1")
            .env_remove("FAILPOINTS")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("tokend {command}: {}\n{stderr}", out.status);
        assert_eq!(out.status.code(), Some(1), "tokend {command}: {stderr}");
        for said in [
            "its files under db/ are damaged or missing",
            "tokend snapshot restore",
        ] {
            assert!(
                stderr.contains(said),
                "tokend {command} did not say {said:?}"
            );
        }
        for unsaid in ["panicked", "stack backtrace"] {
            assert!(!stderr.contains(unsaid), "tokend {command}: {unsaid}");
        }
    }
}
