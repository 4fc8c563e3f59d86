//! The etcd keyspace: every key tokend uses under its prefix, and the one
//! codec for what a record key holds.
//!
//! Owns key names (built and parsed only here, so the table in the module
//! doc of `etcd/mod.rs` is the whole layout) and the record envelope: a
//! record key holds the record, the secret's hash while the token is live,
//! and the event that wrote it, so a watch rebuilds the event from the put
//! alone. The records inside are `record.rs`'s, the storage format shared
//! with sled. It must never talk to etcd, and never hold a plain secret.

use std::borrow::Cow;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::corrupt;
use crate::domain::{AccountId, Actor, Event, EventKind, Revision, Subject, TokenId};
use crate::error::Error;
use crate::secret::SecretHash;
use crate::store::record::{AccountRecord, EventKindRecord, Record, TimeRecord, TokenRecord};

/// Records: only this part of the keyspace is watched, so every put under
/// it is one event, at its mod revision.
const RECORDS: &str = "r/";
const ACCOUNTS: &str = "r/a/";
const TOKENS: &str = "r/t/";
/// An account's guard: touched by every token write that depends on the
/// account, compared by account updates that depend on its tokens.
const GUARDS: &str = "g/";
/// Last-access times: not events, so outside `r/`.
const ACCESS: &str = "l/";
/// Written by every mutation: its mod revision is the last event's.
const HEAD: &str = "m/head";
/// Put alone to reserve an etcd revision for a commit of several changes.
const RESERVE: &str = "m/reserve";
const PAGE_KEY: &str = "m/page_key";
/// Where tokend's revisions start in etcd's: written by a snapshot restore.
const ORIGIN: &str = "m/origin";
/// Each live replica's applied revision, leased.
const REPLICAS: &str = "replicas/";
const BOOTSTRAP_LOCK: &str = "lock/bootstrap";

/// The keys of one tokend: everything under its prefix (`/name/`).
pub(super) struct Keyspace {
    prefix: String,
}

impl Keyspace {
    pub(super) fn new(prefix: String) -> Keyspace {
        Keyspace { prefix }
    }

    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, part: &str, name: &str) -> String {
        format!("{}{part}{name}", self.prefix)
    }

    /// The prefix of every record key: what the pump watches.
    pub(super) fn records(&self) -> String {
        self.key(RECORDS, "")
    }

    pub(super) fn account(&self, id: &AccountId) -> String {
        self.key(ACCOUNTS, id.as_str())
    }

    /// The prefix of every token record key.
    pub(super) fn tokens(&self) -> String {
        self.key(TOKENS, "")
    }

    pub(super) fn token(&self, id: &TokenId) -> String {
        self.key(TOKENS, id.as_str())
    }

    pub(super) fn guard(&self, account: &AccountId) -> String {
        self.key(GUARDS, account.as_str())
    }

    /// The prefix of every last-access key.
    pub(super) fn access_times(&self) -> String {
        self.key(ACCESS, "")
    }

    pub(super) fn access(&self, id: &TokenId) -> String {
        self.key(ACCESS, id.as_str())
    }

    /// The token a last-access key is of; `None` for any other key.
    pub(super) fn access_id(&self, key: &[u8]) -> Option<TokenId> {
        let id = key.strip_prefix(self.access_times().as_bytes())?;
        TokenId::parse(std::str::from_utf8(id).ok()?).ok()
    }

    pub(super) fn head(&self) -> String {
        self.key(HEAD, "")
    }

    pub(super) fn reserve(&self) -> String {
        self.key(RESERVE, "")
    }

    pub(super) fn page_key(&self) -> String {
        self.key(PAGE_KEY, "")
    }

    pub(super) fn origin(&self) -> String {
        self.key(ORIGIN, "")
    }

    /// The prefix of every replica's registration.
    pub(super) fn replicas(&self) -> String {
        self.key(REPLICAS, "")
    }

    pub(super) fn replica(&self, name: &str) -> String {
        self.key(REPLICAS, name)
    }

    pub(super) fn bootstrap_lock(&self) -> String {
        self.key(BOOTSTRAP_LOCK, "")
    }
}

/// What a record key holds: exactly one of `account` and `token`, and the
/// event that wrote it. Field names pinned: this is the etcd side of the
/// storage format (version 1).
#[derive(Serialize, Deserialize)]
struct Envelope<'a> {
    #[serde(
        rename = "account",
        skip_serializing_if = "Option::is_none",
        default,
        borrow
    )]
    account: Option<AccountRecord<'a>>,
    #[serde(
        rename = "token",
        skip_serializing_if = "Option::is_none",
        default,
        borrow
    )]
    token: Option<TokenRecord<'a>>,
    /// The secret's hash while the token is live; gone once deleted.
    #[serde(rename = "secret", skip_serializing_if = "Option::is_none", default)]
    secret: Option<SecretHash>,
    #[serde(rename = "kind")]
    kind: EventKindRecord,
    #[serde(rename = "time")]
    time: TimeRecord,
    #[serde(rename = "actor", borrow)]
    actor: Cow<'a, str>,
    /// The event's tokend revision, when it is not the put's: each earlier
    /// change of a commit of several (a roll) takes a revision reserved
    /// before it (`txn.rs`). Left out otherwise.
    #[serde(rename = "revision", skip_serializing_if = "Option::is_none", default)]
    revision: Option<Revision>,
}

