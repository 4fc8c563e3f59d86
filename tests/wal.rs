//! The embedded store's write-ahead log at its crash points (docs/contract.md
//! §7): the real `tokend` binary, stopped dead at a named point of the
//! write path (the `fail` crate's `$FAILPOINTS`, built in only with
//! `--features failpoints`) or killed with SIGKILL and its log damaged, then
//! started again on the same data dir.
//!
//! After every restart: each acknowledged write is there, nothing is there
//! twice, and the event log runs from the first revision to the head with
//! no gap. (tests/crash.rs kills at random moments instead.)

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use tokend::proto as pb;

/// tokend with `failpoints` armed (the first start, without, bootstraps).
async fn start(dir: &Path, failpoints: &str) -> Process {
    let failpoints = failpoints.to_string();
    spawn_tokend_with(dir, &[], move |cmd| {
        cmd.env("FAILPOINTS", &failpoints);
    })
    .await
}

/// A data dir with its operator and one account, written by a tokend that
/// was then killed: the first open replays what it logged. Every change
/// after it is a token's (so its events are consecutive from here).
async fn prepared() -> (tempfile::TempDir, String) {
    let tmp = tempfile::tempdir().unwrap();
    let mut p = spawn_tokend(tmp.path(), &[]).await;
    let account = new_account(&mut p.accounts().await, ALL_MODULES).await.id;
    p.kill();
    (tmp, account)
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    found.sort();
    found
}

/// The segments that hold a record: not the one made ahead of its use, nor
/// one not yet written to (all zeros).
fn written_segments(dir: &Path) -> Vec<PathBuf> {
    segments(dir)
        .into_iter()
        .filter(|s| std::fs::read(s).unwrap().iter().any(|&b| b != 0))
        .collect()
}

/// The `i`th token of a test: named `t{i}`.
fn nth(account: &str, i: usize) -> pb::CreateTokenRequest {
    pb::CreateTokenRequest {
        account_id: account.into(),
        name: format!("t{i}"),
        modules: vec!["commerce".into()],
        ..Default::default()
    }
}

/// Creates tokens one at a time, named `t0, t1, …`, until `n` are
/// answered or the server stops answering. Returns the answered ones.
async fn create_until_dead(
    p: &Process,
    account: &str,
    n: usize,
    pause: Duration,
) -> Vec<pb::Token> {
    let mut c = p.tokens().await;
    let mut acked = Vec::new();
    for i in 0..n {
        match c.create_token(nth(account, i)).await {
            Ok(r) => acked.push(r.into_inner().token.unwrap()),
            Err(_) => break,
        }
        tokio::time::sleep(pause).await;
    }
    acked
}

/// A [`prepared`] data dir whose tokend was then killed after ten creates,
/// one at a time, with every checkpoint skipped: its log holds them all.
/// Returns it, its account, and the creates answered.
async fn ten_in_the_log() -> (tempfile::TempDir, String, Vec<pb::Token>) {
    let (tmp, account) = prepared().await;
    let mut p = start(tmp.path(), "sled-checkpoint-skip=return").await;
    let acked = create_until_dead(&p, &account, 10, Duration::ZERO).await;
    p.kill();
    (tmp, account, acked)
}

/// Every token in the store, and the event log checked: increasing
/// revisions up to the head, consecutive since the test's first token
/// (account changes are not streamed), one CREATED per token.
async fn after_restart(dir: &Path) -> (Process, Vec<pb::Token>) {
    let p = spawn_tokend(dir, &[]).await;
    let mut c = p.tokens().await;
    let head = head(&mut c).await;
    let mut w = watch_from(&mut c, 1).await;
    let mut created = std::collections::BTreeSet::new();
    let mut prev = 0;
    while prev < head {
        let e = next_change(&mut w).await;
        let ours = e.token.as_ref().is_some_and(|t| t.name.starts_with('t'));
        if ours && created.len() > 1 {
            assert_eq!(e.revision, prev + 1, "the event log has a gap");
        }
        assert!(e.revision > prev, "the event log repeats {}", e.revision);
        if e.r#type == pb::EventType::Created as i32 {
            assert!(
                created.insert(e.token.unwrap().id),
                "two CREATED for one id"
            );
        }
        prev = e.revision;
    }
    let tokens = c
        .list_tokens(pb::ListTokensRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tokens;
    (p, tokens)
}

