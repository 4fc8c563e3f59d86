//! The first-start operator credential.
//!
//! Owns making sure some operator can call tokend on a new store: the secret
//! file (written before its token exists, mode 0600, atomically), the
//! Operations account, and the operator token, created once even when
//! several replicas start at once (under [`Store::bootstrap_lock`]); and the
//! way back in when no operator token is left (every one deleted, disabled
//! or expired): a start without the credential file makes a new one, as the
//! first start did. Whoever can start tokend on its data holds that data
//! already, so this gives no one more than they have. It must never log the
//! secret (only the file's path), never make a credential while an operator
//! can still call, and never refuse to start because an operator deleted a
//! leaked operator token.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::command::{Command, NewAccount, NewToken};
use crate::domain::{
    AccountId, AccountStatus, AccountType, Actor, MODULE_ACCESS_MANAGEMENT,
    MODULE_PLATFORM_ACCOUNT_MANAGEMENT, Modules, Subject, TokenStatus, parse_modules,
};
use crate::error::Error;
use crate::secret::{self, Secret};
use crate::state::State;
use crate::store::Store;

/// How long the fail point `bootstrap-hold` (milliseconds) holds the
/// bootstrap between reading the state and acting on it; none without it.
fn slow_bootstrap() -> Option<std::time::Duration> {
    fail::fail_point!("bootstrap-hold", |ms: Option<String>| {
        ms.and_then(|ms| ms.parse().ok())
            .map(std::time::Duration::from_millis)
    });
    None
}

/// The actor of what bootstrap does.
const BOOTSTRAP: &str = "bootstrap";
pub const OPERATOR_TOKEN_FILE: &str = "operator.token";

/// Makes sure an operator credential exists.
///
/// The file is `supplied` (`--operator-token-file`) or
/// `<data-dir>/operator.token`.
/// - If it exists, its secret must name a live token, or one is created for
///   it (unless that token was deleted or disabled: a warning, and tokend
///   starts all the same).
/// - If it does not, and no operator can call (a new store, or every
///   operator token gone): a secret is generated and written to it (mode
///   0600) *before* its token is created, so a crash in between is finished
///   by the next start and never leaves an operator token whose secret
///   nobody has.
/// - If it does not, while an operator can call: nothing is made; a
///   `supplied` file is then an error (a wrong path, most likely).
///
/// Logs only the path, never the secret. Returns the path in use, if any.
pub async fn operator(
    store: &dyn Store,
    data_dir: &Path,
    supplied: Option<&Path>,
) -> Result<Option<PathBuf>, Error> {
    // Replicas sharing a database take turns, each seeing the others' work.
    let _turn = store.bootstrap_lock().await?;
    let path = supplied.map_or_else(|| data_dir.join(OPERATOR_TOKEN_FILE), Path::to_path_buf);
    let state = store.state();
    // The tests' slow bootstrap: one that acts on `state` long after it read
    // it, while the lock must still keep the other replicas out.
    if let Some(held) = slow_bootstrap() {
        tokio::time::sleep(held).await;
    }
    let missing = !path.exists();
    if missing && !an_operator_remains(&state, SystemTime::now()) {
        let id = crate::command::fresh_token_id(&state)?;
        write_secret_file(&path, &Secret::generate(&id))?;
        if state.accounts_after(None).next().is_none() {
            tracing::info!(path = %path.display(), "operator credential written");
        } else {
            tracing::warn!(
                path = %path.display(),
                "no operator token could call tokend (each was deleted, disabled or expired): a new operator credential was written"
            );
        }
    } else if missing && supplied.is_none() {
        // Normal once an operator moved the file somewhere safer.
        tracing::info!(
            path = %path.display(),
            "no operator credential file (nor --operator-token-file): callers use secrets they already hold"
        );
        return Ok(None);
    }
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
    if let Some(t) = state.token_with_secret(&id, &hash)
        && t.status == TokenStatus::Active
    {
        tracing::info!(path = %path.display(), token = %t.id, "operator credential in use");
        return Ok(Some(path));
    }
    if state.token_id_taken(&id) {
        // Deleting a leaked operator token is what operators should do; it
        // must not stop tokend from starting. Other operator tokens work.
        if an_operator_remains(&state, SystemTime::now()) {
            tracing::warn!(
                path = %path.display(),
                token = %id,
                "the operator token in this file was disabled or deleted; it no longer authenticates"
            );
        } else {
            tracing::warn!(
                path = %path.display(),
                token = %id,
                "the operator token in this file was disabled or deleted, and no other operator token is left: move the file away and restart, and tokend writes a new one"
            );
        }
        return Ok(None);
    }
    let actor = Actor(BOOTSTRAP.into());
    let account = match operations_account(&state) {
        Some(id) => id,
        None => {
            let applied = store
                .apply(
                    Command::CreateAccount(NewAccount {
                        name: "Operations".into(),
                        kind: AccountType::Operations,
                        modules: Modules::all(),
                        max_token_lifetime: None,
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
                modules: parse_modules(
                    "modules",
                    &[MODULE_ACCESS_MANAGEMENT, MODULE_PLATFORM_ACCOUNT_MANAGEMENT],
                )
                .expect("modules of the catalogue"),
                expiry: None,
                preset: Some((id.clone(), hash)),
            }),
            actor,
        )
        .await?;
    tracing::info!(path = %path.display(), token = %id, "operator token created");
    Ok(Some(path))
}

/// Whether some token can still act as operator: active and unexpired, with
/// `platform-account-management`, in an active Operations account.
fn an_operator_remains(state: &State, now: SystemTime) -> bool {
    state
        .accounts_after(None)
        .filter(|a| a.kind == AccountType::Operations && a.status == AccountStatus::Active)
        .any(|a| {
            state.tokens_after(Some(&a.id), None).any(|t| {
                t.status == TokenStatus::Active
                    && t.modules.contains(MODULE_PLATFORM_ACCOUNT_MANAGEMENT)
                    && t.expire_time.is_none_or(|at| at > now)
            })
        })
}

/// The Operations account an interrupted (or earlier) bootstrap made, if it
/// is active: a disabled one cannot get the new token.
fn operations_account(state: &State) -> Option<AccountId> {
    state
        .accounts_after(None)
        .find(|a| {
            a.kind == AccountType::Operations
                && a.status == AccountStatus::Active
                && a.audit
                    .created
                    .as_ref()
                    .is_some_and(|c| &*c.by.0 == BOOTSTRAP)
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
