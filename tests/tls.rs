//! Failed TLS handshakes are visible: a client that cannot connect (no
//! client certificate under `--tls-client-ca`, one the CA did not sign, or
//! plaintext on the TLS port) is counted by reason in
//! `tokend_tls_handshake_failures_total` and named in a warning with its
//! address and the reason, at most one line per reason every 10 s however
//! many fail. Against the real binary, its stderr and its `/metrics`.

mod common;

use std::io::Write;
use std::time::Duration;

use common::pki::{list_over_tls, pki, stranger, write_pem};
use common::*;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

#[tokio::test]
async fn failed_handshakes_are_counted_by_reason_and_logged_with_the_peer_once_per_burst() {
    let p = pki();
    let dir = tempfile::tempdir().unwrap();
    let files = p.write(dir.path());
    let log = dir.path().join("stderr.log");
    let metrics = free_addr();
    let data = dir.path().join("data");
    let metrics_addr = metrics.to_string();
    let s = spawn_tokend_with(
        &data,
        &[
            &files.mutual_tls()[..],
            &["--metrics-addr", &metrics_addr, "--log-format", "json"],
        ]
        .concat(),
        |cmd| {
            cmd.stderr(std::fs::File::create(&log).unwrap());
        },
    )
    .await;
    let port = s.addr.port();
    let operator = bearer(&operator_secret(&data));
    let trusting = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&p.ca_pem))
        .domain_name("localhost");

    // A good client gets through; each kind of bad one does not.
    let good = trusting
        .clone()
        .identity(Identity::from_pem(&p.client.0, &p.client.1));
    list_over_tls(port, good, operator.clone()).await.unwrap();
    assert!(
        list_over_tls(port, trusting.clone(), operator.clone())
            .await
            .is_err()
    );
    let (sc, sk) = stranger();
    let untrusted = trusting.clone().identity(Identity::from_pem(&sc, &sk));
    assert!(
        list_over_tls(port, untrusted, operator.clone())
            .await
            .is_err()
    );
    // A bare TCP connect that closes without a byte (a load balancer's or
    // kubelet's TCP probe).
    drop(std::net::TcpStream::connect(s.addr).unwrap());
    // Plaintext HTTP/2 on the TLS port, twenty times in a burst.
    for _ in 0..20 {
        let mut c = std::net::TcpStream::connect(s.addr).unwrap();
        let _ = c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let _ = c.flush();
    }

    let reasons = [
        "no_client_certificate",
        "client_certificate_untrusted",
        "not_tls",
    ];
    let series = |r: &str| format!(r#"tokend_tls_handshake_failures_total{{reason="{r}"}}"#);
    let mut scraped = String::new();
    for _ in 0..100 {
        scraped = scrape(metrics);
        if sample(&scraped, &series("not_tls")) >= 20.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for r in reasons {
        assert!(sample(&scraped, &series(r)) >= 1.0, "{r}\n{scraped}");
    }
    assert_eq!(sample(&scraped, &series("not_tls")), 20.0, "{scraped}");

    let text = std::fs::read_to_string(&log).unwrap();
    let rejected: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["fields"]["message"] == "rejected connection: TLS handshake failed")
        .collect();
    for r in reasons {
        let said: Vec<_> = rejected
            .iter()
            .filter(|l| l["fields"]["reason"] == r)
            .collect();
        assert_eq!(said.len(), 1, "one line for {r}:\n{text}");
        let peer = said[0]["fields"]["peer"].as_str().unwrap_or_default();
        assert!(
            peer.starts_with("127.0.0.1:"),
            "the peer is named: {}",
            said[0]
        );
    }
    // The bare TCP connect is counted, not logged.
    assert!(sample(&scraped, &series("closed")) >= 1.0, "{scraped}");
    assert_eq!(rejected.len(), reasons.len(), "{text}");
    assert!(
        !text.contains(&p.client.1) && !text.contains("PRIVATE KEY"),
        "{text}"
    );
}

/// An HTTP/1.1 client over TLS (a load balancer's HTTPS health check, a
/// gRPC-Web client on HTTP/1.1) announces `http/1.1` in ALPN: it gets the
/// console, not a `no_application_protocol` alert, which it got while ALPN
/// offered `h2` alone. And a server started on an expired certificate says
/// so (it still serves: clients refuse it, the metric shows it).
#[tokio::test]
async fn an_http1_client_is_served_over_tls_and_an_expired_certificate_is_said() {
    let p = pki();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: &str| write_pem(dir.path(), name, pem);
    let (cert, key) = (
        write("server.pem", &p.server.0),
        write("server.key", &p.server.1),
    );
    let s = spawn_tokend(
        &dir.path().join("data"),
        &["--tls-cert", &cert, "--tls-key", &key],
    )
    .await;

    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(p.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("the handshake with ALPN http/1.1");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:.200}");
    // The CLI calling it as http:// is told why it cannot talk, as a
    // server it cannot reach (exit 6), not "Internal: h2 protocol error".
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["accounts", "list", "--token", "x", "--server"])
        .arg(s.url())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&cli.stderr);
    assert_eq!(cli.status.code(), Some(6), "{said}");
    assert!(
        said.contains(
            "as one serving TLS (--tls-cert) does with a plaintext client: call it as https://"
        ),
        "{said}"
    );
    drop(s);

    let key_pair = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020, 2, 1);
    let expired = params.self_signed(&key_pair).unwrap();
    let (cert, key) = (
        write("expired.pem", &expired.pem()),
        write("expired.key", &key_pair.serialize_pem()),
    );
    let log = dir.path().join("stderr.log");
    let s = spawn_tokend_with(
        &dir.path().join("data2"),
        &["--tls-cert", &cert, "--tls-key", &key],
        |cmd| {
            cmd.stderr(std::fs::File::create(&log).unwrap());
        },
    )
    .await;
    drop(s);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("the serving certificate has expired"),
        "{text}"
    );
}

