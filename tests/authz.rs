//! Envoy external authorization, asked the way a sidecar asks: a tonic
//! client generated from `envoy-types`, over loopback, against a real server.

mod common;

use std::collections::HashMap;

use common::*;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use tokend::proto as pb;
use tonic::transport::Channel;

/// A request as Envoy describes it: lower-cased headers, and the route's
/// `context_extensions`.
fn request(headers: &[(&str, &str)], extensions: &[(&str, &str)]) -> CheckRequest {
    let map = |kv: &[(&str, &str)]| -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/v1/invoices".into(),
                    headers: map(headers),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: map(extensions),
            ..Default::default()
        }),
    }
}

async fn check(c: &mut AuthorizationClient<Channel>, r: CheckRequest) -> CheckResponse {
    c.check(r).await.expect("Check answers OK").into_inner()
}

async fn authz(s: &TestServer) -> AuthorizationClient<Channel> {
    AuthorizationClient::new(s.channel().await)
}

/// (headers set, headers removed) of an allowed request.
fn allowed(r: &CheckResponse) -> (HashMap<String, (String, i32)>, Vec<String>) {
    assert_eq!(r.status.as_ref().unwrap().code, 0, "{r:?}");
    let Some(HttpResponse::OkResponse(ok)) = &r.http_response else {
        panic!("not an OK response: {r:?}");
    };
    let set = ok
        .headers
        .iter()
        .map(|h| {
            let hv = h.header.as_ref().unwrap();
            (hv.key.clone(), (hv.value.clone(), h.append_action))
        })
        .collect();
    (set, ok.headers_to_remove.clone())
}

/// (gRPC code, HTTP status, JSON body) of a denied request.
fn denied(r: &CheckResponse) -> (i32, i32, serde_json::Value) {
    let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else {
        panic!("not a denial: {r:?}");
    };
    let content_type = d
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "content-type")
        .map(|h| h.value.clone());
    assert_eq!(content_type.as_deref(), Some("application/json"));
    (
        r.status.as_ref().unwrap().code,
        d.status.as_ref().unwrap().code,
        serde_json::from_str(&d.body).expect("a JSON body"),
    )
}

const UNAUTHENTICATED: i32 = tonic::Code::Unauthenticated as i32;
const PERMISSION_DENIED: i32 = tonic::Code::PermissionDenied as i32;

#[tokio::test]
async fn a_valid_token_is_allowed_with_identity_headers_and_its_secret_removed() {
    let s = TestServer::start().await;
    let acc = create_account(&s, ALL_MODULES).await;
    let mut c = s.tokens().await;
    let (t, secret) = issue(&mut c, &acc.id, "gateway", &["billing", "commerce"]).await;
    let mut a = authz(&s).await;

    let bearer = format!("Bearer {secret}");
    let r = check(
        &mut a,
        request(
            &[
                ("authorization", bearer.as_str()),
                // A client forging identity headers gets them overwritten.
                ("x-tokend-account-id", "ACC-9999-9999"),
            ],
            &[],
        ),
    )
    .await;
    let (set, removed) = allowed(&r);
    let overwrite =
        envoy_types::ext_authz::v3::pb::HeaderAppendAction::OverwriteIfExistsOrAdd as i32;
    assert_eq!(set["x-tokend-account-id"], (acc.id.clone(), overwrite));
    assert_eq!(set["x-tokend-token-id"], (t.id.clone(), overwrite));
    assert_eq!(
        set["x-tokend-modules"],
        ("billing,commerce".into(), overwrite)
    );
    assert_eq!(removed, ["authorization"]);
    // The secret appears nowhere in what goes upstream.
    assert!(!format!("{r:?}").contains(&secret));

    // The scheme is case-insensitive, as in RFC 7235.
    let lower = format!("bearer {secret}");
    let r = check(&mut a, request(&[("authorization", lower.as_str())], &[])).await;
    allowed(&r);
}

