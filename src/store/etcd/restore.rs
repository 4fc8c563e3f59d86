//! Restoring a snapshot into an empty etcd prefix (`tokend snapshot restore
//! --store etcd://…`), and the [`Origin`] it leaves: where tokend's
//! revisions start in etcd's.
//!
//! etcd numbers its revisions itself and no client can set them, yet a
//! restored store must continue after the snapshot's revision, and past
//! any the original wrote since (`Snapshot::restored_head`: a watcher
//! holding revision R must never be told of an older one as new), and
//! the restore's own puts are not events anyone may replay. So a restore
//! ends with one transaction that writes `m/origin` (the restored head R)
//! beside `m/head`: from then on, tokend revision = etcd
//! revision + (R − that transaction's etcd revision), and etcd's history up
//! to it is below the oldest revision tokend serves. A prefix tokend made
//! itself has no origin: the two numberings are the same.
//!
//! Owns `m/origin` and the restore protocol: refuse a prefix holding any
//! key; mark the prefix as being restored (so no replica opens a half-made
//! store); put every record, in transactions that each check the mark; then
//! the page key, the head and the origin, together. It must never write
//! under a prefix that held anything, and never leave one that a replica
//! would take for a finished store before that last transaction.

use std::collections::HashMap;
use std::time::SystemTime;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use super::keyspace::{Keyspace, encode_record};
use super::retry::{retried, tried, unavailable};
use super::{EtcdStore, connect, members};
use crate::domain::{Actor, EventKind, Revision, Subject};
use crate::error::Error;
use crate::store::Endpoints;
use crate::store::snapshot::Snapshot;

/// etcd's default `--max-txn-ops` is 128: one put stays spare.
const OPS_PER_TXN: usize = 127;
/// Well under etcd's default request limit of 1.5 MiB.
const BYTES_PER_TXN: usize = 1 << 20;

/// How tokend's revisions map onto etcd's on one prefix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Origin {
    /// tokend revision = etcd revision + offset.
    offset: i64,
    /// The etcd revision of the restore's last transaction (0: never
    /// restored). etcd's history up to it holds the restore's puts.
    floor: i64,
}

impl Origin {
    /// The tokend revision of etcd revision `etcd` (0 for one before the
    /// restore that made the prefix).
    pub(super) fn revision(&self, etcd: i64) -> Revision {
        (etcd + self.offset).max(0) as Revision
    }

    /// The etcd revision of tokend revision `rev`.
    pub(super) fn etcd(&self, rev: Revision) -> i64 {
        rev as i64 - self.offset
    }

    /// Whether a put at etcd revision `mod_revision` is an event (not one
    /// of the restore's own puts).
    pub(super) fn is_event(&self, mod_revision: i64) -> bool {
        mod_revision > self.floor
    }

    /// The oldest tokend revision whose history etcd can hold.
    pub(super) fn oldest(&self) -> Revision {
        self.revision(self.floor) + 1
    }
}

