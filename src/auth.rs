//! Who is calling and what they may do (SPEC §4), and the operator bootstrap.
//!
//! Owns the bearer-token check (an interceptor in front of `TokenService` and
//! `AccountService`; health and reflection stay open), the permission rules,
//! and the first-start operator credential. Callers authenticate with secrets
//! this same service issued, looked up in the in-memory state (a hash lookup,
//! no disk). Every authentication failure is the same `UNAUTHENTICATED`, and a
//! caller never learns that another account's token exists: such ids answer
//! `NOT_FOUND`. This module must never log or return a secret, and never
//! decide anything from a request field that the caller could forge.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use crate::command::{Command, NewAccount, NewToken};
use crate::domain::{
    Account, AccountId, AccountStatus, AccountType, Actor, MODULE_ACCESS_MANAGEMENT,
    MODULE_CATALOGUE, MODULE_PLATFORM_ACCOUNT_MANAGEMENT, Subject, Token, TokenStatus,
};
use crate::error::Error;
use crate::secret::{self, Secret};
use crate::state::{Standing, State, Verification};
use crate::store::Store;

/// An authenticated caller: a live token of an active account.
#[derive(Clone, Debug)]
pub struct Caller {
    pub token: Arc<Token>,
    pub account: Arc<Account>,
}

impl Caller {
    /// What audit entries and events record as `by` / `actor`.
    pub fn actor(&self) -> Actor {
        Actor(self.token.id.to_string())
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

    pub fn require_operator(&self) -> Result<(), Error> {
        if self.is_operator() {
            Ok(())
        } else {
            Err(Error::PermissionDenied(
                "accounts are managed by operators only".into(),
            ))
        }
    }

    /// Only an operator may hand out operator rights: without this, a token
    /// manager of the Operations account could grant itself
    /// `platform-account-management`.
    pub fn may_grant(&self, modules: &crate::domain::Modules) -> Result<(), Error> {
        if modules.contains(MODULE_PLATFORM_ACCOUNT_MANAGEMENT) && !self.is_operator() {
            return Err(Error::PermissionDenied(format!(
                "only operators may grant {MODULE_PLATFORM_ACCOUNT_MANAGEMENT}"
            )));
        }
        Ok(())
    }

    /// Tombstones are for operators (SPEC §2.3).
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

/// Resolves the `authorization` metadata against `state`.
pub fn authenticate(state: &State, metadata: &MetadataMap) -> Result<Caller, Error> {
    let header = metadata
        .get("authorization")
        .ok_or(Error::Unauthenticated)?
        .to_str()
        .map_err(|_| Error::Unauthenticated)?;
    let credential = bearer(header).ok_or(Error::Unauthenticated)?;
    match state.verify(credential) {
        Verification {
            standing: Standing::Valid,
            token: Some(token),
            account: Some(account),
        } => Ok(Caller {
            token: token.clone(),
            account: account.clone(),
        }),
        _ => Err(Error::Unauthenticated),
    }
}

/// The credential of an `authorization: Bearer <secret>` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, credential) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credential.trim())
}

/// The interceptor in front of the API services: authenticates, records the
/// access, and hands the [`Caller`] to the handler in the request extensions.
#[derive(Clone)]
pub struct Authenticator {
    store: Arc<dyn Store>,
}

impl Authenticator {
    pub fn new(store: Arc<dyn Store>) -> Authenticator {
        Authenticator { store }
    }
}

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let state = self.store.verifying_state()?;
        let caller = authenticate(&state, request.metadata())?;
        self.store
            .record_access(&caller.token.id, SystemTime::now());
        if let Some(slot) = request.extensions().get::<crate::telemetry::CallerSlot>() {
            slot.set(&caller.token.id);
        }
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The caller the interceptor found.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Error> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Error::Internal("request reached a handler unauthenticated".into()))
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

/// The actor of what bootstrap does.
const BOOTSTRAP: &str = "bootstrap";
pub const OPERATOR_TOKEN_FILE: &str = "operator.token";

