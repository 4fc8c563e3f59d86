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
/// tail kept aside) whose bytes hold `needle`, as written or in a record's
/// payload inflated (`src/store/sled/wal.rs` compresses most). A segment
/// deleted between the listing and the read is gone, not an error.
pub fn log_files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let holds = |bytes: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    let mut found = Vec::new();
    for f in std::fs::read_dir(dir.join("wal")).unwrap() {
        let path = f.unwrap().path();
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        if holds(&bytes) || log_payloads(&bytes).iter().any(|(_, p)| holds(p)) {
            found.push(path);
        }
    }
    found
}

/// The payloads of a log segment's records, `[u32 LE length][u32 LE
/// crc32][payload]` up to the first zero length, each inflated when
/// compressed (`Z`, its length, an LZ4 block), and whether it was. Stops at
/// the first record that does not check out (a torn tail): a caller
/// searching them searches the raw bytes too.
pub fn log_payloads(segment: &[u8]) -> Vec<(bool, Vec<u8>)> {
    let mut payloads = Vec::new();
    let mut at = 0;
    while let Some(header) = segment.get(at..at + 8) {
        let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().unwrap());
        let Some(payload) = segment.get(at + 8..at + 8 + len) else {
            break;
        };
        if len == 0 || crc32fast::hash(payload) != crc {
            break;
        }
        payloads.push(match payload.split_first() {
            Some((b'Z', framed)) => {
                let size = u32::from_le_bytes(framed[..4].try_into().unwrap()) as usize;
                (
                    true,
                    lz4_flex::block::decompress(&framed[4..], size).unwrap(),
                )
            }
            _ => (false, payload.to_vec()),
        });
        at += 8 + len;
    }
    payloads
}
