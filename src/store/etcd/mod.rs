//! The distributed backend: several stateless tokend replicas sharing one
//! etcd cluster, which already solves consensus and durability.
//!
//! Owns the etcd keyspace under one prefix and each replica's copy of it.
//! Every mutation is ONE etcd transaction, guarded by the mod revisions of
//! the record and of whatever else the plan read (none past the state the
//! plan was made on); its revision is the etcd revision (plus the prefix's
//! origin offset, after a restore), and etcd has made it durable on a
//! quorum before it answers. Each replica keeps the whole
//! state in memory, fed by its own etcd watch (the *pump*), so reads and
//! `VerifyToken` never wait on etcd. A write is answered only once every
//! live replica's watch has applied it: each replica registers under a lease
//! and reports the revision its watch has applied, and the writer waits for
//! all of them. So the moment a delete is answered, no replica verifies the
//! secret any more. A replica that cannot renew its lease cannot report
//! either; the writer stops waiting for it once its lease has expired, and
//! the replica itself stops answering verifications before that can happen
//! (`fenced`, in `replicas.rs`), so it never answers from a stale state.
//!
//! It must never answer a write before etcd committed it and the pump applied
//! it, never publish an event the pump did not receive from etcd, and never
//! keep a plain secret (records hold the secret's SHA-256 only, erased on
//! deletion).
//!
//! Keyspace (`keyspace.rs` builds every key; values are JSON, the records of
//! `record.rs` shared with sled):
//!   `<prefix>r/a/<ACC-id>` → account + the event that wrote it
//!   `<prefix>r/t/<TKN-id>` → token (+ secret hash while live) + its event;
//!                            tombstones stay forever, whole, in etcd only
//!                            (a replica keeps a live token's record and a
//!                            deleted one's number): ids are never reissued
//!   `<prefix>g/<ACC-id>`   → guard: touched by every token write that
//!                            depends on its account, compared by account
//!                            updates that depend on the account's tokens
//!   `<prefix>l/<TKN-id>`   → last access time (not an event)
//!   `<prefix>m/head`       → empty; written by every mutation, so its mod
//!                            revision is the last event's
//!   `<prefix>m/page_key`   → 32 random bytes for signing page tokens
//!   `<prefix>m/origin`     → only on a prefix made by a snapshot restore:
//!                            the snapshot's revision, which tokend's
//!                            revisions continue from (`restore.rs`)
//!   `<prefix>replicas/<id>`→ the revision a live replica has applied
//!                            (leased: gone when the replica is)
//!   `<prefix>lock/…`       → etcd locks (bootstrap)
//! Only `r/` is watched: every put there is one event, at its mod revision.
//! Writes elsewhere use etcd revisions too, so event revisions increase but
//! skip numbers; the watch layer is built for that (see `watch`).
//!
//! Where each part lives (split by concern, roughly as etcd's own server
//! splits its storage into schema, transactions and watches):
//! - this file: configuration, opening, the [`Store`] impl, last-access
//!   persistence;
//! - `connect.rs`: TLS, credentials, and one line for why a cluster refused
//!   this replica at start-up;
//! - `retry.rs`: how long one call to etcd may take, and which calls are
//!   tried again, for how long;
//! - `members.rs`: which members the client sends calls to (the ones
//!   that answer its health probes);
//! - `keyspace.rs`: key names and the record codec;
//! - `txn.rs`: planning a command and committing it as a guarded
//!   transaction, including the read-back when the outcome is unknown;
//! - `pump.rs`: loading the keyspace, and the watch that applies each
//!   committed record to this replica's state and publishes its event;
//! - `history.rs`: replays for streams, from recent events in memory or
//!   from etcd's history;
//! - `replicas.rs`: registration under a lease, progress reports, waiting
//!   for every replica, and fencing;
//! - `restore.rs`: restoring a snapshot into an empty prefix, and the
//!   origin it leaves (tokend revision = etcd revision + an offset);
//! - `lock.rs`: the bootstrap lock, its lease kept alive while held.

