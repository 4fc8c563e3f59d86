//! Hostile clients at the connection level: the real `tokend` binary on
//! loopback, attacked with real sockets and raw HTTP/2 frames, while a
//! legitimate client keeps calling. In each: the legitimate client and
//! health keep being served, and the server's memory stays bounded. Server
//! CPU and memory are printed (RELIABILITY.md quotes them), not asserted,
//! except for a generous memory bound.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP/2 frame: 9-byte header, then the payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

struct Server {
    p: Process,
    metrics: SocketAddr,
    _dir: tempfile::TempDir,
}

async fn start(extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_addr();
    let mut args = vec!["--metrics-addr".to_string(), metrics.to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = spawn_tokend(dir.path(), &args).await;
    Server {
        p,
        metrics,
        _dir: dir,
    }
}

impl Server {
    fn metric(&self, series: &str) -> f64 {
        sample(&scrape(self.metrics), series)
    }

    /// The server's CPU time so far (user + system).
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.p.child.id())).unwrap();
        // Fields after the command name, which is in parentheses.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10)
    }

    /// A health check on a fresh connection, answered within `within`.
    async fn healthy(&self, within: Duration) -> bool {
        let url = self.p.url();
        tokio::time::timeout(within, async move {
            let channel = tonic::transport::Endpoint::new(url)
                .unwrap()
                .connect()
                .await
                .ok()?;
            HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
                .ok()
        })
        .await
        .ok()
        .flatten()
        .is_some()
    }
}

