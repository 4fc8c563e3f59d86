//! Translation between the wire (prost messages, `tonic::Status`) and the
//! domain. Owns the mapping of every domain [`Error`] to exactly one gRPC code
//! with a `google.rpc.ErrorInfo` (and `BadRequest` for invalid fields).
//! It must never put a secret into a message, nor make policy decisions.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::command::Expiry;
use crate::domain::{
    Account, AccountStatus, AccountType, Audit, AuditEntry, Event, EventKind, LATEST_SECONDS,
    Token, TokenId, TokenStatus,
};
use crate::error::{DOMAIN, Error, reason};
use crate::proto as pb;
use crate::state::Standing;
use crate::watch::Notice;

pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// The longest lifetime a request may name: a hundred years.
const MAX_LIFETIME: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A request's instant, checked: after 1970, before year 10000.
pub fn time_from(field: &'static str, t: &prost_types::Timestamp) -> Result<SystemTime, Error> {
    if !(0..=LATEST_SECONDS as i64).contains(&t.seconds) || !(0..1_000_000_000).contains(&t.nanos) {
        return Err(Error::invalid(
            field,
            "must be a valid instant between 1970 and 9999",
        ));
    }
    Ok(UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32))
}

/// A request's lifetime, checked: more than zero, at most a hundred years.
pub fn duration_from(field: &'static str, d: &prost_types::Duration) -> Result<Duration, Error> {
    let out = well_formed(field, d)?
        .ok()
        .filter(|d| !d.is_zero() && *d <= MAX_LIFETIME);
    out.ok_or_else(|| Error::invalid(field, "must be more than zero and at most 100 years"))
}

/// A protobuf Duration read as a `std` one: an error when it is not one
/// protobuf allows; inside, `Err` for a negative one. prost's conversion
/// normalises first, so it would read {5 s, -1 ns} or {10 s, 1.5e9 ns},
/// which protobuf forbids, as 4.999999999 s and 11.5 s: refused, as
/// [`time_from`] refuses such nanos.
pub fn well_formed(
    field: &'static str,
    d: &prost_types::Duration,
) -> Result<Result<Duration, prost_types::DurationError>, Error> {
    let signs_agree = (d.seconds >= 0 && d.nanos >= 0) || (d.seconds <= 0 && d.nanos <= 0);
    if !(-999_999_999..=999_999_999).contains(&d.nanos) || !signs_agree {
        return Err(Error::invalid(
            field,
            "must be a valid duration: nanos within ±999,999,999, with the sign of seconds",
        ));
    }
    Ok(Duration::try_from(*d))
}

/// A new token's expiry from the `expire_time` arm of a request's
/// `expiration` oneof.
pub fn expire_at(t: &prost_types::Timestamp) -> Result<Expiry, Error> {
    Ok(Expiry::At(time_from("expire_time", t)?))
}

/// A new token's expiry from the `ttl` arm of a request's `expiration`
/// oneof.
pub fn expire_after(d: &prost_types::Duration) -> Result<Expiry, Error> {
    Ok(Expiry::After(duration_from("ttl", d)?))
}

pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 0,
    })
}

fn audit_entry(e: &Option<AuditEntry>) -> Option<pb::AuditEntry> {
    e.as_ref().map(|e| pb::AuditEntry {
        at: Some(timestamp(e.at)),
        by: e.by.to_string(),
    })
}

fn audit(a: &Audit) -> Option<pb::Audit> {
    Some(pb::Audit {
        created: audit_entry(&a.created),
        updated: audit_entry(&a.updated),
        enabled: audit_entry(&a.enabled),
        disabled: audit_entry(&a.disabled),
        deleted: audit_entry(&a.deleted),
    })
}

pub fn token_status(s: TokenStatus) -> pb::TokenStatus {
    match s {
        TokenStatus::Active => pb::TokenStatus::Active,
        TokenStatus::Disabled => pb::TokenStatus::Disabled,
        TokenStatus::Deleted => pb::TokenStatus::Deleted,
    }
}

/// The name a filter compares an enum with: its proto name without the type
/// prefix (`TOKEN_STATUS_ACTIVE` → `ACTIVE`), so the proto stays the one
/// place these names are spelled.
fn short_name(proto_name: &'static str, prefix: &str) -> &'static str {
    proto_name.strip_prefix(prefix).unwrap_or(proto_name)
}

pub fn token_status_name(s: TokenStatus) -> &'static str {
    short_name(token_status(s).as_str_name(), "TOKEN_STATUS_")
}

pub fn account_status_name(s: AccountStatus) -> &'static str {
    short_name(account_status(s).as_str_name(), "ACCOUNT_STATUS_")
}

pub fn account_type_name(t: AccountType) -> &'static str {
    short_name(account_type(t).as_str_name(), "ACCOUNT_TYPE_")
}

