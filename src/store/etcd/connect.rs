//! Reaching the cluster: the etcd client's options from [`Endpoints`] (TLS
//! files, the password file), and one line naming why a cluster refused
//! this replica at start-up.
//!
//! Owns reading the credential files and the etcd side of a refusal (its
//! authentication's words); what a refused connection's nested errors say
//! is [`crate::dial`]'s, told here which flags are etcd's. It must never put
//! the password in an error, a log line or Debug output: it is handed
//! straight to the client's options and dropped.

use std::path::Path;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use tonic::Code;

use super::retry::{Failed, RETRY_FOR, tried};
use crate::dial::{self, Holds, Peer};
use crate::error::{Error, reason};
use crate::store::Endpoints;

/// How long one member gets to accept a connection (TCP and TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings on each member's connection, and how long an answer may
/// take: a member that hangs keeps its connection open, and the client
/// keeps sending it calls (each bounded, `etcd/mod.rs`'s `ATTEMPT`) until
/// the ping gives it up. Not more often than etcd's
/// `--grpc-keepalive-min-time` (5 s by default), past which it closes the
/// connection as abusive.
pub(super) const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(6);
pub(super) const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Connects to the cluster's members at `urls` (those that answered,
/// `members.rs`) and logs in as `--etcd-user`, if given. Fails with one
/// line naming the cause: an unreadable file, a TLS handshake refused
/// either way, a wrong password.
pub(super) async fn connect(endpoints: &Endpoints, urls: Vec<String>) -> Result<Client, Error> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_keep_alive(KEEP_ALIVE_EVERY, KEEP_ALIVE_TIMEOUT);
    if let Some(tls) = tls(endpoints)? {
        options = options.with_tls(tls);
    }
    let security = &endpoints.security;
    if let (Some(user), Some(file)) = (&security.user, &security.password_file) {
        if !endpoints.tls {
            tracing::warn!(user = %user, "etcd: logging in over plaintext (etcd://): the password crosses the network readable");
        }
        // etcd hands out tokens that expire (5 min by default): log in again
        // when one has, instead of failing every call after it.
        options = options
            .with_user(user.clone(), password(file)?)
            .with_auto_token_refresh(true);
    }
    // Logging in is a call: tried again while unanswered (a member that
    // hangs); a refusal, such as a wrong password, ends it at once.
    tried(
        &options,
        |_| false,
        |options| Client::connect(urls.clone(), Some(options)),
    )
    .await
    .map_err(|f| refused(endpoints, "", &f))
}

/// The TLS to reach the members with (`None`: plaintext): the CA to trust
/// them by and the certificate to show them, from their files.
pub(super) fn tls(endpoints: &Endpoints) -> Result<Option<TlsOptions>, Error> {
    if !endpoints.tls {
        return Ok(None);
    }
    let security = &endpoints.security;
    let mut tls = TlsOptions::new();
    if let Some(ca) = &security.ca {
        tls = tls.ca_certificate(Certificate::from_pem(pem(
            "etcd-ca",
            ca,
            Holds::Certificate,
        )?));
    }
    if let (Some(cert), Some(key)) = (&security.cert, &security.key) {
        tls = tls.identity(Identity::from_pem(
            pem("etcd-cert", cert, Holds::Certificate)?,
            pem("etcd-key", key, Holds::PrivateKey)?,
        ));
    }
    Ok(Some(tls))
}

/// A PEM file's bytes, or which flag names a file that is not one.
fn pem(flag: &'static str, path: &Path, holds: Holds) -> Result<Vec<u8>, Error> {
    dial::pem(path, holds).map_err(|why| Error::invalid(flag, why))
}

/// The password in `path`, without one trailing newline (`echo pw > file`).
fn password(path: &Path) -> Result<String, Error> {
    let fail = |why: String| Error::invalid("etcd-password-file", why);
    let text = std::fs::read_to_string(path)
        .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
    let password = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if password.is_empty() {
        return Err(fail(format!("{} is empty", path.display())));
    }
    Ok(password.to_string())
}

