//! Opening a data dir: sled's files, the format marker, the write-ahead
//! log's replay, the state read back, and the threads and tasks that serve
//! from there on (the writer and its applier, the access-time ticker, the
//! shrinker).
//!
//! Owns the order of those steps and sled's own opening (its
//! configuration, the reopen that lets go of the pages a start-up read, the
//! syncs of the names sled never syncs). It must never serve anything
//! before sled has caught up with the log and been checkpointed, and never
//! open a data dir that another process changed while it was opening.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Once, RwLock};

use super::files::SledFiles;
use super::layout::{self, K_PAGE_KEY};
use super::wal::Wal;
use super::{
    Inner, Job, SledConfig, SledStore, apply, commit, compact, corrupt, format, io_error, release,
    shrink,
};
use crate::error::Error;
use crate::hub::Hub;
use crate::store::AccessLog;

/// sled's page cache: reads are served from `State`, so it only speeds
/// up log replays.
pub(super) const CACHE_BYTES: u64 = 64 * 1024 * 1024;

impl SledStore {
    /// Opens (or creates) the store in `config.data_dir` and starts its
    /// write path (`sled/commit.rs`).
    /// Fails if the directory is locked by another process, is not writable,
    /// or holds something that is not a tokend store.
    pub fn open(config: SledConfig, hub: Hub) -> Result<SledStore, Error> {
        let created = !config.data_dir.exists();
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| io_error(&format!("creating {}", config.data_dir.display()), e))?;
        let (db, tree) = open_sled(&config.data_dir)?;
        // Holding sled's lock on `db/`: no compaction is running.
        compact::discard_unfinished(&config.data_dir)?;

        // A new data dir is marked; an older format's layout is brought to
        // this one's, its migration ended once the log is replayed (below).
        let migrating = format::check(&db, &tree)?;

        // Before the first checkpoint deletes a log segment.
        sync_names(&config.data_dir, created)
            .map_err(|e| io_error(&format!("syncing {}", config.data_dir.display()), e))?;

        // What the last run committed but had not checkpointed goes into
        // sled before the state is read, and is checkpointed (below) before
        // anything is served.
        let wal_dir = config.data_dir.join("wal");
        let (wal, logged) = Wal::open(&wal_dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => corrupt("write-ahead log", e),
            _ => io_error("opening the write-ahead log", e),
        })?;
        let retention = config.retention.max(1);
        let (replayed, events) = apply::replay(&tree, logged, retention)?;
        if let Some(from) = migrating {
            format::finish(&db, &tree, &from)?;
        }

        let (state, access, read) = layout::restore(&tree)?;
        let page_key: [u8; 32] = tree
            .get(K_PAGE_KEY)
            .map_err(|e| io_error("reading", e))?
            .and_then(|v| v.as_ref().try_into().ok())
            .ok_or_else(|| corrupt("page key", "missing"))?;

        // sled keeps every page it has read in memory, whatever its cache's
        // capacity, until the database is dropped, and restoring the state
        // has just read every live token: at a million, some 700 bytes each
        // that no request would use again (reads are served from `State`).
        // Reopening lets them go; from here on sled holds the pages that
        // writes touch. It costs a second recovery, as long as the first
        // on a large store whatever it holds, so only when what was read
        // outgrows sled's cache.
        let db_dir = config.data_dir.join("db");
        let (db, tree) = if read > CACHE_BYTES || reopen_always() {
            db.flush().map_err(|e| io_error("checkpointing", e))?;
            drop((tree, db));
            // sled's I/O threads may hold its lock a moment longer.
            release::wait_released(&db_dir, release::RELEASE_WAIT);
            open_sled(&config.data_dir)?
        } else {
            (db, tree)
        };
        // Between the two, another process could have taken sled's lock: a
        // `tokend compact`, whose copy holds the same records (it checks),
        // or something that wrote. Serve only the store the state was read
        // from.
        let reopened = layout::revision(&tree)?;
        if reopened != state.revision() {
            return Err(Error::Internal(format!(
                "{} changed while this tokend was opening it (revision {} became {reopened}): another process used it",
                config.data_dir.display(),
                state.revision()
            )));
        }
        let files = SledFiles::open(&db_dir)
            .map_err(|e| io_error(&format!("opening {}", db_dir.display()), e))?;
        let oldest = events.oldest();
        tracing::info!(
            revision = state.revision(),
            oldest_event = oldest,
            replayed,
            dir = %config.data_dir.display(),
            "store opened"
        );

        let inner = Arc::new(Inner {
            files,
            db,
            tree,
            applied: tokio::sync::watch::Sender::new(state.revision()),
            wanted: AtomicU64::new(0),
            applier_thread: std::sync::OnceLock::new(),
            state: RwLock::new(Arc::new(state)),
            oldest: AtomicU64::new(oldest),
            retention,
            access: AccessLog::new(config.access_interval, access),
            page_key,
            poisoned: AtomicBool::new(false),
            poison_cause: std::sync::OnceLock::new(),
            packing: RwLock::new(()),
            closed: AtomicBool::new(false),
            hub,
            _released: release::Released(db_dir),
        });
        apply::checkpoint(&inner, &wal_dir, wal.sequence())?;
        let (handoff, writer) = commit::start_writer(inner.clone(), wal, events)
            .map_err(|e| Error::Internal(format!("spawning the writer: {e}")))?;

        // Last-access times reach the disk through the write path too. The
        // ticker holds the store only for a tick; `close` ends it.
        let ticker = (handoff.clone(), Arc::downgrade(&inner));
        let every = config.access_interval;
        let access = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = ticker.1.upgrade() else {
                    break;
                };
                if !ticker.0.submit(&inner, Job::PersistAccess).await {
                    break;
                }
            }
        });

        let shrinker = tokio::spawn(shrink::run(
            Arc::downgrade(&inner),
            config.tombstone_shrink_after,
        ));

        Ok(SledStore {
            inner,
            handoff,
            writer: std::sync::Mutex::new(Some(writer)),
            background: std::sync::Mutex::new(vec![access, shrinker]),
        })
    }
}

