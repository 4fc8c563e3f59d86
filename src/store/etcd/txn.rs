//! Writes: each command planned on this replica's state and committed as
//! ONE guarded etcd transaction.
//!
//! Owns the optimistic loop (plan, commit, and on losing to another replica
//! catch up and plan again), the transaction's guards, and what to do when a
//! call to etcd fails with the outcome unknown (read the record back). It
//! must never answer before the transaction committed and this replica and
//! every other live one applied it, and never decide an error or a no-op on
//! a state that was not first caught up with the cluster.

use std::collections::BTreeSet;
use std::time::SystemTime;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use super::Inner;
use super::keyspace::encode_record;
use super::retry::{Failed, RETRY_FOR, RETRY_PAUSES, attempt, retried, unavailable};
use crate::command::{self, Command, Ctx, Plan};
use crate::domain::{Actor, EventKind, Revision, Subject};
use crate::error::{Error, reason};
use crate::state::{Change, SecretOp, State};
use crate::store::Applied;

/// How many times a write is planned again after another replica changed
/// what it read, before the caller is told to retry.
const MAX_ATTEMPTS: usize = 16;

impl Inner {
    pub(super) async fn apply(&self, cmd: Command, actor: Actor) -> Result<Applied, Error> {
        // Optimistic: plan on this replica's state, and let the
        // transaction's guards catch a plan made on a stale one. Only a plan
        // that changes nothing (an error, a no-op) is not checked by etcd:
        // it is made again once caught up with the cluster, so that a write
        // another replica already answered is never planned around.
        let mut synced = false;
        for _ in 0..MAX_ATTEMPTS {
            let state = self.state();
            let now = SystemTime::now();
            let (changes, secret) = match command::plan(&state, &cmd, &Ctx { now, actor: &actor }) {
                Ok(Plan::Change(changes, secret)) => (changes, secret),
                Ok(Plan::Unchanged(_)) | Err(_) if !synced => {
                    self.sync().await?;
                    synced = true;
                    continue;
                }
                Ok(Plan::Unchanged(subject)) => return Ok(Applied::unchanged(subject)),
                Err(e) => return Err(e),
            };
            let mut reserved = Vec::with_capacity(changes.len() - 1);
            for _ in 1..changes.len() {
                reserved.push(self.reserve().await?);
            }
            if !reserved.is_empty() {
                fail::fail_point!("etcd-revision-reserved", |_| std::process::abort());
            }
            let (txn, key, value) = self.txn(&state, &changes, &reserved, now, &actor);
            let (committed, rev) = self.commit(txn, &key, &value).await?;
            if !committed {
                // Stale, or beaten by another replica: plan again on what
                // won.
                self.sync().await?;
                synced = true;
                continue;
            }
            // This replica's state holds the change before it answers...
            self.caught_up(rev).await?;
            // ...and so must every other replica, before anyone is told.
            self.everyone_applied(rev).await;
            return Ok(Applied::committed(
                rev,
                changes.into_iter().map(|c| c.subject),
                secret,
            ));
        }
        Err(Error::Unavailable {
            reason: reason::STORE_UNAVAILABLE,
            message: format!(
                "the record changed under {MAX_ATTEMPTS} attempts in a row through other replicas; retry"
            ),
        })
    }

    /// An etcd revision no event can have, for an earlier change of a
    /// commit of several: etcd gives one transaction one revision, and every
    /// event needs its own. A transaction that puts only `m/reserve` takes
    /// one. The commit that uses it is guarded on `m/head` (no event in
    /// between), so its events stay in revision order. A reservation left
    /// unused (a lost race, a crash) is only a gap, as access-time writes
    /// already leave. Any write committed between the reservation and the
    /// commit makes the roll plan again: under thousands of writes a second
    /// it may take several attempts.
    async fn reserve(&self) -> Result<Revision, Error> {
        let key = &self.keys.reserve();
        let r = retried("reserving a revision", &self.client, |mut c| async move {
            c.put(key.as_str(), "", None).await
        })
        .await?;
        Ok(self.origin.revision(r.header().map_or(0, |h| h.revision())))
    }

