//! Where the sled store keeps tombstones: recent ones whole, one key each
//! (`d/<TKN-id>`), old ones shrunk and packed by number range
//! (`p/<u32 BE first number>`).
//!
//! Why packs: sled spends a few hundred bytes of its own on every key, on
//! disk and in memory, whatever the value's size, and rewrites a page of
//! small values several times as it fills it. A million shrunk tombstones
//! of about a hundred bytes each, one key apiece, took 476 bytes of disk
//! each even after `tokend compact` (BENCHMARKS.md, "Scale"). So a pack
//! holds the old tombstones of a range of numbers, from its key's number up
//! to the next pack's, and splits when its entries pass [`pack_format::MAX_PACK_BYTES`]:
//! a pack holds a few hundred tombstones whatever the density of ids, and
//! stays far below the 128 KiB over which sled writes a value to a file of
//! its own (which its flush does not fsync). The shrinker's passes walk the
//! recent `d/` keys only, not every tombstone ever made.
//!
//! What a pack's value holds, and its checks, are `tombstones/pack_format.rs`'s.
//!
//! Owns reading a tombstone by id (its `d/` key first, then its pack),
//! listing them in id order (the `d/` keys and the packs merged), and
//! packing (the shrinker's write: old `d/` tombstones go into their packs
//! and leave `d/` in the same atomic sled batch, so a tombstone is always
//! in one place or the other, briefly in both, never in neither). It must
//! never write a live token, the issued ids or the log. Only the shrinker
//! packs; listing holds the store's `packing` lock for reading, packing
//! for writing, so that a list does not miss a tombstone moving between
//! the two places behind its cursors.

use std::collections::BTreeMap;

use super::io_error;
use super::layout::{
    decode_tombstone, set_tombstone_counts, shrunk_in_place, tombstone_id, tombstone_key,
    tombstone_range,
};
use crate::domain::{AccountId, Token, TokenId};
use crate::error::Error;
use crate::state::TOKEN_ID_SPACE;

use self::pack_format::{
    Entries, P_PACK, corrupt_pack, decode_entry, entries, pack_first, pack_key, pack_range_end,
    split, unpack,
};

mod pack_format;

/// The pack number `n` belongs in: the one with the greatest first number
/// not above `n`.
fn pack_of(tree: &sled::Tree, n: u32) -> sled::Result<Option<(sled::IVec, sled::IVec)>> {
    Ok(tree
        .get_lt(pack_key(n.saturating_add(1)))?
        .filter(|(k, _)| k.starts_with(P_PACK)))
}

/// Tombstone `id`: whole or shrunk under `d/`, else from its pack.
pub(super) fn get(tree: &sled::Tree, id: &TokenId) -> Result<Option<Token>, Error> {
    let failed = |e| io_error("reading a tombstone", e);
    // `d/` first: a packing moves a tombstone from there into its pack in
    // one batch, so a miss here means the pack has it (or nothing does).
    if let Some(v) = tree.get(tombstone_key(id)).map_err(failed)? {
        return decode_tombstone(id, &v).map(Some);
    }
    let Some((key, pack)) = pack_of(tree, id.number()).map_err(failed)? else {
        return Ok(None);
    };
    let raw = unpack(&pack)?;
    let entries = entries(&key, &raw)?;
    match entries.binary_search_by_key(&id.number(), |&(n, _)| n) {
        Ok(i) => decode_entry(entries[i].0, entries[i].1).map(Some),
        Err(_) => Ok(None),
    }
}

