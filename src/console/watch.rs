//! `tokend tokens watch`: prints every change as it is committed.
//!
//! Owns the printing, and when to give up: following the stream, resuming
//! it and re-syncing it is [`Follow`]'s job; this command only prints what
//! it hears and says on stderr when the stream broke or was re-synced. A
//! dropped connection or a stopped server is waited out; a refusal (a
//! revoked credential, an account it may not see) ends the command with its
//! exit code. It must never print a PROGRESS notice, nor reorder, repeat or
//! drop an event `Follow` hands it.

use tonic::{Code, Status};

use crate::cli::{EventTypeArg, Output};
use crate::client::watch::{Follow, Start, Update};

use super::output::{print_event, print_event_header};
use super::{Conn, Failure};

/// Prints events as they come. After a dropped connection it resumes from
/// the revision after the last one it saw (nothing lost, nothing repeated);
/// when that was compacted away it re-syncs with a snapshot.
pub(super) async fn run(
    conn: &Conn,
    out: Output,
    account_id: String,
    from: Option<i64>,
    types: Vec<EventTypeArg>,
) -> Result<(), Failure> {
    let mut follow = Follow::new(conn.tokens(), Start::from_revision(from.unwrap_or(0)))
        .account(account_id)
        .types(types.iter().map(|t| t.proto()));
    print_event_header(out);
    loop {
        match follow.next().await {
            Update::Snapshot(e) | Update::Synced(e) | Update::Change(e) => print_event(out, &e),
            Update::Progress(_) => {}
            // Said, as the interruption was: quiet retries in between
            // could otherwise read as a server gone for good.
            Update::Resumed { from } => eprintln!("tokend: stream resumed from revision {from}"),
            Update::Relisting { from } => {
                eprintln!("tokend: revision {from} was compacted; re-syncing with a snapshot");
            }
            // The server is not reachable (yet): keep trying, quietly.
            Update::OpenFailed { status, .. } if status.code() == Code::Unavailable => {}
            Update::Disconnected { status, .. } if dropped(&status) => {
                let next = match follow.start() {
                    Start::At(n) => format!("resuming from revision {n}"),
                    Start::Now | Start::Listing => "re-syncing with a snapshot".to_string(),
                };
                eprintln!("tokend: stream interrupted ({:?}); {next}", status.code());
            }
            Update::OpenFailed { status, .. } | Update::Disconnected { status, .. } => {
                return Err(status.into());
            }
        }
    }
}

/// How a stream ends when its connection drops or its server stops, as
/// opposed to a refusal.
fn dropped(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
    )
}
