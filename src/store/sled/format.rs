//! The data dir's format marker (`m/format`): a new data dir marked, this
//! format's opened as it is, an older one's brought to this layout
//! (`sled/layout.rs`) at open.
//!
//! Version 1 had no log: sled holds everything. Version 2 kept one key per
//! event (the event log reads those and writes one per commit) and a
//! separate secret index (folded into the token records here). Version 3
//! kept tombstones among the live tokens (moved apart here, and every
//! issued number marked). Version 4 shrank old tombstones in place (read as
//! they are, and packed by the shrinker's next pass). Version 5 did not
//! compress its packs (read as they are, and compressed when next
//! rewritten). Before version 7, tombstones were not counted by account:
//! counted once the log is replayed ([`finish`]), since a killed tokend can
//! leave sled holding tombstones past its revision counter, which the
//! replay would count again. Before version 8, a commit's events were not
//! compressed (read as they are). Before version 9, the log's records were
//! not compressed (read as they are, `sled/wal.rs`).
//!
//! Owns the marker and every step that rewrites an older format. Each step
//! must be safe to run again after a crash half-way, and the new marker is
//! written last, once every step and the replay are done: it keeps an
//! older tokend, which would not know this layout, from opening the data
//! dir. It must never run once anything is served, and never open a
//! format it does not know.

use super::layout::{
    self, K_FORMAT, K_PAGE_KEY, K_REVISION, P_TOKEN, P_TOMBSTONE, decode_token_value, token_key,
    token_value, tombstone_id, tombstone_key, write_issued,
};
use super::{corrupt, io_error, tombstones};
use crate::domain::TokenId;
use crate::error::Error;
use crate::secret::SecretHash;
use crate::store::record::{self, TokenRecord};

/// The storage format's version, as the sled store records it in
/// `m/format`: version 1 is every shape in `store/record.rs`; version 2
/// keeps them and adds the write-ahead log beside sled (`sled/wal.rs`), which a
/// version-1 tokend would not replay, so it must refuse such a data dir;
/// version 3 keeps a commit's events under one key and a live token's
/// secret hash in its record (`sled/layout.rs`), which a version-2 tokend
/// would misread; version 4 keeps tombstones apart from live tokens, old
/// ones shrunk (`store/record/shrunk.rs`), and the issued token
/// numbers as bits, which a version-3 tokend would not read; version 5 moves old tombstones
/// into packs (`sled/tombstones.rs`), which a version-4 tokend would not
/// see; version 6 compresses those packs, which a version-5 tokend would
/// not read; version 7 counts each account's tombstones (`c/`), which a
/// version-6 tokend would not keep counting; version 8 compresses each
/// commit's retained events (`sled/events.rs`), which a version-7 tokend
/// would not read; version 9 compresses the log's records (`sled/wal.rs`),
/// which a version-8 tokend would not replay. Every migration from before
/// version 7 counts them.
/// The etcd keyspace keeps no marker; its records are version 1.
pub(super) const CURRENT: &[u8] = b"tokend-sled-9";
/// Opened and migrated to [`CURRENT`] by writing the new marker (its log's
/// uncompressed records replay as they are).
const V8: &[u8] = b"tokend-sled-8";
/// Likewise (and its uncompressed event keys read as they are, until
/// retention drops them).
const V7: &[u8] = b"tokend-sled-7";
/// Opened and migrated to [`CURRENT`] by counting its tombstones.
const V6: &[u8] = b"tokend-sled-6";
/// Likewise (its packs are compressed as the shrinker next rewrites them).
const V5: &[u8] = b"tokend-sled-5";
/// Opened and migrated to [`CURRENT`] by writing the new marker (its
/// old tombstones are packed by the next pass of the shrinker).
const V4: &[u8] = b"tokend-sled-4";
/// Opened and migrated to [`CURRENT`] by moving its tombstones.
const V3: &[u8] = b"tokend-sled-3";
/// Opened and migrated to [`CURRENT`] by writing the new marker.
const V1: &[u8] = b"tokend-sled-1";
/// Likewise: its one-event keys read as commits of one event.
const V2: &[u8] = b"tokend-sled-2";

/// Formats 1 and 2's secret index.
const P_SECRET: &[u8] = b"s/";

