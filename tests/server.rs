//! The process around the API: restart persistence, shutdown, health,
//! reflection, start-up failures.

mod common;

use common::*;
use std::time::{Duration, Instant};
use tokend::proto as pb;
use tonic::Code;

#[tokio::test]
async fn a_restart_keeps_tokens_tombstones_revisions_and_events() {
    let s = TestServer::start().await;
    let acc = create_account(&s, ALL_MODULES).await;
    let mut c = s.tokens().await;
    let (live, live_secret) = create_token(&mut c, &acc.id, "live").await;
    let (gone, gone_secret) = create_token(&mut c, &acc.id, "gone").await;
    let disabled = c
        .disable_token(pb::DisableTokenRequest {
            id: live.id.clone(),
            etag: live.etag.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let deleted = delete(&mut c, &gone.id).await.unwrap();
    for i in 0..3 {
        create_token(&mut c, &acc.id, &format!("page {i}")).await;
    }
    let page1 = c
        .list_tokens(pb::ListTokensRequest {
            account_id: acc.id.clone(),
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let head = head(&mut c).await;

    // A watcher reads part of the history, then the server restarts.
    let mut w = watch_from(&mut c, 1).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next_change(&mut w).await.revision);
    }
    drop((w, c));
    let s = s.restart().await;
    let mut c = s.tokens().await;

    assert_eq!(
        get(&mut c, &live.id, false).await.unwrap(),
        get_after(&disabled)
    );
    assert_eq!(
        verify(&mut c, &live_secret).await.result,
        pb::VerifyResult::Disabled as i32
    );
    assert_eq!(
        verify(&mut c, &gone_secret).await.result,
        pb::VerifyResult::NotFound as i32
    );
    assert_eq!(
        get(&mut c, &gone.id, true).await.unwrap(),
        deleted.token.unwrap()
    );

    // Page tokens issued before the restart still work (the key is persisted).
    let page2 = c
        .list_tokens(pb::ListTokensRequest {
            account_id: acc.id.clone(),
            page_size: 2,
            page_token: page1.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page1.tokens.len() + page2.tokens.len(), 4);

    // Resuming after the restart continues exactly where the watcher was.
    let mut w = watch_from(&mut c, seen.last().unwrap() + 1).await;
    let mut prev = *seen.last().unwrap();
    while prev < head {
        let got = next_change(&mut w).await.revision;
        assert_follows(prev, got, "resumed after the restart");
        prev = got;
    }
    // New writes continue the same sequence.
    let (_, _) = create_token(&mut c, &acc.id, "after restart").await;
    let after = next_change(&mut w).await.revision;
    assert_follows(head, after, "the first write after the restart");
}

/// What GetToken shows for a token an UpdateToken/DisableToken returned.
fn get_after(t: &pb::Token) -> pb::Token {
    t.clone()
}

#[tokio::test]
async fn shutdown_ends_open_streams_with_unavailable_promptly() {
    // A grace period far longer than the bound below, so that the two
    // ways a watch can end are told apart on a busy machine too.
    let s = TestServer::start_with(|c| c.shutdown_grace = Duration::from_secs(30)).await;
    let mut c = s.tokens().await;
    let mut watches = Vec::new();
    for _ in 0..3 {
        watches.push(watch(&mut c, pb::WatchTokensRequest::default()).await);
    }
    let mut health = tonic_health::pb::health_client::HealthClient::new(s.channel().await);
    let mut health_watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health_watch.message().await.unwrap().unwrap().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let started = Instant::now();
    s.shutdown();
    for w in &mut watches {
        let end = tokio::time::timeout(Duration::from_secs(10), w.message())
            .await
            .expect("the watch ended within 10 s");
        let status = end.expect_err("ended with a status");
        assert_eq!(status.code(), Code::Unavailable);
    }
    // Ended by the server, not by the grace period running out (30 s
    // here), which would end them with the connection.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "watches ended after {:?}",
        started.elapsed()
    );
    // Health watchers see NOT_SERVING, then their stream ends.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = health_watch.message().await {}
    })
    .await;
    assert!(ended.is_ok(), "health Watch stream still open");
    s.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn sigterm_stops_the_binary_within_five_seconds_even_with_open_streams() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn_tokend(dir.path(), &[]).await;
    let mut c = p.tokens().await;
    let mut w = watch(&mut c, pb::WatchTokensRequest::default()).await;
    // A stalled client too: it never reads, and must not hold shutdown up.
    // Its window is 0 bytes, so not even its stream's first message (the
    // snapshot's end) reaches it, and its stream's end cannot be sent.
    let stalled = tonic::transport::Endpoint::from_shared(p.url())
        .unwrap()
        .initial_stream_window_size(0)
        .connect()
        .await
        .unwrap();
    let bearer = bearer(&operator_secret(&p.dir));
    let mut stalled =
        pb::token_service_client::TokenServiceClient::with_interceptor(stalled, bearer);
    let _stalled = watch(
        &mut stalled,
        pb::WatchTokensRequest {
            send_initial: true,
            ..Default::default()
        },
    )
    .await;
    let channel = tonic::transport::Channel::from_shared(p.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let _health_watch = health
        .watch(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();

    let started = Instant::now();
    p.signal(15);
    let status = tokio::time::timeout(Duration::from_secs(5), w.message())
        .await
        .expect("stream ended")
        .expect_err("with a status");
    assert_eq!(status.code(), Code::Unavailable);
    loop {
        if let Some(exit) = p.child.try_wait().unwrap() {
            assert!(exit.success(), "exit status {exit:?}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still running after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn health_and_reflection_need_no_credentials_and_describe_everything() {
    let s = TestServer::start().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(s.channel().await);
    for service in [
        "",
        "apitokens.v1.TokenService",
        "apitokens.v1.AccountService",
    ] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(s.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a list response");
    };
    let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    for want in [
        "apitokens.v1.AccountService",
        "apitokens.v1.TokenService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
}

/// A second server on a data dir one is serving from is refused, naming the
/// data dir and who may hold it, not only sled's lock error.
#[tokio::test]
async fn a_second_tokend_on_the_same_data_dir_is_refused_clearly() {
    if sled_only("the data dir lock; etcd replicas share a cluster by design") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let _first = spawn_tokend(dir.path(), &[]).await;
    let (code, stderr) = serve_in(dir.path(), &[], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("tokend: "), "{stderr}");
    assert!(last.contains(&dir.path().display().to_string()), "{last}");
    assert!(
        stderr.contains("another process holds it: a `tokend serve` or `tokend compact`"),
        "{stderr}"
    );
}

#[test]
fn a_zero_that_would_stop_every_call_is_refused_before_anything_is_opened() {
    // Each of these at zero leaves a server that cannot serve: every unary
    // call timed out at once, every watcher sent PROGRESS without end, no
    // call allowed on a connection, every request too large, every watch
    // refused as one too many, or a live fan-out that keeps nothing.
    for (flag, zero) in [
        ("--request-timeout", "0s"),
        ("--progress-interval", "0ms"),
        ("--max-streams-per-connection", "0"),
        ("--max-request-bytes", "0"),
        ("--max-watchers", "0"),
        ("--hub-capacity", "0"),
    ] {
        let (code, stderr, opened) = serve_refused(&[flag, zero], &[]);
        assert_eq!(code, Some(2), "{flag} {zero}: {stderr}");
        assert!(stderr.contains(flag), "{flag}: {stderr}");
        assert!(
            stderr.contains("above zero") || stderr.contains("not in 1.."),
            "{flag}: {stderr}"
        );
        assert!(!opened, "{flag}: nothing is opened");
    }
    // Too many is as bad: tokio allocates the hub's ring whole (this one
    // panicked, a billion was killed for its memory).
    let (code, stderr, opened) = serve_refused(&["--hub-capacity", "18446744073709551615"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("not in 1..=1048576"), "{stderr}");
    assert!(!opened);
}

/// A port another process holds is said so, in one line, exit 1: the API
/// port, and the metrics port (which read "internal error" before); before
/// anything is opened (a data dir and an operator credential were left
/// behind by a taken API port).
#[test]
fn a_taken_port_is_said_so() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for (args, said) in [
        (vec!["--listen", &addr], format!("cannot listen on {addr}")),
        (
            vec!["--listen", "127.0.0.1:0", "--metrics-addr", &addr],
            format!("cannot serve metrics on {addr}"),
        ),
    ] {
        let flag = args[args.len() - 2];
        let (code, stderr, opened) = serve_refused(&args, &[]);
        assert_eq!(code, Some(1), "{flag}: {stderr}");
        assert!(!opened, "{flag}: the data dir was made: {stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.contains(&said) && last.contains("in use"),
            "{flag}: {stderr}"
        );
        assert!(!stderr.contains("internal error"), "{flag}: {stderr}");
    }
}

/// TLS files that do not read stop `tokend serve` before it opens anything:
/// no data dir left behind, no operator credential written (on etcd, the
/// cluster's would be).
#[test]
fn unreadable_tls_files_are_refused_before_the_store_is_opened() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_file = dir.path().display().to_string();
    let (code, stderr, opened) =
        serve_refused(&["--tls-cert", &not_a_file, "--tls-key", &not_a_file], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("invalid tls: cannot read"), "{stderr}");
    assert!(!opened, "the data dir was made: {stderr}");
}

/// Runs `tokend serve` with `args` and `env` on a fresh data dir, expecting
/// it to refuse them: its exit code, its stderr, and whether it made the
/// data dir.
fn serve_refused(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, bool) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (code, stderr) = serve_in(&data, args, env);
    (code, stderr, data.exists())
}

/// Runs `tokend serve` on data dir `data`, expecting it to exit: one that
/// serves anyway is stopped after 10 s, and the caller's checks fail on it.
/// Its exit code and its stderr.
fn serve_in(data: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    // A free port unless `args` name one.
    let listen: &[&str] = if args.contains(&"--listen") {
        &[]
    } else {
        &["--listen", "127.0.0.1:0"]
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .arg("serve")
        .args(listen)
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .envs(env.iter().copied())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), stderr)
}

/// A switch's environment twin takes the usual spellings of yes and no, as
/// operators write them in unit files and manifests; anything else is
/// refused rather than read as either.
#[tokio::test]
async fn a_switchs_environment_twin_takes_one_and_yes() {
    use std::io::{Read, Write};
    // The console's page: 200 without the switch (the control), 404 with it.
    for (switch, status) in [
        (None, "200"),
        (Some("1"), "404"),
        (Some("yes"), "404"),
        (Some("on"), "404"),
        (Some("true"), "404"),
        (Some("0"), "200"),
        (Some("off"), "200"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let p = spawn_tokend_with(dir.path(), &[], |c| {
            if let Some(v) = switch {
                c.env("TOKEND_NO_CONSOLE", v);
            }
        })
        .await;
        let mut http = std::net::TcpStream::connect(p.addr).unwrap();
        http.write_all(b"GET / HTTP/1.1\r\nHost: tokend\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        http.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{switch:?}: {answer}"
        );
    }
    let (code, stderr, opened) = serve_refused(&[], &[("TOKEND_NO_CONSOLE", "maybe")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--no-console"), "{stderr}");
    assert!(!opened);
}
