//! Client side: what another Rust program (and the `tokend` CLI) needs to
//! talk to tokend.
//!
//! - [`Bearer`]: the credential interceptor every call sends (with the
//!   caller's trace context, see [`crate::traces::inject`]).
//! - [`watch`]: [`watch::Follow`], the one resumable `WatchTokens` client:
//!   after a dropped connection it resumes from the revision after the last
//!   one heard, and lists again when that revision was compacted away. Both
//!   the cache and `tokend tokens watch` follow the stream through it.
//! - [`cache`]: [`TokenCache`], a verifier in the caller's own memory that a
//!   [`watch::Follow`] keeps current.
//!
//! [`Verdict`] is the client's reading of the server's `VerifyResult`:
//! `VALID` (with its token) is [`Verdict::Valid`]; `MALFORMED`, `DISABLED`
//! and `ACCOUNT_DISABLED` are the variants of the same names; `NOT_FOUND`,
//! and anything the client does not know (`UNSPECIFIED`, a newer value, `VALID`
//! without a token), is [`Verdict::NotFound`]. Answered from memory, a token
//! the stream reported `ACTIVE` is `Valid`, `DISABLED` is `Disabled`, deleted
//! is `NotFound`, and a secret that does not parse is `Malformed` without
//! asking; `AccountDisabled` only ever comes from the server (an account's
//! disable has no token event).
//!
//! Nothing here keeps or logs a plain secret: [`Bearer`] marks its header
//! sensitive and hides it from `Debug`, and the cache keeps only hashes.

pub mod cache;
pub mod watch;

pub use cache::{CacheConfig, CacheError, CacheStats, TokenCache, Verdict};

use tonic::Status;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::proto::token_service_client::TokenServiceClient;

/// A `TokenService` client that sends a [`Bearer`] credential.
pub type TokenClient = TokenServiceClient<InterceptedService<Channel, Bearer>>;

/// Sends `authorization: Bearer <secret>` on every call, and the current
/// span's trace context so that tokend's spans join the caller's trace. Its
/// Debug output never shows the secret.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// `None` when the secret cannot be a header value (not printable ASCII).
    pub fn new(secret: &str) -> Option<Bearer> {
        let mut v: MetadataValue<Ascii> = format!("Bearer {secret}").parse().ok()?;
        v.set_sensitive(true);
        Some(Bearer(Some(v)))
    }

    /// Sends nothing: for calls that need no credential.
    pub fn none() -> Bearer {
        Bearer(None)
    }
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(..)")
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        crate::traces::inject(r.metadata_mut());
        Ok(r)
    }
}
