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
//! to the next pack's, and splits when its entries pass [`MAX_PACK_BYTES`]:
//! a pack holds a few hundred tombstones whatever the density of ids, and
//! stays far below the 128 KiB over which sled writes a value to a file of
//! its own (which its flush does not fsync). The shrinker's passes walk the
//! recent `d/` keys only, not every tombstone ever made.
//!
//! A pack's entries: for each tombstone, in increasing number order,
//! `[u32 BE number][u16 BE length]` and its shrunk record
//! (`store/record/shrunk.rs`; the number is the id, the record the rest). Packs never overlap: each number is in the
//! pack with the greatest first number not above it. A pack's value is
//! `Z` and its entries zlib-compressed (RFC 1950: DEFLATE and a checksum,
//! so that a damaged pack is an error, not other tombstones). A shrunk
//! record is ~110 bytes of JSON whose field names, account ids, actors and
//! times repeat from one entry to the next: compressed, a pack of 48 KB
//! takes 10 to 12 KB. Format 5 wrote `P` and the entries as they are; such
//! packs still read, and are compressed when next rewritten. Reading one
//! tombstone inflates its whole pack: an old tombstone is read rarely, and
//! a list inflates each pack it reaches once per page.
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

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::io_error;
use super::layout::{
    decode_tombstone, set_tombstone_counts, shrunk_in_place, tombstone_id, tombstone_key,
    tombstone_range,
};
use crate::domain::{AccountId, Token, TokenId};
use crate::error::Error;
use crate::state::TOKEN_ID_SPACE;
use crate::store::record;

/// A pack whose entries pass this, before compression, splits into even
/// pieces of 24 KB or more.
const MAX_PACK_BYTES: usize = 48 * 1024;
const P_PACK: &[u8] = b"p/";
/// Tags a pack's value: its entries compressed.
const PACK: u8 = b'Z';
/// Tags a format-5 pack's value: its entries as they are.
const PACK_V5: u8 = b'P';
/// The most a pack inflates to: far above any pack tokend writes (48 KB
/// and one entry), so only a damaged pack reaches it, and reading one
/// cannot take unbounded memory.
const MAX_UNPACKED: usize = 1 << 20;
/// zlib's default level: packs are written by the shrinker in the
/// background, once per pass, so speed matters less than size.
const LEVEL: u8 = 6;
/// An entry's number and length, before its record.
const ENTRY_HEADER: usize = 6;

/// A pack's entries: number → shrunk record.
type Entries = BTreeMap<u32, Vec<u8>>;

fn pack_key(first: u32) -> Vec<u8> {
    [P_PACK, &first.to_be_bytes()[..]].concat()
}

fn corrupt_pack(why: impl std::fmt::Display) -> Error {
    super::corrupt("tombstone pack", why)
}

/// The first number of pack `key`.
fn pack_first(key: &[u8]) -> Result<u32, Error> {
    key.strip_prefix(P_PACK)
        .and_then(|i| <[u8; 4]>::try_from(i).ok())
        .map(u32::from_be_bytes)
        .filter(|&n| n < TOKEN_ID_SPACE)
        .ok_or_else(|| corrupt_pack("a malformed key"))
}

/// A pack's value's entries: inflated, or as a format-5 pack kept them.
fn unpack(v: &[u8]) -> Result<Cow<'_, [u8]>, Error> {
    match v.split_first() {
        Some((&PACK, compressed)) => {
            miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(compressed, MAX_UNPACKED)
                .map(Cow::Owned)
                .map_err(|e| corrupt_pack(format!("entries that do not inflate: {e}")))
        }
        Some((&PACK_V5, raw)) => Ok(Cow::Borrowed(raw)),
        _ => Err(corrupt_pack("no pack tag")),
    }
}

/// Pack `key`'s entries (`raw`, [`unpack`]ed), checked: numbers
/// increasing, from the key's own and within the id space; lengths within
/// the value.
fn entries<'v>(key: &[u8], raw: &'v [u8]) -> Result<Vec<(u32, &'v [u8])>, Error> {
    let first = pack_first(key)?;
    let mut rest = raw;
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
        if number < first || number >= TOKEN_ID_SPACE {
            return Err(corrupt_pack(format!("{number} outside the pack")));
        }
        out.push((number, record));
        rest = &rest[ENTRY_HEADER + len..];
    }
    Ok(out)
}