fn names(tokens: &[pb::Token]) -> Vec<String> {
    let mut n: Vec<_> = tokens
        .iter()
        .filter(|t| t.name.starts_with('t'))
        .map(|t| t.name.clone())
        .collect();
    n.sort_by_key(|s| s[1..].parse::<usize>().unwrap());
    n
}

#[tokio::test]
async fn a_kill_between_the_logs_sync_and_sleds_apply_keeps_the_write() {
    if sled_only("the embedded store's write-ahead log") {
        return;
    }
    let (tmp, account) = prepared().await;
    // The 6th batch from now is synced to the log, then the process dies
    // before sled, the state or the caller hear of it.
    let p = start(tmp.path(), "sled-wal-synced=5*off->return").await;
    let acked = create_until_dead(&p, &account, 20, Duration::ZERO).await;
    assert_eq!(acked.len(), 5, "the 6th create died unanswered");
    drop(p);

    // Unanswered, but durable: it is there, whole, as t5.
    let (_p, tokens) = after_restart(tmp.path()).await;
    assert_eq!(names(&tokens), ["t0", "t1", "t2", "t3", "t4", "t5"]);
}

/// Callers plan the next batch while the writer syncs the last, on
/// the state that batch will leave. When that sync fails, what was planned
/// on it fails too: a second delete of the token, planned while the first
/// was syncing, saw it gone, but must not say NOT_FOUND.
#[tokio::test]
async fn a_failed_sync_fails_what_was_planned_behind_it() {
    if sled_only("the embedded store's write-ahead log") {
        return;
    }
    let (tmp, account) = prepared().await;
    let mut p = spawn_tokend(tmp.path(), &[]).await;
    let mut c = p.tokens().await;
    let made = c.create_token(nth(&account, 0)).await.unwrap().into_inner();
    let victim = made.token.unwrap().id;
    p.kill();

    // Every append to the log fails, three seconds after it began.
    let p = start(tmp.path(), "sled-wal-append-fails=return(3000)").await;
    let mut c = p.tokens().await;
    let mut w = watch(&mut c, pb::WatchTokensRequest::default()).await;
    let first = tokio::spawn({
        let (mut c, victim) = (c.clone(), victim.clone());
        async move { delete(&mut c, &victim).await }
    });
    // The first delete is in its append by now (a second is ample on a
    // busy machine; 300 ms was not always): the second is planned behind
    // it, on a state without the token.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = delete(&mut c, &victim).await.unwrap_err();
    let first = first.await.unwrap().unwrap_err();
    for refused in [&first, &second] {
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
        assert!(
            refused.message().contains("sled-wal-append-fails"),
            "{refused:?}"
        );
    }
    assert!(second.message().contains("restart tokend"), "{second:?}");

    // Nothing was announced, the token still verifies, and a restart
    // finds it.
    let heard = tokio::time::timeout(Duration::from_millis(300), w.message()).await;
    assert!(heard.is_err(), "announced: {heard:?}");
    assert!(verify(&mut c, &made.secret).await.valid);
    drop(p);
    let (_p, tokens) = after_restart(tmp.path()).await;
    assert_eq!(names(&tokens), ["t0"]);
}

