//! Offline compaction of a sled data dir (`tokend compact`), for the space
//! sled does not give back on its own.
//!
//! Why it exists: sled 0.34 writes every change to a new place in its file
//! and reuses the old space for later writes, but never shrinks the file.
//! A store that once held a million tokens keeps that size after they are
//! deleted and their tombstones shrunk (BENCHMARKS.md, "Scale"). Copying
//! every record, in key order, into a fresh sled lays them out densely;
//! this is what `etcdutl defrag` does for a stopped etcd.
//!
//! Owns `db.compacting/` beside `db/`: the copy is written there, checked
//! (same trees, same records: sled's checksum of both must match), flushed
//! and fsynced, then the two names are swapped in one atomic
//! `renameat2(RENAME_EXCHANGE)`, and the old copy, now under
//! `db.compacting/`, is removed. So `db/` is a whole store at every instant
//! of a crash, and whatever is left under `db.compacting/` is never needed:
//! [`discard_unfinished`] removes it when the store next opens. The
//! write-ahead log (`wal/`) is not touched: the copy holds sled's revision
//! counter, so the log's uncheckpointed tail replays onto it as it would
//! have onto the original.
//!
//! It must never run beside a server: the old store stays open (sled's
//! exclusive lock on its file) from before the copy until after the swap,
//! so a `tokend serve` on the same data dir is refused, and this refuses
//! one that is serving. (A starting server lets go of sled's lock for a
//! moment, to reopen it once its state is read: a compaction that takes it
//! then makes that server fail to start, or leaves it the same records.)

use std::path::Path;
use std::time::{Duration, Instant};

use super::files::SledFiles;
use super::layout::K_FORMAT;
use super::{SledStore, corrupt, format, io_error};
use crate::error::Error;

/// The copy's directory, beside `db/`.
const COMPACTING: &str = "db.compacting";
/// Records per sled batch while copying: large enough that the copy is not
/// one call per record, small enough to hold little memory.
const BATCH: usize = 10_000;

/// What a compaction did.
#[derive(Debug)]
pub struct Compacted {
    pub records: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub took: Duration,
}

impl SledStore {
    /// Compacts the sled store of `data_dir` (a stopped server's). Returns
    /// once the compacted store is in place under `db/` and durable.
    pub fn compact(data_dir: &Path) -> Result<Compacted, Error> {
        compact(data_dir)
    }
}

fn compact(data_dir: &Path) -> Result<Compacted, Error> {
    let started = Instant::now();
    let db_dir = data_dir.join("db");
    if !db_dir.join("db").exists() {
        return Err(Error::invalid(
            "data-dir",
            format!("{} holds no tokend store", data_dir.display()),
        ));
    }
    // Before sled opens it: an open allocates a new log segment (half a
    // megabyte), which a figure taken after would count as space the
    // compaction gave back.
    let bytes_before = dir_bytes(&db_dir);
    let old = open(&db_dir).map_err(|e| {
        let hint = if super::open::is_locked(&e) {
            " (is a tokend serving it? compact a stopped server's data dir)"
        } else {
            ""
        };
        io_error(&format!("opening {}{hint}", db_dir.display()), e)
    })?;
    let tree = old
        .open_tree("tokend")
        .map_err(|e| io_error("opening the tree", e))?;
    match tree.get(K_FORMAT).map_err(|e| io_error("reading", e))? {
        Some(f) if f.as_ref() == format::CURRENT => {}
        Some(f) => {
            return Err(Error::invalid(
                "data-dir",
                format!(
                    "{} is in format {:?}: start this tokend on it once (it migrates the format), stop it, then compact",
                    data_dir.display(),
                    String::from_utf8_lossy(&f)
                ),
            ));
        }
        None => return Err(corrupt("store", "records without a format marker")),
    }
    drop(tree);

    let copy_dir = data_dir.join(COMPACTING);
    remove_if_present(&copy_dir)?;
    let (new, records) = match copy_into(&old, &copy_dir) {
        Ok(copied) => copied,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&copy_dir);
            return Err(e);
        }
    };
    fail::fail_point!("compact-copied", |_| std::process::abort());
    // The swap, while both stores are open, so that sled's lock (on each
    // store's file, whatever its name) keeps a server off both until the
    // end: from here `db/` is the copy, and a crash leaves the original
    // under `db.compacting/`.
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        &db_dir,
        rustix::fs::CWD,
        &copy_dir,
        rustix::fs::RenameFlags::EXCHANGE,
    )
    .map_err(|e| {
        let _ = std::fs::remove_dir_all(&copy_dir);
        io_error(
            &format!("swapping {} with its compacted copy", db_dir.display()),
            std::io::Error::from(e),
        )
    })?;
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(&format!("syncing {}", data_dir.display()), e))?;
    fail::fail_point!("compact-swapped", |_| std::process::abort());
    drop(old);
    remove_if_present(&copy_dir)?;
    drop(new);
    Ok(Compacted {
        records,
        bytes_before,
        bytes_after: dir_bytes(&db_dir),
        took: started.elapsed(),
    })
}

