//! The embedded backend: one sled database, one writer thread, group commit.
//!
//! Owns the on-disk layout and the write pipeline. Every mutation goes through
//! the single writer thread, which takes every queued command, plans each
//! against a working copy of the state (so later commands in a batch see
//! earlier ones), writes the whole batch — records, secret index, events, the
//! revision counter — as ONE atomic sled batch, then calls `flush()` once
//! (fsync) for all of it. Only then does it publish the new state, answer the
//! callers and hand the events to the hub. One writer means revisions come
//! out gap-free in commit order without locks, and concurrent writers share
//! fsyncs. It must never answer or publish before the flush returned, and it
//! never uses `flush_async` (it deadlocks under concurrency).
//!
//! The on-disk layout, and reading it back at open, are in `sled/layout.rs`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};

use self::layout::{
    K_FORMAT, K_PAGE_KEY, K_REVISION, P_EVENT, decode, decode_event_key, event_key,
};
use super::record::{self, AccountRecord, EventRecord, SLED_FORMAT, TimeRecord, TokenRecord};
use super::{AccessLog, Applied, Store};
use crate::command::{self, Command, Ctx, Plan};
use crate::domain::{Actor, Event, Revision, Subject, TokenId};
use crate::error::{Error, reason};
use crate::hub::Hub;
use crate::state::{Change, SecretOp, State};
use crate::telemetry;

mod layout;

const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Most commands one commit takes: bounds the latency a batch adds.
const MAX_BATCH: usize = 1024;

#[derive(Clone, Debug)]
pub struct SledConfig {
    pub data_dir: PathBuf,
    /// How many events the log keeps; older ones are compacted.
    pub retention: u64,
    /// How often a token's last-access time is written at most.
    pub access_interval: Duration,
}

pub struct SledStore {
    inner: Arc<Inner>,
    jobs: mpsc::Sender<Job>,
    writer: std::sync::Mutex<Option<JoinHandle<()>>>,
}

/// What the writer thread and readers share.
struct Inner {
    db: sled::Db,
    tree: sled::Tree,
    /// The durable state; swapped by the writer after each flush.
    state: RwLock<Arc<State>>,
    oldest: AtomicU64,
    retention: u64,
    access: AccessLog,
    page_key: [u8; 32],
    /// sled's log file, for the fdatasync that its own flush leaves out.
    log_file: std::fs::File,
    /// Set when a commit failed after sled may have taken part of it: from
    /// then on memory and disk may disagree, so writes are refused until a
    /// restart re-reads the disk.
    poisoned: AtomicBool,
    hub: Hub,
}

enum Job {
    Apply {
        cmd: Command,
        actor: Actor,
        reply: oneshot::Sender<Result<Applied, Error>>,
    },
    PersistAccess,
    Close(oneshot::Sender<()>),
}

fn io_error(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable {
        reason: reason::STORE_UNAVAILABLE,
        message: format!("storage failure while {context}: {e}"),
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("corrupt {what} in the data dir: {e}"))
}

