//! Reaching the cluster: the etcd client's options from [`Endpoints`] (TLS
//! files, the password file), and one line naming why a cluster refused
//! this replica at start-up.
//!
//! Owns reading the credential files and turning the client's nested errors
//! (a rustls alert inside an I/O error inside a transport error inside a
//! gRPC status) into the cause and the flag to fix. It must never put the
//! password in an error, a log line or Debug output: it is handed straight
//! to the client's options and dropped.

use std::path::Path;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use rustls::{AlertDescription, CertificateError};
use tonic::Code;

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
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(6);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Connects to the cluster and logs in as `--etcd-user`, if given. Fails
/// with one line naming the cause: an unreadable file, a TLS handshake
/// refused either way, a wrong password.
pub(super) async fn connect(endpoints: &Endpoints) -> Result<Client, Error> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_keep_alive(KEEP_ALIVE_EVERY, KEEP_ALIVE_TIMEOUT);
    let security = &endpoints.security;
    if endpoints.tls {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &security.ca {
            tls = tls.ca_certificate(Certificate::from_pem(pem("etcd-ca", ca)?));
        }
        if let (Some(cert), Some(key)) = (&security.cert, &security.key) {
            tls = tls.identity(Identity::from_pem(
                pem("etcd-cert", cert)?,
                pem("etcd-key", key)?,
            ));
        }
        options = options.with_tls(tls);
    }
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
    Client::connect(endpoints.urls(), Some(options))
        .await
        .map_err(|e| refused(endpoints, "", &e))
}

/// A PEM file's bytes, or which flag names a file that is not one.
fn pem(flag: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::invalid(flag, format!("cannot read {}: {e}", path.display())))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(Error::invalid(
            flag,
            format!("{} is not a PEM file", path.display()),
        ));
    }
    Ok(bytes)
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
pub(super) fn refused(endpoints: &Endpoints, context: &str, e: &etcd_client::Error) -> Error {
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
                std::error::Error::source(status).and_then(|s| transport(endpoints, s))
            }
        }
        etcd_client::Error::TransportError(t) => transport(endpoints, t),
        _ => None,
    };
    let doing = if context.is_empty() {
        String::new()
    } else {
        format!(" ({context})")
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

/// The cause of a failed connection, found in its chain of sources: a
/// rustls error (ours, or the alert the member sent), or a refused socket.
fn transport(endpoints: &Endpoints, e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(e);
    while let Some(e) = next {
        // tokio-rustls wraps rustls's error in an io::Error, whose `source`
        // skips it: look inside.
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|i| i as &(dyn std::error::Error + 'static));
        for candidate in [Some(e), inner].into_iter().flatten() {
            if let Some(tls) = candidate.downcast_ref::<rustls::Error>() {
                return Some(handshake(endpoints, tls));
            }
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return Some("connection refused: is etcd listening there?".into());
            }
            // An alert read after the handshake (TLS 1.3: the server checks
            // the client's certificate once the client thinks it is done)
            // reaches us as text only.
            let text = io.to_string();
            if let Some(alert) = text.strip_prefix("received fatal alert: ") {
                return Some(match alert {
                    "BadCertificate" | "CertificateRequired" | "UnknownCA" | "HandshakeFailure" => {
                        format!("TLS handshake failed: {}", client_cert_refused(endpoints))
                    }
                    _ => format!("TLS handshake failed: {text}"),
                });
            }
        }
        // Or, as often, the server's close overtakes its alert: the request
        // finds the connection closed, or its write a broken pipe.
        if endpoints.tls && dropped(e) {
            return Some(format!(
                "TLS: etcd closed the connection right after the handshake, as it does \
                 when it refuses the client: {}",
                client_cert_refused(endpoints)
            ));
        }
        if !endpoints.tls && dropped(e) {
            return Some(
                "etcd dropped the connection at once, as a member serving TLS does with \
                 a plaintext client: write etcds://… and give --etcd-ca"
                    .into(),
            );
        }
        next = e.source();
    }
    None
}

/// The connection went away under a request: how a TLS 1.3 server's refusal
/// of the client looks when its alert is not read first.
fn dropped(e: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset, UnexpectedEof};
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        return matches!(io.kind(), BrokenPipe | ConnectionReset | UnexpectedEof);
    }
    // hyper's and h2's errors are not ours to name; their words are stable.
    // "connection was not ready": hyper cancelled the request because the
    // connection died before it could be sent (seen in CI, where the
    // member's close won the race against the first request).
    let text = e.to_string();
    e.source().is_none()
        && (text == "connection closed"
            || text == "connection was not ready"
            || text.ends_with("broken pipe"))
}

/// The member refused this client's certificate, or its lack of one.
fn client_cert_refused(endpoints: &Endpoints) -> String {
    if endpoints.security.cert.is_some() {
        "etcd did not accept the client certificate (--etcd-cert, --etcd-key): \
         is it signed by the CA etcd trusts (its --trusted-ca-file)?"
            .into()
    } else {
        "etcd requires a client certificate: give --etcd-cert and --etcd-key".into()
    }
}

/// A failed TLS handshake, named by which side refused and which flag to fix.
fn handshake(endpoints: &Endpoints, e: &rustls::Error) -> String {
    let ca = endpoints
        .security
        .ca
        .as_deref()
        .map_or_else(String::new, |p| format!(" {}", p.display()));
    let why = match e {
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => format!("the members' certificate is not signed by --etcd-ca{ca}"),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "the members' certificate does not name the host in --store".into(),
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "the members' certificate has expired".into(),
        rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::HandshakeFailure,
        ) => client_cert_refused(endpoints),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "the members do not speak TLS: is the cluster plaintext (etcd://)?".into()
        }
        other => other.to_string(),
    };
    format!("TLS handshake failed: {why}")
}

/// The client's error and every source below it, on one line.
fn chain(e: &etcd_client::Error) -> String {
    let mut parts = vec![match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        other => other.to_string(),
    }];
    let mut next: Option<&(dyn std::error::Error + 'static)> = match e {
        etcd_client::Error::GRpcStatus(s) => std::error::Error::source(s),
        etcd_client::Error::TransportError(t) => std::error::Error::source(t),
        _ => None,
    };
    while let Some(s) = next {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::dropped;

    /// A leaf error as hyper and h2 report them: words, no source.
    #[derive(Debug)]
    struct Words(&'static str);

    impl std::fmt::Display for Words {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Words {}

    #[test]
    fn a_connection_gone_under_the_request_is_dropped_in_each_of_its_wordings() {
        for words in [
            "connection closed",
            "connection was not ready",
            "error writing a body to connection: broken pipe",
        ] {
            assert!(dropped(&Words(words)), "{words}");
        }
        for kind in [
            std::io::ErrorKind::BrokenPipe,
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::UnexpectedEof,
        ] {
            assert!(dropped(&std::io::Error::from(kind)), "{kind:?}");
        }
        assert!(!dropped(&Words("deadline has elapsed")));
        assert!(!dropped(&std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused
        )));
    }
}
