//! The one error type of the product, named by what a client must do about it.
//!
//! Owns the vocabulary of failures (each variant maps to exactly one gRPC code
//! and one `ErrorInfo` reason, in `service::convert`). It must never carry a
//! secret, nor echo unbounded user input: messages quote at most a short prefix.

/// Reason strings a client may branch on (`google.rpc.ErrorInfo.reason`,
/// domain [`DOMAIN`]).
pub mod reason {
    pub const INVALID_ARGUMENT: &str = "INVALID_ARGUMENT";
    pub const TOKEN_NOT_FOUND: &str = "TOKEN_NOT_FOUND";
    pub const ACCOUNT_NOT_FOUND: &str = "ACCOUNT_NOT_FOUND";
    pub const ETAG_MISMATCH: &str = "ETAG_MISMATCH";
    pub const TOKEN_NOT_ACTIVE: &str = "TOKEN_NOT_ACTIVE";
    pub const TOKEN_NOT_DISABLED: &str = "TOKEN_NOT_DISABLED";
    pub const ACCOUNT_DISABLED: &str = "ACCOUNT_DISABLED";
    pub const MODULE_NOT_IN_ACCOUNT: &str = "MODULE_NOT_IN_ACCOUNT";
    pub const MODULE_IN_USE: &str = "MODULE_IN_USE";
    pub const TOKEN_ID_TAKEN: &str = "TOKEN_ID_TAKEN";
    pub const REVISION_COMPACTED: &str = "REVISION_COMPACTED";
    pub const TOO_MANY_WATCHERS: &str = "TOO_MANY_WATCHERS";
    pub const TOKEN_IDS_EXHAUSTED: &str = "TOKEN_IDS_EXHAUSTED";
    pub const STORE_UNAVAILABLE: &str = "STORE_UNAVAILABLE";
    pub const SHUTTING_DOWN: &str = "SHUTTING_DOWN";
    pub const LISTEN_FAILED: &str = "LISTEN_FAILED";
    pub const INTERNAL: &str = "INTERNAL";
    pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";
    pub const PERMISSION_DENIED: &str = "PERMISSION_DENIED";
    pub const CREDENTIAL_REVOKED: &str = "CREDENTIAL_REVOKED";
    pub const CREDENTIAL_EXPIRED: &str = "CREDENTIAL_EXPIRED";
    pub const LIFETIME_EXCEEDED: &str = "LIFETIME_EXCEEDED";
    pub const TOKEN_EXPIRED: &str = "TOKEN_EXPIRED";
    pub const TOKEN_REPLACED: &str = "TOKEN_REPLACED";
}

/// `google.rpc.ErrorInfo.domain` of every error this service raises.
pub const DOMAIN: &str = "apitokens";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong; retrying it unchanged cannot succeed.
    #[error("invalid {field}: {message}")]
    InvalidArgument {
        field: &'static str,
        message: String,
    },
    /// No valid credential. One message for every cause (missing, malformed,
    /// unknown, disabled, deleted), so the answer is no oracle.
    #[error("missing or invalid credentials: send `authorization: Bearer <token secret>`")]
    Unauthenticated,
    /// The credential was a good secret whose token has expired: its holder
    /// learns nothing about anyone else's tokens, and needs a new one.
    #[error("the bearer token has expired: create or roll a new one")]
    CredentialExpired,
    /// A watch stream's own credential was deleted or disabled.
    #[error("the credential of this stream was {0}")]
    CredentialRevoked(&'static str),
    /// Authenticated, but this caller may not do this.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The named thing does not exist (or the caller may not know it does).
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    /// The request is valid but the thing is in the wrong state for it.
    #[error("{message}")]
    FailedPrecondition {
        reason: &'static str,
        message: String,
    },
    /// The caller's etag is stale: re-read, re-confirm, retry.
    #[error("etag mismatch: the {what} changed since it was read (current etag {current})")]
    EtagMismatch { what: &'static str, current: String },
    /// A watch asked for history older than what is retained.
    #[error(
        "revision {requested} has been compacted; the oldest retained revision is {oldest}: re-sync with send_initial"
    )]
    Compacted {
        // Revisions (`domain::Revision`); spelled `u64` so that this module,
        // which everything depends on, depends on nothing.
        requested: u64,
        oldest: u64,
    },
    /// The configured cap on open watch streams is reached.
    #[error("too many open watch streams (limit {limit}); retry later")]
    TooManyWatchers { limit: usize },
    /// So many token ids were issued (deleted tokens' included: ids are
    /// never reused) that no new token is made: the id space would run out.
    #[error(
        "no new token: {issued} of the 100,000,000 token ids have been issued (deleted tokens' \
         included; an id is never reused), and tokend stops at {limit} so that a new id is \
         always found quickly; see the README's Known limits"
    )]
    TokenIdsExhausted { issued: u64, limit: u64 },
    /// The store cannot take writes now (I/O failure, or shutting down).
    #[error("{message}")]
    Unavailable {
        reason: &'static str,
        message: String,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field,
            message: message.into(),
        }
    }

    pub fn token_not_found(id: impl ToString) -> Self {
        Error::NotFound {
            what: "token",
            id: id.to_string(),
        }
    }

    pub fn account_not_found(id: impl ToString) -> Self {
        Error::NotFound {
            what: "account",
            id: id.to_string(),
        }
    }

    pub fn precondition(reason: &'static str, message: impl Into<String>) -> Self {
        Error::FailedPrecondition {
            reason,
            message: message.into(),
        }
    }

    pub fn shutting_down() -> Self {
        Error::Unavailable {
            reason: reason::SHUTTING_DOWN,
            message: "tokend is shutting down".into(),
        }
    }
}
