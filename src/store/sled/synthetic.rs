//! Old tombstones written into a stopped data dir in bulk, for the scale
//! benchmark only (`tokend-bench --only scale`; compiled with `--features
//! bench`, never into the product).
//!
//! Why: the scale scenario opens a store of a million live tokens and ten
//! million old tombstones. Made through the API, ten million tombstones
//! take hours to create and delete, and tens of GB of disk before the
//! shrinker packs them. This writes what the shrinker would have left
//! instead, through the shrinker's own write ([`tombstones::pack`]) and
//! the issued-id marks a migration writes ([`layout::write_issued`]):
//! never a shape of its own. Its numbers are the lowest never issued, so
//! its packs are denser than those of tokens issued at random numbers.
//!
//! Owns choosing numbers no token was ever issued and making plausible
//! tombstones of them. It must never run on a data dir a server has open
//! (sled's lock refuses it), write a live token, or reuse an issued
//! number: numbers are marked issued before their tombstones are written.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::layout::{self, K_FORMAT};
use super::open::open_sled;
use super::tombstones::{self, Old};
use super::{corrupt, format, io_error};
use crate::domain::{AccountId, Actor, Audit, AuditEntry, Token, TokenId, TokenStatus};
use crate::error::Error;
use crate::state::TOKEN_ID_SPACE;
use crate::store::record;

/// `u/` chunks (4,096 numbers each) packed per call: ~100,000 tombstones.
const CHUNKS_PER_PACK: u32 = 25;

/// Adds `n` old tombstones to the stopped sled store in `data_dir`, spread
/// over its accounts, deleted a year ago; returns how many it wrote (fewer
/// only if the id space ran out) and the ids of `sample` of them, spread
/// over all. The caller keeps the store below
/// [`TOKEN_ID_LIMIT`](crate::command::TOKEN_ID_LIMIT) issued ids, or
/// tokend will refuse new tokens on it.
pub fn add_old_tombstones(
    data_dir: &Path,
    n: u64,
    sample: u64,
) -> Result<(u64, Vec<TokenId>), Error> {
    let stride = (n / sample.max(1)).max(1);
    let mut sampled = Vec::new();
    let (db, tree) = open_sled(data_dir)?;
    match tree.get(K_FORMAT).map_err(|e| io_error("reading", e))? {
        Some(f) if f.as_ref() == format::CURRENT => {}
        other => {
            let found = other.map(|f| String::from_utf8_lossy(&f).into_owned());
            return Err(corrupt("format marker", format!("{found:?}")));
        }
    }
    let accounts = layout::account_ids(&tree)?;
    if accounts.is_empty() {
        return Err(Error::NotFound {
            what: "account to hold tombstones",
            id: data_dir.display().to_string(),
        });
    }
    let revision = layout::revision(&tree)?;
    let year_ago = SystemTime::now() - Duration::from_secs(365 * 86_400);
    let by = Actor("TKN-0000-0001".into());
    let failed = |e| io_error("writing tombstones", e);
    let mut added: BTreeMap<AccountId, u64> = BTreeMap::new();
    let (mut written, mut chunk) = (0u64, 0u32);
    while written < n && chunk < TOKEN_ID_SPACE.div_ceil(layout::ISSUED_CHUNK) {
        let mut old = Vec::new();
        for _ in 0..CHUNKS_PER_PACK {
            for number in layout::unissued_in(&tree, chunk)? {
                if written == n {
                    break;
                }
                let i = written as usize;
                let at = year_ago + Duration::from_millis(written);
                let t = Token {
                    id: TokenId::from_number(number),
                    account_id: accounts[i % accounts.len()].clone(),
                    name: format!("old {i}"),
                    description: String::new(),
                    icon: None,
                    status: TokenStatus::Deleted,
                    modules: Default::default(),
                    revision,
                    audit: Audit {
                        created: Some(AuditEntry {
                            at: at - Duration::from_secs(30 * 86_400),
                            by: by.clone(),
                        }),
                        deleted: Some(AuditEntry { at, by: by.clone() }),
                        ..Audit::default()
                    },
                    last_access_time: None,
                    expire_time: None,
                    replaces: None,
                    replaced_by: None,
                };
                if written.is_multiple_of(stride) {
                    sampled.push(t.id.clone());
                }
                *added.entry(t.account_id.clone()).or_default() += 1;
                old.push(Old {
                    shrunk: record::encode_shrunk(&t).expect("a deleted token"),
                    id: t.id,
                    in_place: false,
                });
                written += 1;
            }
            chunk += 1;
        }
        layout::write_issued(&tree, old.iter().map(|o| o.id.number())).map_err(failed)?;
        tombstones::pack(&tree, old)?;
    }
    // Counted as if deleted before the counts' last revision: a replay of
    // the log counts what it counted before.
    for (account, n) in added {
        let key = layout::count_key(&account);
        let (count, last) = match tree.get(&key).map_err(failed)? {
            Some(v) => layout::decode_count(&v)?,
            None => (0, 0),
        };
        tree.insert(key, layout::count_value(count + n, last))
            .map_err(failed)?;
    }
    db.flush().map_err(failed)?;
    Ok((written, sampled))
}
