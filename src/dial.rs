//! Why a connection this process made as a client failed, in one line
//! naming the cause and the flag to fix: the etcd store's connection to
//! its cluster, and the CLI's to a tokend server.
//!
//! A refused TLS connection reaches the caller in layers: a rustls error
//! inside an I/O error (whose `source()` skips it) inside a hyper or h2
//! error inside a transport error, often inside a gRPC status. An alert
//! read after the handshake (TLS 1.3: the server checks the client's
//! certificate once the client thinks it is done) arrives as words only,
//! since h2 keeps a connection's I/O error as a kind and a message; and as
//! often, the server's close overtakes its alert and all that is left is a
//! broken pipe. All three are read here, once, for both callers.
//!
//! Owns the diagnosis and its wording, and the checks of a client's TLS
//! files. It must never put a file's contents in a message: only its flag
//! and path, and the words of the errors it explains.

use std::error::Error as StdError;
use std::path::Path;

use rustls::{AlertDescription, CertificateError};

/// The side being called, in its messages' words, and how it was called.
pub struct Peer<'a> {
    /// Who answers: "etcd", "the server".
    pub name: &'a str,
    /// Its certificate: "the members' certificate".
    pub certificate: &'a str,
    /// The flag that names its address: "--store".
    pub address_flag: &'a str,
    /// Whether it was called over TLS.
    pub tls: bool,
    /// The flag for the CA that signs its certificate, and that file; with
    /// none, the system's roots were used.
    pub ca_flag: &'a str,
    pub ca_file: Option<&'a Path>,
    /// The flags for this client's certificate and key, and their files
    /// when given.
    pub cert_flags: (&'a str, &'a str),
    pub identity: Option<(&'a Path, &'a Path)>,
    /// What it trusts client certificates by: "its --trusted-ca-file".
    pub trusts: &'a str,
    /// Why it answered a TLS client with something else: "the members do
    /// not speak TLS: is the cluster plaintext (etcd://)?".
    pub not_tls: &'a str,
    /// Why it dropped a plaintext client at once, and the fix: "etcd
    /// dropped the connection at once, as a member serving TLS does with a
    /// plaintext client: write etcds://… and give --etcd-ca".
    pub plaintext_to_tls: &'a str,
}

