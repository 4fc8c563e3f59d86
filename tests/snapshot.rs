//! Backups: `tokend snapshot save` against a running server under writes,
//! `tokend snapshot restore` into a new data dir, and a server on it that
//! answers as the original did at the snapshot's revision; bad files and
//! non-empty targets refused without writing anything. The real binary
//! throughout, over gRPC.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokend::proto as pb;
use tokend::store::snapshot::{RESTORE_GAP, Snapshot};
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_tokend");

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `tokend ARGS…` to completion, off the async workers.
async fn tokend(args: Vec<String>) -> Ran {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

async fn save(p: &Process, file: &Path) -> Ran {
    save_with(p, file, &[]).await
}

/// `tokend snapshot save` with `extra` arguments (e.g. `-o json`).
async fn save_with(p: &Process, file: &Path, extra: &[&str]) -> Ran {
    let args = [
        "snapshot",
        "save",
        &file.display().to_string(),
        "--server",
        &p.url(),
        "--token-file",
        &p.dir.join("operator.token").display().to_string(),
    ];
    tokend(args.iter().chain(extra).map(|s| s.to_string()).collect()).await
}

/// Restores `file` for a server on data dir `dir`: into `dir` itself on
/// sled, into the etcd prefix named after `dir` on the etcd pass.
async fn restore(file: &Path, dir: &Path) -> Ran {
    let mut args = vec![
        "snapshot".to_string(),
        "restore".into(),
        file.display().to_string(),
        "--data-dir".into(),
        dir.display().to_string(),
    ];
    if let Some(store) = store_for(dir) {
        args.extend(["--store".into(), store]);
    }
    tokend(args).await
}

/// Serves what was restored for data dir `restored`, with the original's
/// operator secret.
async fn serve_restored(original: &Path, restored: &Path) -> Process {
    std::fs::create_dir_all(restored).unwrap();
    std::fs::copy(
        original.join("operator.token"),
        restored.join("operator.token"),
    )
    .unwrap();
    spawn_tokend(restored, &[]).await
}

/// The code a watch from `from` fails with (at open or as its first
/// message); panics if it delivers a change instead.
async fn watch_refusal(c: &mut Tokens, from: i64) -> Code {
    let req = pb::WatchTokensRequest {
        start_revision: from,
        ..Default::default()
    };
    let mut stream = match c.watch_tokens(req).await {
        Err(e) => return e.code(),
        Ok(r) => r.into_inner(),
    };
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("an answer within 5 s");
        match m {
            Err(e) => return e.code(),
            Ok(Some(e)) if e.r#type == EventType::Progress as i32 => {}
            other => panic!("a watch from {from} delivered {other:?}"),
        }
    }
}

/// The secrets of [`mixed_tokens`]'s tokens, by what became of them.
struct Made {
    kept: Vec<String>,
    disabled: Vec<String>,
    gone: Vec<String>,
}

/// Creates `n` tokens in `account`: every third deleted, every third
/// disabled, the rest left live.
async fn mixed_tokens(c: &mut Tokens, account: &str, n: usize) -> Made {
    let mut made = Made {
        kept: Vec::new(),
        disabled: Vec::new(),
        gone: Vec::new(),
    };
    for i in 0..n {
        let (t, secret) = create_token(c, account, &format!("t{i}")).await;
        match i % 3 {
            0 => {
                delete(c, &t.id).await.unwrap();
                made.gone.push(secret);
            }
            1 => {
                c.disable_token(pb::DisableTokenRequest {
                    id: t.id,
                    etag: String::new(),
                })
                .await
                .unwrap();
                made.disabled.push(secret);
            }
            _ => made.kept.push(secret),
        }
    }
    made
}

fn without_access_time(mut t: pb::Token) -> pb::Token {
    t.last_access_time = None;
    t
}