#[tokio::test]
async fn a_log_far_ahead_of_sled_is_replayed_at_open() {
    if sled_only("the embedded store's write-ahead log") {
        return;
    }
    let (tmp, account) = prepared().await;
    // No checkpoint ever completes: every batch since the start lives only
    // in the log, over several segments (one every 100 ms).
    let mut p = start(tmp.path(), "sled-checkpoint-skip=return").await;
    let acked = create_until_dead(&p, &account, 120, Duration::from_millis(3)).await;
    assert_eq!(acked.len(), 120);
    p.kill();
    let logged = segments(tmp.path());
    assert!(logged.len() > 2, "{logged:?}");

    let (p, tokens) = after_restart(tmp.path()).await;
    assert_eq!(names(&tokens).len(), 120);
    // The replay was flushed into sled and the segments went: left are the
    // one written to next and the one made ahead of it, both zeros.
    assert!(written_segments(tmp.path()).is_empty());
    assert_eq!(segments(tmp.path()).len(), 2);
    drop(p);
}

/// docs/contract.md §2.1: the log's records carry the hashes of the secrets
/// they set and erase, until a checkpoint deletes their segment. When
/// writes stop, one still comes about 100 ms after the last rotation, so a
/// store left idle does not keep a deleted token's hash in its log; and
/// the checkpoint flushed sled first, so a SIGKILL then loses nothing.
#[tokio::test]
async fn an_idle_store_checkpoints_the_erased_hash_out_of_its_log() {
    if sled_only("the embedded store's write-ahead log") {
        return;
    }
    // The control: with every checkpoint skipped, the same scan finds the
    // hash after a wait ten times the interval.
    let (tmp, account) = prepared().await;
    let p = start(tmp.path(), "sled-checkpoint-skip=return").await;
    let (_, hash) = create_and_delete(&p, &account).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !log_files_holding(tmp.path(), &hash).is_empty(),
        "with checkpoints skipped, no segment holds the hash: the scan cannot see it"
    );
    drop(p);

    let (tmp, account) = prepared().await;
    let mut p = spawn_tokend(tmp.path(), &[]).await;
    // One write after another, none overlapping: from the fifth on, each
    // caller commits its own (src/store/sled/commit.rs, `commit_here`), as
    // the create and delete below do. The writer thread, asleep, must
    // still learn that the log holds a record again.
    let mut c = p.tokens().await;
    for i in 1..=8 {
        c.create_token(nth(&account, i)).await.unwrap();
    }
    // Past the first 100 ms, so that a writer which only rotates after a
    // write (no idle checkpoint) rotates after the create and keeps the
    // delete's record, with the hash, in the new segment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (secret, hash) = create_and_delete(&p, &account).await;
    let started = std::time::Instant::now();
    let held = log_files_holding_after_10s(tmp.path(), &hash).await;
    assert!(held.is_empty(), "the erased hash is still in {held:?}");
    println!(
        "idle: the erased hash left the log {} ms after the delete's answer",
        started.elapsed().as_millis()
    );
    p.kill();

    // Killed, with no shutdown checkpoint: what the log held is in sled.
    let (p, tokens) = after_restart(tmp.path()).await;
    let expected: Vec<String> = (1..=8).map(|i| format!("t{i}")).collect();
    assert_eq!(names(&tokens), expected, "the deleted token t0 is back");
    assert!(!verify(&mut p.tokens().await, &secret).await.valid);
}

/// The log files that still hold `hash` once none does, or after 10 s.
async fn log_files_holding_after_10s(dir: &Path, hash: &[u8]) -> Vec<std::path::PathBuf> {
    let started = std::time::Instant::now();
    let mut held = log_files_holding(dir, hash);
    while !held.is_empty() && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        held = log_files_holding(dir, hash);
    }
    held
}

/// A checkpoint does not wait for the applier's run to end: it ends the
/// run. With runs held back for a day unless a checkpoint comes, the
/// deleted token's hash must still leave the log (and the checkpoint must
/// have flushed sled first: a SIGKILL then loses nothing).
#[tokio::test]
async fn a_checkpoint_ends_the_appliers_run() {
    if sled_only("the embedded store's write-ahead log") {
        return;
    }
    let (tmp, account) = prepared().await;
    let mut p = start(tmp.path(), "sled-apply-hold=return(checkpoint)").await;
    let (secret, hash) = create_and_delete(&p, &account).await;
    let held = log_files_holding_after_10s(tmp.path(), &hash).await;
    assert!(
        held.is_empty(),
        "the checkpoint waited for the run: {held:?}"
    );
    p.kill();
    let (p, tokens) = after_restart(tmp.path()).await;
    assert!(names(&tokens).is_empty(), "the deleted token t0 is back");
    assert!(!verify(&mut p.tokens().await, &secret).await.valid);
}

