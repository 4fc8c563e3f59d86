//! `tokend serve`'s flags (each with an environment twin) and the server
//! configuration they make.
//!
//! Owns the serve command's arguments, their checks, and their defaults;
//! it must never start anything itself (`server.rs` does).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use clap::builder::BoolishValueParser;

use super::{Cli, Command, count_up_to, positive_count, positive_duration};
use crate::listener::Limits;
use crate::server::{Config, TlsFiles};
use crate::service::AuthzConfig;
use crate::web::WebConfig;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "TOKEND_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Directory of the embedded store (created if missing).
    #[arg(long, env = "TOKEND_DATA_DIR", default_value = "./tokend-data")]
    pub data_dir: PathBuf,
    /// Where records live: `sled` (embedded, in --data-dir; one replica) or
    /// `etcd://host:port[,host:port…][/prefix]` (shared by any number of
    /// replicas; --data-dir then only holds operator.token and replica-id);
    /// `etcds://…` for TLS to the members (with --etcd-ca).
    #[arg(long, env = "TOKEND_STORE", default_value = "sled")]
    pub store: crate::store::Backend,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Events kept for `start_revision` replays; older ones are compacted.
    #[arg(long, env = "TOKEND_RETENTION", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub retention: u64,
    /// Tombstones deleted longer ago than this shrink on disk to id,
    /// account, name, revision, created, and when and by whom deleted, and
    /// are packed with their neighbours (e.g. 30d, 12h; 0s: as soon as the
    /// background pass sees them).
    /// Embedded store only: on etcd, tombstones stay whole in etcd.
    #[arg(long, env = "TOKEND_TOMBSTONE_SHRINK_AFTER", default_value = "30d", value_parser = humantime::parse_duration)]
    pub tombstone_shrink_after: Duration,
    /// Open WatchTokens streams allowed at once.
    #[arg(long, env = "TOKEND_MAX_WATCHERS", default_value_t = 10_000, value_parser = positive_count())]
    pub max_watchers: usize,
    /// Idle watch streams get a PROGRESS event this often (e.g. 15s, 500ms).
    #[arg(long, env = "TOKEND_PROGRESS_INTERVAL", default_value = "15s", value_parser = positive_duration)]
    pub progress_interval: Duration,
    /// Expired tokens are deleted (actor `expiry`) within this long of their
    /// expiry; every verification refuses them from the instant itself.
    #[arg(long, env = "TOKEND_EXPIRY_CHECK", default_value = "1s", value_parser = positive_duration)]
    pub expiry_check: Duration,
    /// Events the live fan-out keeps for watchers that fall briefly behind;
    /// one further behind catches up from the event log. At most 1048576.
    #[arg(long, env = "TOKEND_HUB_CAPACITY", default_value_t = 4096, value_parser = count_up_to(crate::hub::MAX_CAPACITY))]
    pub hub_capacity: usize,
    /// A file holding the operator secret to use, instead of the one tokend
    /// generates into <data-dir>/operator.token on first start. Missing, it
    /// is written when no operator can call (first start, or every operator
    /// token gone: the way back in), and refused otherwise.
    #[arg(long, env = "TOKEND_OPERATOR_TOKEN_FILE")]
    pub operator_token_file: Option<PathBuf>,
    /// PEM certificate chain; with --tls-key, serve TLS instead of plaintext.
    #[arg(long, env = "TOKEND_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "TOKEND_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle; clients must present a certificate it signed (mTLS).
    #[arg(long, env = "TOKEND_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Largest request message accepted, in bytes.
    #[arg(long, env = "TOKEND_MAX_REQUEST_BYTES", default_value_t = 1024 * 1024, value_parser = positive_count())]
    pub max_request_bytes: usize,
    /// Concurrent calls per HTTP/2 connection.
    #[arg(
        long,
        env = "TOKEND_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 1024,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_streams_per_connection: u32,
    /// Deadline for unary calls (e.g. 30s).
    #[arg(long, env = "TOKEND_REQUEST_TIMEOUT", default_value = "30s", value_parser = positive_duration)]
    pub request_timeout: Duration,
    /// Serve Prometheus metrics on http://ADDR/metrics.
    #[arg(long, env = "TOKEND_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Serve the secret-scanning partner endpoint (GitHub's protocol) at
    /// http://ADDR/secret-scanning/github, apart from the API's port.
    #[arg(long, env = "TOKEND_LEAK_REPORT_LISTEN", requires = "leak_report_keys")]
    pub leak_report_listen: Option<SocketAddr>,
    /// The reporters' ECDSA P-256 public keys, in the JSON shape GitHub
    /// publishes them (api.github.com/meta/public_keys/secret_scanning).
    #[arg(long, env = "TOKEND_LEAK_REPORT_KEYS", requires = "leak_report_listen")]
    pub leak_report_keys: Option<PathBuf>,
    /// What a reported live secret's token gets: deleted (final) or disabled.
    #[arg(long, env = "TOKEND_LEAK_ACTION", value_enum, default_value = "delete")]
    pub leak_action: crate::leaks::LeakAction,
    /// How long in-flight calls get to finish on SIGTERM/SIGINT.
    #[arg(long, env = "TOKEND_SHUTDOWN_GRACE", default_value = "3s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// Request header that Envoy's ext_authz Check reads the bearer secret
    /// from (`Bearer <secret>`, or the bare secret).
    #[arg(long, env = "TOKEND_AUTHZ_HEADER", default_value = "authorization", value_parser = header_name)]
    pub authz_header: String,
    /// After an allowed Check, let the credential header through to the
    /// upstream; by default it is removed so that services never see secrets.
    #[arg(long, env = "TOKEND_AUTHZ_KEEP_CREDENTIAL", value_parser = BoolishValueParser::new())]
    pub authz_keep_credential: bool,
    /// An origin (`https://app.example.com`) whose pages may call the API
    /// with gRPC-Web across origins; repeat, or comma-separate in the
    /// variable. None by default: only the console tokend serves may call.
    #[arg(long = "cors-origin", env = "TOKEND_CORS_ORIGINS", value_delimiter = ',', value_parser = origin)]
    pub cors_origins: Vec<http::HeaderValue>,
    /// Do not serve the web console at `/` (gRPC-Web stays on).
    #[arg(long, env = "TOKEND_NO_CONSOLE", value_parser = BoolishValueParser::new())]
    pub no_console: bool,
    /// TCP connections open at once; one more is closed as soon as it is
    /// accepted (counted in tokend_connections_closed_total{reason="cap"}).
    #[arg(long, env = "TOKEND_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// A connection that has not started a call by then (TLS handshake,
    /// HTTP/2 preface and headers included) is closed.
    #[arg(long, env = "TOKEND_FIRST_REQUEST_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub first_request_timeout: Duration,
    /// A connection with no call open for this long is closed (gRPC's
    /// MAX_CONNECTION_IDLE); clients reconnect on their next call.
    #[arg(long, env = "TOKEND_IDLE_TIMEOUT", default_value = "5m", value_parser = positive_duration)]
    pub idle_timeout: Duration,
}