/// Every token the server lists (tombstones included), without last-access
/// times, which snapshots do not keep.
async fn records(c: &mut Tokens) -> BTreeMap<String, pb::Token> {
    let state = common::checks::state(c).await;
    state
        .into_iter()
        .map(|(id, t)| (id, without_access_time(t)))
        .collect()
}

/// Panics, naming the first token that differs, unless `a` equals `b`.
fn assert_same(a: &BTreeMap<String, pb::Token>, b: &BTreeMap<String, pb::Token>, what: &str) {
    let ids: BTreeSet<_> = a.keys().chain(b.keys()).collect();
    for id in ids {
        assert_eq!(a.get(id), b.get(id), "{what}: token {id}");
    }
}

/// (1) A snapshot taken while two writers create, update and delete is the
/// state at one revision R: exactly what folding the event log up to R gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_under_concurrent_writes_is_the_state_at_its_revision() {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_tokend(dir.path(), &[]).await;
    let acc = new_account(&mut p.accounts().await, ALL_MODULES).await;
    let mut c = p.tokens().await;
    for i in 0..50 {
        create_token(&mut c, &acc.id, &format!("seed {i}")).await;
    }
    let before = head(&mut c).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..2 {
        let (mut c, stop, account) = (p.tokens().await, stop.clone(), acc.id.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (t, _) = create_token(&mut c, &account, &format!("w{w} {n}")).await;
                match n % 3 {
                    0 => {
                        delete(&mut c, &t.id).await.unwrap();
                    }
                    1 => {
                        c.disable_token(pb::DisableTokenRequest {
                            id: t.id,
                            etag: String::new(),
                        })
                        .await
                        .unwrap();
                    }
                    _ => {
                        c.update_token(pb::UpdateTokenRequest {
                            token: Some(pb::Token {
                                id: t.id,
                                name: format!("w{w} {n} renamed"),
                                ..Default::default()
                            }),
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                    }
                }
                n += 1;
            }
        }));
    }
    // Writes before the save, and after it.
    head_past(&mut c, before).await;
    let file = dir.path().join("backup.snap");
    let ran = save(&p, &file).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let snap = Snapshot::decode(&std::fs::read(&file).unwrap()).unwrap();
    let r = snap.revision as i64;
    head_past(&mut c, r).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let end = head(&mut c).await;
    assert!(
        before < r && r < end,
        "writes before {before}, at {r}, after; head {end}"
    );

    // The state at R, folded from the whole log: id → (etag, deleted).
    let mut at_r: BTreeMap<String, (String, bool)> = BTreeMap::new();
    let log = common::checks::catch_up(&mut c, 1, r).await;
    for e in log.into_iter().filter(|e| e.revision <= r) {
        at_r.insert(e.id, (e.etag, e.kind == EventType::Deleted as i32));
    }
    let got: BTreeMap<String, (String, bool)> = snap
        .tokens
        .iter()
        .map(|t| (t.id.to_string(), (t.etag(), t.is_deleted())))
        .collect();
    assert_eq!(got.len(), at_r.len());
    assert!(got == at_r, "the snapshot differs from the log at {r}");
    let live = at_r.values().filter(|(_, deleted)| !deleted).count();
    assert_eq!(snap.secrets.len(), live);
    println!(
        "snapshot at {r} of {} tokens, taken between revisions {before} and {end}",
        got.len()
    );
}

