//! The gRPC layer: `TokenService`, `AccountService` and Envoy's
//! `Authorization` over the store.
//!
//! Owns translating requests into domain commands and reads, and answers into
//! messages. Every handler follows the same path: parse and validate fields
//! (→ `INVALID_ARGUMENT`), check what the authenticated caller may do
//! ([`crate::auth`]), build a [`Command`](crate::command::Command), call
//! [`Store::apply`] (which answers once durable), convert the result. Errors
//! become statuses in one place, `convert`. This layer must never touch sled,
//! hold state of its own (`encoded` keeps recent events' bytes, derived
//! from the store's events), or log a secret.

mod accounts;
pub mod authz;
pub mod convert;
mod encoded;
mod events;
mod roll;
mod snapshot;
mod tokens;

pub use authz::{Authz, AuthzConfig};

use std::sync::Arc;

use crate::leaks::LeakAction;

use encoded::EncodedEvents;

use crate::error::Error;
use crate::query::Pager;
use crate::store::Store;
use crate::watch::Watchers;

/// The handlers of both services; cheap to clone.
#[derive(Clone)]
pub struct Service {
    store: Arc<dyn Store>,
    watchers: Watchers,
    /// What `ReportLeakedSecrets` does to a live token it is told of.
    leak_action: LeakAction,
    /// Recent change events as every watch stream sends them.
    encoded: Arc<EncodedEvents>,
}

impl Service {
    pub fn new(store: Arc<dyn Store>, watchers: Watchers, leak_action: LeakAction) -> Service {
        Service {
            store,
            watchers,
            leak_action,
            encoded: Arc::default(),
        }
    }
}

/// One page of a list RPC (AIP-158).
struct Page<T> {
    items: Vec<T>,
    next_page_token: String,
    /// How many items match in all, on every page.
    total_size: i32,
}

impl Service {
    /// The one paging path of both list RPCs. `query` names the resource
    /// and every request field that shapes the result set, so a page token
    /// is refused by any other query; `scan(after)` yields the matching
    /// items in id order after `after` (exclusive).
    /// `total` is the number of matches when the caller knows it without a
    /// scan (a list with no filter); else the matches are counted.
    fn list<T, Id, I>(
        &self,
        query: &[&str],
        page_token: &str,
        size: usize,
        scan: impl Fn(Option<&Id>) -> I,
        id: impl Fn(&T) -> &str,
        total: Option<usize>,
    ) -> Result<Page<T>, Error>
    where
        I: Iterator<Item = T>,
        Id: std::str::FromStr<Err = Error>,
    {
        let pager = Pager::new(self.store.page_key(), query);
        let after = pager
            .decode(page_token)?
            .map(|s| s.parse::<Id>())
            .transpose()?;
        let total = total.unwrap_or_else(|| scan(None).count());
        let (items, next_page_token) = pager.page(scan(after.as_ref()), size, id);
        Ok(Page {
            items,
            next_page_token,
            total_size: i32::try_from(total).unwrap_or(i32::MAX),
        })
    }
}

/// An optional etag: empty on the wire means "not given".
fn etag(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// The paths an update touches (AIP-134). `*` means every updatable field;
/// no mask means every updatable field that `is_set` in the request.
fn mask_paths(
    mask: Option<&prost_types::FieldMask>,
    updatable: &'static [&'static str],
    is_set: impl Fn(&str) -> bool,
) -> Result<Vec<&'static str>, Error> {
    let given: Vec<&str> = mask
        .map(|m| m.paths.iter().map(String::as_str).collect())
        .unwrap_or_default();
    if given.is_empty() {
        return Ok(updatable.iter().copied().filter(|p| is_set(p)).collect());
    }
    if given == ["*"] {
        return Ok(updatable.to_vec());
    }
    let mut paths = Vec::new();
    for path in given {
        let known = updatable.iter().find(|u| **u == path).ok_or_else(|| {
            Error::invalid(
                "update_mask",
                format!(
                    "{:?} cannot be updated; updatable fields: {}",
                    crate::domain::quote_input(path),
                    updatable.join(", ")
                ),
            )
        })?;
        if !paths.contains(known) {
            paths.push(*known);
        }
    }
    Ok(paths)
}
