//! The sled store's on-disk layout: one tree, keys by prefix, values the
//! JSON records of `record.rs` (whose shapes are the storage format).
//!
//!   `m/format`           → format marker, [`SLED_FORMAT`](crate::store::record::SLED_FORMAT)
//!   `m/revision`         → u64 BE, the last committed revision
//!   `m/page_key`         → 32 random bytes for signing page tokens
//!   `a/<ACC-id>`         → AccountRecord
//!   `t/<TKN-id>`         → TokenRecord (tombstones stay forever: ids are never reused)
//!   `s/<sha256>`         → TKN-id, live tokens only (deletion removes it)
//!   `e/<u64 BE rev>`     → EventRecord, the retained log
//!   `l/<TKN-id>`         → TimeRecord, the last access (not part of the token's revision)
//!
//! Owns building and parsing these keys, the sled batch a committed change
//! becomes (the same on the commit path and when the write-ahead log is
//! replayed at open), and reading the whole layout back into a [`State`]
//! at open. It must never apply a batch itself: only the applier thread and
//! the replay at open do (`sled/apply.rs`).

use std::time::SystemTime;

use super::{corrupt, io_error};
use crate::domain::{AccountId, Revision, Subject, TokenId};
use crate::error::Error;
use crate::secret::SecretHash;
use crate::state::{Change, SecretOp, State};
use crate::store::record::{self, AccountRecord, Record, TimeRecord, TokenRecord};

pub(super) const K_FORMAT: &[u8] = b"m/format";
pub(super) const K_REVISION: &[u8] = b"m/revision";
pub(super) const K_PAGE_KEY: &[u8] = b"m/page_key";
const P_ACCOUNT: &[u8] = b"a/";
const P_TOKEN: &[u8] = b"t/";
const P_SECRET: &[u8] = b"s/";
pub(super) const P_EVENT: &[u8] = b"e/";
const P_ACCESS: &[u8] = b"l/";

fn key(prefix: &[u8], id: &[u8]) -> Vec<u8> {
    [prefix, id].concat()
}

pub(super) fn account_key(id: &AccountId) -> Vec<u8> {
    key(P_ACCOUNT, id.as_str().as_bytes())
}

pub(super) fn token_key(id: &TokenId) -> Vec<u8> {
    key(P_TOKEN, id.as_str().as_bytes())
}