/// Removes what an interrupted compaction left: called by the store's open
/// once it holds sled's lock on `db/` (so no compaction is running).
pub(super) fn discard_unfinished(data_dir: &Path) -> Result<(), Error> {
    let copy_dir = data_dir.join(COMPACTING);
    if copy_dir.exists() {
        remove_if_present(&copy_dir)?;
        tracing::info!(dir = %copy_dir.display(), "what an interrupted compaction left was removed");
    }
    Ok(())
}

fn open(dir: &Path) -> sled::Result<sled::Db> {
    super::open::open_config(
        sled::Config::new()
            .path(dir)
            // As the server's: sled's default cache is 1 GiB, and two are open.
            .cache_capacity(super::open::CACHE_BYTES)
            .flush_every_ms(None),
    )
}

/// Copies every tree of `old` into a new sled at `dir`, checks it, and
/// makes it durable. The copy, still open, and the number of records.
fn copy_into(old: &sled::Db, dir: &Path) -> Result<(sled::Db, u64), Error> {
    let failed = |e: sled::Error| io_error(&format!("writing {}", dir.display()), e);
    let new = open(dir).map_err(failed)?;
    let mut records = 0u64;
    for name in old.tree_names() {
        let from = old
            .open_tree(&name)
            .map_err(|e| io_error("reading the store", e))?;
        let to = new.open_tree(&name).map_err(failed)?;
        let mut batch = sled::Batch::default();
        let mut in_batch = 0u64;
        for kv in from.iter() {
            let (k, v) = kv.map_err(|e| io_error("reading the store", e))?;
            batch.insert(k, v);
            in_batch += 1;
            if in_batch == BATCH as u64 {
                to.apply_batch(std::mem::take(&mut batch)).map_err(failed)?;
                records += in_batch;
                in_batch = 0;
            }
        }
        to.apply_batch(batch).map_err(failed)?;
        records += in_batch;
    }
    let before = old
        .checksum()
        .map_err(|e| io_error("reading the store", e))?;
    let after = new.checksum().map_err(failed)?;
    if before != after {
        return Err(Error::Internal(format!(
            "the compacted copy differs from the store (checksum {after:08x}, not {before:08x}); nothing was replaced"
        )));
    }
    new.flush().map_err(failed)?;
    // What sled's flush leaves out (`sled/files.rs`: its file's data and
    // its blob files, which a copy's pages of packed tombstones fill), and
    // the names it created.
    let syncing = |e| io_error(&format!("syncing {}", dir.display()), e);
    SledFiles::open(dir)
        .and_then(|f| f.sync())
        .map_err(syncing)?;
    for path in [dir.join("conf"), dir.to_path_buf()] {
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_error(&format!("syncing {}", path.display()), e))?;
    }
    Ok((new, records))
}

fn remove_if_present(dir: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io_error(&format!("removing {}", dir.display()), e))
        }
        _ => Ok(()),
    }
}

/// Bytes allocated on disk to the files in `dir`, `blobs/` included:
/// sled writes a large node there, a file each (nodes of packed
/// tombstones: 160–440 KB, half of a compacted store with a million).
fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.path(), e.metadata().ok()?)))
        .map(|(path, m)| {
            if m.is_dir() {
                dir_bytes(&path)
            } else {
                m.blocks() * 512
            }
        })
        .sum()
}
