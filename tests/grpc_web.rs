//! Browsers' way in (docs/contract.md §5): gRPC-Web on the gRPC port, over
//! HTTP/1.1, with a real gRPC-Web client (tonic-web's, on a plain HTTP/1.1
//! hyper client); the CORS policy answered to preflights; calls from other
//! origins' pages refused before anything changes; the console's files.

mod common;

use std::time::Duration;

use common::*;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokend::proto as pb;
use tokend::proto::token_service_client::TokenServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::{Code, Request as GrpcRequest};
use tower::Layer;

type WebChannel = tonic_web::GrpcWebClientService<
    Client<HttpConnector, tonic_web::GrpcWebCall<tonic::body::Body>>,
>;

/// A TokenService client that speaks gRPC-Web over HTTP/1.1 only.
fn web_tokens(
    s: &TestServer,
    secret: &str,
) -> TokenServiceClient<InterceptedService<WebChannel, Bearer>> {
    let http1 = Client::builder(TokioExecutor::new()).build_http();
    let channel = tonic_web::GrpcWebClientLayer::new().layer(http1);
    let origin: http::Uri = format!("http://{}", s.addr).parse().unwrap();
    TokenServiceClient::with_origin(InterceptedService::new(channel, bearer(secret)), origin)
}

/// One plain HTTP/1.1 request, for what is not a gRPC call.
async fn http1(
    s: &TestServer,
    req: Request<Empty<bytes::Bytes>>,
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let mut req = req;
    let uri = format!("http://{}{}", s.addr, req.uri().path());
    *req.uri_mut() = uri.parse().unwrap();
    let res = client.request(req).await.expect("an HTTP answer");
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
    (status, headers, body)
}

fn preflight(origin: &str) -> Request<Empty<bytes::Bytes>> {
    Request::builder()
        .method(Method::OPTIONS)
        .uri("/apitokens.v1.TokenService/DeleteToken")
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,x-grpc-web,x-user-agent",
        )
        .body(Empty::new())
        .unwrap()
}

#[tokio::test]
async fn unary_stream_and_error_details_over_grpc_web_on_http1() {
    let s = TestServer::start().await;
    let account = create_account(&s, &["billing", "commerce"]).await;
    let operator = operator_secret(s.data_dir());
    let mut web = web_tokens(&s, &operator);

    // Unary: a create through gRPC-Web, seen by a native client.
    let created = web
        .create_token(pb::CreateTokenRequest {
            account_id: account.id.clone(),
            name: "from a browser".into(),
            modules: vec!["billing".into()],
            ..Default::default()
        })
        .await
        .expect("CreateToken over gRPC-Web")
        .into_inner();
    let token = created.token.unwrap();
    assert!(created.secret.starts_with("idt:"));
    let mut native = s.tokens().await;
    assert_eq!(
        get(&mut native, &token.id, false).await.unwrap().name,
        "from a browser"
    );

    // A server stream: the gRPC-Web watch hears a delete made natively.
    let mut events = web
        .watch_tokens(pb::WatchTokensRequest {
            account_id: account.id.clone(),
            ..Default::default()
        })
        .await
        .expect("WatchTokens over gRPC-Web")
        .into_inner();
    delete(&mut native, &token.id).await.expect("native delete");
    let event = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let e = events.message().await.expect("stream").expect("an event");
            if e.r#type == pb::EventType::Deleted as i32 {
                return e;
            }
        }
    })
    .await
    .expect("the delete is heard over gRPC-Web");
    assert_eq!(event.token.unwrap().id, token.id);

    // An error keeps its ErrorInfo: a stale etag names ETAG_MISMATCH.
    let (other, _) = create_token(&mut native, &account.id, "other").await;
    let err = web
        .delete_token(pb::DeleteTokenRequest {
            id: other.id.clone(),
            etag: "\"stale\"".into(),
            ..Default::default()
        })
        .await
        .expect_err("a stale etag is refused");
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert_eq!(reason(&err), "ETAG_MISMATCH");
    assert!(
        get(&mut native, &other.id, false).await.is_ok(),
        "nothing deleted"
    );
}

