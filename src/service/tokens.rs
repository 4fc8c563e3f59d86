//! `apitokens.v1.TokenService`: validate the request, build a domain
//! [`Command`] (or read the state), hand it to the store, translate the answer.
//!
//! Owns request-shape rules (required fields, update masks, how `etag`,
//! `validate_only` and `allow_missing` are read). It must never write to the
//! store except through [`Store::apply`], and never return or log a secret
//! except the one `CreateToken` answers with.

use std::ops::ControlFlow;
use std::time::SystemTime;

use itertools::Itertools;
use tonic::{Request, Response, Status};

use super::{Service, convert, etag, mask_paths};
use crate::auth::caller;
use crate::caller::Caller;
use crate::command::{Command, NewToken, Plan, TokenPatch};
use crate::domain::{
    AccountId, MODULE_CATALOGUE, Subject, Token, TokenId, TokenStatus, parse_description,
    parse_icon, parse_modules, parse_name,
};
use crate::error::Error;
use crate::leaks;
use crate::proto::create_token_request::Expiration;
use crate::proto::{self as pb, token_service_server::TokenService};
use crate::query::{Fields, FilterExpr, Pager, page_size};
use crate::state::Standing;

const UPDATABLE: &[&str] = &["name", "description", "icon", "modules", "expire_time"];

impl Service {
    pub(super) fn token_out(&self, t: &Token) -> pb::Token {
        convert::token(t, self.store.last_access(&t.id))
    }

    pub(super) fn expect_token(applied: Option<Subject>) -> Result<Token, Error> {
        match applied {
            Some(Subject::Token(t)) => Ok(t),
            _ => Err(Error::Internal(
                "the store answered without the token".into(),
            )),
        }
    }

    async fn apply_token(&self, cmd: Command, caller: &Caller) -> Result<pb::Token, Status> {
        let applied = self.store.apply(cmd, caller.actor()).await?;
        Ok(self.token_out(&Self::expect_token(applied.subject)?))
    }

    /// The caller may manage tokens, and may see the token `id` if it exists:
    /// another account's token is answered as missing, never as forbidden.
    /// The account of a token never changes, so this check cannot go stale
    /// before the command runs.
    pub(super) fn authorize_token<T>(
        &self,
        request: &Request<T>,
        id: &TokenId,
    ) -> Result<Caller, Error> {
        let caller = caller(request)?;
        caller.require_manager()?;
        match self.store.state().token(id) {
            Some(t) if !caller.sees(&t.account_id) => Err(Error::token_not_found(id)),
            _ => Ok(caller),
        }
    }

    /// The account a list or watch covers: the one asked for, if the caller
    /// may see it and it exists; else the caller's default scope.
    pub(super) fn scope(
        &self,
        caller: &Caller,
        account_id: &str,
    ) -> Result<Option<AccountId>, Error> {
        caller.require_manager()?;
        if account_id.is_empty() {
            return Ok(caller.default_scope());
        }
        let id = AccountId::parse_field("account_id", account_id)?;
        if !caller.sees(&id) || self.store.state().account(&id).is_none() {
            return Err(Error::account_not_found(&id));
        }
        Ok(Some(id))
    }
}

pub(super) fn token_id(s: &str) -> Result<TokenId, Error> {
    token_id_in("id", s)
}

pub(super) fn token_id_in(field: &'static str, s: &str) -> Result<TokenId, Error> {
    if s.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    TokenId::parse_field(field, s)
}

/// Builds the patch of an UpdateToken from its mask (AIP-134): an empty mask
/// means every field that is set in `token`, `*` means all updatable fields.
fn token_patch(
    token: &pb::Token,
    mask: Option<&prost_types::FieldMask>,
) -> Result<TokenPatch, Error> {
    let paths = mask_paths(mask, UPDATABLE, |path| match path {
        "name" => !token.name.is_empty(),
        "description" => !token.description.is_empty(),
        "icon" => !token.icon.is_empty(),
        "modules" => !token.modules.is_empty(),
        "expire_time" => token.expire_time.is_some(),
        _ => false,
    })?;
    let mut patch = TokenPatch::default();
    for path in paths {
        match path {
            "name" => patch.name = Some(parse_name("token.name", &token.name)?),
            "description" => {
                patch.description =
                    Some(parse_description("token.description", &token.description)?)
            }
            "icon" => patch.icon = Some(parse_icon("token.icon", &token.icon)?),
            "modules" => patch.modules = Some(parse_modules("token.modules", &token.modules)?),
            "expire_time" => {
                let at = token.expire_time.as_ref();
                patch.expire_time = Some(
                    at.map(|t| convert::time_from("token.expire_time", t))
                        .transpose()?,
                );
            }
            _ => unreachable!("mask_paths only returns updatable paths"),
        }
    }
    Ok(patch)
}

