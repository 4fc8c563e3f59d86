//! The gRPC API as tests call it: clients authenticated with a bearer secret,
//! and one helper per call the suite makes often (accounts, tokens, verify,
//! delete, watch…), each unwrapping what a test does not look at.

use std::path::Path;
use std::time::Duration;

pub use tokend::client::Bearer;
use tokend::proto as pb;
use tokend::proto::account_service_client::AccountServiceClient;
use tokend::proto::token_service_client::TokenServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use envoy_types::pb::envoy::service::auth::v3 as authz;

use super::server::TestServer;

/// The crate's own client credential, for tests whose secrets are ASCII.
pub fn bearer(secret: &str) -> Bearer {
    Bearer::new(secret).expect("ASCII secret")
}

pub type Tokens = TokenServiceClient<InterceptedService<Channel, Bearer>>;
pub type Accounts = AccountServiceClient<InterceptedService<Channel, Bearer>>;

pub async fn connect(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .expect("connect")
}

pub async fn tokens_at(url: &str, bearer: Bearer) -> Tokens {
    TokenServiceClient::with_interceptor(connect(url).await, bearer)
}

pub async fn accounts_at(url: &str, bearer: Bearer) -> Accounts {
    AccountServiceClient::with_interceptor(connect(url).await, bearer)
}

/// The secret tokend wrote to `<data-dir>/operator.token` on first start.
pub fn operator_secret(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("operator.token"))
        .expect("operator.token written on first start")
        .trim()
        .to_string()
}

pub use pb::EventType;

pub const ALL_MODULES: &[&str] = &["access-management", "commerce", "billing"];

pub async fn create_account(s: &TestServer, modules: &[&str]) -> pb::Account {
    new_account(&mut s.accounts().await, modules).await
}

pub async fn new_account(a: &mut Accounts, modules: &[&str]) -> pb::Account {
    a.create_account(pb::CreateAccountRequest {
        name: "Acme Inc.".into(),
        r#type: pb::AccountType::Client as i32,
        modules: modules.iter().map(|m| m.to_string()).collect(),
        ..Default::default()
    })
    .await
    .expect("account created")
    .into_inner()
}

/// Creates a token (module `commerce`) and returns it with its secret.
pub async fn create_token(c: &mut Tokens, account_id: &str, name: &str) -> (pb::Token, String) {
    issue(c, account_id, name, &["commerce"]).await
}

/// Creates a token with `modules` and returns it with its secret.
pub async fn issue(
    c: &mut Tokens,
    account_id: &str,
    name: &str,
    modules: &[&str],
) -> (pb::Token, String) {
    let r = c
        .create_token(pb::CreateTokenRequest {
            account_id: account_id.into(),
            name: name.into(),
            description: "created by a test".into(),
            icon: String::new(),
            modules: modules.iter().map(|m| m.to_string()).collect(),
            ..Default::default()
        })
        .await
        .expect("token created")
        .into_inner();
    (r.token.unwrap(), r.secret)
}

