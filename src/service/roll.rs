//! `RollToken`: read the request, check the caller may replace the token,
//! hand the roll to the store, answer with the successor's secret.
//!
//! Owns the roll request's shape (the grace's bounds, the successor's
//! expiry, `etag`, `validate_only`). What a roll does is planned in
//! `command::roll`; this file must never decide it, and never log the
//! secret it returns.

use tonic::Request;

use super::tokens::token_id;
use super::{Service, convert, etag};
use crate::command::Command;
use crate::command::Plan;
use crate::command::roll::{MAX_GRACE, Roll};
use crate::domain::Subject;
use crate::error::Error;
use crate::proto::{self as pb, roll_token_request::Expiration};

impl Service {
    pub(super) async fn roll(
        &self,
        request: Request<pb::RollTokenRequest>,
    ) -> Result<pb::RollTokenResponse, Error> {
        let id = token_id(&request.get_ref().id)?;
        let caller = self.authorize_token(&request, &id)?;
        // The successor gets the old token's modules: granted again.
        if let Some(t) = self.store.state().token(&id) {
            caller.may_grant(&t.modules)?;
        }
        let r = request.into_inner();
        let grace = match &r.grace {
            None => Default::default(),
            Some(d) => convert::well_formed("grace", d)?
                .ok()
                .filter(|g| *g <= MAX_GRACE)
                .ok_or_else(|| Error::invalid("grace", "must be from 0 to 7 days"))?,
        };
        let expiry = match &r.expiration {
            None => None,
            Some(Expiration::ExpireTime(t)) => Some(convert::expire_at(t)?),
            Some(Expiration::Ttl(d)) => Some(convert::expire_after(d)?),
        };
        let cmd = Command::RollToken(Roll {
            id,
            etag: etag(&r.etag),
            grace,
            expiry,
        });
        if r.validate_only {
            // The changes as planned; the successor's id is drawn again
            // when the roll is committed.
            let Plan::Change(changes, _) = self.store.preview(&cmd, &caller.actor()).await? else {
                return Err(Error::Internal("a roll planned no change".into()));
            };
            let mut subjects = changes.into_iter().map(|c| c.subject);
            return self.rolled(subjects.next(), subjects.next(), String::new(), 0);
        }
        let applied = self.store.apply(cmd, caller.actor()).await?;
        let secret = applied
            .secret
            .ok_or_else(|| Error::Internal("the store answered without a secret".into()))?;
        let revision = applied.revision;
        let replaced = applied.others.into_iter().next();
        self.rolled(
            applied.subject,
            replaced,
            secret.expose().to_string(),
            revision,
        )
    }

    fn rolled(
        &self,
        successor: Option<Subject>,
        replaced: Option<Subject>,
        secret: String,
        revision: u64,
    ) -> Result<pb::RollTokenResponse, Error> {
        let successor = Self::expect_token(successor)?;
        let replaced = Self::expect_token(replaced)?;
        if revision > 0 {
            tracing::info!(token = %replaced.id, successor = %successor.id, account = %successor.account_id, revision, "token rolled");
        }
        Ok(pb::RollTokenResponse {
            token: Some(self.token_out(&successor)),
            secret,
            replaced: Some(self.token_out(&replaced)),
            revision: revision as i64,
        })
    }
}
