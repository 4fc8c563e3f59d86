//! The sled store's on-disk layout: one tree, keys by prefix, values the
//! JSON records of `record.rs` (whose shapes are the storage format).
//!
//!   `m/format`           → format marker, [`SLED_FORMAT`](crate::store::record::SLED_FORMAT)
//!   `m/revision`         → u64 BE, the last committed revision
//!   `m/page_key`         → 32 random bytes for signing page tokens
//!   `a/<ACC-id>`         → AccountRecord
//!   `t/<TKN-id>`         → a live token: `L` + its secret's 32-byte SHA-256
//!                          + its TokenRecord (format 3 kept tombstones here
//!                          too: [`split_tombstones`] moves them)
//!   `d/<TKN-id>`         → a recent tombstone: its TokenRecord (format 4
//!                          shrank old ones in place, `S` + a ShrunkRecord).
//!                          Apart from the live tokens, so that opening reads
//!                          live tokens only
//!   `p/<u32 BE pack>`    → old tombstones, shrunk, packed by number range
//!                          and compressed (`sled/tombstones.rs`;
//!                          `sled/shrink.rs` packs)
//!   `u/<u32 BE chunk>`   → 512 bytes: bit `i` set when token number
//!                          `chunk * 4096 + i` was issued. Ids are never
//!                          reused: this is what says which were, read at
//!                          open instead of every tombstone
//!   `s/<sha256>`         → TKN-id: formats 1 and 2 only, folded into `t/`
//!                          when such a data dir is opened ([`fold_secrets`])
//!   `e/<u64 BE rev>`     → the retained log: the events of one commit, from
//!                          revision `rev` on: `Z`, the length, then LZ4 of
//!                          what formats 3 to 7 kept uncompressed: `E`, then
//!                          each event as `[u32 LE length]` + EventRecord;
//!                          format 2 kept one bare EventRecord per key. All
//!                          three read as one log. No secret hash: a deleted
//!                          token's is nowhere in sled
//!   `l/<TKN-id>`         → TimeRecord, the last access (not part of the token's revision)
//!   `c/<ACC-id>`         → the account's tombstones: `[u64 BE count][u64 BE
//!                          revision of the last deletion counted]`, so that
//!                          a `show_deleted` list's `total_size` reads no
//!                          tombstone, and a replayed deletion is not
//!                          counted twice
//!
//! One key per commit, not per event: a sled insert or remove costs ~10 µs
//! whatever its size, and a commit of 30 deletes then writes one event key
//! and removes at most a few old ones instead of 30 of each.
//!
//! Owns building and parsing these keys, the sled batch a committed change
//! becomes (the same on the commit path and when the write-ahead log is
//! replayed at open), which event keys exist ([`EventLog`]) and reading the
//! whole layout back into a [`State`] at open. It must never apply a
//! commit's batch itself: only the applier thread and the replay at open do
//! (`sled/apply.rs`); it writes to sled only to fold an old secret index
//! at open, before either runs, and to set the tombstone counts a
//! migration or a restore found.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::time::SystemTime;

use super::{corrupt, io_error};
use crate::domain::{AccountId, Event, EventKind, Revision, Subject, Token, TokenId};
use crate::error::Error;
use crate::secret::SecretHash;
use crate::state::{Change, IdSet, Restore, State, TOKEN_ID_SPACE};
use crate::store::record::{self, AccountRecord, EventRecord, Record, TimeRecord, TokenRecord};

pub(super) const K_FORMAT: &[u8] = b"m/format";
pub(super) const K_REVISION: &[u8] = b"m/revision";
pub(super) const K_PAGE_KEY: &[u8] = b"m/page_key";
const P_ACCOUNT: &[u8] = b"a/";
const P_TOKEN: &[u8] = b"t/";
const P_SECRET: &[u8] = b"s/";
pub(super) const P_EVENT: &[u8] = b"e/";
const P_ACCESS: &[u8] = b"l/";
const P_TOMBSTONE: &[u8] = b"d/";
const P_ISSUED: &[u8] = b"u/";
const P_COUNT: &[u8] = b"c/";
/// Token numbers per `u/` key.
pub(super) const ISSUED_CHUNK: u32 = 4096;

fn key(prefix: &[u8], id: &[u8]) -> Vec<u8> {
    [prefix, id].concat()
}

pub(super) fn account_key(id: &AccountId) -> Vec<u8> {
    key(P_ACCOUNT, id.as_str().as_bytes())
}

pub(super) fn token_key(id: &TokenId) -> Vec<u8> {
    key(P_TOKEN, id.as_str().as_bytes())
}

pub(super) fn tombstone_key(id: &TokenId) -> Vec<u8> {
    key(P_TOMBSTONE, id.as_str().as_bytes())
}

/// The `u/` key holding token number `n`'s bit, and the bit's place in it.
fn issued_key(n: u32) -> (Vec<u8>, u32) {
    (
        key(P_ISSUED, &(n / ISSUED_CHUNK).to_be_bytes()),
        n % ISSUED_CHUNK,
    )
}

