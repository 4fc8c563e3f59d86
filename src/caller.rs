//! Who a caller is and what they may do (docs/contract.md §4): the pure
//! permission rules, decided on domain values alone.
//!
//! Owns [`Caller`] (a live token of an active account) and every rule about
//! it: operator or token manager, which accounts it sees, what it may grant,
//! whether a change revokes it. Everything here is a function of a caller
//! and a [`State`] or record: no I/O, no gRPC, no store, so the watch
//! streams, the interceptor and the handlers can all ask the same questions.
//! It must never decide anything from a request field the caller could forge.

use std::sync::Arc;

use crate::domain::{
    Account, AccountId, AccountStatus, AccountType, Actor, MODULE_ACCESS_MANAGEMENT,
    MODULE_PLATFORM_ACCOUNT_MANAGEMENT, Modules, Subject, Token, TokenStatus,
};
use crate::error::Error;
use crate::state::State;

/// An authenticated caller: a live token of an active account.
#[derive(Clone, Debug)]
pub struct Caller {
    pub token: Arc<Token>,
    pub account: Arc<Account>,
}

impl Caller {
    /// What audit entries and events record as `by` / `actor`.
    pub fn actor(&self) -> Actor {
        Actor(self.token.id.as_str().into())
    }

    /// A token of an `OPERATIONS` account with `platform-account-management`
    /// manages every account and every token.
    pub fn is_operator(&self) -> bool {
        self.account.kind == AccountType::Operations
            && self
                .token
                .modules
                .contains(MODULE_PLATFORM_ACCOUNT_MANAGEMENT)
    }

    /// Token management (everything but `VerifyToken`) needs
    /// `access-management`, or operator rights.
    pub fn require_manager(&self) -> Result<(), Error> {
        if self.is_operator() || self.token.modules.contains(MODULE_ACCESS_MANAGEMENT) {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "token {} lacks the {MODULE_ACCESS_MANAGEMENT} module",
                self.token.id
            )))
        }
    }

    /// Refused unless an operator calls: `what` ("managing accounts")
    /// says what was refused.
    pub fn require_operator(&self, what: &str) -> Result<(), Error> {
        if self.is_operator() {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "{what} is for operators only"
            )))
        }
    }

    /// Only an operator may hand out operator rights: without this, a token
    /// manager of the Operations account could grant itself
    /// `platform-account-management`.
    pub fn may_grant(&self, modules: &Modules) -> Result<(), Error> {
        if modules.contains(MODULE_PLATFORM_ACCOUNT_MANAGEMENT) && !self.is_operator() {
            return Err(Error::PermissionDenied(format!(
                "only operators may grant {MODULE_PLATFORM_ACCOUNT_MANAGEMENT}"
            )));
        }
        Ok(())
    }

    /// Tombstones are for operators (docs/contract.md §2.3).
    pub fn may_show_deleted(&self, show_deleted: bool) -> Result<(), Error> {
        if show_deleted && !self.is_operator() {
            return Err(Error::PermissionDenied(
                "show_deleted is for operators".into(),
            ));
        }
        Ok(())
    }

    /// Whether this credential still authenticates in `state`.
    pub fn still_valid(&self, state: &State) -> bool {
        state
            .token(&self.token.id)
            .is_some_and(|t| t.status == TokenStatus::Active)
            && state
                .account(&self.account.id)
                .is_some_and(|a| a.status == AccountStatus::Active)
    }

    /// Whether the caller may see tokens of `account` at all. Callers that
    /// may not are answered as if the thing did not exist.
    pub fn sees(&self, account: &AccountId) -> bool {
        self.is_operator() || *account == self.token.account_id
    }

    /// The accounts a request with no `account_id` covers: every account for
    /// an operator (`None`), the caller's own otherwise.
    pub fn default_scope(&self) -> Option<AccountId> {
        (!self.is_operator()).then(|| self.token.account_id.clone())
    }
}

/// The credential of an `authorization: Bearer <secret>` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, credential) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credential.trim())
}

/// Whether `event` revokes the credential `caller` holds: its token is no
/// longer active, or its account was disabled.
pub fn revokes(caller: &Caller, subject: &Subject) -> Option<&'static str> {
    match subject {
        Subject::Token(t) if t.id == caller.token.id => match t.status {
            TokenStatus::Disabled => Some("disabled"),
            TokenStatus::Deleted => Some("deleted"),
            TokenStatus::Active => {
                // Still active, but with fewer rights than the stream needs.
                let now = Caller {
                    token: Arc::new(t.clone()),
                    account: caller.account.clone(),
                };
                if now.require_manager().is_err() || (caller.is_operator() && !now.is_operator()) {
                    Some("stripped of the modules this stream needs")
                } else {
                    None
                }
            }
        },
        Subject::Account(a) if a.id == caller.account.id && a.status != AccountStatus::Active => {
            Some("disabled with its account")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
