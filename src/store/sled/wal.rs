//! The write-ahead log: what makes a commit durable on the embedded store.
//!
//! A committed batch is one record appended to the current segment and made
//! durable with one `fdatasync`; only then is it answered. sled gets the
//! same batch afterwards, in memory, and is flushed to disk in the
//! background now and then (a checkpoint, `sled/apply.rs`), after which the
//! segments it covers are deleted. At open, every record past sled's last
//! revision is applied again. This is etcd's shape: its WAL makes a request
//! durable, its bbolt backend commits in the background.
//!
//! Layout: `wal/<first sequence, 16 hex digits>.wal`, each a run of records
//!
//!   `[u32 LE payload length][u32 LE crc32 of payload][payload]`
//!
//! ending where zeros start: a segment is allocated [`PREALLOCATE`] bytes
//! ahead when it is made, since an `fdatasync` that must also record a
//! larger file size costs a third more (an extra journal commit on ext4).
//! A record never has a zero length, so the zeros cannot be mistaken for one.
//!
//! and a payload is the batch's entries, each
//!
//!   `[u8 secret op: 0 keep, 1 set, 2 erase][32 bytes unless keep]`
//!   `[u32 LE length][the event, an `EventRecord` of `record.rs`]`
//!
//! or, from format 9 on (`sled/format.rs`), usually those entries
//! compressed: `Z`, then their length and an LZ4 block (`sled/lz4.rs`).
//! The events are JSON, about 600 bytes for a deletion, most of it field
//! names and values its batch repeats; compressed, a batch of 4 takes a
//! quarter of the bytes, of 9 a sixth. On ext4 an `fdatasync` that must
//! also record a new block of the preallocated space (the first write to
//! it) costs more than half as much again as one that does not (a median
//! of 74 to 93 µs against 43 to 56 on this machine kind, in
//! `scripts/sync-cost.py`'s runs): fewer bytes per batch, fewer of those.
//!
//! where the 32 bytes of a set are the secret's hash, and those of an
//! erase are zeros: a deletion writes no hash back to disk (the token's
//! creation, long checkpointed away, may have been the last record to hold
//! it). tokend up to 5428c58 wrote the erased hash there; it is read and
//! ignored, and those versions read the zeros as an erase as well.
//!
//! The segment after the one written to is made ahead of its use, off the
//! commit path (`wal/spare.rs`): the directory usually ends in one of
//! zeros. So a torn write is looked for in the last segment that holds
//! anything, and open writes next to a last segment of zeros. The price:
//! for the moment between a rotation and the checkpoint that deletes the
//! closed segment (milliseconds; for good if that checkpoint fails), a
//! damaged last record of the closed segment (answered, so damage on the
//! disk, not a torn write) looks like a torn one to open, and is cut off
//! and kept aside instead of refused.
//!
//! Owns segment files, framing, checksums and reading them back, including
//! the repair of a torn tail (a batch whose write was cut short by a crash:
//! never answered, so dropped, its bytes kept aside in `<segment>.torn`).
//! It must never drop a record that is followed by an intact one (that is
//! corruption, refused at open), never write to a segment whose directory
//! entry may not be durable, never overwrite bytes it kept aside, and never
//! know about sled or the state.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::lz4;
use crate::secret::SecretHash;
use crate::state::SecretOp;

pub(super) use self::spare::Spare;

mod spare;

/// A record longer than this is corruption, not a batch (1024 commands of
/// at most a few KiB each fit many times over).
const MAX_RECORD: usize = 256 << 20;
const HEADER: usize = 8;
/// Tags a compressed payload: its entries, LZ4-compressed (`sled/lz4.rs`).
/// An entry starts with its secret op (0, 1 or 2), so a payload of
/// format 8 and before, never compressed, cannot start with it.
const COMPRESSED: u8 = b'Z';
/// Bytes allocated for a segment when it is made: more than a checkpoint
/// interval's appends at full speed. Past it, appends grow the file.
const PREALLOCATE: u64 = 4 << 20;

/// One committed change as read back from the log: what sled needs to apply
/// it again. `event` holds the encoded event (record, kind, time, actor).
pub(super) struct Entry {
    pub(super) secret: SecretOp,
    pub(super) event: Vec<u8>,
}

