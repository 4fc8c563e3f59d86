//! A certificate authority made for one test, with a server certificate for
//! `localhost` and a client certificate it signed, all PEM.

use rcgen::{CertificateParams, CertifiedIssuer, KeyPair};
use tokend::client::Bearer;
use tokend::proto as pb;
use tonic::transport::{Channel, ClientTlsConfig};

pub struct Pki {
    pub ca_pem: String,
    /// (certificate, key)
    pub server: (String, String),
    pub client: (String, String),
}

pub fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // Each certificate its own name: rcgen gives every one the same by
    // default, and OpenSSL-based clients (Python's, Node's) then take a
    // leaf whose issuer reads like its subject for a self-signed one.
    ca_params.distinguished_name = common_name("tokend test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name = common_name(&names[0]);
        let cert = params.signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca_pem: ca.pem(),
        server: leaf(vec!["localhost".into()]),
        client: leaf(vec!["client.example".into()]),
    }
}

fn common_name(name: &str) -> rcgen::DistinguishedName {
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, name);
    dn
}

/// A PKI's files, written into a directory: their paths.
pub struct Files {
    pub cert: String,
    pub key: String,
    pub ca: String,
    pub client_cert: String,
    pub client_key: String,
}

impl Pki {
    /// Writes every certificate and key into `dir`.
    pub fn write(&self, dir: &std::path::Path) -> Files {
        Files {
            cert: write_pem(dir, "server.pem", &self.server.0),
            key: write_pem(dir, "server.key", &self.server.1),
            ca: write_pem(dir, "ca.pem", &self.ca_pem),
            client_cert: write_pem(dir, "client.pem", &self.client.0),
            client_key: write_pem(dir, "client.key", &self.client.1),
        }
    }
}

impl Files {
    /// `tokend serve`'s flags for TLS that requires a client certificate
    /// this PKI's CA signed.
    pub fn mutual_tls(&self) -> [&str; 6] {
        [
            "--tls-cert",
            &self.cert,
            "--tls-key",
            &self.key,
            "--tls-client-ca",
            &self.ca,
        ]
    }
}

/// Writes a PEM file into `dir`, returning its path.
pub fn write_pem(dir: &std::path::Path, name: &str, pem: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path.display().to_string()
}

/// A client certificate no test CA signed.
pub fn stranger() -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["stranger.example".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Lists tokens over TLS on `port` (as `localhost`), as `bearer`: the error
/// as text when the handshake or the call fails.
pub async fn list_over_tls(port: u16, tls: ClientTlsConfig, bearer: Bearer) -> Result<(), String> {
    let channel = Channel::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    pb::token_service_client::TokenServiceClient::with_interceptor(channel, bearer)
        .list_tokens(pb::ListTokensRequest::default())
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}
