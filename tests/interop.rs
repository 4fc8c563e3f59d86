//! Clients from other ecosystems, and what operators scrape: the Python
//! grpcio example client and the Prometheus endpoint, against the real binary.

mod common;

use common::*;
use std::time::Duration;

#[tokio::test]
async fn the_python_grpcio_client_sees_its_own_deletion_on_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_tokend(dir.path(), &[]).await;
    let out = tokio::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/python/tokend_demo.py"
        ))
        // Where and as whom, from the environment the CLI reads too (the
        // Node test below passes them as flags).
        .env("TOKEND_SERVER", p.url())
        .env("TOKEND_TOKEN_FILE", dir.path().join("operator.token"))
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

/// The Node.js example (@grpc/grpc-js, proto/ loaded at run time): create,
/// watch, delete, resume from a revision, and the ErrorInfo reason.
#[tokio::test]
async fn the_node_grpc_js_client_resumes_its_stream_and_reads_error_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_tokend(dir.path(), &[]).await;
    let out = tokio::process::Command::new("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/node/tokend_demo.mjs"
        ))
        .args(["--server", &p.addr.to_string(), "--token-file"])
        .arg(dir.path().join("operator.token"))
        .output()
        .await
        .expect("node (scripts/test.sh installs it, and examples/node's packages)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "node client failed\n{stdout}\n{stderr}"
    );
    for line in [
        "watcher saw DELETED",
        "resumed from revision",
        "deleting it again: NOT_FOUND, reason TOKEN_NOT_FOUND",
    ] {
        assert!(stdout.contains(line), "{line:?} missing:\n{stdout}");
    }
    assert!(stdout.trim_end().ends_with("OK"), "{stdout}");
}

/// Both examples over mutual TLS, as the CLI calls such a server:
/// `https://`, the private CA and a client certificate (the Python one from
/// the environment, the Node one from flags). And neither sends the local
/// operator's secret to a server not on this machine (`0.0.0.0` stands for
/// one: neither can tell it is this host).
#[tokio::test]
async fn the_examples_call_over_mutual_tls_and_keep_the_local_secret_local() {
    let dir = tempfile::tempdir().unwrap();
    let files = common::pki::pki().write(dir.path());
    let (ca, client_cert, client_key) = (&files.ca, &files.client_cert, &files.client_key);
    let data = dir.path().join("data");
    let p = spawn_tokend_with(&data, &files.mutual_tls(), |_| {}).await;
    let https = format!("https://localhost:{}", p.addr.port());
    let token_file = data.join("operator.token");
    let example = |program: &str, script: &str| {
        let mut cmd = tokio::process::Command::new(program);
        cmd.arg(format!("{}/examples/{script}", env!("CARGO_MANIFEST_DIR")));
        for var in [
            "TOKEND_SERVER",
            "TOKEND_TOKEN_FILE",
            "TOKEND_CA_FILE",
            "TOKEND_CLIENT_CERT",
            "TOKEND_CLIENT_KEY",
        ] {
            cmd.env_remove(var);
        }
        cmd
    };
    let python = example("python3", "python/tokend_demo.py")
        .env("TOKEND_SERVER", &https)
        .env("TOKEND_TOKEN_FILE", &token_file)
        .env("TOKEND_CA_FILE", ca)
        .env("TOKEND_CLIENT_CERT", client_cert)
        .env("TOKEND_CLIENT_KEY", client_key)
        .output();
    let node = example("node", "node/tokend_demo.mjs")
        .args(["--server", &https, "--ca-file", ca])
        .args(["--client-cert", client_cert, "--client-key", client_key])
        .arg("--token-file")
        .arg(&token_file)
        .output();
    for (name, out) in [("python", python.await), ("node", node.await)] {
        let out = out.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name} over mTLS\n{stdout}\n{stderr}");
        assert!(stdout.contains("watcher saw DELETED"), "{name}: {stdout}");
    }

    // A tokend-data/operator.token in the working directory is not sent to
    // another host unasked: the examples stop before calling.
    let cwd = tempfile::tempdir().unwrap();
    std::fs::create_dir(cwd.path().join("tokend-data")).unwrap();
    std::fs::copy(&token_file, cwd.path().join("tokend-data/operator.token")).unwrap();
    let elsewhere = format!("0.0.0.0:{}", p.addr.port());
    for (program, script) in [
        ("python3", "python/tokend_demo.py"),
        ("node", "node/tokend_demo.mjs"),
    ] {
        let out = example(program, script)
            .args(["--server", &elsewhere])
            .current_dir(cwd.path())
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{script}: {stderr}");
        assert!(
            stderr.contains("is not on this machine: give its operator secret with --token-file"),
            "{script}: {stderr}"
        );
    }
}