/// The segment being appended to (the log's directory is the spare's).
pub(super) struct Wal {
    current: File,
    /// The sequence number of the current segment (its file name).
    sequence: u64,
    /// Bytes of records in the current segment: where the next one goes.
    len: u64,
    /// The next segment, made ahead by the applier thread.
    spare: Arc<Spare>,
}

fn segment_name(sequence: u64) -> String {
    format!("{sequence:016x}.wal")
}

/// The segments in `dir`, oldest first.
fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let sequence = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| u64::from_str_radix(n, 16).ok());
        if let Some(sequence) = sequence {
            found.push((sequence, path));
        }
    }
    found.sort();
    Ok(found)
}

/// The last of `found` that holds a byte other than zero, and its bytes:
/// where a torn write can be. None if every one is zeros (or there are
/// none).
fn last_written(found: &[(u64, PathBuf)]) -> io::Result<Option<(usize, Vec<u8>)>> {
    for (i, (_, path)) in found.iter().enumerate().rev() {
        let bytes = std::fs::read(path)?;
        if bytes.iter().any(|&b| b != 0) {
            return Ok(Some((i, bytes)));
        }
    }
    Ok(None)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn corrupt(path: &Path, offset: u64, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} at byte {offset}: {what}", path.display()),
    )
}

impl Wal {
    /// Opens the log in `dir` (created if missing) and reads back every
    /// intact batch, oldest first. A torn tail of the last segment that
    /// holds anything is cut off; anything else that does not check out is
    /// an error. Appends go to a last segment of zeros (one made ahead,
    /// `wal/spare.rs`), else to a new one; the next is made ahead at once.
    pub(super) fn open(dir: &Path) -> io::Result<(Wal, Vec<Vec<Entry>>)> {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            // The directory's own entry must survive a power loss too.
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let found = segments(dir)?;
        // Those after it hold only zeros: made ahead and not written to, or
        // written to by nothing that reached the disk.
        let (written, last) = last_written(&found)?.unzip();
        let mut batches = Vec::new();
        for (_, path) in &found[..written.unwrap_or(0)] {
            read_segment(path, &std::fs::read(path)?, false, &mut batches)?;
        }
        if let (Some(w), Some(bytes)) = (written, last) {
            read_segment(&found[w].1, &bytes, true, &mut batches)?;
        }
        let (sequence, current) = match found.last() {
            // Its directory entry may not be durable yet (a kill between its
            // creation and its directory's sync): the next one's creation,
            // below, syncs the directory before anything is written to it.
            Some((sequence, path)) if written.is_none_or(|w| w + 1 < found.len()) => {
                (*sequence, OpenOptions::new().write(true).open(path)?)
            }
            last => {
                let sequence = last.map_or(0, |(s, _)| s + 1);
                (sequence, create_segment(dir, sequence)?)
            }
        };
        let spare = Arc::new(Spare::new(dir.to_path_buf(), sequence));
        spare.prepare()?;
        let wal = Wal {
            current,
            sequence,
            len: 0,
            spare,
        };
        Ok((wal, batches))
    }

