//! The floor peer: the least a durable, watched delete can cost on tokend's
//! own stack, measured beside tokend and etcd in the same run.
//!
//! A third server process (this binary, started with `--floor-server`) that
//! speaks tokend's `TokenService` over the same tonic + prost + HTTP/2 stack,
//! so the load tool drives it with exactly the client code it uses for
//! tokend. It keeps tokend's group commit and nothing else (tokend plans on
//! the caller's task; this has nothing to plan): each delete joins the next
//! batch on the caller's task, and the first one while the writer thread
//! sleeps commits the batch itself at once if the load is calm, else waits
//! one turn of the scheduler, then wakes the writer, as tokend's do; whoever
//! commits takes the whole batch, appends it as one write to a log allocated
//! ahead as tokend's is, `fdatasync`s once for the batch, then answers and
//! broadcasts the events, each encoded once as tokend's are, to every
//! `WatchTokens` stream. No authentication, no planning against state, no
//! database, no retained log, no per-call metrics or logging. What tokend
//! spends beyond this is its own; what this spends, any tonic service that
//! answers "deleted" only once it is on disk must spend.
//!
//! It is a measuring instrument, not a store: tokens live in memory (creating
//! them is not durable; only deletes are measured), and a watch stream that
//! lags simply ends.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Instant, SystemTime};

use prost::Message;
use tokend::proto as pb;
use tokend::proto::token_service_server::{TokenService, TokenServiceServer};
use tokend::telemetry;
use tokio::sync::{broadcast, oneshot};
use tokio_stream::{Stream, StreamExt, wrappers::BroadcastStream};
use tonic::{Request, Response, Status};

/// The next batch, and whether the writer sleeps waiting for one (the
/// first delete to join it wakes it, or commits it itself). Unbounded: the
/// bench never has more deletes in flight than tokend's store takes in one
/// batch (1,024).
struct Queue {
    next: Mutex<Next>,
    ready: Condvar,
    /// Held by whoever commits a batch, the writer thread or a lone
    /// caller: batches reach the log one at a time, in the order taken.
    log: Mutex<Log>,
}

#[derive(Default)]
struct Next {
    deletes: Vec<Delete>,
    writer_waiting: bool,
    /// Deletes queued in a row while no commit ran (tokend's `calm`).
    calm: u8,
}

/// As tokend's `CALM`.
const CALM: u8 = 4;

/// Wakes the writer when dropped, however the caller's task ends.
struct Wake<'a>(&'a Condvar);

impl Drop for Wake<'_> {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

impl Queue {
    /// As tokend's store: the first delete queued while the writer sleeps
    /// commits the batch itself at once if the load is `calm`; else (or if
    /// it cannot) it lets the runtime run every other ready task once, so
    /// that the deletes that arrived with it join the batch, then wakes the
    /// writer.
    async fn commit_or_wake(&self, calm: bool) {
        let wake = Wake(&self.ready);
        if !calm {
            tokio::task::yield_now().await;
        } else if self.commit_here() {
            std::mem::forget(wake);
        }
    }

    /// Commits the next batch on the caller's thread, and true, if it holds
    /// one delete (the caller's) and no commit is running.
    fn commit_here(&self) -> bool {
        let Ok(mut log) = self.log.try_lock() else {
            return false;
        };
        let batch = {
            let mut next = self.next.lock().expect("floor queue");
            if next.calm < CALM || next.deletes.len() != 1 {
                return false;
            }
            std::mem::take(&mut next.deletes)
        };
        log.commit(batch);
        let mut next = self.next.lock().expect("floor queue");
        let queued = !next.deletes.is_empty();
        next.writer_waiting = !queued;
        if queued {
            self.ready.notify_one();
        }
        true
    }
}

struct Delete {
    token: pb::Token,
    reply: oneshot::Sender<i64>,
}

struct Floor {
    tokens: Mutex<HashMap<String, pb::Token>>,
    next_id: AtomicU64,
    queue: std::sync::Arc<Queue>,
    events: broadcast::Sender<pb::EncodedEvent>,
}

