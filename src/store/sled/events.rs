//! The retained event log in sled: under `e/<u64 BE rev>`, the events of
//! one run of commits (those the applier applies together, `sled/apply.rs`;
//! one commit each when the log is replayed at open), from revision `rev`
//! on, as one value.
//!
//! A commit's value: `Z`, the length (`u32` LE), then LZ4 of `E` and each
//! event as `[u32 LE length]` + its EventRecord. Formats 3 to 7 kept the
//! `E` value uncompressed and format 2 one bare EventRecord per key: all
//! three read as one log. No secret hash: a deleted token's is nowhere in
//! sled. One key per run, not per event or commit: a sled insert or remove
//! costs several microseconds whatever its size, and a run of 30 deletes
//! then writes one event key and removes at most a few old ones instead of
//! 30 of each. A batch's events are never split between keys: a commit's
//! events are kept or dropped together. A reader finds a revision in the
//! last key at or before it, whatever that key's run held.
//!
//! Owns the event keys, encoding and reading a commit's value, and which
//! keys are kept ([`EventLog`]: a new commit's key, the trim of commits
//! past retention, the revision counter after them). It must never write
//! to sled itself: what it decides goes into the commit's [`Writes`],
//! which only the applier thread and the replay at open apply
//! (`sled/apply.rs`).

use std::borrow::Cow;
use std::collections::VecDeque;

use super::layout::{K_REVISION, Writes, decode};
use super::{corrupt, io_error, lz4};
use crate::domain::{Event, Revision};
use crate::error::Error;
use crate::store::record::EventRecord;

const P_EVENT: &[u8] = b"e/";

/// Big-endian, so that sled's key order is revision order.
pub(super) fn event_key(rev: Revision) -> Vec<u8> {
    [P_EVENT, &rev.to_be_bytes()[..]].concat()
}

pub(super) fn decode_event_key(k: &[u8]) -> Result<Revision, Error> {
    k.get(P_EVENT.len()..)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt("event key", format!("{k:?}")))
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

/// An [`encode_events`] value as sled keeps it: what the applier writes
/// ([`Writes::insert_encoded`]).
fn compress_events(value: &[u8]) -> Vec<u8> {
    lz4::compress(COMPRESSED_EVENTS, value)
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
    lz4::inflate(value, MAX_EVENTS_BYTES)
        .map(Cow::Owned)
        .map_err(|why| corrupt("event log", format!("a compressed commit: {why}")))
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

/// Which event keys sled holds: the first revision of each key's events,
/// oldest first. The applier thread alone adds and removes them (and the
/// replay at open, before it), so it knows which keys a trim removes
/// without reading sled.
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

    /// Ends the writes of consecutive batches of events, each event encoded
    /// (`batches`, in revision order, the last event at revision `last`; a
    /// run of batches, or one): their event keys (one, and another between
    /// two batches once a key's events would pass [`KEY_BYTES`] or a
    /// sixteenth of `retention`: a batch's events, whole commits, stay in
    /// one key), the removal of every key that lies wholly before the
    /// newest `retention` events (a key that straddles the line stays
    /// whole: the log keeps up to a key more than `retention`), then the
    /// revision counter, last. Returns the oldest revision kept after it.
    /// Events applied again (the replay at open) are written again only
    /// where their key is still kept.
    pub(super) fn append(
        &mut self,
        writes: &mut Writes,
        batches: &[Vec<&[u8]>],
        last: Revision,
        retention: u64,
    ) -> Revision {
        let count: usize = batches.iter().map(Vec::len).sum();
        let mut first = (last + 1).saturating_sub(count as Revision);
        for key in key_chunks(batches, (retention / 16).max(1)) {
            let n = key.iter().map(|b| b.len()).sum::<usize>() as Revision;
            // Older than every kept key (or none is kept): trimmed already.
            let trimmed = first <= self.head && self.starts.front().is_none_or(|&f| first < f);
            if !trimmed {
                if let Err(at) = self.starts.binary_search(&first) {
                    self.starts.insert(at, first);
                }
                let value = encode_events(key.iter().flatten().copied());
                writes.insert_encoded(event_key(first), value, compress_events);
            }
            first += n;
        }
        self.head = self.head.max(last);
        let keep_from = (self.head + 1).saturating_sub(retention).max(1);
        while self.starts.len() >= 2 && self.starts[1] <= keep_from {
            let gone = self.starts.pop_front().expect("two or more");
            writes.remove(event_key(gone));
        }
        writes.insert(K_REVISION.to_vec(), &self.head.to_be_bytes()[..]);
        self.oldest()
    }
}