#[tokio::test]
async fn cors_grants_listed_origins_only_and_other_pages_change_nothing() {
    let allowed = "https://app.example.com";
    let s = TestServer::start_with(move |c| {
        c.web.allowed_origins = vec![http::HeaderValue::from_static(allowed)];
    })
    .await;

    // A listed origin's preflight is granted, with the gRPC headers exposed.
    let (status, h, _) = http1(&s, preflight(allowed)).await;
    assert!(status.is_success(), "{status}");
    assert_eq!(h["access-control-allow-origin"], allowed);
    let allow_headers = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    for needed in ["authorization", "content-type", "x-grpc-web"] {
        assert!(
            allow_headers.contains(needed),
            "{needed} in {allow_headers}"
        );
    }

    // The exposed headers come with the call itself.
    let account = create_account(&s, &["commerce"]).await;
    let mut native = s.tokens().await;
    let (token, _) = create_token(&mut native, &account.id, "kept").await;
    let mut call = GrpcRequest::new(pb::GetTokenRequest {
        id: token.id.clone(),
        show_deleted: false,
    });
    call.metadata_mut()
        .insert("origin", allowed.parse().unwrap());
    let mut web = web_tokens(&s, &operator_secret(s.data_dir()));
    let got = web.get_token(call).await.expect("a listed origin may call");
    assert_eq!(got.get_ref().id, token.id);
    let h = got.metadata();
    assert_eq!(h.get("access-control-allow-origin").unwrap(), allowed);
    let exposed = h
        .get("access-control-expose-headers")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(exposed.contains("grpc-status-details-bin"), "{exposed}");

    // Another origin's preflight gets no grant.
    let (_, h, _) = http1(&s, preflight("https://evil.example")).await;
    assert!(h.get("access-control-allow-origin").is_none(), "{h:?}");

    // And its call, sent anyway, is refused before it reaches a handler.
    let mut call = GrpcRequest::new(pb::DeleteTokenRequest {
        id: token.id.clone(),
        ..Default::default()
    });
    call.metadata_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    let err = web
        .delete_token(call)
        .await
        .expect_err("another origin is refused");
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::PermissionDenied, "PERMISSION_DENIED"),
        "{err:?}"
    );
    assert!(err.message().contains("--cors-origin"), "{err:?}");
    assert!(
        get(&mut native, &token.id, false).await.is_ok(),
        "the token is still there"
    );
}

/// Native gRPC without an `Origin` (every service and mesh call) goes past
/// the browser edge: no CORS headers on its answers. With an `Origin`, it
/// is checked like a browser's call.
#[tokio::test]
async fn native_grpc_goes_past_the_browser_edge_unless_it_names_an_origin() {
    let s = TestServer::start().await;
    let account = create_account(&s, &["commerce"]).await;
    let mut native = s.tokens().await;
    let (token, _) = create_token(&mut native, &account.id, "kept").await;
    let got = native
        .get_token(pb::GetTokenRequest {
            id: token.id.clone(),
            show_deleted: false,
        })
        .await
        .unwrap();
    let names: Vec<_> = got
        .metadata()
        .keys()
        .map(|k| match k {
            tonic::metadata::KeyRef::Ascii(k) => k.as_str().to_string(),
            tonic::metadata::KeyRef::Binary(k) => k.as_str().to_string(),
        })
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.contains("access-control") || n.contains("vary")),
        "{names:?}"
    );

    let mut call = GrpcRequest::new(pb::DeleteTokenRequest {
        id: token.id.clone(),
        ..Default::default()
    });
    call.metadata_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    let err = native.delete_token(call).await.expect_err("refused");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(get(&mut native, &token.id, false).await.is_ok());

    // Native gRPC over HTTP/1.1 (a proxy that downgraded it) is still
    // refused by the gRPC-Web layer, never half-answered by a handler.
    let req = Request::builder()
        .method(Method::POST)
        .uri("/apitokens.v1.TokenService/GetToken")
        .header("content-type", "application/grpc")
        .body(Empty::new())
        .unwrap();
    let (status, _, _) = http1(&s, req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_console_is_served_with_a_strict_policy_and_can_be_turned_off() {
    let s = TestServer::start().await;
    let get = |path: &str| Request::get(path).body(Empty::new()).unwrap();
    let (status, h, body) = http1(&s, get("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(String::from_utf8_lossy(&body).contains("console.js"));
    let (status, h, _) = http1(&s, get("/console.js")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        h["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert_eq!(http1(&s, get("/etc/passwd")).await.0, StatusCode::NOT_FOUND);

    let off = TestServer::start_with(|c| c.web.console = false).await;
    assert_eq!(http1(&off, get("/")).await.0, StatusCode::NOT_FOUND);
    // gRPC (and gRPC-Web) are unaffected.
    let mut native = off.tokens().await;
    assert!(operator_id(&mut native).await.starts_with("TKN-"));
}
