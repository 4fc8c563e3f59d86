//! Envoy external authorization: `envoy.service.auth.v3.Authorization/Check`.
//!
//! Owns translating a sidecar's question ("may this HTTP request through?")
//! into [`State::verify`](crate::state::State::verify) and the answer into
//! Envoy's allow/deny response. A Check reads the latest published state,
//! which the store swaps in before it answers a write: so a token whose
//! delete or disable has been answered is refused by the very next Check,
//! and no Check ever waits on the disk or the writer.
//!
//! It must never put a secret in a response, a header it adds, or a log line;
//! the denial bodies name only the reason.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, HeaderAppendAction, HttpStatusCode,
};
use envoy_types::ext_authz::v3::{
    CheckRequestExt, CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use tonic::{Request, Response, Status};

use crate::caller::bearer;
use crate::domain::{Account, Modules, Token};
use crate::state::{Standing, State, Verification};
use crate::store::Store;

/// The `context_extensions` key by which a route names the module it needs.
pub const MODULE_EXTENSION: &str = "tokend-module";
/// Headers an allowed request carries to the upstream. tokend sets them,
/// overwriting any the client sent, so an upstream can trust them.
pub const ACCOUNT_HEADER: &str = "x-tokend-account-id";
pub const TOKEN_HEADER: &str = "x-tokend-token-id";
pub const MODULES_HEADER: &str = "x-tokend-modules";

/// How Check finds the credential and what it forwards.
#[derive(Clone, Debug)]
pub struct AuthzConfig {
    /// The request header holding `Bearer <secret>` (or the bare secret),
    /// lower-cased as Envoy passes headers.
    pub header: String,
    /// Remove that header before the request reaches the upstream.
    pub strip_credential: bool,
}

impl Default for AuthzConfig {
    fn default() -> Self {
        AuthzConfig {
            header: "authorization".into(),
            strip_credential: true,
        }
    }
}

/// The Authorization service.
#[derive(Clone)]
pub struct Authz {
    store: Arc<dyn Store>,
    config: Arc<AuthzConfig>,
}

impl Authz {
    pub fn new(store: Arc<dyn Store>, config: AuthzConfig) -> Authz {
        Authz {
            store,
            config: Arc::new(config),
        }
    }

    /// The decision for one request's headers and route extensions.
    fn decide(
        &self,
        state: &State,
        headers: Option<&HashMap<String, String>>,
        extensions: Option<&HashMap<String, String>>,
    ) -> Decision {
        let Some(value) = headers.and_then(|h| h.get(&self.config.header)) else {
            return Decision::Deny(Denial::MissingCredential);
        };
        // `authorization` carries a scheme; a custom header (`x-api-key`)
        // may carry the bare secret.
        let credential = bearer(value).unwrap_or(value.trim());
        let Verification {
            standing,
            token,
            account,
        } = state.verify(credential, SystemTime::now());
        let (token, account) = match (standing, token, account) {
            (Standing::Valid, Some(t), Some(a)) => (t, a),
            (Standing::Malformed, ..) => return Decision::Deny(Denial::Malformed),
            (Standing::Disabled, ..) => return Decision::Deny(Denial::TokenDisabled),
            (Standing::AccountDisabled, ..) => return Decision::Deny(Denial::AccountDisabled),
            (Standing::Expired, ..) => return Decision::Deny(Denial::TokenExpired),
            _ => return Decision::Deny(Denial::InvalidCredential),
        };
        // A route may need several modules: "billing" or "billing,reports".
        let required = extensions
            .and_then(|e| e.get(MODULE_EXTENSION))
            .map(|m| m.split(',').map(str::trim).filter(|m| !m.is_empty()));
        if let Some(mut required) = required
            && let Some(missing) = required.find(|m| !token.modules.contains(m))
        {
            return Decision::Deny(Denial::ModuleMissing(missing.to_string()));
        }
        self.store.record_access(&token.id, SystemTime::now());
        Decision::Allow(token.clone(), account.clone())
    }

    fn allow(&self, token: &Token, account: &Account) -> CheckResponse {
        let mut ok = OkHttpResponseBuilder::new();
        let set = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
        ok.add_header(ACCOUNT_HEADER, account.id.as_str(), set, false)
            .add_header(TOKEN_HEADER, token.id.as_str(), set, false)
            // Kept even when empty: "no modules" must overwrite a forged list.
            .add_header(MODULES_HEADER, join(&token.modules), set, true);
        if self.config.strip_credential {
            ok.remove_header(self.config.header.as_str());
        }
        let mut response = CheckResponse::with_status(Status::ok(""));
        response.set_http_response(ok);
        response
    }
}

fn join(modules: &Modules) -> String {
    modules.iter().collect::<Vec<_>>().join(",")
}

enum Decision {
    Allow(Arc<Token>, Arc<Account>),
    Deny(Denial),
}

/// Why a request was refused: each becomes a status and a small JSON body.
#[derive(Debug)]
enum Denial {
    MissingCredential,
    Malformed,
    InvalidCredential,
    TokenDisabled,
    TokenExpired,
    AccountDisabled,
    ModuleMissing(String),
}

impl Denial {
    fn reason(&self) -> &'static str {
        match self {
            Denial::MissingCredential => "missing_credential",
            Denial::Malformed => "malformed_credential",
            Denial::InvalidCredential => "invalid_credential",
            Denial::TokenDisabled => "token_disabled",
            Denial::TokenExpired => "token_expired",
            Denial::AccountDisabled => "account_disabled",
            Denial::ModuleMissing(_) => "module_missing",
        }
    }

    fn response(&self) -> CheckResponse {
        let forbidden = matches!(self, Denial::ModuleMissing(_));
        let (status, http) = if forbidden {
            (
                Status::permission_denied(self.reason()),
                HttpStatusCode::Forbidden,
            )
        } else {
            (
                Status::unauthenticated(self.reason()),
                HttpStatusCode::Unauthorized,
            )
        };
        let mut body = serde_json::json!({ "error": self.reason() });
        if let Denial::ModuleMissing(m) = self {
            body["module"] = m.as_str().into();
        }
        let mut denied = DeniedHttpResponseBuilder::new();
        denied
            .set_http_status(http)
            .add_header("content-type", "application/json", None, false)
            .set_body(body.to_string());
        if !forbidden {
            // RFC 6750: a 401 names the scheme it wants.
            denied.add_header("www-authenticate", "Bearer", None, false);
        }
        let mut response = CheckResponse::with_status(status);
        response.set_http_response(denied);
        response
    }
}

#[tonic::async_trait]
impl Authorization for Authz {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let r = request.into_inner();
        let extensions = r.attributes.as_ref().map(|a| &a.context_extensions);
        // A replica that must not decide answers an error: Envoy then fails
        // closed (or asks another replica).
        let state = self.store.verifying_state()?;
        let response = match self.decide(&state, r.get_client_headers(), extensions) {
            Decision::Allow(token, account) => {
                metrics::counter!(crate::telemetry::AUTHZ_CHECKS, "decision" => "allow")
                    .increment(1);
                self.allow(&token, &account)
            }
            Decision::Deny(denial) => {
                tracing::debug!(reason = denial.reason(), "check denied");
                metrics::counter!(crate::telemetry::AUTHZ_CHECKS, "decision" => denial.reason())
                    .increment(1);
                denial.response()
            }
        };
        Ok(Response::new(response))
    }
}