/// The cause of a failed connection or call, found in `e`'s chain of
/// sources: a TLS error (ours, or the alert the server sent), a refused
/// socket, or a connection dropped the way a refusing server drops it.
/// `None`: nothing this module can name (the caller says the error's own
/// words, [`chain`]).
pub fn cause(peer: &Peer, e: &(dyn StdError + 'static)) -> Option<String> {
    let mut next = Some(e);
    while let Some(e) = next {
        let io = e.downcast_ref::<std::io::Error>();
        let inner = io
            .and_then(|io| io.get_ref())
            .map(|i| i as &(dyn StdError + 'static));
        for candidate in [Some(e), inner].into_iter().flatten() {
            if let Some(tls) = candidate.downcast_ref::<rustls::Error>() {
                return Some(handshake(peer, tls));
            }
        }
        if let Some(io) = io {
            // tokio-rustls's words for a close before the handshake ended:
            // no TLS server answered (etcd's cmux drops what it does not
            // recognise), not a refused client certificate.
            if io.kind() == std::io::ErrorKind::UnexpectedEof
                && io.to_string() == "tls handshake eof"
            {
                return Some(format!(
                    "TLS handshake failed: {} closed the connection before it finished: {}",
                    peer.name, peer.not_tls
                ));
            }
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return Some(format!(
                    "connection refused: is {} listening there?",
                    peer.name
                ));
            }
            let text = io.to_string();
            if let Some(alert) = text.strip_prefix("received fatal alert: ") {
                return Some(match alert {
                    "BadCertificate"
                    | "CertificateRequired"
                    | "UnknownCA"
                    | "HandshakeFailure"
                    | "CertificateExpired"
                    | "CertificateUnknown"
                    | "DecryptError" => {
                        format!("TLS handshake failed: {}", client_cert_refused(peer))
                    }
                    _ => format!("TLS handshake failed: {text}"),
                });
            }
        }
        if dropped(e) {
            return Some(closed(peer));
        }
        next = e.source();
    }
    None
}

/// What a connection closed with no answer says about the peer: a TLS
/// peer refused this client's certificate (or its lack of one), a
/// plaintext call reached a TLS port.
pub fn closed(peer: &Peer) -> String {
    if peer.tls {
        format!(
            "TLS: {} closed the connection right after the handshake, as it does when it \
             refuses the client: {}",
            peer.name,
            client_cert_refused(peer)
        )
    } else {
        peer.plaintext_to_tls.to_string()
    }
}

/// Whether the plaintext server at `authority` (`host:port`) answers an
/// HTTP/2 client in HTTP/1: a web server's port, not a gRPC one. Asked only
/// to explain a connection closed at once, which h2 reads the same way from
/// an HTTP/1 server's status line as from a TLS server's alert: it asks
/// for `/` in HTTP/1.1 and reads the first bytes of the answer (a second
/// at most), a status line or an alert.
pub fn answers_http1(authority: &str) -> bool {
    use std::io::{Read, Write};
    use std::net::{TcpStream, ToSocketAddrs};
    const WAIT: std::time::Duration = std::time::Duration::from_secs(1);
    let Some(addr) = authority.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
        return false;
    };
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, WAIT) else {
        return false;
    };
    // One write: a server that answers after the first read and closes with
    // part of the request unread resets the connection, and a reset can
    // discard its answer before this side reads it (`write!` writes each
    // piece of its format apart).
    let request = format!("GET / HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    let mut head = [0u8; 5];
    stream.set_read_timeout(Some(WAIT)).is_ok()
        && stream.set_write_timeout(Some(WAIT)).is_ok()
        && stream.write_all(request.as_bytes()).is_ok()
        && stream.read_exact(&mut head).is_ok()
        && &head == b"HTTP/"
}

/// The connection went away under a request: how a TLS 1.3 server's refusal
/// of the client looks when its alert is not read first.
fn dropped(e: &(dyn StdError + 'static)) -> bool {
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

/// The peer refused this client's certificate, or its lack of one.
fn client_cert_refused(peer: &Peer) -> String {
    let (cert, key) = peer.cert_flags;
    if peer.identity.is_some() {
        format!(
            "{name} did not accept the client certificate ({cert}, {key}): is it signed by \
             the CA {name} trusts ({trusts}), and made for client authentication?",
            name = peer.name,
            trusts = peer.trusts,
        )
    } else {
        format!(
            "{} requires a client certificate: give {cert} and {key}",
            peer.name
        )
    }
}

/// A failed TLS handshake, named by which side refused and which flag to
/// fix; or this client's own certificate and key, which rustls would not
/// use (said without "handshake": none was tried).
fn handshake(peer: &Peer, e: &rustls::Error) -> String {
    if let Some((cert, key)) = peer.identity {
        let ours = match e {
            rustls::Error::InconsistentKeys(_) => true,
            rustls::Error::InvalidCertificate(CertificateError::Other(_)) => is_v1(cert),
            _ => false,
        };
        if ours {
            let (cert_flag, key_flag) = peer.cert_flags;
            return unusable_pair((cert_flag, cert), (key_flag, key), e);
        }
    }
    let subject = peer.certificate;
    let why = match e {
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => match peer.ca_file {
            Some(ca) => format!(
                "{subject} is not signed by {} {}",
                peer.ca_flag,
                ca.display()
            ),
            None => format!(
                "{subject} is not signed by a CA this machine trusts: give {}",
                peer.ca_flag
            ),
        },
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "{subject} does not name the host in {} (hosts are named in its subjectAltName; \
             its common name is not read)",
            peer.address_flag
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => format!("{subject} has expired"),
        rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::HandshakeFailure
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::DecryptError,
        ) => client_cert_refused(peer),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            peer.not_tls.to_string()
        }
        other => other.to_string(),
    };
    format!("TLS handshake failed: {why}")
}

/// `first`, then the words of each source below it that are not already
/// said (hyper's and tonic's repeat their own), on one line.
pub fn chain(first: String, mut next: Option<&(dyn StdError + 'static)>) -> String {
    let mut parts = vec![first];
    while let Some(s) = next {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = s.source();
    }
    parts.join(": ").replace(['\n', '\r'], " ")
}

/// What a PEM file must hold, by the label of its block.
#[derive(Clone, Copy)]
pub enum Holds {
    Certificate,
    PrivateKey,
}

/// A PEM file's bytes; else why not (unreadable, not PEM, or without a
/// block of what it must hold that rustls can read: an encrypted key, for
/// one), naming the file but never quoting it.
pub fn pem(path: &Path, holds: Holds) -> Result<Vec<u8>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(format!("{} is not a PEM file", path.display()));
    }
    let usable = match holds {
        Holds::Certificate => CertificateDer::pem_slice_iter(&bytes)
            .next()
            .is_some_and(|c| c.is_ok()),
        Holds::PrivateKey => PrivateKeyDer::from_pem_slice(&bytes).is_ok(),
    };
    if !usable {
        let what = match holds {
            Holds::Certificate => "certificate",
            Holds::PrivateKey => {
                "private key it can use (an unencrypted PKCS#8, PKCS#1 or SEC1 key)"
            }
        };
        return Err(format!("{} holds no {what}", path.display()));
    }
    Ok(bytes)
}

