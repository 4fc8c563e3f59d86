//! Mutations: what each command does to the state, as a pure plan.
//!
//! Owns the rules that span records: state transitions, etag checks, modules
//! ⊆ the account's, ids never reused. [`plan`] reads a [`State`] and returns
//! the record as it will be after the change; it must never write anything.
//! A store plans each command against its latest state, persists the
//! resulting [`Change`] and applies it; a `validate_only` request runs the
//! same plan (through [`crate::store::Store::preview`]) and throws the result
//! away, so "would succeed" and "succeeds" cannot disagree.

use std::time::{Duration, SystemTime};

use crate::domain::{
    Account, AccountId, AccountStatus, AccountType, Actor, Audit, AuditEntry, EventKind, Modules,
    Subject, Token, TokenId, TokenStatus, at_most_latest,
};
use crate::error::{Error, reason};
use crate::secret::{Secret, SecretHash};
use crate::state::{Change, SecretOp, State};

/// A validated request to change something. Field formats were checked when
/// it was built; everything that depends on current state is checked by [`plan`].
#[derive(Debug, Clone)]
pub enum Command {
    CreateAccount(NewAccount),
    UpdateAccount {
        id: AccountId,
        etag: Option<String>,
        patch: AccountPatch,
    },
    CreateToken(NewToken),
    UpdateToken {
        id: TokenId,
        etag: Option<String>,
        patch: TokenPatch,
    },
    EnableToken {
        id: TokenId,
        etag: Option<String>,
    },
    DisableToken {
        id: TokenId,
        etag: Option<String>,
    },
    DeleteToken {
        id: TokenId,
        etag: Option<String>,
        allow_missing: bool,
    },
    /// Replaces a token by a successor (see [`roll`]).
    RollToken(roll::Roll),
}

#[derive(Debug, Clone)]
pub struct NewAccount {
    pub name: String,
    pub kind: AccountType,
    pub modules: Modules,
    pub max_token_lifetime: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct NewToken {
    pub account_id: AccountId,
    pub name: String,
    pub description: String,
    pub icon: Option<String>,
    pub modules: Modules,
    /// When it expires, as asked; `None`: as its account's
    /// `max_token_lifetime` allows (never, when the account has none).
    pub expiry: Option<Expiry>,
    /// Only for the bootstrap operator token, whose secret may be supplied by
    /// the operator (or written to disk before the token exists): its id and
    /// hash. Every other token gets a fresh id and a fresh secret.
    pub preset: Option<(TokenId, SecretHash)>,
}

/// A new token's expiry: an instant, or a lifetime counted from the
/// commit's own clock (so `validate_only` and the commit agree on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    At(SystemTime),
    After(Duration),
}

/// Fields to change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct TokenPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub icon: Option<Option<String>>,
    pub modules: Option<Modules>,
    /// `Some(None)` removes the expiry.
    pub expire_time: Option<Option<SystemTime>>,
}

#[derive(Debug, Clone, Default)]
pub struct AccountPatch {
    pub name: Option<String>,
    pub status: Option<AccountStatus>,
    pub modules: Option<Modules>,
    pub max_token_lifetime: Option<Option<Duration>>,
}

/// The outcome of planning a command.
#[expect(
    clippy::large_enum_variant,
    reason = "a plan lives for one call on the stack; boxing a no-op's record buys nothing"
)]
pub enum Plan {
    /// Something changes: commit the changes together, in this order, under
    /// consecutive revisions. One change for every command but a roll, whose
    /// successor's creation comes before the old token's retirement.
    Change(Vec<Change>, Option<Secret>),
    /// Nothing to write (a no-op update, an `allow_missing` delete of a
    /// missing token); the caller is answered with the subject as it is.
    Unchanged(Option<Subject>),
}

/// The context every change is made in.
pub struct Ctx<'a> {
    pub now: SystemTime,
    pub actor: &'a Actor,
}

impl Ctx<'_> {
    fn stamp(&self) -> Option<AuditEntry> {
        Some(AuditEntry {
            at: self.now,
            by: self.actor.clone(),
        })
    }
}

