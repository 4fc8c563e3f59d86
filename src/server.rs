//! The server: binds the port, opens the store, mounts every gRPC service
//! (tokens, accounts, `grpc.health.v1`, reflection v1 and v1alpha) and shuts
//! it all down in order.
//!
//! Owns process-level wiring and lifetimes. Shutdown order matters: stop
//! accepting, end every watch stream with `UNAVAILABLE` and every health
//! `Watch` stream, give in-flight unary calls a grace period, then close the
//! store (which persists what is pending and flushes). tonic's graceful
//! shutdown alone would wait forever for open streams, so the grace period is
//! a hard deadline, counted once from the signal. This module must never
//! contain request logic.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic_health::ServingStatus;

use crate::auth::Authenticator;
use crate::error::Error;
use crate::hub::Hub;
use crate::leaks::LeakAction;
use crate::listener::{self, CallCounter, Limits};
use crate::proto::account_service_server::AccountServiceServer;
use crate::proto::token_service_server::TokenServiceServer;
use crate::service::{Authz, AuthzConfig, Service};
use crate::store::{Backend, SledConfig, SledStore, Store};
use crate::telemetry::RpcLog;
use crate::tls::Tls;
pub use crate::tls::TlsFiles;
use crate::watch::{WatchConfig, Watchers};
use crate::web::WebConfig;
use envoy_types::ext_authz::v3::pb::AuthorizationServer;

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// The sled store's directory; with etcd, only `operator.token`'s.
    pub data_dir: PathBuf,
    pub store: Backend,
    /// Events kept in the log for `start_revision` replays.
    pub retention: u64,
    /// Tombstones older than this shrink on disk (embedded store).
    pub tombstone_shrink_after: Duration,
    pub max_watchers: usize,
    pub progress_interval: Duration,
    /// Expired tokens are deleted within this long of their expiry
    /// (`crate::expiry`); verification refuses them at the instant itself.
    pub expiry_check: Duration,
    /// How long in-flight calls get after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Events the live fan-out keeps for watchers that fall briefly behind.
    pub hub_capacity: usize,
    /// A token's last-access time is persisted at most this often.
    pub access_interval: Duration,
    /// A file holding the operator secret to use instead of generating one.
    pub operator_token_file: Option<PathBuf>,
    /// TLS; plaintext when `None`.
    pub tls: Option<TlsFiles>,
    /// Largest request message accepted, in bytes.
    pub max_request_bytes: usize,
    /// Concurrent HTTP/2 streams (calls) per connection.
    pub max_streams_per_connection: u32,
    /// Deadline for unary calls (a shorter `grpc-timeout` from the client wins).
    pub request_timeout: Duration,
    /// Where to serve Prometheus `/metrics`; none when `None`.
    pub metrics_addr: Option<SocketAddr>,
    /// How Envoy's external authorization `Check` reads and forwards credentials.
    pub authz: AuthzConfig,
    /// Browsers: gRPC-Web origins and the console.
    pub web: WebConfig,
    /// Open connections at most, and how long one may stay without a call.
    pub limits: Limits,
    /// What a reported leak does to a live token (both report paths).
    pub leak_action: LeakAction,
    /// The secret-scanning partner endpoint: where, and the reporters'
    /// public keys. Off when `None`.
    pub leak_report: Option<LeakReport>,
}

/// `--leak-report-listen` and `--leak-report-keys`.
#[derive(Clone, Debug)]
pub struct LeakReport {
    pub listen: SocketAddr,
    pub keys: PathBuf,
}

impl Config {
    /// Defaults for everything but where to listen and store.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Config {
        Config {
            listen,
            data_dir,
            store: Backend::Sled,
            retention: 100_000,
            tombstone_shrink_after: Duration::from_secs(30 * 86_400),
            max_watchers: 10_000,
            progress_interval: Duration::from_secs(15),
            expiry_check: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(3),
            hub_capacity: 4096,
            access_interval: Duration::from_secs(60),
            operator_token_file: None,
            tls: None,
            max_request_bytes: 1024 * 1024,
            max_streams_per_connection: 1024,
            request_timeout: Duration::from_secs(30),
            metrics_addr: None,
            authz: AuthzConfig::default(),
            web: WebConfig {
                allowed_origins: Vec::new(),
                console: true,
            },
            limits: Limits::default(),
            leak_action: LeakAction::Delete,
            leak_report: None,
        }
    }
}