impl SledStore {
    /// Opens (or creates) the store in `config.data_dir` and starts its writer.
    /// Fails if the directory is locked by another process, is not writable,
    /// or holds something that is not a tokend store.
    pub fn open(config: SledConfig, hub: Hub) -> Result<SledStore, Error> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| io_error(&format!("creating {}", config.data_dir.display()), e))?;
        let db = sled::Config::new()
            .path(config.data_dir.join("db"))
            // Reads are served from `State` in memory; sled's cache only
            // speeds up log replays, so it need not be sled's default 1 GiB.
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|e| io_error(&format!("opening {}", config.data_dir.display()), e))?;
        let tree = db
            .open_tree("tokend")
            .map_err(|e| io_error("opening the tree", e))?;

        match tree.get(K_FORMAT).map_err(|e| io_error("reading", e))? {
            Some(f) if f.as_ref() == SLED_FORMAT => {}
            Some(f) => {
                return Err(corrupt("format marker", String::from_utf8_lossy(&f)));
            }
            None if tree.is_empty() => {
                let mut page_key = [0u8; 32];
                getrandom::fill(&mut page_key).map_err(|e| Error::Internal(e.to_string()))?;
                let mut b = sled::Batch::default();
                b.insert(K_FORMAT, SLED_FORMAT);
                b.insert(K_PAGE_KEY, &page_key[..]);
                b.insert(K_REVISION, &0u64.to_be_bytes()[..]);
                tree.apply_batch(b)
                    .map_err(|e| io_error("initialising", e))?;
                db.flush().map_err(|e| io_error("initialising", e))?;
            }
            None => return Err(corrupt("store", "records without a format marker")),
        }

        let (state, access) = layout::restore(&tree)?;
        let page_key: [u8; 32] = tree
            .get(K_PAGE_KEY)
            .map_err(|e| io_error("reading", e))?
            .and_then(|v| v.as_ref().try_into().ok())
            .ok_or_else(|| corrupt("page key", "missing"))?;
        let oldest = match tree.scan_prefix(P_EVENT).next() {
            Some(Ok((k, _))) => decode_event_key(&k)?,
            Some(Err(e)) => return Err(io_error("reading the event log", e)),
            None => state.revision() + 1,
        };
        tracing::info!(
            revision = state.revision(),
            oldest_event = oldest,
            dir = %config.data_dir.display(),
            "store opened"
        );

        let log_path = config.data_dir.join("db").join("db");
        let log_file = std::fs::File::open(&log_path)
            .map_err(|e| io_error(&format!("opening {}", log_path.display()), e))?;
        let inner = Arc::new(Inner {
            log_file,
            db,
            tree,
            state: RwLock::new(Arc::new(state)),
            oldest: AtomicU64::new(oldest),
            retention: config.retention.max(1),
            access: AccessLog::new(config.access_interval, access),
            page_key,
            poisoned: AtomicBool::new(false),
            hub,
        });
        // Room for every in-flight request of a busy server; beyond it callers
        // wait (backpressure) instead of queueing without bound.
        let (jobs, rx) = mpsc::channel(4 * MAX_BATCH);
        let writer_inner = inner.clone();
        let writer = std::thread::Builder::new()
            .name("tokend-writer".into())
            .spawn(move || writer_loop(writer_inner, rx))
            .map_err(|e| Error::Internal(format!("spawning the writer: {e}")))?;

        // Last-access times reach the disk through the writer too.
        let ticker = jobs.clone();
        let every = config.access_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                if ticker.send(Job::PersistAccess).await.is_err() {
                    break;
                }
            }
        });

        Ok(SledStore {
            inner,
            jobs,
            writer: std::sync::Mutex::new(Some(writer)),
        })
    }
}

#[async_trait::async_trait]
impl Store for SledStore {
    async fn apply(&self, cmd: Command, actor: Actor) -> Result<Applied, Error> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job::Apply { cmd, actor, reply })
            .await
            .map_err(|_| Error::shutting_down())?;
        answer.await.map_err(|_| Error::shutting_down())?
    }

    fn state(&self) -> Arc<State> {
        self.inner.state.read().expect("state lock").clone()
    }

    async fn events(&self, from: Revision, max: usize) -> Result<Vec<Arc<Event>>, Error> {
        // Bounded by the durable head: the writer puts events into sled before
        // it flushes, and those must not be seen yet.
        let head = self.state().revision();
        let oldest = self.inner.oldest.load(Ordering::Acquire);
        if from < oldest && from <= head {
            return Err(Error::Compacted {
                requested: from,
                oldest,
            });
        }
        let mut out = Vec::new();
        if from > head {
            return Ok(out);
        }
        for item in self
            .inner
            .tree
            .range(event_key(from)..=event_key(head))
            .take(max)
        {
            let (k, v) = item.map_err(|e| io_error("reading the event log", e))?;
            let rev = decode_event_key(&k)?;
            let expected = from + out.len() as u64;
            if rev != expected {
                // Compaction ran between our check and the read.
                return Err(Error::Compacted {
                    requested: expected,
                    oldest: self.inner.oldest.load(Ordering::Acquire),
                });
            }
            out.push(Arc::new(decode::<EventRecord>("event", &v)?));
        }
        if out.is_empty() {
            return Err(Error::Compacted {
                requested: from,
                oldest: self.inner.oldest.load(Ordering::Acquire),
            });
        }
        Ok(out)
    }

    async fn token_events(
        &self,
        id: &TokenId,
        before: Revision,
        max: usize,
    ) -> Result<Vec<Arc<Event>>, Error> {
        // A walk over up to `retention` records: off the async workers.
        let (inner, id) = (self.inner.clone(), id.clone());
        let head = self.state().revision();
        tokio::task::spawn_blocking(move || token_events(&inner, &id, head, before, max))
            .await
            .map_err(|e| Error::Internal(format!("reading a token's history: {e}")))?
    }

    fn oldest_revision(&self) -> Revision {
        self.inner.oldest.load(Ordering::Acquire)
    }

    fn access_log(&self) -> &AccessLog {
        &self.inner.access
    }

    fn page_key(&self) -> [u8; 32] {
        self.inner.page_key
    }

    fn disk_bytes(&self) -> Option<u64> {
        self.inner.db.size_on_disk().ok()
    }

    async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.jobs.send(Job::Close(done)).await.is_ok() {
            let _ = closed.await;
        }
        let handle = self.writer.lock().expect("writer handle").take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