    /// Appends one batch's payload ([`push_entry`]'s) and waits until it
    /// is on disk.
    pub(super) fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        // The fault suite's refused write (tests/wal.rs): after the given
        // milliseconds, so that more commands queue behind this batch.
        fail::fail_point!("sled-wal-append-fails", |ms: Option<String>| {
            let ms = ms.and_then(|m| m.parse().ok()).unwrap_or(0);
            std::thread::sleep(std::time::Duration::from_millis(ms));
            Err(io::Error::other(
                "refused by the sled-wal-append-fails fail point",
            ))
        });
        let record = frame(payload);
        // One write, so that a crash leaves at most this record torn.
        self.current.write_all_at(&record, self.len)?;
        // The power-cut suite's proof that it can fail: with this sync
        // skipped, a SIGKILL loses nothing but a power cut does.
        if !skip_sync() {
            self.current.sync_data()?;
        }
        self.len += record.len() as u64;
        Ok(())
    }

    /// Bytes in the current segment.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// Starts a new segment; returns the sequence number below which every
    /// segment is now closed (what [`Wal::remove_before`] may delete once
    /// the store holds all they hold).
    pub(super) fn rotate(&mut self) -> io::Result<u64> {
        let next = self.sequence + 1;
        // On failure the caller stops writing (a directory sync that failed
        // cannot be retried safely); the next open syncs the directory again
        // before it writes to `next`, or starts after it.
        self.current = self.spare.take(next)?;
        self.sequence = next;
        self.len = 0;
        Ok(next)
    }

    /// Deletes the closed segments below `sequence`. Run once the store has
    /// flushed every batch they hold; a crash half-way leaves some of them,
    /// whose batches the store already has and open skips.
    pub(super) fn remove_before(dir: &Path, sequence: u64) -> io::Result<()> {
        for (s, path) in segments(dir)? {
            if s < sequence {
                std::fs::remove_file(path)?;
            }
        }
        sync_dir(dir)
    }

    /// The log's directory.
    pub(super) fn dir(&self) -> &Path {
        self.spare.dir()
    }

    /// Where the applier makes the next segment ahead of its use.
    pub(super) fn spare(&self) -> Arc<Spare> {
        self.spare.clone()
    }

    /// The current segment's sequence number: every older one is closed.
    pub(super) fn sequence(&self) -> u64 {
        self.sequence
    }
}

/// The record that holds `payload`: compressed ([`COMPRESSED`]) when that
/// makes it smaller, as it does for every batch but the smallest.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(HEADER + payload.len());
    record.resize(HEADER, 0);
    lz4::compress_into(COMPRESSED, payload, &mut record);
    if record.len() >= HEADER + payload.len() {
        record.truncate(HEADER);
        record.extend_from_slice(payload);
    }
    let stored = (record.len() - HEADER) as u32;
    let crc = crc32fast::hash(&record[HEADER..]);
    record[0..4].copy_from_slice(&stored.to_le_bytes());
    record[4..8].copy_from_slice(&crc.to_le_bytes());
    record
}

/// Adds one change, its secret op and encoded event, to a batch's payload.
pub(super) fn push_entry(payload: &mut Vec<u8>, secret: &SecretOp, event: &[u8]) {
    match secret {
        SecretOp::Keep => payload.push(0),
        SecretOp::Set(h) => {
            payload.push(1);
            payload.extend_from_slice(h);
        }
        SecretOp::Erase => {
            payload.push(2);
            payload.extend_from_slice(&[0; 32]);
        }
    }
    payload.extend_from_slice(&(event.len() as u32).to_le_bytes());
    payload.extend_from_slice(event);
}

/// A batch as the log holds it: each change's secret op and encoded event.
#[cfg(test)]
fn encode_payload<'a>(entries: impl IntoIterator<Item = (&'a SecretOp, &'a [u8])>) -> Vec<u8> {
    let mut payload = Vec::new();
    for (secret, event) in entries {
        push_entry(&mut payload, secret, event);
    }
    payload
}

/// The power-cut suite's proof that it can fail (RELIABILITY.md): with the
/// log's sync skipped, a SIGKILL still loses nothing, a power cut does.
fn skip_sync() -> bool {
    fail::fail_point!("sled-wal-skip-sync", |_| true);
    false
}

/// A new segment of zeros, allocated ahead (where the file system can),
/// durable in its directory before anything relies on it.
fn create_segment(dir: &Path, sequence: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(dir.join(segment_name(sequence)))?;
    // Only an optimisation: a file system without fallocate grows the file
    // as it is written.
    let _ = rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, PREALLOCATE);
    sync_dir(dir)?;
    Ok(file)
}

