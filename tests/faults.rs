//! Storage faults. At start-up: a data dir that cannot be created or written,
//! and stores that are not (or no longer) tokend's; each fails with one clear
//! line and a non-zero exit, and nothing is re-initialised. (A dir another
//! tokend holds: `tests/server.rs`.) At runtime: a write the kernel refuses is
//! answered UNAVAILABLE, never announced, and the store keeps its word.

mod common;

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use common::*;
use tokend::proto as pb;
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_tokend");

/// Runs `tokend serve` on `dir`; returns (exit code, last stderr line).
fn serve(dir: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (
        out.status.code(),
        stderr.lines().last().unwrap_or_default().to_string(),
    )
}

#[test]
fn a_data_dir_that_cannot_be_created_fails_start_up_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    // Even root cannot make a directory inside a regular file.
    let (code, line) = serve(&file.join("data"));
    assert_eq!(code, Some(1));
    assert!(
        line.starts_with("tokend: storage failure while creating"),
        "{line}"
    );
}

/// Root writes anywhere, so when the suite runs as root the server runs as
/// `nobody` instead, from a copy of the binary every user may execute.
#[test]
fn a_data_dir_that_is_not_writable_fails_start_up_in_one_line() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let open = std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(dir.path(), open.clone()).unwrap();
    let bin = dir.path().join("tokend");
    std::fs::copy(BIN, &bin).unwrap();
    std::fs::set_permissions(&bin, open).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o555)).unwrap();

    let mut cmd = Command::new(&bin);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data);
    // SAFETY: geteuid cannot fail and has no side effects.
    if unsafe { libc::geteuid() } == 0 {
        cmd.uid(65534).gid(65534);
    }
    // Another test thread forking while the copy was open for writing holds
    // that descriptor until its exec: running the copy then fails with
    // ETXTBSY ("Text file busy") for a moment.
    let out = loop {
        match cmd.output() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => break r.unwrap(),
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().last().unwrap_or_default();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        line.starts_with("tokend: storage failure while opening"),
        "{line}"
    );
    assert!(line.contains("Permission denied"), "{line}");
    assert_eq!(
        std::fs::read_dir(&data).unwrap().count(),
        0,
        "nothing written"
    );
}

/// Changes the store's tree behind tokend's back, as damage would.
fn tamper(dir: &std::path::Path, edit: impl FnOnce(&sled::Tree)) {
    let db = sled::open(dir.join("db")).unwrap();
    edit(&db.open_tree("tokend").unwrap());
    db.flush().unwrap();
}

#[test]
fn a_store_without_tokends_format_marker_is_refused_not_reinitialised() {
    let dir = tempfile::tempdir().unwrap();
    tamper(dir.path(), |tree| {
        tree.insert("t/TKN-0000-0001", "{}").unwrap();
    });
    let (code, line) = serve(dir.path());
    assert_eq!(code, Some(1));
    assert!(line.contains("corrupt store"), "{line}");
    // Left as it was: the record is still there, nothing was added.
    let db = sled::open(dir.path().join("db")).unwrap();
    let tree = db.open_tree("tokend").unwrap();
    assert_eq!(tree.len(), 1);
}

#[tokio::test]
async fn a_store_with_a_foreign_format_or_a_corrupt_record_is_refused() {
    if sled_only("tampering with the sled files") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    tamper(dir.path(), |tree| {
        tree.insert("m/format", "someone-else-7").unwrap();
    });
    let (code, line) = serve(dir.path());
    assert_eq!(code, Some(1));
    assert!(line.contains("corrupt format marker"), "{line}");

    // A valid store whose token record was damaged on disk.
    let dir = tempfile::tempdir().unwrap();
    // First start initialises it (and bootstraps the operator).
    let mut p = spawn_tokend(dir.path(), &[]).await;
    p.signal(15);
    assert_eq!(p.child.wait().unwrap().code(), Some(0));
    tamper(dir.path(), |tree| {
        let key = tree.scan_prefix("t/").next().unwrap().unwrap().0;
        tree.insert(key, "{not json").unwrap();
    });
    let (code, line) = serve(dir.path());
    assert_eq!(code, Some(1));
    assert!(line.contains("corrupt token"), "{line}");
}

