//! Storage: the narrow interface between the product and its database.
//!
//! Owns durability and the global revision sequence. A backend commits each
//! [`Command`] under the next revision together with its [`Event`], answers
//! only once that is on disk, then publishes the new [`State`] and hands the
//! events to the [`Hub`](crate::hub::Hub), in that order. The trait speaks
//! domain types only, so a distributed backend (etcd, whose revisions and
//! watch are its own) fits behind it without touching the service layer.
//!
//! A backend must never answer a write before it is durable, never publish an
//! event that was not persisted, and never keep a plain secret.

mod endpoints;
#[cfg(feature = "etcd")]
mod etcd;
mod record;
mod sled;
// Backups and restores (`tokend snapshot`).
pub mod snapshot;

pub use self::endpoints::{Endpoints, EtcdSecurity};
#[cfg(feature = "etcd")]
pub use self::etcd::{EtcdConfig, EtcdStore};
#[cfg(feature = "bench")]
pub use self::sled::synthetic::add_old_tombstones;
pub use self::sled::{SledConfig, SledStore};

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::command::{self, Command, Ctx, Plan};
use crate::domain::{AccountId, Actor, Event, Revision, Subject, Token, TokenId};
use crate::error::Error;
use crate::secret::Secret;
use crate::state::State;

/// The answer to a committed (or no-op) command.
#[derive(Debug)]
pub struct Applied {
    /// The global revision of the commit's last event; 0 when nothing
    /// changed.
    pub revision: Revision,
    /// The record after the (first) change (or as it is, for a no-op);
    /// `None` for an `allow_missing` delete of a missing token.
    pub subject: Option<Subject>,
    /// The records after the commit's later changes: a roll's old token.
    pub others: Vec<Subject>,
    /// The plain secret of a created token: handed to the caller once.
    pub secret: Option<Secret>,
}

impl Applied {
    /// Nothing was written: the answer is the subject as it is.
    pub fn unchanged(subject: Option<Subject>) -> Self {
        Applied {
            revision: 0,
            subject,
            others: Vec::new(),
            secret: None,
        }
    }

    /// A plan's changes committed, the last of them at `revision`: their
    /// records, in order.
    pub fn committed(
        revision: Revision,
        subjects: impl IntoIterator<Item = Subject>,
        secret: Option<Secret>,
    ) -> Self {
        let mut subjects = subjects.into_iter();
        Applied {
            revision,
            subject: subjects.next(),
            others: subjects.collect(),
            secret,
        }
    }
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Commits `cmd` as `actor`. Returns only once the change is durable
    /// (on the embedded store, tokend's own `fdatasync` returned; on etcd, a
    /// quorum committed it and every live replica applied it), or with the
    /// reason nothing was changed.
    async fn apply(&self, cmd: Command, actor: Actor) -> Result<Applied, Error>;

    /// What [`Store::apply`] would do with `cmd`, without doing it
    /// (`validate_only`): the very plan a commit would run, against the
    /// latest state, thrown away. No write, no revision, no event. A backend
    /// whose state may trail its database catches up first.
    async fn preview(&self, cmd: &Command, actor: &Actor) -> Result<Plan, Error> {
        let ctx = Ctx {
            now: SystemTime::now(),
            actor,
        };
        command::plan(&self.state(), cmd, &ctx)
    }

    /// The latest durable state: a consistent snapshot, cheap to take.
    fn state(&self) -> Arc<State>;

    /// The state to decide whether a secret is good on, or why this process
    /// must not decide (a replica that may have missed a delete answered
    /// elsewhere). An embedded store is the only copy: always its state.
    fn verifying_state(&self) -> Result<Arc<State>, Error> {
        Ok(self.state())
    }

    /// Durable events with revision ≥ `from` up to the durable head, in
    /// order, at most `max`; empty when none lies in between. Revisions
    /// increase but may skip numbers. [`Error::Compacted`] when `from` is
    /// older than the retained history.
    async fn events(&self, from: Revision, max: usize) -> Result<Vec<Arc<Event>>, Error>;

    /// Token `id`'s durable events with revision < `before` (every one up
    /// to the head when `before` is 0), newest first, at most `max`: its
    /// audit trail. Stops at the oldest retained event; what is older was
    /// compacted (see [`Store::oldest_revision`]).
    async fn token_events(
        &self,
        id: &TokenId,
        before: Revision,
        max: usize,
    ) -> Result<Vec<Arc<Event>>, Error>;

    /// Token `id`'s tombstone, read from the database: memory keeps live
    /// tokens only. `None` when `id` is not deleted (live, or never
    /// issued). An old one may be shrunk (see `docs/contract.md` §2).
    async fn tombstone(&self, id: &TokenId) -> Result<Option<Token>, Error>;

