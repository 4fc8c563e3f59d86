//! Storage: the narrow interface between the product and its database.
//!
//! Owns durability and the global revision sequence. A backend commits each
//! [`Command`] under the next revision together with its [`Event`], answers
//! only once that is on disk, then publishes the new [`State`] and hands the
//! events to the [`Hub`](crate::watch::Hub), in that order. The trait speaks
//! domain types only, so a distributed backend (etcd, whose revisions and
//! watch are its own) fits behind it without touching the service layer.
//!
//! A backend must never answer a write before it is durable, never publish an
//! event that was not persisted, and never keep a plain secret.

mod sled;

pub use self::sled::{SledConfig, SledStore};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::command::Command;
use crate::domain::{Actor, Event, Revision, Subject, TokenId};
use crate::error::Error;
use crate::secret::Secret;
use crate::state::State;

/// The answer to a committed (or no-op) command.
#[derive(Debug)]
pub struct Applied {
    /// The global revision of the change's event; 0 when nothing changed.
    pub revision: Revision,
    /// The record after the change (or as it is, for a no-op); `None` for an
    /// `allow_missing` delete of a missing token.
    pub subject: Option<Subject>,
    /// The plain secret of a created token: handed to the caller once.
    pub secret: Option<Secret>,
}

#[tonic::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Commits `cmd` as `actor`. Returns only once the change is durable
    /// (fsync), or with the reason nothing was changed.
    async fn apply(&self, cmd: Command, actor: Actor) -> Result<Applied, Error>;

    /// The latest durable state: a consistent snapshot, cheap to take.
    fn state(&self) -> Arc<State>;

    /// Durable events with revision ≥ `from`, in order, at most `max`.
    /// [`Error::Compacted`] when `from` is older than the retained history.
    async fn events(&self, from: Revision, max: usize) -> Result<Vec<Arc<Event>>, Error>;

    /// The oldest revision still in the event log (head + 1 when it is empty).
    fn oldest_revision(&self) -> Revision;

    /// Notes that a token was used, for its approximate `last_access_time`.
    /// Never changes the token's revision or etag, never emits an event.
    fn record_access(&self, id: &TokenId, at: SystemTime);

    fn last_access(&self, id: &TokenId) -> Option<SystemTime>;

    /// A server-wide key, stable across restarts, for signing page tokens.
    fn page_key(&self) -> [u8; 32];

    /// Bytes the store occupies on local disk, where that means something.
    fn disk_bytes(&self) -> Option<u64> {
        None
    }

    /// Persists what is pending, flushes, and refuses further writes.
    async fn close(&self);
}

/// Last-access times, kept in memory and persisted lazily: each token's time
/// is written at most once per `interval`, so a hot token costs no write per
/// verification.
pub struct AccessLog {
    interval: Duration,
    entries: Mutex<HashMap<TokenId, AccessEntry>>,
}

struct AccessEntry {
    at: SystemTime,
    persisted: Option<SystemTime>,
}

impl AccessLog {
    pub fn new(
        interval: Duration,
        restored: impl IntoIterator<Item = (TokenId, SystemTime)>,
    ) -> Self {
        let entries = restored
            .into_iter()
            .map(|(id, at)| {
                let e = AccessEntry {
                    at,
                    persisted: Some(at),
                };
                (id, e)
            })
            .collect();
        AccessLog {
            interval,
            entries: Mutex::new(entries),
        }
    }

    pub fn record(&self, id: &TokenId, at: SystemTime) {
        let mut entries = self.entries.lock().expect("access log lock");
        match entries.get_mut(id) {
            Some(e) => e.at = e.at.max(at),
            None => {
                entries.insert(
                    id.clone(),
                    AccessEntry {
                        at,
                        persisted: None,
                    },
                );
            }
        }
    }

    pub fn get(&self, id: &TokenId) -> Option<SystemTime> {
        self.entries
            .lock()
            .expect("access log lock")
            .get(id)
            .map(|e| e.at)
    }

    /// Entries due for persisting: changed, and last written over `interval`
    /// ago (or never; or `all` changed ones, at shutdown). Marks them persisted.
    pub fn take_due(&self, now: SystemTime, all: bool) -> Vec<(TokenId, SystemTime)> {
        let mut entries = self.entries.lock().expect("access log lock");
        let mut due = Vec::new();
        for (id, e) in entries.iter_mut() {
            let stale = match e.persisted {
                None => true,
                Some(p) => {
                    p != e.at && (all || now.duration_since(p).unwrap_or_default() >= self.interval)
                }
            };
            if stale {
                e.persisted = Some(e.at);
                due.push((id.clone(), e.at));
            }
        }
        due
    }

    pub fn forget(&self, id: &TokenId) {
        self.entries.lock().expect("access log lock").remove(id);
    }
}