/// Why rustls will not use a certificate with its key, naming the fix: an
/// X.509 v1 certificate (what OpenSSL's `x509 -req` makes without
/// extensions; rustls reads v3 only, and its own words blame a "peer"), or
/// a key that is not the certificate's. `cert` and `key`: each one's flag
/// and file.
pub fn unusable_pair(cert: (&str, &Path), key: (&str, &Path), e: &rustls::Error) -> String {
    let cert_said = format!("{} {}", cert.0, cert.1.display());
    let key_said = format!("{} {}", key.0, key.1.display());
    if is_v1(cert.1) {
        return format!(
            "{cert_said} is an X.509 v1 certificate, and TLS here takes v3 only: make it again \
             with extensions (for `openssl x509 -req`, an -extfile with a subjectAltName)"
        );
    }
    match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            format!("{key_said} is not the private key of {cert_said}")
        }
        other => format!("{cert_said} with {key_said} cannot be used: {other}"),
    }
}

/// Whether the first certificate in the PEM file at `path` is X.509 v1.
fn is_v1(path: &Path) -> bool {
    std::fs::read(path)
        .ok()
        .and_then(|pem| x509_cert::Certificate::load_pem_chain(&pem).ok())
        .and_then(|chain| chain.into_iter().next())
        .is_some_and(|c| c.tbs_certificate().version() == x509_cert::certificate::Version::V1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A leaf error as hyper and h2 report them: words, no source.
    #[derive(Debug)]
    struct Words(&'static str);

    impl std::fmt::Display for Words {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl StdError for Words {}

    fn peer(tls: bool, has_cert: bool) -> Peer<'static> {
        let identity = (Path::new("c.pem"), Path::new("k.pem"));
        Peer {
            name: "the server",
            certificate: "the server's certificate",
            address_flag: "--server",
            tls,
            ca_flag: "--ca-file",
            ca_file: None,
            cert_flags: ("--client-cert", "--client-key"),
            identity: has_cert.then_some(identity),
            trusts: "its --tls-client-ca",
            not_tls: "not TLS",
            plaintext_to_tls: "call it as https://",
        }
    }

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

    /// The alert as rustls types it, and as words only (what h2 leaves of
    /// it): the same cause, naming the flags that fix it, which depend on
    /// whether a client certificate was given.
    #[test]
    fn a_refused_client_certificate_names_the_flags_typed_or_in_words() {
        let typed = || {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
            )
        };
        let words = || {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "received fatal alert: CertificateRequired",
            )
        };
        for e in [typed(), words()] {
            assert_eq!(
                cause(&peer(true, false), &e).unwrap(),
                "TLS handshake failed: the server requires a client certificate: give \
                 --client-cert and --client-key"
            );
            assert_eq!(
                cause(&peer(true, true), &e).unwrap(),
                "TLS handshake failed: the server did not accept the client certificate \
                 (--client-cert, --client-key): is it signed by the CA the server trusts \
                 (its --tls-client-ca), and made for client authentication?"
            );
        }
        // A dropped connection: the same flags, by what TLS or not says.
        let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(
            cause(&peer(true, false), &pipe)
                .unwrap()
                .ends_with("give --client-cert and --client-key")
        );
        assert_eq!(
            cause(&peer(false, false), &pipe).unwrap(),
            "call it as https://"
        );
    }

    /// A close before the handshake ended is no refused certificate: no
    /// TLS server answered.
    #[test]
    fn a_close_during_the_handshake_says_no_tls_server_answered() {
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "tls handshake eof");
        for has_cert in [false, true] {
            assert_eq!(
                cause(&peer(true, has_cert), &eof).unwrap(),
                "TLS handshake failed: the server closed the connection before it finished: \
                 not TLS"
            );
        }
    }

    /// The X.509 v1 fixture was made by `openssl x509 -req -signkey`
    /// without extensions.
    #[test]
    fn an_x509_v1_certificate_or_a_strange_key_is_named_by_its_flag() {
        let v1 = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/x509-v1.pem"
        ));
        let key = Path::new("k.pem");
        let said = rustls::Error::General("whatever rustls says".into());
        let why = unusable_pair(("--tls-cert", v1), ("--tls-key", key), &said);
        assert!(
            why.contains("x509-v1.pem is an X.509 v1 certificate"),
            "{why}"
        );
        let v3 = tempfile::NamedTempFile::new().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        std::fs::write(v3.path(), cert.pem()).unwrap();
        let mismatch = rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch);
        assert_eq!(
            unusable_pair(("--tls-cert", v3.path()), ("--tls-key", key), &mismatch),
            format!(
                "--tls-key k.pem is not the private key of --tls-cert {}",
                v3.path().display()
            )
        );
    }

    #[test]
    fn a_server_certificate_nobody_here_trusts_names_the_ca_flag() {
        let e = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert_eq!(
            cause(&peer(true, false), &e).unwrap(),
            "TLS handshake failed: the server's certificate is not signed by a CA this \
             machine trusts: give --ca-file"
        );
        let ca = Path::new("/etc/ca.pem");
        let with_ca = Peer {
            ca_file: Some(ca),
            ..peer(true, false)
        };
        assert_eq!(
            cause(&with_ca, &e).unwrap(),
            "TLS handshake failed: the server's certificate is not signed by --ca-file \
             /etc/ca.pem"
        );
    }
}