    /// Tombstones in id order after `after` (exclusive), of `account` or of
    /// all, at most `max`: read from the database, a page at a time.
    async fn tombstones(
        &self,
        account: Option<&AccountId>,
        after: Option<&TokenId>,
        max: usize,
    ) -> Result<Vec<Token>, Error>;

    /// The oldest revision the event log keeps once it holds every event
    /// up to `head` (`head + 1` when it keeps none): what a reader of the
    /// state at `head` may ask for. The embedded store trims its log as it
    /// applies commits to sled, behind the published state: it waits for
    /// that first.
    async fn oldest_revision(&self, head: Revision) -> Result<Revision, Error>;

    /// Last-access times: kept in memory, persisted lazily by the backend.
    fn access_log(&self) -> &AccessLog;

    /// Notes that a token was used, for its approximate `last_access_time`.
    /// Never changes the token's revision or etag, never emits an event.
    fn record_access(&self, id: &TokenId, at: SystemTime) {
        self.access_log().record(id, at);
    }

    fn last_access(&self, id: &TokenId) -> Option<SystemTime> {
        self.access_log().get(id)
    }

    /// A server-wide key, stable across restarts, for signing page tokens.
    fn page_key(&self) -> [u8; 32];

    /// Bytes the store occupies on local disk, where that means something.
    fn disk_bytes(&self) -> Option<u64> {
        None
    }

    /// Held while the operator credential is bootstrapped, so that replicas
    /// sharing one database bootstrap it once; returns with [`Store::state`]
    /// caught up with every replica's writes. One process owns an embedded
    /// store, so by default there is nothing to hold.
    async fn bootstrap_lock(&self) -> Result<Box<dyn std::any::Any + Send>, Error> {
        Ok(Box::new(()))
    }

    /// Persists what is pending, flushes, and refuses further writes.
    async fn close(&self);
}

/// Hands the tombstones of `account` (or of all) after `after` to `each`,
/// in id order, until it breaks: read from the store `page` at a time (at
/// most 1,000), for `show_deleted` lists and snapshots. Memory holds one
/// page; the time grows with the tombstones read, which for one account
/// means every account's from `after` on (none is indexed by account).
pub async fn scan_tombstones(
    store: &dyn Store,
    account: Option<&AccountId>,
    mut after: Option<TokenId>,
    page: usize,
    mut each: impl FnMut(Token) -> ControlFlow<()>,
) -> Result<(), Error> {
    let size = page.clamp(1, 1_000);
    loop {
        let page = store.tombstones(account, after.as_ref(), size).await?;
        let done = page.len() < size;
        after = page.last().map(|t| t.id.clone());
        for t in page {
            if each(t).is_break() {
                return Ok(());
            }
        }
        if done {
            return Ok(());
        }
    }
}

/// Which database a tokend keeps its records in (`--store`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The embedded sled store in the data directory: one replica.
    Sled,
    /// An etcd cluster shared by any number of replicas, all keys under
    /// `prefix`.
    Etcd {
        /// The members, and the TLS and credentials to reach them with.
        endpoints: Endpoints,
        prefix: String,
    },
}

impl Backend {
    /// This backend with the `--etcd-*` flags: refused when they do not fit
    /// (any of them with `sled`; see [`Endpoints::secured`] for etcd).
    pub fn secured(self, security: EtcdSecurity) -> Result<Backend, String> {
        match self {
            Backend::Sled if security.is_empty() => Ok(Backend::Sled),
            Backend::Sled => {
                Err("the --etcd-* flags need --store etcd://… or etcds://…, not sled".into())
            }
            Backend::Etcd { endpoints, prefix } => Ok(Backend::Etcd {
                endpoints: endpoints.secured(security)?,
                prefix,
            }),
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;

    /// `sled`, or `etcd://host:port[,host:port…][/prefix]` (prefix `tokend`);
    /// `etcds://…` for TLS to every member (with `--etcd-ca`).
    fn from_str(s: &str) -> Result<Backend, String> {
        if s == "sled" {
            return Ok(Backend::Sled);
        }
        let (rest, tls) = match (s.strip_prefix("etcd://"), s.strip_prefix("etcds://")) {
            (Some(rest), _) => (rest, false),
            (_, Some(rest)) => (rest, true),
            _ => {
                return Err(format!(
                    "{s:?} is neither `sled` nor `etcd[s]://host:port[,host:port…][/prefix]`"
                ));
            }
        };
        let (hosts, prefix) = rest.split_once('/').unwrap_or((rest, "tokend"));
        let endpoints = Endpoints::parse(hosts, tls, s)?;
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() {
            return Err(format!("{s:?}: the key prefix after the hosts is empty"));
        }
        Ok(Backend::Etcd {
            endpoints,
            prefix: format!("/{prefix}/"),
        })
    }
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
