//! Where the sled store keeps tombstones: recent ones whole, one key each
//! (`d/<TKN-id>`), old ones shrunk and packed by number range
//! (`p/<u32 BE pack>`).
//!
//! Why packs: sled spends a few hundred bytes of its own on every key, on
//! disk and in memory, whatever the value's size. A million shrunk
//! tombstones of about a hundred bytes each, one key apiece, took 476 bytes
//! of disk each even after `tokend compact` (BENCHMARKS.md, "Scale"). A
//! pack holds every old tombstone whose number falls in one range of
//! [`PACK_SPAN`] numbers, so a million of them are a few thousand keys, and
//! the shrinker's passes walk the recent `d/` keys only, not every
//! tombstone ever made.
//!
//! A pack's value: `P`, then for each tombstone, in increasing number
//! order and each number once, `[u32 BE number][u16 BE length]` and its
//! [`ShrunkRecord`](crate::store::record::ShrunkRecord) (the number is the
//! id; the record is the rest).
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
use super::layout::{decode_tombstone, tombstone_id, tombstone_key, tombstone_range};
use crate::domain::{AccountId, Token, TokenId};
use crate::error::Error;
use crate::store::record;

/// Token numbers per pack: a million random ids over the 10^8 space put
/// about 160 in each (18 KB, inline in a sled page); ten million, about
/// 1,600.
pub(super) const PACK_SPAN: u32 = 1 << 14;
const P_PACK: &[u8] = b"p/";
/// Tags a pack's value.
const PACK: u8 = b'P';
/// An entry's number and length, before its record.
const ENTRY_HEADER: usize = 6;

fn pack_key(number: u32) -> Vec<u8> {
    [P_PACK, &(number / PACK_SPAN).to_be_bytes()[..]].concat()
}

fn corrupt_pack(why: impl std::fmt::Display) -> Error {
    super::corrupt("tombstone pack", why)
}

/// A pack's entries, checked: numbers increasing, lengths within the value.
fn entries(v: &[u8]) -> Result<Vec<(u32, &[u8])>, Error> {
    let Some((&PACK, mut rest)) = v.split_first() else {
        return Err(corrupt_pack("no pack tag"));
    };
    let mut out: Vec<(u32, &[u8])> = Vec::new();
    while !rest.is_empty() {
        if rest.len() < ENTRY_HEADER {
            return Err(corrupt_pack("a truncated entry"));
        }
        let number = u32::from_be_bytes(rest[..4].try_into().expect("four bytes"));
        let len = u16::from_be_bytes(rest[4..6].try_into().expect("two bytes")) as usize;
        let Some(record) = rest.get(ENTRY_HEADER..ENTRY_HEADER + len) else {
            return Err(corrupt_pack("an entry longer than the pack"));
        };
        if out.last().is_some_and(|&(last, _)| last >= number) {
            return Err(corrupt_pack("numbers out of order"));
        }
        out.push((number, record));
        rest = &rest[ENTRY_HEADER + len..];
    }
    Ok(out)
}

fn encode(entries: &BTreeMap<u32, Vec<u8>>) -> Vec<u8> {
    let size = entries
        .values()
        .map(|r| ENTRY_HEADER + r.len())
        .sum::<usize>();
    let mut v = Vec::with_capacity(1 + size);
    v.push(PACK);
    for (number, record) in entries {
        v.extend_from_slice(&number.to_be_bytes());
        v.extend_from_slice(&(record.len() as u16).to_be_bytes());
        v.extend_from_slice(record);
    }
    v
}

/// Tombstone `id` as a pack keeps it.
fn decode_entry(number: u32, record: &[u8]) -> Result<Token, Error> {
    record::decode_shrunk(&TokenId::from_number(number), record).map_err(corrupt_pack)
}

