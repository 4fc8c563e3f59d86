//! `tokend accounts …`: create, get, list and update accounts.
//!
//! Owns turning the command line into `AccountService` requests (the update
//! mask from the flags given). It prints only through [`super::output`] and
//! never sends a request a flag did not ask for.

use crate::cli::{AccountsCommand, ClientArgs};
use crate::proto as pb;
use crate::service::convert::duration;

use super::output::print_accounts;
use super::{Conn, Failure, all_pages, exit, fail};

pub(super) async fn run(args: &ClientArgs, cmd: AccountsCommand) -> Result<(), Failure> {
    let mut c = Conn::open(args).await?.accounts();
    let out = args.output;
    match cmd {
        AccountsCommand::Create {
            name,
            kind,
            module,
            max_token_lifetime,
        } => {
            let a = c
                .create_account(pb::CreateAccountRequest {
                    name,
                    r#type: kind.proto() as i32,
                    modules: module,
                    max_token_lifetime: max_token_lifetime.map(duration),
                })
                .await?
                .into_inner();
            print_accounts(out, &[a]);
        }
        AccountsCommand::Get { id } => {
            let a = c
                .get_account(pb::GetAccountRequest { id })
                .await?
                .into_inner();
            print_accounts(out, &[a]);
        }
        AccountsCommand::List { filter } => {
            let all = all_pages(async |page_token| {
                let r = c
                    .list_accounts(pb::ListAccountsRequest {
                        page_size: 1000,
                        page_token,
                        filter: filter.clone(),
                    })
                    .await?
                    .into_inner();
                Ok((r.accounts, r.next_page_token))
            })
            .await?;
            print_accounts(out, &all);
        }
        AccountsCommand::Update {
            id,
            name,
            status,
            module,
            max_token_lifetime,
            no_max_token_lifetime,
        } => {
            let mut paths = Vec::new();
            let mut account = pb::Account {
                id,
                ..Default::default()
            };
            if let Some(n) = name {
                account.name = n;
                paths.push("name".to_string());
            }
            if let Some(s) = status {
                account.status = s.proto() as i32;
                paths.push("status".to_string());
            }
            if !module.is_empty() {
                account.modules = module;
                paths.push("modules".to_string());
            }
            if max_token_lifetime.is_some() || no_max_token_lifetime {
                account.max_token_lifetime = max_token_lifetime.map(duration);
                paths.push("max_token_lifetime".to_string());
            }
            if paths.is_empty() {
                return Err(fail(
                    exit::USAGE,
                    "nothing to update: give --name, --status, --module or --[no-]max-token-lifetime",
                ));
            }
            let a = c
                .update_account(pb::UpdateAccountRequest {
                    account: Some(account),
                    update_mask: Some(prost_types::FieldMask { paths }),
                    etag: String::new(),
                })
                .await?
                .into_inner();
            print_accounts(out, &[a]);
        }
    }
    Ok(())
}
