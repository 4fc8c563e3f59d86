//! The client subcommands of `tokend`, for people at a terminal and for
//! scripts: `tokend accounts …` and `tokend tokens …` over gRPC.
//!
//! This file owns what every command shares: the connection and the
//! credential it sends, the dispatch to one module per command, and the exit
//! codes scripts can trust. [`output`] renders (tables or `--output json`),
//! [`accounts`] and [`tokens`] run the plain calls, [`delete`] is the
//! platform's delete dialog, [`watch`] the live event printer.
//!
//! The console talks to a server only through the generated client, like
//! any other client would. It must never print a secret except the one
//! `tokens create` shows once, and never send the local operator credential
//! to a server that is not on this machine.

mod accounts;
mod delete;
mod output;
mod snapshot;
mod tokens;
mod watch;

use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Status};

use crate::cli::{AccountsCommand, ClientArgs, TokensCommand};
use crate::client::{Bearer, TokenClient};
use crate::proto::{
    account_service_client::AccountServiceClient, token_service_client::TokenServiceClient,
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
        // What a TLS port answers a plaintext HTTP/2 client: it closes the
        // connection. The client reads that as a broken protocol, a
        // transport error or its call cancelled, depending on when the
        // close arrives; what these share is that the status is the
        // client's own (it has a source), not an answer from a server.
        let closed = std::error::Error::source(&s).is_some()
            && matches!(s.code(), Code::Internal | Code::Unknown | Code::Cancelled);
        if closed {
            let why = chain(s.message().to_string(), std::error::Error::source(&s));
            // A TLS server that refuses this client says why in an alert
            // (TLS 1.3 sends it after the handshake, on the first call).
            let hint = match tls_alert(&why) {
                Some("CertificateRequired") => {
                    "the server asks for a client certificate: give --client-cert and --client-key"
                }
                Some(
                    "BadCertificate" | "UnknownCA" | "CertificateExpired" | "CertificateUnknown"
                    | "DecryptError",
                ) => "the server does not accept --client-cert",
                Some(_) => "the server refused the TLS connection",
                // The alert is often lost (the call's write meets the closed
                // socket first): both usual causes are said.
                None => {
                    "a TLS server (--tls-cert) closes a call made as http://, and one made without a client certificate it accepts (--client-cert, --client-key) when it asks for one"
                }
            };
            return fail(
                exit::UNAVAILABLE,
                format!("the server closed the connection without an answer ({why}): {hint}"),
            );
        }
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

/// An error and its sources, joined: tonic's own words are only "transport
/// error", the cause (refused, no such host, a TLS alert) is in its
/// sources.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    chain(e.to_string(), e.source())
}

/// `first`, then each source's words; hyper's repeat their own words: each
/// is said once.
fn chain(first: String, mut source: Option<&(dyn std::error::Error + 'static)>) -> String {
    let mut why = vec![first];
    while let Some(s) = source {
        let said = s.to_string();
        if why.last() != Some(&said) {
            why.push(said);
        }
        source = s.source();
    }
    why.join(": ")
}

/// The TLS alert a server closed the connection with, if it did, by name
/// (`CertificateRequired`). Only its words survive: h2 keeps a connection's
/// I/O error as a kind and a message, so rustls's typed error is gone by
/// the time the call fails.
fn tls_alert(why: &str) -> Option<&str> {
    let (_, after) = why.split_once("received fatal alert: ")?;
    Some(
        after
            .split(|c: char| !c.is_ascii_alphanumeric())
            .next()
            .unwrap_or(""),
    )
}

fn fail(code: i32, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

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

/// The TLS an `https://` server is called with: the system's CA roots, or
/// `--ca-file`'s; a client certificate when one is given. A TLS file named
/// for a plaintext `http://` server is refused rather than ignored: the
/// caller meant TLS and would otherwise send the bearer in the clear.
fn tls_config(args: &ClientArgs) -> Result<Option<ClientTlsConfig>, Failure> {
    let https = args.server.starts_with("https://");
    if !https {
        let named = [
            ("--ca-file", &args.ca_file),
            ("--client-cert", &args.client_cert),
        ]
        .into_iter()
        .find(|(_, path)| path.is_some());
        return match named {
            Some((flag, _)) => Err(fail(
                exit::USAGE,
                format!(
                    "{flag} applies to an https:// server; {} is plaintext",
                    args.server
                ),
            )),
            None => Ok(None),
        };
    }
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| fail(exit::USAGE, format!("cannot read {}: {e}", path.display())))
    };
    let mut tls = ClientTlsConfig::new();
    tls = match &args.ca_file {
        Some(path) => tls.ca_certificate(Certificate::from_pem(read(path)?)),
        None => tls.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(tls))
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
        let endpoint = Channel::from_shared(args.server.clone())
            .map_err(|e| fail(exit::USAGE, format!("bad --server {}: {e}", args.server)))?
            .connect_timeout(Duration::from_secs(5));
        let endpoint = match tls_config(args)? {
            Some(tls) => endpoint
                .tls_config(tls)
                .map_err(|e| fail(exit::USAGE, format!("TLS to {}: {e}", args.server)))?,
            None => endpoint,
        };
        let channel = endpoint.connect().await.map_err(|e| {
            fail(
                exit::UNAVAILABLE,
                format!("cannot reach {}: {}", args.server, causes(&e)),
            )
        })?;
        Ok(Conn { channel, bearer })
    }

    fn tokens(&self) -> TokenClient {
        TokenServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    fn accounts(&self) -> Accounts {
        AccountServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
}

/// Every page of a listing: `page` fetches the page a page token names and
/// answers its items and the next page's token (empty after the last).
async fn all_pages<T>(
    mut page: impl AsyncFnMut(String) -> Result<(Vec<T>, String), Status>,
) -> Result<Vec<T>, Status> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let (items, next) = page(page_token).await?;
        all.extend(items);
        if next.is_empty() {
            return Ok(all);
        }
        page_token = next;
    }
}

/// Runs a client subcommand; returns the process exit code.
pub async fn run_accounts(args: ClientArgs, cmd: AccountsCommand) -> i32 {
    finish(accounts::run(&args, cmd).await)
}

pub async fn run_tokens(args: ClientArgs, cmd: TokensCommand) -> i32 {
    finish(tokens::run(&args, cmd).await)
}

pub async fn run_snapshot(cmd: crate::cli::SnapshotCommand) -> i32 {
    finish(snapshot::run(cmd).await)
}

/// `tokend compact --data-dir DIR`: a stopped server's sled store rewritten
/// densely (`crate::store::SledStore::compact`).
pub async fn run_compact(data_dir: std::path::PathBuf) -> i32 {
    let dir = data_dir.clone();
    let compacted = tokio::task::spawn_blocking(move || crate::store::SledStore::compact(&dir))
        .await
        .unwrap_or_else(|e| Err(crate::error::Error::Internal(format!("compacting: {e}"))));
    let result = compacted.map_err(|e| {
        let code = match e {
            crate::error::Error::InvalidArgument { .. } => exit::USAGE,
            _ => exit::FAILED,
        };
        fail(code, e.to_string())
    });
    finish(result.map(|c| {
        println!(
            "compacted {}: {} records, {} → {} bytes on disk in {:.2?}",
            data_dir.display(),
            c.records,
            c.bytes_before,
            c.bytes_after,
            c.took
        );
    }))
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
