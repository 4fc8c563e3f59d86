//! The client subcommands of `tokend`, for people at a terminal and for
//! scripts: `tokend accounts …` and `tokend tokens …` over gRPC.
//!
//! Owns what a person sees: tables (or `--output json`), the delete
//! confirmation modelled on the platform's dialog, the live event printer
//! that resumes after a dropped connection, and exit codes scripts can trust.
//! It talks to a server only through the generated client, like any other
//! client would, and never prints a secret except the one `tokens create`
//! shows once.

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::cli::{AccountsCommand, ClientArgs, Output, TokensCommand};
use crate::client::Bearer;
use crate::proto::{
    self as pb, account_service_client::AccountServiceClient,
    token_service_client::TokenServiceClient,
};

/// Exit codes (documented in the README).
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const NOT_FOUND: i32 = 3;
    pub const CONFLICT: i32 = 4;
    pub const DENIED: i32 = 5;
    pub const UNAVAILABLE: i32 = 6;
    pub const DECLINED: i32 = 10;
}

/// Why a command failed, and the exit code that says so.
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl From<Status> for Failure {
    fn from(s: Status) -> Failure {
        let code = match s.code() {
            Code::NotFound => exit::NOT_FOUND,
            Code::Aborted | Code::FailedPrecondition | Code::AlreadyExists => exit::CONFLICT,
            Code::Unauthenticated | Code::PermissionDenied => exit::DENIED,
            Code::Unavailable | Code::DeadlineExceeded => exit::UNAVAILABLE,
            Code::InvalidArgument | Code::OutOfRange => exit::USAGE,
            _ => exit::FAILED,
        };
        Failure {
            code,
            message: format!("{:?}: {}", s.code(), s.message()),
        }
    }
}

fn fail(code: i32, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

type Tokens = TokenServiceClient<InterceptedService<Channel, Bearer>>;
type Accounts = AccountServiceClient<InterceptedService<Channel, Bearer>>;

/// The credential a local `tokend serve` wrote on first start.
const LOCAL_OPERATOR_TOKEN: &str = "./tokend-data/operator.token";

fn is_loopback(server: &str) -> bool {
    server
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_string()))
        .is_some_and(|h| {
            h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        })
}

/// Where to connect and as whom.
struct Conn {
    channel: Channel,
    bearer: Bearer,
}