/// A record key's value, decoded: the record after a change, the secret
/// index entry beside it, and the change's event.
pub(super) struct Committed {
    pub(super) subject: Subject,
    pub(super) secret: Option<SecretHash>,
    pub(super) kind: EventKind,
    pub(super) time: SystemTime,
    pub(super) actor: Actor,
    /// A reserved revision the event takes instead of its put's.
    reserved: Option<Revision>,
}

impl Committed {
    /// The event's revision, for a record put at tokend revision `put`.
    pub(super) fn revision(&self, put: Revision) -> Revision {
        self.reserved.unwrap_or(put)
    }

    /// The event as every stream carries it (the secret stays behind), for a
    /// record put at tokend revision `put`.
    pub(super) fn into_event(self, put: Revision) -> Event {
        Event {
            revision: self.revision(put),
            kind: self.kind,
            subject: self.subject,
            time: self.time,
            actor: self.actor,
        }
    }
}

/// The value a change's record key is put to; `reserved`: the revision its
/// event takes, when not the put's own.
pub(super) fn encode_record(
    subject: &Subject,
    secret: Option<SecretHash>,
    kind: EventKind,
    time: SystemTime,
    actor: &Actor,
    reserved: Option<Revision>,
) -> Vec<u8> {
    let (account, token) = match subject {
        Subject::Account(a) => (Some(AccountRecord::of(a)), None),
        Subject::Token(t) => (None, Some(TokenRecord::of(t))),
    };
    let envelope = Envelope {
        account,
        token,
        secret,
        kind: kind.into(),
        time: TimeRecord::of(&time),
        actor: Cow::Borrowed(&actor.0),
        revision: reserved,
    };
    serde_json::to_vec(&envelope).expect("records serialise")
}

/// The one decoder of record values: loading, the pump and history reads
/// all go through it.
pub(super) fn decode_record(value: &[u8]) -> Result<Committed, Error> {
    let bad = |e: String| corrupt("record", e);
    let e: Envelope = serde_json::from_slice(value).map_err(|e| bad(e.to_string()))?;
    let subject = match (e.account, e.token) {
        (Some(a), None) => Subject::Account(a.into_domain().map_err(bad)?),
        (None, Some(t)) => Subject::Token(t.into_domain().map_err(bad)?),
        _ => return Err(bad("neither one account nor one token".into())),
    };
    Ok(Committed {
        subject,
        secret: e.secret,
        kind: e.kind.into(),
        time: e.time.into_domain().map_err(bad)?,
        actor: Actor(e.actor.into()),
        reserved: e.revision,
    })
}

/// The value of a last-access key.
pub(super) fn encode_access(at: &SystemTime) -> Vec<u8> {
    crate::store::record::encode::<TimeRecord>(at)
}

pub(super) fn decode_access(value: &[u8]) -> Result<SystemTime, String> {
    crate::store::record::decode::<TimeRecord>(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_key_is_under_the_watched_prefix() {
        // The pump watches `r/` only: a record elsewhere would never
        // become an event.
        assert!(ACCOUNTS.starts_with(RECORDS) && TOKENS.starts_with(RECORDS));
        for other in [
            GUARDS,
            ACCESS,
            HEAD,
            PAGE_KEY,
            ORIGIN,
            REPLICAS,
            BOOTSTRAP_LOCK,
        ] {
            assert!(!other.starts_with(RECORDS), "{other}");
        }
    }

    #[test]
    fn keys_are_built_and_parsed_back() {
        let keys = Keyspace::new("/tokend/".into());
        let id = TokenId::parse("TKN-0000-0042").unwrap();
        let account = AccountId::parse("ACC-0000-0007").unwrap();
        assert_eq!(keys.token(&id), "/tokend/r/t/TKN-0000-0042");
        assert_eq!(keys.account(&account), "/tokend/r/a/ACC-0000-0007");
        assert_eq!(keys.guard(&account), "/tokend/g/ACC-0000-0007");
        assert_eq!(keys.access(&id), "/tokend/l/TKN-0000-0042");
        assert_eq!(keys.access_id(keys.access(&id).as_bytes()), Some(id));
        assert_eq!(keys.access_id(b"/tokend/l/nonsense"), None);
        assert_eq!(keys.access_id(b"/other/l/TKN-0000-0042"), None);
        assert_eq!(keys.head(), "/tokend/m/head");
        assert_eq!(keys.origin(), "/tokend/m/origin");
        assert_eq!(keys.replica("ab12"), "/tokend/replicas/ab12");
        assert_eq!(keys.bootstrap_lock(), "/tokend/lock/bootstrap");
    }

    /// Every record value of the version-1 etcd fixture decodes, and
    /// encodes back to the very same bytes: an older tokend reads what this
    /// one writes.
    #[test]
    fn version_1_records_read_and_write_back_byte_for_byte() {
        let history: serde_json::Value =
            serde_json::from_str(include_str!("../../../tests/fixtures/etcd-v1/history.json"))
                .unwrap();
        let mut seen = 0;
        for entry in history.as_array().unwrap() {
            let key = entry["key"].as_str().unwrap();
            let Some(value) = entry["value"].as_str() else {
                continue;
            };
            if key.starts_with(RECORDS) {
                let c = decode_record(value.as_bytes()).unwrap();
                let again =
                    encode_record(&c.subject, c.secret, c.kind, c.time, &c.actor, c.reserved);
                assert_eq!(String::from_utf8(again).unwrap(), value, "{key}");
                seen += 1;
            } else if key.starts_with(ACCESS) {
                let at = decode_access(value.as_bytes()).unwrap();
                assert_eq!(String::from_utf8(encode_access(&at)).unwrap(), value);
            }
        }
        assert!(seen > 10, "{seen} records");
    }
}
