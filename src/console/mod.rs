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

/// `println!` for the console's answers. A reader that went away (`tokend
/// tokens list -o json | head`) ends the command quietly, with success, as
/// it ends `cat`, where `println!` would panic; any other failure to write
/// fails the command.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::console::said(::std::io::Write::write_fmt(
            &mut ::std::io::stdout().lock(),
            format_args!("{}\n", format_args!($($arg)*)),
        ))
    };
}

mod accounts;
mod delete;
mod output;
mod snapshot;
mod tokens;
mod watch;

use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use crate::cli::{AccountsCommand, ClientArgs, TokensCommand};
use crate::client::{Bearer, TokenClient};
use crate::dial::{self, Holds, Peer};
use crate::proto::{
    account_service_client::AccountServiceClient, token_service_client::TokenServiceClient,
};

/// Where [`say!`] ends the command: at once, when stdout is gone.
pub(crate) fn said(written: std::io::Result<()>) {
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(exit::OK),
        Err(e) => {
            eprintln!("tokend: cannot write the answer: {e}");
            std::process::exit(exit::FAILED)
        }
    }
}

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
    /// A call the server did not answer: what that means depends on how it
    /// was called (TLS or not, a client certificate or not, the deadline),
    /// which [`finish`] knows.
    unanswered: Option<Unanswered>,
}

enum Unanswered {
    /// The server closed the connection without an answer.
    Closed(Status),
    /// No answer within `--timeout`.
    TimedOut,
}

impl From<Status> for Failure {
    fn from(s: Status) -> Failure {
        // The client's own deadline (`--timeout`) reads as a cancelled
        // call too; its source says which.
        let timed_out = std::iter::successors(std::error::Error::source(&s), |e| e.source())
            .any(|e| e.is::<tonic::TimeoutExpired>());
        if timed_out {
            return Failure {
                code: exit::UNAVAILABLE,
                message: "no answer within --timeout".into(),
                unanswered: Some(Unanswered::TimedOut),
            };
        }
        // A server that refuses the connection closes it: a TLS port, a
        // plaintext call; a TLS server, a client certificate it does not
        // take. The client reads that as a broken protocol, a transport
        // error or its call cancelled, depending on when the close
        // arrives; what these share is that the status is the client's own
        // (it has a source), not an answer from a server.
        let closed = std::error::Error::source(&s).is_some()
            && matches!(s.code(), Code::Internal | Code::Unknown | Code::Cancelled);
        if closed {
            return Failure {
                code: exit::UNAVAILABLE,
                message: dial::chain(s.message().to_string(), std::error::Error::source(&s)),
                unanswered: Some(Unanswered::Closed(s)),
            };
        }
        let code = match s.code() {
            Code::NotFound => exit::NOT_FOUND,
            Code::Aborted | Code::FailedPrecondition | Code::AlreadyExists => exit::CONFLICT,
            Code::Unauthenticated | Code::PermissionDenied => exit::DENIED,
            Code::Unavailable | Code::DeadlineExceeded => exit::UNAVAILABLE,
            Code::InvalidArgument | Code::OutOfRange => exit::USAGE,
            _ => exit::FAILED,
        };
        fail(code, format!("{:?}: {}", s.code(), s.message()))
    }
}

/// The server `args` call, in the words [`dial`]'s diagnosis uses.
fn peer(args: &ClientArgs) -> Peer<'_> {
    Peer {
        name: "the server",
        certificate: "the server's certificate",
        address_flag: "--server",
        tls: is_https(args),
        ca_flag: "--ca-file",
        ca_file: args.ca_file.as_deref(),
        cert_flags: ("--client-cert", "--client-key"),
        identity: args.client_cert.as_deref().zip(args.client_key.as_deref()),
        trusts: "its --tls-client-ca",
        not_tls: "the server does not speak TLS: is it plaintext (http://)?",
        plaintext_to_tls: "the server dropped the connection at once, as one serving TLS \
                           (--tls-cert) does with a plaintext client: call it as https://…",
    }
}

