//! Letting connections in: the one place a TCP connection is accepted,
//! counted, and closed before it costs more than a socket.
//!
//! Owns binding the port, with a backlog that holds a reconnect storm
//! ([`bind`]), and four defences of it, each measured against a client that
//! opens connections in a loop (RELIABILITY.md, `tests/flood.rs`):
//! - **a cap** on open connections (`--max-connections`): one more is
//!   closed as soon as it is accepted, counted, and a warning is logged
//!   once per [`WARN_EVERY`], not once per connection;
//! - **a first-request deadline** (`--first-request-timeout`): a
//!   connection that has not started a single call by then (no TLS
//!   handshake, no HTTP/2 preface, headers never finished) is closed, so
//!   idle sockets cannot hold the cap;
//! - **an idle deadline** (`--idle-timeout`): a connection with no call
//!   open for that long is closed (gRPC's `MAX_CONNECTION_IDLE`); a client
//!   reconnects on its next call (bytes already waiting when it falls
//!   get a second's grace, once per idle spell: a call sent just then is
//!   let in, not cut);
//! - **accept back-off**: out of file descriptors (`EMFILE`, `ENFILE`),
//!   accepting again at once would spin a core, so it waits 5 ms, doubling
//!   to 1 s, as Go's `net/http` does, and says so in the log.
//!
//! A connection's calls are counted by [`CallCounter`], a layer that finds
//! its connection in the request's extensions (tonic puts the
//! [`ConnInfo`] there) and holds a guard until the response body is gone.
//! This module must never read or write a connection's bytes itself.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TlsConnectInfo};

use crate::telemetry;

/// At most one warning per kind of refusal this often.
const WARN_EVERY: Duration = Duration::from_secs(10);
const BACKOFF_FIRST: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long bytes that arrived as a deadline fell get to become a call.
const GRACE: Duration = Duration::from_secs(1);

/// How many connections, and how long each may stay without a call.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub first_request_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 10_000,
            first_request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Connections the kernel may hold, handshake done, before they are
/// accepted. tokio's `TcpListener::bind` asks for 128 (mio's fixed
/// value): a reconnect storm (every watcher after a restart) overflows it,
/// and each connection over is a dropped SYN its client retries after 1 s,
/// then 3 s, then 7 s. The kernel caps this at `net.core.somaxconn` (4,096
/// by default since Linux 5.4).
const BACKLOG: u32 = 4096;

/// A listening socket on `addr` with a backlog of [`BACKLOG`] (and
/// `SO_REUSEADDR`, as `TcpListener::bind` sets: a restart binds at once
/// while the old process's connections linger in `TIME_WAIT`).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    reserve(addr)?.listen()
}

/// `addr`, bound but not listening yet: a port another process holds is
/// refused now, while connections to it are still refused until
/// [`Reserved::listen`] (a server reserves its port before it sets up its
/// data dir, and listens once it can answer).
pub fn reserve(addr: SocketAddr) -> io::Result<Reserved> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(Reserved(socket))
}

/// A bound socket ([`reserve`]).
pub struct Reserved(tokio::net::TcpSocket);

impl Reserved {
    pub fn listen(self) -> io::Result<TcpListener> {
        self.0.listen(BACKLOG)
    }
}

