//! Traces: with `--otlp-endpoint`, tokend exports OpenTelemetry spans to a
//! real OTLP/gRPC receiver (in this process). A call that carries a W3C
//! `traceparent` or a B3 header continues the caller's trace: the RPC's
//! span is the caller's child, the commit and the fsync are the RPC's, JSON
//! log lines name the trace, and no secret is in any span. The CLI and a
//! `TokenCache` carry their own trace to tokend. Without an endpoint,
//! nothing connects anywhere and log lines carry no trace; a collector URL
//! tokend cannot use is refused at start, without echoing it.

mod common;

use std::time::Duration;

use common::otlp::Collector;
use common::*;
use tokend::proto as pb;
use tracing::Instrument;

const INTERNAL: i32 = 1;
const SERVER: i32 = 2;
const STATUS_ERROR: i32 = 2;

/// A fresh random id of `bytes` bytes, in lower-case hex (a trace or span id).
fn random_id(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// `request` with `header: value` added.
fn with<T>(request: T, header: &'static str, value: String) -> tonic::Request<T> {
    let mut r = tonic::Request::new(request);
    r.metadata_mut().insert(header, value.parse().unwrap());
    r
}

/// Creates a token in `account` with this `traceparent`.
async fn create_with(
    tokens: &mut Tokens,
    account: &str,
    traceparent: String,
) -> pb::CreateTokenResponse {
    let request = pb::CreateTokenRequest {
        account_id: account.into(),
        name: "traced".into(),
        modules: vec!["commerce".into()],
        ..Default::default()
    };
    tokens
        .create_token(with(request, "traceparent", traceparent))
        .await
        .unwrap()
        .into_inner()
}

/// tokend exporting to `collector`, its JSON log lines in `log`; batches
/// leave every 50 ms instead of every 5 s.
async fn traced_tokend(collector: &Collector, dir: &std::path::Path) -> Process {
    let log = dir.join("stderr.log");
    spawn_tokend_with(
        &dir.join("data"),
        &[
            "--otlp-endpoint",
            &collector.endpoint(),
            "--log-format",
            "json",
        ],
        |cmd| {
            cmd.env("OTEL_BSP_SCHEDULE_DELAY", "50")
                .env_remove("OTEL_SERVICE_NAME")
                .stderr(std::fs::File::create(&log).unwrap());
        },
    )
    .await
}

fn log_lines(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("stderr.log"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test]
async fn a_call_with_a_traceparent_or_b3_continues_the_callers_trace_down_to_the_fsync() {
    let collector = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let p = traced_tokend(&collector, dir.path()).await;
    let account = new_account(&mut p.accounts().await, ALL_MODULES).await;
    let mut tokens = p.tokens().await;

    // W3C trace context, as a mesh sidecar or an instrumented client sends it.
    let (trace, caller) = (random_id(16), random_id(8));
    let created = create_with(&mut tokens, &account.id, format!("00-{trace}-{caller}-01")).await;
    let token = created.token.unwrap();

    let rpc = collector
        .wait_for("CreateToken in the caller's trace", |s| {
            s.trace_id() == trace && s.span.name == "apitokens.v1.TokenService/CreateToken"
        })
        .await;
    assert_eq!(rpc.service, "tokend");
    assert_eq!(rpc.parent_id(), caller, "the caller's span is the parent");
    assert_eq!(rpc.span.kind, SERVER);
    for (key, value) in [
        ("rpc.system", "grpc"),
        ("rpc.service", "apitokens.v1.TokenService"),
        ("rpc.method", "CreateToken"),
        ("rpc.grpc.status_code", "0"),
    ] {
        assert_eq!(rpc.attribute(key).as_deref(), Some(value), "{key}: {rpc:?}");
    }
    let commit = collector
        .wait_for("the create's commit, under its RPC", |s| {
            s.span.name == "store.commit" && s.parent_id() == rpc.span_id()
        })
        .await;
    assert_eq!(commit.trace_id(), trace);
    let revision: u64 = commit.attribute("revision").unwrap().parse().unwrap();
    assert!(revision > 0);
    if backend::store_for(&dir.path().join("data")).is_none() {
        // The embedded store's own fsync (on etcd, the commit is etcd's).
        let fsync = collector
            .wait_for("the batch's fsync, under the commit", |s| {
                s.span.name == "store.fsync" && s.parent_id() == commit.span_id()
            })
            .await;
        assert!(fsync.attribute("changes").unwrap().parse::<u64>().unwrap() >= 1);
    }

    // B3, as Envoy and Istio send by default (single-header form).
    let (trace_b3, caller_b3) = (random_id(16), random_id(8));
    tokens
        .delete_token(with(
            pb::DeleteTokenRequest {
                id: token.id.clone(),
                ..Default::default()
            },
            "b3",
            format!("{trace_b3}-{caller_b3}-1"),
        ))
        .await
        .unwrap();
    let delete = collector
        .wait_for("DeleteToken in the B3 caller's trace", |s| {
            s.trace_id() == trace_b3 && s.span.name == "apitokens.v1.TokenService/DeleteToken"
        })
        .await;
    assert_eq!(delete.parent_id(), caller_b3);

    // A caller that did not sample its trace: nothing of it is kept, not
    // its RPC, not its commit, not its batch's fsync.
    let trace_unsampled = random_id(16);
    create_with(
        &mut tokens,
        &account.id,
        format!("00-{trace_unsampled}-{}-00", random_id(8)),
    )
    .await;

    // Health probes (kubelet, Envoy) would flood the collector: no span.
    let trace_health = random_id(16);
    let mut health = tonic_health::pb::health_client::HealthClient::new(connect(&p.url()).await);
    health
        .check(with(
            tonic_health::pb::HealthCheckRequest::default(),
            "traceparent",
            format!("00-{trace_health}-{}-01", random_id(8)),
        ))
        .await
        .unwrap();

    // A refused call is the caller's error, not the server's.
    let trace_missing = random_id(16);
    let missing = tokens
        .get_token(with(
            pb::GetTokenRequest {
                id: "TKN-0000-0001".into(),
                ..Default::default()
            },
            "traceparent",
            format!("00-{trace_missing}-{}-01", random_id(8)),
        ))
        .await;
    assert_eq!(code(missing), Some(tonic::Code::NotFound));
    let get = collector
        .wait_for("the refused GetToken", |s| s.trace_id() == trace_missing)
        .await;
    assert_eq!(get.attribute("rpc.grpc.status_code").as_deref(), Some("5"));
    assert_ne!(get.span.status.as_ref().map(|s| s.code), Some(STATUS_ERROR));
    // Exported in the order they ended: these would be here by now.
    let spans = collector.spans();
    assert!(
        !spans.iter().any(|s| s.trace_id() == trace_health),
        "a span for a health check"
    );
    assert!(
        !spans.iter().any(|s| s.trace_id() == trace_unsampled),
        "a span of an unsampled trace"
    );

    // No secret anywhere: not the new token's, not the operator's.
    let operator = operator_secret(&dir.path().join("data"));
    for span in collector.spans() {
        for value in span.all_values() {
            assert!(
                !value.contains(&created.secret) && !value.contains(&operator),
                "a secret in {span:?}"
            );
            assert!(!value.to_lowercase().contains("bearer"), "{span:?}");
        }
    }

    // Log lines of the call carry its trace and span ids.
    let lines = log_lines(dir.path());
    let rpc_line = lines
        .iter()
        .find(|l| l["fields"]["message"] == "rpc" && l["span"]["trace_id"] == trace.as_str())
        .unwrap_or_else(|| panic!("no rpc line with trace {trace}: {lines:#?}"));
    assert_eq!(rpc_line["span"]["span_id"], rpc.span_id().as_str());
}

#[tokio::test]
async fn the_cli_and_a_token_cache_carry_their_own_trace_to_tokend() {
    let collector = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let p = traced_tokend(&collector, dir.path()).await;

    // The CLI, exporting to the same collector: one trace per command. (An
    // async child: the collector answers on this test's runtime.)
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["tokens", "list", "--server", &p.url(), "--token-file"])
        .arg(p.dir.join("operator.token"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .env_remove("OTEL_SERVICE_NAME")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli = collector
        .wait_for("the CLI's span", |s| s.service == "tokend-cli")
        .await;
    assert_eq!(cli.span.name, "tokend tokens");
    assert_eq!(cli.span.kind, INTERNAL);
    let listed = collector
        .wait_for("ListTokens under the CLI's span", |s| {
            s.service == "tokend" && s.parent_id() == cli.span_id()
        })
        .await;
    assert_eq!(listed.span.name, "apitokens.v1.TokenService/ListTokens");
    assert_eq!(listed.trace_id(), cli.trace_id());

    // A program with its own OpenTelemetry set-up, using a TokenCache. (Its
    // own spans need not be exported: tokend's are what is checked.)
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    use opentelemetry::trace::{TraceContextExt, TracerProvider};
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("app")));
    let _app = tracing::subscriber::set_default(subscriber);
    let span = tracing::info_span!("app starts its token cache");
    let app = span.context().span().span_context().clone();
    assert!(app.is_valid());
    let _cache = p.operator_cache().instrument(span).await;
    let opened = collector
        .wait_for("the cache's stream, under the app's span", |s| {
            s.service == "tokend" && s.parent_id() == app.span_id().to_string()
        })
        .await;
    assert_eq!(opened.trace_id(), app.trace_id().to_string());
    assert_eq!(opened.span.name, "apitokens.v1.TokenService/WatchTokens");
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_exported_and_no_trace_is_logged() {
    // Where an exporter built from the environment alone would send spans.
    let would_be = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    would_be.set_nonblocking(true).unwrap();
    let endpoint = format!("http://{}", would_be.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let p = spawn_tokend_with(&dir.path().join("data"), &["--log-format", "json"], |cmd| {
        cmd.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &endpoint)
            .env("OTEL_SERVICE_NAME", "tokend-test")
            .env("OTEL_BSP_SCHEDULE_DELAY", "50")
            .stderr(std::fs::File::create(&log).unwrap());
    })
    .await;
    let mut tokens = p.tokens().await;
    let trace = random_id(16);
    tokens
        .list_tokens(with(
            pb::ListTokensRequest::default(),
            "traceparent",
            format!("00-{trace}-{}-01", random_id(8)),
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    match would_be.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("tokend connected to a collector with tracing off: {other:?}"),
    }
    let lines = log_lines(dir.path());
    assert!(
        lines.iter().any(|l| l["fields"]["message"] == "rpc"),
        "{lines:#?}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("trace_id") && !text.contains(&trace),
        "{text}"
    );
}

#[test]
fn a_bad_collector_url_is_refused_at_start_without_echoing_it() {
    for (url, says) in [
        (
            "http://user:s3cret@collector:4317",
            "credentials in the URL",
        ),
        ("ftp://collector:4317", "expected http://host:port"),
        ("https://collector:4317", "https:// is not supported"),
        ("not a url at all", "not a URL"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
            .args(["--otlp-endpoint", url, "tokens", "list"])
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {stderr}");
        assert!(
            stderr.contains("otlp-endpoint") && stderr.contains(says),
            "{url}: {stderr}"
        );
        assert!(
            !stderr.contains(url) && !stderr.contains("s3cret"),
            "{stderr}"
        );
    }
    // The same from the environment, which often names a collector for a
    // whole pod: a warning, and tokend goes on without traces.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["tokens", "list", "--server", "http://127.0.0.1:9"])
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://user:s3cret@collector:4317",
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_ENDPOINT ignored, traces off"),
        "{stderr}"
    );
    // It went on to run the command, which then finds no server there.
    assert!(
        stderr.contains("cannot reach http://127.0.0.1:9"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
}
