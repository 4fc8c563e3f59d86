//! The read model: every account and token as of one durable revision.
//!
//! Owns the in-memory indexes that reads, verification, plans and watch
//! snapshots consult (by id, by account, by expiry). Built on persistent
//! maps, so a clone is O(1): a reader holds a consistent snapshot for as long
//! as it likes while the store prepares the next one.
//!
//! Memory follows live tokens, not history: a deleted token leaves every
//! index here, and only its number stays, one bit in [`IdSet`], so that it
//! is never issued again, and a count per account, so that a
//! `show_deleted` list's total reads no tombstone. Tombstones are read
//! from the store ([`crate::store::Store::tombstone`]).
//!
//! A [`Change`] is the unit of history: [`crate::command::plan`] produces it,
//! the store persists it, and [`State::apply`] folds it in. The state must
//! never be mutated except through [`State::apply`], in revision order, by the
//! one task of its store that follows the durable history (sled's writer
//! thread, or the etcd backend's pump), and must never hold a plain secret.

use imbl::{OrdMap, OrdSet};
use std::ops::Bound;
use std::sync::Arc;
use std::time::SystemTime;

use crate::domain::{
    Account, AccountId, AccountStatus, Actor, Event, EventKind, Revision, Subject, Token, TokenId,
    TokenStatus,
};
use crate::secret::{self, SecretHash};

mod ids;
pub use self::ids::{IdSet, SPACE as TOKEN_ID_SPACE};

/// What happens to a token's secret hash with a change.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretOp {
    Keep,
    Set(SecretHash),
    /// Deletion: the hash is erased from memory and from disk. It carries
    /// no hash, so nothing a deletion writes can hold one.
    Erase,
}

/// A planned change: the record after it, and what it does to the token's
/// secret hash.
#[derive(Clone)]
pub struct Change {
    pub kind: EventKind,
    pub subject: Subject,
    pub secret: SecretOp,
}

impl Change {
    /// The event this change becomes once committed at `revision`: what the
    /// log keeps and every watch stream carries (the secret op stays behind).
    pub fn event(&self, revision: Revision, time: SystemTime, actor: Actor) -> Event {
        Event {
            revision,
            kind: self.kind,
            subject: self.subject.clone(),
            time,
            actor,
        }
    }
}

/// What a presented secret is worth at one revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    Valid,
    /// Not a tokend secret, or a bad checksum: decided without a lookup.
    Malformed,
    /// Unknown, or deleted.
    NotFound,
    Disabled,
    AccountDisabled,
    /// Past its expiry, not yet deleted.
    Expired,
}

/// The answer of [`State::verify`]: the standing, and the records it was
/// decided on (none for `Malformed` and `NotFound`).
pub struct Verification<'a> {
    pub standing: Standing,
    pub token: Option<&'a Arc<Token>>,
    pub account: Option<&'a Arc<Account>>,
}

#[derive(Clone, Default)]
pub struct State {
    revision: Revision,
    /// Live tokens only (disabled and expired ones included), each with
    /// its secret's hash. No index by hash: a secret names its token
    /// (`idt:TKN-…:`, [`crate::secret`]), so verifying one looks its token
    /// up by id and compares hashes. That index cost every live token a
    /// B-tree entry of its own (80 of the 1,021 bytes a live token took, at
    /// a million: BENCHMARKS.md, *Scale*) and every creation and deletion
    /// one more path copied.
    tokens: OrdMap<TokenId, Live>,
    accounts: OrdMap<AccountId, Arc<Account>>,
    /// The live tokens of each account.
    account_tokens: OrdMap<AccountId, OrdSet<TokenId>>,
    /// The number of every token ever issued, deleted ones included.
    issued: IdSet,
    /// Live tokens that expire, by expiry: what `crate::expiry` deletes next.
    expiring: OrdSet<(SystemTime, TokenId)>,
    /// How many tombstones each account has: a `show_deleted` list's
    /// `total_size` without reading them.
    tombstones: OrdMap<AccountId, u64>,
}

/// A live token and its secret's hash: none only where no change gave it
/// one (a store restored without it; no plan makes such a live token).
#[derive(Clone, PartialEq)]
struct Live {
    token: Arc<Token>,
    secret: Option<SecretHash>,
}

impl State {
    /// The revision of the last change this state includes.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// A live token (deleted ones are in the store only).
    pub fn token(&self, id: &TokenId) -> Option<&Arc<Token>> {
        self.tokens.get(id).map(|l| &l.token)
    }

    /// How many tokens are live.
    pub fn live_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// How many tokens of `account` (or of all) are live.
    pub fn live_tokens_of(&self, account: Option<&AccountId>) -> usize {
        match account {
            None => self.tokens.len(),
            Some(a) => self.account_tokens.get(a).map_or(0, OrdSet::len),
        }
    }

