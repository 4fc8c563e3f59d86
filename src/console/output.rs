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

pub(super) fn print_event(out: Output, e: &pb::TokenEvent) {
    let kind = pb::EventType::try_from(e.r#type)
        .map(|t| {
            t.as_str_name()
                .trim_start_matches("EVENT_TYPE_")
                .to_string()
        })
        .unwrap_or_default();
    match out {
        Output::Json => println!(
            "{}",
            json!({"revision": e.revision, "type": kind, "token": e.token.as_ref().map(token_json), "actor": e.actor, "time": e.time.as_ref().map(rfc3339)})
        ),
        Output::Table => {
            let t = e.token.clone().unwrap_or_default();
            println!(
                "{:>8}  {:<9} {:<14} {:<30} {}",
                e.revision, kind, t.id, t.name, e.actor
            );
        }
    }
    let _ = std::io::stdout().flush();
}

fn status_name(v: i32) -> String {
    pb::TokenStatus::try_from(v)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("TOKEN_STATUS_")
                .to_string()
        })
        .unwrap_or_default()
}

fn rfc3339(t: &prost_types::Timestamp) -> String {
    let at = UNIX_EPOCH + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
    humantime::format_rfc3339_seconds(at).to_string()
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
        "icon": t.icon, "status": status_name(t.status), "modules": t.modules, "etag": t.etag,
        "revision": t.revision, "audit": audit_json(&t.audit),
        "last_access_time": t.last_access_time.as_ref().map(rfc3339),
    })
}

fn account_json(a: &pb::Account) -> Value {
    let kind = pb::AccountType::try_from(a.r#type)
        .map(|t| {
            t.as_str_name()
                .trim_start_matches("ACCOUNT_TYPE_")
                .to_string()
        })
        .unwrap_or_default();
    let status = pb::AccountStatus::try_from(a.status)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("ACCOUNT_STATUS_")
                .to_string()
        })
        .unwrap_or_default();
    json!({
        "id": a.id, "name": a.name, "type": kind, "status": status, "modules": a.modules,
        "etag": a.etag, "revision": a.revision, "audit": audit_json(&a.audit),
    })
}

pub(super) fn print_tokens(out: Output, tokens: &[pb::Token]) {
    match out {
        Output::Json => println!("{}", Value::Array(tokens.iter().map(token_json).collect())),
        Output::Table => table(
            &["ID", "NAME", "STATUS", "ACCOUNT", "MODULES", "LAST ACCESS"],
            tokens
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        t.name.clone(),
                        status_name(t.status),
                        t.account_id.clone(),
                        t.modules.join(","),
                        t.last_access_time
                            .as_ref()
                            .map(rfc3339)
                            .unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect(),
        ),
    }
}

pub(super) fn print_accounts(out: Output, accounts: &[pb::Account]) {
    match out {
        Output::Json => println!(
            "{}",
            Value::Array(accounts.iter().map(account_json).collect())
        ),
        Output::Table => table(
            &["ID", "NAME", "TYPE", "STATUS", "MODULES"],
            accounts
                .iter()
                .map(|a| {
                    let j = account_json(a);
                    vec![
                        a.id.clone(),
                        a.name.clone(),
                        j["type"].as_str().unwrap_or_default().to_string(),
                        j["status"].as_str().unwrap_or_default().to_string(),
                        a.modules.join(","),
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
    println!("{}", line(header.iter().map(|h| h.to_string()).collect()));
    for row in rows {
        println!("{}", line(row));
    }
}
