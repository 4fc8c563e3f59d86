//! Request logs and Prometheus metrics.
//!
//! Owns one log line per RPC (method, gRPC code, latency, calling token id)
//! and the metric names. Every series is recorded through the `metrics`
//! facade, so recording is a no-op unless `--metrics-addr` installed the
//! Prometheus exporter. Hot paths keep their handles (registered once,
//! after the exporter is installed: a handle registered before it stays a
//! no-op). This module must never log a request or response body, a header
//! value, or anything else that could hold a secret.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

use crate::domain::TokenId;
use crate::error::Error;

pub const RPC_REQUESTS: &str = "tokend_rpc_requests_total";
pub const RPC_DURATION: &str = "tokend_rpc_duration_seconds";
pub const WATCH_STREAMS_OPEN: &str = "tokend_watch_streams_open";
pub const EVENTS_PUBLISHED: &str = "tokend_events_published_total";
pub const WATCH_CATCHUPS: &str = "tokend_watch_catchups_total";
pub const WATCH_DELIVERY: &str = "tokend_watch_delivery_seconds";
pub const FSYNC_DURATION: &str = "tokend_fsync_duration_seconds";
pub const COMMIT_BATCH_SIZE: &str = "tokend_commit_batch_size";
pub const CHECKPOINT_DURATION: &str = "tokend_checkpoint_duration_seconds";
pub const STORE_SIZE: &str = "tokend_store_size_bytes";
pub const TOKENS_LIVE: &str = "tokend_tokens_live";
pub const TOKEN_IDS_ISSUED: &str = "tokend_token_ids_issued";
pub const TOKEN_IDS_LIMIT: &str = "tokend_token_ids_limit";
pub const TOMBSTONES_SHRUNK: &str = "tokend_tombstones_shrunk_total";
pub const AUTHZ_CHECKS: &str = "tokend_authz_checks_total";
pub const CONNECTIONS_OPEN: &str = "tokend_connections_open";
pub const CONNECTIONS_CLOSED: &str = "tokend_connections_closed_total";
pub const ACCEPT_ERRORS: &str = "tokend_accept_errors_total";
pub const TOKENS_EXPIRED: &str = "tokend_tokens_expired_total";
pub const LEAKS_REPORTED: &str = "tokend_leaked_secrets_reported_total";
pub const SERVING: &str = "tokend_serving";
pub const ETCD_MEMBER_IN_ROTATION: &str = "tokend_etcd_member_in_rotation";
pub const TLS_CERT_EXPIRY: &str = "tokend_tls_certificate_expiry_timestamp_seconds";
pub const TLS_HANDSHAKE_FAILURES: &str = "tokend_tls_handshake_failures_total";

