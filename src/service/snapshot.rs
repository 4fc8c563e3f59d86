//! `SaveSnapshot`: the store's state at one revision, streamed to an operator
//! as the bytes of a snapshot file (format: `crate::store::snapshot`).
//!
//! Owns turning the published [`State`](crate::state::State) into chunks on
//! the wire. The state is an immutable snapshot (persistent maps), so
//! writers and readers go on while it is encoded; nothing here takes a lock
//! or touches a backend's files, so it works the same on sled and etcd. It
//! must never send a plain secret (the state holds none) nor log the bytes.

use std::io;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::error::Error;
use crate::proto as pb;
use crate::store::{Store, snapshot};

/// Bytes per message: well under every client's default 4 MiB limit.
const CHUNK: usize = 256 * 1024;

pub type ChunkStream = ReceiverStream<Result<pb::SnapshotChunk, Status>>;

/// An `io::Write` that sends what it is given as chunks; fails once the
/// caller has gone, which stops the encoding.
struct Sender {
    tx: mpsc::Sender<Result<pb::SnapshotChunk, Status>>,
    buf: Vec<u8>,
}

impl Sender {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(pb::SnapshotChunk { data }))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the caller went away"))
    }
}

impl io::Write for Sender {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// Starts encoding the latest state, with the tombstones the store holds,
/// on a blocking thread; the stream ends after the file's last byte, or
/// with INTERNAL if encoding failed.
pub async fn save(store: &dyn Store) -> Result<ChunkStream, Error> {
    let state = store.state();
    // Read after the state: every tombstone of it is there. One deleted
    // since is left out (the state has it live), and so is one whose id
    // the state had not issued yet (created and deleted since): the file is
    // the state at its revision, exactly.
    let mut tombstones = Vec::new();
    crate::store::scan_tombstones(store, None, None, 1_000, |t| {
        if state.token(&t.id).is_none() && state.token_id_taken(&t.id) {
            tombstones.push(t);
        }
        std::ops::ControlFlow::Continue(())
    })
    .await?;
    let page_key = store.page_key();
    // A few chunks in flight: a slow reader holds the encoder back, not memory.
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut out = Sender {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        match snapshot::write(&state, &tombstones, &page_key, &mut out) {
            Ok(summary) => tracing::info!(
                revision = summary.revision,
                tokens = summary.tokens,
                accounts = summary.accounts,
                "snapshot sent"
            ),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                tracing::info!("snapshot abandoned by the caller")
            }
            Err(e) => {
                let failed = Error::Internal(format!("writing the snapshot: {e}"));
                let _ = tx.blocking_send(Err(failed.into()));
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}