pub(super) fn secret_key(hash: &SecretHash) -> Vec<u8> {
    key(P_SECRET, hash)
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

/// The writes of one commit, applied to sled one by one, in order. Not a
/// `sled::Batch`: sled 0.34 writes out its log buffer twice for every batch
/// (a write and a thread-pool wake-up each), and atomicity is the
/// write-ahead log's job here. Every write sets a key to its value after
/// the commit (or removes it), so applying them again, in log order, is
/// harmless: what replay at open does.
#[derive(Default)]
pub(super) struct Writes(Vec<(Vec<u8>, Option<sled::IVec>)>);

impl Writes {
    pub(super) fn insert(&mut self, key: Vec<u8>, value: impl Into<sled::IVec>) {
        self.0.push((key, Some(value.into())));
    }

    pub(super) fn remove(&mut self, key: Vec<u8>) {
        self.0.push((key, None));
    }

    pub(super) fn apply(self, tree: &sled::Tree) -> sled::Result<()> {
        for (key, value) in self.0 {
            match value {
                Some(v) => tree.insert(key, v)?,
                None => tree.remove(key)?,
            };
        }
        Ok(())
    }
}

/// Adds what `change`, committed at `revision`, writes: its record, the
/// secret index entry it sets or erases (with a deleted token's last
/// access), and its event, already encoded.
pub(super) fn write_change(
    batch: &mut Writes,
    change: &Change,
    revision: Revision,
    event: impl Into<sled::IVec>,
) {
    match &change.subject {
        Subject::Token(t) => {
            batch.insert(token_key(&t.id), record::encode::<TokenRecord>(t));
            match &change.secret {
                SecretOp::Set(hash) => batch.insert(secret_key(hash), t.id.as_str().as_bytes()),
                SecretOp::Erase(hash) => {
                    batch.remove(secret_key(hash));
                    batch.remove(access_key(&t.id));
                }
                SecretOp::Keep => {}
            }
        }
        Subject::Account(a) => batch.insert(account_key(&a.id), record::encode::<AccountRecord>(a)),
    }
    batch.insert(event_key(revision), event);
}

/// Ends a batch that commits up to `head`: the removal of events beyond the
/// newest `retention` (from `oldest`, the oldest one kept so far), then the
/// revision counter, last. Returns the oldest revision kept after it.
pub(super) fn finish_batch(
    batch: &mut Writes,
    head: Revision,
    oldest: Revision,
    retention: u64,
) -> Revision {
    let keep_from = (head + 1).saturating_sub(retention).max(1).max(oldest);
    for rev in oldest..keep_from {
        batch.remove(event_key(rev));
    }
    batch.insert(K_REVISION.to_vec(), &head.to_be_bytes()[..]);
    keep_from
}

/// The last committed revision, as sled holds it.
pub(super) fn revision(tree: &sled::Tree) -> Result<Revision, Error> {
    tree.get(K_REVISION)
        .map_err(|e| io_error("reading", e))?
        .and_then(|v| v.as_ref().try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt("revision counter", "missing"))
}

/// The oldest event kept (`head + 1` when none is).
pub(super) fn oldest_event(tree: &sled::Tree, head: Revision) -> Result<Revision, Error> {
    match tree.scan_prefix(P_EVENT).next() {
        Some(Ok((k, _))) => decode_event_key(&k),
        Some(Err(e)) => Err(io_error("reading the event log", e)),
        None => Ok(head + 1),
    }
}

/// The value stored as record `R`; `what` names it in the error.
pub(super) fn decode<'a, R>(what: &str, v: &'a [u8]) -> Result<R::Domain, Error>
where
    R: Record<'a> + serde::Deserialize<'a>,
{
    record::decode::<R>(v).map_err(|e| corrupt(what, e))
}

pub(super) type Restored = (State, Vec<(TokenId, SystemTime)>);

/// Every record, the secret index and the last-access times, as the state
/// at the last committed revision.
pub(super) fn restore(tree: &sled::Tree) -> Result<Restored, Error> {
    let revision = revision(tree)?;
    let scan = |prefix: &[u8]| -> Result<Vec<(sled::IVec, sled::IVec)>, Error> {
        tree.scan_prefix(prefix)
            .collect::<Result<_, _>>()
            .map_err(|e| io_error("reading", e))
    };
    let accounts = scan(P_ACCOUNT)?
        .iter()
        .map(|(_, v)| decode::<AccountRecord>("account", v))
        .collect::<Result<Vec<_>, _>>()?;
    let tokens = scan(P_TOKEN)?
        .iter()
        .map(|(_, v)| decode::<TokenRecord>("token", v))
        .collect::<Result<Vec<_>, _>>()?;
    let secrets = scan(P_SECRET)?
        .iter()
        .map(|(k, v)| {
            let hash = k[P_SECRET.len()..]
                .try_into()
                .map_err(|_| corrupt("secret index", "bad hash length"))?;
            let id = TokenId::parse(&String::from_utf8_lossy(v))
                .map_err(|e| corrupt("secret index", e))?;
            Ok((hash, id))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let access = scan(P_ACCESS)?
        .iter()
        .map(|(k, v)| {
            let id = TokenId::parse(&String::from_utf8_lossy(&k[P_ACCESS.len()..]))
                .map_err(|e| corrupt("access log", e))?;
            Ok((id, decode::<TimeRecord>("access time", v)?))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    Ok((State::restore(revision, accounts, tokens, secrets), access))
}
