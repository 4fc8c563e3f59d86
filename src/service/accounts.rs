//! `apitokens.v1.AccountService`: accounts own tokens and bound their modules.
//!
//! Owns request-shape rules for accounts; like the token handlers it changes
//! nothing except through [`Store::apply`]. `SaveSnapshot` is here because
//! this service is operators' only; its work is `service/snapshot.rs`'s.

use tonic::{Request, Response, Status};

use super::{Service, convert, etag, mask_paths};
use crate::auth::caller;
use crate::caller::Caller;
use crate::command::{AccountPatch, Command, NewAccount};
use crate::domain::{
    Account, AccountId, AccountStatus, AccountType, MODULE_CATALOGUE, Subject, parse_modules,
    parse_name,
};
use crate::error::Error;
use crate::proto::{self as pb, account_service_server::AccountService};
use crate::query::{Fields, FilterExpr, page_size};

const UPDATABLE: &[&str] = &["name", "status", "modules", "max_token_lifetime"];

/// AccountService is for operators only (docs/contract.md §4).
fn operator<T>(request: &Request<T>, what: &str) -> Result<Caller, Error> {
    let caller = caller(request)?;
    caller.require_operator(what)?;
    Ok(caller)
}

fn account_id(field: &'static str, s: &str) -> Result<AccountId, Error> {
    if s.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    AccountId::parse_field(field, s)
}

fn expect_account(subject: Option<Subject>) -> Result<pb::Account, Error> {
    match subject {
        Some(Subject::Account(a)) => Ok(convert::account(&a)),
        _ => Err(Error::Internal(
            "the store answered without the account".into(),
        )),
    }
}

fn account_patch(
    a: &pb::Account,
    mask: Option<&prost_types::FieldMask>,
) -> Result<AccountPatch, Error> {
    let paths = mask_paths(mask, UPDATABLE, |path| match path {
        "name" => !a.name.is_empty(),
        "status" => a.status != 0,
        "modules" => !a.modules.is_empty(),
        "max_token_lifetime" => a.max_token_lifetime.is_some(),
        _ => false,
    })?;
    let mut patch = AccountPatch::default();
    for path in paths {
        match path {
            "name" => patch.name = Some(parse_name("account.name", &a.name)?),
            "status" => {
                patch.status = Some(convert::account_status_from("account.status", a.status)?)
            }
            "modules" => patch.modules = Some(parse_modules("account.modules", &a.modules)?),
            "max_token_lifetime" => {
                patch.max_token_lifetime = Some(max_lifetime(
                    "account.max_token_lifetime",
                    a.max_token_lifetime.as_ref(),
                )?);
            }
            _ => unreachable!("mask_paths only returns updatable paths"),
        }
    }
    Ok(patch)
}

fn max_lifetime(
    field: &'static str,
    d: Option<&prost_types::Duration>,
) -> Result<Option<std::time::Duration>, Error> {
    match d {
        Some(d) if d.nanos != 0 => Err(Error::invalid(field, "must be whole seconds")),
        d => d.map(|d| convert::duration_from(field, d)).transpose(),
    }
}

fn matches(filter: &FilterExpr, a: &Account) -> bool {
    filter.matches(
        |field| match field {
            "status" => vec![convert::account_status_name(a.status)],
            "type" => vec![convert::account_type_name(a.kind)],
            "name" => vec![a.name.as_str()],
            "modules" => a.modules.iter().collect(),
            _ => vec![],
        },
        |_| None,
    )
}

#[tonic::async_trait]
impl AccountService for Service {
    async fn create_account(
        &self,
        request: Request<pb::CreateAccountRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let caller = operator(&request, "managing accounts")?;
        let r = request.into_inner();
        let new = NewAccount {
            name: parse_name("name", &r.name)?,
            kind: convert::account_type_from(r.r#type)?,
            modules: parse_modules("modules", &r.modules)?,
            max_token_lifetime: max_lifetime("max_token_lifetime", r.max_token_lifetime.as_ref())?,
        };
        let applied = self
            .store
            .apply(Command::CreateAccount(new), caller.actor())
            .await?;
        Ok(Response::new(expect_account(applied.subject)?))
    }

    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        operator(&request, "managing accounts")?;
        let id = account_id("id", &request.into_inner().id)?;
        let state = self.store.state();
        let account = state
            .account(&id)
            .ok_or_else(|| Error::account_not_found(&id))?;
        Ok(Response::new(convert::account(account)))
    }

    async fn list_accounts(
        &self,
        request: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        operator(&request, "managing accounts")?;
        let r = request.into_inner();
        let size = page_size(r.page_size)?;
        let filter = FilterExpr::parse(
            &r.filter,
            &Fields {
                eq: &["status", "type", "name"],
                has: &["modules"],
                time: &[],
                one_of: &[
                    (
                        "status",
                        &AccountStatus::ALL.map(convert::account_status_name),
                    ),
                    ("type", &AccountType::ALL.map(convert::account_type_name)),
                    ("modules", MODULE_CATALOGUE),
                ],
            },
        )?;
        let state = self.store.state();
        let page = self.list(
            &["accounts", &r.filter],
            &r.page_token,
            size,
            |after: Option<&AccountId>| state.accounts_after(after).filter(|a| matches(&filter, a)),
            |a| a.id.as_str(),
            None,
        )?;
        Ok(Response::new(pb::ListAccountsResponse {
            accounts: page
                .items
                .into_iter()
                .map(|a| convert::account(a))
                .collect(),
            next_page_token: page.next_page_token,
            total_size: page.total_size,
        }))
    }

    async fn update_account(
        &self,
        request: Request<pb::UpdateAccountRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let caller = operator(&request, "managing accounts")?;
        let r = request.into_inner();
        let account = r
            .account
            .ok_or_else(|| Error::invalid("account", "is required"))?;
        let cmd = Command::UpdateAccount {
            id: account_id("account.id", &account.id)?,
            etag: etag(&r.etag).or_else(|| etag(&account.etag)),
            patch: account_patch(&account, r.update_mask.as_ref())?,
        };
        let applied = self.store.apply(cmd, caller.actor()).await?;
        Ok(Response::new(expect_account(applied.subject)?))
    }

    type SaveSnapshotStream = super::snapshot::ChunkStream;

    async fn save_snapshot(
        &self,
        request: Request<pb::SaveSnapshotRequest>,
    ) -> Result<Response<Self::SaveSnapshotStream>, Status> {
        operator(&request, "saving a snapshot")?;
        Ok(Response::new(
            super::snapshot::save(self.store.as_ref()).await?,
        ))
    }
}
