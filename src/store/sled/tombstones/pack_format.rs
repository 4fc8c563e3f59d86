//! One tombstone pack: its key, its value's format, and splitting one that
//! grew too big.
//!
//! A pack's entries: for each tombstone, in increasing number order,
//! `[u32 BE number][u16 BE length]` and its shrunk record
//! (`store/record/shrunk.rs`; the number is the id, the record the rest).
//! Packs never overlap: each number is in the pack with the greatest first
//! number not above it. A pack's value is
//! `Z` and its entries zlib-compressed (RFC 1950: DEFLATE and a checksum,
//! so that a damaged pack is an error, not other tombstones). A shrunk
//! record is ~110 bytes of JSON whose field names, account ids, actors and
//! times repeat from one entry to the next: compressed, a pack of 48 KB
//! takes 10 to 12 KB. Format 5 wrote `P` and the entries as they are; such
//! packs still read, and are compressed when next rewritten. Reading one
//! tombstone inflates its whole pack: an old tombstone is read rarely, and
//! a list inflates each pack it reaches once per page.
//!
//! Owns encoding a pack and decoding one with every check a damaged value
//! needs (a damaged pack is an error, never other tombstones). It must
//! never read or write sled: which packs exist, and moving tombstones into
//! them, is `sled/tombstones.rs`'s.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::domain::{Token, TokenId};
use crate::error::Error;
use crate::state::TOKEN_ID_SPACE;
use crate::store::record;
use crate::store::sled::corrupt;

/// A pack whose entries pass this, before compression, splits into even
/// pieces of 24 KB or more.
pub(super) const MAX_PACK_BYTES: usize = 48 * 1024;
pub(super) const P_PACK: &[u8] = b"p/";
/// Tags a pack's value: its entries compressed.
pub(super) const PACK: u8 = b'Z';
/// Tags a format-5 pack's value: its entries as they are.
pub(super) const PACK_V5: u8 = b'P';
/// The most a pack inflates to: far above any pack tokend writes (48 KB
/// and one entry), so only a damaged pack reaches it, and reading one
/// cannot take unbounded memory.
pub(super) const MAX_UNPACKED: usize = 1 << 20;
/// zlib's default level: packs are written by the shrinker in the
/// background, once per pass, so speed matters less than size.
pub(super) const LEVEL: u8 = 6;
/// An entry's number and length, before its record.
pub(super) const ENTRY_HEADER: usize = 6;

/// A pack's entries: number → shrunk record.
pub(super) type Entries = BTreeMap<u32, Vec<u8>>;

pub(super) fn pack_key(first: u32) -> Vec<u8> {
    [P_PACK, &first.to_be_bytes()[..]].concat()
}

pub(super) fn corrupt_pack(why: impl std::fmt::Display) -> Error {
    corrupt("tombstone pack", why)
}

/// The first number of pack `key`.
pub(super) fn pack_first(key: &[u8]) -> Result<u32, Error> {
    key.strip_prefix(P_PACK)
        .and_then(|i| <[u8; 4]>::try_from(i).ok())
        .map(u32::from_be_bytes)
        .filter(|&n| n < TOKEN_ID_SPACE)
        .ok_or_else(|| corrupt_pack("a malformed key"))
}

/// A pack's value's entries: inflated, or as a format-5 pack kept them.
pub(super) fn unpack(v: &[u8]) -> Result<Cow<'_, [u8]>, Error> {
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
pub(super) fn entries<'v>(key: &[u8], raw: &'v [u8]) -> Result<Vec<(u32, &'v [u8])>, Error> {
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
pub(super) fn raw_len(entries: &Entries) -> usize {
    entries.values().map(|r| ENTRY_HEADER + r.len()).sum()
}

/// A pack's value holding `entries`.
pub(super) fn encode<'a>(entries: impl IntoIterator<Item = (&'a u32, &'a Vec<u8>)>) -> Vec<u8> {
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
pub(super) fn decode_entry(number: u32, record: &[u8]) -> Result<Token, Error> {
    record::decode_shrunk(&TokenId::from_number(number), record).map_err(corrupt_pack)
}

pub(super) fn pack_range_end() -> Vec<u8> {
    let mut end = P_PACK.to_vec();
    *end.last_mut().expect("a prefix") += 1;
    end
}

/// `entries`, a pack starting at `first`, as one pack or, past
/// [`MAX_PACK_BYTES`] before compression, as pieces of even size, each at
/// least half of it: each piece's first number and value. Each piece aims
/// at an even share of what is left, so that cutting after whole entries
/// does not leave a small last piece however many there are.
pub(super) fn split(first: u32, entries: &Entries) -> Vec<(u32, Vec<u8>)> {
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
