//! The distributed backend: several stateless tokend replicas sharing one
//! etcd cluster, which already solves consensus and durability.
//!
//! Owns the etcd keyspace under one prefix and each replica's copy of it.
//! Every mutation is ONE etcd transaction, guarded by the record's etcd
//! `version` (which is the record's own `revision`, since every change to a
//! record is exactly one put of its key), and by the revisions of whatever
//! else the plan read; its revision is the etcd revision, and etcd has made
//! it durable on a quorum before it answers. Each replica keeps the whole
//! state in memory, fed by its own etcd watch (the *pump*), so reads and
//! `VerifyToken` never wait on etcd. A write is answered only once every
//! live replica's watch has applied it: each replica registers under a lease
//! and reports the revision its watch has applied, and the writer waits for
//! all of them. So the moment a delete is answered, no replica verifies the
//! secret any more. A replica that cannot renew its lease cannot report
//! either; the writer stops waiting for it once its lease has expired, and
//! the replica itself stops answering verifications before that can happen
//! (see [`EtcdStore`]'s `fenced`), so it never answers from a stale state.
//!
//! It must never answer a write before etcd committed it and the pump applied
//! it, never publish an event the pump did not receive from etcd, and never
//! keep a plain secret (records hold the secret's SHA-256 only, erased on
//! deletion).
//!
//! Keyspace (values JSON, like the sled backend):
//!   `<prefix>r/a/<ACC-id>` → account + the event that wrote it
//!   `<prefix>r/t/<TKN-id>` → token (+ secret hash while live) + its event;
//!                            tombstones stay forever: ids are never reissued
//!   `<prefix>g/<ACC-id>`   → guard: touched by every token write that
//!                            depends on its account, compared by account
//!                            updates that depend on the account's tokens
//!   `<prefix>l/<TKN-id>`   → last access time (not an event)
//!   `<prefix>m/page_key`   → 32 random bytes for signing page tokens
//!   `<prefix>replicas/<id>`→ the revision a live replica has applied
//!                            (leased: gone when the replica is)
//!   `<prefix>lock/…`       → etcd locks (bootstrap)
//! Only `r/` is watched: every put there is one event, at its mod revision.
//! Writes elsewhere use etcd revisions too, so event revisions increase but
//! skip numbers; the watch layer is built for that (see `watch`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LockOptions, PutOptions,
    Txn, TxnOp, WatchOptions,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;

use super::{AccessLog, Applied, Store};
use crate::command::{self, Command, Ctx, Plan};
use crate::domain::{Account, Actor, Event, EventKind, Revision, Subject, Token, TokenId};
use crate::error::{Error, reason};
use crate::hub::Hub;
use crate::secret::SecretHash;
use crate::state::{Change, SecretOp, State};

/// How many times a write is planned again after another replica changed
/// what it read, before the caller is told to retry.
const MAX_ATTEMPTS: usize = 16;

/// How long a write or a sync waits for this replica's watch to catch up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// Pauses between attempts at a call that failed to reach etcd: about 3 s in
/// all, long enough for the client to stop using a member that died.
const RETRY_PAUSES: &[Duration] = &[
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_millis(1000),
    Duration::from_millis(1000),
];

/// Recent events kept in memory for streams that fall briefly behind;
/// older ones are read back from etcd's own history.
const RECENT_EVENTS: usize = 4096;

#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// `host:port` of each member.
    pub endpoints: Vec<String>,
    /// Every key lives under it; replicas sharing it form one tokend.
    pub prefix: String,
    /// How often a token's last-access time is written at most.
    pub access_interval: Duration,
    /// Where this replica keeps its name (`replica-id`), so that a restart
    /// takes over its own registration instead of leaving writers waiting
    /// for the dead process's lease to run out.
    pub data_dir: std::path::PathBuf,
}

/// What a record key holds: the record and the event that wrote it, so the
/// watch can rebuild the event from the put alone.
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    account: Option<Account>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    token: Option<Token>,
    /// The secret's hash while the token is live; gone once deleted.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    secret: Option<SecretHash>,
    kind: EventKind,
    time: SystemTime,
    actor: Actor,
}

pub struct EtcdStore {
    inner: Arc<Inner>,
    _tasks: Vec<AbortOnDropHandle<()>>,
}