/// Reads the marker of the data dir sled holds: marks a new one, and
/// rewrites what an older one keeps differently, before anything else
/// reads it. Returns the older format, whose migration [`finish`] ends once
/// the log is replayed.
pub(super) fn check(db: &sled::Db, tree: &sled::Tree) -> Result<Option<sled::IVec>, Error> {
    match tree.get(K_FORMAT).map_err(|e| io_error("reading", e))? {
        Some(f) if f.as_ref() == CURRENT => Ok(None),
        Some(f) if [V1, V2, V3, V4, V5, V6, V7, V8].contains(&f.as_ref()) => {
            if [V1, V2].contains(&f.as_ref()) {
                let folded = fold_secrets(tree)?;
                tracing::info!(folded, "secret index folded into the token records");
            }
            if [V1, V2, V3].contains(&f.as_ref()) {
                let moved = split_tombstones(tree)?;
                tracing::info!(moved, "tombstones moved apart from the live tokens");
            }
            Ok(Some(f))
        }
        Some(f) => Err(corrupt("format marker", String::from_utf8_lossy(&f))),
        None if tree.is_empty() => {
            let mut page_key = [0u8; 32];
            getrandom::fill(&mut page_key).map_err(|e| Error::Internal(e.to_string()))?;
            let mut b = sled::Batch::default();
            b.insert(K_FORMAT, CURRENT);
            b.insert(K_PAGE_KEY, &page_key[..]);
            b.insert(K_REVISION, &0u64.to_be_bytes()[..]);
            tree.apply_batch(b)
                .map_err(|e| io_error("initialising", e))?;
            db.flush().map_err(|e| io_error("initialising", e))?;
            Ok(None)
        }
        None => Err(corrupt("store", "records without a format marker")),
    }
}

/// Ends the migration from format `from`, once the log is replayed: counts
/// the tombstones (unless `from` counted them already), then writes the new
/// marker and flushes.
pub(super) fn finish(db: &sled::Db, tree: &sled::Tree, from: &[u8]) -> Result<(), Error> {
    let counted = if [V7, V8].contains(&from) {
        0
    } else {
        tombstones::count_all(tree, layout::revision(tree)?)?
    };
    tree.insert(K_FORMAT, CURRENT)
        .map_err(|e| io_error("migrating the format marker", e))?;
    db.flush()
        .map_err(|e| io_error("migrating the format marker", e))?;
    tracing::info!(
        from = %String::from_utf8_lossy(from),
        counted,
        "data dir migrated to format 9 (tombstones counted by account; old ones' packs compressed as the shrinker rewrites them; new commits' events and log records compressed)"
    );
    Ok(())
}

/// Moves format 3's tombstones from `t/` to `d/` and marks every token
/// number in `u/`: what format 4 keeps apart. Run at open, before anything
/// else reads; each step can run again after a crash half-way.
fn split_tombstones(tree: &sled::Tree) -> Result<usize, Error> {
    let failed = |e: sled::Error| io_error("moving tombstones out of the live records", e);
    let mut moved = 0;
    let mut issued = Vec::new();
    for item in tree.scan_prefix(P_TOKEN) {
        let (k, v) = item.map_err(failed)?;
        // By the record's status, not the hash's tag: a live record whose
        // hash a format-2 log left out of it is still live.
        let (t, _) = decode_token_value(&v)?;
        issued.push(t.id.number());
        if t.is_deleted() {
            tree.insert(tombstone_key(&t.id), v).map_err(failed)?;
            tree.remove(&k).map_err(failed)?;
            moved += 1;
        }
    }
    for item in tree.scan_prefix(P_TOMBSTONE).keys() {
        issued.push(tombstone_id(&item.map_err(failed)?)?.number());
    }
    write_issued(tree, issued).map_err(failed)?;
    Ok(moved)
}

/// The secret hash token `id` holds in sled now, for a logged change that
/// kept it (only a log written by format 2 has such a change of a live
/// token; format 3 logs its hash).
pub(super) fn stored_secret(tree: &sled::Tree, id: &TokenId) -> Result<Option<SecretHash>, Error> {
    match tree
        .get(token_key(id))
        .map_err(|e| io_error("reading", e))?
    {
        Some(v) => Ok(decode_token_value(&v)?.1),
        None => Ok(None),
    }
}

/// Folds a format-1 or -2 secret index into the token records: each
/// `s/<hash>` goes into its token's `t/` value, then is removed. Run at
/// open, before anything else reads; a crash half-way leaves some keys to
/// fold again next time, and folding one twice changes nothing.
fn fold_secrets(tree: &sled::Tree) -> Result<usize, Error> {
    let failed = |e: sled::Error| io_error("folding the secret index", e);
    let mut folded = 0;
    for item in tree.scan_prefix(P_SECRET) {
        let (k, v) = item.map_err(failed)?;
        let hash: SecretHash = k[P_SECRET.len()..]
            .try_into()
            .map_err(|_| corrupt("secret index", "bad hash length"))?;
        let id =
            TokenId::parse(&String::from_utf8_lossy(&v)).map_err(|e| corrupt("secret index", e))?;
        let stored = tree
            .get(token_key(&id))
            .map_err(failed)?
            .ok_or_else(|| corrupt("secret index", format!("{id} has no record")))?;
        let (token, _) = decode_token_value(&stored)?;
        tree.insert(
            token_key(&id),
            token_value(record::encode::<TokenRecord>(&token), Some(&hash)),
        )
        .map_err(failed)?;
        tree.remove(&k).map_err(failed)?;
        folded += 1;
    }
    Ok(folded)
}