/// (2) A server on the restored dir answers as the original did: every
/// token (tombstones too), secrets, ids, and revisions after the snapshot's;
/// no history from before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_store_answers_as_the_original_did() {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_tokend(dir.path(), &[]).await;
    let acc = new_account(&mut p.accounts().await, ALL_MODULES).await;
    let mut c = p.tokens().await;
    let Made { kept, gone, .. } = mixed_tokens(&mut c, &acc.id, 30).await;
    let before = common::checks::state(&mut c).await;
    let accounts = all_accounts(&p).await;
    let file = dir.path().join("backup.snap");
    let ran = save(&p, &file).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let r = Snapshot::decode(&std::fs::read(&file).unwrap())
        .unwrap()
        .revision as i64;
    // For scripts, the same as JSON.
    let json_file = dir.path().join("again.snap");
    let ran = save_with(&p, &json_file, &["-o", "json"]).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let said: serde_json::Value = serde_json::from_str(&ran.stdout).expect(&ran.stdout);
    assert_eq!(said["revision"], r, "{said}");
    assert_eq!(said["file"], json_file.display().to_string());
    assert_eq!(said["accounts"], accounts.len());
    assert_eq!(said["bytes"], std::fs::metadata(&json_file).unwrap().len());
    drop(p);

    let restored = dir.path().join("restored");
    let ran = restore(&file, &restored).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(
        ran.stdout.contains(&format!("revision {r}")),
        "{}",
        ran.stdout
    );
    // The restored store numbers its changes past any the original may
    // have made since the snapshot.
    let head = r + RESTORE_GAP as i64;
    assert!(
        ran.stdout
            .contains(&format!("its next change is revision {}", head + 1)),
        "{}",
        ran.stdout
    );
    let q = serve_restored(dir.path(), &restored).await;
    let mut c = q.tokens().await;
    for (id, t) in &before {
        let got = get(&mut c, id, true).await.unwrap();
        assert_eq!(without_access_time(got), without_access_time(t.clone()));
    }
    let after = common::checks::state(&mut c).await;
    assert_eq!(after.len(), before.len());
    let listed = all_accounts(&q).await;
    assert_eq!(listed, accounts);
    for secret in &kept {
        assert!(verify(&mut c, secret).await.valid);
    }
    for secret in &gone {
        let v = verify(&mut c, secret).await;
        assert_eq!(v.result, pb::VerifyResult::NotFound as i32);
    }
    // History before the snapshot is gone: OUT_OF_RANGE, never a replay.
    // So is every revision the original may have written after it: a
    // watcher or cache of the original that heard R + 5 there must re-sync,
    // not wait for the restored store's own R + 5 and take it for the next.
    for from in [1, r, r + 1, r + 5, head] {
        assert_eq!(
            watch_refusal(&mut c, from).await,
            Code::OutOfRange,
            "from {from}"
        );
    }
    // Revisions continue after the restored head, and new ids are new.
    let mut live = watch_from(&mut c, head + 1).await;
    let used: BTreeSet<&String> = before.keys().collect();
    let mut prev = head;
    for i in 0..20 {
        let (t, _) = create_token(&mut c, &acc.id, &format!("new {i}")).await;
        assert!(!used.contains(&t.id), "{} issued again", t.id);
        let e = next_change(&mut live).await;
        assert_follows(prev, e.revision, "a write after the restore");
        prev = e.revision;
        assert_eq!(e.token.unwrap().id, t.id);
    }
    // Its own changes took no number the original's watchers may hold.
    assert_eq!(watch_refusal(&mut c, r + 1).await, Code::OutOfRange);
    // A restored record takes writes under the etag it had before.
    let (id, t) = before
        .iter()
        .find(|(_, t)| t.status == pb::TokenStatus::Active as i32 && t.account_id == acc.id)
        .unwrap();
    c.disable_token(pb::DisableTokenRequest {
        id: id.clone(),
        etag: t.etag.clone(),
    })
    .await
    .unwrap();
}

/// A snapshot of a small server, its bytes.
async fn small_snapshot(dir: &Path) -> Vec<u8> {
    let p = spawn_tokend(dir, &[]).await;
    let acc = new_account(&mut p.accounts().await, ALL_MODULES).await;
    let mut c = p.tokens().await;
    for i in 0..5 {
        create_token(&mut c, &acc.id, &format!("t{i}")).await;
    }
    let file = dir.join("small.snap");
    let ran = save(&p, &file).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    std::fs::read(file).unwrap()
}