/// Plans `cmd` against `state`. Pure apart from drawing fresh ids and secrets.
pub fn plan(state: &State, cmd: &Command, ctx: &Ctx) -> Result<Plan, Error> {
    match cmd {
        Command::CreateAccount(new) => {
            let account = Account {
                id: fresh_id(
                    |id| state.account_id_taken(id),
                    AccountId::from_number,
                    draw,
                )?,
                name: new.name.clone(),
                kind: new.kind,
                status: AccountStatus::Active,
                modules: new.modules,
                revision: 1,
                audit: Audit {
                    created: ctx.stamp(),
                    ..Audit::default()
                },
                max_token_lifetime: new.max_token_lifetime,
            };
            Ok(change(EventKind::Created, Subject::Account(account)))
        }
        Command::UpdateAccount { id, etag, patch } => {
            let current = state
                .account(id)
                .ok_or_else(|| Error::account_not_found(id))?;
            check_etag("account", etag, || current.etag())?;
            let mut next = (**current).clone();
            if let Some(name) = &patch.name {
                next.name = name.clone();
            }
            if let Some(status) = patch.status {
                next.status = status;
            }
            if let Some(modules) = &patch.modules {
                check_modules_unused(state, &next.id, modules)?;
                next.modules = *modules;
            }
            if let Some(max) = patch.max_token_lifetime {
                next.max_token_lifetime = max;
            }
            if next == **current {
                return Ok(Plan::Unchanged(Some(Subject::Account(next))));
            }
            next.revision += 1;
            next.audit.updated = ctx.stamp();
            Ok(change(EventKind::Updated, Subject::Account(next)))
        }
        Command::CreateToken(new) => {
            let (token, hash, secret) = new_token(state, new, ctx)?;
            let change = Change {
                kind: EventKind::Created,
                subject: Subject::Token(token),
                secret: SecretOp::Set(hash),
            };
            Ok(Plan::Change(vec![change], secret))
        }
        Command::UpdateToken { id, etag, patch } => {
            let current = unexpired_token(state, id, ctx.now)?;
            check_etag("token", etag, || current.etag())?;
            let mut next = (**current).clone();
            if let Some(name) = &patch.name {
                next.name = name.clone();
            }
            if let Some(description) = &patch.description {
                next.description = description.clone();
            }
            if let Some(icon) = &patch.icon {
                next.icon = icon.clone();
            }
            if let Some(modules) = &patch.modules {
                let account = state
                    .account(&next.account_id)
                    .ok_or_else(|| Error::Internal(format!("token {id} has no account")))?;
                check_modules_granted(account, modules)?;
                next.modules = *modules;
            }
            if let Some(asked) = patch.expire_time
                && asked != current.expire_time
            {
                let account = state
                    .account(&next.account_id)
                    .ok_or_else(|| Error::Internal(format!("token {id} has no account")))?;
                if asked.is_none()
                    && let Some(max) = account.max_token_lifetime
                {
                    return Err(lifetime_exceeded(account, max));
                }
                next.expire_time = expiry_allowed("token.expire_time", account, asked, ctx.now)?;
            }
            if next == **current {
                return Ok(Plan::Unchanged(Some(Subject::Token(next))));
            }
            next.revision += 1;
            next.audit.updated = ctx.stamp();
            Ok(change(EventKind::Updated, Subject::Token(next)))
        }
        Command::EnableToken { id, etag } => {
            let current = unexpired_token(state, id, ctx.now)?;
            check_etag("token", etag, || current.etag())?;
            if current.status != TokenStatus::Disabled {
                return Err(Error::precondition(
                    reason::TOKEN_NOT_DISABLED,
                    format!("token {id} is already active"),
                ));
            }
            let mut next = (**current).clone();
            next.status = TokenStatus::Active;
            next.revision += 1;
            next.audit.enabled = ctx.stamp();
            Ok(change(EventKind::Enabled, Subject::Token(next)))
        }
        Command::DisableToken { id, etag } => {
            let current = unexpired_token(state, id, ctx.now)?;
            check_etag("token", etag, || current.etag())?;
            if current.status != TokenStatus::Active {
                return Err(Error::precondition(
                    reason::TOKEN_NOT_ACTIVE,
                    format!("token {id} is already disabled"),
                ));
            }
            let mut next = (**current).clone();
            next.status = TokenStatus::Disabled;
            next.revision += 1;
            next.audit.disabled = ctx.stamp();
            Ok(change(EventKind::Disabled, Subject::Token(next)))
        }
        Command::DeleteToken {
            id,
            etag,
            allow_missing,
        } => {
            let current = match live_token(state, id) {
                Ok(t) => t,
                Err(Error::NotFound { .. }) if *allow_missing => return Ok(Plan::Unchanged(None)),
                Err(e) => return Err(e),
            };
            check_etag("token", etag, || current.etag())?;
            Ok(Plan::Change(vec![deletion(state, current, ctx)], None))
        }
        Command::RollToken(r) => roll::plan(state, r, ctx),
    }
}

