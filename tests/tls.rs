//! Failed TLS handshakes are visible: a client that cannot connect (no
//! client certificate under `--tls-client-ca`, one the CA did not sign, or
//! plaintext on the TLS port) is counted by reason in
//! `tokend_tls_handshake_failures_total` and named in a warning with its
//! address and the reason, at most one line per reason every 10 s however
//! many fail. Against the real binary, its stderr and its `/metrics`.

mod common;

use std::io::Write;
use std::time::Duration;

use common::pki::{list_over_tls, pki, stranger};
use common::*;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

#[tokio::test]
async fn failed_handshakes_are_counted_by_reason_and_logged_with_the_peer_once_per_burst() {
    let p = pki();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    };
    let (cert, key, ca) = (
        write("server.pem", &p.server.0),
        write("server.key", &p.server.1),
        write("ca.pem", &p.ca_pem),
    );
    let log = dir.path().join("stderr.log");
    let metrics = free_addr();
    let data = dir.path().join("data");
    let s = spawn_tokend_with(
        &data,
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
            "--metrics-addr",
            &metrics.to_string(),
            "--log-format",
            "json",
        ],
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
