//! TLS on the API port: the server's certificate, optional client
//! certificates (mTLS), and the handshakes themselves, done here rather than
//! inside tonic so that a failed one is seen.
//!
//! tonic's own TLS drops a failed handshake with a debug line and no peer,
//! so an operator cannot tell why a client cannot connect (an X.509 v1
//! client certificate, none under `--tls-client-ca`, a plaintext client).
//! Here each accepted connection's handshake runs on a task of its own
//! (bounded by the connection's first-request deadline, which [`Conn`]
//! enforces on every read); a failure is counted by reason in
//! `tokend_tls_handshake_failures_total` and logged with the peer and the
//! reason, at most once per reason every 10 s, as etcd's "rejected
//! connection" lines are. The serving certificate's expiry is a metric too.
//!
//! Owns reading the PEM files and the rustls configuration. It must never
//! log key material or a certificate's contents, only why a handshake
//! failed and with whom.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore, ServerConfig};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;

use crate::dial;
use crate::error::Error;
use crate::listener::{Conn, RateLimitedWarning};
use crate::telemetry;

/// PEM files for TLS; with `client_ca`, clients must present a certificate
/// signed by it (mTLS).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// The server side of TLS, ready to accept.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
}

impl Tls {
    /// Reads the certificate chain, its key and the client CA (if any).
    /// Sets the certificate-expiry gauge.
    pub fn load(files: &TlsFiles) -> Result<Tls, Error> {
        let bad = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
            Error::invalid("tls", format!("{what} {}: {e}", path.display()))
        };
        let read = |p: &Path| std::fs::read(p).map_err(|e| bad("cannot read", p, &e));
        let pem = read(&files.cert)?;
        let chain = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("no certificate in", &files.cert, &e))?;
        if chain.is_empty() {
            return Err(bad("no certificate in", &files.cert, &"empty"));
        }
        match not_after(&pem) {
            Some(at) => {
                metrics::gauge!(telemetry::TLS_CERT_EXPIRY).set(at);
                let now = std::time::UNIX_EPOCH.elapsed().unwrap_or_default();
                if at < now.as_secs_f64() {
                    // Served all the same (a renewal may be on its way, and
                    // refusing to start would take verification down too),
                    // but every client will refuse it.
                    tracing::warn!(cert = %files.cert.display(),
                        "the serving certificate has expired: clients will refuse it");
                }
            }
            None => {
                tracing::warn!(cert = %files.cert.display(), "cannot read the certificate's expiry")
            }
        }
        let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?)
            .map_err(|e| bad("no private key in", &files.key, &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Internal(format!("tls: {e}")))?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(&read(ca)?) {
                    let cert = cert.map_err(|e| bad("bad certificate in", ca, &e))?;
                    roots
                        .add(cert)
                        .map_err(|e| bad("bad CA certificate in", ca, &e))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| bad("unusable client CA", ca, &e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| {
            let (cert, key) = (("--tls-cert", &*files.cert), ("--tls-key", &*files.key));
            Error::invalid("tls", dial::unusable_pair(cert, key, &e))
        })?;
        // gRPC is HTTP/2, which browsers negotiate over TLS too; gRPC-Web
        // and the console also serve HTTP/1.1 clients, which announce it
        // (a client naming only protocols the server lacks is refused).
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Handshakes every connection of `conns`, each on a task of its own,
    /// and yields those that complete, in the order they do.
    pub fn incoming(
        self,
        mut conns: impl Stream<Item = io::Result<Conn>> + Send + Unpin + 'static,
    ) -> ReceiverStream<io::Result<TlsStream<Conn>>> {
        let (tx, rx) = mpsc::channel(16);
        let warnings: Arc<Mutex<HashMap<&'static str, RateLimitedWarning>>> = Arc::default();
        tokio::spawn(async move {
            while let Some(conn) = conns.next().await {
                let conn = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        if tx.send(Err(e)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                };
                let (acceptor, tx, warnings) =
                    (self.acceptor.clone(), tx.clone(), warnings.clone());
                tokio::spawn(async move {
                    let peer = conn.connect_info().peer;
                    match acceptor.accept(conn).await {
                        Ok(stream) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Err(e) => {
                            let reason = reason(&e);
                            metrics::counter!(telemetry::TLS_HANDSHAKE_FAILURES, "reason" => reason)
                                .increment(1);
                            // Closed before a word of TLS: a port probe (a
                            // load balancer's TCP check), not a client.
                            if reason == "closed" {
                                tracing::debug!(%peer, error = %e, "connection closed before its TLS handshake");
                                return;
                            }
                            let mut warnings = warnings.lock().expect("tls warnings");
                            warnings.entry(reason).or_default().warn(|n| {
                                tracing::warn!(%peer, reason, error = %e, failures = n,
                                    "rejected connection: TLS handshake failed")
                            });
                        }
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

/// Why a handshake failed, as a metric label: few values, each one an
/// operator can act on.
fn reason(e: &io::Error) -> &'static str {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return match e.kind() {
            io::ErrorKind::TimedOut => "timeout",
            io::ErrorKind::InvalidData => "not_tls",
            _ => "closed",
        };
    };
    match tls {
        rustls::Error::NoCertificatesPresented => "no_client_certificate",
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "client_certificate_expired",
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => "client_certificate_untrusted",
        rustls::Error::InvalidCertificate(_) => "client_certificate_invalid",
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => "not_tls",
        rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol => "incompatible",
        rustls::Error::AlertReceived(_) => "client_refused",
        _ => "other",
    }
}

/// When the first certificate in `pem` expires, in Unix seconds.
fn not_after(pem: &[u8]) -> Option<f64> {
    let chain = x509_cert::Certificate::load_pem_chain(pem).ok()?;
    let validity = chain.first()?.tbs_certificate().validity();
    Some(validity.not_after.to_unix_duration().as_secs_f64())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_serving_certificates_expiry_is_read_from_its_pem() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let pem = params.self_signed(&key).unwrap().pem();
        // 2031-05-17T00:00:00Z
        assert_eq!(super::not_after(pem.as_bytes()), Some(1_936_742_400.0));
        assert_eq!(super::not_after(b"not a certificate"), None);
    }
}