/// Raises the soft limit on open files to the hard limit (Go's runtime does
/// the same for etcd): the cap above, not the kernel's default of 1,024,
/// should be what limits connections. Returns the limit now in force.
pub fn raise_file_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// Accepts on `listener` until `stop`, yielding connections within the cap.
pub fn incoming(
    listener: TcpListener,
    limits: Limits,
    stop: CancellationToken,
) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let mut refused = RateLimitedWarning::default();
        let mut starved = RateLimitedWarning::default();
        let mut backoff = BACKOFF_FIRST;
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.cancelled() => return,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) if out_of_descriptors(&e) => {
                    starved.warn(|n| {
                        tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64,
                            failures = n, "accept failed: out of file descriptors; backing off")
                    });
                    metrics::counter!(telemetry::ACCEPT_ERRORS, "reason" => "descriptors")
                        .increment(1);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
                // The peer gave up before we took it (ECONNABORTED & co.):
                // a pause all the same, so that an error that persists
                // cannot spin a core either.
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(BACKOFF_FIRST).await;
                    continue;
                }
            };
            backoff = BACKOFF_FIRST;
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                drop(stream);
                metrics::counter!(telemetry::CONNECTIONS_CLOSED, "reason" => "cap").increment(1);
                refused.warn(|n| {
                    tracing::warn!(%peer, refused = n, max = limits.max_connections,
                        "connection cap reached; closing new connections")
                });
                continue;
            };
            if tx
                .send(Ok(Conn::new(stream, peer, limits, permit)))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

fn out_of_descriptors(e: &io::Error) -> bool {
    // ENOBUFS and ENOMEM: the same starvation, of kernel memory.
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Logs at most once per [`WARN_EVERY`], with how many happened meanwhile.
#[derive(Default)]
pub struct RateLimitedWarning {
    last: Option<Instant>,
    since: u64,
}

impl RateLimitedWarning {
    pub fn warn(&mut self, log: impl FnOnce(u64)) {
        self.since += 1;
        if self.last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            log(self.since);
            self.last = Some(Instant::now());
            self.since = 0;
        }
    }
}

/// What a connection's calls and its deadline share.
#[derive(Debug)]
pub struct ConnState {
    accepted: Instant,
    /// Calls started on it, ever.
    calls: AtomicU64,
    /// Calls open now.
    open: AtomicU64,
    /// When the last call ended.
    last_end: Mutex<Instant>,
}

impl ConnState {
    /// Why the connection is to be closed at `now`, or when to look again.
    fn check(&self, now: Instant, limits: &Limits) -> Result<Instant, &'static str> {
        if self.calls.load(Ordering::Acquire) == 0 {
            let due = self.accepted + limits.first_request_timeout;
            return if now >= due {
                Err("first_request_timeout")
            } else {
                // A call that starts meanwhile leaves at most the idle
                // timeout to wait, not the rest of this one.
                Ok(due.min(now + limits.idle_timeout))
            };
        }
        if self.open.load(Ordering::Acquire) > 0 {
            return Ok(now + limits.idle_timeout);
        }
        let due = *self.last_end.lock().expect("last_end") + limits.idle_timeout;
        if now >= due { Err("idle") } else { Ok(due) }
    }
}

/// What tonic puts into every request's extensions for this connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    state: Arc<ConnState>,
}

/// An accepted connection: the socket, its slot under the cap, and its
/// deadline, checked whenever the server reads from it (it always has a
/// read pending, so the deadline's timer wakes it).
pub struct Conn {
    stream: TcpStream,
    info: ConnInfo,
    limits: Limits,
    deadline: Pin<Box<Sleep>>,
    /// The number of calls seen when the last grace was given.
    graced_after: Option<u64>,
    _slot: OwnedSemaphorePermit,
    _open: OpenGauge,
}

impl Conn {
    fn new(
        stream: TcpStream,
        peer: SocketAddr,
        limits: Limits,
        slot: OwnedSemaphorePermit,
    ) -> Conn {
        // Without TCP_NODELAY a response of two segments waits ~40 ms for
        // a delayed ACK; keepalives find peers that vanished.
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        let now = Instant::now();
        Conn {
            stream,
            info: ConnInfo {
                peer,
                state: Arc::new(ConnState {
                    accepted: now,
                    calls: AtomicU64::new(0),
                    open: AtomicU64::new(0),
                    last_end: Mutex::new(now),
                }),
            },
            // The first look comes at whichever deadline could fall first:
            // a first call may come and go well before the first-request
            // timeout.
            deadline: Box::pin(tokio::time::sleep_until(
                now + limits.first_request_timeout.min(limits.idle_timeout),
            )),
            limits,
            graced_after: None,
            _slot: slot,
            _open: OpenGauge::new(),
        }
    }
}