    /// The transaction that commits `changes`, planned against `state`, and
    /// the last record it puts (key, value): unique, since it holds its
    /// time. Every change but the last takes its event revision from
    /// `reserved`, in order.
    fn txn(
        &self,
        state: &State,
        changes: &[Change],
        reserved: &[Revision],
        now: SystemTime,
        actor: &Actor,
    ) -> (Txn, String, Vec<u8>) {
        // Every record put at or before it is in `state`: a guard that its
        // key was not put since is a guard that the plan saw it as it is.
        let based_on = self.origin.etcd(state.revision());
        let unchanged = |key: String| Compare::mod_revision(key, CompareOp::Less, based_on + 1);
        let mut when = Vec::new();
        let mut then = Vec::new();
        // etcd refuses a transaction that puts one key twice: a roll's two
        // tokens share their account's guard.
        let mut guarded = BTreeSet::new();
        let mut last = (String::new(), Vec::new());
        for (i, change) in changes.iter().enumerate() {
            let record = |secret| {
                encode_record(
                    &change.subject,
                    secret,
                    change.kind,
                    now,
                    actor,
                    reserved.get(i).copied(),
                )
            };
            last = match &change.subject {
                Subject::Token(t) => {
                    let key = self.keys.token(&t.id);
                    // The etag: the record is as the plan saw it (absent for
                    // a create). A create also needs the key never to have
                    // existed: the state's issued ids say so, and etcd
                    // checks it again, so no tombstone is ever overwritten.
                    when.push(unchanged(key.clone()));
                    if change.kind == EventKind::Created {
                        when.push(Compare::create_revision(key.clone(), CompareOp::Equal, 0));
                    }
                    let secret = match &change.secret {
                        SecretOp::Set(h) => Some(*h),
                        SecretOp::Keep => state.secret_of(&t.id).copied(),
                        SecretOp::Erase => None,
                    };
                    let value = record(secret);
                    then.push(TxnOp::put(key.clone(), value.clone(), None));
                    match change.kind {
                        // Only take something away: they hold whatever the
                        // account is now.
                        EventKind::Deleted | EventKind::Disabled => {}
                        // Depend on the account (active, grants the modules),
                        // and tell account updates that a token of it changed.
                        _ => {
                            when.push(unchanged(self.keys.account(&t.account_id)));
                            if guarded.insert(t.account_id.clone()) {
                                then.push(TxnOp::put(self.keys.guard(&t.account_id), "", None));
                            }
                        }
                    }
                    if change.kind == EventKind::Deleted {
                        then.push(TxnOp::delete(self.keys.access(&t.id), None));
                    }
                    (key, value)
                }
                Subject::Account(a) => {
                    let key = self.keys.account(&a.id);
                    when.push(unchanged(key.clone()));
                    // An account update checks its tokens' modules: none of
                    // them may have changed since the state it was planned on.
                    when.push(unchanged(self.keys.guard(&a.id)));
                    let value = record(None);
                    then.push(TxnOp::put(key.clone(), value.clone(), None));
                    (key, value)
                }
            };
        }
        if let Some(first) = reserved.first() {
            // No event since the first reservation: none between the
            // reserved revisions and this commit's. (The plan's own guards
            // are the per-key ones above.)
            when.push(Compare::mod_revision(
                self.keys.head(),
                CompareOp::Less,
                self.origin.etcd(*first),
            ));
        }
        then.push(TxnOp::put(self.keys.head(), "", None));
        (Txn::new().when(when).and_then(then), last.0, last.1)
    }

    /// Runs `txn`, whose record put is `key` = `value`: (committed, its
    /// revision or the revision it lost at). A failed call leaves the outcome
    /// unknown (it may have been applied before the connection broke), so
    /// the record is read back: if it holds our value, we committed.
    /// Retried while members are unreachable, as the client fails over.
    async fn commit(&self, txn: Txn, key: &str, value: &[u8]) -> Result<(bool, Revision), Error> {
        // Whether the record holds our value (and since when); an error
        // when it could not be read, which is not a no.
        let landed = || async {
            let got = attempt(self.client.clone().get(key, None)).await?;
            Ok::<_, Failed>(
                got.kvs()
                    .first()
                    .filter(|kv| kv.value() == value)
                    .map(|kv| self.origin.revision(kv.mod_revision())),
            )
        };
        let mut unknown = false;
        let mut failure = Failed::NoAnswer;
        let started = tokio::time::Instant::now();
        for pause in RETRY_PAUSES {
            match attempt(self.client.clone().txn(txn.clone())).await {
                Ok(r) => {
                    let rev = r.header().map_or(0, |h| self.origin.revision(h.revision()));
                    if r.succeeded() || !unknown {
                        return Ok((r.succeeded(), rev));
                    }
                    // Lost its guard after an attempt whose outcome is
                    // unknown: that attempt may be what changed the record.
                    return match landed().await {
                        Ok(Some(rev)) => Ok((true, rev)),
                        Ok(None) => Ok((false, rev)),
                        // Planning again on a state that may hold our own
                        // write would make it twice (a second token).
                        Err(e) => Err(unavailable("committing (it may have happened)", e)),
                    };
                }
                Err(e) => {
                    unknown = true;
                    failure = e;
                    tokio::time::sleep(*pause).await;
                    if let Ok(Some(rev)) = landed().await {
                        return Ok((true, rev));
                    }
                    // Members that hang take a whole attempt each: the
                    // caller hears well before its request's deadline.
                    if started.elapsed() >= RETRY_FOR {
                        break;
                    }
                }
            }
        }
        Err(unavailable("committing (it may have happened)", failure))
    }
}