mod connect;
mod history;
mod keyspace;
mod lock;
mod members;
mod pump;
mod replicas;
mod restore;
mod retry;
mod txn;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use self::keyspace::{Committed, Keyspace, decode_record};
use self::restore::Origin;
use self::retry::{RETRY_FOR, attempt, retried, tried};
use super::{AccessLog, Applied, Endpoints, Store};
use crate::command::{self, Command, Ctx, Plan};
use crate::domain::{AccountId, Actor, Event, Revision, Subject, Token, TokenId};
use crate::error::Error;
use crate::hub::Hub;
use crate::state::State;

#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// The members, and the TLS and credentials to reach them with (the
    /// password itself is read from its file when connecting, and kept only
    /// by the client).
    pub endpoints: Endpoints,
    /// Every key lives under it; replicas sharing it form one tokend.
    pub prefix: String,
    /// How often a token's last-access time is written at most.
    pub access_interval: Duration,
    /// Where this replica keeps its name (`replica-id`), so that a restart
    /// takes over its own registration instead of leaving writers waiting
    /// for the dead process's lease to run out.
    pub data_dir: std::path::PathBuf,
}

pub struct EtcdStore {
    inner: Arc<Inner>,
    _tasks: Vec<AbortOnDropHandle<()>>,
}

/// What the store's calls and its background tasks share.
struct Inner {
    client: Client,
    keys: Keyspace,
    state: RwLock<Arc<State>>,
    /// The revision of the last event in `state`: the pump moves it.
    applied: watch::Sender<Revision>,
    /// The newest events, for replays (`history.rs`); the pump appends.
    recent: Mutex<VecDeque<Arc<Event>>>,
    /// The oldest revision etcd still has history for, as last seen.
    compacted: AtomicU64,
    /// How tokend's revisions map onto etcd's (identity unless the prefix
    /// was made by a restore). Fixed for the prefix's life.
    origin: Origin,
    access: AccessLog,
    page_key: [u8; 32],
    hub: Hub,
    /// This replica's name under `replicas/`.
    replica: String,
    /// Every live replica's applied revision, by key.
    replicas: watch::Sender<HashMap<String, Revision>>,
    /// Until when this replica's lease is surely alive in etcd; past it,
    /// another replica may have stopped waiting for this one.
    alive_until: Mutex<Option<Instant>>,
    /// The lease this replica is registered under (0: none yet).
    lease: AtomicI64,
    /// Told when the watch was found behind the cluster: the pump drops
    /// it and watches again (a watch held by a member that hangs never
    /// ends on its own until HTTP/2's keep-alive gives up, 9 s on).
    rewatch: tokio::sync::Notify,
    /// Moves each time a member leaves the client's rotation (`members.rs`):
    /// the streams below (the pump's watch, the replicas' watch, the lease's
    /// keep-alive) are taken again, as they may be held by that member.
    left_rotation: watch::Receiver<u64>,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("corrupt {what} in etcd: {e}"))
}

/// An etcd revision as etcd reports it (signed), for resuming watches of
/// keys that are not records. Record revisions go through [`Origin`].
fn etcd_revision(r: i64) -> Revision {
    r.max(0) as Revision
}

impl Inner {
    fn state(&self) -> Arc<State> {
        self.state.read().expect("state lock").clone()
    }

    /// Told when a member leaves the rotation from now on (a stream taken
    /// now is through the members in it).
    fn left_rotation(&self) -> watch::Receiver<u64> {
        let mut left = self.left_rotation.clone();
        left.mark_unchanged();
        left
    }
}