/// The size of `entries` before compression.
fn raw_len(entries: &Entries) -> usize {
    entries.values().map(|r| ENTRY_HEADER + r.len()).sum()
}

/// A pack's value holding `entries`.
fn encode<'a>(entries: impl IntoIterator<Item = (&'a u32, &'a Vec<u8>)>) -> Vec<u8> {
    let mut raw = Vec::new();
    for (number, record) in entries {
        raw.extend_from_slice(&number.to_be_bytes());
        raw.extend_from_slice(&(record.len() as u16).to_be_bytes());
        raw.extend_from_slice(record);
    }
    let mut v = vec![PACK];
    v.extend(miniz_oxide::deflate::compress_to_vec_zlib(&raw, LEVEL));
    v
}

/// Tombstone `number` as a pack keeps it.
fn decode_entry(number: u32, record: &[u8]) -> Result<Token, Error> {
    record::decode_shrunk(&TokenId::from_number(number), record).map_err(corrupt_pack)
}

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

fn pack_range_end() -> Vec<u8> {
    let mut end = P_PACK.to_vec();
    *end.last_mut().expect("a prefix") += 1;
    end
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

/// `entries`, a pack starting at `first`, as one pack or, past
/// [`MAX_PACK_BYTES`] before compression, as pieces of even size, each at
/// least half of it: each piece's first number and value. Each piece aims
/// at an even share of what is left, so that cutting after whole entries
/// does not leave a small last piece however many there are.
fn split(first: u32, entries: &Entries) -> Vec<(u32, Vec<u8>)> {
    let mut rest = raw_len(entries);
    let mut left = (rest / (MAX_PACK_BYTES / 2)).max(1);
    let mut pieces = Vec::new();
    let mut piece: Vec<(&u32, &Vec<u8>)> = Vec::new();
    let (mut start, mut size) = (first, 0);
    for (n, r) in entries {
        if left > 1 && size >= rest / left {
            pieces.push((start, encode(piece.drain(..))));
            (start, rest, left, size) = (*n, rest - size, left - 1, 0);
        }
        size += ENTRY_HEADER + r.len();
        piece.push((n, r));
    }
    pieces.push((start, encode(piece)));
    pieces
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

    fn shrunk(t: &Token) -> Old {
        Old {
            id: t.id.clone(),
            shrunk: record::encode_shrunk(t).unwrap(),
            in_place: false,
        }
    }

    /// The numbers pack value `v` under `key` holds.
    fn read(key: &[u8], v: &[u8]) -> Result<Vec<u32>, Error> {
        Ok(entries(key, &unpack(v)?)?.iter().map(|e| e.0).collect())
    }

    fn numbers(ts: &[Token]) -> Vec<u32> {
        ts.iter().map(|t| t.id.number()).collect()
    }

    #[test]
    fn packed_and_whole_tombstones_list_as_one_sequence_in_id_order() {
        let tree = tree();
        let (a, b) = ("ACC-0000-0001", "ACC-0000-0002");
        // Packed ones, and whole ones around and between them.
        let all: Vec<Token> = [3, 5, 9, 20_002, 20_007, 50_000]
            .into_iter()
            .enumerate()
            .map(|(i, n)| tombstone(n, if i % 2 == 0 { a } else { b }))
            .collect();
        for t in &all {
            put_whole(&tree, t);
        }
        let old = [&all[0], &all[2], &all[4]].map(shrunk).into();
        assert_eq!(pack(&tree, old).unwrap(), 3);
        assert_eq!(tree.scan_prefix(P_PACK).count(), 1);
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
        assert_eq!(numbers(&of_a), vec![3, 9, 20_007]);
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
        assert_eq!(read(&pack_key(10), &pack_value).unwrap(), vec![10, 30]);
    }

    #[test]
    fn a_tombstone_format_4_shrank_in_place_reads_and_is_packed() {
        let tree = tree();
        let t = tombstone(42, "ACC-0000-0001");
        // Format 4's shape: `S` + the shrunk record, under `d/`.
        let value = [&b"S"[..], &record::encode_shrunk(&t).unwrap()].concat();
        tree.insert(tombstone_key(&t.id), value).unwrap();
        let read = get(&tree, &t.id).unwrap().unwrap();
        assert_eq!((read.name.as_str(), read.description.as_str()), ("t42", ""));
        let old = Old {
            in_place: true,
            ..shrunk(&read)
        };
        assert_eq!(pack(&tree, vec![old]).unwrap(), 1);
        assert!(tree.get(tombstone_key(&t.id)).unwrap().is_none());
        assert_eq!(get(&tree, &t.id).unwrap().unwrap(), read);
        assert_eq!(numbers(&list(&tree, None, None, 10).unwrap()), vec![42]);
    }

    #[test]
    fn a_damaged_pack_is_an_error_and_is_never_rewritten() {
        let tree = tree();
        let t = tombstone(7, "ACC-0000-0001");
        put_whole(&tree, &t);
        let damaged = &b"P\x00\x00\x00\x07\x00\xffshort"[..];
        tree.insert(pack_key(7), damaged).unwrap();
        assert!(list(&tree, None, None, 10).is_err());
        // Its tombstone is shrunk in place instead, the pack left as it was.
        assert_eq!(pack(&tree, vec![shrunk(&t)]).unwrap(), 1);
        assert_eq!(&*tree.get(pack_key(7)).unwrap().unwrap(), damaged);
        let in_place = tree.get(tombstone_key(&t.id)).unwrap().unwrap();
        assert_eq!(in_place[0], b'S');
        let entry = |n: u32| [&n.to_be_bytes()[..], &[0, 0]].concat();
        let z = |raw: &[u8]| {
            [
                &b"Z"[..],
                &miniz_oxide::deflate::compress_to_vec_zlib(raw, 1),
            ]
            .concat()
        };
        let mut flipped = z(&[&entry(1)[..], &entry(2)].concat());
        *flipped.last_mut().unwrap() ^= 1;
        for (key, bad) in [
            (pack_key(0), b"".to_vec()),
            (pack_key(0), b"X".to_vec()),
            (pack_key(0), b"P\x00\x00".to_vec()),
            (pack_key(0), [&b"P"[..], &entry(2), &entry(1)].concat()),
            (pack_key(0), [&b"P"[..], &entry(TOKEN_ID_SPACE)].concat()),
            (pack_key(5), [&b"P"[..], &entry(1)].concat()),
            (pack_key(TOKEN_ID_SPACE), b"P".to_vec()),
            (b"p/\x00".to_vec(), b"P".to_vec()),
            // Compressed: not zlib, cut short, a byte changed (its
            // checksum), bad entries inside, or inflating past any pack
            // tokend writes (a few KB that would take 2 MB).
            (pack_key(0), b"Zshort".to_vec()),
            (pack_key(0), flipped),
            (
                pack_key(0),
                z(&[&entry(1)[..], &entry(2)].concat())[..8].to_vec(),
            ),
            (pack_key(0), z(&[&entry(2)[..], &entry(1)].concat())),
            (pack_key(0), z(&vec![0; 2 * MAX_UNPACKED])),
        ] {
            assert!(read(&key, &bad).is_err(), "{key:?} {bad:?}");
        }
        assert!(read(&pack_key(0), b"P").unwrap().is_empty());
        assert!(read(&pack_key(0), &z(b"")).unwrap().is_empty());
        assert_eq!(
            read(&pack_key(0), &z(&[&entry(1)[..], &entry(2)].concat())).unwrap(),
            vec![1, 2]
        );
    }

    #[test]
    fn a_format_5_pack_reads_and_is_compressed_when_next_written() {
        let tree = tree();
        let ts: Vec<Token> = [100, 101, 102]
            .map(|n| tombstone(n, "ACC-0000-0001"))
            .to_vec();
        // Format 5's shape: `P` and the entries as they are.
        let mut v5 = b"P".to_vec();
        for t in &ts[..2] {
            let r = record::encode_shrunk(t).unwrap();
            v5.extend_from_slice(&t.id.number().to_be_bytes());
            v5.extend_from_slice(&(r.len() as u16).to_be_bytes());
            v5.extend_from_slice(&r);
        }
        tree.insert(pack_key(100), v5.clone()).unwrap();
        assert_eq!(get(&tree, &ts[1].id).unwrap().unwrap().name, "t101");
        assert_eq!(
            numbers(&list(&tree, None, None, 10).unwrap()),
            vec![100, 101]
        );
        put_whole(&tree, &ts[2]);
        assert_eq!(pack(&tree, vec![shrunk(&ts[2])]).unwrap(), 1);
        let rewritten = tree.get(pack_key(100)).unwrap().unwrap();
        assert_eq!(rewritten[0], b'Z');
        assert!(rewritten.len() < v5.len(), "smaller with a third entry");
        assert_eq!(
            read(&pack_key(100), &rewritten).unwrap(),
            vec![100, 101, 102]
        );
        for t in &ts {
            let got = get(&tree, &t.id).unwrap().unwrap();
            assert_eq!(
                (got.name.as_str(), got.audit.deleted),
                (t.name.as_str(), t.audit.deleted.clone())
            );
        }
    }

    #[test]
    fn a_pack_key_that_does_not_read_stops_only_its_own_tombstone() {
        let tree = tree();
        let ts: Vec<Token> = [5, 9].map(|n| tombstone(n, "ACC-0000-0001")).to_vec();
        for t in &ts {
            put_whole(&tree, t);
        }
        // A key beyond the id space, the one `pack_of(5)` finds.
        tree.insert(b"p/\x00\x00\x00", &b"P"[..]).unwrap();
        assert_eq!(pack(&tree, ts.iter().map(shrunk).collect()).unwrap(), 2);
        for t in &ts {
            assert_eq!(tree.get(tombstone_key(&t.id)).unwrap().unwrap()[0], b'S');
        }
    }

    #[test]
    fn packs_split_past_their_size_and_move_down_for_lower_numbers() {
        let tree = tree();
        let all: Vec<Token> = (1_000..3_000)
            .map(|n| tombstone(n, "ACC-0000-0001"))
            .collect();
        for t in &all {
            put_whole(&tree, t);
        }
        // In slices, as the shrinker packs them.
        for slice in all.chunks(300) {
            assert_eq!(
                pack(&tree, slice.iter().map(shrunk).collect()).unwrap(),
                slice.len() as u64
            );
        }
        assert_eq!(tree.scan_prefix("d/").count(), 0);
        let packs: Vec<_> = tree.scan_prefix(P_PACK).map(|kv| kv.unwrap()).collect();
        assert!(packs.len() > 1, "split");
        // Split by their size before compression; compressed, a fraction.
        let sizes: Vec<(usize, usize)> = packs
            .iter()
            .map(|(_, v)| (unpack(v).unwrap().len(), v.len()))
            .collect();
        assert!(
            sizes.iter().all(|&(raw, stored)| {
                (MAX_PACK_BYTES / 4..=MAX_PACK_BYTES).contains(&raw) && stored * 3 < raw
            }),
            "{sizes:?}"
        );
        assert_eq!(pack_first(&packs[0].0).unwrap(), 1_000);
        // One below every pack: the first pack moves down to it.
        let low = tombstone(10, "ACC-0000-0001");
        put_whole(&tree, &low);
        assert_eq!(pack(&tree, vec![shrunk(&low)]).unwrap(), 1);
        assert!(tree.get(pack_key(1_000)).unwrap().is_none());
        assert!(tree.get(pack_key(10)).unwrap().is_some());
        let every = list(&tree, None, None, 5_000).unwrap();
        let want: Vec<u32> = std::iter::once(10).chain(1_000..3_000).collect();
        assert_eq!(numbers(&every), want);
        for n in [10, 1_000, 1_999, 2_999] {
            assert!(
                get(&tree, &TokenId::from_number(n)).unwrap().is_some(),
                "{n}"
            );
        }
        for n in [11, 999, 3_000] {
            assert!(
                get(&tree, &TokenId::from_number(n)).unwrap().is_none(),
                "{n}"
            );
        }
        // Pages from inside a pack.
        let page = list(&tree, None, Some(&TokenId::from_number(1_500)), 3).unwrap();
        assert_eq!(numbers(&page), vec![1_501, 1_502, 1_503]);
    }

    #[test]
    fn many_packs_worth_in_one_pass_split_evenly_to_the_last() {
        let tree = tree();
        let many: Vec<Old> = (10_000..70_000)
            .map(|n| shrunk(&tombstone(n, "ACC-0000-0001")))
            .collect();
        assert_eq!(pack(&tree, many).unwrap(), 60_000);
        let raw: Vec<usize> = tree
            .scan_prefix(P_PACK)
            .map(|kv| unpack(&kv.unwrap().1).unwrap().len())
            .collect();
        assert!(raw.len() > 50, "{} packs", raw.len());
        assert!(
            raw.iter()
                .all(|r| (MAX_PACK_BYTES / 2 - 1_000..=MAX_PACK_BYTES).contains(r)),
            "{raw:?}"
        );
        assert_eq!(list(&tree, None, None, 100_000).unwrap().len(), 60_000);
    }
}
