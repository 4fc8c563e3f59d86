//! Command line: `tokend serve` and the client subcommands (`accounts`,
//! `tokens`), every flag with an environment twin.
//!
//! Owns argument parsing, logging set-up and the signals that stop the
//! process only; it must never reach into the store or services directly
//! (`console` runs the client subcommands).
//! `serve`'s own flags, and the server configuration they make, are in
//! `cli/serve.rs`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

mod serve;
pub use self::serve::{EtcdArgs, ServeArgs};

#[derive(Parser, Debug)]
#[command(
    name = "tokend",
    version,
    about = "API tokens: issue, verify, delete, and watch every change"
)]
pub struct Cli {
    /// Log format.
    #[arg(long, env = "TOKEND_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Export OpenTelemetry traces to this OTLP/gRPC collector over
    /// plaintext (e.g. http://localhost:4317); off when unset. Else
    /// OTEL_EXPORTER_OTLP_ENDPOINT, ignored with a warning when tokend
    /// cannot use it. OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER[_ARG] and
    /// OTEL_BSP_* apply as usual.
    #[arg(long, global = true)]
    pub otlp_endpoint: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

// `Serve` is by far the largest: one value, parsed once at start, so a box
// would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gRPC server.
    Serve(ServeArgs),
    /// Manage accounts (operators only).
    Accounts {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: AccountsCommand,
    },
    /// Manage, verify and watch API tokens.
    Tokens {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Back up a running server's store to a file, or restore such a file
    /// into a new data dir.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Give a stopped server's disk space back: rewrite its sled store
    /// densely (sled reuses freed space but never shrinks its file). Safe
    /// to interrupt; refused while a server uses the data dir.
    Compact {
        #[arg(long, env = "TOKEND_DATA_DIR")]
        data_dir: PathBuf,
    },
}

/// `tokend snapshot …` (format: src/store/snapshot.rs).
#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Save the server's whole store, at one revision, to FILE (written
    /// atomically, mode 0600: it holds secret hashes). Operators only.
    Save {
        #[command(flatten)]
        client: ClientArgs,
        file: PathBuf,
    },
    /// Restore FILE into a new, empty data dir or etcd prefix; then
    /// `tokend serve` on it.
    Restore {
        file: PathBuf,
        /// With `--store sled`: the data dir to create; missing or empty,
        /// never one in use.
        #[arg(long, env = "TOKEND_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Where to restore: `sled` (into --data-dir), or
        /// `etcd://host:port[,…][/prefix]` / `etcds://…`, whose prefix must
        /// hold no key.
        #[arg(long, env = "TOKEND_STORE", default_value = "sled")]
        store: crate::store::Backend,
        #[command(flatten)]
        etcd: Box<EtcdArgs>,
    },
}

/// How a client subcommand reaches a server.
#[derive(clap::Args, Clone)]
pub struct ClientArgs {
    /// The tokend server: http://host:port, or https://host:port for one
    /// serving TLS (see --ca-file).
    #[arg(
        long,
        env = "TOKEND_SERVER",
        default_value = "http://127.0.0.1:50051",
        value_parser = server_url,
        global = true
    )]
    pub server: String,
    /// The bearer secret to call with (prefer --token-file or the env var:
    /// command lines are visible to other users).
    #[arg(long, env = "TOKEND_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// A file holding the bearer secret. Without this or --token, a server
    /// on this machine is called with ./tokend-data/operator.token (when
    /// there is one), and any other server with no credential: the local
    /// operator's secret never goes to another host unasked.
    #[arg(long, env = "TOKEND_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// With an https:// server: the CA certificate(s), PEM, that signed
    /// its certificate (a private CA), trusted instead of the system's
    /// roots. The TLS flags are refused with an http:// server.
    #[arg(long, env = "TOKEND_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// With an https:// server that asks for client certificates (`serve
    /// --tls-client-ca`): this client's certificate chain, PEM.
    #[arg(
        long,
        env = "TOKEND_CLIENT_CERT",
        requires = "client_key",
        global = true
    )]
    pub client_cert: Option<PathBuf>,
    /// The private key of --client-cert, PEM.
    #[arg(
        long,
        env = "TOKEND_CLIENT_KEY",
        requires = "client_cert",
        global = true
    )]
    pub client_key: Option<PathBuf>,
    /// How long a call waits for the server to answer (for `tokens watch`
    /// and `snapshot save`, to start answering: they then run as long as
    /// they need). A server that accepts the connection and never answers
    /// would otherwise hang the command, and a script with it.
    #[arg(
        long,
        env = "TOKEND_TIMEOUT",
        default_value = "30s",
        value_parser = positive_duration,
        global = true
    )]
    pub timeout: Duration,
    /// Human tables, or JSON for scripts.
    #[arg(long, short, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
}