/// A browser origin: `scheme://host[:port]`, nothing after it, as browsers
/// send it in `Origin` (so it can be compared byte for byte).
fn origin(s: &str) -> Result<http::HeaderValue, String> {
    let bad = || format!("{s:?} is not an origin like https://app.example.com[:port]");
    let uri: http::Uri = s.parse().map_err(|_| bad())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let bare = uri
        .path_and_query()
        .is_none_or(|p| p.as_str().is_empty() || p == "/")
        && !s.ends_with('/');
    if !scheme_ok || uri.authority().is_none() || !bare {
        return Err(bad());
    }
    http::HeaderValue::from_str(s).map_err(|_| bad())
}

/// An HTTP header name, lower-cased as Envoy hands headers to ext_authz.
fn header_name(s: &str) -> Result<String, String> {
    http::HeaderName::from_bytes(s.as_bytes())
        .map(|h| h.as_str().to_string())
        .map_err(|_| format!("{s:?} is not an HTTP header name"))
}

/// A secured etcd cluster (README, "Running on a secured etcd"). The
/// password only ever comes from a file: command lines and environments are
/// readable by others on the machine.
#[derive(clap::Args, Debug, Default)]
pub struct EtcdArgs {
    /// PEM CA bundle that signed the etcd members' certificates; needs
    /// `--store etcds://…`.
    #[arg(long, env = "TOKEND_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// PEM client certificate, for clusters with --client-cert-auth.
    #[arg(long, env = "TOKEND_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// PEM private key of --etcd-cert.
    #[arg(long, env = "TOKEND_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user to log in as, on clusters with authentication enabled.
    #[arg(long, env = "TOKEND_ETCD_USER", requires = "etcd_password_file")]
    pub etcd_user: Option<String>,
    /// A file holding --etcd-user's password (one trailing newline ignored).
    #[arg(long, env = "TOKEND_ETCD_PASSWORD_FILE", requires = "etcd_user")]
    pub etcd_password_file: Option<PathBuf>,
}