/// A new token as `new` asks, if its account may have it: the record, its
/// secret's hash, and the plain secret (none for a preset one). Creating and
/// rolling both make tokens here.
fn new_token(
    state: &State,
    new: &NewToken,
    ctx: &Ctx,
) -> Result<(Token, SecretHash, Option<Secret>), Error> {
    let account = state
        .account(&new.account_id)
        .ok_or_else(|| Error::account_not_found(&new.account_id))?;
    if account.status != AccountStatus::Active {
        return Err(Error::precondition(
            reason::ACCOUNT_DISABLED,
            format!(
                "account {} is disabled: it cannot get new tokens",
                account.id
            ),
        ));
    }
    check_modules_granted(account, &new.modules)?;
    let asked = new.expiry.map(|e| match e {
        Expiry::At(at) => at,
        Expiry::After(lifetime) => at_most_latest(ctx.now, lifetime),
    });
    let expire_time = expiry_allowed("expire_time", account, asked, ctx.now)?;
    let (id, hash, secret) = match &new.preset {
        Some((id, _)) if state.token_id_taken(id) => {
            return Err(Error::precondition(
                reason::TOKEN_ID_TAKEN,
                format!("token id {id} was issued before and is never reused"),
            ));
        }
        Some((id, hash)) => (id.clone(), *hash, None),
        None => {
            let id = fresh_token_id(state)?;
            let secret = Secret::generate(&id);
            (id, secret.hash(), Some(secret))
        }
    };
    let token = Token {
        id,
        account_id: new.account_id.clone(),
        name: new.name.clone(),
        description: new.description.clone(),
        icon: new.icon.clone(),
        status: TokenStatus::Active,
        modules: new.modules,
        revision: 1,
        audit: Audit {
            created: ctx.stamp(),
            ..Audit::default()
        },
        last_access_time: None,
        expire_time,
        replaces: None,
        replaced_by: None,
    };
    Ok((token, hash, secret))
}

/// The deletion of live token `current`: its tombstone, and its secret's
/// hash erased (what makes a deletion irreversible, even for someone holding
/// the database). Deleting and a roll without grace both end tokens here.
fn deletion(state: &State, current: &Token, ctx: &Ctx) -> Change {
    let mut next = current.clone();
    next.status = TokenStatus::Deleted;
    next.revision += 1;
    next.audit.deleted = ctx.stamp();
    // A live token always has a hash.
    let secret = match state.secret_of(&current.id) {
        Some(_) => SecretOp::Erase,
        None => SecretOp::Keep,
    };
    Change {
        kind: EventKind::Deleted,
        subject: Subject::Token(next),
        secret,
    }
}

fn change(kind: EventKind, subject: Subject) -> Plan {
    Plan::Change(
        vec![Change {
            kind,
            subject,
            secret: SecretOp::Keep,
        }],
        None,
    )
}

/// A token that exists and is not deleted: the state holds live tokens
/// only, so a tombstone answers NOT_FOUND to every mutation, and a deleted
/// token can never be changed or deleted twice.
fn live_token<'a>(state: &'a State, id: &TokenId) -> Result<&'a std::sync::Arc<Token>, Error> {
    state.token(id).ok_or_else(|| Error::token_not_found(id))
}

/// A live token that has not expired: an expired token only waits for its
/// deletion, and no change may bring its secret back to life.
fn unexpired_token<'a>(
    state: &'a State,
    id: &TokenId,
    now: SystemTime,
) -> Result<&'a std::sync::Arc<Token>, Error> {
    let token = live_token(state, id)?;
    if token.is_expired(now) {
        return Err(Error::precondition(
            reason::TOKEN_EXPIRED,
            format!("token {id} has expired and is being deleted; only deleting it is allowed"),
        ));
    }
    Ok(token)
}

