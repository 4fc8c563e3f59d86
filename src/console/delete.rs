//! `tokend tokens delete`: the platform's delete dialog at a terminal.
//!
//! Owns the flow: ask the server what would be deleted (`validate_only`),
//! show the token's name and id, warn that a deleted token can't be restored
//! or reused, ask for `yes`, then delete with the etag that was shown. It
//! must never delete without that answer or `--yes` (no terminal: refuse),
//! and never delete a token that changed after it was shown.

use std::io::{BufRead, IsTerminal, Write};

use serde_json::json;
use tonic::Code;

use crate::cli::Output;
use crate::client::TokenClient;
use crate::proto as pb;

use super::output::token_json;
use super::{Failure, exit, fail};

/// The platform's delete flow: show what would be deleted (validate_only),
/// warn, ask, then delete with the etag that was shown, so a token changed
/// in between is not deleted.
pub(super) async fn run(
    c: &mut TokenClient,
    out: Output,
    id: String,
    yes: bool,
) -> Result<(), Failure> {
    let preview = c
        .delete_token(pb::DeleteTokenRequest {
            id: id.clone(),
            validate_only: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    let shown = preview
        .token
        .ok_or_else(|| fail(exit::NOT_FOUND, format!("token {id} not found")))?;
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(fail(
                exit::USAGE,
                "refusing to delete without confirmation: stdin is not a terminal (pass --yes)",
            ));
        }
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "Delete API token '{}' ({})?", shown.name, shown.id);
        let _ = writeln!(stdout, "A deleted token can't be restored or reused.");
        let _ = write!(stdout, "Type 'yes' to delete: ");
        let _ = stdout.flush();
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .map_err(|e| fail(exit::USAGE, format!("reading the answer: {e}")))?;
        if !matches!(answer.trim(), "yes" | "y" | "YES" | "Yes") {
            return Err(fail(exit::DECLINED, "not deleted"));
        }
    }
    let r = c
        .delete_token(pb::DeleteTokenRequest {
            id: shown.id.clone(),
            etag: shown.etag.clone(),
            ..Default::default()
        })
        .await;
    let r = match r {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == Code::Aborted => {
            return Err(fail(
                exit::CONFLICT,
                format!(
                    "API token '{}' ({}) changed after it was shown; nothing was deleted. Run the command again to review it.",
                    shown.name, shown.id
                ),
            ));
        }
        Err(s) => return Err(s.into()),
    };
    let tomb = r.token.unwrap_or(shown);
    match out {
        Output::Json => say!(
            "{}",
            json!({"token": token_json(&tomb), "revision": r.revision})
        ),
        Output::Table => say!(
            "API token '{}' ({}) was deleted successfully.",
            tomb.name,
            tomb.id
        ),
    }
    Ok(())
}
