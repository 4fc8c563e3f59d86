//! The sled store's on-disk layout: one tree, keys by prefix, values the
//! JSON records of `record.rs` (whose shapes are the storage format).
//!
//!   `m/format`           → format marker, [`SLED_FORMAT`](crate::store::record::SLED_FORMAT)
//!   `m/revision`         → u64 BE, the last committed revision
//!   `m/page_key`         → 32 random bytes for signing page tokens
//!   `a/<ACC-id>`         → AccountRecord
//!   `t/<TKN-id>`         → TokenRecord (tombstones stay forever: ids are never
//!                          reused); a live token's is `L` + its secret's
//!                          32-byte SHA-256 + the record, so that no other
//!                          key changes when a token is created or deleted
//!   `s/<sha256>`         → TKN-id: formats 1 and 2 only, folded into `t/`
//!                          when such a data dir is opened ([`fold_secrets`])
//!   `e/<u64 BE rev>`     → the retained log: the events of one commit, from
//!                          revision `rev` on: `E`, then each event as
//!                          `[u32 LE length]` + EventRecord; format 2 kept
//!                          one bare EventRecord per key, which reads the
//!                          same. No secret hash: a deleted token's is
//!                          nowhere in sled
//!   `l/<TKN-id>`         → TimeRecord, the last access (not part of the token's revision)
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
//! at open, before either runs.

use std::collections::VecDeque;
use std::time::SystemTime;

use super::{corrupt, io_error};
use crate::domain::{AccountId, Event, Revision, Subject, Token, TokenId};
use crate::error::Error;
use crate::secret::SecretHash;
use crate::state::{Change, SecretOp, State};
use crate::store::record::{self, AccountRecord, EventRecord, Record, TimeRecord, TokenRecord};

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

/// Adds what `change` writes: its record, holding the token's secret hash
/// after the change (`secret`; a deleted token's last access goes too).
/// Its event goes with the commit's others ([`EventLog::append`]).
pub(super) fn write_change(batch: &mut Writes, change: &Change, secret: Option<&SecretHash>) {
    match &change.subject {
        Subject::Token(t) => {
            batch.insert(token_key(&t.id), token_value(t, secret));
            if let SecretOp::Erase(_) = change.secret {
                batch.remove(access_key(&t.id));
            }
        }
        Subject::Account(a) => batch.insert(account_key(&a.id), record::encode::<AccountRecord>(a)),
    }
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

/// The events of one event key's value, in revision order.
pub(super) fn decode_events(value: &[u8]) -> Result<Vec<Event>, Error> {
    let Some((&EVENTS, mut value)) = value.split_first() else {
        // Format 2: one EventRecord, a JSON object.
        return Ok(vec![decode::<EventRecord>("event", value)?]);
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
        payload: impl Into<sled::IVec>,
        retention: u64,
    ) -> Revision {
        // Older than every kept key (or none is kept): trimmed already.
        let trimmed = first <= self.head && self.starts.front().is_none_or(|&f| first < f);
        if !trimmed {
            if let Err(at) = self.starts.binary_search(&first) {
                self.starts.insert(at, first);
            }
            batch.insert(event_key(first), payload);
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
    let mut secrets = Vec::new();
    let tokens = scan(P_TOKEN)?
        .iter()
        .map(|(_, v)| {
            let (t, secret) = decode_token_value(v)?;
            if let Some(h) = secret {
                secrets.push((h, t.id.clone()));
            }
            Ok(t)
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
        assert_eq!(&*tree.get(event_key(4)).unwrap().unwrap(), [9]);
        assert_eq!(log.oldest(), 4);
    }

    /// A commit's events read back, whatever bytes their lengths make:
    /// one of 123 bytes starts with `{`, as format 2's bare record does.
    #[test]
    fn events_read_back_whatever_their_lengths() {
        use crate::domain::AccountType;
        use crate::state::testkit::World;
        let mut w = World::default();
        let acc = w.account(AccountType::Client, &["commerce"]);
        for _ in 0..3 {
            w.token(&acc, &["commerce"]);
        }
        let encoded: Vec<Vec<u8>> = w
            .log
            .iter()
            .map(|e| record::encode::<EventRecord>(e))
            .collect();
        let value = encode_events(encoded.iter().map(|e| &e[..]));
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

    fn layout_revision(tree: &sled::Tree) -> Revision {
        revision(tree).unwrap()
    }
}