/// The expiry a token gets when `asked` for at `now`: not in the past, and
/// within its account's `max_token_lifetime`, which also gives a token that
/// asked for none its expiry. `field` is the request's, for its error.
fn expiry_allowed(
    field: &'static str,
    account: &Account,
    asked: Option<SystemTime>,
    now: SystemTime,
) -> Result<Option<SystemTime>, Error> {
    if let Some(at) = asked
        && at <= now
    {
        return Err(Error::invalid(
            field,
            "is not in the future: a token must be usable when it is created or changed",
        ));
    }
    let Some(max) = account.max_token_lifetime else {
        return Ok(asked);
    };
    let limit = at_most_latest(now, max);
    match asked {
        None => Ok(Some(limit)),
        Some(at) if at <= limit => Ok(Some(at)),
        Some(_) => Err(lifetime_exceeded(account, max)),
    }
}

fn lifetime_exceeded(account: &Account, max: Duration) -> Error {
    Error::precondition(
        reason::LIFETIME_EXCEEDED,
        format!(
            "account {} lets its tokens live at most {} from now: give an expire_time no later than that",
            account.id,
            crate::domain::in_words(max)
        ),
    )
}

/// `current` is computed only when an etag was given: it is a hash, and
/// most calls give none.
fn check_etag(
    what: &'static str,
    given: &Option<String>,
    current: impl FnOnce() -> String,
) -> Result<(), Error> {
    match given {
        Some(etag) => match current() {
            current if *etag != current => Err(Error::EtagMismatch { what, current }),
            _ => Ok(()),
        },
        None => Ok(()),
    }
}

fn check_modules_granted(account: &Account, modules: &Modules) -> Result<(), Error> {
    let missing: Vec<&str> = modules.difference(&account.modules).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::precondition(
            reason::MODULE_NOT_IN_ACCOUNT,
            format!(
                "account {} does not have module(s) {}; a token's modules must be a subset of its account's",
                account.id,
                missing.join(", ")
            ),
        ))
    }
}

/// An account may not lose a module that one of its live tokens still holds:
/// the token would silently keep a permission its account no longer has.
fn check_modules_unused(
    state: &State,
    account: &AccountId,
    modules: &Modules,
) -> Result<(), Error> {
    let holder = state
        .tokens_after(Some(account), None)
        .find_map(|t| t.modules.difference(modules).next().map(|m| (t, m)));
    match holder {
        None => Ok(()),
        Some((t, m)) => Err(Error::precondition(
            reason::MODULE_IN_USE,
            format!(
                "module {m} is still held by token {}; remove it from the account's tokens first",
                t.id
            ),
        )),
    }
}

/// Token ids issued at most: 90% of the 10^8, refused past it long before
/// the space runs out (an operator sees it coming on
/// `tokend_token_ids_issued`), and free ids stay plentiful, so a new one is
/// found in a few steps.
pub const TOKEN_ID_LIMIT: u64 = 90_000_000;

/// A token id never issued before (tombstones count): a random number, or
/// the first free one after it. One search, bounded by the size of the id
/// space, however full: never a loop of draws.
pub fn fresh_token_id(state: &State) -> Result<TokenId, Error> {
    let issued = state.issued();
    let exhausted = || Error::TokenIdsExhausted {
        issued: issued.len(),
        limit: TOKEN_ID_LIMIT,
    };
    if issued.len() >= TOKEN_ID_LIMIT {
        return Err(exhausted());
    }
    let n = issued.free_from(draw_token()).ok_or_else(exhausted)?;
    Ok(TokenId::from_number(n))
}

/// A uniformly random token number; with the `failpoints` feature, tests
/// may fix it (`token-id-draw=return(N)`) to force collisions.
fn draw_token() -> u32 {
    fail::fail_point!("token-id-draw", |n: Option<String>| {
        n.and_then(|n| n.parse().ok()).unwrap_or(1)
    });
    draw()
}

/// A uniformly random id number.
fn draw() -> u32 {
    rand::random_range(1..100_000_000)
}

/// Draws account ids until one is free. Accounts are never deleted and
/// few: the loop almost always runs once; the bound turns a full id space
/// into an error instead of a hang.
fn fresh_id<I>(
    taken: impl Fn(&I) -> bool,
    make: impl Fn(u32) -> I,
    mut draw: impl FnMut() -> u32,
) -> Result<I, Error> {
    for _ in 0..1_000 {
        let id = make(draw());
        if !taken(&id) {
            return Ok(id);
        }
    }
    Err(Error::Internal(
        "id space exhausted: 1000 random ids in a row were already issued".into(),
    ))
}

pub mod roll;

#[cfg(test)]
mod expiry_tests;
#[cfg(test)]
mod tests;