/// Reads the batches of one segment (`bytes`, read from `path`) into
/// `out`, up to where only zeros are left (the preallocated rest). A record that does not check out (cut
/// short, a length that cannot be, a checksum that fails)
/// is a torn write only in the `last` segment that holds anything (those
/// after it are zeros, made ahead) and only when no intact record follows
/// it at any offset: the torn batch was the last append and never
/// answered. Its bytes are set aside in `<segment>.torn` and the
/// segment is cut back to before it. Anything else is corruption: refused,
/// and nothing is changed.
fn read_segment(
    path: &Path,
    bytes: &[u8],
    last: bool,
    out: &mut Vec<Vec<Entry>>,
) -> io::Result<()> {
    let mut at = 0usize;
    while at < bytes.len() {
        match check_record(&bytes[at..]) {
            Ok((payload, size)) => {
                let entries = parse_payload(payload).map_err(|w| corrupt(path, at as u64, &w))?;
                out.push(entries);
                at += size;
            }
            Err(_) if bytes[at..].iter().all(|&b| b == 0) => return Ok(()),
            Err(what) => {
                let intact_after = (at + 1..bytes.len()).any(|o| check_record(&bytes[o..]).is_ok());
                if !last || intact_after {
                    return Err(corrupt(path, at as u64, what));
                }
                // Kept before the warning names it, so that the file named exists.
                let aside = keep_aside(path, &bytes[at..])?;
                tracing::warn!(
                    segment = %path.display(),
                    offset = at,
                    dropped_bytes = bytes.len() - at,
                    kept_aside = %aside.display(),
                    "write-ahead log ends in a torn write (a batch never answered); cutting it \
                     off (the bytes kept aside can hold secret hashes: delete them once read)"
                );
                let file = OpenOptions::new().write(true).open(path)?;
                file.set_len(at as u64)?;
                file.sync_all()?;
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Writes `torn` to `<segment>.torn`, or `.torn.1`, `.torn.2`, … when one
/// is there already: a segment cut back to nothing may be written to again
/// (open writes next to a last segment of zeros) and torn again.
fn keep_aside(segment: &Path, torn: &[u8]) -> io::Result<PathBuf> {
    for n in 0u32.. {
        let mut aside = segment.as_os_str().to_owned();
        aside.push(".torn");
        if n > 0 {
            aside.push(format!(".{n}"));
        }
        let aside = PathBuf::from(aside);
        match OpenOptions::new().write(true).create_new(true).open(&aside) {
            Ok(mut f) => {
                io::Write::write_all(&mut f, torn)?;
                return Ok(aside);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    unreachable!("a free name among 2^32")
}

/// The payload of the record at the start of `bytes` and the record's
/// size, or what is wrong with it.
fn check_record(bytes: &[u8]) -> Result<(&[u8], usize), &'static str> {
    if bytes.len() < HEADER {
        return Err("a record header cut short");
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_RECORD {
        return Err("an impossible record length");
    }
    let Some(payload) = bytes.get(HEADER..HEADER + len) else {
        return Err("a record cut short");
    };
    if crc32fast::hash(payload) != crc {
        return Err("a record that fails its checksum");
    }
    Ok((payload, HEADER + len))
}

/// The entries of a record's payload: written by [`push_entry`], and
/// compressed by [`frame`] or not.
fn parse_payload(p: &[u8]) -> Result<Vec<Entry>, String> {
    match p.split_first() {
        Some((&COMPRESSED, framed)) => {
            let inflated = lz4::inflate(framed, MAX_RECORD)
                .map_err(|why| format!("a compressed record that does not inflate: {why}"))?;
            parse_entries(&inflated)
        }
        _ => parse_entries(p),
    }
}

fn parse_entries(mut p: &[u8]) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    let take = |p: &mut &[u8], n: usize| -> Result<Vec<u8>, String> {
        if p.len() < n {
            return Err("an entry cut short inside a checked record".into());
        }
        let (head, rest) = p.split_at(n);
        *p = rest;
        Ok(head.to_vec())
    };
    while !p.is_empty() {
        let op = take(&mut p, 1)?[0];
        let mut hash = || -> Result<SecretHash, String> {
            Ok(take(&mut p, 32)?.try_into().expect("32 bytes"))
        };
        let secret = match op {
            0 => SecretOp::Keep,
            1 => SecretOp::Set(hash()?),
            2 => {
                hash()?;
                SecretOp::Erase
            }
            other => return Err(format!("unknown secret op {other}")),
        };
        let len = u32::from_le_bytes(take(&mut p, 4)?.try_into().expect("4 bytes")) as usize;
        let event = take(&mut p, len)?;
        entries.push(Entry { secret, event });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests;