#[tokio::test]
async fn missing_and_malformed_credentials_are_401_with_a_reason() {
    let s = TestServer::start().await;
    let mut a = authz(&s).await;

    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "missing_credential"),
        (&[("x-other", "Bearer x")], "missing_credential"),
        (
            &[("authorization", "Bearer not-a-token")],
            "malformed_credential",
        ),
        (
            &[("authorization", "Basic dXNlcjpwYXNz")],
            "malformed_credential",
        ),
        (&[("authorization", "")], "malformed_credential"),
    ];
    for (headers, reason) in cases {
        let r = check(&mut a, request(headers, &[])).await;
        let (code, http, body) = denied(&r);
        assert_eq!((code, http), (UNAUTHENTICATED, 401), "{headers:?}");
        assert_eq!(body["error"], *reason, "{headers:?}");
        let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else {
            unreachable!()
        };
        assert!(
            d.headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .any(|h| h.key == "www-authenticate" && h.value == "Bearer"),
            "a 401 names its scheme"
        );
    }
}

#[tokio::test]
async fn a_well_formed_secret_that_was_never_issued_is_401() {
    let s = TestServer::start().await;
    let acc = create_account(&s, ALL_MODULES).await;
    let mut c = s.tokens().await;
    let (_, secret) = create_token(&mut c, &acc.id, "real").await;
    // Same token id and a valid checksum would need the server's secret; a
    // one-character change breaks the checksum, so use a real secret of a
    // second server instead: well-formed, unknown here.
    let other = TestServer::start().await;
    let other_acc = create_account(&other, ALL_MODULES).await;
    let (_, foreign) = create_token(&mut other.tokens().await, &other_acc.id, "x").await;
    assert_ne!(secret, foreign);

    let mut a = authz(&s).await;
    let bearer = format!("Bearer {foreign}");
    let (code, http, body) =
        denied(&check(&mut a, request(&[("authorization", bearer.as_str())], &[])).await);
    assert_eq!((code, http), (UNAUTHENTICATED, 401));
    assert_eq!(body["error"], "invalid_credential");
}