pub(super) fn count_key(id: &AccountId) -> Vec<u8> {
    key(P_COUNT, id.as_str().as_bytes())
}

/// A `c/` value: `count` tombstones, the last counted at `revision`.
pub(super) fn count_value(count: u64, revision: Revision) -> Vec<u8> {
    [count.to_be_bytes(), revision.to_be_bytes()].concat()
}

/// A `c/` value read back: the count, and the revision of its last one.
pub(super) fn decode_count(v: &[u8]) -> Result<(u64, Revision), Error> {
    let field = |at: usize| v.get(at..at + 8).and_then(|b| b.try_into().ok());
    match (field(0), field(8), v.len()) {
        (Some(c), Some(r), 16) => Ok((u64::from_be_bytes(c), u64::from_be_bytes(r))),
        _ => Err(corrupt("tombstone count", format!("{} bytes", v.len()))),
    }
}

pub(super) fn access_key(id: &TokenId) -> Vec<u8> {
    key(P_ACCESS, id.as_str().as_bytes())
}

/// Big-endian, so that sled's key order is revision order.
pub(super) fn event_key(rev: Revision) -> Vec<u8> {
    key(P_EVENT, &rev.to_be_bytes())
}

pub(super) fn decode_event_key(k: &[u8]) -> Result<Revision, Error> {
    k.get(P_EVENT.len()..)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt("event key", format!("{k:?}")))
}

/// The writes of one commit (or of a run of them, [`Writes::append`]),
/// applied to sled one by one, in order, tombstone counts first. Not a
/// `sled::Batch`: sled 0.34 writes out its log buffer twice for every batch
/// (a write and a thread-pool wake-up each), and atomicity is the
/// write-ahead log's job here. Every write sets a key to its value after
/// the commit (or removes it, or sets a bit that stays set), so applying
/// them again, in log order, is harmless: what replay at open does.
///
/// Tombstone counts are summed per account before they are applied: one
/// read and one write of `c/<ACC-id>` per batch, not per deletion. They go
/// first so that the revision counter stays the last write.
#[derive(Default)]
pub(super) struct Writes {
    writes: Vec<(Vec<u8>, Write)>,
    /// Per account: tombstones to count, and the last one's revision.
    counts: BTreeMap<AccountId, (u64, Revision)>,
}

enum Write {
    Put(sled::IVec),
    /// A commit's events ([`encode_events`]), compressed as they are
    /// applied: on the applier's thread, off the answers' path.
    Events(Vec<u8>),
    Remove,
    /// Sets one bit of a `u/` value (created as zeros when missing).
    SetBit(u32),
    /// Counts `n` more tombstones in a `c/` value, the last deleted at this
    /// revision: once, however often the log replays them. Correct for any
    /// `n` because deletions reach sled in revision order: those counted
    /// together all come after the value's last.
    Count(u64, Revision),
}

impl Writes {
    pub(super) fn insert(&mut self, key: Vec<u8>, value: impl Into<sled::IVec>) {
        self.writes.push((key, Write::Put(value.into())));
    }

    pub(super) fn remove(&mut self, key: Vec<u8>) {
        self.writes.push((key, Write::Remove));
    }

    /// Records that token number `n` was issued.
    pub(super) fn mark_issued(&mut self, n: u32) {
        let (key, bit) = issued_key(n);
        self.writes.push((key, Write::SetBit(bit)));
    }

    /// Counts the tombstone of a token of `account` deleted at `revision`.
    pub(super) fn count_tombstone(&mut self, account: &AccountId, revision: Revision) {
        let (n, last) = self.counts.entry(account.clone()).or_default();
        *n += 1;
        *last = (*last).max(revision);
    }

    /// Adds the writes of a later batch behind these: the applier's way to
    /// apply a run of batches at once.
    pub(super) fn append(&mut self, later: Writes) {
        // Each batch ends by setting the revision counter: the run needs
        // only its last.
        if later.writes.last().is_some_and(|(k, _)| k == K_REVISION)
            && self.writes.last().is_some_and(|(k, _)| k == K_REVISION)
        {
            self.writes.pop();
        }
        self.writes.extend(later.writes);
        for (account, (n, revision)) in later.counts {
            let (sum, last) = self.counts.entry(account).or_default();
            *sum += n;
            *last = (*last).max(revision);
        }
    }