/// (3) A flipped byte, a cut-off file, a file of another kind or version:
/// refused with a message that says which, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_truncated_and_foreign_files_are_refused_writing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let good = small_snapshot(&dir.path().join("server")).await;
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x01;
    let mut other_version = good.clone();
    other_version[16] = b'9';
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("flipped", flipped, "checksum does not match"),
        ("half", good[..good.len() / 2].to_vec(), "truncated"),
        ("no trailer", good[..good.len() - 72].to_vec(), "truncated"),
        ("empty", Vec::new(), "not a tokend snapshot"),
        (
            "foreign",
            b"{\"hello\": \"world\"}\n".to_vec(),
            "not a tokend snapshot",
        ),
        ("other version", other_version, "checksum"),
    ];
    for (i, (what, bytes, says)) in cases.into_iter().enumerate() {
        let file = dir.path().join(format!("bad{i}.snap"));
        std::fs::write(&file, bytes).unwrap();
        let target = dir.path().join(format!("target{i}"));
        let ran = restore(&file, &target).await;
        assert_ne!(ran.code, 0, "{what}: {}", ran.stdout);
        assert!(ran.stderr.contains(says), "{what}: {}", ran.stderr);
        assert_eq!(
            ran.stderr.trim().lines().count(),
            1,
            "{what}: {}",
            ran.stderr
        );
        assert!(!target.exists(), "{what}: the target was created");
    }
    // Nothing was written on etcd either: the same target takes a good one.
    std::fs::write(dir.path().join("good.snap"), &good).unwrap();
    let ran = restore(&dir.path().join("good.snap"), &dir.path().join("target0")).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    std::fs::remove_dir_all(dir.path().join("target0")).ok();
    // Nothing beside them either (no temporary dir left behind).
    let names: BTreeSet<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".snap"))
        .collect();
    assert_eq!(names, BTreeSet::from(["server".to_string()]));
    // A version this tokend does not read, with a checksum that matches.
    let text = String::from_utf8(good.clone()).unwrap();
    let body_end = text.trim_end().rfind('\n').unwrap() + 1;
    let body = text[..body_end].replacen("TOKEND-SNAPSHOT 1", "TOKEND-SNAPSHOT 2", 1);
    let sum =
        base16ct::lower::encode_string(&<sha2::Sha256 as sha2::Digest>::digest(body.as_bytes()));
    let file = dir.path().join("v2.snap");
    std::fs::write(&file, format!("{body}sha256 {sum}\n")).unwrap();
    let target = dir.path().join("target-v2");
    let ran = restore(&file, &target).await;
    assert_ne!(ran.code, 0);
    assert!(
        ran.stderr.contains("version \"2\" is not supported"),
        "{}",
        ran.stderr
    );
    assert!(!target.exists());
}

/// A save whose file cannot be written fails before it downloads anything
/// (the server named here is not even there), and one that fails later
/// leaves no temp file beside its target.
#[tokio::test]
async fn a_save_that_cannot_write_fails_before_asking_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = "http://127.0.0.1:1";
    let save_to = |file: &Path| {
        let file = file.display().to_string();
        let args = [
            "snapshot", "save", &file, "--server", nowhere, "--token", "x",
        ];
        tokend(args.iter().map(|s| s.to_string()).collect())
    };
    let missing = dir.path().join("no/such/dir/backup.snap");
    let ran = save_to(&missing).await;
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains(&format!("cannot write {}: No such file", missing.display())),
        "{}",
        ran.stderr
    );
    let writable = dir.path().join("backup.snap");
    let ran = save_to(&writable).await;
    assert_eq!(ran.code, 6, "{}", ran.stderr);
    assert!(ran.stderr.contains("cannot reach"), "{}", ran.stderr);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// A save stopped while it waits for the server (Ctrl-C, a cron job's