/// Whether the server closed `s` (EOF or reset) within `within`.
async fn closed(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_past_the_cap_are_closed_and_clients_still_served() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let s = start(&["--max-connections", "64", "--first-request-timeout", "1s"]).await;
    // A client that connected before the flood keeps its connection.
    let mut tokens = s.p.tokens().await;
    let account = account_of(&s).await;
    // Its first request made: the first-request timeout is for connections
    // that never make one (the flood below takes longer than it).
    create_in(&mut tokens, &account).await;
    let rss_before = s.p.rss_kib();

    let started = Instant::now();
    let mut flood = Vec::new();
    for _ in 0..1_000 {
        flood.push(TcpStream::connect(s.p.addr).await.unwrap());
    }
    // Everything past the cap is closed at once: once the server has taken
    // the whole flood in (each one counted open or closed; the client's
    // connection is open too), a connection it closed has its end waiting
    // to be read. (Counted before it had: on a busy machine, one still in
    // the backlog counted as kept open past the cap.)
    let cap = "tokend_connections_closed_total{reason=\"cap\"}";
    let timeout = "tokend_connections_closed_total{reason=\"first_request_timeout\"}";
    let taken_in = Instant::now() + Duration::from_secs(30);
    while s.metric(cap) + s.metric(timeout) + s.metric("tokend_connections_open") < 1_001.0 {
        assert!(
            Instant::now() < taken_in,
            "the server never took the flood in"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut refused = 0;
    for c in flood.iter_mut() {
        if closed(c, Duration::from_millis(5)).await {
            refused += 1;
        }
    }
    let open_during = s.metric("tokend_connections_open");
    let rss_during = s.p.rss_kib();
    assert!(refused >= 1_000 - 64, "only {refused} closed at once");
    assert!(open_during <= 64.0, "{open_during} open past the cap of 64");
    // The connected client is served throughout.
    create_in(&mut tokens, &account).await;

    // The rest never started a call: closed after the first-request timeout.
    for c in flood.iter_mut() {
        assert!(
            closed(c, Duration::from_secs(5)).await,
            "an idle connection stayed open"
        );
    }
    assert!(
        s.healthy(Duration::from_secs(10)).await,
        "health after the flood"
    );
    create_in(&mut tokens, &account).await;
    let by_cap = s.metric(cap);
    let by_timeout = s.metric(timeout);
    println!(
        "1,000 idle connections against a cap of 64: {refused} closed at once \
         ({by_cap} counted), the rest after the 1 s first-request timeout ({by_timeout} counted) \
         within {:.1} s; server RSS {} → {} KiB",
        started.elapsed().as_secs_f64(),
        rss_before,
        rss_during,
    );
    // Every flood connection is closed for one reason or the other. How
    // many get in under the cap depends on how long the flood takes: a
    // slot freed by the timeout takes a newcomer (CI at 45735c4+: the flood
    // took 2 s on a busy machine, 874 by the cap and 126 by the timeout).
    assert!(
        by_cap + by_timeout >= 1_000.0 && by_timeout >= 60.0,
        "{by_cap} / {by_timeout}"
    );
    assert!(
        rss_during < rss_before + 50 * 1024,
        "RSS grew by more than 50 MiB"
    );
}

/// A burst of connections the server has not accepted yet waits in the
/// kernel's queue rather than being dropped: with tokio's own `bind` (a
/// backlog of 128), the 130th SYN on is dropped and its client retries
/// after 1 s, 3 s, 7 s (a reconnect storm after a restart). The running
/// server's API port is bound so too (its backlog, as `ss` reads it).
#[tokio::test]
async fn a_burst_of_connections_waits_in_the_backlog_instead_of_being_dropped() {
    const BURST: usize = 600;
    let cap: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .map(|s| s.trim().parse().unwrap())
        .unwrap_or(usize::MAX);
    assert!(
        cap > BURST,
        "this machine caps every backlog at {cap} (net.core.somaxconn)"
    );
    let _ = rlimit::increase_nofile_limit(u64::MAX);

    let s = start(&[]).await;
    let ss = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{}", s.p.addr.port())])
        .output()
        .expect("ss (Debian's iproute2; scripts/test.sh installs it)");
    let line = String::from_utf8_lossy(&ss.stdout).into_owned();
    // State, Recv-Q, Send-Q (a listening socket's backlog), local address.
    let backlog: usize = line
        .split_whitespace()
        .nth(2)
        .and_then(|q| q.parse().ok())
        .unwrap_or_else(|| panic!("ss said {line:?}"));
    assert!(backlog > BURST, "the API port's backlog is {backlog}");
    drop(s);

    let listener = tokend::listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    // All at once, and none accepted meanwhile: what a restart's clients do.
    let connects = (0..BURST).map(|_| async move {
        // A dropped SYN is retried after 1 s: well inside that, a queued one.
        tokio::time::timeout(Duration::from_millis(900), TcpStream::connect(addr)).await
    });
    let clients = futures_util::future::join_all(connects).await;
    let mut accepted = 0;
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await
    {
        accepted += 1;
    }
    let connected = clients.iter().filter(|c| matches!(c, Ok(Ok(_)))).count();
    assert_eq!(
        (accepted, connected),
        (BURST, BURST),
        "accepted, connected within 900 ms"
    );
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_preface_is_closed() {
    let s = start(&["--first-request-timeout", "1s"]).await;
    // Before the connections: the server's timeout runs from its accept.
    let started = Instant::now();
    let mut silent = TcpStream::connect(s.p.addr).await.unwrap();
    let mut partial = TcpStream::connect(s.p.addr).await.unwrap();
    partial.write_all(&PREFACE[..10]).await.unwrap();
    assert!(closed(&mut silent, Duration::from_secs(5)).await);
    assert!(closed(&mut partial, Duration::from_secs(5)).await);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed before the timeout: {took:?}"
    );
    assert!(s.healthy(Duration::from_secs(10)).await);
}

#[tokio::test]
async fn an_idle_connection_is_closed_but_an_open_watch_stream_is_not() {
    let s = start(&["--idle-timeout", "1s", "--progress-interval", "300ms"]).await;
    // A raw HTTP/2 connection that makes one call and then does nothing.
    // Idle from its call's answer on, at the earliest from here.
    let started = Instant::now();
    let tcp = TcpStream::connect(s.p.addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let request = http::Request::post(format!("{}/grpc.health.v1.Health/Check", s.p.url()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    body.send_data(vec![0, 0, 0, 0, 0].into(), true).unwrap();
    response.await.unwrap();

    // Meanwhile a watch stream stays open well past the idle timeout.
    let mut tokens = s.p.tokens().await;
    let mut w = watch(&mut tokens, tokend::proto::WatchTokensRequest::default()).await;
    let done = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(done.is_ok(), "the idle connection was not closed");
    let idle_for = started.elapsed();
    assert!(
        idle_for >= Duration::from_millis(800),
        "closed early: {idle_for:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let account = account_of(&s).await;
    let created = create_in(&mut tokens, &account).await;
    let heard = next_change(&mut w).await;
    assert_eq!(
        heard.token.unwrap().id,
        created,
        "the watch stream survived"
    );
    assert!(s.metric("tokend_connections_closed_total{reason=\"idle\"}") >= 1.0);
}

/// Writes `frames` for `how_long` as fast as the socket takes them, never
/// reading; returns how many frames went out.
async fn flood(addr: SocketAddr, frames: Vec<u8>, per_write: usize, how_long: Duration) -> usize {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(0x4, 0, 0, &[])).await.unwrap();
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < how_long {
        let write = tokio::time::timeout(Duration::from_millis(200), s.write_all(&frames)).await;
        match write {
            Ok(Ok(())) => sent += per_write,
            // The server stopped reading (its buffers are full) or hung up.
            Ok(Err(_)) => break,
            Err(_) => continue,
        }
    }
    sent
}

/// Runs one flood from several connections while a legitimate client keeps
/// calling; checks health and memory, prints the figures.
async fn survives(name: &str, frames: Vec<u8>, per_write: usize) {
    let s = start(&[]).await;
    let mut tokens = s.p.tokens().await;
    let account = account_of(&s).await;
    let (rss_before, cpu_before) = (s.p.rss_kib(), s.cpu());
    let started = Instant::now();
    let attackers: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(flood(
                s.p.addr,
                frames.clone(),
                per_write,
                Duration::from_secs(2),
            ))
        })
        .collect();
    // Served throughout: a call every 100 ms, each within 2 s.
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(2) {
        let call = tokio::time::timeout(Duration::from_secs(2), create_in(&mut tokens, &account));
        assert!(
            call.await.is_ok(),
            "{name}: a legitimate call took over 2 s"
        );
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut sent = 0;
    for a in attackers {
        sent += a.await.unwrap();
    }
    assert!(
        s.healthy(Duration::from_secs(10)).await,
        "{name}: health after"
    );
    let (rss_after, cpu_after) = (s.p.rss_kib(), s.cpu());
    println!(
        "{name}: {sent} frames from 4 connections in 2 s; {served} legitimate calls served; \
         server CPU {} ms, RSS {rss_before} → {rss_after} KiB",
        (cpu_after - cpu_before).as_millis()
    );
    assert!(
        rss_after < rss_before + 50 * 1024,
        "{name}: RSS grew by more than 50 MiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_is_survived() {
    let ping = frame(0x6, 0, 0, &[7; 8]);
    survives("PING flood", ping.repeat(512), 512).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_flood_is_survived() {
    let settings = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
    survives("SETTINGS flood", settings.repeat(512), 512).await;
}

/// HTTP/2 rapid reset (CVE-2023-44487): HEADERS then RST_STREAM, over and
/// over, on new streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_survived() {
    // A literal header block: :method POST, :scheme http, :path /, then
    // :authority (index 1) and content-type; never Huffman-coded.
    let mut block = vec![0x83, 0x86, 0x84, 0x41, 0x01, b'x'];
    block.extend_from_slice(&[0x5f, 0x10]);
    block.extend_from_slice(b"application/grpc");
    let mut frames = Vec::new();
    for i in 0..256u32 {
        let id = 2 * i + 1;
        frames.extend(frame(0x1, 0x4, id, &block));
        frames.extend(frame(0x3, 0, id, &8u32.to_be_bytes()));
    }
    // Stream ids must grow: each connection sends one batch, then floods a
    // fresh connection; here, one batch per connection, many connections.
    let s = start(&[]).await;
    let mut tokens = s.p.tokens().await;
    let account = account_of(&s).await;
    let (rss_before, cpu_before) = (s.p.rss_kib(), s.cpu());
    let started = Instant::now();
    let mut resets = 0;
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(2) {
        let mut c = TcpStream::connect(s.p.addr).await.unwrap();
        c.write_all(PREFACE).await.unwrap();
        c.write_all(&frame(0x4, 0, 0, &[])).await.unwrap();
        if c.write_all(&frames).await.is_ok() {
            resets += 256;
        }
        let call = tokio::time::timeout(Duration::from_secs(2), create_in(&mut tokens, &account));
        assert!(call.await.is_ok(), "a legitimate call took over 2 s");
        served += 1;
    }
    assert!(s.healthy(Duration::from_secs(10)).await);
    let (rss_after, cpu_after) = (s.p.rss_kib(), s.cpu());
    println!(
        "rapid reset: {resets} streams opened and reset in 2 s; {served} legitimate calls \
         served; server CPU {} ms, RSS {rss_before} → {rss_after} KiB",
        (cpu_after - cpu_before).as_millis()
    );
    assert!(
        rss_after < rss_before + 50 * 1024,
        "RSS grew by more than 50 MiB"
    );
}

#[tokio::test]
async fn an_oversized_header_list_is_refused_and_the_server_goes_on() {
    let s = start(&[]).await;
    let tcp = TcpStream::connect(s.p.addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let request = http::Request::post(format!("{}/grpc.health.v1.Health/Check", s.p.url()))
        .header("content-type", "application/grpc")
        .header("x-junk", "j".repeat(200 * 1024))
        .body(())
        .unwrap();
    let refused = match client.send_request(request, true) {
        Err(_) => true,
        Ok((response, _)) => match response.await {
            Err(_) => true,
            Ok(r) => r.status() == http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        },
    };
    assert!(refused, "a 200 KiB header list was accepted");
    assert!(s.healthy(Duration::from_secs(10)).await);
}

/// An account for the legitimate client's tokens.
async fn account_of(s: &Server) -> String {
    new_account(&mut s.p.accounts().await, &["commerce"])
        .await
        .id
}

/// Creates a token in `account` and returns its id.
async fn create_in(tokens: &mut Tokens, account: &str) -> String {
    create_token(tokens, account, "flood").await.0.id
}

/// Out of file descriptors, the accept loop backs off instead of spinning
/// a core, says so once, and serves again when the flood lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_listener_backs_off_instead_of_spinning() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let stderr = std::fs::File::create(&log).unwrap();
    let p = spawn_tokend_with(dir.path(), &[], move |cmd| {
        use std::os::unix::process::CommandExt;
        cmd.stderr(stderr.try_clone().unwrap());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 128,
                    rlim_max: 128,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })
    .await;
    let stat = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", p.child.id())).unwrap();
        let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        Duration::from_millis(10 * (f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()))
    };
    let mut flood = Vec::new();
    for _ in 0..400 {
        // Once the accept queue is full a connect waits for SYN retries.
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(p.addr)).await {
            Ok(Ok(c)) => flood.push(c),
            _ => break,
        }
    }
    let cpu_before = stat();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = stat() - cpu_before;
    drop(flood);
    // Served again once the flood lets go (the backoff is at most 1 s).
    let mut tokens = p.tokens().await;
    head(&mut tokens).await;
    let text = std::fs::read_to_string(&log).unwrap();
    println!(
        "400 connections against 128 descriptors: server CPU {} ms in 2 s",
        spent.as_millis()
    );
    assert!(
        text.contains("out of file descriptors; backing off"),
        "no warning in the log:\n{text}"
    );
    assert!(
        spent < Duration::from_millis(1_000),
        "the accept loop spun: {spent:?} of CPU in 2 s"
    );
}