/// A write the kernel refuses while serving. The file-size limit (EFBIG)
/// stands in for a full disk (ENOSPC): both are real refusals of sled's
/// write, met on the same code path, and the limit needs no privileges.
#[tokio::test]
async fn a_write_that_fails_at_runtime_is_refused_and_never_announced() {
    if sled_only("making the sled files fail") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Initialise the store and an account, then stop cleanly.
    let mut p = spawn_tokend(dir.path(), &[]).await;
    let acc = new_account(&mut p.accounts().await, ALL_MODULES).await;
    p.signal(15);
    p.child.wait().unwrap();

    let size = std::fs::metadata(dir.path().join("db/db")).unwrap().len();
    let limit = size + 512 * 1024;
    let p = spawn_tokend_with(dir.path(), &[], move |cmd| {
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Ignored, SIGXFSZ would kill the process; ignored, the write
                // fails with EFBIG instead. Both survive exec.
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let lim = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })
    .await;
    let mut c = p.tokens().await;
    let mut w = watch(&mut c, pb::WatchTokensRequest::default()).await;

    let description = "x".repeat(2000);
    let mut acked = Vec::new();
    let refused = loop {
        assert!(acked.len() < 5000, "the size limit never bit");
        let r = c
            .create_token(pb::CreateTokenRequest {
                account_id: acc.id.clone(),
                name: format!("t{}", acked.len()),
                description: description.clone(),
                modules: vec!["commerce".into()],
                ..Default::default()
            })
            .await;
        match r {
            Ok(r) => acked.push(r.into_inner()),
            Err(status) => break status,
        }
    };
    println!(
        "refused after {} acknowledged creates: {refused:?}",
        acked.len()
    );
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(reason(&refused), "STORE_UNAVAILABLE");
    assert!(refused.message().contains("File too large"), "{refused:?}");
    assert!(acked.len() >= 10, "the limit left room for some writes");

    // Memory and disk may now disagree, so every later write is refused
    // (even one that would fit), while reads go on.
    let victim = acked[0].token.clone().unwrap();
    let again = delete(&mut c, &victim.id).await.unwrap_err();
    assert_eq!(again.code(), Code::Unavailable);
    assert!(again.message().contains("restart tokend"), "{again:?}");
    assert!(verify(&mut c, &acked[0].secret).await.valid);
    get(&mut c, &victim.id, false).await.unwrap();

    // Watchers heard of exactly the acknowledged creates: nothing of the
    // refused one, nothing of the refused delete.
    let mut heard = Vec::new();
    while let Ok(e) = tokio::time::timeout(Duration::from_millis(500), w.message()).await {
        let e = e.expect("stream stays healthy").expect("stream stays open");
        assert_eq!(e.r#type, EventType::Created as i32, "{e:?}");
        heard.push(e.token.unwrap().id);
    }
    let acked_ids: Vec<String> = acked.iter().map(|r| r.token.clone().unwrap().id).collect();
    assert_eq!(heard, acked_ids);
    drop(p);

    // Restarted without the limit: every acknowledged create is there, and
    // the event log agrees with the state (whether or not sled kept the
    // refused create, which was never acknowledged).
    let p = spawn_tokend(dir.path(), &[]).await;
    let mut c = p.tokens().await;
    for r in &acked {
        assert!(verify(&mut c, &r.secret).await.valid);
    }
    let listed = c
        .list_tokens(pb::ListTokensRequest {
            account_id: acc.id.clone(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert!(
        listed.len() == acked.len() || listed.len() == acked.len() + 1,
        "{} listed, {} acknowledged",
        listed.len(),
        acked.len()
    );
    let mut w = watch(
        &mut c,
        pb::WatchTokensRequest {
            account_id: acc.id.clone(),
            start_revision: 1,
            ..Default::default()
        },
    )
    .await;
    let mut logged = Vec::new();
    for _ in 0..listed.len() {
        logged.push(next_change(&mut w).await.token.unwrap().id);
    }
    let listed: std::collections::BTreeSet<_> = listed.into_iter().map(|t| t.id).collect();
    assert_eq!(
        logged
            .iter()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        listed
    );
    assert_eq!(&logged[..acked_ids.len()], &acked_ids[..]);
}