impl EtcdArgs {
    /// `--store` with these flags, refused when they do not fit it.
    pub fn store(
        &self,
        store: &crate::store::Backend,
    ) -> Result<crate::store::Backend, crate::error::Error> {
        let security = crate::store::EtcdSecurity {
            ca: self.etcd_ca.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
            user: self.etcd_user.clone(),
            password_file: self.etcd_password_file.clone(),
        };
        store
            .clone()
            .secured(security)
            .map_err(|e| crate::error::Error::invalid("store", e))
    }
}

impl ServeArgs {
    /// Every setting as plain `tokend serve` takes it (`TOKEND_*` variables
    /// included): what manifests and examples must agree with.
    pub fn defaults() -> ServeArgs {
        match Cli::try_parse_from(["tokend", "serve"]).map(|c| c.command) {
            Ok(Command::Serve(args)) => args,
            other => panic!("`tokend serve` does not parse: {:?}", other.err()),
        }
    }

    /// The server's configuration; refused when flags contradict each other
    /// (an `--etcd-*` flag that does not fit `--store`).
    pub fn config(&self) -> Result<Config, crate::error::Error> {
        let store = self.etcd.store(&self.store)?;
        Ok(self.config_on(store))
    }

    fn config_on(&self, store: crate::store::Backend) -> Config {
        Config {
            store,
            retention: self.retention,
            tombstone_shrink_after: self.tombstone_shrink_after,
            max_watchers: self.max_watchers,
            progress_interval: self.progress_interval,
            expiry_check: self.expiry_check,
            leak_action: self.leak_action,
            leak_report: match (&self.leak_report_listen, &self.leak_report_keys) {
                (Some(listen), Some(keys)) => Some(crate::server::LeakReport {
                    listen: *listen,
                    keys: keys.clone(),
                }),
                _ => None,
            },
            shutdown_grace: self.shutdown_grace,
            hub_capacity: self.hub_capacity,
            operator_token_file: self.operator_token_file.clone(),
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: self.tls_client_ca.clone(),
                }),
                _ => None,
            },
            max_request_bytes: self.max_request_bytes,
            max_streams_per_connection: self.max_streams_per_connection,
            request_timeout: self.request_timeout,
            metrics_addr: self.metrics_addr,
            authz: AuthzConfig {
                header: self.authz_header.clone(),
                strip_credential: !self.authz_keep_credential,
            },
            web: WebConfig {
                allowed_origins: self.cors_origins.clone(),
                console: !self.no_console,
            },
            limits: Limits {
                max_connections: self.max_connections as usize,
                first_request_timeout: self.first_request_timeout,
                idle_timeout: self.idle_timeout,
            },
            ..Config::new(self.listen, self.data_dir.clone())
        }
    }
}