/// A server that accepts the connection and never answers: each example's
/// call gives up at its deadline (`--timeout`) with one line saying so,
/// not a stack trace, and never hangs (grpcio and grpc-js wait for ever
/// without a deadline).
#[tokio::test]
async fn the_examples_give_up_on_a_server_that_never_answers() {
    let server = silent_addr().to_string();
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "not-a-secret").unwrap();
    for (program, script, timeout) in [
        ("python3", "python/tokend_demo.py", "1"),
        ("node", "node/tokend_demo.mjs", "1s"),
    ] {
        let mut cmd = tokio::process::Command::new(program);
        cmd.arg(format!("{}/examples/{script}", env!("CARGO_MANIFEST_DIR")))
            .args(["--server", &server, "--timeout", timeout, "--token-file"])
            .arg(secret.path());
        let out = output_within(cmd, Duration::from_secs(60), script).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{script}: {stderr}");
        assert!(
            stderr.starts_with("tokend_demo: DEADLINE_EXCEEDED: ")
                && stderr.trim_end().ends_with("(no answer within --timeout)")
                && stderr.lines().count() == 1,
            "{script}: {stderr}"
        );
    }
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
    let mut w = watch_from(&mut c, 1).await;
    let (t, _) = create_token(&mut c, &acc.id, "metered").await;
    delete(&mut c, &t.id).await.unwrap();
    loop {
        if next_change(&mut w).await.r#type == EventType::Deleted as i32 {
            break;
        }
    }
    // Made-up paths, one into a served service without a credential (so it
    // is refused as UNAUTHENTICATED, not UNIMPLEMENTED): counted, under one
    // label, never their own.
    for path in [
        "/apitokens.v1.TokenService/NoSuchMethod",
        "/made.Up/NoSuchMethod",
    ] {
        call_without_credential(&p.url(), path).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = scrape(metrics);
    assert!(!after.contains("NoSuchMethod"), "{after}");
    for code in ["Unauthenticated", "Unimplemented"] {
        let made_up = format!(r#"tokend_rpc_requests_total{{method="unknown",code="{code}"}}"#);
        assert_eq!(
            sample(&after, &made_up) - sample(&before, &made_up),
            1.0,
            "{after}"
        );
    }

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
    ]
    .into_iter()
    // etcd fsyncs for the etcd backend; tokend commits nothing itself.
    .filter(|s| test_etcd().is_none() || !(s.contains("fsync") || s.contains("commit_batch")))
    {
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
    if test_etcd().is_none() {
        assert!(sample(&after, "tokend_store_size_bytes") > 0.0, "{after}");
    }
    drop(w);
}

/// Calls `path` with an empty message and no credential; returns its status.
async fn call_without_credential(url: &str, path: &'static str) -> tonic::Status {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path = http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(()), path, codec)
        .await
        .unwrap_err()
}

/// JSON logs: every line parses, each RPC is logged once with method, code,
/// latency and caller, and no secret ever appears, even at trace level.
#[tokio::test]
async fn json_logs_name_each_rpc_once_and_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let data = dir.path().join("data");
    let mut p = spawn_tokend_with(&data, &["--log-format", "json"], |cmd| {
        let stderr = std::fs::File::create(&log).unwrap();
        cmd.stderr(stderr).env("RUST_LOG", "trace");
    })
    .await;
    let acc = new_account(&mut p.accounts().await, ALL_MODULES).await;
    let mut c = p.tokens().await;
    let (t, secret) = create_token(&mut c, &acc.id, "logged").await;
    assert!(verify(&mut c, &secret).await.valid);
    delete(&mut c, &t.id).await.unwrap();
    let operator = operator_secret(&data);
    p.terminate();

    let text = std::fs::read_to_string(&log).unwrap();
    for s in [&secret, &operator] {
        assert!(!text.contains(&s[18..]), "a secret reached the log");
    }
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let rpcs: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "rpc")
        .collect();
    let deletes: Vec<_> = rpcs
        .iter()
        .filter(|l| l["fields"]["method"] == "/apitokens.v1.TokenService/DeleteToken")
        .collect();
    assert_eq!(deletes.len(), 1, "{rpcs:?}");
    let d = &deletes[0]["fields"];
    assert_eq!(d["code"], "Ok");
    assert!(d["micros"].as_u64().is_some());
    assert!(d["caller"].as_str().unwrap().starts_with("TKN-"));
}

/// grpcurl, with nothing but reflection: `list` (over v1, and v1alpha as
/// older grpcurl and Postman ask) names exactly the services the server
/// routes, Envoy's `Authorization` among them; a call to a unary method of
/// each listed service reaches it (anything but UNIMPLEMENTED); and a
/// service nobody serves is not offered.
#[tokio::test]
async fn grpcurl_lists_every_routed_service_and_each_listed_one_answers() {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_tokend(dir.path(), &[]).await;
    let addr = p.addr.to_string();
    let grpcurl = |args: &[&str]| {
        let out = std::process::Command::new("grpcurl")
            .args(["-plaintext", "-max-time", "5"])
            .args(args)
            .output()
            .expect("grpcurl (scripts/test.sh installs it)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let routed = [
        "apitokens.v1.AccountService",
        "apitokens.v1.TokenService",
        "envoy.service.auth.v3.Authorization",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    for protocol in ["v1", "v1alpha"] {
        let (ok, out) = grpcurl(&[
            "-use-reflection",
            &format!("-reflect-protocol={protocol}"),
            &addr,
            "list",
        ]);
        // Older grpcurl has no -reflect-protocol: fall back to its default.
        let (ok, out) = if ok {
            (ok, out)
        } else {
            grpcurl(&[&addr, "list"])
        };
        assert!(ok, "{out}");
        let listed: Vec<&str> = out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(listed, routed, "reflection {protocol}");
    }
    let (ok, check) = grpcurl(&[
        &addr,
        "describe",
        "envoy.service.auth.v3.Authorization.Check",
    ]);
    assert!(ok && check.contains("CheckRequest"), "{check}");

    let bearer = format!("authorization: Bearer {}", operator_secret(dir.path()));
    let unary = [
        "apitokens.v1.AccountService/ListAccounts",
        "apitokens.v1.TokenService/ListTokens",
        "envoy.service.auth.v3.Authorization/Check",
        "grpc.health.v1.Health/Check",
    ];
    for method in unary {
        let (ok, out) = grpcurl(&["-H", &bearer, "-d", "{}", &addr, method]);
        assert!(!out.contains("Unimplemented"), "{method}: {out}");
        assert!(ok, "{method}: {out}");
    }
    let (ok, out) = grpcurl(&["-d", "{}", &addr, "apitokens.v1.NoSuchService/Get"]);
    assert!(!ok && out.contains("does not expose service"), "{out}");
}
