//! Rolling replacement: one command that makes a token's successor and
//! retires the token, planned as two changes that commit together.
//!
//! Owns what a roll may touch (an active, unexpired token not already
//! replaced), what the successor inherits (account, name, description, icon,
//! modules; the old lifetime again unless asked otherwise) and how the old
//! token retires (an expiry at the end of the grace, or deleted at once for
//! none). The successor is made by the same code as `CreateToken`, so a roll
//! can never give a token its account would refuse as a new one. It must
//! never extend the old token's life, and never plan the old token's change
//! before the successor's: at no revision is neither of them usable.

use std::time::Duration;

use super::{Ctx, Expiry, NewToken, Plan, check_etag, deletion, new_token, unexpired_token};
use crate::domain::{EventKind, Subject, Token, TokenId, TokenStatus};
use crate::error::{Error, reason};
use crate::state::{Change, SecretOp, State};

/// The longest grace a roll gives the old secret: long enough to roll a
/// fleet over a week, short enough that a forgotten old secret dies soon
/// (Stripe's longest roll window is the same).
pub const MAX_GRACE: Duration = Duration::from_secs(7 * 86_400);

/// A validated roll request.
#[derive(Debug, Clone)]
pub struct Roll {
    pub id: TokenId,
    pub etag: Option<String>,
    /// How long the old secret keeps working; zero deletes it in the same
    /// commit. At most [`MAX_GRACE`] (checked when the request is read).
    pub grace: Duration,
    /// The successor's expiry; `None`: the old token's lifetime again.
    pub expiry: Option<Expiry>,
}

pub(super) fn plan(state: &State, roll: &Roll, ctx: &Ctx) -> Result<Plan, Error> {
    let id = &roll.id;
    let current = unexpired_token(state, id, ctx.now)?;
    check_etag("token", &roll.etag, || current.etag())?;
    if let Some(successor) = &current.replaced_by {
        return Err(Error::precondition(
            reason::TOKEN_REPLACED,
            format!("token {id} was already replaced by {successor}: roll that one instead"),
        ));
    }
    if current.status != TokenStatus::Active {
        return Err(Error::precondition(
            reason::TOKEN_NOT_ACTIVE,
            format!("token {id} is disabled: enable it before rolling it, or delete it"),
        ));
    }
    let new = NewToken {
        account_id: current.account_id.clone(),
        name: current.name.clone(),
        description: current.description.clone(),
        icon: current.icon.clone(),
        modules: current.modules,
        expiry: roll.expiry.or_else(|| same_lifetime(current, state)),
        preset: None,
    };
    let (mut successor, hash, secret) = new_token(state, &new, ctx)?;
    successor.replaces = Some(id.clone());
    let created = Change {
        kind: EventKind::Created,
        subject: Subject::Token(successor.clone()),
        secret: SecretOp::Set(hash),
    };

    let mut old = (**current).clone();
    old.replaced_by = Some(successor.id.clone());
    let retired = if roll.grace.is_zero() {
        deletion(state, &old, ctx)
    } else {
        let end = ctx.now + roll.grace;
        old.expire_time = Some(old.expire_time.map_or(end, |at| at.min(end)));
        old.revision += 1;
        old.audit.updated = ctx.stamp();
        Change {
            kind: EventKind::Updated,
            subject: Subject::Token(old),
            secret: SecretOp::Keep,
        }
    };
    Ok(Plan::Change(vec![created, retired], secret))
}

/// The successor's default expiry: as long after the roll as the old token
/// was given at its creation, within what its account allows now (so the
/// default is never refused). `None` for a token that never expired: the
/// account's limit then applies as to any new token.
fn same_lifetime(old: &Token, state: &State) -> Option<Expiry> {
    let at = old.expire_time?;
    let created = old.audit.created.as_ref()?.at;
    let lifetime = at.duration_since(created).ok()?;
    let max = state
        .account(&old.account_id)
        .and_then(|a| a.max_token_lifetime);
    Some(Expiry::After(max.map_or(lifetime, |m| lifetime.min(m))))
}

#[cfg(test)]
mod tests;