type Task = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl EtcdStore {
    /// Connects, loads every record, and starts following the cluster.
    pub async fn open(config: EtcdConfig, hub: Hub) -> Result<EtcdStore, Error> {
        let members = members::survey(&config.endpoints).await?;
        let urls = members::in_rotation(&members, &config.endpoints);
        let client = connect::connect(&config.endpoints, urls).await?;
        let spawn = |f| AbortOnDropHandle::new(tokio::spawn(f));
        // From the first call on: opening reads from etcd too.
        let (left, left_rotation) = watch::channel(0);
        let rotation =
            spawn(Box::pin(members::keep_rotation(client.clone(), members, left)) as Task);
        let keys = Keyspace::new(config.prefix.clone());

        // The page key is made once for the cluster: the first replica's put
        // wins, every replica reads the winner. Being the first call that
        // reaches a member (with no --etcd-user, connecting sends nothing),
        // its failure says why the cluster refuses us: TLS, or permissions.
        // So it is tried again only while unanswered (a member that hangs,
        // until the rotation leaves it out); any refusal ends it at once.
        // Again is harmless: a put that landed unheard is the winner read.
        let key = keys.page_key();
        let mut fresh = [0u8; 32];
        getrandom::fill(&mut fresh).map_err(|e| Error::Internal(e.to_string()))?;
        let create = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), fresh.to_vec(), None)])
            .or_else([TxnOp::get(key, None)]);
        let r = tried(
            &client,
            |_| false,
            |mut c| {
                let create = create.clone();
                async move { c.txn(create).await }
            },
        )
        .await
        .map_err(|f| connect::refused(&config.endpoints, "creating the page key", &f))?;
        let page_key = if r.succeeded() {
            fresh
        } else {
            // Another replica's, read in the same transaction.
            r.op_responses()
                .into_iter()
                .find_map(|op| match op {
                    TxnOpResponse::Get(got) => got.kvs().first().map(|kv| kv.value().to_vec()),
                    _ => None,
                })
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| corrupt("page key", "not 32 bytes"))?
        };

        let origin = restore::read_origin(&client, &keys).await?;
        let (state, access, head) = pump::load(&client, &keys, &origin).await?;
        tracing::info!(revision = head, prefix = %keys.prefix(), "etcd store opened");
        let (applied, _) = watch::channel(head);
        let replica = replicas::replica_name(&config.data_dir)?;
        let inner = Arc::new(Inner {
            client,
            keys,
            state: RwLock::new(Arc::new(state)),
            applied,
            recent: Mutex::new(VecDeque::new()),
            compacted: AtomicU64::new(origin.oldest()),
            origin,
            access: AccessLog::new(config.access_interval, access),
            page_key,
            hub,
            replica,
            replicas: watch::channel(HashMap::new()).0,
            alive_until: Mutex::new(None),
            lease: AtomicI64::new(0),
            rewatch: tokio::sync::Notify::new(),
            left_rotation,
        });
        // The watch first: registering checks that it is current (what
        // was committed since the load is applied), as every renewal does.
        let pump = spawn(Box::pin(pump::pump(inner.clone(), head)) as Task);
        // Registered and known to the others before serving anything; on
        // a busy cluster the watch may take a few tries to be current.
        let lease = replicas::register_at_open(&inner).await?;
        let others = replicas::load_replicas(&inner).await?;
        let tasks = vec![
            rotation,
            pump,
            spawn(Box::pin(persist_access(
                inner.clone(),
                config.access_interval,
            ))),
            spawn(Box::pin(replicas::keep_registered(inner.clone(), lease))),
            spawn(Box::pin(replicas::follow_replicas(inner.clone(), others))),
        ];
        Ok(EtcdStore {
            inner,
            _tasks: tasks,
        })
    }
}

/// Writes due last-access times every `every`.
async fn persist_access(inner: Arc<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = write_access(&inner, false).await {
            tracing::warn!(error = %e, "last-access times not written");
        }
    }
}