    /// How many tombstones `account` has, or all accounts.
    pub fn tombstones_of(&self, account: Option<&AccountId>) -> u64 {
        match account {
            None => self.tombstones.values().sum(),
            Some(a) => self.tombstones.get(a).copied().unwrap_or(0),
        }
    }

    /// Every token number issued so far, deleted tokens' included.
    pub fn issued(&self) -> &IdSet {
        &self.issued
    }

    pub fn account(&self, id: &AccountId) -> Option<&Arc<Account>> {
        self.accounts.get(id)
    }

    /// Live token `id`, if `hash` is its secret's hash: the token a secret
    /// names ([`secret::parse`]) and the secret's [`secret::hash`].
    pub fn token_with_secret(&self, id: &TokenId, hash: &SecretHash) -> Option<&Arc<Token>> {
        let live = self.tokens.get(id)?;
        (live.secret.as_ref() == Some(hash)).then_some(&live.token)
    }

    /// Verifies a plain secret against this state at `now`: every caller
    /// that accepts secrets (API authentication, `VerifyToken`, ext_authz
    /// `Check`) decides here, so they cannot disagree. An expired token is
    /// refused from its expiry on, whether or not its deletion has been
    /// committed yet. Memory only; never blocks.
    pub fn verify(&self, plain: &str, now: SystemTime) -> Verification<'_> {
        let unknown = |standing| Verification {
            standing,
            token: None,
            account: None,
        };
        // Shape and checksum first: a look-alike never reaches an index.
        let Ok(named) = secret::parse(plain) else {
            return unknown(Standing::Malformed);
        };
        let Some(token) = self.token_with_secret(&named, &secret::hash(plain)) else {
            return unknown(Standing::NotFound);
        };
        let account = self.account(&token.account_id);
        let standing = if token.is_expired(now) {
            Standing::Expired
        } else if token.status == TokenStatus::Disabled {
            Standing::Disabled
        } else if account.is_none_or(|a| a.status != AccountStatus::Active) {
            Standing::AccountDisabled
        } else {
            Standing::Valid
        };
        Verification {
            standing,
            token: Some(token),
            account,
        }
    }

    pub fn secret_of(&self, id: &TokenId) -> Option<&SecretHash> {
        self.tokens.get(id)?.secret.as_ref()
    }

    /// Whether an id has ever been issued (tombstones count: ids are never reused).
    pub fn token_id_taken(&self, id: &TokenId) -> bool {
        self.issued.contains(id.number())
    }

    pub fn account_id_taken(&self, id: &AccountId) -> bool {
        self.accounts.contains_key(id)
    }

    /// Live tokens in id order, after `after` (exclusive), of one account or all.
    pub fn tokens_after<'a>(
        &'a self,
        account: Option<&AccountId>,
        after: Option<&TokenId>,
    ) -> Box<dyn Iterator<Item = &'a Arc<Token>> + Send + 'a> {
        let lower = match after {
            Some(id) => Bound::Excluded(id.clone()),
            None => Bound::Unbounded,
        };
        match account {
            None => Box::new(
                self.tokens
                    .range((lower, Bound::Unbounded))
                    .map(|(_, l)| &l.token),
            ),
            Some(acc) => match self.account_tokens.get(acc) {
                None => Box::new(std::iter::empty()),
                Some(ids) => Box::new(
                    ids.range((lower, Bound::Unbounded))
                        .filter_map(|id| self.token(id)),
                ),
            },
        }
    }

    /// Live tokens whose expiry is at or before `now`, soonest first.
    pub fn expired_by(&self, now: SystemTime) -> impl Iterator<Item = &Arc<Token>> + '_ {
        self.expiring
            .iter()
            .take_while(move |(at, _)| *at <= now)
            .filter_map(|(_, id)| self.token(id))
    }

    /// Accounts in id order, after `after` (exclusive).
    pub fn accounts_after<'a>(
        &'a self,
        after: Option<&AccountId>,
    ) -> impl Iterator<Item = &'a Arc<Account>> + use<'a> {
        let lower = match after {
            Some(id) => Bound::Excluded(id.clone()),
            None => Bound::Unbounded,
        };
        self.accounts
            .range((lower, Bound::Unbounded))
            .map(|(_, a)| a)
    }

    /// Applies one durable change at `revision`. Only the store's task that
    /// follows the durable history calls this, in revision order.
    pub fn apply(&mut self, change: &Change, revision: Revision) {
        debug_assert!(revision > self.revision, "revisions increase");
        self.revision = revision;
        match &change.subject {
            Subject::Account(a) => {
                self.accounts.insert(a.id.clone(), Arc::new(a.clone()));
            }
            Subject::Token(t) => {
                let (live, was) = match self.token(&t.id) {
                    Some(now) => (true, expiry_key(now)),
                    None => (false, None),
                };
                // A persistent map copies the path to every key it writes,
                // even one already there: only a new token is added. A live
                // token's number is in already (a lookup of a random chunk
                // saved on every change but a creation).
                if !live && !self.issued.contains(t.id.number()) {
                    self.issued.insert(t.id.number());
                }
                let is = expiry_key(t);
                if was != is {
                    if let Some(k) = was {
                        self.expiring.remove(&k);
                    }
                    if let Some(k) = is {
                        self.expiring.insert(k);
                    }
                }
                if t.is_deleted() {
                    // The tombstone is the store's; memory keeps the number,
                    // and counts it.
                    if self.tokens.remove(&t.id).is_some() {
                        *self.tombstones.entry(t.account_id.clone()).or_default() += 1;
                    }
                    if let Some(ids) = self.account_tokens.get_mut(&t.account_id) {
                        ids.remove(&t.id);
                    }
                } else {
                    let listed = self
                        .account_tokens
                        .get(&t.account_id)
                        .is_some_and(|ids| ids.contains(&t.id));
                    if !listed {
                        self.account_tokens
                            .entry(t.account_id.clone())
                            .or_default()
                            .insert(t.id.clone());
                    }
                    let secret = match &change.secret {
                        SecretOp::Set(hash) => Some(*hash),
                        SecretOp::Keep => self.secret_of(&t.id).copied(),
                        // A live record with its hash erased is not a
                        // change any plan makes; the hash goes all the same.
                        SecretOp::Erase => None,
                    };
                    let live = Live {
                        token: Arc::new(t.clone()),
                        secret,
                    };
                    self.tokens.insert(t.id.clone(), live);
                }
            }
        }
    }

    /// Rebuilds the state from persisted records: [`Restore`], for records
    /// already in hand.
    pub fn restore(
        revision: Revision,
        accounts: impl IntoIterator<Item = Account>,
        tokens: impl IntoIterator<Item = (Token, Option<SecretHash>)>,
        issued: IdSet,
    ) -> State {
        let mut r = Restore::new(issued);
        accounts.into_iter().for_each(|a| r.account(a));
        tokens
            .into_iter()
            .for_each(|(t, secret)| r.token(t, secret));
        r.finish(revision)
    }
}

