//! The floor peer: the least a durable, watched delete can cost on tokend's
//! own stack, measured beside tokend and etcd in the same run.
//!
//! A third server process (this binary, started with `--floor-server`) that
//! speaks tokend's `TokenService` over the same tonic + prost + HTTP/2 stack,
//! so the load tool drives it with exactly the client code it uses for
//! tokend. It keeps tokend's group commit and nothing else (tokend plans on
//! the caller's task; this has nothing to plan): each delete joins the next
//! batch on the caller's task, and the first one while the writer thread
//! sleeps wakes it after one turn of the scheduler, as tokend's do; the
//! writer takes the whole batch, appends it as one write,
//! `fdatasync`s once for the batch, then answers and broadcasts the events,
//! each encoded once as tokend's are, to every `WatchTokens` stream. No authentication, no planning
//! against state, no database, no retained log, no per-call metrics or
//! logging. What tokend spends beyond this is its own; what this spends, any
//! tonic service that answers "deleted" only once it is on disk must spend.
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
/// first delete to join it wakes it). Unbounded: the bench never has more
/// deletes in flight than tokend's store takes in one batch (1,024).
struct Queue {
    next: Mutex<(Vec<Delete>, bool)>,
    ready: Condvar,
}

/// Wakes the writer when dropped, however the caller's task ends.
struct Wake<'a>(&'a Condvar);

impl Drop for Wake<'_> {
    fn drop(&mut self) {
        self.0.notify_one();
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
    let log = File::create(dir.join("floor.log")).expect("floor log");
    let queue = std::sync::Arc::new(Queue {
        next: Mutex::default(),
        ready: Condvar::new(),
    });
    let deletes = queue.clone();
    let events = broadcast::channel(1024).0;
    let announce = events.clone();
    std::thread::Builder::new()
        .name("floor-writer".into())
        .spawn(move || write_loop(log, deletes, announce))
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

/// tokend's group commit, minus the state and the database: one append and
/// one fdatasync for everything queued, then the answers, then the events.
fn write_loop(
    mut log: File,
    deletes: std::sync::Arc<Queue>,
    events: broadcast::Sender<pb::EncodedEvent>,
) {
    let mut revision = 0i64;
    let mut buf = Vec::new();
    // Registered once, as tokend's writer does.
    let fsync_duration = metrics::histogram!(telemetry::FSYNC_DURATION);
    loop {
        let batch = {
            let mut next = deletes.next.lock().expect("floor queue");
            while next.0.is_empty() {
                next.1 = true;
                next = deletes.ready.wait(next).expect("floor queue");
                next.1 = false;
            }
            std::mem::take(&mut next.0)
        };
        buf.clear();
        let mut announced = Vec::with_capacity(batch.len());
        for d in &batch {
            revision += 1;
            let event = pb::TokenEvent {
                revision,
                r#type: pb::EventType::Deleted as i32,
                token: Some(d.token.clone()),
                time: Some(SystemTime::now().into()),
                actor: "floor".into(),
            };
            event
                .encode_length_delimited(&mut buf)
                .expect("a Vec grows");
            // Encoded once for every stream, as tokend does.
            announced.push((revision, pb::EncodedEvent::new(&event)));
        }
        let started = Instant::now();
        append(&mut log, &buf);
        fsync_duration.record(started.elapsed().as_secs_f64());
        for (d, (revision, event)) in batch.into_iter().zip(announced) {
            let _ = d.reply.send(revision);
            let _ = events.send(event);
        }
    }
}

/// One write and one fdatasync: the floor's log, kept out of line so that
/// a profile tells it from the rest of the loop (`perf-breakdown.py`).
#[inline(never)]
fn append(log: &mut File, buf: &[u8]) {
    log.write_all(buf).expect("floor log write");
    log.sync_data().expect("floor log fdatasync");
}

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
        let wake = {
            let mut next = self.queue.next.lock().expect("floor queue");
            next.0.push(delete);
            std::mem::take(&mut next.1)
        };
        if wake {
            let _wake = Wake(&self.queue.ready);
            tokio::task::yield_now().await;
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