/// The value of `m/origin`. Field names pinned: part of the etcd storage
/// format.
#[derive(Serialize, Deserialize)]
struct OriginRecord {
    /// Set while a restore is writing records; gone when it is finished.
    #[serde(rename = "restoring", default, skip_serializing_if = "is_false")]
    restoring: bool,
    /// The restored store's head: the tokend revision of this key's own put.
    #[serde(rename = "revision", default)]
    revision: Revision,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn encode(o: &OriginRecord) -> Vec<u8> {
    serde_json::to_vec(o).expect("the origin serialises")
}

/// The prefix's origin, read as a replica opens it; refused while a restore
/// into it has not finished.
pub(super) async fn read_origin(client: &Client, keys: &Keyspace) -> Result<Origin, Error> {
    let key = &keys.origin();
    let r = retried("reading the origin", client, |mut c| async move {
        c.get(key.as_str(), None).await
    })
    .await?;
    let Some(kv) = r.kvs().first() else {
        return Ok(Origin::default());
    };
    let o: OriginRecord =
        serde_json::from_slice(kv.value()).map_err(|e| super::corrupt("origin (m/origin)", e))?;
    if o.restoring {
        return Err(Error::invalid(
            "store",
            format!(
                "a snapshot restore into etcd prefix {} has not finished: empty the prefix \
                 (etcdctl del --prefix {}) and restore again",
                keys.prefix(),
                keys.prefix()
            ),
        ));
    }
    Ok(Origin {
        offset: o.revision as i64 - kv.mod_revision(),
        floor: kv.mod_revision(),
    })
}

impl EtcdStore {
    /// Writes `snapshot` under `prefix`, which must hold no key at all.
    /// Returns once etcd has committed the last transaction: replicas may
    /// then open the prefix.
    pub async fn restore_into(
        endpoints: &Endpoints,
        prefix: &str,
        snapshot: &Snapshot,
    ) -> Result<(), Error> {
        let members = members::survey(endpoints).await?;
        let client = connect::connect(endpoints, members::in_rotation(&members, endpoints)).await?;
        let keys = Keyspace::new(prefix.to_string());
        let count = || Some(GetOptions::new().with_prefix().with_count_only());
        let r = tried(
            &client,
            |_| false,
            |mut c| async move { c.get(prefix, count()).await },
        )
        .await
        .map_err(|f| connect::refused(endpoints, "reading the prefix", &f))?;
        if r.count() > 0 {
            return Err(Error::invalid(
                "store",
                format!(
                    "etcd prefix {prefix} holds {} keys: a snapshot is restored only into an empty \
                     prefix",
                    r.count()
                ),
            ));
        }
        let mark = encode(&OriginRecord {
            restoring: true,
            revision: snapshot.restored_head(),
        });
        let nothing_yet = [
            Compare::create_revision(keys.origin(), CompareOp::Equal, 0),
            Compare::create_revision(keys.page_key(), CompareOp::Equal, 0),
        ];
        let marked = txn(
            &client,
            Txn::new()
                .when(nothing_yet.clone())
                .and_then([TxnOp::put(keys.origin(), mark, None)]),
        )
        .await?;
        let Some(marked_at) = marked else {
            return Err(raced(prefix));
        };
        let still_ours = || Compare::mod_revision(keys.origin(), CompareOp::Equal, marked_at);

        let mut batch = Vec::new();
        let mut bytes = 0;
        for (key, value) in records(&keys, snapshot) {
            if batch.len() == OPS_PER_TXN || bytes + value.len() > BYTES_PER_TXN {
                let puts = std::mem::take(&mut batch);
                put_all(&client, still_ours(), puts, prefix).await?;
                bytes = 0;
            }
            bytes += key.len() + value.len();
            batch.push(TxnOp::put(key, value, None));
        }
        if !batch.is_empty() {
            put_all(&client, still_ours(), batch, prefix).await?;
        }

        // Last, together: the page key (a replica opening the prefix finds
        // it and keeps it), the head and the origin, both at the restored
        // store's head (past the snapshot's revision: `RESTORE_GAP`) by
        // definition.
        let origin = encode(&OriginRecord {
            restoring: false,
            revision: snapshot.restored_head(),
        });
        let done = txn(
            &client,
            Txn::new()
                .when([
                    still_ours(),
                    Compare::create_revision(keys.page_key(), CompareOp::Equal, 0),
                ])
                .and_then([
                    TxnOp::put(keys.page_key(), snapshot.page_key.to_vec(), None),
                    TxnOp::put(keys.head(), "", None),
                    TxnOp::put(keys.origin(), origin, None),
                ]),
        )
        .await?;
        done.map(|_| ()).ok_or_else(|| raced(prefix))
    }
}

fn raced(prefix: &str) -> Error {
    Error::invalid(
        "store",
        format!(
            "something else wrote under etcd prefix {prefix} during the restore (a tokend \
             replica?): stop it, empty the prefix and restore again"
        ),
    )
}

/// Runs `t`: the etcd revision it committed at, or `None` when its guards
/// failed.
async fn txn(client: &Client, t: Txn) -> Result<Option<i64>, Error> {
    let r = client
        .clone()
        .txn(t)
        .await
        .map_err(|e| unavailable("restoring", e))?;
    Ok(r.succeeded()
        .then(|| r.header().map_or(0, |h| h.revision())))
}

async fn put_all(
    client: &Client,
    guard: Compare,
    puts: Vec<TxnOp>,
    prefix: &str,
) -> Result<(), Error> {
    let t = Txn::new().when([guard]).and_then(puts);
    match txn(client, t).await? {
        Some(_) => Ok(()),
        None => Err(raced(prefix)),
    }
}

/// Every record key and value of `s`: accounts, then tokens (tombstones
/// included, so their ids are never issued again), each live token with its
/// secret's hash. The event each value carries is the restore's own: it is
/// below the origin, so no stream ever sees it.
fn records<'a>(
    keys: &'a Keyspace,
    s: &'a Snapshot,
) -> impl Iterator<Item = (String, Vec<u8>)> + 'a {
    let secrets: HashMap<_, _> = s.secrets.iter().map(|(h, id)| (id, *h)).collect();
    let now = SystemTime::now();
    let actor = Actor("restore".into());
    let subjects = (s.accounts.iter().cloned().map(Subject::Account))
        .chain(s.tokens.iter().cloned().map(Subject::Token));
    subjects.map(move |subject| {
        let (key, secret, kind) = match &subject {
            Subject::Account(a) => (keys.account(&a.id), None, EventKind::Created),
            Subject::Token(t) if t.is_deleted() => (keys.token(&t.id), None, EventKind::Deleted),
            Subject::Token(t) => (
                keys.token(&t.id),
                secrets.get(&t.id).copied(),
                EventKind::Created,
            ),
        };
        (
            key,
            encode_record(&subject, secret, kind, now, &actor, None),
        )
    })
}
