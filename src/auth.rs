//! Authentication at the gRPC edge: who is calling.
//!
//! Owns the bearer-token check, an interceptor in front of `TokenService` and
//! `AccountService` (health and reflection stay open) that resolves the
//! credential to a [`Caller`] and hands it to the handler; what a caller may
//! then do is [`crate::caller`]'s. Callers authenticate with secrets
//! this same service issued, looked up in the in-memory state (a hash lookup,
//! no disk). Every authentication failure is the same `UNAUTHENTICATED`, and a
//! caller never learns that another account's token exists: such ids answer
//! `NOT_FOUND`. This module must never log or return a secret, and never
//! decide anything from a request field that the caller could forge.

use std::sync::Arc;
use std::time::SystemTime;

use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use crate::caller::{Caller, bearer};
use crate::error::Error;
use crate::state::{Standing, State, Verification};
use crate::store::Store;

/// Resolves the `authorization` metadata against `state`.
pub fn authenticate(state: &State, metadata: &MetadataMap) -> Result<Caller, Error> {
    let header = metadata
        .get("authorization")
        .ok_or(Error::Unauthenticated)?
        .to_str()
        .map_err(|_| Error::Unauthenticated)?;
    let credential = bearer(header).ok_or(Error::Unauthenticated)?;
    match state.verify(credential, SystemTime::now()) {
        Verification {
            standing: Standing::Valid,
            token: Some(token),
            account: Some(account),
        } => Ok(Caller {
            token: token.clone(),
            account: account.clone(),
        }),
        Verification {
            standing: Standing::Expired,
            ..
        } => Err(Error::CredentialExpired),
        _ => Err(Error::Unauthenticated),
    }
}

/// The interceptor in front of the API services: authenticates, records the
/// access, and hands the [`Caller`] to the handler in the request extensions.
#[derive(Clone)]
pub struct Authenticator {
    store: Arc<dyn Store>,
}

impl Authenticator {
    pub fn new(store: Arc<dyn Store>) -> Authenticator {
        Authenticator { store }
    }
}

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let state = self.store.verifying_state()?;
        let caller = authenticate(&state, request.metadata())?;
        self.store
            .record_access(&caller.token.id, SystemTime::now());
        if let Some(slot) = request.extensions().get::<crate::telemetry::CallerSlot>() {
            slot.set(&caller.token.id);
        }
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The caller the interceptor found.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Error> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Error::Internal("request reached a handler unauthenticated".into()))
}