/// Serves the floor on `listen` with its fsync counter on `metrics` (the
/// same series name as tokend's) and its log in `dir`, until killed.
pub async fn serve(listen: SocketAddr, metrics: SocketAddr, dir: &Path) {
    telemetry::install_prometheus(metrics).expect("floor metrics");
    std::fs::create_dir_all(dir).expect("floor data dir");
    let events = broadcast::channel(1024).0;
    let queue = std::sync::Arc::new(Queue {
        next: Mutex::default(),
        ready: Condvar::new(),
        log: Mutex::new(Log {
            file: File::create(dir.join("floor.log")).expect("floor log"),
            written: 0,
            allocated: 0,
            revision: 0,
            buf: Vec::new(),
            // Registered once, as tokend's writer does.
            fsync_duration: metrics::histogram!(telemetry::FSYNC_DURATION),
            events: events.clone(),
        }),
    });
    let deletes = queue.clone();
    std::thread::Builder::new()
        .name("floor-writer".into())
        .spawn(move || write_loop(&deletes))
        .expect("floor writer");
    let floor = Floor {
        tokens: Mutex::default(),
        next_id: AtomicU64::new(1),
        queue,
        events,
    };
    tonic::transport::Server::builder()
        // As tokend's listener: without it a two-segment answer waits for a
        // delayed ACK.
        .tcp_nodelay(true)
        .add_service(TokenServiceServer::new(floor))
        .serve(listen)
        .await
        .expect("floor server");
}

/// The writer thread: commits each batch a caller did not commit itself.
fn write_loop(queue: &Queue) {
    loop {
        {
            let mut next = queue.next.lock().expect("floor queue");
            if next.deletes.is_empty() {
                next.writer_waiting = true;
                next = queue.ready.wait(next).expect("floor queue");
                next.writer_waiting = false;
            }
        }
        // The batch is taken under the log's lock, so batches reach the
        // log in the order they were taken; a lone caller may have taken
        // this one meanwhile.
        let mut log = queue.log.lock().expect("floor log");
        let batch = std::mem::take(&mut queue.next.lock().expect("floor queue").deletes);
        log.commit(batch);
    }
}

/// The log and what a commit needs.
struct Log {
    file: File,
    /// Bytes appended so far, and bytes allocated ahead of them.
    written: u64,
    allocated: u64,
    revision: i64,
    buf: Vec<u8>,
    fsync_duration: metrics::Histogram,
    events: broadcast::Sender<pb::EncodedEvent>,
}

impl Log {
    /// tokend's group commit, minus the state and the database: one append
    /// and one fdatasync for everything queued, then the answers, then the
    /// events.
    fn commit(&mut self, batch: Vec<Delete>) {
        if batch.is_empty() {
            return;
        }
        self.buf.clear();
        let mut announced = Vec::with_capacity(batch.len());
        for d in &batch {
            self.revision += 1;
            let event = pb::TokenEvent {
                revision: self.revision,
                r#type: pb::EventType::Deleted as i32,
                token: Some(d.token.clone()),
                time: Some(SystemTime::now().into()),
                actor: "floor".into(),
            };
            event
                .encode_length_delimited(&mut self.buf)
                .expect("a Vec grows");
            // Encoded once for every stream, as tokend does.
            announced.push((self.revision, pb::EncodedEvent::new(&event)));
        }
        let started = Instant::now();
        self.append();
        self.fsync_duration.record(started.elapsed().as_secs_f64());
        for (d, (revision, event)) in batch.into_iter().zip(announced) {
            let _ = d.reply.send(revision);
            let _ = self.events.send(event);
        }
    }

    /// One write and one fdatasync, into space allocated ahead as tokend's
    /// log segments are (`sled/wal.rs`): an `fdatasync` that must also
    /// record a larger file size costs about half as much again (185
    /// against 128 µs on this machine kind's ext4). Kept out of line so
    /// that a profile tells it from the rest of the loop
    /// (`perf-breakdown.py`).
    #[inline(never)]
    fn append(&mut self) {
        let end = self.written + self.buf.len() as u64;
        if end > self.allocated {
            // Where tokend starts its next segment: 4 MiB more.
            self.allocated = end.next_multiple_of(PREALLOCATE);
            rustix::fs::fallocate(
                &self.file,
                rustix::fs::FallocateFlags::empty(),
                0,
                self.allocated,
            )
            .expect("floor log fallocate");
        }
        self.file.write_all(&self.buf).expect("floor log write");
        self.file.sync_data().expect("floor log fdatasync");
        self.written = end;
    }
}

