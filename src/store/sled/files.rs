//! What sled's own flush leaves out of the disk, synced: its file's data,
//! the files it keeps large pages in, and their names.
//!
//! sled 0.34's flush ends in sync_file_range of its file (`db/db`), which
//! flushes neither the drive's write cache nor the file's size. And it
//! writes a page (or a value) of over a quarter of its 512 KiB segment to
//! a file of its own, `db/blobs/<log sequence number>`, and syncs neither
//! that file nor its name: a page of packed tombstones does (160–440 KB),
//! and so does a page of event keys whose text LZ4 cannot shrink. A
//! checkpoint that deleted the log segments holding those commits after
//! sled's flush alone would lose them at a power cut, and sled could not
//! read the pages that pointed at them (tests/powercut.rs shows it).
//!
//! Owns those syncs ([`SledFiles::sync`]), run after each flush that the
//! log will no longer back: a checkpoint, a restore, a compaction's copy.
//! It must never write, rename or delete a file of sled's.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// sled's files in one `db/` directory.
pub(super) struct SledFiles {
    main: File,
    blobs: PathBuf,
    /// Blob files already synced: sled writes each once, under a new name,
    /// so a name synced once needs no sync again.
    synced: Mutex<HashSet<OsString>>,
}

impl SledFiles {
    /// sled's files in `db_dir` (which sled has opened: it exists).
    pub(super) fn open(db_dir: &Path) -> io::Result<SledFiles> {
        Ok(SledFiles {
            main: File::open(db_dir.join("db"))?,
            blobs: db_dir.join("blobs"),
            synced: Mutex::new(HashSet::new()),
        })
    }

    /// Makes what sled's last flush wrote durable: its file's data, then
    /// every blob file not synced before and, when there was one, the
    /// directory that names them.
    pub(super) fn sync(&self) -> io::Result<()> {
        self.main.sync_data()?;
        let mut synced = self.synced.lock().expect("blob names lock");
        let mut present = HashSet::new();
        let mut new = false;
        let entries = match std::fs::read_dir(&self.blobs) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            other => other?,
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                match File::open(entry.path()) {
                    Ok(f) => f.sync_data()?,
                    // Collected by sled since the listing: nothing to keep.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                new = true;
            }
            present.insert(name);
        }
        if new {
            File::open(&self.blobs)?.sync_all()?;
        }
        // Forget the names sled has collected since.
        *synced = present;
        Ok(())
    }
}
