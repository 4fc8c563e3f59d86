//! The secret-scanning partner endpoint, as GitHub's programme calls it:
//! `POST /secret-scanning/github` on `--leak-report-listen`, a port of its
//! own, so that the scanner (on the internet) reaches this and nothing of
//! the API.
//!
//! A report is a JSON list of `{token, type, url, source}`, signed with
//! ECDSA P-256 / SHA-256 over the raw body; the signature (base64 DER) and
//! the key's identifier come in the `Github-Public-Key-Signature` and
//! `Github-Public-Key-Identifier` headers. The keys are read at start-up
//! from a file in the shape GitHub publishes them
//! (`{"public_keys": [{"key_identifier", "key", "is_current"}]}`), so no
//! outbound call is ever made. The answer lists each secret by its SHA-256
//! (`token_hash`) with `label` `true_positive` or `false_positive`.
//!
//! Owns reading and checking reports; the decision is [`super::revoke`]'s.
//! It must never act on a report whose signature does not check (401,
//! nothing read past the headers but the body it checks), never echo a
//! secret, and never take more than [`MAX_BODY`] bytes or
//! [`MAX_CONCURRENT`] reports at once (413, 503).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{DerSignature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

use super::{Found, LeakAction, revoke};
use crate::error::Error;
use crate::store::Store;

/// The path GitHub is given as the partner's endpoint.
pub const PATH: &str = "/secret-scanning/github";
/// Largest report body: 1,000 findings with long URLs fit.
pub const MAX_BODY: usize = 1 << 20;
/// Reports handled at once; more are refused (503) rather than queued.
pub const MAX_CONCURRENT: usize = 16;
const KEY_ID_HEADER: &str = "github-public-key-identifier";
const SIGNATURE_HEADER: &str = "github-public-key-signature";

/// The reporters' public keys, by identifier.
#[derive(Clone)]
pub struct Keys(Arc<HashMap<String, VerifyingKey>>);

#[derive(Deserialize)]
struct KeyFile {
    public_keys: Vec<PublishedKey>,
}

#[derive(Deserialize)]
struct PublishedKey {
    key_identifier: String,
    key: String,
}

impl Keys {
    /// Reads a key file in GitHub's published shape. Every key must be a
    /// P-256 public key in PEM: a file that is not is refused at start-up,
    /// not at the first report.
    pub fn load(path: &Path) -> Result<Keys, Error> {
        let bad =
            |why: String| Error::invalid("leak-report-keys", format!("{}: {why}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let file: KeyFile = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let mut keys = HashMap::new();
        for k in file.public_keys {
            let key = VerifyingKey::from_public_key_pem(&k.key).map_err(|e| {
                bad(format!(
                    "key {:?} is not a P-256 public key: {e}",
                    k.key_identifier
                ))
            })?;
            keys.insert(k.key_identifier, key);
        }
        if keys.is_empty() {
            return Err(bad("no public_keys".into()));
        }
        Ok(Keys(Arc::new(keys)))
    }

    /// Whether `signature` (base64 DER) by key `key_id` signs `body`.
    fn check(&self, key_id: &str, signature: &str, body: &[u8]) -> bool {
        let Some(key) = self.0.get(key_id) else {
            return false;
        };
        let Ok(der) = STANDARD.decode(signature.trim()) else {
            return false;
        };
        let Ok(sig) = DerSignature::try_from(der.as_slice()) else {
            return false;
        };
        key.verify(body, &sig).is_ok()
    }
}

#[derive(Deserialize)]
struct Finding {
    token: String,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    source: String,
}

#[derive(Serialize)]
struct Label {
    token_hash: String,
    token_type: String,
    label: &'static str,
}

struct App {
    store: Arc<dyn Store>,
    keys: Keys,
    action: LeakAction,
}

/// Serves the endpoint on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    store: Arc<dyn Store>,
    keys: Keys,
    action: LeakAction,
    shutdown: CancellationToken,
) {
    let app = Arc::new(App {
        store,
        keys,
        action,
    });
    let router = Router::new()
        .route(PATH, post(report))
        .with_state(app)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too many reports at once; retry",
                    )
                }))
                .load_shed()
                .concurrency_limit(MAX_CONCURRENT),
        );
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "the leak-report endpoint stopped");
    }
}

async fn report(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let signed = match (header(KEY_ID_HEADER), header(SIGNATURE_HEADER)) {
        (Some(key_id), Some(sig)) => app.keys.check(key_id, sig, &body),
        _ => false,
    };
    if !signed {
        tracing::warn!("leak report refused: missing, unknown or wrong signature");
        return (
            StatusCode::UNAUTHORIZED,
            "the report's signature does not check",
        )
            .into_response();
    }
    let findings: Vec<Finding> = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(_) => {
            return (
                StatusCode::BAD_REQUEST,
                "expected a JSON list of {token, type, url, source}",
            )
                .into_response();
        }
    };
    let kinds: Vec<String> = findings.iter().map(|f| f.kind.clone()).collect();
    let found: Vec<Found> = findings
        .into_iter()
        .map(|f| Found {
            secret: f.token,
            url: f.url,
            source: f.source,
        })
        .collect();
    match revoke(app.store.as_ref(), &found, app.action).await {
        Ok(verdicts) => {
            let labels: Vec<Label> = verdicts
                .into_iter()
                .zip(kinds)
                .map(|(v, token_type)| Label {
                    token_hash: v.secret_hash,
                    token_type,
                    label: if v.revoked.is_some() {
                        "true_positive"
                    } else {
                        "false_positive"
                    },
                })
                .collect();
            axum::Json(labels).into_response()
        }
        // Too many secrets in one report: sending it again cannot help.
        Err(
            e @ Error::InvalidArgument {
                field: "secrets", ..
            },
        ) => (StatusCode::PAYLOAD_TOO_LARGE, e.to_string()).into_response(),
        // Any other refusal of the report itself (none today): sending it
        // again cannot help either.
        Err(e @ Error::InvalidArgument { .. }) => {
            tracing::warn!(error = %e, "leak report refused");
            (StatusCode::BAD_REQUEST, e.to_string()).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "leak report could not be acted on; the reporter will retry");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot revoke right now; retry",
            )
                .into_response()
        }
    }
}
