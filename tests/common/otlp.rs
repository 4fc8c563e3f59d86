//! A real OTLP/gRPC trace receiver in the test process: tokend exports to
//! it as to an OpenTelemetry Collector, and the test looks at what arrived.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

/// One received span, with the `service.name` of the process that sent it.
#[derive(Clone, Debug)]
pub struct Received {
    pub service: String,
    pub span: Span,
}

impl Received {
    pub fn trace_id(&self) -> String {
        base16(&self.span.trace_id)
    }

    pub fn span_id(&self) -> String {
        base16(&self.span.span_id)
    }

    pub fn parent_id(&self) -> String {
        base16(&self.span.parent_span_id)
    }

    /// An attribute's value, as text (`None` when absent).
    pub fn attribute(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .map(text)
    }

    /// Every attribute, event and link value of the span, its name and its
    /// trace state, as text.
    pub fn all_values(&self) -> Vec<String> {
        let events = self.span.events.iter().flat_map(|e| &e.attributes);
        let links = self.span.links.iter().flat_map(|l| &l.attributes);
        self.span
            .attributes
            .iter()
            .chain(events)
            .chain(links)
            .filter_map(|kv| kv.value.as_ref()?.value.as_ref())
            .map(text)
            .chain([self.span.name.clone(), self.span.trace_state.clone()])
            .collect()
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::BoolValue(b) => b.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    }
}

pub fn base16(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut kept = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(text)
                .unwrap_or_default();
            for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                kept.push(Received {
                    service: service.clone(),
                    span,
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The receiver, serving until dropped.
pub struct Collector {
    pub addr: SocketAddr,
    sink: Sink,
    _server: tokio::task::JoinHandle<()>,
}

impl Collector {
    pub async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sink = Sink::default();
        let service = TraceServiceServer::new(sink.clone());
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        Collector {
            addr,
            sink,
            _server: server,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<Received> {
        self.sink.0.lock().unwrap().clone()
    }

    /// Waits (up to 10 s) until a received span satisfies `found`.
    pub async fn wait_for(&self, what: &str, found: impl Fn(&Received) -> bool) -> Received {
        for _ in 0..200 {
            if let Some(s) = self.spans().into_iter().find(|s| found(s)) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let names: Vec<_> = self
            .spans()
            .iter()
            .map(|s| format!("{} {} ({})", s.service, s.span.name, s.trace_id()))
            .collect();
        panic!("no span: {what}; received: {names:#?}");
    }
}