/// Tombstones in id order after `after`, of `account` or all, at most
/// `max`: the `d/` keys and the packs' entries merged (a tombstone in both,
/// during its packing or after a replay wrote it whole again, counts once,
/// as `d/` has it).
pub(super) fn list(
    tree: &sled::Tree,
    account: Option<&AccountId>,
    after: Option<&TokenId>,
    max: usize,
) -> Result<Vec<Token>, Error> {
    let failed = |e| io_error("reading tombstones", e);
    let after_number = after.map(TokenId::number);
    let (start, end) = tombstone_range();
    let start = match after {
        Some(id) => [&tombstone_key(id)[..], &[0]].concat(),
        None => start,
    };
    let mut whole = tree.range(start..end).peekable();
    // From the pack that holds the number after `after`.
    let packs_from = match after_number {
        Some(n) => pack_of(tree, n.saturating_add(1))
            .map_err(failed)?
            .map_or_else(|| P_PACK.to_vec(), |(k, _)| k.to_vec()),
        None => P_PACK.to_vec(),
    };
    let mut packs = tree.range(packs_from..pack_range_end());
    // The current pack's entries after `after`, decoded lazily; across
    // packs, numbers must keep increasing (packs never overlap).
    let mut packed: std::vec::IntoIter<(u32, Vec<u8>)> = Vec::new().into_iter();
    let mut last_packed: Option<u32> = None;
    let mut next_packed = || -> Result<Option<(u32, Vec<u8>)>, Error> {
        loop {
            if let Some(e) = packed.next() {
                if last_packed.is_some_and(|l| l >= e.0) {
                    return Err(corrupt_pack("packs overlap"));
                }
                last_packed = Some(e.0);
                return Ok(Some(e));
            }
            let Some((k, v)) = packs.next().transpose().map_err(failed)? else {
                return Ok(None);
            };
            packed = entries(&k, &unpack(&v)?)?
                .into_iter()
                .filter(|&(n, _)| after_number.is_none_or(|a| n > a))
                .map(|(n, r)| (n, r.to_vec()))
                .collect::<Vec<_>>()
                .into_iter();
        }
    };
    let mut pending = next_packed()?;
    let mut out = Vec::new();
    while out.len() < max {
        let whole_number = match whole.peek() {
            Some(Ok((k, _))) => Some(tombstone_id(k)?.number()),
            Some(Err(_)) => {
                let e = whole.next().expect("peeked").expect_err("peeked an error");
                return Err(failed(e));
            }
            None => None,
        };
        let from_pack = match (whole_number, &pending) {
            (None, None) => break,
            (None, Some(_)) => true,
            (Some(w), Some((p, _))) => *p < w,
            (Some(_), None) => false,
        };
        let t = if from_pack {
            let (n, r) = pending.take().expect("matched");
            pending = next_packed()?;
            decode_entry(n, &r)?
        } else {
            // The same number in a pack too: `d/` has the whole one.
            if pending.as_ref().map(|(p, _)| *p) == whole_number {
                pending = next_packed()?;
            }
            let (k, v) = whole.next().expect("peeked").map_err(failed)?;
            decode_tombstone(&tombstone_id(&k)?, &v)?
        };
        if account.is_none_or(|a| *a == t.account_id) {
            out.push(t);
        }
    }
    Ok(out)
}

/// Counts every tombstone, by account, and writes the counts as of
/// `revision` (the store's): for a data dir of a format that did not count
/// them. Returns how many it counted.
pub(super) fn count_all(tree: &sled::Tree, revision: u64) -> Result<u64, Error> {
    const PAGE: usize = 10_000;
    let mut counts = BTreeMap::new();
    let (mut after, mut total) = (None, 0);
    loop {
        let page = list(tree, None, after.as_ref(), PAGE)?;
        for t in &page {
            *counts.entry(t.account_id.clone()).or_default() += 1;
        }
        total += page.len() as u64;
        match page.last() {
            Some(t) if page.len() == PAGE => after = Some(t.id.clone()),
            _ => break,
        }
    }
    set_tombstone_counts(tree, &counts, revision)
        .map_err(|e| io_error("counting tombstones", e))?;
    Ok(total)
}

/// An old tombstone on its way into its pack.
pub(super) struct Old {
    pub id: TokenId,
    /// Its shrunk record (`store/record/shrunk.rs`).
    pub shrunk: Vec<u8>,
    /// Whether `d/` holds it shrunk in place already (format 4, or one a
    /// pack could not take): then it is not written again unless packed.
    pub in_place: bool,
}