/// Opens sled's database in `data_dir` and tokend's tree in it.
pub(super) fn open_sled(data_dir: &std::path::Path) -> Result<(sled::Db, sled::Tree), Error> {
    let db = try_open_sled(data_dir).map_err(|e| {
        let hint = if is_locked(&e) {
            " (another process holds it: a `tokend serve` or `tokend compact` on the same data dir?)"
        } else {
            ""
        };
        io_error(&format!("opening {}{hint}", data_dir.display()), e)
    })?;
    with_tree(db)
}

fn try_open_sled(data_dir: &std::path::Path) -> sled::Result<sled::Db> {
    open_config(
        sled::Config::new()
            .path(data_dir.join("db"))
            // Reads are served from `State` in memory; sled's cache only
            // speeds up log replays, so it need not be sled's default 1 GiB.
            .cache_capacity(CACHE_BYTES)
            // sled reaches the disk in the writer's checkpoints, not on a
            // timer of its own (commits are durable in the log first).
            .flush_every_ms(None),
    )
}

/// Opens sled as `config` says; an error, not a panic, when its files are
/// damaged. sled 0.34 panics on the opening thread when a page it recovers
/// is gone (a file under `db/blobs/` lost or truncated: `serialization.rs`,
/// "tried to serialize Uninitialized"), which would end `tokend serve` or
/// `tokend compact` with a Rust backtrace and no word of what to do.
/// Nothing of sled's is left running by then: it starts its threads once
/// recovery is done.
pub(super) fn open_config(config: sled::Config) -> sled::Result<sled::Db> {
    let opened = quietly(|| config.open());
    opened.unwrap_or_else(|said| {
        Err(sled::Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "sled could not recover its pages ({said}): its files under db/ are damaged \
                 or missing; restore the last snapshot into a new data dir \
                 (`tokend snapshot restore`)"
            ),
        )))
    })
}

thread_local! {
    /// Set while this thread runs [`quietly`].
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, and returns what it panicked with instead of panicking, without
/// the process's panic hook printing it (the error that follows says it).
/// The hook is wrapped once, for good, and stays quiet only on a thread
/// inside `quietly`: replacing it for the while would silence every other
/// thread's panics meanwhile.
fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static WRAPPED: Once = Once::new();
    WRAPPED.call_once(|| {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.get() {
                hook(info)
            }
        }));
    });
    QUIET.set(true);
    let ran = std::panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.set(false);
    ran.map_err(|panic| {
        panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into())
    })
}

fn with_tree(db: sled::Db) -> Result<(sled::Db, sled::Tree), Error> {
    let tree = db
        .open_tree("tokend")
        .map_err(|e| io_error("opening the tree", e))?;
    Ok((db, tree))
}

/// The tests' way to reopen sled at open whatever the store's size
/// (tests/churn.rs restarts through it).
fn reopen_always() -> bool {
    fail::fail_point!("sled-reopen", |_| true);
    false
}

/// Whether sled refused to open because another handle holds its lock.
/// sled says so in words only (`ErrorKind::Other`).
pub(super) fn is_locked(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// Makes the names of the data dir and of sled's files durable. sled
/// creates `db/` and in it `conf`, `db` and `blobs/` without ever syncing a
/// directory, and writes `conf` without syncing it; tokend creates the data
/// dir itself when missing (`created`: then its parent is synced too). A
/// power cut could lose them all (tests/powercut.rs found it): sled would
/// start empty while the log, whose older segments checkpoints deleted, no
/// longer reaches back to revision 1. Run at every open (cheap; sled creates
/// these files only at the first), before anything is deleted from the log.
pub(super) fn sync_names(data_dir: &std::path::Path, created: bool) -> std::io::Result<()> {
    let db = data_dir.join("db");
    let conf = db.join("conf");
    if conf.exists() {
        std::fs::File::open(&conf)?.sync_all()?;
    }
    let parent = match data_dir.parent().filter(|_| created) {
        Some(p) if p.as_os_str().is_empty() => Some(std::path::Path::new(".")),
        p => p,
    };
    for dir in [Some(db.as_path()), Some(data_dir), parent]
        .into_iter()
        .flatten()
    {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
