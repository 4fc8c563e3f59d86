//! Leaked secrets: a scanner reports what it found, and each live tokend
//! secret among it is revoked at once.
//!
//! Owns the one decision per reported secret, shared by the gRPC method
//! `ReportLeakedSecrets` (an organisation's own scanners, operators only)
//! and the secret-scanning partner endpoint ([`github`], GitHub's
//! protocol, on a port of its own): a look-alike (not tokend's shape, or a
//! bad checksum) is a false positive decided without a lookup; a live
//! secret is deleted (or disabled, [`LeakAction`]) through the same
//! commands as any caller's, by the actor `leak-report <url>`, so the
//! audit trail says where it was found and every watcher, cache and
//! sidecar hears the revocation as it hears any delete.
//!
//! It must never log, return or store a reported secret: answers name a
//! secret by its SHA-256, and [`Found`]'s `Debug` leaves it out.

use std::fmt;

use crate::command::Command;
use crate::domain::{Actor, Revision, TokenId, quote_input, shorten};
use crate::error::Error;
use crate::secret;
use crate::store::Store;
use crate::telemetry;

pub mod github;

/// Most secrets one report may carry.
pub const MAX_REPORTED: usize = 1000;

/// What a true positive does to its token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LeakAction {
    /// Final: the hash is erased and the id retired (SPEC-style deletion).
    #[default]
    Delete,
    /// Reversible by an operator who knows the report was wrong.
    Disable,
}

/// One secret a scanner found.
pub struct Found {
    pub secret: String,
    pub url: String,
    pub source: String,
}

impl Found {
    /// Where it was found, as tokend records and logs it: the URL (a
    /// commit's hash, often, which stays readable), shortened, with the
    /// secret itself taken out should the URL carry it (a query string).
    fn place(&self) -> String {
        let url = match self.secret.trim() {
            "" => self.url.clone(),
            secret => self.url.replace(secret, "[the secret]"),
        };
        shorten(&url, 64)
    }
}

impl fmt::Debug for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Found")
            .field("secret", &"<redacted>")
            .field("url", &self.place())
            .field("source", &self.source)
            .finish()
    }
}

/// The answer for one reported secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Lower-case hex SHA-256 of the reported secret.
    pub secret_hash: String,
    /// The live token it was, now revoked, and the revision of the event
    /// that revoked it (0 when it already was as `action` asks).
    pub revoked: Option<(TokenId, Revision)>,
}

/// Decides every reported secret, in order, and revokes the live ones.
/// Fails only when the store cannot take the revocations (the reporter
/// should send again); then some may already be revoked, which a resend
/// answers the same way.
pub async fn revoke(
    store: &dyn Store,
    found: &[Found],
    action: LeakAction,
) -> Result<Vec<Verdict>, Error> {
    if found.len() > MAX_REPORTED {
        return Err(Error::invalid(
            "secrets",
            format!(
                "{} secrets in one report; at most {MAX_REPORTED}",
                found.len()
            ),
        ));
    }
    let mut verdicts = Vec::with_capacity(found.len());
    for f in found {
        let hash = secret::hash(&f.secret);
        let secret_hash = base16ct::lower::encode_string(&hash[..]);
        let revoked = match live_token(store, &f.secret)? {
            Some(id) => Some(revoke_one(store, &id, f, action).await?),
            None => None,
        };
        let label = if revoked.is_some() {
            "true_positive"
        } else {
            "false_positive"
        };
        metrics::counter!(telemetry::LEAKS_REPORTED, "label" => label).increment(1);
        verdicts.push(Verdict {
            secret_hash,
            revoked,
        });
    }
    Ok(verdicts)
}

/// The live token `plain` is the secret of, if any. A look-alike never
/// reaches the index.
fn live_token(store: &dyn Store, plain: &str) -> Result<Option<TokenId>, Error> {
    let Ok(named) = secret::parse(plain) else {
        return Ok(None);
    };
    let state = store.verifying_state()?;
    Ok(state
        .token_with_secret(&named, &secret::hash(plain))
        .map(|t| t.id.clone()))
}

async fn revoke_one(
    store: &dyn Store,
    id: &TokenId,
    found: &Found,
    action: LeakAction,
) -> Result<(TokenId, Revision), Error> {
    let actor = Actor(format!("leak-report {}", found.place()).into());
    let cmd = match action {
        LeakAction::Delete => Command::DeleteToken {
            id: id.clone(),
            etag: None,
            allow_missing: true,
        },
        LeakAction::Disable => Command::DisableToken {
            id: id.clone(),
            etag: None,
        },
    };
    let revision = match store.apply(cmd, actor).await {
        Ok(applied) => applied.revision,
        // Already disabled, or deleted meanwhile: revoked all the same.
        Err(Error::FailedPrecondition { .. } | Error::NotFound { .. }) => 0,
        Err(e) => return Err(e),
    };
    tracing::warn!(token = %id, url = %found.place(), source = %quote_input(&found.source), ?action, revision, "leaked secret reported: token revoked");
    Ok((id.clone(), revision))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A URL that carries the secret (in its query, say) is recorded and
    /// logged without it; a commit's hash in it stays readable.
    #[test]
    fn the_place_a_secret_was_found_never_holds_the_secret() {
        let secret = crate::secret::Secret::generate(&TokenId::parse("TKN-0000-0001").unwrap());
        let commit = "0123456789abcdef0123";
        let found = Found {
            secret: secret.expose().to_string(),
            url: format!("https://gist.example/{commit}?k={}", secret.expose()),
            source: "content".into(),
        };
        let place = found.place();
        assert!(!place.contains(secret.expose()), "{place}");
        assert!(
            place.starts_with(&format!("https://gist.example/{commit}?k=[the secret]")),
            "{place}"
        );
        assert!(!format!("{found:?}").contains(secret.expose()));
    }
}