/// tokend's log segment size (`sled/wal.rs`).
const PREALLOCATE: u64 = 4 << 20;

type EventStream = std::pin::Pin<Box<dyn Stream<Item = Result<pb::EncodedEvent, Status>> + Send>>;

fn not_here<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented(
        "the floor serves create, delete and watch",
    ))
}

#[tonic::async_trait]
impl TokenService for Floor {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let r = request.into_inner();
        let id = format!("TKN-{:013}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let token = pb::Token {
            id: id.clone(),
            account_id: r.account_id,
            name: r.name,
            description: r.description,
            modules: r.modules,
            status: pb::TokenStatus::Active as i32,
            etag: "1".into(),
            ..Default::default()
        };
        self.tokens
            .lock()
            .expect("tokens")
            .insert(id.clone(), token.clone());
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(token),
            secret: id,
        }))
    }

    async fn delete_token(
        &self,
        request: Request<pb::DeleteTokenRequest>,
    ) -> Result<Response<pb::DeleteTokenResponse>, Status> {
        let id = request.into_inner().id;
        let mut token = self
            .tokens
            .lock()
            .expect("tokens")
            .remove(&id)
            .ok_or_else(|| Status::not_found(id))?;
        token.status = pb::TokenStatus::Deleted as i32;
        let (reply, revision) = oneshot::channel();
        let delete = Delete {
            token: token.clone(),
            reply,
        };
        let (first, calm) = {
            let mut next = self.queue.next.lock().expect("floor queue");
            next.deletes.push(delete);
            let first = std::mem::take(&mut next.writer_waiting);
            next.calm = if first {
                next.calm.saturating_add(1)
            } else {
                0
            };
            (first, next.calm >= CALM)
        };
        if first {
            self.queue.commit_or_wake(calm).await;
        }
        let revision = revision
            .await
            .map_err(|_| Status::unavailable("floor writer gone"))?;
        Ok(Response::new(pb::DeleteTokenResponse {
            token: Some(token),
            revision,
        }))
    }

    type WatchTokensStream = EventStream;

    async fn watch_tokens(
        &self,
        _: Request<pb::WatchTokensRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let events = BroadcastStream::new(self.events.subscribe()).map(|e| match e {
            Ok(event) => Ok(event),
            Err(lagged) => Err(Status::out_of_range(lagged.to_string())),
        });
        Ok(Response::new(Box::pin(events)))
    }

    async fn get_token(
        &self,
        _: Request<pb::GetTokenRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        not_here()
    }

    async fn list_tokens(
        &self,
        _: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        not_here()
    }

    async fn update_token(
        &self,
        _: Request<pb::UpdateTokenRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        not_here()
    }

    async fn enable_token(
        &self,
        _: Request<pb::EnableTokenRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        not_here()
    }

    async fn disable_token(
        &self,
        _: Request<pb::DisableTokenRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        not_here()
    }

    async fn verify_token(
        &self,
        _: Request<pb::VerifyTokenRequest>,
    ) -> Result<Response<pb::VerifyTokenResponse>, Status> {
        not_here()
    }

    async fn list_token_events(
        &self,
        _: Request<pb::ListTokenEventsRequest>,
    ) -> Result<Response<pb::ListTokenEventsResponse>, Status> {
        not_here()
    }

    async fn roll_token(
        &self,
        _: Request<pb::RollTokenRequest>,
    ) -> Result<Response<pb::RollTokenResponse>, Status> {
        not_here()
    }

    async fn report_leaked_secrets(
        &self,
        _: Request<pb::ReportLeakedSecretsRequest>,
    ) -> Result<Response<pb::ReportLeakedSecretsResponse>, Status> {
        not_here()
    }
}
