//! The pump: this replica's copy of the keyspace, fed by its own etcd watch.
//!
//! Owns loading every record at open (and again after the watch fell behind
//! etcd's compaction), applying each record put the watch delivers to
//! [`State`] in revision order, and [`publish`]ing the result: events kept
//! for replays, the new state made visible, events handed to the hub, and
//! the applied revision moved, in that order. Also waiting for it: a write
//! or a sync waits here until the state holds a given revision. It is the
//! only code that replaces this replica's state, and it must never publish
//! an event that etcd did not deliver, nor make a state visible before its
//! events are kept (a stream reading the log up to the state's head must
//! find every event of it).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use etcd_client::{Client, EventType, GetOptions, KeyValue, WatchOptions};

use super::Inner;
use super::keyspace::{Committed, Keyspace, decode_access, decode_record};
use super::restore::Origin;
use super::retry::{attempt, retried, unavailable};
use crate::domain::{Event, EventKind, Revision, Subject, TokenId};
use crate::error::Error;
use crate::secret::SecretHash;
use crate::state::{Change, IdSet, Restore, SecretOp, State};

/// How long a write or a sync waits for this replica's watch to catch up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);
/// Keys read per request while loading: a whole prefix in one answer
/// outgrows any message limit (10,000 tokens are ~6 MB).
const PAGE: i64 = 1000;
/// A page of the largest records (~20 KB each) fits under it.
const PAGE_BYTES: usize = 64 << 20;

type Loaded = (State, Vec<(TokenId, SystemTime)>, Revision);

/// Every record as of one etcd revision, with the last-access times and the
/// revision of the last event.
pub(super) async fn load(
    client: &Client,
    keys: &Keyspace,
    origin: &Origin,
) -> Result<Loaded, Error> {
    // Page by page: a tombstone leaves only its number in memory, so a
    // replica's memory follows live tokens, at start-up too.
    let mut state = Restore::new(IdSet::default());
    let at = get_prefix(client, &keys.records(), 0, &mut |page| {
        for kv in page {
            let c = decode_record(kv.value())?;
            match c.subject {
                Subject::Account(a) => state.account(a),
                Subject::Token(t) => state.token(t, c.secret),
            }
        }
        Ok(())
    })
    .await?;
    // The state's revision is the last event's (`m/head` moves with every
    // one), read as of the same etcd revision as the records.
    let head_key = &keys.head();
    let h = retried("loading records", client, |mut c| async move {
        let options = GetOptions::new().with_revision(at);
        c.get(head_key.as_str(), Some(options)).await
    })
    .await?;
    let head = h
        .kvs()
        .first()
        .map_or(0, |kv| origin.revision(kv.mod_revision()));
    // Access times as of the same revision.
    let mut access = Vec::new();
    get_prefix(client, &keys.access_times(), at, &mut |page| {
        for kv in page {
            // A last access is a hint: one that does not parse is skipped.
            if let (Some(id), Ok(at)) = (keys.access_id(kv.key()), decode_access(kv.value())) {
                access.push((id, at));
            }
        }
        Ok(())
    })
    .await?;
    Ok((state.finish(head), access, head))
}

/// Hands every key in `from..end` as of etcd revision `at` (0: now) to
/// `each`, a page at a time, each page read at the revision of the first;
/// returns that revision. Stops early when `each` says so.
pub(super) async fn get_range(
    client: &Client,
    mut from: Vec<u8>,
    end: Vec<u8>,
    mut at: i64,
    each: &mut (dyn FnMut(Vec<KeyValue>) -> Result<bool, Error> + Send),
) -> Result<i64, Error> {
    let kv = client.kv_client().max_decoding_message_size(PAGE_BYTES);
    loop {
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if at > 0 {
            options = options.with_revision(at);
        }
        let (key, options) = (&from, &options);
        let mut r = retried("reading records", &kv, |mut kv| async move {
            kv.get(key.as_slice(), Some(options.clone())).await
        })
        .await?;
        if at == 0 {
            at = r.header().map_or(0, |h| h.revision());
        }
        let more = r.more();
        let page = r.take_kvs();
        if let Some(last) = page.last() {
            // The next page starts just after the last key of this one.
            from = [last.key(), &[0]].concat();
        }
        if !each(page)? || !more {
            return Ok(at);
        }
    }
}

/// [`get_range`] over every key under `prefix`.
async fn get_prefix(
    client: &Client,
    prefix: &str,
    at: i64,
    each: &mut (dyn FnMut(Vec<KeyValue>) -> Result<(), Error> + Send),
) -> Result<i64, Error> {
    get_range(
        client,
        prefix.as_bytes().to_vec(),
        range_end(prefix),
        at,
        &mut |page| each(page).map(|()| true),
    )
    .await
}