/// A deletion writes no hash back to disk. The token is created, and its
/// creation's record checkpointed out of the log; a restart with every
/// checkpoint skipped then deletes it, and the log, which keeps the
/// deletion's record, must not hold the hash.
#[tokio::test]
async fn a_deletion_writes_no_hash_to_the_log() {
    if sled_only("the embedded store's write-ahead log") {
        return;
    }
    let (tmp, account) = prepared().await;
    let mut p = spawn_tokend(tmp.path(), &[]).await;
    let made = p
        .tokens()
        .await
        .create_token(nth(&account, 0))
        .await
        .unwrap()
        .into_inner();
    let (id, hash) = (
        made.token.unwrap().id,
        tokend::secret::hash(&made.secret).to_vec(),
    );
    // An idle store checkpoints its log within ~100 ms.
    let started = std::time::Instant::now();
    while !log_files_holding(tmp.path(), &hash).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the creation's record never left the log"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.kill();

    let p = start(tmp.path(), "sled-checkpoint-skip=return").await;
    let mut c = p.tokens().await;
    delete(&mut c, &id).await.unwrap();
    // The scan can see the deletion's record: it names the token.
    assert!(
        !log_files_holding(tmp.path(), id.as_bytes()).is_empty(),
        "no segment holds the deletion's record"
    );
    let held = log_files_holding(tmp.path(), &hash);
    assert!(held.is_empty(), "the deletion wrote the hash to {held:?}");
    assert!(!verify(&mut c, &made.secret).await.valid);
}

/// Creates one token and deletes it; returns its secret and the secret's
/// hash.
async fn create_and_delete(p: &Process, account: &str) -> (String, Vec<u8>) {
    let mut c = p.tokens().await;
    let made = c.create_token(nth(account, 0)).await.unwrap().into_inner();
    let id = made.token.unwrap().id;
    delete(&mut c, &id).await.unwrap();
    let hash = tokend::secret::hash(&made.secret).to_vec();
    (made.secret, hash)
}

#[tokio::test]
async fn sled_flushed_ahead_of_a_log_truncation_keeps_every_acknowledged_write() {
    if sled_only("the embedded store's write-ahead log") {
        return;
    }
    let (tmp, account) = prepared().await;
    // The first checkpoint under load (the one before it is open's own)
    // flushes sled, then the process dies before the segments it covered
    // are deleted: at open they are all older than sled's revision.
    let p = start(tmp.path(), "sled-checkpoint-flushed=1*off->return").await;
    let acked = create_until_dead(&p, &account, 200, Duration::from_millis(5)).await;
    assert!(acked.len() < 200, "the checkpoint never ran");
    drop(p);
    assert!(segments(tmp.path()).len() >= 2);

    let (_p, tokens) = after_restart(tmp.path()).await;
    let got = names(&tokens);
    // Every answered create, and perhaps the one in flight.
    assert!(
        got.len() == acked.len() || got.len() == acked.len() + 1,
        "{got:?}"
    );
    for t in &acked {
        assert!(got.contains(&t.name), "{} lost", t.name);
    }
}