/// A started server.
pub struct Running {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), Error>>,
}

impl Running {
    /// Starts shutting down; returns at once.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until the server has stopped and the store is closed: the data
    /// dir can be opened again at once.
    pub async fn wait(self) -> Result<(), Error> {
        self.task
            .await
            .map_err(|e| Error::Internal(format!("server task failed: {e}")))?
    }

    /// Shuts down and waits.
    pub async fn stop(self) -> Result<(), Error> {
        self.shutdown();
        self.wait().await
    }
}

/// How long a stop waits at least for connections to let go of the store
/// once the calls ended, even at the grace period's end.
const RELEASE_AT_LEAST: Duration = Duration::from_millis(200);

/// Every protobuf file this server's services and errors are made of:
/// reflection describes them, the RPC log counts their methods.
const DESCRIPTOR_SETS: [&[u8]; 6] = [
    crate::proto::FILE_DESCRIPTOR_SET,
    crate::proto::ENVOY_AUTHZ_FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    // google.rpc.ErrorInfo & co., so grpcurl can print error details.
    tonic_types::pb::FILE_DESCRIPTOR_SET,
];

/// Reflection describes every service this server routes (ours, Envoy's
/// ext_authz, health, and reflection v1 and v1alpha themselves), so
/// `grpcurl list`, `describe` and calls work with no proto files.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    DESCRIPTOR_SETS.into_iter().fold(
        tonic_reflection::server::Builder::configure(),
        |builder, set| builder.register_encoded_file_descriptor_set(set),
    )
}

/// `/package.Service/Method`, the path of every method the descriptor sets
/// declare: what the RPC log labels by name.
fn method_paths() -> Result<Vec<String>, Error> {
    let mut paths = Vec::new();
    for set in DESCRIPTOR_SETS {
        let set = prost_types::FileDescriptorSet::decode(set)
            .map_err(|e| Error::Internal(format!("a built-in descriptor set: {e}")))?;
        for file in &set.file {
            let package = match file.package() {
                "" => String::new(),
                p => format!("{p}."),
            };
            for service in &file.service {
                for method in &service.method {
                    paths.push(format!("/{package}{}/{}", service.name(), method.name()));
                }
            }
        }
    }
    Ok(paths)
}

/// tonic's TLS is rustls. Should two crypto providers ever end up in the
/// tree, rustls cannot pick one and panics at the first handshake: name ours.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

async fn open_store(config: &Config, hub: &Hub) -> Result<Arc<dyn Store>, Error> {
    match &config.store {
        Backend::Sled => Ok(Arc::new(SledStore::open(
            SledConfig {
                data_dir: config.data_dir.clone(),
                retention: config.retention,
                access_interval: config.access_interval,
                tombstone_shrink_after: config.tombstone_shrink_after,
            },
            hub.clone(),
        )?)),
        #[cfg(feature = "etcd")]
        Backend::Etcd { endpoints, prefix } => {
            std::fs::create_dir_all(&config.data_dir).map_err(|e| {
                Error::invalid(
                    "data-dir",
                    format!("cannot create {}: {e}", config.data_dir.display()),
                )
            })?;
            let etcd = crate::store::EtcdConfig {
                endpoints: endpoints.clone(),
                prefix: prefix.clone(),
                access_interval: config.access_interval,
                data_dir: config.data_dir.clone(),
            };
            Ok(Arc::new(
                crate::store::EtcdStore::open(etcd, hub.clone()).await?,
            ))
        }
        #[cfg(not(feature = "etcd"))]
        Backend::Etcd { .. } => Err(Error::invalid(
            "store",
            "this tokend was built without the etcd backend (cargo feature `etcd`)",
        )),
    }
}

