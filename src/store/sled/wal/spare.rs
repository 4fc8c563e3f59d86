//! The next log segment, made before the writer needs it.
//!
//! Making a segment is a file created, its space allocated and its
//! directory synced, so that a power cut cannot lose the file under
//! records already answered. On this machine kind that took a median of
//! 0.3–0.6 ms and up to 4.5 ms, most of it the directory's sync. The
//! writer closes a segment at every checkpoint, ten times a second under
//! load, and it did so holding the log: every commit behind it waited. etcd's
//! WAL makes its next file ahead in the background (its file pipeline); so
//! does this. The applier thread makes the segment after the one being
//! written once it has finished a checkpoint (and `Wal::open` makes the
//! first). The writer's rotation then only takes that file. The writer
//! rotates only once the last checkpoint is done (`checkpoint_busy`), and
//! with it this, so one is ready at every rotation of a store that is not
//! poisoned (a failure here poisons it); were none ready, the rotation
//! would make its own, as it did before.
//!
//! So the log's directory usually holds one segment past the one written to,
//! all zeros. `Wal::open` knows that: a torn write can only be in the last
//! segment that holds anything, and a last segment of zeros is written to
//! next.
//!
//! Owns the log's directory (the applier's checkpoints delete segments in
//! it), the one spare segment, and a copy of the writer's current sequence
//! number that the rotation keeps in step. It must never make a segment the
//! writer has already started (it makes the one after the writer's current,
//! under the same lock the rotation takes), and never hand over a segment
//! whose directory entry is not yet durable.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::create_segment;

/// Shared by the writer (its `Wal`) and the applier thread.
pub(in crate::store::sled) struct Spare {
    dir: PathBuf,
    slot: Mutex<Slot>,
}

struct Slot {
    /// The segment the writer appends to.
    current: u64,
    /// A segment made ahead: always `current + 1`, until the writer takes it.
    ready: Option<(u64, File)>,
}

impl Spare {
    /// No spare yet; the writer appends to segment `current` of `dir`.
    pub(super) fn new(dir: PathBuf, current: u64) -> Spare {
        Spare {
            dir,
            slot: Mutex::new(Slot {
                current,
                ready: None,
            }),
        }
    }

    /// The log's directory.
    pub(in crate::store::sled) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes the segment after the writer's current one, unless it is
    /// ready already. A rotation would wait for it; the writer does not
    /// rotate while a checkpoint, and this after it, runs.
    pub(in crate::store::sled) fn prepare(&self) -> io::Result<()> {
        let mut slot = self.lock();
        let next = slot.current + 1;
        if slot.ready.is_none() {
            slot.ready = Some((next, create_segment(&self.dir, next)?));
        }
        Ok(())
    }

    /// The writer's rotation: segment `next` (the one after its current),
    /// made ahead of time if it was, else made now.
    pub(super) fn take(&self, next: u64) -> io::Result<File> {
        let mut slot = self.lock();
        // Only `current + 1` is ever made ahead: a spare is `next`.
        debug_assert!(slot.ready.as_ref().is_none_or(|(s, _)| *s == next));
        let file = match slot.ready.take() {
            Some((sequence, file)) if sequence == next => file,
            _ => create_segment(&self.dir, next)?,
        };
        slot.current = next;
        Ok(file)
    }

    /// Each change is one assignment: a panic cannot leave the slot half
    /// changed.
    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