/// How a verification outcome is named on each surface. [`Standing`] is the
/// one decision ([`crate::state::State::verify`]); the others translate it:
///
/// | `Standing`        | `VerifyResult` (VerifyToken) | ext_authz `Denial` (Check)        | API authentication |
/// |-------------------|------------------------------|-----------------------------------|--------------------|
/// | `Valid`           | `VALID`                      | allowed (or 403 `module_missing`) | the caller         |
/// | `Malformed`       | `MALFORMED`                  | 401 `malformed_credential`        | `UNAUTHENTICATED`  |
/// | `NotFound`        | `NOT_FOUND`                  | 401 `invalid_credential`          | `UNAUTHENTICATED`  |
/// | `Disabled`        | `DISABLED`                   | 401 `token_disabled`              | `UNAUTHENTICATED`  |
/// | `AccountDisabled` | `ACCOUNT_DISABLED`           | 401 `account_disabled`            | `UNAUTHENTICATED`  |
/// | `Expired`         | `EXPIRED`                    | 401 `token_expired`               | `UNAUTHENTICATED` (`CREDENTIAL_EXPIRED`) |
///
/// A client's [`crate::client::Verdict`] mirrors `VerifyResult` one for one,
/// as its [`crate::client::TokenCache`] decides it from memory.
pub fn verify_result(s: Standing) -> pb::VerifyResult {
    match s {
        Standing::Valid => pb::VerifyResult::Valid,
        Standing::Malformed => pb::VerifyResult::Malformed,
        Standing::NotFound => pb::VerifyResult::NotFound,
        Standing::Disabled => pb::VerifyResult::Disabled,
        Standing::AccountDisabled => pb::VerifyResult::AccountDisabled,
        Standing::Expired => pb::VerifyResult::Expired,
    }
}

pub fn token(t: &Token, last_access: Option<SystemTime>) -> pb::Token {
    pb::Token {
        id: t.id.to_string(),
        account_id: t.account_id.to_string(),
        name: t.name.clone(),
        description: t.description.clone(),
        icon: t.icon.clone().unwrap_or_default(),
        status: token_status(t.status) as i32,
        modules: t.modules.iter().map(String::from).collect(),
        etag: t.etag(),
        revision: t.revision as i64,
        audit: audit(&t.audit),
        last_access_time: last_access.or(t.last_access_time).map(timestamp),
        expire_time: t.expire_time.map(timestamp),
        replaces: t
            .replaces
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        replaced_by: t
            .replaced_by
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
    }
}

pub fn account_type(t: AccountType) -> pb::AccountType {
    match t {
        AccountType::Client => pb::AccountType::Client,
        AccountType::Vendor => pb::AccountType::Vendor,
        AccountType::Operations => pb::AccountType::Operations,
    }
}

pub fn account_type_from(v: i32) -> Result<AccountType, Error> {
    match pb::AccountType::try_from(v) {
        Ok(pb::AccountType::Client) => Ok(AccountType::Client),
        Ok(pb::AccountType::Vendor) => Ok(AccountType::Vendor),
        Ok(pb::AccountType::Operations) => Ok(AccountType::Operations),
        _ => Err(Error::invalid(
            "type",
            "must be ACCOUNT_TYPE_CLIENT, ACCOUNT_TYPE_VENDOR or ACCOUNT_TYPE_OPERATIONS",
        )),
    }
}

pub fn account_status(s: AccountStatus) -> pb::AccountStatus {
    match s {
        AccountStatus::Active => pb::AccountStatus::Active,
        AccountStatus::Disabled => pb::AccountStatus::Disabled,
    }
}

pub fn account_status_from(field: &'static str, v: i32) -> Result<AccountStatus, Error> {
    match pb::AccountStatus::try_from(v) {
        Ok(pb::AccountStatus::Active) => Ok(AccountStatus::Active),
        Ok(pb::AccountStatus::Disabled) => Ok(AccountStatus::Disabled),
        _ => Err(Error::invalid(
            field,
            "must be ACCOUNT_STATUS_ACTIVE or ACCOUNT_STATUS_DISABLED",
        )),
    }
}

pub fn account(a: &Account) -> pb::Account {
    pb::Account {
        id: a.id.to_string(),
        name: a.name.clone(),
        r#type: account_type(a.kind) as i32,
        status: account_status(a.status) as i32,
        modules: a.modules.iter().map(String::from).collect(),
        etag: a.etag(),
        revision: a.revision as i64,
        audit: audit(&a.audit),
        max_token_lifetime: a.max_token_lifetime.map(duration),
    }
}

pub fn event_type(k: EventKind) -> pb::EventType {
    match k {
        EventKind::Created => pb::EventType::Created,
        EventKind::Updated => pb::EventType::Updated,
        EventKind::Enabled => pb::EventType::Enabled,
        EventKind::Disabled => pb::EventType::Disabled,
        EventKind::Deleted => pb::EventType::Deleted,
    }
}

pub fn event_kind_from(v: i32) -> Result<EventKind, Error> {
    match pb::EventType::try_from(v) {
        Ok(pb::EventType::Created) => Ok(EventKind::Created),
        Ok(pb::EventType::Updated) => Ok(EventKind::Updated),
        Ok(pb::EventType::Enabled) => Ok(EventKind::Enabled),
        Ok(pb::EventType::Disabled) => Ok(EventKind::Disabled),
        Ok(pb::EventType::Deleted) => Ok(EventKind::Deleted),
        _ => Err(Error::invalid(
            "types",
            "only change types (EVENT_TYPE_CREATED … EVENT_TYPE_DELETED) can be filtered",
        )),
    }
}