/// Where tombstone number `n` is packed.
struct Target {
    /// The pack found for it: the one holding `n`, or, below every pack,
    /// the first one, to be moved down to start at `n`.
    key: Option<sled::IVec>,
    /// The numbers the pack covers then: `first..until`.
    first: u32,
    until: u32,
    /// `None` when the pack (its key, its value, or the next pack's key)
    /// does not read: it is left as it is, since rewriting it would lose
    /// its tombstones, and the error shows wherever it is read.
    entries: Option<Entries>,
}

fn target(tree: &sled::Tree, n: u32) -> Result<Target, Error> {
    let failed = |e| io_error("packing old tombstones", e);
    let found = match pack_of(tree, n).map_err(failed)? {
        Some(found) => Some(found),
        None => tree
            .get_gt(P_PACK)
            .map_err(failed)?
            .filter(|(k, _)| k.starts_with(P_PACK)),
    };
    let Some((key, value)) = found else {
        return Ok(Target {
            key: None,
            first: n,
            until: TOKEN_ID_SPACE,
            entries: Some(Entries::new()),
        });
    };
    let found_first = pack_first(&key);
    let next = match &found_first {
        Ok(f) => tree
            .get_gt(pack_key(*f))
            .map_err(failed)?
            .filter(|(k, _)| k.starts_with(P_PACK)),
        Err(_) => None,
    };
    let read = found_first.and_then(|f| {
        let until = next.map_or(Ok(TOKEN_ID_SPACE), |(k, _)| pack_first(&k))?;
        let es: Entries = entries(&key, &unpack(&value)?)?
            .into_iter()
            .map(|(n, r)| (n, r.to_vec()))
            .collect();
        Ok((f.min(n), until, es))
    });
    Ok(match read {
        Ok((first, until, es)) => Target {
            key: Some(key),
            first,
            until,
            entries: Some(es),
        },
        // For this tombstone alone: the rest of the slice goes on.
        Err(e) => {
            tracing::warn!(error = %e, "a tombstone pack that does not read is left as it is");
            Target {
                key: Some(key),
                first: n,
                until: n.saturating_add(1),
                entries: None,
            }
        }
    })
}

/// Moves `old` tombstones into their packs: one atomic sled batch per pack
/// they land in, which writes the pack with them (split in two, or more,
/// once past [`MAX_PACK_BYTES`]) and removes their `d/` keys. One whose
/// pack does not read, or whose record is too long for a pack, is shrunk
/// in place under `d/` instead. Returns how many were packed or shrunk.
pub(super) fn pack(tree: &sled::Tree, mut old: Vec<Old>) -> Result<u64, Error> {
    old.sort_by_key(|o| o.id.number());
    let mut done = 0;
    let mut old = old.into_iter().peekable();
    while let Some(o) = old.next() {
        let Target {
            key,
            first,
            until,
            mut entries,
        } = target(tree, o.id.number())?;
        // This tombstone, and the next ones of the same pack.
        let mut group = vec![o];
        while let Some(next) = old.next_if(|next| next.id.number() < until) {
            group.push(next);
        }
        let mut batch = sled::Batch::default();
        let mut packed = false;
        for o in group {
            match entries.as_mut() {
                Some(m) if o.shrunk.len() <= u16::MAX as usize => {
                    m.insert(o.id.number(), o.shrunk);
                    batch.remove(tombstone_key(&o.id));
                    packed = true;
                }
                _ if o.in_place => continue,
                _ => batch.insert(tombstone_key(&o.id), shrunk_in_place(&o.shrunk)),
            }
            done += 1;
        }
        if let (true, Some(m)) = (packed, entries) {
            // Moved down: the old key goes, in the same batch.
            if let Some(k) = key.filter(|k| pack_first(k).is_ok_and(|f| f != first)) {
                batch.remove(k);
            }
            for (piece_first, piece) in split(first, &m) {
                batch.insert(pack_key(piece_first), piece);
            }
        }
        tree.apply_batch(batch)
            .map_err(|e| io_error("packing old tombstones", e))?;
    }
    Ok(done)
}

#[cfg(test)]
mod tests;