/// Makes sure an operator credential exists, on first start.
///
/// - With `supplied` (`--operator-token-file`): that file's secret must name a
///   live token, or one is created for it.
/// - Otherwise, on a store with no accounts: a secret is generated and written
///   to `<data-dir>/operator.token` (mode 0600) *before* its token is created,
///   so a crash in between is finished by the next start and never leaves an
///   operator token whose secret nobody has.
/// - Otherwise, if that file exists, the same as `supplied`.
///
/// Logs only the path, never the secret. Returns the path in use, if any.
pub async fn bootstrap(
    store: &dyn Store,
    data_dir: &Path,
    supplied: Option<&Path>,
) -> Result<Option<PathBuf>, Error> {
    // Replicas sharing a database take turns, each seeing the others' work.
    let _turn = store.bootstrap_lock().await?;
    let default_path = data_dir.join(OPERATOR_TOKEN_FILE);
    let path = match supplied {
        Some(p) => p.to_path_buf(),
        None if default_path.exists() => default_path,
        None if store.state().accounts_after(None).next().is_none() => {
            let id = crate::command::fresh_token_id(&store.state())?;
            let secret = Secret::generate(&id);
            write_secret_file(&default_path, &secret)?;
            tracing::info!(path = %default_path.display(), "operator credential written");
            default_path
        }
        None => return Ok(None),
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::invalid(
            "operator-token-file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let text = text.trim();
    let id = secret::parse(text).map_err(|_| {
        Error::invalid(
            "operator-token-file",
            format!(
                "{} does not hold a tokend secret (idt:TKN-…)",
                path.display()
            ),
        )
    })?;
    let hash = secret::hash(text);
    let state = store.state();
    if let Some(t) = state.token_by_secret(&hash)
        && t.status == TokenStatus::Active
    {
        tracing::info!(path = %path.display(), token = %t.id, "operator credential in use");
        return Ok(Some(path));
    }
    if state.token_id_taken(&id) {
        // Deleting a leaked operator token is what operators should do; it
        // must not stop tokend from starting. Other operator tokens work.
        tracing::warn!(
            path = %path.display(),
            token = %id,
            "the operator token in this file was disabled or deleted; it no longer authenticates"
        );
        return Ok(None);
    }
    let actor = Actor(BOOTSTRAP.to_string());
    let account = match operations_account(&state) {
        Some(id) => id,
        None => {
            let applied = store
                .apply(
                    Command::CreateAccount(NewAccount {
                        name: "Operations".into(),
                        kind: AccountType::Operations,
                        modules: MODULE_CATALOGUE.iter().map(|m| m.to_string()).collect(),
                    }),
                    actor.clone(),
                )
                .await?;
            match applied.subject {
                Some(Subject::Account(a)) => a.id,
                _ => return Err(Error::Internal("bootstrap account missing".into())),
            }
        }
    };
    store
        .apply(
            Command::CreateToken(NewToken {
                account_id: account,
                name: "operator".into(),
                description: "Created by tokend on first start".into(),
                icon: None,
                modules: [MODULE_ACCESS_MANAGEMENT, MODULE_PLATFORM_ACCOUNT_MANAGEMENT]
                    .iter()
                    .map(|m| m.to_string())
                    .collect(),
                preset: Some((id.clone(), hash)),
            }),
            actor,
        )
        .await?;
    tracing::info!(path = %path.display(), token = %id, "operator token created");
    Ok(Some(path))
}

/// The Operations account an interrupted bootstrap may have left.
fn operations_account(state: &State) -> Option<AccountId> {
    state
        .accounts_after(None)
        .find(|a| {
            a.kind == AccountType::Operations
                && a.audit
                    .created
                    .as_ref()
                    .is_some_and(|c| c.by.0 == BOOTSTRAP)
        })
        .map(|a| a.id.clone())
}

/// Writes the secret readable by the owner only, atomically (temp + rename)
/// and durably (fsync of file and directory).
fn write_secret_file(path: &Path, secret: &Secret) -> Result<(), Error> {
    let fail = |e: std::io::Error| {
        Error::invalid("data-dir", format!("cannot write {}: {e}", path.display()))
    };
    let tmp = path.with_extension("tmp");
    // A leftover (or planted) temp file must not lend us its mode or a
    // symlink: start from nothing.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(secret.expose().as_bytes()).map_err(fail)?;
    f.write_all(b"\n").map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(fail)?;
    }
    Ok(())
}