/// How long a replica's registration outlives its last lease renewal. A
/// writer waits at most about this long for a replica that stopped
/// reporting.
const LEASE_TTL: Duration = Duration::from_secs(5);

struct Inner {
    client: Client,
    prefix: String,
    state: RwLock<Arc<State>>,
    /// The revision of the last event in `state`: the pump moves it.
    applied: watch::Sender<Revision>,
    recent: Mutex<VecDeque<Arc<Event>>>,
    /// The oldest revision etcd still has history for, as last seen.
    compacted: AtomicU64,
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
    lease: std::sync::atomic::AtomicI64,
}

fn unavailable(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable {
        reason: reason::STORE_UNAVAILABLE,
        message: format!("etcd failure while {context}: {e}"),
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("corrupt {what} in etcd: {e}"))
}

fn revision(r: i64) -> Revision {
    r.max(0) as Revision
}

impl Inner {
    fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
        for p in parts {
            k.push_str(p);
        }
        k
    }

    fn records(&self) -> String {
        self.key(&["r/"])
    }

    fn state(&self) -> Arc<State> {
        self.state.read().expect("state lock").clone()
    }

    /// Waits until this replica's state holds the event at `rev` (and so
    /// every event before it: the watch delivers them in order).
    async fn caught_up(&self, rev: Revision) -> Result<(), Error> {
        let mut applied = self.applied.subscribe();
        let wait = applied.wait_for(|applied| *applied >= rev);
        match tokio::time::timeout(CATCH_UP_TIMEOUT, wait).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Error::shutting_down()),
            Err(_) => Err(unavailable(
                "catching up with the cluster",
                "the watch fell behind",
            )),
        }
    }

    /// Brings this replica up to everything etcd has committed now: what
    /// another replica answered before this call is visible after it.
    /// `m/head` is written by every mutation, so its mod revision is the
    /// last event's; waiting for that event needs nothing from etcd but the
    /// watch itself. (etcd's watch progress notices could do it without
    /// the extra key, but before 3.4.25 they may overtake events in flight.)
    async fn sync(&self) -> Result<(), Error> {
        let key = self.key(&["m/head"]);
        let mut failure = None;
        for pause in RETRY_PAUSES {
            match self.client.clone().get(key.as_str(), None).await {
                Ok(r) => {
                    let head = r.kvs().first().map_or(0, |kv| revision(kv.mod_revision()));
                    return self.caught_up(head).await;
                }
                Err(e) => failure = Some(e),
            }
            tokio::time::sleep(*pause).await;
        }
        Err(unavailable(
            "reading the cluster revision",
            failure.map_or_else(String::new, |e| e.to_string()),
        ))
    }

    /// The transaction that commits `change`, planned against `state`, and
    /// the record it puts (key, value): unique, since it holds its time.
    fn txn(
        &self,
        state: &State,
        change: &Change,
        now: SystemTime,
        actor: &Actor,
    ) -> (Txn, String, Vec<u8>) {
        let based_on = state.revision() as i64;
        let mut when = Vec::new();
        let mut then = Vec::new();
        let record: (String, Vec<u8>);
        let stored = |account, token, secret| Stored {
            account,
            token,
            secret,
            kind: change.kind,
            time: now,
            actor: actor.clone(),
        };
        match &change.subject {
            Subject::Token(t) => {
                let key = self.key(&["r/t/", t.id.as_str()]);
                // The etag: the record is as the plan saw it (absent for a create).
                when.push(Compare::version(
                    key.clone(),
                    CompareOp::Equal,
                    t.revision as i64 - 1,
                ));
                let secret = match &change.secret {
                    SecretOp::Set(h) => Some(*h),
                    SecretOp::Keep => state.secret_of(&t.id).copied(),
                    SecretOp::Erase(_) => None,
                };
                let value = serde_json::to_vec(&stored(None, Some(t.clone()), secret))
                    .expect("domain types always serialise");
                record = (key.clone(), value.clone());
                then.push(TxnOp::put(key, value, None));
                match change.kind {
                    // Only take something away: they hold whatever the
                    // account is now.
                    EventKind::Deleted | EventKind::Disabled => {}
                    // Depend on the account (active, grants the modules), and
                    // tell account updates that a token of it changed.
                    _ => {
                        let account = t.account_id.as_str();
                        when.push(Compare::mod_revision(
                            self.key(&["r/a/", account]),
                            CompareOp::Less,
                            based_on + 1,
                        ));
                        then.push(TxnOp::put(self.key(&["g/", account]), "", None));
                    }
                }
                if change.kind == EventKind::Deleted {
                    then.push(TxnOp::delete(self.key(&["l/", t.id.as_str()]), None));
                }
            }
            Subject::Account(a) => {
                let key = self.key(&["r/a/", a.id.as_str()]);
                when.push(Compare::version(
                    key.clone(),
                    CompareOp::Equal,
                    a.revision as i64 - 1,
                ));
                // An account update checks its tokens' modules: none of them
                // may have changed since the state it was planned on.
                when.push(Compare::mod_revision(
                    self.key(&["g/", a.id.as_str()]),
                    CompareOp::Less,
                    based_on + 1,
                ));
                let value = serde_json::to_vec(&stored(Some(a.clone()), None, None))
                    .expect("domain types always serialise");
                record = (key.clone(), value.clone());
                then.push(TxnOp::put(key, value, None));
            }
        }
        then.push(TxnOp::put(self.key(&["m/head"]), "", None));
        (Txn::new().when(when).and_then(then), record.0, record.1)
    }

    /// Runs `txn`, whose record put is `key` = `value`: (committed, its
    /// revision or the revision it lost at). A failed call leaves the outcome
    /// unknown (it may have been applied before the connection broke), so
    /// the record is read back: if it holds our value, we committed.
    /// Retried while members are unreachable, as the client fails over.
    async fn commit(&self, txn: Txn, key: &str, value: &[u8]) -> Result<(bool, Revision), Error> {
        let landed = || async {
            let got = self.client.clone().get(key, None).await.ok()?;
            let kv = got.kvs().first()?;
            (kv.value() == value).then(|| revision(kv.mod_revision()))
        };
        let mut unknown = false;
        let mut failure = None;
        for pause in RETRY_PAUSES {
            match self.client.clone().txn(txn.clone()).await {
                Ok(r) => {
                    let rev = r.header().map_or(0, |h| revision(h.revision()));
                    if !r.succeeded()
                        && unknown
                        && let Some(rev) = landed().await
                    {
                        return Ok((true, rev));
                    }
                    return Ok((r.succeeded(), rev));
                }
                Err(e) => {
                    unknown = true;
                    failure = Some(e);
                    tokio::time::sleep(*pause).await;
                    if let Some(rev) = landed().await {
                        return Ok((true, rev));
                    }
                }
            }
        }
        Err(unavailable(
            "committing",
            failure.map_or_else(String::new, |e| e.to_string()),
        ))
    }
}