/// Creates and deletes tokens, one pair at a time, until the server dies
/// (a fail point). Returns how many deletions were answered.
async fn churn_until_dead(p: &Process, account: &str) -> usize {
    let mut c = p.tokens().await;
    let mut deleted = 0;
    for i in 0..200 {
        let Ok(made) = c.create_token(nth(account, i)).await else {
            break;
        };
        if delete(&mut c, &made.into_inner().token.unwrap().id)
            .await
            .is_err()
        {
            break;
        }
        deleted += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(deleted < 200, "the fail point never fired");
    deleted
}

/// Lists `account` with `show_deleted`, seven to a page: how many are
/// listed, and the `total_size` of the last page.
async fn listed_and_total(dir: &Path, account: &str) -> (usize, usize) {
    let p = spawn_tokend(dir, &[]).await;
    let mut c = p.tokens().await;
    let (mut listed, mut page_token) = (0, String::new());
    loop {
        let r = c
            .list_tokens(pb::ListTokensRequest {
                account_id: account.into(),
                page_size: 7,
                page_token,
                show_deleted: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        listed += r.tokens.len();
        if r.next_page_token.is_empty() {
            return (listed, r.total_size as usize);
        }
        page_token = r.next_page_token;
    }
}

#[tokio::test]
async fn a_replay_over_a_flushed_store_counts_no_tombstone_twice() {
    if sled_only("the embedded store's write-ahead log") {
        return;
    }
    let (tmp, account) = prepared().await;
    // As above, with deletions: sled holds their tombstones and counts
    // when the process dies, and the log replays them all at open.
    let p = start(tmp.path(), "sled-checkpoint-flushed=1*off->return").await;
    let deleted = churn_until_dead(&p, &account).await;
    drop(p);
    assert!(segments(tmp.path()).len() >= 2);

    // `total_size` comes from the counts; the pages, from the tombstones.
    let (listed, total) = listed_and_total(tmp.path(), &account).await;
    assert_eq!(total, listed, "counted once each");
    // Every answered deletion, perhaps the one in flight, and its token.
    assert!(
        (deleted..=deleted + 1).contains(&listed),
        "{listed} of {deleted}"
    );
}

/// The data dir's marker says the current format (which an older tokend
/// refuses).
fn assert_current_format(dir: &Path) {
    let db = sled::open(dir.join("db")).unwrap();
    let tree = db.open_tree("tokend").unwrap();
    assert_eq!(
        tree.get("m/format").unwrap().as_deref(),
        Some(&b"tokend-sled-9"[..])
    );
}

#[tokio::test]
async fn a_migration_counts_tombstones_after_the_replay() {
    if sled_only("the embedded store's write-ahead log") {
        return;
    }
    let (tmp, account) = prepared().await;
    // Killed as its first checkpoint under load has flushed sled (open's
    // own passes), with the log holding every commit since open. Five
    // skipped before it (a checkpoint is due every 100 ms) give even a
    // loaded machine time to delete something first.
    let p = start(
        tmp.path(),
        "sled-checkpoint-skip=5*return->off;sled-checkpoint-flushed=1*off->return",
    )
    .await;
    let deleted = churn_until_dead(&p, &account).await;
    assert!(deleted > 0, "a deletion to replay");
    drop(p);
    // As a format-6 tokend killed there could leave it: no counts, and
    // sled holding the tombstones of its last commits but not its revision
    // counter's move past them. The log replays those commits: up to 4,
    // never more than this tokend made (two per deletion), as open emptied
    // the log of those before.
    let back = 4.min(2 * deleted as u64);
    {
        let db = sled::open(tmp.path().join("db")).unwrap();
        let tree = db.open_tree("tokend").unwrap();
        tree.insert("m/format", "tokend-sled-6").unwrap();
        for key in tree.scan_prefix("c/").keys() {
            tree.remove(key.unwrap()).unwrap();
        }
        let head = u64::from_be_bytes(
            tree.get("m/revision").unwrap().unwrap()[..]
                .try_into()
                .unwrap(),
        );
        tree.insert("m/revision", &(head - back).to_be_bytes()[..])
            .unwrap();
        db.flush().unwrap();
    }
    let (listed, total) = listed_and_total(tmp.path(), &account).await;
    assert_eq!(total, listed, "counted once each");
    assert_current_format(tmp.path());
}

/// A format-8 data dir left by a kill, its log holding records as format
/// 8 wrote them, uncompressed: every answered write replays, and the
/// marker says 9 (which a format-8 tokend refuses).
#[tokio::test]
async fn a_format_8_log_of_uncompressed_records_replays() {
    if sled_only("the embedded store's write-ahead log") {
        return;
    }
    let (tmp, _, acked) = ten_in_the_log().await;
    let mut compressed = 0;
    for segment in segments(tmp.path()) {
        let written = std::fs::read(&segment).unwrap();
        let mut plain = Vec::with_capacity(written.len());
        for (was, payload) in log_payloads(&written) {
            compressed += usize::from(was);
            plain.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            plain.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            plain.extend_from_slice(&payload);
        }
        plain.resize(plain.len().max(written.len()), 0);
        std::fs::write(&segment, plain).unwrap();
    }
    assert!(
        compressed >= acked.len(),
        "{compressed} records were compressed"
    );
    {
        let db = sled::open(tmp.path().join("db")).unwrap();
        let tree = db.open_tree("tokend").unwrap();
        tree.insert("m/format", "tokend-sled-8").unwrap();
        db.flush().unwrap();
    }
    let (p, tokens) = after_restart(tmp.path()).await;
    assert_eq!(names(&tokens).len(), acked.len());
    assert_eq!(acked.len(), 10);
    drop(p);
    assert_current_format(tmp.path());
}

/// A format-7 data dir: its commits' events uncompressed (`E`), its
/// tombstones counted. Opened, it reads those events in one trail with the
/// compressed ones it writes after, keeps its counts, and says format 9
/// (which a format-7 tokend refuses).
#[tokio::test]
async fn a_format_7_data_dir_reads_its_old_events_beside_new_ones() {
    if sled_only("the embedded store's format") {
        return;
    }
    let (tmp, account) = prepared().await;
    let p = spawn_tokend(tmp.path(), &[]).await;
    let mut c = p.tokens().await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let made = c.create_token(nth(&account, i)).await.unwrap();
        ids.push(made.into_inner().token.unwrap().id);
    }
    for id in &ids[..2] {
        delete(&mut c, id).await.unwrap();
    }
    // A clean stop: sled holds every commit, the log none to replay.
    drop(c);
    let mut p = p;
    p.terminate();
    {
        let db = sled::open(tmp.path().join("db")).unwrap();
        let tree = db.open_tree("tokend").unwrap();
        let mut rewritten = 0;
        for item in tree.scan_prefix("e/") {
            let (k, v) = item.unwrap();
            assert_eq!(v[0], b'Z', "written compressed");
            let len = u32::from_le_bytes(v[1..5].try_into().unwrap()) as usize;
            let old = lz4_flex::block::decompress(&v[5..], len).unwrap();
            assert_eq!(old[0], b'E');
            tree.insert(k, old).unwrap();
            rewritten += 1;
        }
        assert!(rewritten > 0);
        tree.insert("m/format", "tokend-sled-7").unwrap();
        db.flush().unwrap();
    }
    let p = spawn_tokend(tmp.path(), &[]).await;
    let mut c = p.tokens().await;
    delete(&mut c, &ids[2]).await.unwrap();
    // The trail of a deleted token: its creation and deletion from the old
    // format, and of one deleted now: old creation, new deletion.
    for (id, kinds) in [
        (&ids[0], [pb::EventType::Deleted, pb::EventType::Created]),
        (&ids[2], [pb::EventType::Deleted, pb::EventType::Created]),
    ] {
        let trail = c
            .list_token_events(pb::ListTokenEventsRequest {
                token_id: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .events;
        let got: Vec<_> = trail.iter().map(|e| e.r#type).collect();
        assert_eq!(got, kinds.map(|k| k as i32), "{id}");
    }
    drop(c);
    drop(p);
    let (listed, total) = listed_and_total(tmp.path(), &account).await;
    assert_eq!((listed, total), (4, 4));
    assert_current_format(tmp.path());
}

#[tokio::test]
async fn a_torn_last_record_is_cut_off_and_damage_elsewhere_refused() {
    if sled_only("the embedded store's write-ahead log") {
        return;
    }
    let (tmp, account, acked) = ten_in_the_log().await;

    // A crash in the middle of writing an 11th batch: its header and a
    // few bytes of it made it to the disk. Never answered, so dropped. The
    // segment made ahead of its use follows it, all zeros: a torn write is
    // one in the last segment that holds anything.
    let last = written_segments(tmp.path()).pop().unwrap();
    assert!(segments(tmp.path()).last() > Some(&last), "none made ahead");
    let mut torn = 900u32.to_le_bytes().to_vec();
    torn.extend_from_slice(&[0xab; 20]);
    let mut log = std::fs::read(&last).unwrap();
    log.extend_from_slice(&torn);
    std::fs::write(&last, &log).unwrap();
    let (mut p, tokens) = after_restart(tmp.path()).await;
    assert_eq!(names(&tokens).len(), acked.len());
    p.kill();

    // A flipped bit inside an answered batch that intact ones follow is
    // not a torn write: tokend refuses to start, and says why.
    let mut p = start(tmp.path(), "sled-checkpoint-skip=return").await;
    create_until_dead(&p, &account, 5, Duration::ZERO).await;
    p.kill();
    let (damaged, first_len) = segments(tmp.path())
        .into_iter()
        .rev()
        .find_map(|s| {
            let log = std::fs::read(&s).unwrap();
            let length_at = |at: usize| {
                let n = u32::from_le_bytes(log.get(at..at + 4)?.try_into().unwrap());
                (n > 0).then_some(n as usize)
            };
            // A second record must follow the first: a segment is
            // preallocated, so bytes after the first are no proof of one
            // (zeros are), and damage to a segment's only record, followed
            // by zeros, is a torn write that open rightly cuts off.
            let first = 8 + length_at(0)?;
            length_at(first)?;
            Some((s, first))
        })
        .expect("a segment holding two batches or more");
    let mut log = std::fs::read(&damaged).unwrap();
    log[first_len / 2] ^= 0x01; // inside the first batch's payload
    std::fs::write(&damaged, &log).unwrap();
    let mut tokend = tokio::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), tokend.wait())
        .await
        .expect("tokend refused to start instead of serving")
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let mut said = String::new();
    use tokio::io::AsyncReadExt;
    tokend
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .await
        .unwrap();
    assert!(
        said.contains("write-ahead log") && said.contains("checksum"),
        "{said}"
    );
    // Nothing was cut: the evidence stays for an operator.
    assert_eq!(std::fs::read(&damaged).unwrap(), log);
}

/// sled's readers (a token's history, the tombstone list) ask the applier
/// for the batches they need instead of waiting out its run: held back by
/// `sled-apply-hold`, the applier applies only when told a reader waits.
#[tokio::test]
async fn readers_of_sled_do_not_wait_for_the_appliers_run() {
    if sled_only("the embedded store's applier") {
        return;
    }
    let (tmp, account) = prepared().await;
    let p = start(tmp.path(), "sled-apply-hold=return").await;
    let mut c = p.tokens().await;
    // Twice: the second run begins after the first reader was served.
    for i in 0..2 {
        let t = c.create_token(nth(&account, i)).await.unwrap();
        let id = t.into_inner().token.unwrap().id;
        delete(&mut c, &id).await.unwrap();

        let history = pb::ListTokenEventsRequest {
            token_id: id.clone(),
            ..Default::default()
        };
        let read = tokio::time::timeout(Duration::from_secs(20), c.list_token_events(history));
        let events = read.await.expect("the history waited for the run");
        let kinds: Vec<_> = events
            .unwrap()
            .into_inner()
            .events
            .iter()
            .map(|e| e.r#type)
            .collect();
        assert_eq!(kinds.len(), 2, "created and deleted: {kinds:?}");

        let deleted = pb::ListTokensRequest {
            account_id: account.clone(),
            show_deleted: true,
            ..Default::default()
        };
        let read = tokio::time::timeout(Duration::from_secs(20), c.list_tokens(deleted));
        let listed = read.await.expect("the tombstone list waited for the run");
        let listed = listed.unwrap().into_inner().tokens;
        assert!(listed.iter().any(|t| t.id == id), "{id} listed as deleted");
    }
}
