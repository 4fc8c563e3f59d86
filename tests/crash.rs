//! Crash safety: the real `tokend` binary, killed with SIGKILL at random
//! moments while several clients create, update, disable and delete tokens
//! and watchers listen; restarted on the same data dir, cycle after cycle.
//!
//! After every restart: each acknowledged write is there (a deleted token
//! stays deleted, its secret fails), each write that was in flight either
//! happened whole or not at all, and every token nobody heard of came from an
//! unanswered create. At the end: the event log is gap-free, has one CREATED
//! per id and agrees with the state, and the watchers, which resumed with
//! `start_revision` after each crash, heard exactly that log.
//!
//! The seed is printed first; `TOKEND_CRASH_SEED=<n>` replays a run and
//! `TOKEND_CRASH_CYCLES=<n>` runs more cycles. The same workload ended by
//! SIGTERM instead must lose nothing and exit within 5 s.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::checks::{catch_up, check, check_log};
use common::workload::{Cycles, Run, Shared, collect, drain};
use common::*;

fn seed() -> u64 {
    std::env::var("TOKEND_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_cycles() {
    let seed = seed();
    let cycles: u64 = std::env::var("TOKEND_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    println!("crash test seed {seed} ({cycles} cycles): rerun with TOKEND_CRASH_SEED={seed}");
    let dir = tempfile::tempdir().unwrap();
    let campaign = Cycles {
        seed,
        cycles,
        what: "crash",
        env: &[],
    };
    let o = campaign.run(dir.path(), |_, _| {}).await;
    println!(
        "{cycles} SIGKILLs at {:?} ms: {} acknowledged writes, {} tokens, {} events, \
         {} unanswered creates that happened",
        o.kill_ms, o.acked_writes, o.tokens, o.events, o.orphans
    );
    assert!(o.acked_writes > 100 * cycles as usize / 10, "the load ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_load_loses_no_acknowledged_write_and_exits_within_5s() {
    let seed = seed();
    println!("seed {seed}: rerun with TOKEND_CRASH_SEED={seed}");
    let dir = tempfile::tempdir().unwrap();
    let ledger = Shared::default();
    let mut p = spawn_tokend(dir.path(), &[]).await;
    let run = Run::prepare(&p).await;
    let mut watchers = vec![(run.base + 1, Vec::new())];
    let stopping = Arc::new(AtomicBool::new(false));
    let (mut workers, mut listeners) = run.load(&p, &ledger, &stopping, &watchers, seed);
    // Under load: past 50 acknowledged writes (a fixed half second was not
    // always enough on a busy machine), and half a second more.
    let loading = Instant::now() + Duration::from_secs(30);
    while ledger.lock().unwrap().acked_writes <= 50 {
        assert!(
            Instant::now() < loading,
            "the load never ran: 50 writes in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    stopping.store(true, Ordering::SeqCst);
    let sent = Instant::now();
    p.signal(15);
    let status = loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "still running 5 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let took = sent.elapsed();
    assert!(status.success(), "{status:?}");
    drain(&mut workers).await;
    collect(&mut listeners, &mut watchers).await;

    let p = spawn_tokend(dir.path(), &[]).await;
    let mut c = p.tokens().await;
    let context = format!("seed {seed}, after SIGTERM");
    check(&ledger, &mut c, &context).await;
    let log = check_log(&ledger, &mut c, run.base, &context).await;
    let (next, heard) = &mut watchers[0];
    heard.extend(catch_up(&mut c, *next, log.last().unwrap().revision).await);
    assert!(
        *heard == log,
        "{context}: the watcher heard a different history"
    );
    let l = ledger.lock().unwrap();
    println!(
        "SIGTERM under load: exited in {took:?}; {} acknowledged writes, {} unanswered",
        l.acked_writes,
        l.pending_creates + l.tokens.values().filter(|k| k.pending.is_some()).count()
    );
}