/// Serves `/metrics` in Prometheus text format on `addr`. Once per process.
pub fn install_prometheus(addr: SocketAddr) -> Result<(), Error> {
    let seconds = &[
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ];
    let sizes = &[
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
    ];
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Full(RPC_DURATION.into()), seconds)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(FSYNC_DURATION.into()), seconds))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(COMMIT_BATCH_SIZE.into()), sizes))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(CHECKPOINT_DURATION.into()), seconds))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(WATCH_DELIVERY.into()), seconds))
        .map_err(|e| Error::Internal(format!("metrics: {e}")))?
        .install()
        .map_err(|e| match e {
            // A port taken, an address not this machine's: said as the API
            // port's failure is.
            BuildError::FailedToCreateHTTPListener(why) => Error::Unavailable {
                reason: crate::error::reason::LISTEN_FAILED,
                message: format!("cannot serve metrics on {addr}: {why}"),
            },
            e => Error::Internal(format!("metrics on {addr}: {e}")),
        })?;
    describe();
    tracing::info!(%addr, "metrics on /metrics");
    Ok(())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(RPC_REQUESTS, "RPCs answered, by method and gRPC code");
    describe_histogram!(
        RPC_DURATION,
        "Time to answer an RPC (for streams: to open it)"
    );
    describe_gauge!(WATCH_STREAMS_OPEN, "WatchTokens streams open now");
    describe_gauge!(
        CONNECTIONS_OPEN,
        "TCP connections open now, under --max-connections"
    );
    describe_counter!(
        CONNECTIONS_CLOSED,
        "Connections tokend closed: reason cap (over --max-connections), \
         first_request_timeout, idle"
    );
    describe_counter!(
        ACCEPT_ERRORS,
        "Failed accepts that made the listener back off (reason descriptors)"
    );
    describe_counter!(
        TOKENS_EXPIRED,
        "Expired tokens this process deleted (actor expiry)"
    );
    describe_counter!(
        LEAKS_REPORTED,
        "Secrets reported as leaked, by label (true_positive: a live secret, revoked)"
    );
    describe_counter!(
        AUTHZ_CHECKS,
        "ext_authz Checks answered, by decision (allow, or the denial reason)"
    );
    describe_counter!(EVENTS_PUBLISHED, "Durable events handed to watchers");
    describe_counter!(
        WATCH_CATCHUPS,
        "Times a watch stream read the event log to catch up"
    );
    describe_histogram!(FSYNC_DURATION, "Time to make one commit batch durable");
    describe_histogram!(
        WATCH_DELIVERY,
        "From a change's commit (the time stamped on its event as its batch \
         was planned, before the fsync; on etcd, the writing replica's clock) \
         to a watch stream handing the event to gRPC, for changes made while \
         the stream was open"
    );
    describe_histogram!(
        CHECKPOINT_DURATION,
        "Time to flush the embedded store and drop the log segments it covers"
    );
    describe_histogram!(
        COMMIT_BATCH_SIZE,
        "Changes per durable commit (group commit)"
    );
    describe_gauge!(STORE_SIZE, "Bytes the embedded store occupies on disk");
    describe_gauge!(
        TOKENS_LIVE,
        "Tokens not deleted (active, disabled or expired)"
    );
    describe_gauge!(
        TOKEN_IDS_ISSUED,
        "Token ids ever issued, deleted tokens' included (ids are never reused)"
    );
    describe_gauge!(
        TOKEN_IDS_LIMIT,
        "Token ids issued at most: creation is refused (TOKEN_IDS_EXHAUSTED) from here"
    );
    describe_counter!(
        TOMBSTONES_SHRUNK,
        "Tombstones shrunk on disk once older than --tombstone-shrink-after (embedded store)"
    );
    describe_gauge!(
        SERVING,
        "1 while this process may verify; 0 while it refuses (an etcd replica \
         that lost touch with the cluster: fenced, health NOT_SERVING)"
    );
    describe_gauge!(
        ETCD_MEMBER_IN_ROTATION,
        "Per etcd member (label member: its URL), 1 while it answers its \
         health probe and gets this replica's calls, 0 while it is out of \
         the rotation; absent on the embedded store and with one member"
    );
    describe_gauge!(
        TLS_CERT_EXPIRY,
        "When the serving certificate (--tls-cert, the first in the file) \
         expires, in Unix seconds; absent without TLS"
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        "TLS handshakes that failed, by reason (no_client_certificate, \
         client_certificate_invalid/untrusted/expired, not_tls, incompatible, \
         client_refused, timeout, closed, other)"
    );
    // Series without labels exist from the start, at zero: a rate() or an
    // alert sees the first increment, and a dashboard shows 0, not "no data".
    for name in [
        EVENTS_PUBLISHED,
        WATCH_CATCHUPS,
        TOKENS_EXPIRED,
        TOMBSTONES_SHRUNK,
    ] {
        metrics::counter!(name).absolute(0);
    }
    metrics::gauge!(WATCH_STREAMS_OPEN).set(0.0);
    metrics::gauge!(SERVING).set(1.0);
    metrics::gauge!(TOKEN_IDS_LIMIT).set(crate::command::TOKEN_ID_LIMIT as f64);
}

/// Set by the authenticator, read by the request log: who called.
#[derive(Clone, Default)]
pub struct CallerSlot(Arc<OnceLock<TokenId>>);

impl CallerSlot {
    pub fn set(&self, id: &TokenId) {
        let _ = self.0.set(id.clone());
    }
}

