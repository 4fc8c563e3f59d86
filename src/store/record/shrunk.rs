//! The shrunk record of an old tombstone: the sled store's own shape for
//! what the contract keeps of a deleted token once
//! `--tombstone-shrink-after` has passed (`sled/shrink.rs` shrinks,
//! `sled/tombstones.rs` packs, in `tombstones/pack_format.rs`'s format).
//!
//! Owns that shape and its conversions. Like every shape in
//! `store/record.rs`, it must never change without a new format version,
//! and never hold a secret (a tombstone has none).

use std::borrow::Cow;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{Record, TimeRecord};
use crate::domain::{AccountId, Actor, Audit, AuditEntry, Modules, Token, TokenId, TokenStatus};

/// An old tombstone, shrunk to what the contract keeps of a deleted
/// token once `--tombstone-shrink-after` has passed: its account, name and
/// revision, when it was created, and when and by whom it was deleted. Not
/// its description, icon, modules, expiry or the rest of its audit trail.
/// Stored by sled only (`d/<id>`, after a tag byte; the id is the key), so
/// the short field names are this format's own.
#[derive(Serialize, Deserialize)]
struct ShrunkRecord<'a> {
    #[serde(rename = "a", borrow)]
    account_id: Cow<'a, str>,
    #[serde(rename = "n", borrow)]
    name: Cow<'a, str>,
    #[serde(rename = "r")]
    revision: u64,
    /// When it was created, in seconds since the epoch.
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    created: Option<u64>,
    /// When it was deleted: seconds since the epoch, and nanoseconds.
    #[serde(rename = "d")]
    deleted_secs: u64,
    #[serde(rename = "dn")]
    deleted_nanos: u32,
    /// Who deleted it.
    #[serde(rename = "by", borrow)]
    deleted_by: Cow<'a, str>,
}

/// The shrunk record of tombstone `t`; `None` if `t` is not deleted.
pub(in crate::store) fn encode_shrunk(t: &Token) -> Option<Vec<u8>> {
    let deleted = t.audit.deleted.as_ref()?;
    let at = TimeRecord::of(&deleted.at);
    let record = ShrunkRecord {
        account_id: Cow::Borrowed(t.account_id.as_str()),
        name: Cow::Borrowed(&t.name),
        revision: t.revision,
        created: t.audit.created.as_ref().map(|c| TimeRecord::of(&c.at).secs),
        deleted_secs: at.secs,
        deleted_nanos: at.nanos,
        deleted_by: Cow::Borrowed(&deleted.by.0),
    };
    Some(serde_json::to_vec(&record).expect("records serialise"))
}

/// Tombstone `id` as its shrunk record `bytes` keeps it.
pub(in crate::store) fn decode_shrunk(id: &TokenId, bytes: &[u8]) -> Result<Token, String> {
    let r: ShrunkRecord = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let created = r
        .created
        .map(|secs| {
            let at = UNIX_EPOCH
                .checked_add(Duration::from_secs(secs))
                .ok_or_else(|| format!("created at {secs} s: out of range"))?;
            Ok::<_, String>(AuditEntry {
                at,
                by: Actor("".into()),
            })
        })
        .transpose()?;
    Ok(Token {
        id: id.clone(),
        account_id: AccountId::parse(&r.account_id).map_err(|e| e.to_string())?,
        name: r.name.into_owned(),
        description: String::new(),
        icon: None,
        status: TokenStatus::Deleted,
        modules: Modules::new(),
        revision: r.revision,
        audit: Audit {
            created,
            deleted: Some(AuditEntry {
                at: TimeRecord {
                    secs: r.deleted_secs,
                    nanos: r.deleted_nanos,
                }
                .into_domain()?,
                by: Actor(r.deleted_by.into()),
            }),
            ..Audit::default()
        },
        last_access_time: None,
        expire_time: None,
        replaces: None,
        replaced_by: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shrunk tombstone keeps what the contract promises (id, account,
    /// name, revision, created, deleted when and by whom), drops the rest,
    /// and is small: the 200-byte budget per old tombstone includes sled's
    /// key and overhead.
    #[test]
    fn a_shrunk_tombstone_keeps_the_contracts_fields_in_a_hundred_bytes() {
        use crate::domain::AccountType;
        use crate::state::testkit::World;
        let mut w = World::default();
        let acc = w.account(AccountType::Client, &["commerce"]);
        let (id, _) = w.token(&acc, &["commerce"]);
        w.delete_token(&id);
        let mut whole = (*w.token_rec(&id)).clone();
        whole.description = "d".repeat(200);
        let bytes = encode_shrunk(&whole).expect("a tombstone shrinks");
        assert!(
            bytes.len() <= 130,
            "{} bytes: {}",
            bytes.len(),
            String::from_utf8_lossy(&bytes)
        );
        let back = decode_shrunk(&id, &bytes).unwrap();
        assert_eq!(
            (&back.id, &back.account_id, &back.name),
            (&id, &acc, &whole.name)
        );
        assert_eq!(
            (back.status, back.revision),
            (TokenStatus::Deleted, whole.revision)
        );
        assert_eq!(back.audit.deleted, whole.audit.deleted);
        let created = |t: &Token| {
            t.audit
                .created
                .as_ref()
                .map(|c| c.at.duration_since(UNIX_EPOCH).unwrap().as_secs())
        };
        assert_eq!(created(&back), created(&whole));
        assert!(back.description.is_empty() && back.modules.is_empty() && back.icon.is_none());
        // A live token has no shrunk form.
        let (live, _) = w.token(&acc, &[]);
        assert!(encode_shrunk(&w.token_rec(&live)).is_none());
    }
}