/// Sets an account's status (as the operator).
pub async fn set_account_status(
    s: &TestServer,
    id: &str,
    status: pb::AccountStatus,
) -> pb::Account {
    s.accounts()
        .await
        .update_account(pb::UpdateAccountRequest {
            account: Some(pb::Account {
                id: id.into(),
                status: status as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("account updated")
        .into_inner()
}

pub async fn delete(c: &mut Tokens, id: &str) -> Result<pb::DeleteTokenResponse, tonic::Status> {
    c.delete_token(pb::DeleteTokenRequest {
        id: id.into(),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

/// Renames token `id`, whatever its etag: the token after.
pub async fn rename(c: &mut Tokens, id: &str, name: &str) -> Result<pb::Token, tonic::Status> {
    c.update_token(pb::UpdateTokenRequest {
        token: Some(pb::Token {
            id: id.into(),
            name: name.into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["name".into()],
        }),
        etag: String::new(),
    })
    .await
    .map(|r| r.into_inner())
}

pub async fn verify(c: &mut Tokens, secret: &str) -> pb::VerifyTokenResponse {
    c.verify_token(pb::VerifyTokenRequest {
        secret: secret.into(),
    })
    .await
    .expect("verify answers OK")
    .into_inner()
}

pub async fn get(c: &mut Tokens, id: &str, show_deleted: bool) -> Result<pb::Token, tonic::Status> {
    c.get_token(pb::GetTokenRequest {
        id: id.into(),
        show_deleted,
    })
    .await
    .map(|r| r.into_inner())
}

pub type Events = tonic::Streaming<pb::TokenEvent>;

pub async fn watch(c: &mut Tokens, req: pb::WatchTokensRequest) -> Events {
    c.watch_tokens(req).await.expect("watch opens").into_inner()
}

/// A stream of every change from `start_revision` on (a replay, then live).
pub async fn watch_from(c: &mut Tokens, start_revision: i64) -> Events {
    watch(
        c,
        pb::WatchTokensRequest {
            start_revision,
            ..Default::default()
        },
    )
    .await
}

/// The next event that is not PROGRESS, within 5 s.
pub async fn next_change(events: &mut Events) -> pb::TokenEvent {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(5), events.message())
            .await
            .expect("an event within 5 s")
            .expect("stream ok")
            .expect("stream open");
        if e.r#type != EventType::Progress as i32 {
            return e;
        }
    }
}

/// The status code of a call that failed (`None` for OK).
pub fn code<T>(r: Result<T, tonic::Status>) -> Option<tonic::Code> {
    r.err().map(|e| e.code())
}

/// The `ErrorInfo.reason` of a status.
pub fn reason(s: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    s.get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

/// The request field a refusal names (its `BadRequest` detail).
pub fn field(s: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    s.get_details_bad_request()
        .and_then(|b| b.field_violations.into_iter().next())
        .map(|v| v.field)
        .unwrap_or_default()
}

/// The id of the operator token (what audit entries and events name).
pub async fn operator_id(c: &mut Tokens) -> String {
    let list = c
        .list_tokens(pb::ListTokensRequest {
            filter: r#"name = "operator""#.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    list.tokens
        .into_iter()
        .find(|t| t.name == "operator")
        .expect("the bootstrap operator token")
        .id
}

/// The current global revision: what a `send_initial` snapshot reflects.
pub async fn head(c: &mut Tokens) -> i64 {
    let mut w = watch(
        c,
        pb::WatchTokensRequest {
            send_initial: true,
            ..Default::default()
        },
    )
    .await;
    loop {
        let e = next_change(&mut w).await;
        if e.r#type == EventType::Synced as i32 {
            return e.revision;
        }
    }
}

/// What ext_authz answers for a request carrying `secret`: the gRPC code
/// and, for a denial, the body's `error`.
pub async fn authz_check(url: &str, secret: &str) -> (i32, String) {
    let mut c = authz::authorization_client::AuthorizationClient::new(connect(url).await);
    let headers = std::collections::HashMap::from([(
        "authorization".to_string(),
        format!("Bearer {secret}"),
    )]);
    let r = c
        .check(authz::CheckRequest {
            attributes: Some(authz::AttributeContext {
                request: Some(authz::attribute_context::Request {
                    http: Some(authz::attribute_context::HttpRequest {
                        method: "GET".into(),
                        path: "/v1/invoices".into(),
                        headers,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("Check answers OK")
        .into_inner();
    let body = match &r.http_response {
        Some(authz::check_response::HttpResponse::DeniedResponse(d)) => {
            let json: serde_json::Value = serde_json::from_str(&d.body).unwrap();
            json["error"].as_str().unwrap_or_default().to_string()
        }
        _ => String::new(),
    };
    (r.status.unwrap().code, body)
}