/// The writer thread: the only code that writes to sled.
fn writer_loop(inner: Arc<Inner>, mut rx: mpsc::Receiver<Job>) {
    loop {
        let Some(first) = rx.blocking_recv() else {
            return;
        };
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        if let Some(done) = commit_batch(&inner, jobs) {
            tracing::info!("store closed");
            let _ = done.send(());
            return;
        }
    }
}

/// A reply owed to a caller once the batch is durable.
type Owed = (
    oneshot::Sender<Result<Applied, Error>>,
    Result<Applied, Error>,
);

/// Plans, persists, flushes and publishes one batch. Returns the close
/// acknowledgement if the batch asked the writer to stop.
fn commit_batch(inner: &Inner, jobs: Vec<Job>) -> Option<oneshot::Sender<()>> {
    let now = SystemTime::now();
    let mut work = State::clone(&inner.state.read().expect("state lock"));
    let mut changes: Vec<Change> = Vec::new();
    let mut events: Vec<Arc<Event>> = Vec::new();
    let mut owed: Vec<Owed> = Vec::with_capacity(jobs.len());
    let mut persist_access = false;
    let mut close = None;
    let poisoned = inner.poisoned.load(Ordering::Acquire);

    for job in jobs {
        match job {
            Job::Apply { reply, .. } if poisoned => {
                let e = io_error("committing", "an earlier write failed; restart tokend");
                owed.push((reply, Err(e)));
            }
            Job::Apply { cmd, actor, reply } => {
                let answer = match command::plan(&work, &cmd, &Ctx { now, actor: &actor }) {
                    Err(e) => Err(e),
                    Ok(Plan::Unchanged(subject)) => Ok(Applied {
                        revision: 0,
                        subject,
                        secret: None,
                    }),
                    Ok(Plan::Change(change, secret)) => {
                        let revision = work.revision() + 1;
                        work.apply(&change, revision);
                        events.push(Arc::new(change.event(revision, now, actor)));
                        let subject = Some(change.subject.clone());
                        changes.push(change);
                        Ok(Applied {
                            revision,
                            subject,
                            secret,
                        })
                    }
                };
                owed.push((reply, answer));
            }
            Job::PersistAccess => persist_access = true,
            Job::Close(done) => {
                persist_access = true;
                close = Some(done);
            }
        }
    }

    // Access times only of tokens still live after this batch: a deletion in
    // the same batch must not write its token's record back.
    let access: Vec<_> = if persist_access && !poisoned {
        inner
            .access
            .take_due(now, close.is_some())
            .into_iter()
            .filter(|(id, _)| work.secret_of(id).is_some())
            .collect()
    } else {
        Vec::new()
    };
    // Once poisoned nothing more is written, not even access times: sled may
    // hold part of the failed batch, and a write now could make it durable
    // under a revision counter that no longer matches.
    if !poisoned && (!changes.is_empty() || !access.is_empty()) {
        let started = Instant::now();
        match persist(inner, &changes, &events, &access, work.revision()) {
            Ok(()) => {
                tracing::debug!(
                    changes = changes.len(),
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "batch committed"
                );
                for change in &changes {
                    if let (SecretOp::Erase(_), Subject::Token(t)) =
                        (&change.secret, &change.subject)
                    {
                        inner.access.forget(&t.id);
                    }
                }
                if !changes.is_empty() {
                    *inner.state.write().expect("state lock") = Arc::new(work);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "commit failed; refusing writes until restart");
                inner.poisoned.store(true, Ordering::Release);
                events.clear();
                // Every answer of the batch was planned against state that
                // includes the failed changes (an allow_missing delete behind
                // a failed delete would say "gone"): none of them may stand.
                for (_, answer) in owed.iter_mut() {
                    *answer = Err(e.clone());
                }
            }
        }
    }

    // Durable and visible: answer, then announce. The state swap above comes
    // first so that a watcher that reads the log after subscribing can never
    // miss an event the hub already sent.
    for (reply, answer) in owed {
        let _ = reply.send(answer);
    }
    for event in events {
        // Revisions here are consecutive: the one before is revision - 1.
        inner.hub.publish(event.revision - 1, event);
    }
    close
}

