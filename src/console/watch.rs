//! `tokend tokens watch`: prints every change as it is committed.
//!
//! Owns the printing and when to give up: after a dropped connection it
//! goes on where it left off; a refusal ends the command with its exit
//! code. It must never print an event twice or skip one, and never print a
//! PROGRESS notice.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::cli::Output;
use crate::proto as pb;

use super::output::print_event;
use super::{Conn, Failure};

/// Prints events as they come. After a dropped connection it resumes from
/// the last revision it saw (nothing lost, nothing repeated); when that is
/// compacted away it re-syncs with a snapshot.
pub(super) async fn run(
    conn: &Conn,
    out: Output,
    account_id: String,
    from: Option<i64>,
    types: Vec<crate::cli::EventTypeArg>,
) -> Result<(), Failure> {
    let types: Vec<i32> = types.iter().map(|t| t.proto() as i32).collect();
    let mut next = from.unwrap_or(0);
    let mut resync = false;
    let mut backoff = Duration::from_millis(100);
    loop {
        let request = pb::WatchTokensRequest {
            account_id: account_id.clone(),
            start_revision: if resync { 0 } else { next },
            send_initial: resync,
            types: types.clone(),
        };
        let mut c = conn.tokens();
        let opened = c.watch_tokens(request).await;
        let mut stream = match opened {
            Ok(s) => s.into_inner(),
            Err(s) if compacted(&s) => {
                eprintln!("tokend: revision {next} was compacted; re-syncing with a snapshot");
                resync = true;
                continue;
            }
            Err(s) if s.code() == Code::Unavailable => {
                // Never saw a revision: "from now" would skip the outage.
                resync = next == 0;
                retry(&mut backoff).await;
                continue;
            }
            Err(s) => return Err(s.into()),
        };
        resync = false;
        backoff = Duration::from_millis(100);
        loop {
            match stream.message().await {
                Ok(Some(e)) => {
                    if e.r#type == pb::EventType::Progress as i32
                        || e.r#type == pb::EventType::Synced as i32
                    {
                        next = next.max(e.revision + 1);
                    } else if e.r#type != pb::EventType::Snapshot as i32 {
                        next = e.revision + 1;
                    }
                    if e.r#type != pb::EventType::Progress as i32 {
                        print_event(out, &e);
                    }
                }
                Ok(None) => break,
                Err(s) if compacted(&s) => {
                    resync = true;
                    break;
                }
                Err(s)
                    if matches!(
                        s.code(),
                        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
                    ) =>
                {
                    eprintln!(
                        "tokend: stream interrupted ({:?}); resuming from revision {next}",
                        s.code()
                    );
                    resync = next == 0;
                    retry(&mut backoff).await;
                    break;
                }
                Err(s) => return Err(s.into()),
            }
        }
    }
}

fn compacted(s: &Status) -> bool {
    s.code() == Code::OutOfRange
        && s.get_details_error_info()
            .is_some_and(|i| i.reason == "REVISION_COMPACTED")
}

async fn retry(backoff: &mut Duration) {
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
}