/// Tombstone `id`: whole or shrunk under `d/`, else from its pack.
pub(super) fn get(tree: &sled::Tree, id: &TokenId) -> Result<Option<Token>, Error> {
    let failed = |e| io_error("reading a tombstone", e);
    // `d/` first: a packing moves a tombstone from there into its pack in
    // one batch, so a miss here means the pack has it (or nothing does).
    if let Some(v) = tree.get(tombstone_key(id)).map_err(failed)? {
        return decode_tombstone(id, &v).map(Some);
    }
    let Some(pack) = tree.get(pack_key(id.number())).map_err(failed)? else {
        return Ok(None);
    };
    let entries = entries(&pack)?;
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
    let mut packs = tree
        .range(pack_key(after_number.map_or(0, |n| n.saturating_add(1)))..pack_range_end())
        .values();
    // The current pack's entries after `after`, decoded lazily.
    let mut packed: std::vec::IntoIter<(u32, Vec<u8>)> = Vec::new().into_iter();
    let mut next_packed = || -> Result<Option<(u32, Vec<u8>)>, Error> {
        loop {
            if let Some(e) = packed.next() {
                return Ok(Some(e));
            }
            let Some(v) = packs.next().transpose().map_err(failed)? else {
                return Ok(None);
            };
            packed = entries(&v)?
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

fn pack_range_end() -> Vec<u8> {
    let mut end = P_PACK.to_vec();
    *end.last_mut().expect("a prefix") += 1;
    end
}

/// Moves `old` tombstones (their `d/` key and shrunk record) into their
/// packs: one atomic batch per pack, which writes the pack with them and
/// removes their `d/` keys. Returns how many moved.
pub(super) fn pack(tree: &sled::Tree, old: Vec<(TokenId, Vec<u8>)>) -> sled::Result<u64> {
    let mut by_pack: BTreeMap<Vec<u8>, Vec<(TokenId, Vec<u8>)>> = BTreeMap::new();
    for (id, shrunk) in old {
        // A record a pack cannot hold stays whole under `d/`.
        if shrunk.len() <= u16::MAX as usize {
            by_pack
                .entry(pack_key(id.number()))
                .or_default()
                .push((id, shrunk));
        }
    }
    let mut moved = 0;
    for (key, tombstones) in by_pack {
        let mut merged: BTreeMap<u32, Vec<u8>> = match tree.get(&key)? {
            // A pack that does not read is not rewritten: its tombstones
            // would be lost. These stay under `d/`, and the error shows
            // wherever the pack is read.
            Some(v) => match entries(&v) {
                Ok(es) => es.into_iter().map(|(n, r)| (n, r.to_vec())).collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "a tombstone pack that does not read is left as it is");
                    continue;
                }
            },
            None => BTreeMap::new(),
        };
        let mut batch = sled::Batch::default();
        for (id, shrunk) in tombstones {
            merged.insert(id.number(), shrunk);
            batch.remove(tombstone_key(&id));
            moved += 1;
        }
        batch.insert(key, encode(&merged));
        tree.apply_batch(batch)?;
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Actor, AuditEntry};
    use std::time::{Duration, UNIX_EPOCH};

    fn tombstone(number: u32, account: &str) -> Token {
        let mut t = Token {
            id: TokenId::from_number(number),
            account_id: AccountId::parse(account).unwrap(),
            name: format!("t{number}"),
            description: "d".repeat(200),
            icon: None,
            status: crate::domain::TokenStatus::Deleted,
            modules: Default::default(),
            revision: 2,
            audit: Default::default(),
            last_access_time: None,
            expire_time: None,
            replaces: None,
            replaced_by: None,
        };
        let at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        t.audit.created = Some(AuditEntry {
            at,
            by: Actor("TKN-0000-0001".into()),
        });
        t.audit.deleted = Some(AuditEntry {
            at,
            by: Actor("TKN-0000-0001".into()),
        });
        t
    }

    fn tree() -> sled::Tree {
        let db = sled::Config::new().temporary(true).open().unwrap();
        db.open_tree("tokend").unwrap()
    }

    fn put_whole(tree: &sled::Tree, t: &Token) {
        tree.insert(
            tombstone_key(&t.id),
            record::encode::<record::TokenRecord>(t),
        )
        .unwrap();
    }

    fn shrunk(t: &Token) -> (TokenId, Vec<u8>) {
        (t.id.clone(), record::encode_shrunk(t).unwrap())
    }

    fn numbers(ts: &[Token]) -> Vec<u32> {
        ts.iter().map(|t| t.id.number()).collect()
    }

    #[test]
    fn packed_and_whole_tombstones_list_as_one_sequence_in_id_order() {
        let tree = tree();
        let (a, b) = ("ACC-0000-0001", "ACC-0000-0002");
        // Two packs (0 and 1) and whole ones around and between them.
        let all: Vec<Token> = [3, 5, 9, PACK_SPAN + 2, PACK_SPAN + 7, 3 * PACK_SPAN]
            .into_iter()
            .enumerate()
            .map(|(i, n)| tombstone(n, if i % 2 == 0 { a } else { b }))
            .collect();
        for t in &all {
            put_whole(&tree, t);
        }
        let old = [&all[0], &all[2], &all[4]].map(shrunk).to_vec();
        assert_eq!(pack(&tree, old).unwrap(), 3);
        assert_eq!(tree.scan_prefix(P_PACK).count(), 2);
        assert_eq!(tree.scan_prefix("d/").count(), 3);

        let every = list(&tree, None, None, 100).unwrap();
        assert_eq!(numbers(&every), numbers(&all));
        // Packed ones come back shrunk, whole ones whole.
        assert!(every[0].description.is_empty() && every[1].description.len() == 200);
        // Pages: after each id, at most two.
        let mut after = None;
        let mut paged = Vec::new();
        loop {
            let page = list(&tree, None, after.as_ref(), 2).unwrap();
            if page.is_empty() {
                break;
            }
            after = Some(page.last().unwrap().id.clone());
            paged.extend(page);
        }
        assert_eq!(numbers(&paged), numbers(&all));
        let of_a = list(&tree, Some(&AccountId::parse(a).unwrap()), None, 100).unwrap();
        assert_eq!(numbers(&of_a), vec![3, 9, PACK_SPAN + 7]);
        // By id, from either place.
        for t in &all {
            assert_eq!(get(&tree, &t.id).unwrap().unwrap().id, t.id);
        }
        assert!(get(&tree, &TokenId::from_number(4)).unwrap().is_none());
    }

    #[test]
    fn a_tombstone_in_both_places_counts_once_and_a_pack_merges_new_entries() {
        let tree = tree();
        let ts: Vec<Token> = [10, 20, 30].map(|n| tombstone(n, "ACC-0000-0001")).to_vec();
        for t in &ts {
            put_whole(&tree, t);
        }
        pack(&tree, vec![shrunk(&ts[0])]).unwrap();
        pack(&tree, vec![shrunk(&ts[2])]).unwrap();
        // A replay at open may write one whole again.
        put_whole(&tree, &ts[0]);
        let every = list(&tree, None, None, 100).unwrap();
        assert_eq!(numbers(&every), vec![10, 20, 30]);
        assert_eq!(every[0].description.len(), 200, "d/ wins");
        let pack_value = tree.get(pack_key(10)).unwrap().unwrap();
        assert_eq!(
            entries(&pack_value)
                .unwrap()
                .iter()
                .map(|e| e.0)
                .collect::<Vec<_>>(),
            vec![10, 30]
        );
    }

    #[test]
    fn a_damaged_pack_is_an_error_and_is_never_rewritten() {
        let tree = tree();
        let t = tombstone(7, "ACC-0000-0001");
        put_whole(&tree, &t);
        tree.insert(pack_key(7), &b"P\x00\x00\x00\x07\x00\xffshort"[..])
            .unwrap();
        assert!(list(&tree, None, None, 10).is_err());
        assert_eq!(pack(&tree, vec![shrunk(&t)]).unwrap(), 0);
        assert!(tree.get(tombstone_key(&t.id)).unwrap().is_some());
        for bad in [
            &b""[..],
            b"X",
            b"P\x00\x00",
            b"P\x00\x00\x00\x02\x00\x00\x00\x00\x00\x01\x00\x00",
        ] {
            assert!(entries(bad).is_err(), "{bad:?}");
        }
    }
}