/// Token `id`'s events in the log up to `head`, before `before` (0: all),
/// newest first, at most `max`. The log is keyed by revision alone, so this
/// walks it back from the end; only a record whose bytes name the token is
/// decoded (ids are fixed-width and appear verbatim in it).
fn token_events(
    inner: &Inner,
    id: &TokenId,
    head: Revision,
    before: Revision,
    max: usize,
) -> Result<Vec<Arc<Event>>, Error> {
    let end = if before == 0 {
        head
    } else {
        head.min(before - 1)
    };
    let mut out = Vec::new();
    if end == 0 || max == 0 {
        return Ok(out);
    }
    let names_it = memchr::memmem::Finder::new(id.as_str());
    for item in inner.tree.range(event_key(0)..=event_key(end)).rev() {
        let (_, v) = item.map_err(|e| io_error("reading the event log", e))?;
        if names_it.find(&v).is_none() {
            continue;
        }
        let event = decode::<EventRecord>("event", &v)?;
        if matches!(&event.subject, Subject::Token(t) if &t.id == id) {
            out.push(Arc::new(event));
            if out.len() == max {
                break;
            }
        }
    }
    Ok(out)
}

/// Writes one batch atomically and waits for it to be on disk.
fn persist(
    inner: &Inner,
    changes: &[Change],
    events: &[Arc<Event>],
    access: &[(TokenId, SystemTime)],
    head: Revision,
) -> Result<(), Error> {
    let mut batch = sled::Batch::default();
    for change in changes {
        match &change.subject {
            Subject::Token(t) => {
                batch.insert(layout::token_key(&t.id), record::encode::<TokenRecord>(t));
                match &change.secret {
                    SecretOp::Set(hash) => batch.insert(layout::secret_key(hash), t.id.as_str()),
                    SecretOp::Erase(hash) => {
                        batch.remove(layout::secret_key(hash));
                        batch.remove(layout::access_key(&t.id));
                    }
                    SecretOp::Keep => {}
                }
            }
            Subject::Account(a) => batch.insert(
                layout::account_key(&a.id),
                record::encode::<AccountRecord>(a),
            ),
        }
    }
    for event in events {
        batch.insert(
            event_key(event.revision),
            record::encode::<EventRecord>(event),
        );
    }
    for (id, at) in access {
        batch.insert(layout::access_key(id), record::encode::<TimeRecord>(at));
    }
    batch.insert(K_REVISION, &head.to_be_bytes()[..]);

    // Compaction: keep the newest `retention` events. `oldest` moves before
    // the keys go, so a reader sees OUT_OF_RANGE rather than a gap.
    let keep_from = (head + 1).saturating_sub(inner.retention).max(1);
    let oldest = inner.oldest.load(Ordering::Acquire);
    if keep_from > oldest {
        inner.oldest.store(keep_from, Ordering::Release);
        for rev in oldest..keep_from {
            batch.remove(event_key(rev));
        }
    }

    inner
        .tree
        .apply_batch(batch)
        .map_err(|e| io_error("writing a batch", e))?;
    let started = Instant::now();
    inner
        .db
        .flush()
        .map_err(|e| io_error("flushing to disk", e))?;
    // sled's flush ends in sync_file_range, which flushes neither the drive's
    // write cache nor the file's size: not durable across a power loss. One
    // fdatasync per batch makes it so.
    inner
        .log_file
        .sync_data()
        .map_err(|e| io_error("syncing to disk", e))?;
    metrics::histogram!(telemetry::FSYNC_DURATION).record(started.elapsed().as_secs_f64());
    metrics::histogram!(telemetry::COMMIT_BATCH_SIZE).record(changes.len() as f64);
    Ok(())
}
