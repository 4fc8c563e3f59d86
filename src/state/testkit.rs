//! Test-only builders: a small world of accounts and tokens, grown through
//! the real planner and [`State::apply`], so that the tests' tables read as
//! data. Nothing here is compiled outside `cargo test`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::command::{self, AccountPatch, Command, Ctx, NewAccount, NewToken, Plan};
use crate::domain::{
    Account, AccountId, AccountStatus, AccountType, Actor, Event, Modules, Revision, Subject,
    Token, TokenId,
};
use crate::error::{Error, reason};
use crate::secret::Secret;
use crate::state::{Change, State};

/// The actor every change in a [`World`] is made by.
pub fn actor() -> Actor {
    Actor("TKN-0000-0001".into())
}

pub fn modules(list: &[&str]) -> Modules {
    crate::domain::parse_modules("modules", list).unwrap()
}

/// The reason a client would branch on (`ErrorInfo.reason`), for tables.
pub fn reason_of(e: &Error) -> &'static str {
    match e {
        Error::NotFound { what: "token", .. } => reason::TOKEN_NOT_FOUND,
        Error::NotFound { .. } => reason::ACCOUNT_NOT_FOUND,
        Error::EtagMismatch { .. } => reason::ETAG_MISMATCH,
        Error::FailedPrecondition { reason, .. } => reason,
        Error::InvalidArgument { .. } => reason::INVALID_ARGUMENT,
        Error::Unauthenticated => reason::UNAUTHENTICATED,
        Error::CredentialRevoked(_) => reason::CREDENTIAL_REVOKED,
        Error::CredentialExpired => reason::CREDENTIAL_EXPIRED,
        Error::PermissionDenied(_) => reason::PERMISSION_DENIED,
        Error::Compacted { .. } => reason::REVISION_COMPACTED,
        Error::TooManyWatchers { .. } => reason::TOO_MANY_WATCHERS,
        Error::TokenIdsExhausted { .. } => reason::TOKEN_IDS_EXHAUSTED,
        Error::Unavailable { reason, .. } => reason,
        Error::Internal(_) => reason::INTERNAL,
    }
}

/// A state and the log of every event that built it, at consecutive
/// revisions from 1 (as on sled). The clock moves one second per change, so
/// audit stamps of different changes differ.
pub struct World {
    pub state: State,
    pub log: Vec<Arc<Event>>,
    pub now: SystemTime,
}

impl Default for World {
    fn default() -> Self {
        World {
            state: State::default(),
            log: Vec::new(),
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }
}

impl World {
    /// Plans `cmd` against the current state, at [`World::now`], as [`actor`].
    pub fn plan(&self, cmd: &Command) -> Result<Plan, Error> {
        let actor = actor();
        command::plan(
            &self.state,
            cmd,
            &Ctx {
                now: self.now,
                actor: &actor,
            },
        )
    }

    /// Plans and applies `cmd` at the next revision, as a store would.
    /// Panics unless the plan is exactly one change.
    pub fn commit(&mut self, cmd: Command) -> (Change, Option<Secret>) {
        self.commit_at(cmd, self.state.revision() + 1)
    }

    /// [`World::commit`] at a chosen revision (etcd's skip numbers).
    pub fn commit_at(&mut self, cmd: Command, revision: Revision) -> (Change, Option<Secret>) {
        let (mut changes, secret) = self.commit_all_at(&cmd, revision);
        assert_eq!(changes.len(), 1, "{cmd:?}: expected one change");
        (changes.remove(0), secret)
    }

    /// Plans `cmd` and applies every change of it at consecutive revisions
    /// from the next one. Panics unless the plan is a change.
    pub fn commit_all(&mut self, cmd: Command) -> (Vec<Change>, Option<Secret>) {
        self.commit_all_at(&cmd, self.state.revision() + 1)
    }

    fn commit_all_at(&mut self, cmd: &Command, first: Revision) -> (Vec<Change>, Option<Secret>) {
        match self.plan(cmd) {
            Ok(Plan::Change(changes, secret)) => {
                for (i, change) in changes.iter().enumerate() {
                    self.apply_at(change, first + i as Revision);
                }
                (changes, secret)
            }
            Ok(Plan::Unchanged(_)) => panic!("{cmd:?}: expected a change, planned none"),
            Err(e) => panic!("{cmd:?}: expected a change, got {e}"),
        }
    }

    /// Applies a planned change at `revision` and logs its event.
    pub fn apply_at(&mut self, change: &Change, revision: Revision) {
        self.state.apply(change, revision);
        self.log
            .push(Arc::new(change.event(revision, self.now, actor())));
        self.now += Duration::from_secs(1);
    }

    pub fn account(&mut self, kind: AccountType, mods: &[&str]) -> AccountId {
        let (change, _) = self.commit(Command::CreateAccount(NewAccount {
            name: "Acme".into(),
            kind,
            modules: modules(mods),
            max_token_lifetime: None,
        }));
        match change.subject {
            Subject::Account(a) => a.id,
            Subject::Token(_) => unreachable!("an account was created"),
        }
    }

    pub fn token(&mut self, account: &AccountId, mods: &[&str]) -> (TokenId, Secret) {
        let (change, secret) = self.commit(Command::CreateToken(NewToken {
            account_id: account.clone(),
            name: "ci-deploy".into(),
            description: String::new(),
            icon: None,
            modules: modules(mods),
            expiry: None,
            preset: None,
        }));
        match change.subject {
            Subject::Token(t) => (t.id, secret.expect("a fresh token has a secret")),
            Subject::Account(_) => unreachable!("a token was created"),
        }
    }

    pub fn disable_token(&mut self, id: &TokenId) {
        self.commit(Command::DisableToken {
            id: id.clone(),
            etag: None,
        });
    }

    pub fn delete_token(&mut self, id: &TokenId) {
        self.commit(Command::DeleteToken {
            id: id.clone(),
            etag: None,
            allow_missing: false,
        });
    }

    pub fn set_account_status(&mut self, id: &AccountId, status: AccountStatus) {
        self.commit(Command::UpdateAccount {
            id: id.clone(),
            etag: None,
            patch: AccountPatch {
                status: Some(status),
                ..AccountPatch::default()
            },
        });
    }

    /// Token `id` as it is: live from the state, or its tombstone (the
    /// store's, in this world the last event about it).
    pub fn token_rec(&self, id: &TokenId) -> Arc<Token> {
        match self.state.token(id) {
            Some(t) => t.clone(),
            None => Arc::new(
                self.log
                    .iter()
                    .rev()
                    .find_map(|e| e.token().filter(|t| t.id == *id && t.is_deleted()))
                    .expect("a token of this world")
                    .clone(),
            ),
        }
    }

    /// Every tombstone, in id order: what a store would hold.
    pub fn tombstones(&self) -> Vec<Token> {
        let mut out: Vec<Token> = self
            .log
            .iter()
            .filter_map(|e| e.token().filter(|t| t.is_deleted()).cloned())
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    pub fn account_rec(&self, id: &AccountId) -> Arc<Account> {
        self.state
            .account(id)
            .expect("an account of this world")
            .clone()
    }
}
