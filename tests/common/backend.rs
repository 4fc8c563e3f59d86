//! Which backend the suite runs on: sled in each server's data dir, or, with
//! `TOKEND_TEST_ETCD=host:port,…` (scripts/test.sh's second pass), the etcd
//! cluster named there; how a test that depends on the difference says so;
//! and what a sled test reads of the data dir's files.

use std::path::{Path, PathBuf};

/// The etcd cluster the suite runs on (`TOKEND_TEST_ETCD`), if any.
pub fn test_etcd() -> Option<String> {
    std::env::var("TOKEND_TEST_ETCD")
        .ok()
        .filter(|s| !s.is_empty())
}

/// `--store` for a server on data dir `dir`: None for sled; on the test etcd
/// cluster, a prefix named after the dir, so a restart on it finds the same
/// records.
pub fn store_for(dir: &Path) -> Option<String> {
    let hosts = test_etcd()?;
    let name: String = dir
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    Some(format!("etcd://{hosts}/{}", name.trim_matches('-')))
}

/// Asserts that `got` is the revision a stream owes after `prev`: the next
/// number on sled, whose one writer numbers events consecutively; a larger
/// one on etcd, whose revisions also count writes that are not events
/// (replica reports, access times, and every other tenant of the cluster).
pub fn assert_follows(prev: i64, got: i64, what: &str) {
    if test_etcd().is_some() {
        assert!(got > prev, "{what}: revision {got} after {prev}");
    } else {
        assert_eq!(got, prev + 1, "{what}");
    }
}

/// True, after saying why, when the suite runs on etcd and the calling test
/// is about what only the embedded store has: the caller returns.
pub fn sled_only(what: &str) -> bool {
    let skip = test_etcd().is_some();
    if skip {
        eprintln!("not on etcd: {what}");
    }
    skip
}

/// The files of data dir `dir`'s write-ahead log (segments, and any torn
/// tail kept aside) whose bytes hold `needle`. A segment deleted between
/// the listing and the read is gone, not an error.
pub fn log_files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for f in std::fs::read_dir(dir.join("wal")).unwrap() {
        let path = f.unwrap().path();
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        if bytes.windows(needle.len()).any(|w| w == needle) {
            found.push(path);
        }
    }
    found
}
