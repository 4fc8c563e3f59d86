//! Clients from other ecosystems, and what operators scrape: the Python
//! grpcio example client and the Prometheus endpoint, against the real binary.

mod common;

use common::*;
use std::io::{Read, Write};
use std::time::Duration;
use tokend::proto as pb;

#[tokio::test]
async fn the_python_grpcio_client_sees_its_own_deletion_on_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_tokend(dir.path(), &[]).await;
    let out = tokio::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/python/tokend_demo.py"
        ))
        .args(["--server", &p.addr.to_string(), "--token-file"])
        .arg(dir.path().join("operator.token"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client failed (scripts/test.sh installs grpcio and grpcio-tools)\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("watcher saw DELETED"), "{stdout}");
    assert!(stdout.trim_end().ends_with("OK"), "{stdout}");
}

/// `GET /metrics`, as Prometheus would.
fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: tokend\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// The value of the first sample whose line starts with `series`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_move_when_traffic_flows() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_addr();
    let p = spawn_tokend(dir.path(), &["--metrics-addr", &metrics.to_string()]).await;
    let before = scrape(metrics);
    assert!(before.contains("200 OK"), "{before}");

    let acc = new_account(&mut p.accounts().await, ALL_MODULES).await;
    let mut c = p.tokens().await;
    let mut w = watch(
        &mut c,
        pb::WatchTokensRequest {
            start_revision: 1,
            ..Default::default()
        },
    )
    .await;
    let (t, _) = create_token(&mut c, &acc.id, "metered").await;
    delete(&mut c, &t.id).await.unwrap();
    loop {
        if next_change(&mut w).await.r#type == EventType::Deleted as i32 {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = scrape(metrics);

    let create =
        r#"tokend_rpc_requests_total{method="/apitokens.v1.TokenService/CreateToken",code="Ok"}"#;
    assert_eq!(
        sample(&after, create) - sample(&before, create),
        1.0,
        "{after}"
    );
    for series in [
        r#"tokend_rpc_duration_seconds_count{method="/apitokens.v1.TokenService/DeleteToken"}"#,
        "tokend_events_published_total",
        "tokend_fsync_duration_seconds_count",
        "tokend_commit_batch_size_count",
        "tokend_watch_catchups_total",
    ] {
        assert!(
            sample(&after, series) > sample(&before, series),
            "{series} did not move\n{after}"
        );
    }
    assert!(
        after.contains("tokend_rpc_duration_seconds_bucket{"),
        "a histogram, with buckets"
    );
    assert_eq!(sample(&after, "tokend_watch_streams_open"), 1.0, "{after}");
    assert!(sample(&after, "tokend_store_size_bytes") > 0.0, "{after}");
    drop(w);
}
