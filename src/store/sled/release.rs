//! sled's lock on its data dir, as the next opener in this process sees it.
//!
//! sled 0.34 locks its file, `db/db`, at open (`flock`) and lets go when the
//! last handle on that file closes, which is not when the last `Db` is
//! dropped: a log write or a segment truncation already handed to sled's
//! I/O threads keeps a handle until it ends. On a loaded 2-core machine
//! that was 0.2–5 ms after the drop in 8 of 120 server stops, long enough
//! for a server restarted in the same process (the tests', an embedder's)
//! to be refused the lock as if another process held it (CI saw it once,
//! in `tests/server.rs`).
//!
//! Owns waiting that moment out, so that a closed store is one whose data
//! dir can be opened again. It must never hold the lock longer than one
//! probe, nor wait without a bound: a lock that stays is someone else's.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a release is waited for: sled's I/O ends in milliseconds, so
/// a lock held past this belongs to another handle.
pub(super) const RELEASE_WAIT: Duration = Duration::from_secs(2);

/// Waits until nothing holds sled's lock on `db_dir/db`, for at most
/// `within`; whether it is free. A missing file holds no lock.
pub(super) fn wait_released(db_dir: &Path, within: Duration) -> bool {
    let Ok(file) = File::open(db_dir.join("db")) else {
        return true;
    };
    let deadline = Instant::now() + within;
    loop {
        match file.try_lock() {
            // The probe's own lock ends as `file` closes, on return.
            Ok(()) => return true,
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return false,
        }
    }
}

/// The last field of the store's shared state: dropped after its sled
/// handles (fields drop in declaration order), it waits for sled's own
/// threads to let the lock go before the drop returns.
pub(super) struct Released(pub(super) PathBuf);

impl Drop for Released {
    fn drop(&mut self) {
        if !wait_released(&self.0, RELEASE_WAIT) {
            tracing::warn!(
                dir = %self.0.display(),
                "sled's lock on the data dir is still held after the store closed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_is_waited_for_until_its_holder_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let held = File::create(dir.path().join("db")).unwrap();
        held.lock().unwrap();
        assert!(!wait_released(dir.path(), Duration::from_millis(20)));
        let holder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(held);
        });
        assert!(wait_released(dir.path(), RELEASE_WAIT));
        holder.join().unwrap();
        // The probe left nothing locked behind it.
        File::open(dir.path().join("db"))
            .unwrap()
            .try_lock()
            .unwrap();
    }

    #[test]
    fn no_file_holds_no_lock() {
        let dir = tempfile::tempdir().unwrap();
        assert!(wait_released(dir.path(), Duration::ZERO));
    }
}
