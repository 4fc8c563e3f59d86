//! Traces: the process's `tracing` subscriber, and OpenTelemetry spans
//! exported over OTLP.
//!
//! Owns setting up where log lines and spans go (log lines to stderr, spans
//! to an OTLP/gRPC collector when an endpoint is configured), the trace
//! context that crosses the wire in both directions (W3C `traceparent` /
//! `tracestate`, and B3, which Envoy and Istio send by default), and the
//! span every gRPC call runs in. Off by default: without an endpoint no
//! exporter is built, nothing connects anywhere, incoming trace headers are
//! not even read, and a call's span is the plain log span it always was.
//!
//! Spans carry the method, gRPC status codes, revisions and batch sizes,
//! and the W3C trace context itself (`tracestate` travels with a trace, by
//! the standard). This module must never put any other header value, a
//! message body, or anything else that could hold a secret into a span or
//! a log line.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector, TextMapCompositePropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::field::{Empty, display};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::error::Error;

/// Whether spans are exported: set once, by [`init`].
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Where traces go: an OTLP/gRPC collector, and the service name they are
/// filed under (`OTEL_SERVICE_NAME`, or `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES`, wins over `default_service`).
pub struct Otlp<'a> {
    pub endpoint: &'a str,
    pub default_service: &'a str,
}

/// The collector named by `--otlp-endpoint`, or else by the standard
/// `OTEL_EXPORTER_OTLP_ENDPOINT`, and whether it came from the environment
/// (empty counts as unset, as the OpenTelemetry SDKs read it).
pub fn configured_endpoint(flag: Option<String>) -> Option<(String, bool)> {
    flag.map(|e| (e, false)).or_else(|| {
        std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty())
            .map(|e| (e, true))
    })
}

/// The installed subscriber. Dropping it flushes the spans not yet
/// exported: keep it until the process is about to exit.
#[must_use = "dropping it shuts the exporter down"]
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Tracing {
    fn drop(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        // The SDK's batch thread exports, through a channel whose tasks
        // run on this runtime: blocking a worker here must let the runtime
        // move its tasks elsewhere. (On a current-thread runtime nothing
        // can: drop this outside one, as `main` does.)
        let multi_threaded = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let flushed = if multi_threaded {
            tokio::task::block_in_place(|| provider.shutdown())
        } else {
            provider.shutdown()
        };
        if let Err(e) = flushed {
            eprintln!("tokend: flushing traces: {e}");
        }
    }
}

/// Installs the process's subscriber: log lines to stderr (`RUST_LOG`
/// refines the level, default `info`; JSON lines with `json`), and, with
/// `otlp`, tokend's spans to that collector. Sampling and batching follow
/// the standard `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` and
/// `OTEL_BSP_*` variables (default: every trace the caller sampled, and
/// every trace that starts here). Call once, inside the tokio runtime (the
/// exporter's channel lives on it).
pub fn init(json: bool, otlp: Option<Otlp<'_>>) -> Result<Tracing, Error> {
    // rustls warns per connection (an OpenSSL client calling by IP sends
    // the address as its SNI, "Illegal SNI"); a failed handshake is logged
    // by tls.rs, with the peer and at most once per reason every 10 s.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rustls=error"));
    // Colours for a terminal only: a file or a log collector gets the
    // escape codes as text.
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![if json {
        logs.json().with_filter(filter).boxed()
    } else {
        logs.with_filter(filter).boxed()
    }];
    let provider = otlp.map(exporter).transpose()?;
    if let Some(provider) = &provider {
        // tokend's own spans, down to the commit and fsync ones (debug),
        // whatever RUST_LOG says about log lines. Spans only: log lines
        // stay log lines (they carry the trace instead), not span events
        // that every call would pay to build.
        let spans = Targets::new()
            .with_target(env!("CARGO_CRATE_NAME"), LevelFilter::DEBUG)
            .with_default(LevelFilter::OFF);
        // The hint keeps the `log` crate's level (sled logs through it) at
        // what the log lines ask for, instead of every `log::trace!` going
        // through a dynamic filter.
        let spans = filter_fn(move |meta| {
            meta.is_span() && spans.would_enable(meta.target(), meta.level())
        })
        .with_max_level_hint(LevelFilter::DEBUG);
        // Spans carry what they are about, and nothing tracing knows on
        // the side (source location, thread, module, busy and idle times):
        // each of those costs every call, sampled or not, for little.
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer(env!("CARGO_CRATE_NAME")))
                .with_location(false)
                .with_threads(false)
                .with_target(false)
                .with_tracked_inactivity(false)
                .with_context_activation(false)
                .with_filter(spans)
                .boxed(),
        );
    }
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .map_err(|e| Error::Internal(format!("installing the log subscriber: {e}")))?;
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(propagator());
        EXPORTING.store(true, Ordering::Release);
    }
    Ok(Tracing { provider })
}