impl Conn {
    async fn open(args: &ClientArgs) -> Result<Conn, Failure> {
        let secret = match (&args.token, &args.token_file) {
            (Some(t), _) => Some(t.trim().to_string()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| fail(exit::USAGE, format!("cannot read {}: {e}", path.display())))?
                    .trim()
                    .to_string(),
            ),
            // The local operator credential goes only to a local server,
            // never to whatever host --server happens to name.
            (None, None) if is_loopback(&args.server) => {
                std::fs::read_to_string(LOCAL_OPERATOR_TOKEN)
                    .ok()
                    .map(|s| s.trim().to_string())
            }
            (None, None) => None,
        };
        let bearer = match secret {
            None => Bearer::none(),
            Some(s) => Bearer::new(&s)
                .ok_or_else(|| fail(exit::USAGE, "the token is not printable ASCII"))?,
        };
        let channel = Channel::from_shared(args.server.clone())
            .map_err(|e| fail(exit::USAGE, format!("bad --server {}: {e}", args.server)))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| {
                fail(
                    exit::UNAVAILABLE,
                    format!("cannot reach {}: {e}", args.server),
                )
            })?;
        Ok(Conn { channel, bearer })
    }

    fn tokens(&self) -> Tokens {
        TokenServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    fn accounts(&self) -> Accounts {
        AccountServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
}

/// Runs a client subcommand; returns the process exit code.
pub async fn run_accounts(args: ClientArgs, cmd: AccountsCommand) -> i32 {
    finish(accounts(&args, cmd).await)
}

pub async fn run_tokens(args: ClientArgs, cmd: TokensCommand) -> i32 {
    finish(tokens(&args, cmd).await)
}

fn finish(result: Result<(), Failure>) -> i32 {
    match result {
        Ok(()) => exit::OK,
        Err(f) => {
            eprintln!("tokend: {}", f.message);
            f.code
        }
    }
}

async fn accounts(args: &ClientArgs, cmd: AccountsCommand) -> Result<(), Failure> {
    let mut c = Conn::open(args).await?.accounts();
    let out = args.output;
    match cmd {
        AccountsCommand::Create { name, kind, module } => {
            let a = c
                .create_account(pb::CreateAccountRequest {
                    name,
                    r#type: kind.proto() as i32,
                    modules: module,
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
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let r = c
                    .list_accounts(pb::ListAccountsRequest {
                        page_size: 1000,
                        page_token,
                        filter: filter.clone(),
                    })
                    .await?
                    .into_inner();
                all.extend(r.accounts);
                if r.next_page_token.is_empty() {
                    break;
                }
                page_token = r.next_page_token;
            }
            print_accounts(out, &all);
        }
        AccountsCommand::Update {
            id,
            name,
            status,
            module,
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
            if paths.is_empty() {
                return Err(fail(
                    exit::USAGE,
                    "nothing to update: give --name, --status or --module",
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

async fn tokens(args: &ClientArgs, cmd: TokensCommand) -> Result<(), Failure> {
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
        } => {
            let r = c
                .create_token(pb::CreateTokenRequest {
                    account_id: account,
                    name,
                    description,
                    icon,
                    modules: module,
                })
                .await?
                .into_inner();
            let token = r.token.unwrap_or_default();
            match out {
                Output::Json => println!(
                    "{}",
                    json!({"token": token_json(&token), "secret": r.secret})
                ),
                Output::Table => {
                    print_tokens(out, std::slice::from_ref(&token));
                    println!("\nSecret (shown once; store it now):\n{}", r.secret);
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
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
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
                all.extend(r.tokens);
                if r.next_page_token.is_empty() {
                    break;
                }
                page_token = r.next_page_token;
            }
            print_tokens(out, &all);
        }
        TokensCommand::Update {
            id,
            name,
            description,
            icon,
            module,
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
            if paths.is_empty() {
                return Err(fail(
                    exit::USAGE,
                    "nothing to update: give --name, --description, --icon or --module",
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
        TokensCommand::Delete { id, yes } => delete(&mut c, out, id, yes).await?,
        TokensCommand::Verify { secret } => {
            let secret = match secret.as_deref() {
                None | Some("-") => {
                    let mut line = String::new();
                    std::io::stdin()
                        .lock()
                        .read_line(&mut line)
                        .map_err(|e| fail(exit::USAGE, format!("reading the secret: {e}")))?;
                    line.trim().to_string()
                }
                Some(s) => s.to_string(),
            };
            let r = c
                .verify_token(pb::VerifyTokenRequest { secret })
                .await?
                .into_inner();
            let result = pb::VerifyResult::try_from(r.result)
                .map(|v| {
                    v.as_str_name()
                        .trim_start_matches("VERIFY_RESULT_")
                        .to_string()
                })
                .unwrap_or_default();
            match out {
                Output::Json => println!(
                    "{}",
                    json!({"valid": r.valid, "result": result, "token": r.token.as_ref().map(token_json)})
                ),
                Output::Table => {
                    let who = r
                        .token
                        .map(|t| format!(" ({}, {})", t.name, t.id))
                        .unwrap_or_default();
                    println!("{result}{who}");
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
        } => watch(&conn, out, account.unwrap_or_default(), from, r#type).await?,
    }
    Ok(())
}

/// The platform's delete flow: show what would be deleted (validate_only),
/// warn, ask, then delete with the etag that was shown, so a token changed
/// in between is not deleted.
async fn delete(c: &mut Tokens, out: Output, id: String, yes: bool) -> Result<(), Failure> {
    let preview = c
        .delete_token(pb::DeleteTokenRequest {
            id: id.clone(),
            validate_only: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    let shown = preview
        .token
        .ok_or_else(|| fail(exit::NOT_FOUND, format!("token {id} not found")))?;
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(fail(
                exit::USAGE,
                "refusing to delete without confirmation: stdin is not a terminal (pass --yes)",
            ));
        }
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "Delete API token '{}' ({})?", shown.name, shown.id);
        let _ = writeln!(stdout, "A deleted token can't be restored or reused.");
        let _ = write!(stdout, "Type 'yes' to delete: ");
        let _ = stdout.flush();
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .map_err(|e| fail(exit::USAGE, format!("reading the answer: {e}")))?;
        if !matches!(answer.trim(), "yes" | "y" | "YES" | "Yes") {
            return Err(fail(exit::DECLINED, "not deleted"));
        }
    }
    let r = c
        .delete_token(pb::DeleteTokenRequest {
            id: shown.id.clone(),
            etag: shown.etag.clone(),
            ..Default::default()
        })
        .await;
    let r = match r {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == Code::Aborted => {
            return Err(fail(
                exit::CONFLICT,
                format!(
                    "API token '{}' ({}) changed after it was shown; nothing was deleted. Run the command again to review it.",
                    shown.name, shown.id
                ),
            ));
        }
        Err(s) => return Err(s.into()),
    };
    let tomb = r.token.unwrap_or(shown);
    match out {
        Output::Json => println!(
            "{}",
            json!({"token": token_json(&tomb), "revision": r.revision})
        ),
        Output::Table => println!(
            "API token '{}' ({}) was deleted successfully.",
            tomb.name, tomb.id
        ),
    }
    Ok(())
}

/// Prints events as they come. After a dropped connection it resumes from
/// the last revision it saw (nothing lost, nothing repeated); when that is
/// compacted away it re-syncs with a snapshot.
async fn watch(
    conn: &Conn,
    out: Output,
    account_id: String,
    from: Option<i64>,
    types: Vec<crate::cli::EventTypeArg>,
) -> Result<(), Failure> {
    let types: Vec<i32> = types.iter().map(|t| t.proto() as i32).collect();
    let mut next = from.unwrap_or(0);
    let mut resync = false;
    let mut backoff = Duration::from_millis(100);
    loop {
        let request = pb::WatchTokensRequest {
            account_id: account_id.clone(),
            start_revision: if resync { 0 } else { next },
            send_initial: resync,
            types: types.clone(),
        };
        let mut c = conn.tokens();
        let opened = c.watch_tokens(request).await;
        let mut stream = match opened {
            Ok(s) => s.into_inner(),
            Err(s) if compacted(&s) => {
                eprintln!("tokend: revision {next} was compacted; re-syncing with a snapshot");
                resync = true;
                continue;
            }
            Err(s) if s.code() == Code::Unavailable => {
                // Never saw a revision: "from now" would skip the outage.
                resync = next == 0;
                retry(&mut backoff).await;
                continue;
            }
            Err(s) => return Err(s.into()),
        };
        resync = false;
        backoff = Duration::from_millis(100);
        loop {
            match stream.message().await {
                Ok(Some(e)) => {
                    if e.r#type == pb::EventType::Progress as i32
                        || e.r#type == pb::EventType::Synced as i32
                    {
                        next = next.max(e.revision + 1);
                    } else if e.r#type != pb::EventType::Snapshot as i32 {
                        next = e.revision + 1;
                    }
                    if e.r#type != pb::EventType::Progress as i32 {
                        print_event(out, &e);
                    }
                }
                Ok(None) => break,
                Err(s) if compacted(&s) => {
                    resync = true;
                    break;
                }
                Err(s)
                    if matches!(
                        s.code(),
                        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
                    ) =>
                {
                    eprintln!(
                        "tokend: stream interrupted ({:?}); resuming from revision {next}",
                        s.code()
                    );
                    resync = next == 0;
                    retry(&mut backoff).await;
                    break;
                }
                Err(s) => return Err(s.into()),
            }
        }
    }
}

fn compacted(s: &Status) -> bool {
    s.code() == Code::OutOfRange
        && s.get_details_error_info()
            .is_some_and(|i| i.reason == "REVISION_COMPACTED")
}

async fn retry(backoff: &mut Duration) {
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
}

fn print_event(out: Output, e: &pb::TokenEvent) {
    let kind = pb::EventType::try_from(e.r#type)
        .map(|t| {
            t.as_str_name()
                .trim_start_matches("EVENT_TYPE_")
                .to_string()
        })
        .unwrap_or_default();
    match out {
        Output::Json => println!(
            "{}",
            json!({"revision": e.revision, "type": kind, "token": e.token.as_ref().map(token_json), "actor": e.actor, "time": e.time.as_ref().map(rfc3339)})
        ),
        Output::Table => {
            let t = e.token.clone().unwrap_or_default();
            println!(
                "{:>8}  {:<9} {:<14} {:<30} {}",
                e.revision, kind, t.id, t.name, e.actor
            );
        }
    }
    let _ = std::io::stdout().flush();
}

fn status_name(v: i32) -> String {
    pb::TokenStatus::try_from(v)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("TOKEN_STATUS_")
                .to_string()
        })
        .unwrap_or_default()
}

fn rfc3339(t: &prost_types::Timestamp) -> String {
    let at = UNIX_EPOCH + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
    humantime::format_rfc3339_seconds(at).to_string()
}

fn audit_json(a: &Option<pb::Audit>) -> Value {
    let entry = |e: &Option<pb::AuditEntry>| {
        e.as_ref()
            .map(|e| json!({"at": e.at.as_ref().map(rfc3339), "by": e.by}))
    };
    match a {
        None => Value::Null,
        Some(a) => json!({
            "created": entry(&a.created), "updated": entry(&a.updated),
            "enabled": entry(&a.enabled), "disabled": entry(&a.disabled), "deleted": entry(&a.deleted),
        }),
    }
}

fn token_json(t: &pb::Token) -> Value {
    json!({
        "id": t.id, "account_id": t.account_id, "name": t.name, "description": t.description,
        "icon": t.icon, "status": status_name(t.status), "modules": t.modules, "etag": t.etag,
        "revision": t.revision, "audit": audit_json(&t.audit),
        "last_access_time": t.last_access_time.as_ref().map(rfc3339),
    })
}

fn account_json(a: &pb::Account) -> Value {
    let kind = pb::AccountType::try_from(a.r#type)
        .map(|t| {
            t.as_str_name()
                .trim_start_matches("ACCOUNT_TYPE_")
                .to_string()
        })
        .unwrap_or_default();
    let status = pb::AccountStatus::try_from(a.status)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("ACCOUNT_STATUS_")
                .to_string()
        })
        .unwrap_or_default();
    json!({
        "id": a.id, "name": a.name, "type": kind, "status": status, "modules": a.modules,
        "etag": a.etag, "revision": a.revision, "audit": audit_json(&a.audit),
    })
}

fn print_tokens(out: Output, tokens: &[pb::Token]) {
    match out {
        Output::Json => println!("{}", Value::Array(tokens.iter().map(token_json).collect())),
        Output::Table => table(
            &["ID", "NAME", "STATUS", "ACCOUNT", "MODULES", "LAST ACCESS"],
            tokens
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        t.name.clone(),
                        status_name(t.status),
                        t.account_id.clone(),
                        t.modules.join(","),
                        t.last_access_time
                            .as_ref()
                            .map(rfc3339)
                            .unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect(),
        ),
    }
}

fn print_accounts(out: Output, accounts: &[pb::Account]) {
    match out {
        Output::Json => println!(
            "{}",
            Value::Array(accounts.iter().map(account_json).collect())
        ),
        Output::Table => table(
            &["ID", "NAME", "TYPE", "STATUS", "MODULES"],
            accounts
                .iter()
                .map(|a| {
                    let j = account_json(a);
                    vec![
                        a.id.clone(),
                        a.name.clone(),
                        j["type"].as_str().unwrap_or_default().to_string(),
                        j["status"].as_str().unwrap_or_default().to_string(),
                        a.modules.join(","),
                    ]
                })
                .collect(),
        ),
    }
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    println!("{}", line(header.iter().map(|h| h.to_string()).collect()));
    for row in rows {
        println!("{}", line(row));
    }
}
