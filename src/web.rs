//! The browser edge: gRPC-Web, CORS, and the built-in console's files, on
//! the gRPC port.
//!
//! Owns what a browser needs that a native gRPC client does not: the
//! gRPC-Web translation (tonic-web, HTTP/1.1 and HTTP/2), the CORS policy
//! (origins an operator allowed, the request headers gRPC-Web sends, and the
//! `grpc-*` response headers a browser must be allowed to read, or it loses
//! the `ErrorInfo` details), and the console's static files at `/`. A browser
//! is just another client: every call still goes through the same
//! authentication and handlers. It also decides which requests are a
//! browser's: a native gRPC call (HTTP/2, no `Origin`) goes past all of it.
//!
//! It must never let a page from an origin the operator did not allow call
//! the API (a cross-origin request is refused before it reaches a handler,
//! whatever the browser does with CORS), never serve anything but the
//! embedded console files on `GET`, and never put a secret in a URL.

use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::Either;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use tonic::body::Body;
use tonic_web::{GrpcWebLayer, GrpcWebService};
use tower::{Layer, Service};
use tower_http::cors::{AllowOrigin, Cors, CorsLayer};

/// Who may call from a browser, and whether the console is served.
#[derive(Clone, Debug, Default)]
pub struct WebConfig {
    /// Origins (`https://app.example.com`) whose pages may call the API
    /// across origins. Empty: only pages tokend serves itself.
    pub allowed_origins: Vec<HeaderValue>,
    /// Serve the console at `/`.
    pub console: bool,
}

/// Request headers a gRPC-Web client sends, besides the credential.
const REQUEST_HEADERS: [&str; 6] = [
    "authorization",
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "connect-protocol-version",
];

/// Response headers a page must be able to read: without them a browser
/// sees every failure as "unknown", and never the `ErrorInfo` reason.
const EXPOSED_HEADERS: [&str; 3] = ["grpc-status", "grpc-message", "grpc-status-details-bin"];

/// The CORS policy: preflights are answered here; only listed origins get a
/// grant. An unlisted origin's preflight is answered without one, so the
/// browser never sends the call.
fn cors(config: &WebConfig) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(config.allowed_origins.clone()))
        .allow_methods([Method::POST])
        .allow_headers(REQUEST_HEADERS.map(HeaderName::from_static))
        .expose_headers(EXPOSED_HEADERS.map(HeaderName::from_static))
        .max_age(Duration::from_secs(24 * 60 * 60))
}

/// The browser edge as one layer: CORS, then `Edge`, then gRPC-Web, for
/// whatever a browser may have sent. A native gRPC call goes straight past
/// it: none of it applies to such a call, and on the path of every call it
/// would cost (CORS's response headers alone take a few microseconds).
pub fn layer(config: &WebConfig) -> BrowserEdge {
    BrowserEdge(Arc::new((cors(config), Edge::new(config))))
}

/// The browser edge's layers, shared: a service is cloned for every call,
/// and a clone of this is one reference count; only a browser's request
/// has them put around the routes.
#[derive(Clone)]
pub struct BrowserEdge(Arc<(CorsLayer, Edge)>);

type BrowserPath<S> = Cors<EdgeService<GrpcWebService<S>>>;

impl BrowserEdge {
    /// The browser edge in front of `inner`, for one request.
    fn around<S>(&self, inner: S) -> BrowserPath<S> {
        let (cors, edge) = &*self.0;
        tower::ServiceBuilder::new()
            .layer(cors.clone())
            .layer(edge.clone())
            .layer(GrpcWebLayer::new())
            .service(inner)
    }
}

impl<S> Layer<S> for BrowserEdge {
    type Service = BrowserOrNative<S>;

    fn layer(&self, inner: S) -> BrowserOrNative<S> {
        BrowserOrNative {
            browser: self.clone(),
            inner,
        }
    }
}

/// Each request through the browser edge, or past it straight to `inner`.
#[derive(Clone)]
pub struct BrowserOrNative<S> {
    browser: BrowserEdge,
    inner: S,
}