/// timeout) says so and leaves nothing behind: no hidden temp file beside
/// the target, and the file already there as it was.
#[tokio::test]
async fn a_save_stopped_by_a_signal_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.snap");
    std::fs::write(&file, "yesterday's").unwrap();
    let server = format!("http://{}", silent_addr());
    for (signal, code) in [("INT", 130), ("TERM", 143)] {
        let args = [
            "snapshot",
            "save",
            &file.display().to_string(),
            "--server",
            &server,
            "--token",
            "x",
        ];
        let child = std::process::Command::new(BIN)
            .args(args)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Its temp file made, it waits for the server's answer.
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::read_dir(dir.path()).unwrap().count() < 2 {
            assert!(Instant::now() < deadline, "no temp file");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let sent = std::process::Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let out = tokio::task::spawn_blocking(|| child.wait_with_output().unwrap())
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "SIG{signal}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "stopped by SIG{signal}: nothing written to {}",
                file.display()
            )),
            "{stderr}"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["backup.snap"], "SIG{signal}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "yesterday's");
    }
}

/// (4) A target that holds anything is refused and left as it was (but
/// for a volume's lost+found, and what a killed restore left); an empty
/// one is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_empty_target_is_refused_and_an_empty_one_used() {
    let dir = tempfile::tempdir().unwrap();
    let good = small_snapshot(&dir.path().join("server")).await;
    let file = dir.path().join("good.snap");
    std::fs::write(&file, &good).unwrap();
    let on_etcd = test_etcd().is_some();
    if !on_etcd {
        let target = dir.path().join("busy");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("notes.txt"), "mine").unwrap();
        let ran = restore(&file, &target).await;
        assert_ne!(ran.code, 0);
        assert!(
            ran.stderr.contains("is not empty (it holds notes.txt)"),
            "{}",
            ran.stderr
        );
        let left: Vec<_> = std::fs::read_dir(&target).unwrap().collect();
        assert_eq!(left.len(), 1);
        assert_eq!(
            std::fs::read_to_string(target.join("notes.txt")).unwrap(),
            "mine"
        );
        // The root of a file system, as a Kubernetes volume mounted as the
        // data dir is, holds lost+found: the store goes beside it, and
        // lost+found is left as it was.
        let volume = dir.path().join("volume");
        std::fs::create_dir_all(volume.join("lost+found")).unwrap();
        std::fs::write(volume.join("lost+found/#1234"), "fsck's").unwrap();
        // And what a restore killed half-way left there: removed.
        std::fs::create_dir_all(volume.join(".restoring-999/db")).unwrap();
        let ran = restore(&file, &volume).await;
        assert_eq!(ran.code, 0, "{}", ran.stderr);
        let mut names: Vec<_> = std::fs::read_dir(&volume)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["db", "lost+found"]);
        assert_eq!(
            std::fs::read_to_string(volume.join("lost+found/#1234")).unwrap(),
            "fsck's"
        );
        std::fs::copy(
            dir.path().join("server/operator.token"),
            volume.join("operator.token"),
        )
        .unwrap();
        let p = spawn_tokend(&volume, &[]).await;
        assert_eq!(records(&mut p.tokens().await).await.len(), 6);
        drop(p);
    }
    // The server's own store (its data dir, or its etcd prefix) is not
    // empty either, and is left as it was.
    let server = dir.path().join("server");
    let ran = restore(&file, &server).await;
    assert_ne!(ran.code, 0);
    let refusal = if on_etcd {
        "keys: a snapshot is restored only into an empty prefix"
    } else {
        "is not empty"
    };
    assert!(ran.stderr.contains(refusal), "{}", ran.stderr);
    let p = spawn_tokend(&server, &[]).await;
    // Its five tokens and the operator's.
    assert_eq!(records(&mut p.tokens().await).await.len(), 6);
    drop(p);

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let ran = restore(&file, &empty).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(empty.join("db").is_dir(), !on_etcd);
    // Into sled, the data dir is not optional.
    let args = ["snapshot", "restore", "x.snap", "--store", "sled"];
    let ran = tokend(args.iter().map(|s| s.to_string()).collect()).await;
    assert_eq!(ran.code, 2);
    assert!(
        ran.stderr.contains("--data-dir is required"),
        "{}",
        ran.stderr
    );
}