    pub(super) fn apply(self, tree: &sled::Tree) -> sled::Result<()> {
        let counts = self
            .counts
            .into_iter()
            .map(|(account, (n, last))| (count_key(&account), Write::Count(n, last)));
        // Counts first: the revision counter stays the last write.
        for (key, write) in counts.chain(self.writes) {
            match write {
                Write::Put(v) => {
                    tree.insert(key, v)?;
                }
                Write::Events(v) => {
                    tree.insert(key, compress_events(&v))?;
                }
                Write::Remove => {
                    tree.remove(key)?;
                }
                Write::SetBit(bit) => {
                    let (byte, mask) = ((bit / 8) as usize, 1u8 << (bit % 8));
                    // Read, then written only if the bit is new. One thread
                    // writes `u/` (the applier, or the replay at open before
                    // it): no update to lose in between.
                    let old = tree.get(&key)?;
                    if old
                        .as_deref()
                        .is_none_or(|v| v.get(byte).is_none_or(|b| b & mask == 0))
                    {
                        let mut v = old.map_or_else(Vec::new, |v| v.to_vec());
                        v.resize(v.len().max(ISSUED_CHUNK as usize / 8), 0);
                        v[byte] |= mask;
                        tree.insert(key, v)?;
                    }
                }
                Write::Count(n, revision) => {
                    // Like a bit: one thread writes `c/`. A value that does
                    // not read is left for the restore to refuse.
                    let old = match tree.get(&key)? {
                        None => Some((0, 0)),
                        Some(v) => decode_count(&v).ok(),
                    };
                    if let Some((count, _)) = old.filter(|&(_, last)| last < revision) {
                        tree.insert(key, count_value(count + n, revision))?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Tags a live token's value: JSON never starts with it.
const LIVE: u8 = b'L';

/// What `t/<id>` holds for token `t`, whose secret's hash is `secret`
/// while it is live.
pub(super) fn token_value(t: &Token, secret: Option<&SecretHash>) -> Vec<u8> {
    let record = record::encode::<TokenRecord>(t);
    match secret {
        None => record,
        Some(h) => [&[LIVE][..], &h[..], &record].concat(),
    }
}

/// A `t/<id>` value read back: the token and, while live, its secret's hash.
pub(super) fn decode_token_value(v: &[u8]) -> Result<(Token, Option<SecretHash>), Error> {
    let (secret, record) = match v.split_first() {
        Some((&LIVE, rest)) if rest.len() > 32 => {
            let (h, record) = rest.split_at(32);
            (Some(h.try_into().expect("32 bytes")), record)
        }
        _ => (None, v),
    };
    Ok((decode::<TokenRecord>("token", record)?, secret))
}

/// Adds what `change`, committed at `revision`, writes: its record,
/// holding the token's secret hash after the change (`secret`), and for a
/// deletion, its account's tombstone count. Its event goes with the
/// commit's others ([`EventLog::append`]). `accessed`: as for
/// [`write_token`].
pub(super) fn write_change(
    batch: &mut Writes,
    change: &Change,
    secret: Option<&SecretHash>,
    revision: Revision,
    accessed: Accessed,
) {
    let new = change.kind == EventKind::Created;
    match &change.subject {
        // A tombstone never changes: a change that writes one deletes.
        Subject::Token(t) if t.is_deleted() => {
            write_token(batch, t, secret, new, accessed);
            batch.count_tombstone(&t.account_id, revision);
        }
        Subject::Token(t) => write_token(batch, t, secret, new, accessed),
        Subject::Account(a) => batch.insert(account_key(&a.id), record::encode::<AccountRecord>(a)),
    }
}

/// Whether a token may have a last access under `l/`, which its deletion
/// removes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Accessed {
    /// The writer's access log has no time for it: it has none (the log
    /// holds every time sled has, from open on, and every time the writer
    /// has been handed since), and its deletion skips a sled remove.
    Never,
    /// It has one, or the caller cannot tell (the replay at open).
    Maybe,
}

/// Adds what token `t` is stored as: live under `t/` with its secret's
/// hash, or deleted under `d/` (its live record and, where it may have one,
/// its last access go), and its number marked issued when it is `new`.
pub(super) fn write_token(
    batch: &mut Writes,
    t: &Token,
    secret: Option<&SecretHash>,
    new: bool,
    accessed: Accessed,
) {
    if new {
        batch.mark_issued(t.id.number());
    }
    if t.is_deleted() {
        batch.remove(token_key(&t.id));
        if accessed == Accessed::Maybe {
            batch.remove(access_key(&t.id));
        }
        batch.insert(tombstone_key(&t.id), record::encode::<TokenRecord>(t));
    } else {
        batch.insert(token_key(&t.id), token_value(t, secret));
    }
}

/// A `d/<id>` value read back: whole, or shrunk once old.
pub(super) fn decode_tombstone(id: &TokenId, v: &[u8]) -> Result<Token, Error> {
    let t = match v.split_first() {
        Some((&SHRUNK, rest)) => {
            record::decode_shrunk(id, rest).map_err(|e| corrupt("tombstone", e))?
        }
        _ => decode::<TokenRecord>("tombstone", v)?,
    };
    if !(t.is_deleted() && t.id == *id) {
        return Err(corrupt(
            "tombstone",
            format!("{id} is not a deleted token's record"),
        ));
    }
    Ok(t)
}

/// Tags a tombstone shrunk in place under `d/` (format 4 shrank every old
/// one so; this format packs them, and shrinks in place only what a full
/// pack cannot take): JSON never starts with it.
const SHRUNK: u8 = b'S';

/// The `d/` value of a tombstone shrunk in place.
pub(super) fn shrunk_in_place(record: &[u8]) -> Vec<u8> {
    [&[SHRUNK][..], record].concat()
}

/// Whether a `d/` value is shrunk in place.
pub(super) fn is_shrunk_in_place(v: &[u8]) -> bool {
    v.first() == Some(&SHRUNK)
}

/// The keys of every tombstone: `start..end`.
pub(super) fn tombstone_range() -> (Vec<u8>, Vec<u8>) {
    let mut end = P_TOMBSTONE.to_vec();
    *end.last_mut().expect("a prefix") += 1;
    (P_TOMBSTONE.to_vec(), end)
}

/// The token a `d/` key is the tombstone of.
pub(super) fn tombstone_id(k: &[u8]) -> Result<TokenId, Error> {
    TokenId::parse(&String::from_utf8_lossy(&k[P_TOMBSTONE.len()..]))
        .map_err(|e| corrupt("tombstone key", e))
}

/// Moves format 3's tombstones from `t/` to `d/` and marks every token
/// number in `u/`: what format 4 keeps apart. Run at open, before anything
/// else reads; each step can run again after a crash half-way.
pub(super) fn split_tombstones(tree: &sled::Tree) -> Result<usize, Error> {
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

/// The numbers chunk `chunk`'s `u/` value `bits` marks issued.
fn chunk_numbers(chunk: u32, bits: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bits.iter()
        .enumerate()
        .filter(|(_, b)| **b != 0)
        .flat_map(move |(i, byte)| {
            (0..8)
                .filter(move |bit| byte & (1 << bit) != 0)
                .map(move |bit| chunk * ISSUED_CHUNK + i as u32 * 8 + bit)
        })
}

/// The numbers of chunk `chunk` (`chunk * 4096` on) not issued yet (nor
/// 0, which tokend never issues).
#[cfg(feature = "bench")]
pub(super) fn unissued_in(tree: &sled::Tree, chunk: u32) -> Result<Vec<u32>, Error> {
    let (key, _) = issued_key(chunk * ISSUED_CHUNK);
    let bits = tree
        .get(key)
        .map_err(|e| io_error("reading issued ids", e))?;
    let issued: std::collections::HashSet<u32> = bits
        .as_deref()
        .map(|b| chunk_numbers(chunk, b).collect())
        .unwrap_or_default();
    Ok((chunk * ISSUED_CHUNK..(chunk + 1) * ISSUED_CHUNK)
        .filter(|n| (1..TOKEN_ID_SPACE).contains(n) && !issued.contains(n))
        .collect())
}

/// The accounts' ids.
#[cfg(feature = "bench")]
pub(super) fn account_ids(tree: &sled::Tree) -> Result<Vec<AccountId>, Error> {
    tree.scan_prefix(P_ACCOUNT)
        .keys()
        .map(|k| {
            let k = k.map_err(|e| io_error("reading accounts", e))?;
            std::str::from_utf8(&k[P_ACCOUNT.len()..])
                .ok()
                .and_then(|id| AccountId::parse(id).ok())
                .ok_or_else(|| corrupt("account key", format!("{k:?}")))
        })
        .collect()
}

/// Sets each account's tombstone count, as of `revision`: what a
/// migration or a restore found (a commit counts its own through
/// [`Writes::count_tombstone`]). Must never run while the applier does: a
/// run's summed count adds all its deletions or none, so a count set as
/// of a revision inside a run would be counted wrong.
pub(super) fn set_tombstone_counts(
    tree: &sled::Tree,
    counts: &std::collections::BTreeMap<AccountId, u64>,
    revision: Revision,
) -> sled::Result<()> {
    for (account, count) in counts {
        tree.insert(count_key(account), count_value(*count, revision))?;
    }
    Ok(())
}

/// Marks every number of `issued` in `u/`, one write per chunk of 4,096
/// (a migration or a restore marks millions at once; a commit marks its
/// few through [`Writes::mark_issued`]).
pub(super) fn write_issued(
    tree: &sled::Tree,
    issued: impl IntoIterator<Item = u32>,
) -> sled::Result<()> {
    let mut chunks: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = Default::default();
    for n in issued {
        let (key, bit) = issued_key(n);
        let bits = chunks
            .entry(key)
            .or_insert_with(|| vec![0; ISSUED_CHUNK as usize / 8]);
        bits[(bit / 8) as usize] |= 1 << (bit % 8);
    }
    for (key, mut bits) in chunks {
        if let Some(old) = tree.get(&key)? {
            for (b, o) in bits.iter_mut().zip(old.iter()) {
                *b |= o;
            }
        }
        tree.insert(key, bits)?;
    }
    Ok(())
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
pub(super) fn fold_secrets(tree: &sled::Tree) -> Result<usize, Error> {
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
        tree.insert(token_key(&id), token_value(&token, Some(&hash)))
            .map_err(failed)?;
        tree.remove(&k).map_err(failed)?;
        folded += 1;
    }
    Ok(folded)
}

/// Tags an event key's value of format 3: JSON (format 2's bare record)
/// never starts with it, while a length could.
const EVENTS: u8 = b'E';
/// Tags an event key's value of format 8: the [`EVENTS`] value of formats
/// 3 to 7, LZ4-compressed, after its length (`u32` LE). A commit's events
/// repeat their field names, accounts and actors: a fifth of the bytes,
/// and of what sled copies each time it rewrites their leaf.
const COMPRESSED_EVENTS: u8 = b'Z';
/// The longest commit a compressed value may claim to hold: a damaged
/// length must not allocate gigabytes. Twice the most a commit can hold:
/// 1,024 commands (`commit::MAX_BATCH`) of at most two changes, each event
/// under 16 KB (a description of 2,000 control characters, each escaped to
/// six bytes, is the largest field).
const MAX_EVENTS_BYTES: usize = 64 << 20;

/// An [`encode_events`] value as sled keeps it.
fn compress_events(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + lz4_flex::block::get_maximum_output_size(value.len()));
    out.push(COMPRESSED_EVENTS);
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    let at = out.len();
    out.resize(out.capacity(), 0);
    let n = lz4_flex::block::compress_into(value, &mut out[at..])
        .expect("the buffer holds the largest output");
    out.truncate(at + n);
    out
}

/// One event key's value: a commit's events, already encoded.
pub(super) fn encode_events<'a>(events: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    out.push(EVENTS);
    for e in events {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// An event key's value as [`encode_events`] made it (or format 2's bare
/// record): a compressed one inflated, any other as it is. What to search
/// for an id in: a compressed value may split it.
pub(super) fn inflate_events(value: &[u8]) -> Result<Cow<'_, [u8]>, Error> {
    let Some((&COMPRESSED_EVENTS, value)) = value.split_first() else {
        return Ok(Cow::Borrowed(value));
    };
    let damaged = |why: String| corrupt("event log", format!("a compressed commit: {why}"));
    let (len, block) = value
        .split_first_chunk::<4>()
        .ok_or_else(|| damaged("cut short".into()))?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > MAX_EVENTS_BYTES {
        return Err(damaged(format!("claims {len} bytes")));
    }
    let mut out = vec![0; len];
    match lz4_flex::block::decompress_into(block, &mut out) {
        Ok(n) if n == len => Ok(Cow::Owned(out)),
        Ok(n) => Err(damaged(format!("{n} bytes, not {len}"))),
        Err(e) => Err(damaged(e.to_string())),
    }
}

/// The events of one event key's value, in revision order.
pub(super) fn decode_events(value: &[u8]) -> Result<Vec<Event>, Error> {
    let value = inflate_events(value)?;
    let Some((&EVENTS, mut value)) = value.split_first() else {
        // Format 2: one EventRecord, a JSON object.
        return Ok(vec![decode::<EventRecord>("event", &value)?]);
    };
    let mut out = Vec::new();
    while !value.is_empty() {
        let len = value
            .get(..4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .filter(|&len| value.len() >= 4 + len)
            .ok_or_else(|| corrupt("event log", "an event cut short"))?;
        out.push(decode::<EventRecord>("event", &value[4..4 + len])?);
        value = &value[4 + len..];
    }
    Ok(out)
}

/// Which event keys sled holds: the first revision of each commit's events,
/// oldest first. The writer alone adds and removes them (and the replay at
/// open, before it), so it knows which keys a trim removes without reading
/// sled, which the applier may not have brought up to date yet.
pub(super) struct EventLog {
    starts: VecDeque<Revision>,
    head: Revision,
}

impl EventLog {
    /// The event keys in `tree`, whose last committed revision is `head`.
    pub(super) fn load(tree: &sled::Tree, head: Revision) -> Result<EventLog, Error> {
        let starts = tree
            .scan_prefix(P_EVENT)
            .keys()
            .map(|k| decode_event_key(&k.map_err(|e| io_error("reading the event log", e))?))
            .collect::<Result<_, _>>()?;
        Ok(EventLog { starts, head })
    }

    /// The oldest revision kept (`head + 1` when none is).
    pub(super) fn oldest(&self) -> Revision {
        self.starts.front().copied().unwrap_or(self.head + 1)
    }

    /// Ends the writes of a commit of revisions `first..=last`, whose
    /// events are `payload`: its event key, the removal of every commit
    /// that lies wholly before the newest `retention` events (a commit that
    /// straddles the line stays whole), then the revision counter, last.
    /// Returns the oldest revision kept after it. A commit applied again
    /// (the replay at open) is written again only if its key is still kept.
    pub(super) fn append(
        &mut self,
        batch: &mut Writes,
        first: Revision,
        last: Revision,
        payload: Vec<u8>,
        retention: u64,
    ) -> Revision {
        // Older than every kept key (or none is kept): trimmed already.
        let trimmed = first <= self.head && self.starts.front().is_none_or(|&f| first < f);
        if !trimmed {
            if let Err(at) = self.starts.binary_search(&first) {
                self.starts.insert(at, first);
            }
            batch
                .writes
                .push((event_key(first), Write::Events(payload)));
        }
        self.head = self.head.max(last);
        let keep_from = (self.head + 1).saturating_sub(retention).max(1);
        while self.starts.len() >= 2 && self.starts[1] <= keep_from {
            let gone = self.starts.pop_front().expect("two or more");
            batch.remove(event_key(gone));
        }
        batch.insert(K_REVISION.to_vec(), &self.head.to_be_bytes()[..]);
        self.oldest()
    }
}

/// The last committed revision, as sled holds it.
pub(super) fn revision(tree: &sled::Tree) -> Result<Revision, Error> {
    tree.get(K_REVISION)
        .map_err(|e| io_error("reading", e))?
        .and_then(|v| v.as_ref().try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt("revision counter", "missing"))
}

/// The value stored as record `R`; `what` names it in the error.
pub(super) fn decode<'a, R>(what: &str, v: &'a [u8]) -> Result<R::Domain, Error>
where
    R: Record<'a> + serde::Deserialize<'a>,
{
    record::decode::<R>(v).map_err(|e| corrupt(what, e))
}

/// The state, the last-access times, and the bytes of live tokens' records
/// read to build them.
pub(super) type Restored = (State, Vec<(TokenId, SystemTime)>, u64);

/// Hands each key (without `prefix`) and value under `prefix` to `each`,
/// record by record: opening a large store holds its state, never also a
/// copy of a whole prefix's bytes.
///
/// sled is read on a thread of its own. The allocator (mimalloc) gives
/// each thread its own pages, so the pages sled fills while reading are
/// not shared with the state being built from what it reads, and are given
/// back whole when the store drops them (`SledStore::open` reopens sled
/// for that). Read on the same thread, the two interleave and a third
/// more stays resident: 414 MB against 305 MB after opening 200,000 live
/// tokens.
fn each_record(
    tree: &sled::Tree,
    prefix: &[u8],
    mut each: impl FnMut(&[u8], &[u8]) -> Result<(), Error>,
) -> Result<(), Error> {
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(1024);
        scope.spawn(move || {
            for item in tree.scan_prefix(prefix) {
                let failed = item.is_err();
                if tx.send(item).is_err() || failed {
                    break;
                }
            }
        });
        for item in rx {
            let (k, v) = item.map_err(|e| io_error("reading", e))?;
            each(&k[prefix.len()..], &v)?;
        }
        Ok(())
    })
}

/// Every account and live token, the secret index, the issued token
/// numbers, each account's tombstone count and the last-access times, as
/// the state at the last committed revision. Tombstones stay on disk.
pub(super) fn restore(tree: &sled::Tree) -> Result<Restored, Error> {
    let revision = revision(tree)?;
    let mut issued = IdSet::default();
    each_record(tree, P_ISSUED, |k, v| {
        let chunk = k
            .try_into()
            .map(u32::from_be_bytes)
            .map_err(|_| corrupt("issued ids", "a bad key"))?;
        if v.len() != ISSUED_CHUNK as usize / 8 || chunk >= TOKEN_ID_SPACE.div_ceil(ISSUED_CHUNK) {
            return Err(corrupt(
                "issued ids",
                format!("chunk {chunk} of {} bytes", v.len()),
            ));
        }
        for n in chunk_numbers(chunk, v) {
            issued.insert(n);
        }
        Ok(())
    })?;
    // Each record goes into the state as it is read (`Restore`).
    let mut state = Restore::new(issued);
    each_record(tree, P_ACCOUNT, |_, v| {
        state.account(decode::<AccountRecord>("account", v)?);
        Ok(())
    })?;
    let mut read = 0;
    each_record(tree, P_TOKEN, |_, v| {
        let (t, secret) = decode_token_value(v)?;
        state.token(t, secret);
        read += v.len() as u64;
        Ok(())
    })?;
    each_record(tree, P_COUNT, |k, v| {
        let id = AccountId::parse(&String::from_utf8_lossy(k))
            .map_err(|e| corrupt("tombstone count", e))?;
        state.tombstones(id, decode_count(v)?.0);
        Ok(())
    })?;
    let mut access = Vec::new();
    each_record(tree, P_ACCESS, |k, v| {
        let id =
            TokenId::parse(&String::from_utf8_lossy(k)).map_err(|e| corrupt("access log", e))?;
        access.push((id, decode::<TimeRecord>("access time", v)?));
        Ok(())
    })?;
    Ok((state.finish(revision), access, read))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> sled::Tree {
        let db = sled::Config::new().temporary(true).open().unwrap();
        db.open_tree("t").unwrap()
    }

    fn keys(tree: &sled::Tree) -> Vec<Revision> {
        let log = EventLog::load(tree, 0).unwrap();
        log.starts.into_iter().collect()
    }

    /// Commits `first..=last` and applies their writes.
    fn commit(log: &mut EventLog, tree: &sled::Tree, first: Revision, last: Revision) -> Revision {
        let mut writes = Writes::default();
        let oldest = log.append(&mut writes, first, last, vec![first as u8], 4);
        writes.apply(tree).unwrap();
        oldest
    }

    #[test]
    fn a_tombstone_is_counted_once_however_often_its_deletion_is_replayed() {
        let tree = tree();
        let (a, b) = (AccountId::from_number(1), AccountId::from_number(2));
        let count = |tree: &sled::Tree, id: &AccountId| {
            decode_count(&tree.get(count_key(id)).unwrap().unwrap()).unwrap()
        };
        let delete = |account: &AccountId, revision: Revision| {
            let mut w = Writes::default();
            w.count_tombstone(account, revision);
            w.apply(&tree).unwrap();
        };
        for revision in [5, 6, 5, 6, 7] {
            delete(&a, revision);
        }
        delete(&b, 6);
        assert_eq!(count(&tree, &a), (3, 7));
        assert_eq!(count(&tree, &b), (1, 6));
        // A migration's or a restore's count sets it, as of a revision.
        let counts = [(a.clone(), 10)].into_iter().collect();
        set_tombstone_counts(&tree, &counts, 9).unwrap();
        delete(&a, 9);
        delete(&a, 10);
        assert_eq!(count(&tree, &a), (11, 10));
        // A value that does not read is left alone, for the restore to refuse.
        tree.insert(count_key(&b), &b"short"[..]).unwrap();
        delete(&b, 11);
        assert_eq!(&*tree.get(count_key(&b)).unwrap().unwrap(), b"short");
        assert!(decode_count(b"short").is_err());
    }

    #[test]
    fn tombstones_summed_over_a_run_of_batches_are_counted_once_on_replay() {
        let tree = tree();
        let (a, b) = (AccountId::from_number(1), AccountId::from_number(2));
        let count =
            |id: &AccountId| decode_count(&tree.get(count_key(id)).unwrap().unwrap()).unwrap();
        // Two batches, as the applier merges them: a at 3, 4 and 6, b at 5.
        let mut run = Writes::default();
        run.count_tombstone(&a, 3);
        run.count_tombstone(&a, 4);
        let mut later = Writes::default();
        later.count_tombstone(&b, 5);
        later.count_tombstone(&a, 6);
        run.append(later);
        run.apply(&tree).unwrap();
        assert_eq!(count(&a), (3, 6));
        assert_eq!(count(&b), (1, 5));
        // The replay at open applies each deletion again, one at a time.
        for (account, revision) in [(&a, 3), (&a, 4), (&b, 5), (&a, 6), (&a, 7)] {
            let mut w = Writes::default();
            w.count_tombstone(account, revision);
            w.apply(&tree).unwrap();
        }
        assert_eq!(count(&a), (4, 7));
        assert_eq!(count(&b), (1, 5));
    }

    #[test]
    fn a_run_of_batches_sets_the_revision_counter_once_and_last() {
        let tree = tree();
        let mut log = EventLog::load(&tree, 0).unwrap();
        let mut run = Writes::default();
        log.append(&mut run, 1, 2, vec![1], 100);
        let mut later = Writes::default();
        log.append(&mut later, 3, 3, vec![3], 100);
        later.count_tombstone(&AccountId::from_number(1), 3);
        run.append(later);
        // sled's own subscriber sees the writes in the order they happen.
        let mut seen = tree.watch_prefix(b"");
        run.apply(&tree).unwrap();
        let mut order = Vec::new();
        while let Ok(event) = seen.next_timeout(std::time::Duration::from_millis(100)) {
            order.push(event.key().to_vec());
        }
        let counts = order.iter().filter(|k| k.starts_with(P_COUNT)).count();
        let revisions = order.iter().filter(|k| &k[..] == K_REVISION).count();
        assert_eq!((counts, revisions), (1, 1), "{order:?}");
        assert!(order[0].starts_with(P_COUNT), "{order:?}");
        assert_eq!(order.last().map(|k| &k[..]), Some(K_REVISION));
        assert_eq!(revision(&tree).unwrap(), 3);
        assert_eq!(keys(&tree), vec![1, 3]);
        let count = tree.get(count_key(&AccountId::from_number(1))).unwrap();
        assert_eq!(decode_count(&count.unwrap()).unwrap(), (1, 3));
    }

    #[test]
    fn whole_commits_go_once_all_their_events_are_past_retention() {
        let tree = tree();
        let mut log = EventLog::load(&tree, 0).unwrap();
        assert_eq!(log.oldest(), 1);
        assert_eq!(commit(&mut log, &tree, 1, 3), 1);
        assert_eq!(commit(&mut log, &tree, 4, 5), 1);
        // Keep from 3 on: the first commit holds 3, so it stays whole.
        assert_eq!(commit(&mut log, &tree, 6, 6), 1);
        assert_eq!(keys(&tree), [1, 4, 6]);
        // Keep from 5 on: the first commit goes, the second holds 5.
        assert_eq!(commit(&mut log, &tree, 7, 8), 4);
        assert_eq!(keys(&tree), [4, 6, 7]);
        assert_eq!(layout_revision(&tree), 8);
    }

    #[test]
    fn a_replayed_commit_is_written_again_only_while_kept() {
        let tree = tree();
        let mut log = EventLog::load(&tree, 0).unwrap();
        for (first, last) in [(1, 3), (4, 5), (6, 6), (7, 8)] {
            commit(&mut log, &tree, first, last);
        }
        // The replay at open: sled is at 8 and holds 4, 6 and 7.
        let mut log = EventLog::load(&tree, 8).unwrap();
        let mut writes = Writes::default();
        log.append(&mut writes, 1, 3, vec![9], 4);
        log.append(&mut writes, 4, 5, vec![9], 4);
        writes.apply(&tree).unwrap();
        assert_eq!(keys(&tree), [4, 6, 7], "the trimmed commit stays gone");
        let kept = tree.get(event_key(4)).unwrap().unwrap();
        assert_eq!(&*inflate_events(&kept).unwrap(), [9]);
        assert_eq!(log.oldest(), 4);
    }

    /// The events of an account and `n` tokens made in it, each encoded,
    /// and all of them as one commit's value.
    fn events_of_tokens(n: usize) -> (crate::state::testkit::World, Vec<Vec<u8>>, Vec<u8>) {
        use crate::domain::AccountType;
        let mut w = crate::state::testkit::World::default();
        let acc = w.account(AccountType::Client, &["commerce"]);
        for _ in 0..n {
            w.token(&acc, &["commerce"]);
        }
        let encoded: Vec<Vec<u8>> = w
            .log
            .iter()
            .map(|e| record::encode::<EventRecord>(e))
            .collect();
        let value = encode_events(encoded.iter().map(|e| &e[..]));
        (w, encoded, value)
    }

    /// A commit's events read back, whatever bytes their lengths make:
    /// one of 123 bytes starts with `{`, as format 2's bare record does.
    #[test]
    fn events_read_back_whatever_their_lengths() {
        let (w, encoded, value) = events_of_tokens(3);
        let back = decode_events(&value).unwrap();
        assert_eq!(back.len(), w.log.len());
        for (b, e) in back.iter().zip(&w.log) {
            assert_eq!(b, &**e);
        }
        // Format 2: one bare record.
        assert_eq!(decode_events(&encoded[1]).unwrap(), [(*w.log[1]).clone()]);
        // A length whose first byte is `{` (JSON may start with spaces).
        let len = (encoded[0].len() / 256) * 256 + b'{' as usize;
        let len = if len < encoded[0].len() {
            len + 256
        } else {
            len
        };
        let mut padded = vec![b' '; len - encoded[0].len()];
        padded.extend_from_slice(&encoded[0]);
        let value = encode_events([&padded[..]]);
        assert_eq!(value[1], b'{');
        assert_eq!(decode_events(&value).unwrap(), [(*w.log[0]).clone()]);
        // Cut short: refused, not misread.
        assert!(decode_events(&value[..value.len() - 1]).is_err());
    }

    /// What sled keeps of a commit is compressed, reads back as the same
    /// events, and inflated holds every id whole (the audit trail searches
    /// it for one): ids that differ in their last digit are what LZ4 would
    /// split. Damage is an error, never a panic or a huge allocation.
    #[test]
    fn a_commit_is_compressed_in_sled_and_damage_is_refused() {
        let (w, _, value) = events_of_tokens(20);
        let tree = tree();
        let mut log = EventLog::load(&tree, 0).unwrap();
        let mut writes = Writes::default();
        let last = w.log.last().unwrap().revision;
        log.append(&mut writes, 1, last, value.clone(), 1000);
        writes.apply(&tree).unwrap();
        let kept = tree.get(event_key(1)).unwrap().unwrap();
        assert_eq!(kept[0], COMPRESSED_EVENTS);
        assert!(
            kept.len() * 3 < value.len(),
            "{} bytes of {}",
            kept.len(),
            value.len()
        );
        let back = decode_events(&kept).unwrap();
        assert_eq!(back.len(), w.log.len());
        for (b, e) in back.iter().zip(&w.log) {
            assert_eq!(b, &**e);
        }
        let inflated = inflate_events(&kept).unwrap();
        assert_eq!(&*inflated, &value[..]);
        for e in &w.log {
            let Subject::Token(t) = &e.subject else {
                continue;
            };
            let id = t.id.as_str().as_bytes();
            assert!(inflated.windows(id.len()).any(|at| at == id), "{}", t.id);
        }

        // A changed byte inside the block may still inflate to events that
        // read (a digit of a time): it only must not panic.
        for at in 5..kept.len() {
            let mut changed = kept.to_vec();
            changed[at] ^= 0xff;
            let _ = decode_events(&changed);
        }
        let mut damaged = vec![kept[..kept.len() - 1].to_vec(), kept[..3].to_vec()];
        for claim in [u32::MAX, value.len() as u32 + 1, value.len() as u32 - 1] {
            let mut v = kept.to_vec();
            v[1..5].copy_from_slice(&claim.to_le_bytes());
            damaged.push(v);
        }
        for (i, v) in damaged.iter().enumerate() {
            assert!(decode_events(v).is_err(), "damage {i} read as events");
        }
    }

    fn layout_revision(tree: &sled::Tree) -> Revision {
        revision(tree).unwrap()
    }
}