/// A call only a non-browser client sends: native gRPC (HTTP/2, as gRPC
/// requires: tonic-web refuses it over HTTP/1.1), and no `Origin`. A
/// browser sends `Origin` with every `POST`, and cannot send native gRPC.
fn is_native_grpc<B>(req: &Request<B>) -> bool {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.starts_with("application/grpc") && !ct.starts_with("application/grpc-web")
        });
    grpc && req.version() == Version::HTTP_2
        && req.method() == Method::POST
        && !req.headers().contains_key(header::ORIGIN)
}

impl<S, B> Service<Request<B>> for BrowserOrNative<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone,
    BrowserPath<S>: Service<Request<B>, Response = Response<Body>, Error = S::Error>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, <BrowserPath<S> as Service<Request<B>>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if is_native_grpc(&req) {
            return Either::Left(self.inner.call(req));
        }
        // The service just made ready goes into the edge (whose layers are
        // ready whenever it is); a clone stays for the next call.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        Either::Right(self.browser.around(ready).call(req))
    }
}

/// What a browser-facing request gets before the gRPC services see it.
///
/// - A call from a page of another origin than a listed one or the server's
///   own is refused, whatever its browser did with CORS: a non-browser
///   client could send any `Origin`, but only a browser sends one it did not
///   choose, and that is the request this protects (an operator's session in
///   a tab of some other site). Requests without `Origin` (no page sent
///   them: grpcurl, services, meshes) pass.
/// - `GET` and `HEAD` get the console's files (or 404): the API is `POST`.
#[derive(Clone)]
struct Edge {
    allowed: Arc<Vec<HeaderValue>>,
    console: bool,
}

impl Edge {
    fn new(config: &WebConfig) -> Edge {
        Edge {
            allowed: Arc::new(config.allowed_origins.clone()),
            console: config.console,
        }
    }

    /// The answer given here, or `None` to pass the request on.
    fn answer<B>(&self, req: &Request<B>) -> Option<Response<Body>> {
        if req.method() == Method::GET || req.method() == Method::HEAD {
            return Some(self.asset(req.uri().path(), req.method() == Method::HEAD));
        }
        if self.admits(req) {
            return None;
        }
        // A gRPC status with its reason, as every refusal carries, so a
        // gRPC-Web client reads why, not a transport failure.
        let status = tonic::Status::from(crate::error::Error::PermissionDenied(
            "calls from this page's origin are not allowed (tokend serve --cors-origin)".into(),
        ));
        Some(status.into_http())
    }

    fn admits<B>(&self, req: &Request<B>) -> bool {
        let Some(origin) = req.headers().get(header::ORIGIN) else {
            return true;
        };
        if self.allowed.contains(origin) {
            return true;
        }
        // Same origin: the page was served by this server (the console).
        let host = req.uri().authority().map(|a| a.as_str()).or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        let origin_host = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .map(|(_, host)| host);
        matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
    }
}

impl<S> Layer<S> for Edge {
    type Service = EdgeService<S>;

    fn layer(&self, inner: S) -> EdgeService<S> {
        EdgeService {
            edge: self.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct EdgeService<S> {
    edge: Edge,
    inner: S,
}

impl<S, B> Service<Request<B>> for EdgeService<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Response<Body>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self.edge.answer(&req) {
            Some(response) => Either::Right(ready(Ok(response))),
            None => Either::Left(self.inner.call(req)),
        }
    }
}

/// The console's files, built from `web/` and embedded at compile time, so
/// the binary needs nothing beside it and a build needs no node.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../web/dist/index.html"),
    },
    Asset {
        path: "/console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../web/dist/console.js"),
    },
    Asset {
        path: "/console.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../web/dist/console.css"),
    },
];

/// Scripts only from this server, no inline code, no other origin for
/// anything; the API is called on the same origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

impl Edge {
    fn asset(&self, path: &str, head: bool) -> Response<Body> {
        let found = self
            .console
            .then(|| ASSETS.iter().find(|a| a.path == path))
            .flatten();
        let Some(asset) = found else {
            let mut not_found = Response::new(Body::empty());
            *not_found.status_mut() = StatusCode::NOT_FOUND;
            return not_found;
        };
        let body = if head {
            Body::empty()
        } else {
            Body::new(http_body_util::Full::new(bytes::Bytes::from_static(
                asset.body,
            )))
        };
        let mut response = Response::new(body);
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        // The files change only with the binary.
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }
}