/// One timed call of [`traffic`]: when it started, how long it took, and
/// whether it was a write.
type Call = (Instant, Duration, bool);

/// Creates (a writer) or verifies `secret` (a reader) in a loop until
/// `stop`, timing each call.
fn traffic(
    mut c: Tokens,
    account: String,
    secret: String,
    write: bool,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Call>> {
    tokio::spawn(async move {
        let mut calls = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let at = Instant::now();
            if write {
                create_token(&mut c, &account, "during the save").await;
            } else {
                assert!(verify(&mut c, &secret).await.valid);
            }
            calls.push((at, at.elapsed(), write));
        }
        calls
    })
}

/// Waits until the store's head is past `revision` (30 s at most).
async fn head_past(c: &mut Tokens, revision: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while head(c).await <= revision {
        assert!(Instant::now() < deadline, "no write past {revision}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// "N writes, p50/p99/max …" for the calls of one kind inside `window`.
fn latencies(calls: &[Call], write: bool, window: (Instant, Instant)) -> (usize, String) {
    let mut took: Vec<Duration> = calls
        .iter()
        .filter(|(at, d, w)| *w == write && *at >= window.0 && *at + *d <= window.1)
        .map(|c| c.1)
        .collect();
    took.sort();
    let q = |f: f64| took.get(((took.len() as f64 * f) as usize).min(took.len().saturating_sub(1)));
    let text = format!(
        "{} {}, p50 {:.1?} p99 {:.1?} max {:.1?}",
        took.len(),
        if write { "writes" } else { "verifies" },
        q(0.5).copied().unwrap_or_default(),
        q(0.99).copied().unwrap_or_default(),
        took.last().copied().unwrap_or_default()
    );
    (took.len(), text)
}

/// Measures save and restore of TOKEND_SNAPSHOT_TOKENS tokens (10,000 by
/// default), with a writer and a reader running throughout: both keep
/// being answered while the save runs (their latencies are printed beside
/// those of the second before it). The restored server knows the tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_and_restore_times_for_10000_tokens() {
    let n: usize = std::env::var("TOKEND_SNAPSHOT_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_tokend(dir.path(), &[]).await;
    let acc = new_account(&mut p.accounts().await, ALL_MODULES).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..32 {
        let (mut c, account) = (p.tokens().await, acc.id.clone());
        tasks.push(tokio::spawn(async move {
            let mut last = None;
            for i in (w..n).step_by(32) {
                last = Some(create_token(&mut c, &account, &format!("bulk {i}")).await);
            }
            last
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.unwrap());
    }
    let filled = started.elapsed();
    let stop = Arc::new(AtomicBool::new(false));
    let known = samples[0].1.clone();
    let load: Vec<_> = [true, false]
        .into_iter()
        .map(|write| (write, acc.id.clone(), known.clone(), stop.clone()))
        .collect();
    let mut running = Vec::new();
    for (write, account, secret, stop) in load {
        running.push(traffic(p.tokens().await, account, secret, write, stop));
    }
    let before = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let file = dir.path().join("big.snap");
    let started = Instant::now();
    let ran = save(&p, &file).await;
    let saved = started.elapsed();
    let ended = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let mut calls = Vec::new();
    for t in running {
        calls.extend(t.await.unwrap());
    }
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let (writes, during_w) = latencies(&calls, true, (started, ended));
    let (reads, during_r) = latencies(&calls, false, (started, ended));
    println!(
        "during the save: {during_w}; {during_r}\nthe second before: {}; {}",
        latencies(&calls, true, (before, started)).1,
        latencies(&calls, false, (before, started)).1
    );
    assert!(writes > 0 && reads > 0, "no call finished during the save");
    let size = std::fs::metadata(&file).unwrap().len();
    drop(p);
    let restored = dir.path().join("restored");
    let started = Instant::now();
    let ran = restore(&file, &restored).await;
    let restore_time = started.elapsed();
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    println!(
        "{n} tokens (created in {filled:.1?}): save {saved:.2?}, {size} bytes ({} per token); restore {restore_time:.2?}",
        size / n as u64
    );
    let q = serve_restored(dir.path(), &restored).await;
    let mut c = q.tokens().await;
    for (t, secret) in samples {
        assert!(verify(&mut c, &secret).await.valid, "{}", t.id);
    }
}

/// (5) sled → etcd → sled: a deployment moved to a 3-member etcd cluster
/// and back with two snapshots answers as it did at each step; revisions
/// only ever move forward, ids are never reissued, restored records take
/// writes under their old etags, and history from before a restore is
/// OUT_OF_RANGE. A prefix whose restore never finished is refused at start.
/// Runs in the sled pass only: it starts its own cluster either way.
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_moves_from_sled_to_etcd_and_back() {
    if test_etcd().is_some() {
        return;
    }
    let cluster = common::etcd::EtcdCluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir, c_dir) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );

    // A: on sled, with tombstones, disabled and updated tokens.
    let a = spawn_tokend(&a_dir, &[]).await;
    let acc = new_account(&mut a.accounts().await, ALL_MODULES).await;
    let mut c = a.tokens().await;
    let made = mixed_tokens(&mut c, &acc.id, 24).await;
    // A token with two changes, and a cursor into its trail that A handed
    // out (page tokens are signed with the page key, which moves too).
    let (trail, _) = create_token(&mut c, &acc.id, "trail").await;
    rename(&mut c, &trail.id, "trail 2").await.unwrap();
    let cursor = c
        .list_token_events(pb::ListTokenEventsRequest {
            token_id: trail.id.clone(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .next_page_token;
    assert!(!cursor.is_empty());
    let secrets: Vec<(bool, String)> = (made.kept.iter().map(|s| (true, s)))
        .chain(made.disabled.iter().chain(&made.gone).map(|s| (false, s)))
        .map(|(live, s)| (live, s.clone()))
        .collect();
    let state_a = records(&mut c).await;
    let file_a = dir.path().join("a.snap");
    assert_eq!(save(&a, &file_a).await.code, 0);
    let r_a = Snapshot::decode(&std::fs::read(&file_a).unwrap())
        .unwrap()
        .revision as i64;
    drop(a);

    // B: the same, on etcd (two replicas).
    let store = cluster.store("moved");
    let into_etcd = |file: &Path| {
        let (file, store) = (file.display().to_string(), store.clone());
        tokend(vec![
            "snapshot".into(),
            "restore".into(),
            file,
            "--store".into(),
            store,
        ])
    };
    let ran = into_etcd(&file_a).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(
        ran.stdout.contains("into etcd prefix /moved/"),
        "{}",
        ran.stdout
    );
    let again = into_etcd(&file_a).await;
    assert!(
        again.stderr.contains("only into an empty prefix"),
        "{}",
        again.stderr
    );
    std::fs::create_dir_all(&b_dir).unwrap();
    std::fs::copy(a_dir.join("operator.token"), b_dir.join("operator.token")).unwrap();
    let b = spawn_tokend(&b_dir, &["--store", &store]).await;
    let b2_dir = dir.path().join("b2");
    std::fs::create_dir_all(&b2_dir).unwrap();
    std::fs::copy(a_dir.join("operator.token"), b2_dir.join("operator.token")).unwrap();
    let b2 = spawn_tokend(&b2_dir, &["--store", &store]).await;
    let (mut c, mut c2) = (b.tokens().await, b2.tokens().await);
    assert_same(&records(&mut c).await, &state_a, "on etcd");
    assert_same(&records(&mut c2).await, &state_a, "on etcd, second replica");
    for (live, secret) in &secrets {
        assert_eq!(verify(&mut c2, secret).await.valid, *live);
    }
    let head_a = r_a + RESTORE_GAP as i64;
    for from in [r_a, r_a + 1, head_a] {
        assert_eq!(watch_refusal(&mut c, from).await, Code::OutOfRange);
    }
    let mut live = watch_from(&mut c2, head_a + 1).await;
    // (Tokens of the test's account: never the operator's, which the
    // calls authenticate with, nor the trail's, which has its own check.)
    // Writes on B: a restored token updated under its old etag, one
    // deleted, one created; each heard once, after R_a, in order.
    let active = |t: &pb::Token| {
        t.status == pb::TokenStatus::Active as i32 && t.account_id == acc.id && t.id != trail.id
    };
    let (kept, t) = state_a.iter().find(|(_, t)| active(t)).unwrap();
    c.disable_token(pb::DisableTokenRequest {
        id: kept.clone(),
        etag: t.etag.clone(),
    })
    .await
    .unwrap();
    let gone = state_a.iter().filter(|(_, t)| active(t)).nth(1).unwrap().0;
    delete(&mut c, gone).await.unwrap();
    let (fresh, _) = create_token(&mut c, &acc.id, "made on etcd").await;
    assert!(
        !state_a.contains_key(&fresh.id),
        "{} issued again",
        fresh.id
    );
    let mut prev = head_a;
    for id in [kept, gone, &fresh.id] {
        let e = next_change(&mut live).await;
        assert!(e.revision > prev, "revision {} after {prev}", e.revision);
        prev = e.revision;
        assert_eq!(&e.token.unwrap().id, id);
    }
    // A's cursor reads nothing from before the restore, even once the
    // token changed on etcd (etcd read a revision below the restore's as
    // its newest, and listed that change as older than the cursor).
    rename(&mut c, &trail.id, "trail 3").await.unwrap();
    let before_restore = c
        .list_token_events(pb::ListTokenEventsRequest {
            token_id: trail.id.clone(),
            page_token: cursor,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before_restore.events, [], "history from before the restore");
    let history = c
        .list_token_events(pb::ListTokenEventsRequest {
            token_id: kept.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        history.events.len(),
        1,
        "only what happened after the restore"
    );
    let state_b = records(&mut c).await;
    let file_b = dir.path().join("b.snap");
    assert_eq!(save(&b, &file_b).await.code, 0);
    let r_b = Snapshot::decode(&std::fs::read(&file_b).unwrap())
        .unwrap()
        .revision as i64;
    assert!(r_b >= prev, "{r_b} < {prev}");
    drop((b, b2));

    // C: back on sled.
    let ran = restore(&file_b, &c_dir).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let cc = serve_restored(&a_dir, &c_dir).await;
    let mut c = cc.tokens().await;
    assert_same(&records(&mut c).await, &state_b, "back on sled");
    let head_b = r_b + RESTORE_GAP as i64;
    for from in [r_b, r_b + 1, head_b] {
        assert_eq!(watch_refusal(&mut c, from).await, Code::OutOfRange);
    }
    let mut live = watch_from(&mut c, head_b + 1).await;
    let (newest, _) = create_token(&mut c, &acc.id, "back on sled").await;
    assert!(!state_b.contains_key(&newest.id));
    assert_eq!(next_change(&mut live).await.revision, head_b + 1);

    // A prefix whose restore stopped half-way is refused, in one line.
    cluster.etcdctl(
        None,
        None,
        &["put", "/half/m/origin", r#"{"restoring":true}"#],
    );
    let half = dir.path().join("half");
    std::fs::create_dir_all(&half).unwrap();
    let out = serve_command(&half, free_addr(), &["--store", &cluster.store("half")])
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("has not finished"), "{stderr}");
}

/// Every account the server at `p` lists.
async fn all_accounts(p: &Process) -> Vec<pb::Account> {
    p.accounts()
        .await
        .list_accounts(pb::ListAccountsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .accounts
}