fn is_https(args: &ClientArgs) -> bool {
    // `server_url` wrote the scheme in lower case.
    args.server.starts_with("https://")
}

fn fail(code: i32, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
        unanswered: None,
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

/// `endpoint` with the TLS an `https://` server is called with: the
/// system's CA roots, or `--ca-file`'s; a client certificate when one is
/// given. A TLS file named for a plaintext `http://` server is refused
/// rather than ignored: the caller meant TLS and would otherwise send the
/// bearer in the clear. Each file's fault is said with its flag.
fn with_tls(args: &ClientArgs, endpoint: Endpoint) -> Result<Endpoint, Failure> {
    let usage = |why: String| fail(exit::USAGE, why);
    if !is_https(args) {
        let named = [
            ("--ca-file (TOKEND_CA_FILE)", &args.ca_file),
            ("--client-cert (TOKEND_CLIENT_CERT)", &args.client_cert),
            ("--client-key (TOKEND_CLIENT_KEY)", &args.client_key),
        ]
        .into_iter()
        .find(|(_, path)| path.is_some());
        return match named {
            Some((flag, _)) => Err(usage(format!(
                "{flag} applies to an https:// server; {} is plaintext",
                args.server
            ))),
            None => Ok(endpoint),
        };
    }
    let read = |flag: &str, path: &std::path::Path, holds| {
        dial::pem(path, holds).map_err(|why| usage(format!("{flag}: {why}")))
    };
    // The handshake's own deadline (the connect timeout ends at TCP's): a
    // port that accepts and never answers is given what a call is given.
    let mut tls = ClientTlsConfig::new().timeout(args.timeout);
    tls = match &args.ca_file {
        Some(path) => tls.ca_certificate(Certificate::from_pem(read(
            "--ca-file",
            path,
            Holds::Certificate,
        )?)),
        None => tls.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
        tls = tls.identity(Identity::from_pem(
            read("--client-cert", cert, Holds::Certificate)?,
            read("--client-key", key, Holds::PrivateKey)?,
        ));
    }
    endpoint.tls_config(tls).map_err(|e| {
        // A certificate rustls will not use is said with its flag; what is
        // left (the files were checked) is the system's roots.
        let why = dial::cause(&peer(args), &e).unwrap_or_else(|| {
            let said = dial::chain(e.to_string(), std::error::Error::source(&e));
            match args.ca_file {
                None => format!(
                    "{said} (without --ca-file, the system's CA roots: has this machine any?)"
                ),
                Some(_) => said,
            }
        });
        usage(format!("TLS to {}: {why}", args.server))
    })
}

/// How long a TCP connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The secret a command calls with: `--token`, `--token-file`, or for a
/// server on this machine the local operator's; none otherwise.
fn credential(args: &ClientArgs) -> Result<Option<String>, Failure> {
    Ok(match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.trim().to_string()),
        (None, Some(path)) => {
            let secret = std::fs::read_to_string(path)
                .map_err(|e| fail(exit::USAGE, format!("cannot read {}: {e}", path.display())))?;
            if secret.trim().is_empty() {
                return Err(fail(exit::USAGE, format!("{} is empty", path.display())));
            }
            Some(secret.trim().to_string())
        }
        // The local operator credential goes only to a local server,
        // never to whatever host --server happens to name.
        (None, None) if is_loopback(&args.server) => std::fs::read_to_string(LOCAL_OPERATOR_TOKEN)
            .ok()
            .map(|s| s.trim().to_string()),
        (None, None) => None,
    })
}

/// Where to connect and as whom.
struct Conn {
    channel: Channel,
    bearer: Bearer,
}

