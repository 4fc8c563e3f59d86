//! Storage faults at start-up: a data dir that cannot be created, one that
//! another tokend holds, and stores that are not (or no longer) tokend's. Each
//! fails with one clear line and a non-zero exit, and nothing is re-initialised.

use std::process::Command;

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

#[test]
fn a_store_without_tokends_format_marker_is_refused_not_reinitialised() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path().join("db")).unwrap();
        let tree = db.open_tree("tokend").unwrap();
        tree.insert("t/TKN-0000-0001", "{}").unwrap();
        db.flush().unwrap();
    }
    let (code, line) = serve(dir.path());
    assert_eq!(code, Some(1));
    assert!(line.contains("corrupt store"), "{line}");
    // Left as it was: the record is still there, nothing was added.
    let db = sled::open(dir.path().join("db")).unwrap();
    let tree = db.open_tree("tokend").unwrap();
    assert_eq!(tree.len(), 1);
}

#[test]
fn a_store_with_a_foreign_format_or_a_corrupt_record_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path().join("db")).unwrap();
        let tree = db.open_tree("tokend").unwrap();
        tree.insert("m/format", "someone-else-7").unwrap();
        db.flush().unwrap();
    }
    let (code, line) = serve(dir.path());
    assert_eq!(code, Some(1));
    assert!(line.contains("corrupt format marker"), "{line}");

    // A valid store whose token record was damaged on disk.
    let dir = tempfile::tempdir().unwrap();
    let (code, _) = {
        // First start initialises it (and bootstraps the operator).
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .spawn()
            .unwrap();
        for _ in 0..200 {
            if dir.path().join("operator.token").exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        sigterm(child.id());
        let status = child.wait().unwrap();
        (status.code(), ())
    };
    assert_eq!(code, Some(0));
    {
        let db = sled::open(dir.path().join("db")).unwrap();
        let tree = db.open_tree("tokend").unwrap();
        let key = tree.scan_prefix("t/").next().unwrap().unwrap().0;
        tree.insert(key, "{not json").unwrap();
        db.flush().unwrap();
    }
    let (code, line) = serve(dir.path());
    assert_eq!(code, Some(1));
    assert!(line.contains("corrupt token"), "{line}");
}

fn sigterm(pid: u32) {
    let ok = Command::new("kill")
        .arg("-15")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}