impl EtcdStore {
    /// Connects, loads every record, and starts following the cluster.
    pub async fn open(config: EtcdConfig, hub: Hub) -> Result<EtcdStore, Error> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let client = Client::connect(&config.endpoints, Some(options))
            .await
            .map_err(|e| unavailable(&format!("connecting to {:?}", config.endpoints), e))?;
        let prefix = config.prefix.clone();

        // The page key is made once for the cluster: the first replica's put
        // wins, every replica reads the winner.
        let key = format!("{prefix}m/page_key");
        let mut fresh = [0u8; 32];
        getrandom::fill(&mut fresh).map_err(|e| Error::Internal(e.to_string()))?;
        let r = client
            .clone()
            .txn(
                Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key.clone(), fresh.to_vec(), None)])
                    .or_else([TxnOp::get(key.clone(), None)]),
            )
            .await
            .map_err(|e| unavailable("creating the page key", e))?;
        let page_key = if r.succeeded() {
            fresh
        } else {
            let got = client
                .clone()
                .get(key, None)
                .await
                .map_err(|e| unavailable("reading the page key", e))?;
            got.kvs()
                .first()
                .and_then(|kv| kv.value().try_into().ok())
                .ok_or_else(|| corrupt("page key", "not 32 bytes"))?
        };

        let (state, access, head) = load(&client, &prefix).await?;
        tracing::info!(revision = head, prefix = %prefix, "etcd store opened");
        let (applied, _) = watch::channel(head);
        let replica = replica_name(&config.data_dir)?;
        let inner = Arc::new(Inner {
            client,
            prefix,
            state: RwLock::new(Arc::new(state)),
            applied,
            recent: Mutex::new(VecDeque::new()),
            compacted: AtomicU64::new(1),
            access: AccessLog::new(config.access_interval, access),
            page_key,
            hub,
            replica,
            replicas: watch::channel(HashMap::new()).0,
            alive_until: Mutex::new(None),
            lease: std::sync::atomic::AtomicI64::new(0),
        });
        // Registered and known to the others before serving anything.
        let lease = register(&inner).await?;
        let others = load_replicas(&inner).await?;
        let spawn = |f| AbortOnDropHandle::new(tokio::spawn(f));
        let tasks = vec![
            spawn(Box::pin(pump(inner.clone(), head)) as Task),
            spawn(Box::pin(persist_access(
                inner.clone(),
                config.access_interval,
            ))),
            spawn(Box::pin(keep_registered(inner.clone(), lease))),
            spawn(Box::pin(follow_replicas(inner.clone(), others))),
        ];
        Ok(EtcdStore {
            inner,
            _tasks: tasks,
        })
    }
}