async fn write_access(inner: &Inner, all: bool) -> Result<(), Error> {
    let state = inner.state();
    for (id, at) in inner.access.take_due(SystemTime::now(), all) {
        if state.secret_of(&id).is_none() {
            continue;
        }
        let (key, value) = (&inner.keys.access(&id), &keyspace::encode_access(&at));
        retried(
            "writing a last-access time",
            &inner.client,
            |mut c| async move { c.put(key.as_str(), value.as_slice(), None).await },
        )
        .await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn apply(&self, cmd: Command, actor: Actor) -> Result<Applied, Error> {
        let span = crate::traces::commit_span();
        let applied = self
            .inner
            .apply(cmd, actor)
            .instrument(span.clone())
            .await?;
        span.record("revision", applied.revision);
        Ok(applied)
    }

    /// Planned on a state caught up with the whole cluster, as `apply`
    /// decides errors and no-ops: this replica's own state may trail a write
    /// another replica has already answered (a delete shown as deletable,
    /// an etag that is already stale).
    async fn preview(&self, cmd: &Command, actor: &Actor) -> Result<Plan, Error> {
        self.inner.sync().await?;
        let ctx = Ctx {
            now: SystemTime::now(),
            actor,
        };
        command::plan(&self.inner.state(), cmd, &ctx)
    }

    fn state(&self) -> Arc<State> {
        self.inner.state()
    }

    fn verifying_state(&self) -> Result<Arc<State>, Error> {
        self.inner.fenced()?;
        Ok(self.inner.state())
    }

    async fn events(&self, from: Revision, max: usize) -> Result<Vec<Arc<Event>>, Error> {
        self.inner.events(from, max).await
    }

    async fn token_events(
        &self,
        id: &TokenId,
        before: Revision,
        max: usize,
    ) -> Result<Vec<Arc<Event>>, Error> {
        self.inner.token_events(id, before, max).await
    }

    async fn tombstone(&self, id: &TokenId) -> Result<Option<Token>, Error> {
        self.inner.sync().await?;
        let key = &self.inner.keys.token(id);
        let r = retried(
            "reading a tombstone",
            &self.inner.client,
            |mut c| async move { c.get(key.as_str(), None).await },
        )
        .await?;
        match r
            .kvs()
            .first()
            .map(|kv| decode_record(kv.value()))
            .transpose()?
        {
            Some(Committed {
                subject: Subject::Token(t),
                ..
            }) if t.is_deleted() => Ok(Some(t)),
            _ => Ok(None),
        }
    }

    async fn tombstones(
        &self,
        account: Option<&AccountId>,
        after: Option<&TokenId>,
        max: usize,
    ) -> Result<Vec<Token>, Error> {
        self.inner.sync().await?;
        let tokens = self.inner.keys.tokens();
        let from = match after {
            Some(id) => [self.inner.keys.token(id).as_bytes(), &[0]].concat(),
            None => tokens.as_bytes().to_vec(),
        };
        let mut out = Vec::new();
        pump::get_range(
            &self.inner.client,
            from,
            pump::range_end(&tokens),
            0,
            &mut |page| {
                for kv in page {
                    if let Subject::Token(t) = decode_record(kv.value())?.subject
                        && t.is_deleted()
                        && account.is_none_or(|a| *a == t.account_id)
                    {
                        out.push(t);
                        if out.len() == max {
                            return Ok(false);
                        }
                    }
                }
                Ok(true)
            },
        )
        .await?;
        Ok(out)
    }

    async fn oldest_revision(&self, _head: Revision) -> Result<Revision, Error> {
        Ok(self.inner.compacted.load(Ordering::Acquire))
    }

    fn access_log(&self) -> &AccessLog {
        &self.inner.access
    }

    fn page_key(&self) -> [u8; 32] {
        self.inner.page_key
    }

    async fn bootstrap_lock(&self) -> Result<Box<dyn std::any::Any + Send>, Error> {
        lock::take(&self.inner).await
    }

    async fn close(&self) {
        // Bounded as a whole: each time is tried again on its own, and a
        // stop must not wait on a member that hangs for every token.
        match tokio::time::timeout(RETRY_FOR, write_access(&self.inner, true)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "last-access times not written at shutdown"),
            Err(_) => tracing::warn!(
                "last-access times not all written at shutdown: etcd did not take them within {RETRY_FOR:?}"
            ),
        }
        // Leaving: writers stop waiting for this replica at once instead of
        // when its lease runs out.
        let lease = self.inner.lease.load(Ordering::Acquire);
        if lease != 0 {
            let _ = attempt(self.inner.client.clone().lease_revoke(lease)).await;
        }
    }
}