/// The end of `prefix`'s range: its last byte plus one (prefixes end in '/').
pub(super) fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// Follows `r/` from `after` + 1, applying each put to the state and handing
/// it to the hub, and moves `applied`. Reconnects after a failure,
/// resuming from the last revision it applied.
pub(super) async fn pump(inner: Arc<Inner>, mut after: Revision) {
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
        .with_start_revision(inner.origin.etcd(*after) + 1);
    let mut client = inner.client.clone();
    let mut left = inner.left_rotation();
    let mut stream = attempt(client.watch(inner.keys.records(), Some(options)))
        .await
        .map_err(|e| unavailable("watching", e))?;
    loop {
        let message = tokio::select! {
            m = stream.message() => m.map_err(|e| unavailable("watching", e))?,
            () = inner.rewatch.notified() => {
                return Err(unavailable("watching", "it fell behind the cluster; watching again"));
            }
            Ok(()) = left.changed() => {
                return Err(unavailable("watching", "a member left the rotation; watching again"));
            }
        };
        let Some(r) = message else {
            return Err(unavailable("watching", "the stream ended"));
        };
        if stalled() {
            // What a watch on a member that hangs does: nothing, for ever.
            std::future::pending::<()>().await;
        }
        if r.canceled() {
            if r.compact_revision() > 0 {
                // Fell behind etcd's compaction while away: only a reload
                // can bring the state back; streams re-read what they need.
                inner.compacted.fetch_max(
                    inner.origin.revision(r.compact_revision()),
                    Ordering::AcqRel,
                );
                let (state, _, head) = load(&inner.client, &inner.keys, &inner.origin).await?;
                // The events kept in memory now end before a hole: serving
                // a replay from them would skip what was missed. Replays go
                // to etcd, which answers REVISION_COMPACTED.
                inner.forget_recent();
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
            let put = inner.origin.revision(kv.mod_revision());
            if put <= *after || e.event_type() != EventType::Put {
                continue;
            }
            let committed = decode_record(kv.value())?;
            // A roll's successor takes the revision reserved before its put.
            let rev = committed.revision(put);
            let Committed {
                subject,
                secret,
                kind,
                time,
                actor,
                ..
            } = committed;
            let change = change_of(&state, kind, subject, secret);
            state.apply(&change, rev);
            events.push(Arc::new(change.event(rev, time, actor)));
        }
        publish(inner, state, events, after);
    }
}

/// Whether the `etcd-watch-stall` fail point is on (tests, built with
/// `--features failpoints`): the watch then stops at its next answer, as
/// one on a member that hangs does, while this replica's other calls still
/// reach the others.
fn stalled() -> bool {
    fail::fail_point!("etcd-watch-stall", |_| true);
    false
}

/// The change a stored record represents, against the state before it: the
/// record's secret hash against the one the state holds for the token.
fn change_of(
    state: &State,
    kind: EventKind,
    subject: Subject,
    secret: Option<SecretHash>,
) -> Change {
    let secret = match &subject {
        Subject::Account(_) => SecretOp::Keep,
        Subject::Token(t) => match (state.secret_of(&t.id), secret) {
            (None, Some(h)) => SecretOp::Set(h),
            (Some(_), None) => SecretOp::Erase,
            (Some(old), Some(h)) if *old != h => SecretOp::Set(h),
            _ => SecretOp::Keep,
        },
    };
    Change {
        kind,
        subject,
        secret,
    }
}

/// Makes one watch response's worth of applied events public, like the sled
/// writer does after its flush: kept, visible, then announced. A stream
/// reading the log up to the state's head finds every event of it, and one
/// that reads the state after subscribing can never miss a sent event.
/// Then writers waiting for these revisions (`caught_up`) may answer.
fn publish(inner: &Inner, state: State, events: Vec<Arc<Event>>, after: &mut Revision) {
    let Some(last) = events.last().map(|e| e.revision) else {
        return;
    };
    for e in &events {
        if let (EventKind::Deleted, Subject::Token(t)) = (e.kind, &e.subject) {
            inner.access.forget(&t.id);
        }
    }
    inner.remember(&events);
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

impl Inner {
    /// Waits until this replica's state holds the event at `rev` (and so
    /// every event before it: the watch delivers them in order).
    pub(super) async fn caught_up(&self, rev: Revision) -> Result<(), Error> {
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
    pub(super) async fn sync(&self) -> Result<(), Error> {
        let key = &self.keys.head();
        let r = retried(
            "reading the cluster revision",
            &self.client,
            |mut c| async move { c.get(key.as_str(), None).await },
        )
        .await?;
        let head = r
            .kvs()
            .first()
            .map_or(0, |kv| self.origin.revision(kv.mod_revision()));
        self.caught_up(head).await
    }
}