/// Why the cluster refused a call made while starting (`context`: what it
/// was, after the connection itself), as one line naming the cause and the
/// flag to look at. The client's own words are the fallback.
pub(super) fn refused(endpoints: &Endpoints, context: &str, failed: &Failed) -> Error {
    let doing = if context.is_empty() {
        String::new()
    } else {
        format!(" ({context})")
    };
    let e = match failed {
        Failed::Answer(e) => e,
        Failed::NoAnswer => {
            return Error::Unavailable {
                reason: reason::STORE_UNAVAILABLE,
                message: format!("etcd {endpoints}: no answer in {RETRY_FOR:?} of tries{doing}"),
            };
        }
    };
    let security = &endpoints.security;
    let user = security.user.as_deref().unwrap_or("");
    let cause = match e {
        etcd_client::Error::GRpcStatus(status) => {
            let m = status.message();
            if m.contains("authentication failed") {
                Some(format!(
                    "authentication failed: wrong user or password (--etcd-user {user}, \
                     --etcd-password-file)"
                ))
            } else if m.contains("user name is empty") || m.contains("invalid auth token") {
                Some(
                    "the cluster has authentication enabled: give --etcd-user and \
                     --etcd-password-file"
                        .to_string(),
                )
            } else if status.code() == Code::PermissionDenied && security.user.is_none() {
                // With --client-cert-auth, etcd takes the certificate's
                // common name as the user of a call that has no token.
                Some(
                    "permission denied: tokend has no --etcd-user, so etcd took the user from \
                     the client certificate's common name, or none: give --etcd-user and \
                     --etcd-password-file, or grant that user's role readwrite on the prefix"
                        .to_string(),
                )
            } else if status.code() == Code::PermissionDenied {
                Some(format!(
                    "permission denied: etcd user {user:?} may not read and write \
                     tokend's keys (grant its role readwrite on the prefix; README, \
                     \"Running on a secured etcd\")"
                ))
            } else {
                std::error::Error::source(status).and_then(|s| dial::cause(&peer(endpoints), s))
            }
        }
        etcd_client::Error::TransportError(t) => dial::cause(&peer(endpoints), t),
        _ => None,
    };
    let message = match cause {
        Some(cause) => format!("etcd {endpoints}: {cause}{doing}"),
        None => format!("etcd {endpoints}: cannot connect{doing}: {}", chain(e)),
    };
    Error::Unavailable {
        reason: reason::STORE_UNAVAILABLE,
        // One line, whatever the client's errors carry.
        message: message.replace(['\n', '\r'], " "),
    }
}

/// The cluster, in the words [`dial`]'s diagnosis uses, with etcd's flags.
fn peer(endpoints: &Endpoints) -> Peer<'_> {
    Peer {
        name: "etcd",
        certificate: "the members' certificate",
        address_flag: "--store",
        tls: endpoints.tls,
        ca_flag: "--etcd-ca",
        ca_file: endpoints.security.ca.as_deref(),
        cert_flags: ("--etcd-cert", "--etcd-key"),
        identity: endpoints
            .security
            .cert
            .as_deref()
            .zip(endpoints.security.key.as_deref()),
        trusts: "its --trusted-ca-file",
        not_tls: "the members do not speak TLS: is the cluster plaintext (etcd://)?",
        plaintext_to_tls: "etcd dropped the connection at once, as a member serving TLS does \
                           with a plaintext client: write etcds://… and give --etcd-ca",
    }
}

/// The client's error and every source below it, on one line.
fn chain(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => dial::chain(
            format!("{:?}: {}", s.code(), s.message()),
            std::error::Error::source(s),
        ),
        etcd_client::Error::TransportError(t) => {
            dial::chain(e.to_string(), std::error::Error::source(t))
        }
        other => dial::chain(other.to_string(), None),
    }
}
