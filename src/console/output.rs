//! How the console shows things: tables for people, one JSON value per
//! answer (or per event) for scripts.
//!
//! Owns every rendering of tokens, accounts and events, and the names their
//! enums are shown by. It must never render a secret: `tokens create`
//! prints the one it returns itself, and no type rendered here holds one.

use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::cli::Output;
use crate::proto as pb;

/// The head of a table of events ([`print_event`]'s columns), printed
/// before the first: a watch's before anything happens. None for JSON,
/// whose every line is an event.
pub(super) fn print_event_header(out: Output) {
    if out == Output::Table {
        print_event_row(["TIME", "REVISION", "TYPE", "TOKEN", "NAME", "ACTOR"]);
    }
}

pub(super) fn print_event(out: Output, e: &pb::TokenEvent) {
    let kind = name::<pb::EventType>(e.r#type);
    match out {
        Output::Json => say!(
            "{}",
            json!({"revision": e.revision, "type": kind, "token": e.token.as_ref().map(token_json), "actor": e.actor, "time": e.time.as_ref().map(rfc3339)})
        ),
        Output::Table => {
            let t = e.token.as_ref();
            let at = e.time.as_ref().map(rfc3339).unwrap_or_default();
            let revision = e.revision.to_string();
            let (id, token_name) = t.map_or(("", ""), |t| (&t.id[..], &t.name[..]));
            print_event_row([&at, &revision, kind, id, token_name, &e.actor]);
        }
    }
    let _ = std::io::stdout().flush();
}

/// One line of an event table: columns of fixed width (a watch cannot
/// size them to rows it has not seen), the name's wider, the actor last.
fn print_event_row(columns: [&str; 6]) {
    say!("{}", event_row(columns));
}

/// The revision's column fits 13 digits: a restored store numbers its
/// changes from a trillion past the snapshot's (`RESTORE_GAP`).
fn event_row([at, revision, kind, id, name, actor]: [&str; 6]) -> String {
    format!("{at:<20}  {revision:>13}  {kind:<9} {id:<14} {name:<30} {actor}")
}

/// A proto enum value as the console shows it: prost's `as_str_name()`
/// without the enum's own prefix (`TOKEN_STATUS_ACTIVE` is `ACTIVE`), and
/// empty for a value this build does not know.
pub(super) fn name<E: ProtoEnum>(value: i32) -> &'static str {
    let Ok(known) = E::try_from(value) else {
        return "";
    };
    // Every enum's zero value is `<PREFIX>UNSPECIFIED`.
    let prefix = E::default().str_name().trim_end_matches("UNSPECIFIED");
    let full = known.str_name();
    full.strip_prefix(prefix).unwrap_or(full)
}

/// The generated enums the console shows by [`name`].
pub(super) trait ProtoEnum: TryFrom<i32> + Default {
    fn str_name(&self) -> &'static str;
}

macro_rules! proto_enums {
    ($($t:ty),*) => {$(
        impl ProtoEnum for $t {
            fn str_name(&self) -> &'static str {
                self.as_str_name()
            }
        }
    )*};
}

proto_enums!(
    pb::TokenStatus,
    pb::AccountType,
    pb::AccountStatus,
    pb::EventType,
    pb::VerifyResult
);

/// An instant as RFC 3339; one RFC 3339 cannot write (past the year 9999,
/// from a server that sent one) as seconds, rather than a panic that would
/// lose the output, and with it a new token's one-time secret.
pub(super) fn rfc3339(t: &prost_types::Timestamp) -> String {
    let at = UNIX_EPOCH + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
    use std::fmt::Write;
    let mut out = String::new();
    match write!(out, "{}", humantime::format_rfc3339_seconds(at)) {
        Ok(()) => out,
        Err(_) => format!("{} seconds after 1970-01-01T00:00:00Z", t.seconds),
    }
}

fn audit_json(a: &Option<pb::Audit>) -> Value {
    let entry = |e: &Option<pb::AuditEntry>| {
        e.as_ref()
            .map(|e| json!({"at": e.at.as_ref().map(rfc3339), "by": e.by}))
    };
    match a {
        None => Value::Null,
        Some(a) => json!({
            "created": entry(&a.created), "updated": entry(&a.updated),
            "enabled": entry(&a.enabled), "disabled": entry(&a.disabled), "deleted": entry(&a.deleted),
        }),
    }
}

pub(super) fn token_json(t: &pb::Token) -> Value {
    json!({
        "id": t.id, "account_id": t.account_id, "name": t.name, "description": t.description,
        "icon": t.icon, "status": name::<pb::TokenStatus>(t.status), "modules": t.modules, "etag": t.etag,
        "revision": t.revision, "audit": audit_json(&t.audit),
        "last_access_time": t.last_access_time.as_ref().map(rfc3339),
        "expire_time": t.expire_time.as_ref().map(rfc3339),
        "replaces": (!t.replaces.is_empty()).then_some(&t.replaces),
        "replaced_by": (!t.replaced_by.is_empty()).then_some(&t.replaced_by),
    })
}