/// Binds, opens the store and starts serving in a background task.
pub async fn start(config: Config) -> Result<Running, Error> {
    install_crypto_provider();
    if let Some(addr) = config.metrics_addr {
        crate::telemetry::install_prometheus(addr)?;
    }
    // Handshakes happen in crate::tls, where a failed one is logged and
    // counted; tonic sees finished TLS streams. Read before the store is
    // opened: a bad file must not leave a new data dir (or a cluster's
    // operator credential) behind.
    let tls = config.tls.as_ref().map(Tls::load).transpose()?;
    // The ports too: one another process holds must not leave a new data
    // dir and operator credential behind either.
    let cannot_listen = |what: &str, addr: SocketAddr, e: std::io::Error| Error::Unavailable {
        reason: crate::error::reason::LISTEN_FAILED,
        message: format!("cannot listen{what} on {addr}: {e}"),
    };
    let api_port =
        listener::reserve(config.listen).map_err(|e| cannot_listen("", config.listen, e))?;
    let leak_port = match &config.leak_report {
        Some(leak) => Some((
            listener::reserve(leak.listen)
                .map_err(|e| cannot_listen(" for leak reports", leak.listen, e))?,
            crate::leaks::github::Keys::load(&leak.keys)?,
        )),
        None => None,
    };
    let hub = Hub::new(config.hub_capacity);
    let store = open_store(&config, &hub).await?;
    let shutdown = CancellationToken::new();
    let watchers = Watchers::new(
        store.clone(),
        hub.clone(),
        WatchConfig {
            max_watchers: config.max_watchers,
            progress_interval: config.progress_interval,
        },
    );
    let service = Service::new(store.clone(), watchers, config.leak_action);
    crate::bootstrap::operator(
        store.as_ref(),
        &config.data_dir,
        config.operator_token_file.as_deref(),
    )
    .await?;
    // Tokens that expired while tokend was down go first: they were refused
    // all along, and are deleted now.
    tokio::spawn(crate::expiry::run(
        store.clone(),
        config.expiry_check,
        shutdown.clone(),
    ));
    if let (Some(leak), Some((port, keys))) = (&config.leak_report, leak_port) {
        let listener = port
            .listen()
            .map_err(|e| cannot_listen(" for leak reports", leak.listen, e))?;
        tracing::info!(addr = %leak.listen, path = crate::leaks::github::PATH, "serving leak reports");
        tokio::spawn(crate::leaks::github::serve(
            listener,
            store.clone(),
            keys,
            config.leak_action,
            shutdown.clone(),
        ));
    }
    // Listening only once the store is open and the operator credential
    // exists: whoever sees the port open can read operator.token.
    let listener = api_port
        .listen()
        .map_err(|e| cannot_listen("", config.listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let incoming = listener::incoming(listener, config.limits, shutdown.clone());

    let auth = Authenticator::new(store.clone());
    let limit = config.max_request_bytes;
    // Envoy's ext_authz: no tokend credential in front of it, like
    // VerifyToken. A sidecar holding none asks, the secret it checks is
    // the credential.
    let authz = AuthorizationServer::new(Authz::new(store.clone(), config.authz.clone()))
        .max_decoding_message_size(limit);
    let tokens = TokenServiceServer::new(service.clone()).max_decoding_message_size(limit);
    let accounts = AccountServiceServer::new(service).max_decoding_message_size(limit);

    let (health, health_service) = tonic_health::server::health_reporter();
    let served = [
        <TokenServiceServer<Service> as NamedService>::NAME,
        <AccountServiceServer<Service> as NamedService>::NAME,
        <AuthorizationServer<Authz> as NamedService>::NAME,
    ];
    for name in served {
        health
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| Error::Internal(format!("reflection: {e}")))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| Error::Internal(format!("reflection: {e}")))?;

    let router = tonic::transport::Server::builder()
        // gRPC-Web (browsers) speaks HTTP/1.1 as well as HTTP/2; native
        // gRPC is unchanged. Over TLS, ALPN offers h2 only, so browsers use
        // HTTP/2 there and a client that offers no ALPN may use HTTP/1.1.
        .accept_http1(true)
        // Keepalives let proxies and clients see a dead peer on long-lived
        // watch streams, and keep idle NAT/LB mappings open.
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(config.max_streams_per_connection)
        // Applies to producing a response, so streams are not cut by it.
        .timeout(config.request_timeout)
        // A header list this long is no gRPC call (hyper's default is 16 MiB).
        .http2_max_header_list_size(Some(64 * 1024))
        // Outside in: every call counts as open on its connection (the idle
        // and first-request deadlines of src/listener.rs); then what a
        // browser may have sent goes through the browser edge (src/web.rs:
        // CORS answers preflights, the edge refuses other origins' pages
        // and answers GETs with the console, gRPC-Web becomes gRPC), while
        // native gRPC goes past it; then every call is one gRPC call like
        // any other.
        .layer(CallCounter)
        .layer(crate::web::layer(&config.web))
        .layer(RpcLog::new(method_paths()?))
        .trace_fn(crate::traces::rpc_span)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InterceptedService::new(tokens, auth.clone()))
        .add_service(InterceptedService::new(accounts, auth))
        .add_service(authz);

    // The store, as operators and load balancers see it: its size on disk,
    // live tokens and issued ids (what sizing and the id space follow),
    // and health that says NOT_SERVING while this process must not verify
    // (an etcd replica that lost touch with the cluster), so probes and
    // meshes route around it until it is back.
    let watched = store.clone();
    let stop_watching = shutdown.clone();
    let reporter = health.clone();
    tokio::spawn(async move {
        let mut size_tick = tokio::time::interval(Duration::from_secs(10));
        let mut health_tick = tokio::time::interval(Duration::from_millis(500));
        let mut serving = true;
        loop {
            tokio::select! {
                _ = size_tick.tick() => {
                    if let Some(bytes) = watched.disk_bytes() {
                        metrics::gauge!(crate::telemetry::STORE_SIZE).set(bytes as f64);
                    }
                    let state = watched.state();
                    metrics::gauge!(crate::telemetry::TOKENS_LIVE).set(state.live_tokens() as f64);
                    metrics::gauge!(crate::telemetry::TOKEN_IDS_ISSUED).set(state.issued().len() as f64);
                }
                _ = health_tick.tick() => {
                    let now = watched.verifying_state().is_ok();
                    metrics::gauge!(crate::telemetry::SERVING).set(if now { 1.0 } else { 0.0 });
                    if now != serving && !stop_watching.is_cancelled() {
                        serving = now;
                        let status = if now { ServingStatus::Serving } else { ServingStatus::NotServing };
                        tracing::warn!(?status, "store health changed");
                        for name in served.iter().copied().chain([""]) {
                            reporter.set_service_status(name, status).await;
                        }
                    }
                }
                _ = stop_watching.cancelled() => break,
            }
        }
    });

    let tls_mode = match &config.tls {
        None => "off",
        Some(files) if files.client_ca.is_some() => "mutual",
        Some(_) => "on",
    };
    tracing::info!(%addr, tls = tls_mode, data_dir = %config.data_dir.display(), "tokend serving");
    let signal = shutdown.clone();
    let grace = config.shutdown_grace;
    let task = tokio::spawn(async move {
        let stop = signal.clone().cancelled_owned();
        let serve: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
            match tls {
                Some(tls) => {
                    Box::pin(router.serve_with_incoming_shutdown(tls.incoming(incoming), stop))
                }
                None => Box::pin(router.serve_with_incoming_shutdown(incoming, stop)),
            };
        tokio::pin!(serve);
        // One deadline for the whole stop, whatever holds it up: open calls
        // first, then the connections winding down (a client that stopped
        // reading holds both). An orchestrator's kill timer counts from the
        // signal too.
        let mut deadline = None;
        let served = tokio::select! {
            result = &mut serve => result,
            _ = signal.cancelled() => {
                let deadline = *deadline.insert(tokio::time::Instant::now() + grace);
                tracing::info!("shutting down");
                // Every watch stream ends with UNAVAILABLE, woken by the hub.
                hub.close();
                // Health watchers first learn NOT_SERVING, then their streams end.
                let mut health = health;
                for name in served.iter().copied().chain([""]) {
                    health.set_service_status(name, ServingStatus::NotServing).await;
                    health.clear_service_status(name).await;
                }
                match tokio::time::timeout_at(deadline, &mut serve).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::warn!(?grace, "calls still open after the grace period; closing them");
                        Ok(())
                    }
                }
            }
        };
        store.close().await;
        // Connection tasks that are still winding down hold handles on the
        // store, and with them sled's lock on the data dir. Wait (briefly)
        // for them so that whoever stopped this server can reopen the dir:
        // until the deadline, and a moment at least (the calls may have
        // ended just in time).
        let until = deadline
            .unwrap_or_else(|| tokio::time::Instant::now() + grace)
            .max(tokio::time::Instant::now() + RELEASE_AT_LEAST);
        let released = tokio::time::timeout_at(until, async {
            while Arc::strong_count(&store) > 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        if released.is_err() {
            tracing::warn!("store still referenced after shutdown; its lock stays until they end");
        }
        drop(store);
        tracing::info!("stopped");
        served.map_err(|e| Error::Internal(format!("transport: {e}")))
    });
    Ok(Running {
        addr,
        shutdown,
        task,
    })
}
