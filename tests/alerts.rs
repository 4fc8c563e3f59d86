//! deploy/prometheus/ and deploy/grafana/: the alerting and recording rules
//! pass `promtool check rules` and their own unit tests (`promtool test
//! rules`, which feed series and expect each alert); the dashboard is
//! importable JSON whose every query parses; every tokend metric either
//! names is one a running tokend exports, so no alert or panel waits on a
//! series that never comes; and the scrape configuration puts the
//! manifests' pods under the job the alerts watch.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::*;

const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/tokend-rules.yaml"
);
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/grafana/tokend-dashboard.json"
);
const RULE_TESTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/tokend-rules.test.yaml"
);

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool (Debian's prometheus; scripts/test.sh installs it)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool {args:?}\n{text}");
    text
}

const CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/prometheus.yml"
);

#[test]
fn the_rules_are_valid_and_their_unit_tests_pass() {
    assert!(promtool(&["check", "rules", RULES]).contains("SUCCESS"));
    assert!(promtool(&["test", "rules", RULE_TESTS]).contains("SUCCESS"));
}

fn yaml(path: &str) -> Vec<yaml_rust2::Yaml> {
    yaml_rust2::YamlLoader::load_from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The scrape job the manifests need: valid, named as the rules' `up`
/// alert expects, and keeping the pods and the port the manifests declare.
/// With the pods' `prometheus.io/scrape` annotations alone, the usual
/// annotation-driven job has another name, and `TokendDown` never fires.
///
/// Not `promtool check config`: Debian builds Prometheus without Kubernetes
/// discovery, and its promtool refuses `kubernetes_sd_configs` as unknown.
#[test]
fn the_scrape_config_finds_the_manifests_pods_under_the_job_the_alerts_watch() {
    let config = &yaml(CONFIG)[0];
    let job = &config["scrape_configs"][0];
    let name = job["job_name"].as_str().unwrap();
    assert_eq!(config["rule_files"][0].as_str(), Some("tokend-rules.yaml"));
    let rules = std::fs::read_to_string(RULES).unwrap();
    assert!(rules.contains(&format!("up{{job=\"{name}\"}}")), "{name}");
    let keep = |label: &str| {
        job["relabel_configs"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|r| r["source_labels"][0].as_str() == Some(label))
            .and_then(|r| r["regex"].as_str())
            .unwrap_or_else(|| panic!("no keep on {label}"))
            .to_string()
    };
    let app = keep("__meta_kubernetes_pod_label_app_kubernetes_io_name");
    let port = keep("__meta_kubernetes_pod_container_port_name");
    for manifest in ["tokend.yaml", "tokend-replicas.yaml"] {
        let path = format!(
            "{}/deploy/kubernetes/{manifest}",
            env!("CARGO_MANIFEST_DIR")
        );
        let docs = yaml(&path);
        let set = docs
            .iter()
            .find(|d| matches!(d["kind"].as_str(), Some("StatefulSet" | "Deployment")))
            .unwrap_or_else(|| panic!("{manifest}: no workload"));
        let pod = &set["spec"]["template"];
        assert_eq!(
            pod["metadata"]["labels"]["app.kubernetes.io/name"].as_str(),
            Some(app.as_str()),
            "{manifest}"
        );
        let ports = pod["spec"]["containers"][0]["ports"].as_vec().unwrap();
        assert!(
            ports
                .iter()
                .any(|p| p["name"].as_str() == Some(port.as_str())),
            "{manifest}: no port named {port}"
        );
    }
}

/// The `tokend_*` series names a text names (a histogram's `_bucket`,
/// `_sum` and `_count` as they are written).
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("tokend_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // A recording rule is `tokend:…`, not a series tokend exports.
        let preceded_by_colon = at > 0 && rest.as_bytes()[at - 1] == b':';
        if !preceded_by_colon {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// Every rule's `expr`, as Prometheus reads them.
fn rule_exprs() -> Vec<String> {
    let docs =
        yaml_rust2::YamlLoader::load_from_str(&std::fs::read_to_string(RULES).unwrap()).unwrap();
    let mut exprs = Vec::new();
    for group in docs[0]["groups"].as_vec().unwrap() {
        for rule in group["rules"].as_vec().unwrap() {
            exprs.push(rule["expr"].as_str().unwrap().to_string());
        }
    }
    exprs
}

/// Every panel query of the dashboard, with Grafana's variables as
/// Prometheus would see them once Grafana filled them in.
fn dashboard_exprs() -> Vec<String> {
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for panel in d["panels"].as_array().unwrap() {
        assert!(
            ids.insert(panel["id"].as_i64().unwrap()),
            "panel ids are unique"
        );
        assert_eq!(
            panel["datasource"]["uid"], "${DS_PROMETHEUS}",
            "importable: {panel}"
        );
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            exprs.push(
                expr.replace("$__rate_interval", "1m")
                    .replace("\"$instance\"", "\".*\""),
            );
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    exprs
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    // promtool checks a rule file's expressions: the panels' queries, as
    // recording rules of a scratch file.
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in dashboard_exprs().iter().enumerate() {
        rules += &format!(
            "      - record: dashboard:panel_{i}\n        expr: {}\n",
            serde_json::to_string(e).unwrap()
        );
    }
    let file = dir.path().join("dashboard-rules.yaml");
    std::fs::write(&file, rules).unwrap();
    assert!(promtool(&["check", "rules", file.to_str().unwrap()]).contains("SUCCESS"));
}

/// The series names in one `/metrics` scrape.
fn exported(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| l.starts_with("tokend_"))
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// A server certificate made for the test, written to `dir`.
fn tls_files(dir: &Path) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (c, k) = (dir.join("tls.pem"), dir.join("tls.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c.display().to_string(), k.display().to_string())
}

#[tokio::test]
async fn every_tokend_metric_the_rules_and_the_dashboard_name_is_exported_by_a_running_tokend() {
    if sled_only("the fsync and commit histograms are the embedded store's") {
        return;
    }
    // Traffic that records every labelled series: writes, a watch, Checks.
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_addr();
    let p = spawn_tokend(dir.path(), &["--metrics-addr", &metrics.to_string()]).await;
    let acc = new_account(&mut p.accounts().await, ALL_MODULES).await;
    let mut c = p.tokens().await;
    let _w = watch_from(&mut c, 1).await;
    let (t, secret) = create_token(&mut c, &acc.id, "metered").await;
    authz_check(&p.url(), &secret).await;
    authz_check(&p.url(), "no such secret").await;
    delete(&mut c, &t.id).await.unwrap();
    let mut names = exported(&scrape(metrics));

    // The certificate's expiry is there only with TLS on.
    let tls_dir = tempfile::tempdir().unwrap();
    let (cert, key) = tls_files(tls_dir.path());
    let tls_metrics = free_addr();
    let tls = spawn_tokend_with(
        tls_dir.path(),
        &[
            "--metrics-addr",
            &tls_metrics.to_string(),
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        |_| {},
    )
    .await;
    // A plaintext client on the TLS port: a failed handshake.
    let mut plain = std::net::TcpStream::connect(tls.addr).unwrap();
    std::io::Write::write_all(&mut plain, b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut scraped = scrape(tls_metrics);
    for _ in 0..100 {
        if scraped.contains("\ntokend_tls_certificate_expiry_timestamp_seconds ")
            && scraped.contains("\ntokend_tls_handshake_failures_total{")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        scraped = scrape(tls_metrics);
    }
    names.extend(exported(&scraped));
    let expiry = sample(&scraped, "tokend_tls_certificate_expiry_timestamp_seconds");
    let now = std::time::UNIX_EPOCH.elapsed().unwrap().as_secs_f64();
    assert!(
        expiry > now,
        "the certificate's expiry, in Unix seconds: {expiry}\n{scraped}"
    );

    let used = names_in(&[rule_exprs(), dashboard_exprs()].concat().join("\n"));
    assert!(used.len() >= 6, "{used:?}");
    let missing: Vec<_> = used.difference(&names).collect();
    assert!(
        missing.is_empty(),
        "named by the rules or the dashboard, not exported: {missing:?}\nexported: {names:?}"
    );
}