/// A committed change as streams and audit trails carry it.
pub fn change_event(e: &Event) -> pb::TokenEvent {
    pb::TokenEvent {
        revision: e.revision as i64,
        r#type: event_type(e.kind) as i32,
        token: e.token().map(|t| token(t, None)),
        time: Some(timestamp(e.time)),
        actor: e.actor.to_string(),
    }
}

/// A watch's notice on the wire. A snapshot is the token as it is now, its
/// `last_access` included (not history: no change event carries it).
pub fn notice(n: &Notice, last_access: impl Fn(&TokenId) -> Option<SystemTime>) -> pb::TokenEvent {
    let bare = |revision: u64, kind: pb::EventType| pb::TokenEvent {
        revision: revision as i64,
        r#type: kind as i32,
        token: None,
        time: Some(timestamp(SystemTime::now())),
        actor: String::new(),
    };
    match n {
        Notice::Change(e) => change_event(e),
        Notice::Snapshot { revision, token: t } => pb::TokenEvent {
            token: Some(token(t, last_access(&t.id))),
            ..bare(*revision, pb::EventType::Snapshot)
        },
        Notice::Synced(r) => bare(*r, pb::EventType::Synced),
        Notice::Progress(r) => bare(*r, pb::EventType::Progress),
    }
}

/// Revisions on the wire are int64 (as etcd's): negative is a client bug.
pub fn revision_from(field: &'static str, v: i64) -> Result<u64, Error> {
    u64::try_from(v).map_err(|_| Error::invalid(field, "must not be negative"))
}

/// The single place where a domain error becomes a gRPC status.
impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let message = e.to_string();
        let info = |reason: &str, meta: HashMap<String, String>| {
            ErrorDetails::with_error_info(reason, DOMAIN, meta)
        };
        let (code, details) = match &e {
            Error::InvalidArgument { field, message } => {
                let mut d = info(
                    reason::INVALID_ARGUMENT,
                    [("field".into(), field.to_string())].into(),
                );
                d.add_bad_request_violation(*field, message.clone());
                (Code::InvalidArgument, d)
            }
            Error::NotFound { what, id } => {
                let r = if *what == "account" {
                    reason::ACCOUNT_NOT_FOUND
                } else {
                    reason::TOKEN_NOT_FOUND
                };
                (Code::NotFound, info(r, [("id".into(), id.clone())].into()))
            }
            Error::FailedPrecondition { reason, .. } => {
                (Code::FailedPrecondition, info(reason, HashMap::new()))
            }
            Error::EtagMismatch { current, .. } => (
                Code::Aborted,
                info(
                    reason::ETAG_MISMATCH,
                    [("current_etag".into(), current.clone())].into(),
                ),
            ),
            Error::Compacted { requested, oldest } => (
                Code::OutOfRange,
                info(
                    reason::REVISION_COMPACTED,
                    [
                        ("requested_revision".into(), requested.to_string()),
                        ("oldest_revision".into(), oldest.to_string()),
                    ]
                    .into(),
                ),
            ),
            Error::TooManyWatchers { limit } => (
                Code::ResourceExhausted,
                info(
                    reason::TOO_MANY_WATCHERS,
                    [("limit".into(), limit.to_string())].into(),
                ),
            ),
            Error::TokenIdsExhausted { issued, limit } => (
                Code::ResourceExhausted,
                info(
                    reason::TOKEN_IDS_EXHAUSTED,
                    [
                        ("issued".into(), issued.to_string()),
                        ("limit".into(), limit.to_string()),
                    ]
                    .into(),
                ),
            ),
            Error::Unavailable { reason, .. } => (Code::Unavailable, info(reason, HashMap::new())),
            Error::Internal(_) => (Code::Internal, info(reason::INTERNAL, HashMap::new())),
            Error::Unauthenticated => (
                Code::Unauthenticated,
                info(reason::UNAUTHENTICATED, HashMap::new()),
            ),
            Error::CredentialRevoked(_) => (
                Code::Unauthenticated,
                info(reason::CREDENTIAL_REVOKED, HashMap::new()),
            ),
            Error::CredentialExpired => (
                Code::Unauthenticated,
                info(reason::CREDENTIAL_EXPIRED, HashMap::new()),
            ),
            Error::PermissionDenied(_) => (
                Code::PermissionDenied,
                info(reason::PERMISSION_DENIED, HashMap::new()),
            ),
        };
        let mut status = Status::with_error_details(code, message, details);
        // Plain metadata too, so grpcurl users and clients without the rich
        // error model can still read the oldest retained revision.
        if let Error::Compacted { oldest, .. } = e
            && let Ok(v) = oldest.to_string().parse()
        {
            status.metadata_mut().insert("x-oldest-revision", v);
        }
        status
    }
}
