//! Restoring a snapshot into a new sled data dir (`tokend snapshot restore`).
//!
//! Owns writing a checked [`Snapshot`] as the layout of `layout.rs`: the
//! format marker, the revision counter (past the snapshot's, by
//! `RESTORE_GAP`: the next commit comes after any revision the original
//! store may have written since), the page key, every account and token
//! (tombstones included, and every token's number marked issued, so their
//! ids are never issued again; each live one with its secret's hash); no
//! events, so the restored log starts after its head. The store is built
//! in the target under a temporary name and renamed into place once
//! flushed and synced: a failure leaves no half-restored data dir.
//! It must never write into a directory that holds anything but a file
//! system's `lost+found`.

use std::path::Path;

use super::files::SledFiles;
use super::layout::{
    Accessed, K_FORMAT, K_PAGE_KEY, K_REVISION, Writes, account_key, set_tombstone_counts,
    write_issued, write_token,
};
use super::open::sync_names;
use super::{SledStore, format, io_error};
use crate::error::Error;
use crate::store::record::{self, AccountRecord, TokenRecord};
use crate::store::snapshot::Snapshot;

impl SledStore {
    /// Writes `snapshot` as a new data dir at `dir`, which must be missing or
    /// empty (but for a file system's own `lost+found`: a Kubernetes volume
    /// mounted as the data dir has one). Returns once it is on disk
    /// (flushed, fsynced, the names too).
    pub fn restore_into(dir: &Path, snapshot: &Snapshot) -> Result<(), Error> {
        let refuse = |m: String| Error::invalid("data-dir", m);
        let created = match std::fs::read_dir(dir) {
            Ok(entries) => {
                let mut held = Vec::new();
                for e in entries.filter_map(|e| e.ok()) {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with(STAGING) {
                        // What a restore killed half-way left: never a
                        // store (its `db` was not moved into place).
                        std::fs::remove_dir_all(e.path()).map_err(|err| {
                            io_error(&format!("removing {}", e.path().display()), err)
                        })?;
                    } else if !is_lost_and_found(&e) {
                        held.push(name);
                    }
                }
                if !held.is_empty() {
                    return Err(refuse(format!(
                        "{} is not empty (it holds {}): a snapshot is restored only into an \
                         empty data dir",
                        dir.display(),
                        named(held)
                    )));
                }
                false
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| io_error(&format!("creating {}", dir.display()), e))?;
                true
            }
            Err(e) => return Err(refuse(format!("cannot read {}: {e}", dir.display()))),
        };
        // Built inside the target, then moved into place with one rename:
        // the target may be the root of a file system (that volume), and a
        // rename cannot cross into it from its parent.
        let staging = dir.join(format!("{STAGING}{}", std::process::id()));
        let db = dir.join("db");
        let result = write_dir(&staging, snapshot).and_then(|()| {
            std::fs::rename(staging.join("db"), &db)
                .map_err(|e| io_error(&format!("moving the store into {}", dir.display()), e))?;
            let _ = std::fs::remove_dir(&staging);
            sync_names(dir, created).map_err(|e| {
                // Whole but perhaps not durable under its name: a later
                // serve must not take it for a finished restore.
                let _ = std::fs::remove_dir_all(&db);
                io_error(&format!("syncing {}", dir.display()), e)
            })
        });
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
            if created {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        result
    }
}

/// The name a restore builds the store under, inside the target, before
/// it moves `db` into place.
const STAGING: &str = ".restoring-";

/// A file system's own `lost+found` directory, which a data dir on the
/// root of one holds from the start and tokend never touches (its owner
/// is root: tokend may not even read it).
fn is_lost_and_found(entry: &std::fs::DirEntry) -> bool {
    entry.file_name() == "lost+found" && entry.file_type().is_ok_and(|t| t.is_dir())
}

/// The first few names, for a refusal.
fn named(mut names: Vec<String>) -> String {
    names.sort();
    let more = names.len().saturating_sub(3);
    names.truncate(3);
    let mut said = names.join(", ");
    if more > 0 {
        said.push_str(&format!(" and {more} more"));
    }
    said
}

fn write_dir(dir: &Path, s: &Snapshot) -> Result<(), Error> {
    let failed = |e: sled::Error| io_error("writing the restored store", e);
    std::fs::create_dir(dir).map_err(|e| io_error(&format!("creating {}", dir.display()), e))?;
    let db = sled::Config::new()
        .path(dir.join("db"))
        .flush_every_ms(None)
        .open()
        .map_err(failed)?;
    let tree = db.open_tree("tokend").map_err(failed)?;
    for a in &s.accounts {
        tree.insert(account_key(&a.id), record::encode::<AccountRecord>(a))
            .map_err(failed)?;
    }
    let secrets: std::collections::HashMap<_, _> =
        s.secrets.iter().map(|(h, id)| (id, h)).collect();
    for t in &s.tokens {
        let mut writes = Writes::default();
        // A new tree: no token has a last access in it.
        let secret = secrets.get(&t.id).copied();
        let encoded = record::encode::<TokenRecord>(t);
        write_token(&mut writes, t, encoded, secret, false, Accessed::Never);
        writes.apply(&tree).map_err(failed)?;
    }
    write_issued(&tree, s.tokens.iter().map(|t| t.id.number())).map_err(failed)?;
    let mut counts = std::collections::BTreeMap::new();
    for t in s.tokens.iter().filter(|t| t.is_deleted()) {
        *counts.entry(t.account_id.clone()).or_default() += 1;
    }
    set_tombstone_counts(&tree, &counts, s.revision).map_err(failed)?;
    tree.insert(K_PAGE_KEY, &s.page_key[..]).map_err(failed)?;
    tree.insert(K_REVISION, &s.restored_head().to_be_bytes()[..])
        .map_err(failed)?;
    // Last: a dir without the marker is refused at open, never taken as new.
    tree.insert(K_FORMAT, format::CURRENT).map_err(failed)?;
    db.flush().map_err(failed)?;
    drop(tree);
    drop(db);
    // What sled's flush leaves out (`sled/files.rs`); the names, once the
    // store is in place (`sync_names`).
    let db_dir = dir.join("db");
    SledFiles::open(&db_dir)
        .and_then(|f| f.sync())
        .map_err(|e| io_error(&format!("syncing {}", db_dir.display()), e))
}