fn account_json(a: &pb::Account) -> Value {
    json!({
        "id": a.id, "name": a.name, "type": name::<pb::AccountType>(a.r#type),
        "status": name::<pb::AccountStatus>(a.status), "modules": a.modules,
        "etag": a.etag, "revision": a.revision, "audit": audit_json(&a.audit),
        "max_token_lifetime_seconds": a.max_token_lifetime.as_ref().map(|d| d.seconds),
    })
}

pub(super) fn print_tokens(out: Output, tokens: &[pb::Token]) {
    match out {
        Output::Json => say!("{}", Value::Array(tokens.iter().map(token_json).collect())),
        Output::Table => table(
            &[
                "ID",
                "NAME",
                "STATUS",
                "ACCOUNT",
                "MODULES",
                "LAST ACCESS",
                "EXPIRES",
            ],
            tokens
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        t.name.clone(),
                        name::<pb::TokenStatus>(t.status).to_string(),
                        t.account_id.clone(),
                        t.modules.join(","),
                        t.last_access_time
                            .as_ref()
                            .map(rfc3339)
                            .unwrap_or_else(|| "-".into()),
                        t.expire_time
                            .as_ref()
                            .map(rfc3339)
                            .unwrap_or_else(|| "never".into()),
                    ]
                })
                .collect(),
        ),
    }
}

pub(super) fn print_accounts(out: Output, accounts: &[pb::Account]) {
    match out {
        Output::Json => say!(
            "{}",
            Value::Array(accounts.iter().map(account_json).collect())
        ),
        Output::Table => table(
            &[
                "ID",
                "NAME",
                "TYPE",
                "STATUS",
                "MODULES",
                "MAX TOKEN LIFETIME",
            ],
            accounts
                .iter()
                .map(|a| {
                    let lifetime = a
                        .max_token_lifetime
                        .and_then(|d| std::time::Duration::try_from(d).ok())
                        .map_or("-".to_string(), crate::domain::in_words);
                    vec![
                        a.id.clone(),
                        a.name.clone(),
                        name::<pb::AccountType>(a.r#type).to_string(),
                        name::<pb::AccountStatus>(a.status).to_string(),
                        a.modules.join(","),
                        lifetime,
                    ]
                })
                .collect(),
        ),
    }
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    say!("{}", line(header.iter().map(|h| h.to_string()).collect()));
    for row in rows {
        say!("{}", line(row));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_names_lose_their_prefix_and_nothing_else() {
        let cases = [
            (name::<pb::TokenStatus>(1), "ACTIVE"),
            (name::<pb::AccountType>(1), "CLIENT"),
            (name::<pb::VerifyResult>(5), "ACCOUNT_DISABLED"),
            (name::<pb::EventType>(7), "SYNCED"),
            (name::<pb::AccountStatus>(0), "UNSPECIFIED"),
            // A value this build does not know.
            (name::<pb::TokenStatus>(99), ""),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    /// A restored store's revisions (a trillion and up) keep the columns
    /// where the head puts them.
    #[test]
    fn a_restored_stores_revisions_fit_the_event_table() {
        let head = event_row(["TIME", "REVISION", "TYPE", "TOKEN", "NAME", "ACTOR"]);
        let revision = (crate::store::snapshot::RESTORE_GAP + 4_182).to_string();
        let row = event_row([
            "2026-12-05T19:30:00Z",
            &revision,
            "DELETED",
            "TKN-0001-2345",
            "ci-deploy",
            "TKN-0000-0001",
        ]);
        for (column, value) in [("TYPE", "DELETED"), ("TOKEN", "TKN-0001-2345")] {
            assert_eq!(head.find(column), row.find(value), "{head}\n{row}");
        }
        assert_eq!(
            head.find("REVISION").map(|at| at + "REVISION".len()),
            row.find(&revision[..]).map(|at| at + revision.len()),
            "{head}\n{row}"
        );
    }

    /// humantime cannot write a year past 9999 (its `Display` fails, and
    /// `to_string` would panic): such an instant is printed as seconds.
    #[test]
    fn an_instant_past_the_year_9999_is_printed_as_seconds() {
        let at = |seconds| rfc3339(&prost_types::Timestamp { seconds, nanos: 0 });
        assert_eq!(at(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(
            at(253_402_300_800),
            "253402300800 seconds after 1970-01-01T00:00:00Z"
        );
    }
}