fn token_filter(input: &str) -> Result<FilterExpr, Error> {
    FilterExpr::parse(
        input,
        &Fields {
            eq: &["status", "name", "account_id"],
            has: &["modules"],
            time: &["expire_time"],
            one_of: &[
                ("status", &TokenStatus::ALL.map(convert::token_status_name)),
                ("modules", MODULE_CATALOGUE),
            ],
        },
    )
}

#[tonic::async_trait]
impl TokenService for Service {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let caller = caller(&request)?;
        caller.require_manager()?;
        let r = request.into_inner();
        if r.account_id.is_empty() {
            return Err(Error::invalid("account_id", "is required").into());
        }
        let account_id = AccountId::parse_field("account_id", &r.account_id)?;
        if !caller.sees(&account_id) {
            return Err(Error::account_not_found(&account_id).into());
        }
        let modules = parse_modules("modules", &r.modules)?;
        caller.may_grant(&modules)?;
        let new = NewToken {
            account_id,
            name: parse_name("name", &r.name)?,
            description: parse_description("description", &r.description)?,
            icon: parse_icon("icon", &r.icon)?,
            modules,
            expiry: match &r.expiration {
                None => None,
                Some(Expiration::ExpireTime(t)) => Some(convert::expire_at(t)?),
                Some(Expiration::Ttl(d)) => Some(convert::expire_after(d)?),
            },
            preset: None,
        };
        let applied = self
            .store
            .apply(Command::CreateToken(new), caller.actor())
            .await?;
        let secret = applied
            .secret
            .ok_or_else(|| Error::Internal("the store answered without a secret".into()))?;
        let token = Self::expect_token(applied.subject)?;
        tracing::info!(token = %token.id, account = %token.account_id, revision = applied.revision, "token created");
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(self.token_out(&token)),
            secret: secret.expose().to_string(),
        }))
    }

    async fn get_token(
        &self,
        request: Request<pb::GetTokenRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        let id = token_id(&request.get_ref().id)?;
        let show_deleted = request.get_ref().show_deleted;
        self.authorize_token(&request, &id)?
            .may_show_deleted(show_deleted)?;
        if let Some(t) = self.store.state().token(&id) {
            return Ok(Response::new(self.token_out(t)));
        }
        // Not live: a tombstone lives in the store only (operators only).
        let tombstone = if show_deleted {
            self.store.tombstone(&id).await?
        } else {
            None
        };
        match tombstone {
            Some(t) => Ok(Response::new(self.token_out(&t))),
            None => Err(Error::token_not_found(&id).into()),
        }
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let size = page_size(r.page_size)?;
        let filter = token_filter(&r.filter)?;
        let account = self.scope(&caller, &r.account_id)?;
        caller.may_show_deleted(r.show_deleted)?;
        let state = self.store.state();
        let show_deleted = if r.show_deleted { "deleted" } else { "live" };
        let scope = account.as_ref().map_or("", AccountId::as_str);
        let query = ["tokens", scope, &r.filter, show_deleted];
        let matches = |t: &Token| {
            filter.matches(
                |field| match field {
                    "status" => vec![convert::token_status_name(t.status)],
                    "name" => vec![t.name.as_str()],
                    "account_id" => vec![t.account_id.as_str()],
                    "modules" => t.modules.iter().collect(),
                    _ => vec![],
                },
                |field| match field {
                    "expire_time" => t.expire_time,
                    _ => None,
                },
            )
        };
        // Tombstones come from the store, read after the state (so none is
        // missed), each once: one deleted since is shown live, one created
        // and deleted since is left out (the state is the page's revision).
        // Without a filter, the state's counts are the total, and the walk
        // stops at a full page; a filter is matched on every tombstone.
        let mut tombstones: Vec<std::sync::Arc<Token>> = Vec::new();
        let mut total = None;
        if r.show_deleted {
            let after = Pager::new(self.store.page_key(), &query)
                .decode(&r.page_token)?
                .map(|s| s.parse::<TokenId>())
                .transpose()?;
            let counted = filter.is_empty();
            let in_scope = state.tombstones_of(account.as_ref());
            // Counted: from the page token on, a page's worth at a time,
            // until the page is full (or, from the start, until every
            // tombstone of the scope is seen). Else every match, to count.
            let (from, batch) = if counted {
                (after.clone(), size + 1)
            } else {
                (None, usize::MAX)
            };
            let mut deleted = 0;
            if !(counted && in_scope == 0) {
                crate::store::scan_tombstones(&*self.store, account.as_ref(), from, batch, |t| {
                    if state.token(&t.id).is_some() || !state.token_id_taken(&t.id) || !matches(&t)
                    {
                        return ControlFlow::Continue(());
                    }
                    deleted += 1;
                    if tombstones.len() <= size && after.as_ref().is_none_or(|a| t.id > *a) {
                        tombstones.push(std::sync::Arc::new(t));
                    }
                    let all_seen = after.is_none() && deleted as u64 >= in_scope;
                    if counted && (tombstones.len() > size || all_seen) {
                        return ControlFlow::Break(());
                    }
                    ControlFlow::Continue(())
                })
                .await?;
            }
            total = Some(if counted {
                state.live_tokens_of(account.as_ref()) + in_scope as usize
            } else {
                let live = state.tokens_after(account.as_ref(), None);
                live.filter(|t| matches(t)).count() + deleted
            });
        } else if filter.is_empty() {
            // The live tokens of the scope are counted already: no scan of
            // a million tokens for every page.
            total = Some(state.live_tokens_of(account.as_ref()));
        }
        let page = self.list(
            &query,
            &r.page_token,
            size,
            |after: Option<&TokenId>| {
                let from = tombstones.partition_point(|t| after.is_some_and(|a| t.id <= *a));
                let deleted = tombstones[from..].iter();
                state
                    .tokens_after(account.as_ref(), after)
                    .merge_by(deleted, |a, b| a.id < b.id)
                    .filter(|t| matches(t))
            },
            |t| t.id.as_str(),
            total,
        )?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: page.items.into_iter().map(|t| self.token_out(t)).collect(),
            next_page_token: page.next_page_token,
            total_size: page.total_size,
        }))
    }

    async fn update_token(
        &self,
        request: Request<pb::UpdateTokenRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        let Some(token) = &request.get_ref().token else {
            return Err(Error::invalid("token", "is required").into());
        };
        let id = token_id_in("token.id", &token.id)?;
        let caller = self.authorize_token(&request, &id)?;
        let r = request.into_inner();
        let token = r.token.unwrap_or_default();
        let patch = token_patch(&token, r.update_mask.as_ref())?;
        if let Some(modules) = &patch.modules {
            caller.may_grant(modules)?;
        }
        let etag = etag(&r.etag).or_else(|| etag(&token.etag));
        let out = self
            .apply_token(Command::UpdateToken { id, etag, patch }, &caller)
            .await?;
        Ok(Response::new(out))
    }

    async fn enable_token(
        &self,
        request: Request<pb::EnableTokenRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        let id = token_id(&request.get_ref().id)?;
        let caller = self.authorize_token(&request, &id)?;
        let cmd = Command::EnableToken {
            id,
            etag: etag(&request.get_ref().etag),
        };
        Ok(Response::new(self.apply_token(cmd, &caller).await?))
    }

    async fn disable_token(
        &self,
        request: Request<pb::DisableTokenRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        let id = token_id(&request.get_ref().id)?;
        let caller = self.authorize_token(&request, &id)?;
        let cmd = Command::DisableToken {
            id,
            etag: etag(&request.get_ref().etag),
        };
        Ok(Response::new(self.apply_token(cmd, &caller).await?))
    }

    async fn delete_token(
        &self,
        request: Request<pb::DeleteTokenRequest>,
    ) -> Result<Response<pb::DeleteTokenResponse>, Status> {
        let id = token_id(&request.get_ref().id)?;
        let caller = match self.authorize_token(&request, &id) {
            // Another account's token is as good as missing.
            Err(Error::NotFound { .. }) if request.get_ref().allow_missing => {
                return Ok(Response::new(pb::DeleteTokenResponse::default()));
            }
            other => other?,
        };
        let r = request.into_inner();
        let cmd = Command::DeleteToken {
            id,
            etag: etag(&r.etag),
            allow_missing: r.allow_missing,
        };
        if r.validate_only {
            // The answer is the token as it is now, with the etag that
            // confirms it.
            let token = match self.store.preview(&cmd, &caller.actor()).await? {
                Plan::Change(changes, _) => {
                    let planned =
                        Self::expect_token(changes.into_iter().next().map(|c| c.subject))?;
                    self.store
                        .state()
                        .token(&planned.id)
                        .map(|t| self.token_out(t))
                }
                Plan::Unchanged(_) => None,
            };
            return Ok(Response::new(pb::DeleteTokenResponse {
                token,
                revision: 0,
            }));
        }
        let applied = self.store.apply(cmd, caller.actor()).await?;
        let token = match applied.subject {
            None => None,
            subject => Some(Self::expect_token(subject)?),
        };
        if let Some(t) = &token {
            tracing::info!(token = %t.id, account = %t.account_id, revision = applied.revision, "token deleted");
        }
        Ok(Response::new(pb::DeleteTokenResponse {
            token: token.map(|t| self.token_out(&t)),
            revision: applied.revision as i64,
        }))
    }

    async fn roll_token(
        &self,
        request: Request<pb::RollTokenRequest>,
    ) -> Result<Response<pb::RollTokenResponse>, Status> {
        Ok(Response::new(self.roll(request).await?))
    }

    async fn verify_token(
        &self,
        request: Request<pb::VerifyTokenRequest>,
    ) -> Result<Response<pb::VerifyTokenResponse>, Status> {
        let r = request.into_inner();
        let answer = |result: pb::VerifyResult, token: Option<pb::Token>, account| {
            Ok(Response::new(pb::VerifyTokenResponse {
                valid: result == pb::VerifyResult::Valid,
                result: result as i32,
                token,
                account,
            }))
        };
        let state = self.store.verifying_state()?;
        let v = state.verify(&r.secret, SystemTime::now());
        let result = convert::verify_result(v.standing);
        if let (Standing::Valid, Some(token)) = (v.standing, v.token) {
            self.store.record_access(&token.id, SystemTime::now());
        }
        answer(
            result,
            v.token.map(|t| self.token_out(t)),
            v.account.map(|a| convert::account(a)),
        )
    }

    async fn report_leaked_secrets(
        &self,
        request: Request<pb::ReportLeakedSecretsRequest>,
    ) -> Result<Response<pb::ReportLeakedSecretsResponse>, Status> {
        caller(&request)?.require_operator("reporting leaked secrets")?;
        let found: Vec<leaks::Found> = request
            .into_inner()
            .secrets
            .into_iter()
            .map(|s| leaks::Found {
                secret: s.secret,
                url: s.url,
                source: s.source,
            })
            .collect();
        let verdicts = leaks::revoke(self.store.as_ref(), &found, self.leak_action).await?;
        let verdicts = verdicts
            .into_iter()
            .map(|v| pb::LeakVerdict {
                secret_hash: v.secret_hash,
                true_positive: v.revoked.is_some(),
                token_id: v
                    .revoked
                    .as_ref()
                    .map(|(id, _)| id.to_string())
                    .unwrap_or_default(),
                revision: v.revoked.map_or(0, |(_, r)| r as i64),
            })
            .collect();
        Ok(Response::new(pb::ReportLeakedSecretsResponse { verdicts }))
    }

    type WatchTokensStream = super::events::EventStream;

    async fn watch_tokens(
        &self,
        request: Request<pb::WatchTokensRequest>,
    ) -> Result<Response<Self::WatchTokensStream>, Status> {
        Ok(Response::new(self.watch(request).await?))
    }

    async fn list_token_events(
        &self,
        request: Request<pb::ListTokenEventsRequest>,
    ) -> Result<Response<pb::ListTokenEventsResponse>, Status> {
        Ok(Response::new(self.token_events(request).await?))
    }
}