/// This replica's name: kept in the data dir, made on first start.
fn replica_name(dir: &std::path::Path) -> Result<String, Error> {
    let path = dir.join("replica-id");
    let fail = |e: std::io::Error| {
        Error::invalid("data-dir", format!("cannot use {}: {e}", path.display()))
    };
    match std::fs::read_to_string(&path) {
        Ok(name) if !name.trim().is_empty() => return Ok(name.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| Error::Internal(e.to_string()))?;
    let name = bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    std::fs::write(&path, &name).map_err(fail)?;
    Ok(name)
}

type Task = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

type Loaded = (State, Vec<(TokenId, SystemTime)>, Revision);

/// Every record as of one etcd revision.
async fn load(client: &Client, prefix: &str) -> Result<Loaded, Error> {
    let r = client
        .clone()
        .get(format!("{prefix}r/"), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| unavailable("loading records", e))?;
    let at = r.header().map_or(0, |h| revision(h.revision())) as i64;
    // The state's revision is the last event's (`m/head` moves with every
    // one), read as of the same etcd revision as the records.
    let h = client
        .clone()
        .get(
            format!("{prefix}m/head"),
            Some(GetOptions::new().with_revision(at)),
        )
        .await
        .map_err(|e| unavailable("loading records", e))?;
    let head = h.kvs().first().map_or(0, |kv| revision(kv.mod_revision()));
    let (mut accounts, mut tokens, mut secrets) = (Vec::new(), Vec::new(), Vec::new());
    for kv in r.kvs() {
        let s: Stored = serde_json::from_slice(kv.value()).map_err(|e| corrupt("record", e))?;
        if let Some(a) = s.account {
            accounts.push(a);
        }
        if let Some(t) = s.token {
            if let Some(h) = s.secret {
                secrets.push((h, t.id.clone()));
            }
            tokens.push(t);
        }
    }
    // Access times as of the same revision.
    let l = client
        .clone()
        .get(
            format!("{prefix}l/"),
            Some(GetOptions::new().with_prefix().with_revision(at)),
        )
        .await
        .map_err(|e| unavailable("loading access times", e))?;
    let mut access = Vec::new();
    for kv in l.kvs() {
        let id = String::from_utf8_lossy(&kv.key()[prefix.len() + 2..]).into_owned();
        if let (Ok(id), Ok(at)) = (
            TokenId::parse(&id),
            serde_json::from_slice::<SystemTime>(kv.value()),
        ) {
            access.push((id, at));
        }
    }
    Ok((
        State::restore(head, accounts, tokens, secrets),
        access,
        head,
    ))
}

/// Follows `r/` from `after` + 1, applying each put to the state and handing
/// it to the hub, and moves `applied`. Reconnects after a failure,
/// resuming from the last revision it applied.
async fn pump(inner: Arc<Inner>, mut after: Revision) {
    loop {
        match follow(&inner, &mut after).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, after, "etcd watch broke; resuming");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn follow(inner: &Inner, after: &mut Revision) -> Result<(), Error> {
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(*after as i64 + 1);
    let mut stream = inner
        .client
        .clone()
        .watch(inner.records(), Some(options))
        .await
        .map_err(|e| unavailable("watching", e))?;
    loop {
        let message = stream
            .message()
            .await
            .map_err(|e| unavailable("watching", e))?;
        let Some(r) = message else {
            return Err(unavailable("watching", "the stream ended"));
        };
        if r.canceled() {
            if r.compact_revision() > 0 {
                // Fell behind etcd's compaction while away: only a reload
                // can bring the state back; streams re-read what they need.
                inner
                    .compacted
                    .fetch_max(revision(r.compact_revision()), Ordering::AcqRel);
                let (state, _, head) = load(&inner.client, &inner.prefix).await?;
                // The events kept in memory now end before a hole: serving
                // a replay from them would skip what was missed. Replays go
                // to etcd, which answers REVISION_COMPACTED.
                inner.recent.lock().expect("recent events").clear();
                *inner.state.write().expect("state lock") = Arc::new(state);
                *after = head;
                inner.applied.send_replace(head);
            }
            return Err(unavailable("watching", r.cancel_reason().to_string()));
        }
        let mut state = State::clone(&inner.state());
        let mut events = Vec::with_capacity(r.events().len());
        for e in r.events() {
            let Some(kv) = e.kv() else { continue };
            let rev = revision(kv.mod_revision());
            if rev <= *after || e.event_type() != EventType::Put {
                continue;
            }
            let s: Stored = serde_json::from_slice(kv.value()).map_err(|e| corrupt("record", e))?;
            let change = change_of(&state, s.account, s.token, s.secret, s.kind)?;
            state.apply(&change, rev);
            events.push(Arc::new(change.event(rev, s.time, s.actor)));
        }
        let Some(last) = events.last().map(|e| e.revision) else {
            continue;
        };
        for e in &events {
            if let (EventKind::Deleted, Subject::Token(t)) = (e.kind, &e.subject) {
                inner.access.forget(&t.id);
            }
        }
        // Kept, visible, then announced: a stream reading the log up to the
        // state's head finds every event of it, and one that reads the state
        // after subscribing can never miss a sent event.
        {
            let mut recent = inner.recent.lock().expect("recent events");
            for e in &events {
                if recent.len() == RECENT_EVENTS {
                    recent.pop_front();
                }
                recent.push_back(e.clone());
            }
        }
        *inner.state.write().expect("state lock") = Arc::new(state);
        for e in events {
            let before = std::mem::replace(after, e.revision);
            inner.hub.publish(before, e);
        }
        inner.applied.send_if_modified(|w| {
            let moved = last > *w;
            if moved {
                *w = last;
            }
            moved
        });
    }
}

/// The change a stored record represents, against the state before it.
fn change_of(
    state: &State,
    account: Option<Account>,
    token: Option<Token>,
    secret: Option<SecretHash>,
    kind: EventKind,
) -> Result<Change, Error> {
    match (account, token) {
        (Some(a), None) => Ok(Change {
            kind,
            subject: Subject::Account(a),
            secret: SecretOp::Keep,
        }),
        (None, Some(t)) => {
            let secret = match (state.secret_of(&t.id), secret) {
                (None, Some(h)) => SecretOp::Set(h),
                (Some(old), None) => SecretOp::Erase(*old),
                (Some(old), Some(h)) if *old != h => SecretOp::Set(h),
                _ => SecretOp::Keep,
            };
            Ok(Change {
                kind,
                subject: Subject::Token(t),
                secret,
            })
        }
        _ => Err(corrupt("record", "neither one account nor one token")),
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
        let value = serde_json::to_vec(&at).expect("times serialise");
        inner
            .client
            .clone()
            .put(inner.key(&["l/", id.as_str()]), value, None)
            .await
            .map_err(|e| unavailable("writing a last-access time", e))?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn apply(&self, cmd: Command, actor: Actor) -> Result<Applied, Error> {
        let inner = &self.inner;
        // Optimistic: plan on this replica's state, and let the
        // transaction's guards catch a plan made on a stale one. Only a plan
        // that changes nothing (an error, a no-op) is not checked by etcd:
        // it is made again once caught up with the cluster, so that a write
        // another replica already answered is never planned around.
        let mut synced = false;
        for _ in 0..MAX_ATTEMPTS {
            let state = inner.state();
            let now = SystemTime::now();
            let (change, secret) = match command::plan(&state, &cmd, &Ctx { now, actor: &actor }) {
                Ok(Plan::Change(change, secret)) => (change, secret),
                Ok(Plan::Unchanged(_)) | Err(_) if !synced => {
                    inner.sync().await?;
                    synced = true;
                    continue;
                }
                Ok(Plan::Unchanged(subject)) => {
                    return Ok(Applied {
                        revision: 0,
                        subject,
                        secret: None,
                    });
                }
                Err(e) => return Err(e),
            };
            let (txn, key, value) = inner.txn(&state, &change, now, &actor);
            let (committed, rev) = inner.commit(txn, &key, &value).await?;
            if !committed {
                // Stale, or beaten by another replica: plan again on what
                // won.
                inner.sync().await?;
                synced = true;
                continue;
            }
            // This replica's state holds the change before it answers...
            inner.caught_up(rev).await?;
            // ...and so must every other replica, before anyone is told.
            inner.everyone_applied(rev).await;
            return Ok(Applied {
                revision: rev,
                subject: Some(change.subject),
                secret,
            });
        }
        Err(Error::Unavailable {
            reason: reason::STORE_UNAVAILABLE,
            message: format!(
                "the record changed under {MAX_ATTEMPTS} attempts in a row through other replicas; retry"
            ),
        })
    }

    fn state(&self) -> Arc<State> {
        self.inner.state()
    }

    fn verifying_state(&self) -> Result<Arc<State>, Error> {
        self.inner.fenced()?;
        Ok(self.inner.state())
    }

    async fn events(&self, from: Revision, max: usize) -> Result<Vec<Arc<Event>>, Error> {
        let head = self.inner.state().revision();
        if from > head {
            return Ok(Vec::new());
        }
        {
            let recent = self.inner.recent.lock().expect("recent events");
            if recent.front().is_some_and(|e| e.revision <= from) {
                return Ok(recent
                    .iter()
                    .filter(|e| e.revision >= from && e.revision <= head)
                    .take(max)
                    .cloned()
                    .collect());
            }
        }
        history(&self.inner, from, head, max).await
    }

    fn oldest_revision(&self) -> Revision {
        self.inner.compacted.load(Ordering::Acquire)
    }

    fn access_log(&self) -> &AccessLog {
        &self.inner.access
    }

    fn page_key(&self) -> [u8; 32] {
        self.inner.page_key
    }

    async fn bootstrap_lock(&self) -> Result<Box<dyn std::any::Any + Send>, Error> {
        let name = self.inner.key(&["lock/bootstrap"]);
        let mut client = self.inner.client.clone();
        // Leased, so a replica that dies holding it lets the others go on.
        let lease = client
            .lease_grant(15, None)
            .await
            .map_err(|e| unavailable("taking the bootstrap lock", e))?
            .id();
        client
            .lock(name, Some(LockOptions::new().with_lease(lease)))
            .await
            .map_err(|e| unavailable("taking the bootstrap lock", e))?;
        self.inner.sync().await?;
        Ok(Box::new(LeaseGuard { client, lease }))
    }

    async fn close(&self) {
        if let Err(e) = write_access(&self.inner, true).await {
            tracing::warn!(error = %e, "last-access times not written at shutdown");
        }
        // Leaving: writers stop waiting for this replica at once instead of
        // when its lease runs out.
        let lease = self.inner.lease.load(Ordering::Acquire);
        if lease != 0 {
            let _ = self.inner.client.clone().lease_revoke(lease).await;
        }
    }
}

/// Releases a lock by revoking its lease when dropped.
struct LeaseGuard {
    client: Client,
    lease: i64,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let (mut client, lease) = (self.client.clone(), self.lease);
        tokio::spawn(async move {
            let _ = client.lease_revoke(lease).await;
        });
    }
}

/// Events in `from..=head` (at most `max`) from etcd's own history, for a
/// stream further behind than the events kept in memory.
async fn history(
    inner: &Inner,
    from: Revision,
    head: Revision,
    max: usize,
) -> Result<Vec<Arc<Event>>, Error> {
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(from as i64)
        .with_prev_key();
    let mut stream = inner
        .client
        .clone()
        .watch(inner.records(), Some(options))
        .await
        .map_err(|e| unavailable("reading history", e))?;
    let mut out: Vec<Arc<Event>> = Vec::new();
    loop {
        let r = stream
            .message()
            .await
            .map_err(|e| unavailable("reading history", e))?
            .ok_or_else(|| unavailable("reading history", "the stream ended"))?;
        if r.canceled() {
            let oldest = revision(r.compact_revision()).max(1);
            inner.compacted.fetch_max(oldest, Ordering::AcqRel);
            return Err(Error::Compacted {
                requested: from,
                oldest,
            });
        }
        for e in r.events() {
            let Some(kv) = e.kv() else { continue };
            let rev = revision(kv.mod_revision());
            if rev > head || out.len() == max {
                return Ok(out);
            }
            let s: Stored = serde_json::from_slice(kv.value()).map_err(|e| corrupt("record", e))?;
            // The secret index is not part of an event: the kind and the
            // record are all a stream needs.
            let subject = match (s.account, s.token) {
                (Some(a), None) => Subject::Account(a),
                (None, Some(t)) => Subject::Token(t),
                _ => return Err(corrupt("record", "neither one account nor one token")),
            };
            out.push(Arc::new(Event {
                revision: rev,
                kind: s.kind,
                subject,
                time: s.time,
                actor: s.actor,
            }));
            if rev == head {
                return Ok(out);
            }
        }
    }
}

// ------------------------------------------------------------ replicas

impl Inner {
    fn replica_key(&self) -> String {
        self.key(&["replicas/", &self.replica])
    }

    /// Waits until every registered replica reports having applied `rev`,
    /// or has dropped out (its lease expired). Bounded by the lease: a
    /// replica that stops reporting is gone, and fenced, within it.
    async fn everyone_applied(&self, rev: Revision) {
        let mut seen = self.replicas.subscribe();
        let deadline = Instant::now() + LEASE_TTL + Duration::from_secs(1);
        // This replica's own state already holds `rev` (it reports only
        // for the others).
        let me = self.replica_key();
        loop {
            let behind: Vec<String> = seen
                .borrow_and_update()
                .iter()
                .filter(|(k, applied)| **applied < rev && **k != me)
                .map(|(k, _)| k.clone())
                .collect();
            if behind.is_empty() {
                return;
            }
            match tokio::time::timeout_at(deadline, seen.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::warn!(
                        revision = rev,
                        ?behind,
                        "replicas neither applied a write nor dropped out in time"
                    );
                    return;
                }
            }
        }
    }

    /// Refuses to answer from memory once this replica's lease may have
    /// expired: writers elsewhere no longer wait for it, so its state may be
    /// missing a delete they have answered.
    fn fenced(&self) -> Result<(), Error> {
        match *self.alive_until.lock().expect("lease clock") {
            Some(until) if Instant::now() < until => Ok(()),
            _ => Err(Error::Unavailable {
                reason: reason::STORE_UNAVAILABLE,
                message: "this replica has lost touch with etcd; try another".into(),
            }),
        }
    }

    fn renewed(&self, at: Instant, ttl: Duration) {
        // A margin under the TTL: etcd counts from when it renewed, which is
        // before we heard of it, and clocks drift.
        let until = at + ttl.mul_f64(0.8);
        *self.alive_until.lock().expect("lease clock") = Some(until);
    }
}

/// Takes a lease and registers this replica under it with its applied
/// revision. Returns the lease.
async fn register(inner: &Inner) -> Result<i64, Error> {
    let mut client = inner.client.clone();
    let asked = Instant::now();
    let granted = client
        .lease_grant(LEASE_TTL.as_secs() as i64, None)
        .await
        .map_err(|e| unavailable("taking a lease", e))?;
    let lease = granted.id();
    let applied = *inner.applied.borrow();
    client
        .put(
            inner.replica_key(),
            applied.to_string(),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .map_err(|e| unavailable("registering", e))?;
    inner.renewed(asked, Duration::from_secs(granted.ttl().max(0) as u64));
    inner.lease.store(lease, Ordering::Release);
    Ok(lease)
}

/// Renews the lease and reports the applied revision whenever it moves;
/// registers again if the lease was lost.
async fn keep_registered(inner: Arc<Inner>, mut lease: i64) {
    loop {
        if let Err(e) = renew_and_report(&inner, lease).await {
            tracing::warn!(error = %e, "replica registration lost; registering again");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        match register(&inner).await {
            Ok(l) => lease = l,
            Err(e) => tracing::warn!(error = %e, "cannot register with etcd"),
        }
    }
}

async fn renew_and_report(inner: &Inner, lease: i64) -> Result<(), Error> {
    let mut client = inner.client.clone();
    let (mut keeper, mut answers) = client
        .lease_keep_alive(lease)
        .await
        .map_err(|e| unavailable("renewing the lease", e))?;
    let mut applied = inner.applied.subscribe();
    let mut members = inner.replicas.subscribe();
    let mut renew = tokio::time::interval(LEASE_TTL / 4);
    let mut asked = Instant::now();
    let mut reported = None;
    loop {
        tokio::select! {
            _ = renew.tick() => {
                asked = Instant::now();
                keeper.keep_alive().await.map_err(|e| unavailable("renewing the lease", e))?;
            }
            answer = answers.message() => {
                let answer = answer
                    .map_err(|e| unavailable("renewing the lease", e))?
                    .ok_or_else(|| unavailable("renewing the lease", "stream ended"))?;
                if answer.ttl() <= 0 {
                    return Err(unavailable("renewing the lease", "it expired"));
                }
                inner.renewed(asked, Duration::from_secs(answer.ttl() as u64));
            }
            changed = applied.changed() => {
                changed.map_err(|_| Error::shutting_down())?;
            }
            changed = members.changed() => {
                changed.map_err(|_| Error::shutting_down())?;
            }
        }
        // Reports are for the other replicas' writers: a replica alone
        // makes none (an etcd write per event saved), and reports the moment
        // another one appears. Only the latest matters: they coalesce.
        let me = inner.replica_key();
        let watched = members.borrow_and_update().keys().any(|k| *k != me);
        let rev = *applied.borrow_and_update();
        if watched && reported != Some(rev) {
            client
                .put(
                    me,
                    rev.to_string(),
                    Some(PutOptions::new().with_lease(lease)),
                )
                .await
                .map_err(|e| unavailable("reporting progress", e))?;
            reported = Some(rev);
        }
    }
}

/// The registered replicas now, and the revision to follow them from.
async fn load_replicas(inner: &Inner) -> Result<Revision, Error> {
    let r = inner
        .client
        .clone()
        .get(
            inner.key(&["replicas/"]),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .map_err(|e| unavailable("listing replicas", e))?;
    let mut map = HashMap::new();
    for kv in r.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let applied = String::from_utf8_lossy(kv.value()).parse().unwrap_or(0);
        map.insert(key, applied);
    }
    inner.replicas.send_replace(map);
    Ok(r.header().map_or(0, |h| revision(h.revision())))
}

/// Keeps `replicas` current: reports, arrivals, and departures (lease
/// expiry deletes the key).
async fn follow_replicas(inner: Arc<Inner>, mut after: Revision) {
    loop {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(after as i64 + 1);
        let watched = inner
            .client
            .clone()
            .watch(inner.key(&["replicas/"]), Some(options))
            .await;
        let mut stream = match watched {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch replicas");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            let r = match stream.message().await {
                Ok(Some(r)) if !r.canceled() => r,
                _ => break,
            };
            inner.replicas.send_modify(|map| {
                for e in r.events() {
                    let Some(kv) = e.kv() else { continue };
                    after = after.max(revision(kv.mod_revision()));
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    match e.event_type() {
                        EventType::Put => {
                            let applied = String::from_utf8_lossy(kv.value()).parse().unwrap_or(0);
                            map.insert(key, applied);
                        }
                        EventType::Delete => {
                            map.remove(&key);
                        }
                    }
                }
            });
        }
        // Broken or compacted: start again from a fresh listing.
        match load_replicas(&inner).await {
            Ok(rev) => after = rev,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