/// The collector's URL, checked before the exporter sees it. Refusals never
/// echo it: a URL can carry credentials.
fn endpoint(url: &str) -> Result<&str, Error> {
    let refuse = |why: &str| Err(Error::invalid("otlp-endpoint", why));
    let Ok(uri) = url.parse::<http::Uri>() else {
        return refuse("not a URL (expected http://host:port, e.g. http://localhost:4317)");
    };
    match (uri.scheme_str(), uri.authority()) {
        (_, Some(a)) if a.as_str().contains('@') => {
            refuse("credentials in the URL are not supported")
        }
        (Some("http"), Some(_)) => Ok(url),
        // No TLS client for the exporter is built in (yet).
        (Some("https"), _) => refuse(
            "https:// is not supported: send to a collector beside tokend (a node agent or \
             sidecar) over http://",
        ),
        _ => refuse("expected http://host:port, e.g. http://localhost:4317"),
    }
}

fn exporter(otlp: Otlp<'_>) -> Result<SdkTracerProvider, Error> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint(otlp.endpoint)?)
        .build()
        .map_err(|_| Error::invalid("otlp-endpoint", "the OTLP exporter cannot use it"))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    let named = std::env::var_os("OTEL_SERVICE_NAME").is_some()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="));
    if !named {
        resource = resource.with_service_name(otlp.default_service.to_string());
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// W3C trace context and B3 (single `b3` header or `X-B3-*`), in and out.
/// Extraction runs in order, each over the last: W3C comes last, so it wins
/// when a caller sends both.
fn propagator() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(opentelemetry_propagator_b3::Propagator::new()),
        Box::new(TraceContextPropagator::new()),
    ])
}

fn exporting() -> bool {
    EXPORTING.load(Ordering::Acquire)
}

/// The span a request runs in (tonic's `trace_fn`). Exporting, a gRPC
/// call's (gRPC-Web included) follows the OpenTelemetry conventions for
/// gRPC servers, continues the caller's trace from its headers, and names
/// its trace and span ids as fields, so every log line of the call carries
/// them. For a stream it covers opening it, as `tokend_rpc_duration_seconds`
/// does. Otherwise (not exporting; the console's files and CORS
/// preflights; health and reflection, which probes call every few seconds)
/// it only names the path for log lines.
pub fn rpc_span(request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    let grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
    if !exporting() || !grpc || path.starts_with("/grpc.") {
        return tracing::info_span!("rpc", method = %path);
    }
    let name = path.trim_start_matches('/');
    let span = tracing::info_span!(
        "rpc",
        method = %path,
        otel.name = name,
        otel.kind = "server",
        trace_id = Empty,
        span_id = Empty,
    );
    let caller =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(request.headers())));
    let _ = span.set_parent(caller);
    let context = span.context();
    let ids = context.span().span_context().clone();
    if ids.is_valid() {
        span.record("trace_id", display(ids.trace_id()));
        span.record("span_id", display(ids.span_id()));
    }
    // Attributes only on spans that will be exported: the sampler has
    // decided by now, and an unsampled call should cost next to nothing.
    if ids.is_sampled() {
        let (service, method) = name.split_once('/').unwrap_or((name, ""));
        span.set_attribute("rpc.system", "grpc");
        span.set_attribute("rpc.service", service.to_string());
        span.set_attribute("rpc.method", method.to_string());
    }
    span
}

/// Notes an RPC's gRPC status on its span (`rpc.grpc.status_code`), and
/// marks the span failed for the codes that mean the server failed (the
/// OpenTelemetry convention for servers: a refused request is not an error
/// of the server's). Does nothing when not exporting.
pub fn record_status(code: tonic::Code) {
    if !exporting() {
        return;
    }
    let span = tracing::Span::current();
    span.set_attribute("rpc.grpc.status_code", code as i64);
    if code == tonic::Code::Unimplemented {
        // A made-up path: one name for them all, as in the metrics.
        span.context().span().update_name("unknown");
    }
    use tonic::Code::*;
    if matches!(
        code,
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
    ) {
        span.set_status(opentelemetry::trace::Status::error(format!("{code:?}")));
    }
}

/// The span of a write's commit (`Store::apply`), a child of the current
/// one: only in a trace that is kept (an unsampled call, or a write no
/// call made, such as an expiry, pays for no span), none otherwise. Its
/// `revision` is recorded once committed.
pub fn commit_span() -> tracing::Span {
    let sampled = exporting()
        && tracing::Span::current()
            .context()
            .span()
            .span_context()
            .is_sampled();
    if sampled {
        tracing::debug_span!("store.commit", revision = Empty)
    } else {
        tracing::Span::none()
    }
}

/// The span of one batch made durable (encoded, appended to the log and
/// `fdatasync`ed), given its commands' [`commit_span`]s: a child of the
/// first that is kept, with links to the others. None when no kept trace
/// shares the batch (at 1% sampling, most batches), or nothing was
/// committed (access times alone).
pub fn batch_span(committing: &[tracing::Span], changes: usize) -> tracing::Span {
    let mut kept = committing.iter().filter(|s| !s.is_none());
    let Some(parent) = kept.next() else {
        return tracing::Span::none();
    };
    let span = tracing::debug_span!(parent: parent.id(), "store.fsync", changes);
    for other in kept {
        span.follows_from(other);
    }
    span
}

/// Adds the current span's trace context to an outgoing call's metadata,
/// so the server's spans continue the caller's trace. Works with the
/// program's `tracing-opentelemetry` layer and global propagator (of the
/// versions tokend uses); nothing when the current span has no trace.
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return;
    }
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&context, &mut Metadata(metadata))
    });
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(key, value);
        }
    }
}