/// The most event bytes (before compression) one key takes, but for a
/// single larger batch. sled writes a page of over 128 KiB to a file of its
/// own (`sled/files.rs`), and a page of event keys holds up to 17 of them:
/// compressed to a fifth or less (a tenth, for tokens made alike), keys of
/// this size keep such pages inline. A run of 30 deletes (some 14 KB) is
/// one key.
const KEY_BYTES: usize = 32 << 10;

/// `batches` cut into the batches of each key, in order: as many as fit in
/// [`KEY_BYTES`] and `most` events, at least one.
fn key_chunks<'b, 'a>(
    batches: &'b [Vec<&'a [u8]>],
    most: u64,
) -> impl Iterator<Item = &'b [Vec<&'a [u8]>]> {
    let mut rest = batches;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (mut bytes, mut events) = (0, 0);
        let n = rest
            .iter()
            .take_while(|b| {
                bytes += b.iter().map(|e| e.len() + 4).sum::<usize>();
                events += b.len() as u64;
                bytes <= KEY_BYTES && events <= most
            })
            .count()
            .max(1);
        let (key, after) = rest.split_at(n);
        rest = after;
        Some(key)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Subject;
    use crate::store::record;
    use crate::store::sled::layout::revision;

    fn tree() -> sled::Tree {
        let db = sled::Config::new().temporary(true).open().unwrap();
        db.open_tree("t").unwrap()
    }

    fn keys(tree: &sled::Tree) -> Vec<Revision> {
        let log = EventLog::load(tree, 0).unwrap();
        log.starts.into_iter().collect()
    }

    /// Commits `first..=last` (events of one byte) and applies their writes,
    /// keeping `retention` events.
    fn commit(
        log: &mut EventLog,
        tree: &sled::Tree,
        (first, last): (Revision, Revision),
        retention: u64,
    ) -> Revision {
        let mut writes = Writes::default();
        let body = [first as u8];
        let events = vec![&body[..]; (last + 1 - first) as usize];
        let oldest = log.append(&mut writes, &[events], last, retention);
        writes.apply(tree).unwrap();
        oldest
    }

    /// Batches of one event each, one byte long.
    fn singles(n: usize) -> Vec<Vec<&'static [u8]>> {
        vec![vec![&b"e"[..]]; n]
    }

    #[test]
    fn whole_keys_go_once_all_their_events_are_past_retention() {
        let tree = tree();
        let mut log = EventLog::load(&tree, 0).unwrap();
        assert_eq!(log.oldest(), 1);
        // Keys of up to 4 events (a sixteenth of 64).
        assert_eq!(commit(&mut log, &tree, (1, 3), 64), 1);
        assert_eq!(commit(&mut log, &tree, (4, 5), 64), 1);
        let mut writes = Writes::default();
        assert_eq!(log.append(&mut writes, &singles(61), 66, 64), 1);
        writes.apply(&tree).unwrap();
        assert_eq!(keys(&tree)[..4], [1, 4, 6, 10]);
        // Keep from 4 on: the first key goes.
        assert_eq!(commit(&mut log, &tree, (67, 67), 64), 4);
        // Keep from 5 on: the key of 4 and 5 holds 5, so it stays whole.
        assert_eq!(commit(&mut log, &tree, (68, 68), 64), 4);
        // Keep from 6 on: it goes.
        assert_eq!(commit(&mut log, &tree, (69, 69), 64), 6);
        assert_eq!(keys(&tree)[..2], [6, 10]);
        assert_eq!(revision(&tree).unwrap(), 69);
        // With a retention of 4, one batch a key, each whole: keep from 2
        // on, and the first holds 2 and 3.
        let tree = self::tree();
        let mut log = EventLog::load(&tree, 0).unwrap();
        assert_eq!(commit(&mut log, &tree, (1, 3), 4), 1);
        assert_eq!(commit(&mut log, &tree, (4, 5), 4), 1);
        assert_eq!(keys(&tree), [1, 4]);
    }

    #[test]
    fn a_replayed_commit_is_written_again_only_while_kept() {
        let tree = tree();
        let mut log = EventLog::load(&tree, 0).unwrap();
        for commit_of in [(1, 3), (4, 5), (6, 6), (7, 8)] {
            commit(&mut log, &tree, commit_of, 4);
        }
        // The replay at open: sled is at 8 and holds 4, 6 and 7.
        let mut log = EventLog::load(&tree, 8).unwrap();
        let mut writes = Writes::default();
        log.append(&mut writes, &[vec![&[9][..]; 3]], 3, 4);
        log.append(&mut writes, &[vec![&[9][..]; 2]], 5, 4);
        writes.apply(&tree).unwrap();
        assert_eq!(keys(&tree), [4, 6, 7], "the trimmed commit stays gone");
        let kept = tree.get(event_key(4)).unwrap().unwrap();
        assert_eq!(
            &*inflate_events(&kept).unwrap(),
            encode_events([&[9][..]; 2])
        );
        assert_eq!(log.oldest(), 4);
    }

    /// A run's batches are cut into keys of at most [`KEY_BYTES`] (one
    /// larger batch has a key of its own, never split) and a sixteenth of
    /// retention, each holding the revisions from its key's on: read back
    /// in order, none missing, none twice; a trim removes whole keys.
    #[test]
    fn many_events_are_cut_into_keys_that_read_back_in_order() {
        let tree = tree();
        let mut log = EventLog::load(&tree, 0).unwrap();
        // Revisions 1..=10 of 10 KB, 11 of 40 KB, 12 of 1 byte.
        let bodies: Vec<Vec<u8>> = (1..=12u8)
            .map(|r| match r {
                11 => vec![r; 40 << 10],
                12 => vec![r],
                _ => vec![r; 10 << 10],
            })
            .collect();
        let events: Vec<&[u8]> = bodies.iter().map(|b| &b[..]).collect();
        let batches: Vec<Vec<&[u8]>> = events.iter().map(|e| vec![*e]).collect();
        let mut writes = Writes::default();
        assert_eq!(log.append(&mut writes, &batches, 12, 100), 1);
        writes.apply(&tree).unwrap();
        // Three 10 KB events fit in 32 KiB, a fourth does not.
        assert_eq!(keys(&tree), [1, 4, 7, 10, 11, 12]);
        let mut read = Vec::new();
        for item in tree.scan_prefix(P_EVENT) {
            let (k, v) = item.unwrap();
            let value = inflate_events(&v).unwrap();
            let mut rest = &value[1..];
            let mut n = decode_event_key(&k).unwrap();
            while !rest.is_empty() {
                let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
                assert_eq!(&rest[4..4 + len], events[n as usize - 1], "revision {n}");
                read.push(n);
                rest = &rest[4 + len..];
                n += 1;
            }
        }
        assert_eq!(read, (1..=12).collect::<Vec<_>>());
        // Keep the newest 6 (7 on): the keys wholly before it go.
        let mut writes = Writes::default();
        assert_eq!(log.append(&mut writes, &[vec![&b"13"[..]]], 13, 7), 7);
        writes.apply(&tree).unwrap();
        assert_eq!(keys(&tree), [7, 10, 11, 12, 13]);
        // Small events, but at most a sixteenth of retention (32) a key.
        let mut writes = Writes::default();
        log.append(&mut writes, &singles(5), 18, 32);
        writes.apply(&tree).unwrap();
        assert_eq!(keys(&tree), [7, 10, 11, 12, 13, 14, 16, 18]);
        // One batch past both bounds is one key all the same: a commit's
        // events stay together.
        let mut writes = Writes::default();
        let big = vec![&bodies[0][..]; 10];
        log.append(&mut writes, &[big], 28, 32);
        writes.apply(&tree).unwrap();
        assert_eq!(keys(&tree)[7..], [18, 19]);
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
        let (w, encoded, value) = events_of_tokens(20);
        let tree = tree();
        let mut log = EventLog::load(&tree, 0).unwrap();
        let mut writes = Writes::default();
        let last = w.log.last().unwrap().revision;
        let encoded: Vec<&[u8]> = encoded.iter().map(|e| &e[..]).collect();
        log.append(&mut writes, &[encoded], last, 1000);
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
}
