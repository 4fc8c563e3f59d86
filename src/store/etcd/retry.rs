//! Bounding and repeating calls to etcd: a member that hangs (a paused
//! process, a partition that keeps its port open), unlike one that is
//! gone, accepts a call and never answers it.
//!
//! Owns how long one call may take ([`ATTEMPT`]), which failures may pass
//! when tried again ([`may_pass`]), how long and how often a call is tried
//! ([`RETRY_FOR`], [`RETRY_PAUSES`]), and the one error a failed etcd call
//! becomes ([`unavailable`]). It must never repeat a call on its own: the
//! caller says a call is harmless to repeat by handing it to [`tried`] or
//! [`retried`]; a commit, which is not, reads back whether it landed
//! (`txn.rs`).

use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, reason};

/// Pauses between attempts at a call that failed to reach etcd: about 3 s in
/// all, long enough for the client to stop using a member that died.
pub(super) const RETRY_PAUSES: &[Duration] = &[
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_millis(1000),
    Duration::from_millis(1000),
];

/// How long a call is tried again while etcd does not answer: the caller
/// hears well before its request's own deadline (30 s), even when every
/// attempt goes to a member that hangs.
pub(super) const RETRY_FOR: Duration = Duration::from_secs(10);

/// The longest one small call to etcd (a get, a put, a transaction, a
/// lease grant) may take before it counts as failed and is tried again,
/// which the client may send to another member. A member that hangs (a
/// partition, a stalled disk, a paused process), unlike one that is gone,
/// accepts a call and never answers it: without a bound, the call would
/// wait until HTTP/2's pings give the member up (9 s, `connect.rs`), and
/// then fail.
pub(super) const ATTEMPT: Duration = Duration::from_secs(2);

/// Why an etcd call failed: etcd's answer, or none within [`ATTEMPT`].
pub(super) enum Failed {
    Answer(etcd_client::Error),
    NoAnswer,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Answer(e) => e.fmt(f),
            Failed::NoAnswer => write!(f, "no answer within {ATTEMPT:?}"),
        }
    }
}

/// One attempt at an etcd call, bounded by [`ATTEMPT`].
pub(super) async fn attempt<T>(
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Failed> {
    match tokio::time::timeout(ATTEMPT, call).await {
        Ok(answer) => answer.map_err(Failed::Answer),
        Err(_) => Err(Failed::NoAnswer),
    }
}

/// A call harmless to repeat, made by `call` on a clone of `client` and
/// tried until it is answered: an attempt at a time, each bounded by
/// [`ATTEMPT`] and sent to whichever member the client picks, pausing
/// [`RETRY_PAUSES`] between them, for up to [`RETRY_FOR`]. A failure that
/// `again` says may pass is tried again too; any other ends it at once.
/// Its answer, or the last failure.
pub(super) async fn tried<C: Clone, T, F>(
    client: &C,
    again: fn(&etcd_client::Error) -> bool,
    mut call: impl FnMut(C) -> F,
) -> Result<T, Failed>
where
    F: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let started = Instant::now();
    let mut pauses = RETRY_PAUSES.iter();
    loop {
        let failure = match attempt(call(client.clone())).await {
            Ok(answer) => return Ok(answer),
            Err(Failed::Answer(e)) if !again(&e) => return Err(Failed::Answer(e)),
            Err(failure) => failure,
        };
        match pauses.next() {
            Some(pause) if started.elapsed() < RETRY_FOR => tokio::time::sleep(*pause).await,
            _ => return Err(failure),
        }
    }
}

/// An etcd call harmless to repeat (a read, a put of a hint or of a key
/// whose value no one reads), [`tried`] until it is answered, also while
/// the member it went to was unreachable or lost its leader ([`may_pass`]).
/// Its answer, or the failure as [`unavailable`] while `doing` this: at
/// once when etcd answered about the call itself (permission denied,
/// compacted, no space), which another try would not change. One unbounded
/// call to a member that hangs would instead hold the request until
/// HTTP/2's pings give the member up, and then fail it.
pub(super) async fn retried<C: Clone, T, F>(
    doing: &str,
    client: &C,
    call: impl FnMut(C) -> F,
) -> Result<T, Error>
where
    F: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    tried(client, may_pass, call)
        .await
        .map_err(|failure| unavailable(doing, failure))
}

/// Whether a failed etcd call may pass when tried again: the member was
/// unreachable, lost its connection or its leader, or timed out, rather
/// than answering about the call.
pub(super) fn may_pass(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            Code::Unavailable
                | Code::Unknown
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Aborted
        ),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

pub(super) fn unavailable(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable {
        reason: reason::STORE_UNAVAILABLE,
        message: format!("etcd failure while {context}: {e}"),
    }
}