impl Conn {
    /// Whether this idle spell has had its grace yet: one per call seen.
    fn may_grace(&self) -> bool {
        self.graced_after != Some(self.info.state.calls.load(Ordering::Acquire))
    }

    /// Reads what the socket already holds into `buf`, if anything: true
    /// when bytes came (EOF, errors and nothing-yet are false).
    fn bytes_waiting(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> bool {
        let before = buf.filled().len();
        matches!(
            Pin::new(&mut self.stream).poll_read(cx, buf),
            Poll::Ready(Ok(()))
        ) && buf.filled().len() > before
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.deadline.as_mut().poll(cx).is_ready() {
            match self.info.state.check(Instant::now(), &self.limits) {
                Ok(next) => self.deadline.as_mut().reset(next),
                Err("idle") if self.may_grace() && self.bytes_waiting(cx, buf) => {
                    // A call may have arrived as the deadline fell: let it
                    // in, look again once it had time to start. Once per
                    // idle spell, so that trickled bytes cannot keep an
                    // idle connection forever.
                    self.graced_after = Some(self.info.state.calls.load(Ordering::Acquire));
                    let grace = Instant::now() + GRACE;
                    self.deadline.as_mut().reset(grace);
                    return Poll::Ready(Ok(()));
                }
                Err(reason) => {
                    metrics::counter!(telemetry::CONNECTIONS_CLOSED, "reason" => reason)
                        .increment(1);
                    tracing::debug!(peer = %self.info.peer, reason, "closing connection");
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, reason)));
                }
            }
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// `tokend_connections_open`, up while the connection lives.
struct OpenGauge;

impl OpenGauge {
    fn new() -> OpenGauge {
        metrics::gauge!(telemetry::CONNECTIONS_OPEN).increment(1.0);
        OpenGauge
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        metrics::gauge!(telemetry::CONNECTIONS_OPEN).decrement(1.0);
    }
}

/// The layer that counts each connection's open calls, for its deadlines.
#[derive(Clone, Copy, Debug, Default)]
pub struct CallCounter;

impl<S> tower::Layer<S> for CallCounter {
    type Service = CountCalls<S>;

    fn layer(&self, inner: S) -> CountCalls<S> {
        CountCalls(inner)
    }
}

#[derive(Clone, Debug)]
pub struct CountCalls<S>(S);

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for CountCalls<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Counted<R>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let guard = CallGuard::of(request.extensions());
        let response = self.0.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| Counted {
                body,
                _guard: guard,
            }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its call counted as open until it is
    /// dropped: for a watch stream, as long as the stream lasts.
    pub struct Counted<B> {
        #[pin]
        body: B,
        _guard: CallGuard,
    }
}

impl<B: http_body::Body> http_body::Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Marks a call open on its connection until dropped (with the response
/// body, or with the call's future when it never produced one).
struct CallGuard(Option<Arc<ConnState>>);

impl CallGuard {
    /// The guard for a request, from the connection tonic recorded in it
    /// (plaintext or TLS); none for a request from elsewhere (in-process).
    fn of(extensions: &http::Extensions) -> CallGuard {
        let info = extensions.get::<ConnInfo>().or_else(|| {
            extensions
                .get::<TlsConnectInfo<ConnInfo>>()
                .map(TlsConnectInfo::get_ref)
        });
        let state = info.map(|i| i.state.clone());
        if let Some(s) = &state {
            s.calls.fetch_add(1, Ordering::AcqRel);
            s.open.fetch_add(1, Ordering::AcqRel);
        }
        CallGuard(state)
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            *s.last_end.lock().expect("last_end") = Instant::now();
            s.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}