impl Conn {
    async fn open(args: &ClientArgs) -> Result<Conn, Failure> {
        let secret = credential(args)?;
        let bearer = match secret {
            None => Bearer::none(),
            Some(s) => Bearer::new(&s)
                .ok_or_else(|| fail(exit::USAGE, "the token is not printable ASCII"))?,
        };
        let endpoint = Channel::from_shared(args.server.clone())
            .map_err(|e| fail(exit::USAGE, format!("bad --server {}: {e}", args.server)))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(args.timeout);
        let endpoint = with_tls(args, endpoint)?;
        let channel = endpoint.connect().await.map_err(|e| {
            // tonic's words for its handshake deadline (the error's type is
            // its own): said as a call without an answer is.
            let said = dial::chain(e.to_string(), std::error::Error::source(&e));
            if said.contains("TLS handshake timeout") {
                return Failure {
                    code: exit::UNAVAILABLE,
                    message: said,
                    unanswered: Some(Unanswered::TimedOut),
                };
            }
            let why = dial::cause(&peer(args), &e).unwrap_or(said);
            fail(
                exit::UNAVAILABLE,
                format!("cannot reach {}: {why}", args.server),
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
    finish(Some(&args), accounts::run(&args, cmd).await)
}

pub async fn run_tokens(args: ClientArgs, cmd: TokensCommand) -> i32 {
    finish(Some(&args), tokens::run(&args, cmd).await)
}

pub async fn run_snapshot(cmd: crate::cli::SnapshotCommand) -> i32 {
    let client = match &cmd {
        crate::cli::SnapshotCommand::Save { client, .. } => Some(client.clone()),
        crate::cli::SnapshotCommand::Restore { .. } => None,
    };
    finish(client.as_ref(), snapshot::run(cmd).await)
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
    finish(
        None,
        result.map(|c| {
            say!(
                "compacted {}: {} records, {} → {} bytes on disk in {:.2?}",
                data_dir.display(),
                c.records,
                c.bytes_before,
                c.bytes_after,
                c.took
            );
        }),
    )
}

/// Whether the `http://` server named answers in HTTP/1 ([`dial::answers_http1`]).
fn answers_http1(server: &str) -> bool {
    server
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| Some(format!("{}:{}", u.host()?, u.port_u16().unwrap_or(80))))
        .is_some_and(|authority| dial::answers_http1(&authority))
}

/// Prints why a command failed, if it did; its exit code. `client`: how
/// the server was called, which says what a connection closed without an
/// answer means.
fn finish(client: Option<&ClientArgs>, result: Result<(), Failure>) -> i32 {
    match result {
        Ok(()) => exit::OK,
        Err(f) => {
            let message = match (&f.unanswered, client) {
                (Some(Unanswered::TimedOut), Some(args)) => format!(
                    "{} accepted the connection but did not answer within {} (--timeout, \
                     TOKEND_TIMEOUT): is it a tokend server, and not overloaded?",
                    args.server,
                    humantime::format_duration(args.timeout)
                ),
                (Some(Unanswered::Closed(status)), Some(args)) => {
                    let peer = peer(args);
                    // A plaintext call closed at once reads the same from a
                    // TLS server as from a web server: the web server says
                    // so when asked.
                    if !peer.tls && answers_http1(&args.server) {
                        format!(
                            "{} answers in HTTP/1, not gRPC: is it another service's port? \
                             (to a gRPC call, it closed the connection: {})",
                            args.server, f.message
                        )
                    } else {
                        let cause =
                            dial::cause(&peer, status).unwrap_or_else(|| dial::closed(&peer));
                        format!(
                            "{cause} (the server closed the connection without an answer: {})",
                            f.message
                        )
                    }
                }
                // Refused for sending no credential at all: say where one
                // comes from.
                _ if f.code == exit::DENIED
                    && client.is_some_and(|args| matches!(credential(args), Ok(None))) =>
                {
                    format!(
                        "{} (this call sent no credential: give --token-file or TOKEND_TOKEN_FILE; \
                         a server on this machine gets {LOCAL_OPERATOR_TOKEN} when there is one)",
                        f.message
                    )
                }
                _ => f.message,
            };
            eprintln!("tokend: {message}");
            f.code
        }
    }
}
