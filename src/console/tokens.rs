//! `tokend tokens …` except delete and watch: create, get, list, update,
//! enable, disable, history and verify, each one call of `TokenService`
//! (or its pages).
//!
//! Owns turning the command line into those requests and the exit code of
//! `verify` (1 for a secret that does not verify). It must never print a
//! secret except the one `create` returns, shown once; a secret to verify is
//! read from the argument or stdin and only ever sent to the server.

use std::io::BufRead;

use serde_json::json;

use crate::cli::{ClientArgs, Output, TokensCommand};
use crate::proto::{self as pb, create_token_request::Expiration};
use crate::service::convert::duration;

use super::output::{self, print_tokens, token_json};
use super::{Conn, Failure, all_pages, delete, exit, fail, watch};

pub(super) async fn run(args: &ClientArgs, cmd: TokensCommand) -> Result<(), Failure> {
    // A secret to verify is read first: a missing one is a usage error
    // whether or not a server answers.
    let cmd = match cmd {
        TokensCommand::Verify { secret } => TokensCommand::Verify {
            secret: Some(secret_to_verify(secret)?),
        },
        other => other,
    };
    let conn = Conn::open(args).await?;
    let mut c = conn.tokens();
    let out = args.output;
    match cmd {
        TokensCommand::Create {
            account,
            name,
            description,
            icon,
            module,
            expires_in,
            expires_at,
        } => {
            let expiration = expiration(
                expires_in,
                expires_at,
                Expiration::Ttl,
                Expiration::ExpireTime,
            );
            let r = c
                .create_token(pb::CreateTokenRequest {
                    account_id: account,
                    name,
                    description,
                    icon,
                    modules: module,
                    expiration,
                })
                .await?
                .into_inner();
            let token = r.token.unwrap_or_default();
            match out {
                Output::Json => say!(
                    "{}",
                    json!({"token": token_json(&token), "secret": r.secret})
                ),
                Output::Table => {
                    print_tokens(out, std::slice::from_ref(&token));
                    say!("\nSecret (shown once; store it now):\n{}", r.secret);
                }
            }
        }
        TokensCommand::Roll {
            id,
            grace,
            expires_in,
            expires_at,
        } => {
            use pb::roll_token_request::Expiration;
            let expiration = expiration(
                expires_in,
                expires_at,
                Expiration::Ttl,
                Expiration::ExpireTime,
            );
            let r = c
                .roll_token(pb::RollTokenRequest {
                    id,
                    grace: Some(duration(grace)),
                    expiration,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let (token, old) = (r.token.unwrap_or_default(), r.replaced.unwrap_or_default());
            match out {
                Output::Json => say!(
                    "{}",
                    json!({"token": token_json(&token), "secret": r.secret,
                           "replaced": token_json(&old), "revision": r.revision})
                ),
                Output::Table => {
                    print_tokens(out, std::slice::from_ref(&token));
                    say!("\nSecret (shown once; store it now):\n{}", r.secret);
                    match old.expire_time.as_ref() {
                        _ if old.status == pb::TokenStatus::Deleted as i32 => {
                            say!("\nThe old token {} was deleted.", old.id)
                        }
                        Some(at) => say!(
                            "\nThe old token {} keeps working until {}.",
                            old.id,
                            output::rfc3339(at)
                        ),
                        None => {}
                    }
                }
            }
        }
        TokensCommand::Get { id, show_deleted } => {
            let t = c
                .get_token(pb::GetTokenRequest { id, show_deleted })
                .await?
                .into_inner();
            print_tokens(out, &[t]);
        }
        TokensCommand::List {
            account,
            filter,
            show_deleted,
        } => {
            let all = all_pages(async |page_token| {
                let r = c
                    .list_tokens(pb::ListTokensRequest {
                        account_id: account.clone().unwrap_or_default(),
                        page_size: 1000,
                        page_token,
                        filter: filter.clone(),
                        show_deleted,
                    })
                    .await?
                    .into_inner();
                Ok((r.tokens, r.next_page_token))
            })
            .await?;
            print_tokens(out, &all);
        }
        TokensCommand::History { id } => {
            let oldest = std::cell::Cell::new(0);
            let events = all_pages(async |page_token| {
                let r = c
                    .list_token_events(pb::ListTokenEventsRequest {
                        token_id: id.clone(),
                        page_size: 1000,
                        page_token,
                    })
                    .await?
                    .into_inner();
                oldest.set(r.oldest_revision);
                Ok((r.events, r.next_page_token))
            })
            .await?;
            output::print_event_header(out);
            for e in &events {
                output::print_event(out, e);
            }
            // A trail that does not reach the token's creation lost its
            // start to compaction, or to a restore (a snapshot keeps no
            // history): said, as the web console says it, on stderr so
            // that the printed events stay what a script reads.
            let created = pb::EventType::Created as i32;
            if events.last().is_none_or(|e| e.r#type != created) {
                eprintln!(
                    "note: the changes before revision {} are no longer kept (compacted, or \
                     made before the store was restored) and are not shown; \
                     `tokend tokens get {id}` (--show-deleted once deleted) still says who \
                     created the token and when",
                    oldest.get()
                );
            }
        }
        TokensCommand::Update {
            id,
            name,
            description,
            icon,
            module,
            expires_at,
            no_expiry,
        } => {
            let mut paths = Vec::new();
            let mut token = pb::Token {
                id,
                ..Default::default()
            };
            for (value, path, slot) in [
                (name, "name", &mut token.name),
                (description, "description", &mut token.description),
                (icon, "icon", &mut token.icon),
            ] {
                if let Some(v) = value {
                    *slot = v;
                    paths.push(path.to_string());
                }
            }
            if !module.is_empty() {
                token.modules = module;
                paths.push("modules".to_string());
            }
            if expires_at.is_some() || no_expiry {
                token.expire_time = expires_at;
                paths.push("expire_time".to_string());
            }
            if paths.is_empty() {
                return Err(fail(
                    exit::USAGE,
                    "nothing to update: give --name, --description, --icon, --module, --expires-at or --no-expiry",
                ));
            }
            let t = c
                .update_token(pb::UpdateTokenRequest {
                    token: Some(token),
                    update_mask: Some(prost_types::FieldMask { paths }),
                    etag: String::new(),
                })
                .await?
                .into_inner();
            print_tokens(out, &[t]);
        }
        TokensCommand::Enable { id } => {
            let t = c
                .enable_token(pb::EnableTokenRequest {
                    id,
                    etag: String::new(),
                })
                .await?
                .into_inner();
            print_tokens(out, &[t]);
        }
        TokensCommand::Disable { id } => {
            let t = c
                .disable_token(pb::DisableTokenRequest {
                    id,
                    etag: String::new(),
                })
                .await?
                .into_inner();
            print_tokens(out, &[t]);
        }
        TokensCommand::Delete { id, yes } => delete::run(&mut c, out, id, yes).await?,
        TokensCommand::Verify { secret } => {
            let secret = secret.unwrap_or_default();
            let r = c
                .verify_token(pb::VerifyTokenRequest { secret })
                .await?
                .into_inner();
            let result = output::name::<pb::VerifyResult>(r.result);
            match out {
                Output::Json => say!(
                    "{}",
                    json!({"valid": r.valid, "result": result, "token": r.token.as_ref().map(token_json)})
                ),
                Output::Table => {
                    let who = r
                        .token
                        .map(|t| format!(" ({}, {})", t.name, t.id))
                        .unwrap_or_default();
                    say!("{result}{who}");
                }
            }
            if !r.valid {
                return Err(fail(
                    exit::FAILED,
                    format!("the secret is not valid: {result}"),
                ));
            }
        }
        TokensCommand::Watch {
            account,
            from,
            r#type,
        } => watch::run(&conn, out, account.unwrap_or_default(), from, r#type).await?,
    }
    Ok(())
}

/// A request's `expiration` oneof from `--expires-in` / `--expires-at`
/// (clap lets at most one through), whichever request it is for.
fn expiration<E>(
    expires_in: Option<std::time::Duration>,
    expires_at: Option<prost_types::Timestamp>,
    ttl: fn(prost_types::Duration) -> E,
    at: fn(prost_types::Timestamp) -> E,
) -> Option<E> {
    match (expires_in, expires_at) {
        (Some(d), _) => Some(ttl(duration(d))),
        (None, Some(t)) => Some(at(t)),
        (None, None) => None,
    }
}

/// The secret `tokens verify` checks: the argument, or a line of stdin for
/// none or `-`; trimmed, and refused when empty.
fn secret_to_verify(arg: Option<String>) -> Result<String, Failure> {
    let secret = match arg.as_deref() {
        None | Some("-") => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| fail(exit::USAGE, format!("reading the secret: {e}")))?;
            line
        }
        Some(s) => s.to_string(),
    };
    match secret.trim() {
        "" => Err(fail(
            exit::USAGE,
            "no secret to verify: give it as the argument, or `-` and the secret on stdin",
        )),
        s => Ok(s.to_string()),
    }
}