/// Rebuilds the state at start-up, one persisted record at a time, as a
/// store reads them: nothing but the state itself holds them, so memory
/// at start-up stays what it will be once serving (a list of a million
/// decoded tokens first would be hundreds of megabytes more, which the
/// allocator need not give back).
pub struct Restore {
    state: State,
    /// Every actor met so far, so that the audit trails of the tokens one
    /// actor made share its name instead of each holding a copy.
    actors: std::collections::HashSet<Arc<str>>,
}

impl Restore {
    /// `issued`: the numbers of every token issued, deleted ones included
    /// (live ones are added as they come).
    pub fn new(issued: IdSet) -> Restore {
        Restore {
            state: State {
                issued,
                ..State::default()
            },
            actors: Default::default(),
        }
    }

    pub fn account(&mut self, a: Account) {
        self.state.accounts.insert(a.id.clone(), Arc::new(a));
    }

    /// A token, and the hash of its secret (none once deleted). A tombstone
    /// only marks its number, and is counted.
    pub fn token(&mut self, mut t: Token, secret: Option<SecretHash>) {
        let s = &mut self.state;
        s.issued.insert(t.id.number());
        if t.is_deleted() {
            *s.tombstones.entry(t.account_id).or_default() += 1;
            return;
        }
        let a = &mut t.audit;
        for entry in [
            &mut a.created,
            &mut a.updated,
            &mut a.enabled,
            &mut a.disabled,
            &mut a.deleted,
        ]
        .into_iter()
        .flatten()
        {
            match self.actors.get(&entry.by.0) {
                Some(shared) => entry.by.0 = shared.clone(),
                None => _ = self.actors.insert(entry.by.0.clone()),
            }
        }
        s.account_tokens
            .entry(t.account_id.clone())
            .or_default()
            .insert(t.id.clone());
        if let Some(k) = expiry_key(&t) {
            s.expiring.insert(k);
        }
        let token = Arc::new(t);
        s.tokens.insert(token.id.clone(), Live { token, secret });
    }

    /// `count` tombstones of `account`, from a store that counts them
    /// instead of handing each to [`Restore::token`].
    pub fn tombstones(&mut self, account: AccountId, count: u64) {
        *self.state.tombstones.entry(account).or_default() += count;
    }

    /// The state, as of the last committed `revision`.
    pub fn finish(mut self, revision: Revision) -> State {
        self.state.revision = revision;
        self.state
    }
}

/// A token's place in the expiry index: live tokens that expire.
fn expiry_key(t: &Token) -> Option<(SystemTime, TokenId)> {
    match t.expire_time {
        Some(at) if !t.is_deleted() => Some((at, t.id.clone())),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod testkit;

#[cfg(test)]
mod tests;