#[tokio::test]
async fn disabled_tokens_and_accounts_are_refused_by_the_next_check() {
    let s = TestServer::start().await;
    let acc = create_account(&s, ALL_MODULES).await;
    let mut c = s.tokens().await;
    let (t, secret) = create_token(&mut c, &acc.id, "svc").await;
    let mut a = authz(&s).await;
    let bearer = format!("Bearer {secret}");
    let req = || request(&[("authorization", bearer.as_str())], &[]);
    allowed(&check(&mut a, req()).await);

    c.disable_token(pb::DisableTokenRequest {
        id: t.id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let (code, http, body) = denied(&check(&mut a, req()).await);
    assert_eq!((code, http), (UNAUTHENTICATED, 401));
    assert_eq!(body["error"], "token_disabled");

    c.enable_token(pb::EnableTokenRequest {
        id: t.id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    allowed(&check(&mut a, req()).await);

    set_account_status(&s, &acc.id, pb::AccountStatus::Disabled).await;
    let (_, _, body) = denied(&check(&mut a, req()).await);
    assert_eq!(body["error"], "account_disabled");
}

/// The mesh's promise: once DeleteToken has answered, the very next Check
/// refuses, with no waiting or retrying, while other tokens keep working.
#[tokio::test]
async fn a_token_deleted_while_in_use_is_refused_by_the_very_next_check() {
    let s = TestServer::start().await;
    let acc = create_account(&s, ALL_MODULES).await;
    let mut c = s.tokens().await;
    let (t, secret) = create_token(&mut c, &acc.id, "in-use").await;
    let (_, other) = create_token(&mut c, &acc.id, "bystander").await;
    let mut a = authz(&s).await;
    let bearer = format!("Bearer {secret}");
    let bystander = format!("Bearer {other}");

    // Busy traffic on the token, then the delete lands between two Checks.
    for _ in 0..20 {
        allowed(&check(&mut a, request(&[("authorization", bearer.as_str())], &[])).await);
    }
    delete(&mut c, &t.id).await.unwrap();
    let (code, http, body) =
        denied(&check(&mut a, request(&[("authorization", bearer.as_str())], &[])).await);
    assert_eq!((code, http), (UNAUTHENTICATED, 401));
    assert_eq!(body["error"], "invalid_credential");
    allowed(
        &check(
            &mut a,
            request(&[("authorization", bystander.as_str())], &[]),
        )
        .await,
    );
}

#[tokio::test]
async fn a_route_requiring_a_module_the_token_lacks_is_403() {
    let s = TestServer::start().await;
    let acc = create_account(&s, ALL_MODULES).await;
    let mut c = s.tokens().await;
    let (_, secret) = issue(&mut c, &acc.id, "shop", &["commerce"]).await;
    let mut a = authz(&s).await;
    let bearer = format!("Bearer {secret}");
    let auth = [("authorization", bearer.as_str())];

    allowed(&check(&mut a, request(&auth, &[("tokend-module", "commerce")])).await);
    let r = check(&mut a, request(&auth, &[("tokend-module", "billing")])).await;
    let (code, http, body) = denied(&r);
    assert_eq!((code, http), (PERMISSION_DENIED, 403));
    assert_eq!(body["error"], "module_missing");
    assert_eq!(body["module"], "billing");
    // Several modules: all of them are needed.
    let r = check(
        &mut a,
        request(&auth, &[("tokend-module", "commerce, billing")]),
    )
    .await;
    assert_eq!(denied(&r).2["module"], "billing");
    // Other extensions are not requirements.
    allowed(&check(&mut a, request(&auth, &[("team", "billing")])).await);
}

#[tokio::test]
async fn the_credential_header_is_configurable_and_can_be_kept() {
    let s = TestServer::start_with(|c| {
        c.authz.header = "x-api-key".into();
        c.authz.strip_credential = false;
    })
    .await;
    let acc = create_account(&s, ALL_MODULES).await;
    let mut c = s.tokens().await;
    let (t, secret) = create_token(&mut c, &acc.id, "key").await;
    let mut a = authz(&s).await;

    // The bare secret, as API-key headers carry it; `authorization` is now
    // someone else's (the upstream's own auth, say) and is left alone.
    let r = check(
        &mut a,
        request(
            &[
                ("x-api-key", secret.as_str()),
                ("authorization", "Basic abc"),
            ],
            &[],
        ),
    )
    .await;
    let (set, removed) = allowed(&r);
    assert_eq!(set["x-tokend-token-id"].0, t.id);
    assert!(removed.is_empty(), "kept as configured: {removed:?}");

    let bearer = format!("Bearer {secret}");
    let r = check(&mut a, request(&[("authorization", bearer.as_str())], &[])).await;
    assert_eq!(denied(&r).2["error"], "missing_credential");
}

#[tokio::test]
async fn the_serve_command_takes_the_header_and_refuses_a_bad_one() {
    use clap::Parser;
    use tokend::cli::{Cli, Command};
    let parse = |args: &[&str]| {
        let mut argv = vec!["tokend", "serve"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)
    };
    let Command::Serve(args) = parse(&["--authz-header", "X-Api-Key"]).unwrap().command else {
        unreachable!()
    };
    let config = args.config().unwrap();
    assert_eq!(
        config.authz.header, "x-api-key",
        "lower-cased as Envoy sends it"
    );
    assert!(config.authz.strip_credential);
    let Command::Serve(args) = parse(&["--authz-keep-credential"]).unwrap().command else {
        unreachable!()
    };
    assert!(!args.config().unwrap().authz.strip_credential);
    let e = parse(&["--authz-header", "bad header"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("not an HTTP header name"), "{e}");
}

#[tokio::test]
async fn health_reports_the_authorization_service() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let s = TestServer::start().await;
    let status = HealthClient::new(s.channel().await)
        .check(HealthCheckRequest {
            service: "envoy.service.auth.v3.Authorization".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
}