/// Never shows the token.
impl std::fmt::Debug for ClientArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientArgs")
            .field("server", &self.server)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("timeout", &self.timeout)
            .field("output", &self.output)
            .finish()
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum AccountsCommand {
    /// Create an account.
    Create {
        /// Its name, as the console and lists show it.
        #[arg(long)]
        name: String,
        /// What it is, fixed at creation: a client or vendor of the
        /// platform, or operations (its tokens with the module
        /// platform-account-management are operators).
        #[arg(long = "type", value_enum)]
        kind: AccountTypeArg,
        /// A module the account has (repeat for more).
        #[arg(long)]
        module: Vec<String>,
        /// The longest its tokens may live, in whole seconds or more (e.g.
        /// 90d); tokens created without an expiry get this one.
        #[arg(long, value_parser = positive_duration)]
        max_token_lifetime: Option<Duration>,
    },
    /// Show one account.
    Get { id: String },
    /// Every account (all pages).
    List {
        /// AIP-160 filter, e.g. 'type = VENDOR'.
        #[arg(long, default_value = "")]
        filter: String,
    },
    /// Change name, status, modules or the tokens' lifetime limit.
    Update {
        id: String,
        /// The new name.
        #[arg(long)]
        name: Option<String>,
        /// Disabled: its tokens stop verifying, and it gets no new ones.
        #[arg(long, value_enum)]
        status: Option<AccountStatusArg>,
        /// The account's modules, replacing the current ones (repeat for more).
        #[arg(long)]
        module: Vec<String>,
        /// The longest its tokens may live from now on (e.g. 90d).
        #[arg(long, value_parser = positive_duration, conflicts_with = "no_max_token_lifetime")]
        max_token_lifetime: Option<Duration>,
        /// Lift the limit on its tokens' lifetime.
        #[arg(long)]
        no_max_token_lifetime: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokensCommand {
    /// Create a token; its secret is shown once.
    Create {
        /// The account it belongs to (ACC-NNNN-NNNN).
        #[arg(long)]
        account: String,
        /// Its name: letters, digits, spaces and - . ' " (at most 200).
        #[arg(long)]
        name: String,
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
        /// An http(s) URL of its logo.
        #[arg(long, default_value = "")]
        icon: String,
        /// A module the token gets (repeat for more).
        #[arg(long)]
        module: Vec<String>,
        /// Expire this long after creation (e.g. 30d, 12h).
        #[arg(long, value_parser = positive_duration, conflicts_with = "expires_at")]
        expires_in: Option<Duration>,
        /// Expire at this RFC 3339 instant (e.g. 2027-01-31T00:00:00Z).
        #[arg(long, value_parser = instant)]
        expires_at: Option<prost_types::Timestamp>,
    },
    /// Show one token.
    Get {
        id: String,
        /// Show it even if deleted (operators only).
        #[arg(long)]
        show_deleted: bool,
    },
    /// Every token you may see (all pages).
    List {
        /// Only this account's (ACC-NNNN-NNNN).
        #[arg(long)]
        account: Option<String>,
        /// AIP-160 filter, e.g. 'status = ACTIVE AND modules:billing' or
        /// 'name = "ci deploy"'.
        #[arg(long, default_value = "")]
        filter: String,
        /// Deleted tokens too (operators only).
        #[arg(long)]
        show_deleted: bool,
    },
    /// Change a token's name, description, logo, modules or expiry.
    Update {
        id: String,
        /// The new name.
        #[arg(long)]
        name: Option<String>,
        /// The new description.
        #[arg(long)]
        description: Option<String>,
        /// The new logo URL (empty for none).
        #[arg(long)]
        icon: Option<String>,
        /// The token's modules, replacing the current ones (repeat for more).
        #[arg(long)]
        module: Vec<String>,
        /// Expire at this RFC 3339 instant instead.
        #[arg(long, value_parser = instant, conflicts_with = "no_expiry")]
        expires_at: Option<prost_types::Timestamp>,
        /// Never expire (refused where the account limits token lifetimes).
        #[arg(long)]
        no_expiry: bool,
    },
    /// Let a disabled token's secret verify again.
    Enable { id: String },
    /// Stop a token's secret verifying, until enabled again.
    Disable { id: String },
    /// Delete a token for good, after showing it and asking.
    Delete {
        id: String,
        /// Do not ask (required when stdin is not a terminal).
        #[arg(long, short)]
        yes: bool,
    },
    /// Replace a token: a successor with a new secret (shown once), and the
    /// old secret working for --grace more, or deleted at once with 0.
    Roll {
        id: String,
        /// How long the old secret keeps working (e.g. 1h, 2d; at most 7d).
        /// 0 deletes the old token in the same commit.
        #[arg(long, value_parser = humantime::parse_duration)]
        grace: Duration,
        /// The successor expires this long after the roll (default: the old
        /// token's lifetime again).
        #[arg(long, value_parser = positive_duration, conflicts_with = "expires_at")]
        expires_in: Option<Duration>,
        /// The successor expires at this RFC 3339 instant.
        #[arg(long, value_parser = instant)]
        expires_at: Option<prost_types::Timestamp>,
    },
    /// A token's audit trail: its changes, newest first, as far back as the
    /// server keeps history.
    History { id: String },
    /// Check a secret (from the argument, or stdin with `-`).
    Verify { secret: Option<String> },
    /// Print changes live; resumes after a dropped connection.
    Watch {
        /// Only this account's tokens (ACC-NNNN-NNNN).
        #[arg(long)]
        account: Option<String>,
        /// Start at this revision (replaying history) instead of now.
        #[arg(long)]
        from: Option<i64>,
        /// Only these change types (repeat for more).
        #[arg(long = "type", value_enum)]
        r#type: Vec<EventTypeArg>,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum AccountTypeArg {
    Client,
    Vendor,
    Operations,
}

impl AccountTypeArg {
    pub fn proto(self) -> crate::proto::AccountType {
        match self {
            Self::Client => crate::proto::AccountType::Client,
            Self::Vendor => crate::proto::AccountType::Vendor,
            Self::Operations => crate::proto::AccountType::Operations,
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum AccountStatusArg {
    Active,
    Disabled,
}

impl AccountStatusArg {
    pub fn proto(self) -> crate::proto::AccountStatus {
        match self {
            Self::Active => crate::proto::AccountStatus::Active,
            Self::Disabled => crate::proto::AccountStatus::Disabled,
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum EventTypeArg {
    Created,
    Updated,
    Enabled,
    Disabled,
    Deleted,
}

impl EventTypeArg {
    pub fn proto(self) -> crate::proto::EventType {
        match self {
            Self::Created => crate::proto::EventType::Created,
            Self::Updated => crate::proto::EventType::Updated,
            Self::Enabled => crate::proto::EventType::Enabled,
            Self::Disabled => crate::proto::EventType::Disabled,
            Self::Deleted => crate::proto::EventType::Deleted,
        }
    }
}

/// A duration above zero: a zero deadline would close every connection at
/// once or fail every call, and a zero interval would wake a stream (or its
/// connection) without end.
fn positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be above zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// A server's URL: `http://` (plaintext) or `https://` (TLS) and a host,
/// checked before any connection is tried (a bare `host:port` would
/// otherwise fail as an unreachable server).
/// The scheme comes back in lower case, which the rest reads.
fn server_url(s: &str) -> Result<String, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("not a URL ({e})"))?;
    let scheme = uri.scheme_str().map(str::to_ascii_lowercase);
    match (scheme.as_deref(), uri.host()) {
        (Some(scheme @ ("http" | "https")), Some(h)) if !h.is_empty() => {
            Ok(format!("{scheme}{}", &s[scheme.len()..]))
        }
        _ => Err(
            "must be a URL such as http://127.0.0.1:50051 or https://tokend.example:50051".into(),
        ),
    }
}

/// A count above zero: a zero cap or size would refuse every call, watch
/// or request it bounds.
fn positive_count() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

/// A count from one to `max`.
fn count_up_to(max: usize) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..=max as u64)
}

/// An RFC 3339 instant, e.g. 2027-01-31T00:00:00Z.
fn instant(s: &str) -> Result<prost_types::Timestamp, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not an RFC 3339 instant such as 2027-01-31T00:00:00Z"))
}

/// Installs SIGINT and SIGTERM handlers now; the future resolves with the
/// name of the first of them to arrive, and the exit code a process the
/// signal ended would have in a shell (128 + its number). `tokend serve`
/// stops on it; `snapshot save` cleans up and exits with that code.
pub fn stop_signal() -> std::io::Result<impl Future<Output = (&'static str, i32)>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => ("SIGINT", 128 + libc::SIGINT),
            _ = term.recv() => ("SIGTERM", 128 + libc::SIGTERM),
        }
    })
}
