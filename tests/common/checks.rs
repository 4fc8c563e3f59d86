//! What a restarted tokend owes the crash suites' clients (tests/crash.rs,
//! tests/powercut.rs): every acknowledged write there, every acknowledged
//! delete still a delete (its secret refused), every unanswered write whole
//! or absent, tokens nobody heard of only from unanswered creates; and the
//! event log gap-free, one CREATED per id, agreeing with the state.
//!
//! Owns the checks, which panic with the seed's context on the first
//! broken promise. It must never change the server's state (reads and
//! verifies only), nor trust anything but gRPC answers.

use std::collections::BTreeMap;

use tokend::proto as pb;

use super::api::*;
use super::backend::assert_follows;
use super::workload::{Heard, Ledger, Op, Shared};

/// Reads change events from `from` through `head` (inclusive).
pub async fn catch_up(c: &mut Tokens, from: i64, head: i64) -> Vec<Heard> {
    let mut heard = Vec::new();
    if from > head {
        return heard;
    }
    let mut w = watch_from(c, from).await;
    loop {
        let e = next_change(&mut w).await;
        heard.push(Heard::of(&e));
        if e.revision >= head {
            return heard;
        }
    }
}

/// Every token, tombstones included, by id.
pub async fn state(c: &mut Tokens) -> BTreeMap<String, pb::Token> {
    let mut all = BTreeMap::new();
    let mut page_token = String::new();
    loop {
        let page = c
            .list_tokens(pb::ListTokensRequest {
                page_size: 1000,
                page_token,
                show_deleted: true,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        all.extend(page.tokens.into_iter().map(|t| (t.id.clone(), t)));
        if page.next_page_token.is_empty() {
            // Counted without reading a tombstone: the counts agree with
            // the tombstones listed (callers list a quiet server).
            assert_eq!(page.total_size as usize, all.len(), "total_size");
            return all;
        }
        page_token = page.next_page_token;
    }
}

/// Compares the restarted server with what the clients were told.
pub async fn check(ledger: &Shared, c: &mut Tokens, context: &str) {
    let state = state(c).await;
    let operator = operator_id(c).await;
    let touched = reconcile(&mut ledger.lock().unwrap(), &state, &operator, context);

    // Secrets agree with the state: a deleted token's secret fails.
    for (id, secret, deleted, status) in touched {
        let v = verify(c, &secret).await;
        let expected = if deleted {
            pb::VerifyResult::NotFound
        } else if status == pb::TokenStatus::Disabled as i32 {
            pb::VerifyResult::Disabled
        } else {
            pb::VerifyResult::Valid
        };
        assert_eq!(v.result, expected as i32, "{context}: verify of {id}");
        if deleted {
            let e = get(c, &id, false).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::NotFound, "{context}: get of {id}");
        }
    }
}

/// Checks every token against the ledger and learns which unanswered writes
/// happened. Returns (id, secret, deleted, status) of the tokens changed since
/// the last check.
pub fn reconcile(
    l: &mut Ledger,
    state: &BTreeMap<String, pb::Token>,
    operator: &str,
    context: &str,
) -> Vec<(String, String, bool, i32)> {
    let unknown: Vec<String> = state
        .keys()
        .filter(|id| !l.tokens.contains_key(*id) && !l.orphans.contains(*id) && **id != operator)
        .cloned()
        .collect();
    assert!(
        unknown.len() <= l.pending_creates,
        "{context}: {} tokens nobody created ({} creates were unanswered)",
        unknown.len(),
        l.pending_creates
    );
    l.orphans.extend(unknown);
    l.pending_creates = 0;

    for (id, k) in l.tokens.iter_mut() {
        let t = state
            .get(id)
            .unwrap_or_else(|| panic!("{context}: acknowledged create of {id} was lost"));
        if k.deleted_at.is_some() {
            assert_eq!(
                t.status,
                pb::TokenStatus::Deleted as i32,
                "{context}: acknowledged delete of {id} was undone"
            );
            continue;
        }
        match k.pending.take() {
            // The unanswered change happened, whole.
            Some(op) if t.revision == k.acked.revision + 1 => {
                let whole = match &op {
                    Op::Rename(name) => t.name == *name,
                    Op::Disable => t.status == pb::TokenStatus::Disabled as i32,
                    Op::Enable => t.status == pb::TokenStatus::Active as i32,
                    Op::Delete => t.status == pb::TokenStatus::Deleted as i32,
                };
                assert!(whole, "{context}: {id} after an unanswered {op:?}: {t:?}");
                if matches!(op, Op::Delete) {
                    k.deleted_at = Some(0);
                }
                k.acked = t.clone();
                l.touched.insert(id.clone());
            }
            // Otherwise it is exactly as last acknowledged.
            _ => assert!(
                t.etag == k.acked.etag
                    && t.revision == k.acked.revision
                    && t.status == k.acked.status
                    && t.name == k.acked.name,
                "{context}: {id} is {t:?}, was acknowledged as {:?}",
                k.acked
            ),
        }
    }

    std::mem::take(&mut l.touched)
        .into_iter()
        .map(|id| {
            let k = &l.tokens[&id];
            (id, k.secret.clone(), k.deleted_at.is_some(), k.acked.status)
        })
        .collect()
}

/// The log after `base`: consecutive, one CREATED per id and nothing after
/// DELETED, every acknowledged delete at its revision, and replayed it
/// gives the state.
pub async fn check_log(ledger: &Shared, c: &mut Tokens, base: i64, context: &str) -> Vec<Heard> {
    let head = head(c).await;
    let log = catch_up(c, base + 1, head).await;
    let mut prev = base;
    for h in &log {
        assert_follows(prev, h.revision, &format!("{context}: the log has a gap"));
        prev = h.revision;
    }
    let mut last: BTreeMap<&str, &Heard> = BTreeMap::new();
    for h in &log {
        let before = last.insert(&h.id, h);
        match before {
            None => assert_eq!(h.kind, EventType::Created as i32, "{context}: {h:?} first"),
            Some(b) => {
                assert_ne!(
                    h.kind,
                    EventType::Created as i32,
                    "{context}: {} created twice",
                    h.id
                );
                assert_ne!(
                    b.kind,
                    EventType::Deleted as i32,
                    "{context}: {h:?} after deletion"
                );
            }
        }
    }
    let state = state(c).await;
    let operator = operator_id(c).await;
    assert_eq!(
        last.len(),
        state.len() - 1,
        "{context}: the log names other tokens than the state"
    );
    for (id, t) in state.iter().filter(|(id, _)| **id != operator) {
        let h = last
            .get(id.as_str())
            .unwrap_or_else(|| panic!("{context}: {id} has no event"));
        assert_eq!(
            h.etag, t.etag,
            "{context}: the log's last word on {id} is stale"
        );
    }
    let l = ledger.lock().unwrap();
    for (id, k) in &l.tokens {
        if let Some(rev) = k.deleted_at.filter(|r| *r > 0) {
            let h = log
                .binary_search_by_key(&rev, |h| h.revision)
                .map(|i| &log[i])
                .unwrap_or_else(|_| {
                    panic!("{context}: revision {rev}, acknowledged as the deletion of {id}, is not in the log")
                });
            assert!(
                h.id == *id && h.kind == EventType::Deleted as i32,
                "{context}: revision {rev} acknowledged as the deletion of {id} is {h:?}"
            );
        }
    }
    log
}