/// The CLI against a TLS server that asks for client certificates: with
/// the private CA (`--ca-file`) and a client certificate it works; each
/// missing piece is a failure that names it, with exit 6 (cannot reach)
/// or 2 (a TLS file named for a plaintext URL).
#[tokio::test]
async fn the_cli_calls_a_tls_server_with_a_private_ca_and_a_client_certificate() {
    let p = pki();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: &str| write_pem(dir.path(), name, pem);
    let files = p.write(dir.path());
    let (ca, client_cert, client_key) = (&files.ca, &files.client_cert, &files.client_key);
    let data = dir.path().join("data");
    let s = spawn_tokend_with(&data, &files.mutual_tls(), |_| {}).await;
    let https = format!("https://localhost:{}", s.addr.port());
    let token_file = data.join("operator.token").display().to_string();
    let cli_with = |server: &str, extra: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
            .args([
                "accounts",
                "list",
                "--output",
                "json",
                "--token-file",
                &token_file,
                "--server",
                server,
            ])
            .args(extra)
            .env_remove("TOKEND_CA_FILE")
            .env_remove("TOKEND_CLIENT_CERT")
            .env_remove("TOKEND_CLIENT_KEY")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cli = |server: &str, extra: &[&str]| cli_with(server, extra, &[]);
    let identity = [
        "--client-cert",
        client_cert.as_str(),
        "--client-key",
        client_key.as_str(),
    ];

    let (code, stdout, stderr) = cli(
        &https,
        &[&["--ca-file", ca.as_str()][..], &identity].concat(),
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("Operations"),
        "the bootstrap account is listed: {stdout}"
    );

    // The system's roots do not know the private CA. (They are pinned to
    // another CA here, SSL_CERT_FILE, so the case holds on a machine with
    // no CA bundle too.)
    let elsewhere = write("other-roots.pem", &stranger().0);
    let (code, _, stderr) = cli_with(&https, &identity, &[("SSL_CERT_FILE", &elsewhere)]);
    assert_eq!(code, Some(6), "{stderr}");
    assert!(
        stderr.contains(
            "TLS handshake failed: the server's certificate is not signed by a CA this \
             machine trusts: give --ca-file"
        ),
        "{stderr}"
    );

    // No client certificate: the server refuses the handshake. Whether its
    // alert or its close reaches the CLI first, the cause is the same.
    let (code, _, stderr) = cli(&https, &["--ca-file", ca.as_str()]);
    assert_eq!(code, Some(6), "{stderr}");
    assert!(
        stderr.contains(
            "the server requires a client certificate: give --client-cert and --client-key"
        ),
        "{stderr}"
    );

    // A client certificate the server's CA did not sign.
    let (stranger_cert, stranger_key) = stranger();
    let (stranger_cert, stranger_key) = (
        write("stranger.pem", &stranger_cert),
        write("stranger.key", &stranger_key),
    );
    let (code, _, stderr) = cli(
        &https,
        &[
            "--ca-file",
            ca.as_str(),
            "--client-cert",
            &stranger_cert,
            "--client-key",
            &stranger_key,
        ],
    );
    assert_eq!(code, Some(6), "{stderr}");
    assert!(
        stderr.contains(
            "the server did not accept the client certificate (--client-cert, --client-key): \
             is it signed by the CA the server trusts (its --tls-client-ca), and made for \
             client authentication?"
        ),
        "{stderr}"
    );

    // A key that is not the certificate's, and a CA file holding no
    // certificate: each named with its flag, before connecting.
    let (code, _, stderr) = cli(
        &https,
        &[
            "--ca-file",
            ca.as_str(),
            "--client-cert",
            client_cert.as_str(),
            "--client-key",
            &stranger_key,
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "--client-key {stranger_key} is not the private key of --client-cert {client_cert}"
        )),
        "{stderr}"
    );
    let (code, _, stderr) = cli(&https, &["--ca-file", client_key.as_str()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("--ca-file: {client_key} holds no certificate")),
        "{stderr}"
    );

    // A file that is not PEM is named before connecting.
    let (code, _, stderr) = cli(&https, &["--ca-file", &token_file]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--ca-file: ") && stderr.contains("is not a PEM file"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("idt:"),
        "the file's contents are not quoted: {stderr}"
    );

    // A TLS file for a plaintext URL is a mistake, said before connecting.
    let (code, _, stderr) = cli(&s.url(), &["--ca-file", ca.as_str()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--ca-file (TOKEND_CA_FILE) applies to an https:// server"),
        "{stderr}"
    );
}
