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
use tokend::store::snapshot::Snapshot;
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
    let args = [
        "snapshot",
        "save",
        &file.display().to_string(),
        "--server",
        &p.url(),
        "--token-file",
        &p.dir.join("operator.token").display().to_string(),
    ];
    tokend(args.iter().map(|s| s.to_string()).collect()).await
}

async fn restore(file: &Path, dir: &Path) -> Ran {
    let args = [
        "snapshot",
        "restore",
        &file.display().to_string(),
        "--data-dir",
        &dir.display().to_string(),
    ];
    tokend(args.iter().map(|s| s.to_string()).collect()).await
}

/// Serves a restored data dir on sled, with the original's operator secret.
async fn serve_restored(original: &Path, restored: &Path) -> Process {
    std::fs::copy(
        original.join("operator.token"),
        restored.join("operator.token"),
    )
    .unwrap();
    spawn_tokend(restored, &["--store", "sled"]).await
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

fn without_access_time(mut t: pb::Token) -> pb::Token {
    t.last_access_time = None;
    t
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
    tokio::time::sleep(Duration::from_millis(300)).await;
    let file = dir.path().join("backup.snap");
    let ran = save(&p, &file).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let end = head(&mut c).await;
    let snap = Snapshot::decode(&std::fs::read(&file).unwrap()).unwrap();
    let r = snap.revision as i64;
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
    let (mut kept, mut gone) = (Vec::new(), Vec::new());
    for i in 0..30 {
        let (t, secret) = create_token(&mut c, &acc.id, &format!("t{i}")).await;
        match i % 3 {
            0 => {
                delete(&mut c, &t.id).await.unwrap();
                gone.push(secret);
            }
            1 => {
                c.disable_token(pb::DisableTokenRequest {
                    id: t.id,
                    etag: String::new(),
                })
                .await
                .unwrap();
            }
            _ => kept.push(secret),
        }
    }
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
    drop(p);

    let restored = dir.path().join("restored");
    let ran = restore(&file, &restored).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(
        ran.stdout.contains(&format!("revision {r}")),
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
    assert_eq!(watch_refusal(&mut c, 1).await, Code::OutOfRange);
    assert_eq!(watch_refusal(&mut c, r).await, Code::OutOfRange);
    // Revisions continue after R, and new ids are new.
    let mut live = watch_from(&mut c, r + 1).await;
    let used: BTreeSet<&String> = before.keys().collect();
    for i in 0..20 {
        let (t, _) = create_token(&mut c, &acc.id, &format!("new {i}")).await;
        assert!(!used.contains(&t.id), "{} issued again", t.id);
        let e = next_change(&mut live).await;
        assert_eq!(e.revision, r + 1 + i);
        assert_eq!(e.token.unwrap().id, t.id);
    }
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
    let sum: String = <sha2::Sha256 as sha2::Digest>::digest(body.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
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

/// (4) A target that holds anything is refused and left as it was; an
/// empty one is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_empty_target_is_refused_and_an_empty_one_used() {
    let dir = tempfile::tempdir().unwrap();
    let good = small_snapshot(&dir.path().join("server")).await;
    let file = dir.path().join("good.snap");
    std::fs::write(&file, &good).unwrap();
    let target = dir.path().join("busy");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("notes.txt"), "mine").unwrap();
    let ran = restore(&file, &target).await;
    assert_ne!(ran.code, 0);
    assert!(ran.stderr.contains("is not empty"), "{}", ran.stderr);
    let left: Vec<_> = std::fs::read_dir(&target).unwrap().collect();
    assert_eq!(left.len(), 1);
    assert_eq!(
        std::fs::read_to_string(target.join("notes.txt")).unwrap(),
        "mine"
    );
    // The server's own (running-size) data dir is not empty either.
    let ran = restore(&file, &dir.path().join("server")).await;
    assert_ne!(ran.code, 0);
    assert!(ran.stderr.contains("is not empty"), "{}", ran.stderr);

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let ran = restore(&file, &empty).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(empty.join("db").is_dir());
    // etcd is refused plainly, before anything is read.
    let args = [
        "snapshot",
        "restore",
        "x.snap",
        "--data-dir",
        "d",
        "--store",
        "etcd://127.0.0.1:2379",
    ];
    let ran = tokend(args.iter().map(|s| s.to_string()).collect()).await;
    assert_ne!(ran.code, 0);
    assert!(ran.stderr.contains("not supported yet"), "{}", ran.stderr);
}

/// Measures save and restore of TOKEND_SNAPSHOT_TOKENS tokens (10,000 by
/// default), and checks the restored server knows the last one.
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
    let file = dir.path().join("big.snap");
    let started = Instant::now();
    let ran = save(&p, &file).await;
    let saved = started.elapsed();
    assert_eq!(ran.code, 0, "{}", ran.stderr);
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