/// A tower layer that logs and counts every RPC once.
#[derive(Clone)]
pub struct RpcLog {
    series: Arc<RpcSeries>,
}

impl RpcLog {
    /// Counts the calls of `methods` (gRPC paths, `/package.Service/Method`)
    /// each under its own label, and every other path under `unknown`: a
    /// caller cannot mint series by making paths up, whatever answer its
    /// call gets (an unauthenticated one gets UNAUTHENTICATED, not
    /// UNIMPLEMENTED).
    pub fn new(methods: impl IntoIterator<Item = String>) -> RpcLog {
        let series = methods
            .into_iter()
            .chain(std::iter::once(UNKNOWN_METHOD.to_string()))
            .map(|m| (m.clone(), MethodSeries::new(m)))
            .collect();
        RpcLog {
            series: Arc::new(RpcSeries(series)),
        }
    }
}

impl<S> tower::Layer<S> for RpcLog {
    type Service = RpcLogService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcLogService {
            inner,
            series: self.series.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcLogService<S> {
    inner: S,
    series: Arc<RpcSeries>,
}

/// The label of every path that is not a served method.
const UNKNOWN_METHOD: &str = "unknown";

/// Each method's series handles, fixed when the server is built. A handle is
/// registered on its series' first call, not per call: registering builds
/// the labelled key and looks it up in the registry, a few microseconds on
/// every call. (Registered on first use, they are registered after the
/// exporter is installed: one registered before it would stay a no-op.)
struct RpcSeries(HashMap<String, MethodSeries>);

struct MethodSeries {
    method: String,
    duration: OnceLock<metrics::Histogram>,
    /// By gRPC code, each registered on first use.
    requests: [OnceLock<metrics::Counter>; CODES],
}

/// gRPC codes run from 0 (OK) to 16 (UNAUTHENTICATED).
const CODES: usize = tonic::Code::Unauthenticated as usize + 1;

impl RpcSeries {
    /// Records one call under its method's series, or the unknown one's;
    /// whether `path` is a method.
    fn record(&self, path: &str, code: tonic::Code, elapsed: Duration) -> bool {
        let (series, known) = match self.0.get(path) {
            Some(s) => (s, true),
            None => (&self.0[UNKNOWN_METHOD], false),
        };
        series.record(code, elapsed);
        known
    }
}

impl MethodSeries {
    fn new(method: String) -> MethodSeries {
        MethodSeries {
            method,
            duration: OnceLock::new(),
            requests: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    fn record(&self, code: tonic::Code, elapsed: Duration) {
        let requests = self.requests[code as usize].get_or_init(|| {
            let labels = [
                ("method", self.method.clone()),
                ("code", format!("{code:?}")),
            ];
            metrics::counter!(RPC_REQUESTS, &labels)
        });
        requests.increment(1);
        let duration = self
            .duration
            .get_or_init(|| metrics::histogram!(RPC_DURATION, "method" => self.method.clone()));
        duration.record(elapsed.as_secs_f64());
    }
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for RpcLogService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_string();
        let caller = CallerSlot::default();
        request.extensions_mut().insert(caller.clone());
        let started = Instant::now();
        let series = self.series.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let elapsed = started.elapsed();
            // Errors come "trailers-only", with grpc-status in the headers;
            // a success (or an open stream) has it in the trailers: 0.
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .unwrap_or(0);
            let code = tonic::Code::from_i32(code);
            crate::traces::record_status(code);
            let by = caller.0.get().map(TokenId::as_str).unwrap_or("-");
            let micros = elapsed.as_micros() as u64;
            // A path that is no method is the caller's text: quoted as
            // input (a secret sent as a path is not logged).
            let method = match series.record(&method, code, elapsed) {
                true => method,
                false => crate::domain::quote_input(&method),
            };
            if method.starts_with("/grpc.") {
                tracing::debug!(%method, ?code, micros, "rpc");
            } else {
                tracing::info!(%method, ?code, micros, caller = by, "rpc");
            }
            Ok(response)
        })
    }
}
