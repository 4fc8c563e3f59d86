//! The `tokend tokens …` client as a person uses it: the delete flow of the
//! platform's dialog driven through a real pseudo-terminal, and the live
//! watcher surviving a server restart and a compaction.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokend::proto as pb;
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_tokend");

/// A running server with one account and one token to delete.
async fn setup() -> (Process, tempfile::TempDir, pb::Token) {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_tokend(dir.path(), &[]).await;
    let acc = new_account(&mut p.accounts().await, ALL_MODULES).await;
    let (t, _) = create_token(&mut p.tokens().await, &acc.id, "ci-deploy").await;
    (p, dir, t)
}

fn client_args(p: &Process) -> Vec<String> {
    vec![
        "--server".into(),
        p.url(),
        "--token-file".into(),
        p.dir.join("operator.token").display().to_string(),
    ]
}

/// Runs `tokend tokens delete ID` in a pseudo-terminal.
fn delete_in_pty(p: &Process, id: &str) -> rexpect::session::PtySession {
    let mut cmd = Command::new(BIN);
    cmd.args(["tokens", "delete", id]).args(client_args(p));
    rexpect::session::spawn_command(cmd, Some(10_000)).unwrap()
}

fn exit_code(session: &mut rexpect::session::PtySession) -> i32 {
    match session.process().wait().unwrap() {
        rexpect::process::WaitStatus::Exited(_, code) => code,
        other => panic!("not exited: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_shows_warns_asks_and_deletes_on_yes() {
    let (p, _dir, t) = setup().await;
    let mut s = delete_in_pty(&p, &t.id);
    s.exp_string(&format!("Delete API token 'ci-deploy' ({})?", t.id))
        .unwrap();
    s.exp_string("A deleted token can't be restored or reused.")
        .unwrap();
    s.exp_string("Type 'yes' to delete:").unwrap();
    s.send_line("yes").unwrap();
    s.exp_string(&format!(
        "API token 'ci-deploy' ({}) was deleted successfully.",
        t.id
    ))
    .unwrap();
    assert_eq!(exit_code(&mut s), 0);
    let e = get(&mut p.tokens().await, &t.id, false).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declining_deletes_nothing() {
    let (p, _dir, t) = setup().await;
    let mut s = delete_in_pty(&p, &t.id);
    s.exp_string("Type 'yes' to delete:").unwrap();
    s.send_line("no").unwrap();
    s.exp_string("not deleted").unwrap();
    assert_eq!(exit_code(&mut s), 10);
    assert_eq!(get(&mut p.tokens().await, &t.id, false).await.unwrap(), t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_changed_while_the_question_is_open_is_not_deleted() {
    let (p, _dir, t) = setup().await;
    let mut s = delete_in_pty(&p, &t.id);
    s.exp_string("Type 'yes' to delete:").unwrap();
    // Someone renames it while the person reads the prompt.
    p.tokens()
        .await
        .update_token(pb::UpdateTokenRequest {
            token: Some(pb::Token {
                id: t.id.clone(),
                name: "renamed".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    s.send_line("yes").unwrap();
    s.exp_string("changed after it was shown; nothing was deleted")
        .unwrap();
    assert_eq!(exit_code(&mut s), 4);
    assert_eq!(
        get(&mut p.tokens().await, &t.id, false).await.unwrap().name,
        "renamed"
    );
}

#[tokio::test]
async fn yes_skips_the_question_and_a_script_without_it_is_refused() {
    let (p, _dir, t) = setup().await;
    let refused = Command::new(BIN)
        .args(["tokens", "delete", &t.id])
        .args(client_args(&p))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("pass --yes"));
    assert!(get(&mut p.tokens().await, &t.id, false).await.is_ok());

    let done = Command::new(BIN)
        .args(["tokens", "delete", &t.id, "--yes", "--output", "json"])
        .args(client_args(&p))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        done.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let out: serde_json::Value = serde_json::from_slice(&done.stdout).unwrap();
    assert_eq!(out["token"]["status"], "DELETED");
    assert!(out["revision"].as_i64().unwrap() > 0);

    // Deleting again: NOT_FOUND, exit code 3.
    let again = Command::new(BIN)
        .args(["tokens", "delete", &t.id, "--yes"])
        .args(client_args(&p))
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(3));
}

/// Reads JSON event lines from the watcher until `done` says stop.
fn read_events(
    lines: &Lines,
    mut done: impl FnMut(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let mut events = Vec::new();
    while !done(&events) {
        match next_event(lines, &events) {
            Some(e) => events.push(e),
            None => panic!("the watcher ended before printing what was awaited: {events:?}"),
        }
    }
    events
}

/// Every JSON event line the watcher prints until it ends.
fn read_to_end(lines: &Lines) -> Vec<serde_json::Value> {
    let mut events = Vec::new();
    while let Some(e) = next_event(lines, &events) {
        events.push(e);
    }
    events
}

/// The watcher's next event, or `None` once it ended. It must print within
/// 30 s: a watcher that stops printing (or never ends) fails the test
/// rather than hanging it. `so_far`: what it printed before, for the failure.
fn next_event(lines: &Lines, so_far: &[serde_json::Value]) -> Option<serde_json::Value> {
    use std::sync::mpsc::RecvTimeoutError;
    match lines.recv_timeout(Duration::from_secs(30)) {
        Ok(line) => Some(serde_json::from_str(&line.unwrap()).unwrap()),
        Err(RecvTimeoutError::Disconnected) => None,
        Err(RecvTimeoutError::Timeout) => {
            panic!("the watcher printed nothing for 30 s; so far: {so_far:?}")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_after_a_restart_and_resyncs_after_compaction() {
    if sled_only("--retention compaction (etcd's: tests/replicas.rs)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (addr, metrics) = (free_addr(), free_addr().to_string());
    let p = spawn_tokend_at(
        dir.path(),
        addr,
        &["--retention", "3", "--metrics-addr", &metrics],
    )
    .await;
    let acc = new_account(&mut p.accounts().await, ALL_MODULES).await;
    let (mut watcher, lines) = spawn_watcher(&client_args(&p));
    until_watching(&metrics);

    let mut c = p.tokens().await;
    let (a, _) = create_token(&mut c, &acc.id, "a").await;
    let first = read_events(&lines, |e| e.len() == 1);
    assert_eq!(first[0]["token"]["id"], a.id.as_str());
    let last_seen = first[0]["revision"].as_i64().unwrap();

    // The server restarts on the same port; the watcher reconnects and
    // continues with the next revision: nothing lost, nothing repeated.
    drop(c);
    let mut p = p;
    p.terminate();
    let p = spawn_tokend_at(dir.path(), addr, &["--retention", "3"]).await;
    let mut c = p.tokens().await;
    let (b, _) = create_token(&mut c, &acc.id, "b").await;
    let second = read_events(&lines, |e| e.len() == 1);
    assert_eq!(second[0]["token"]["id"], b.id.as_str());
    assert_eq!(second[0]["revision"].as_i64().unwrap(), last_seen + 1);

    // Now it misses more than the retained history while away: it re-syncs
    // with a snapshot (SNAPSHOT…, SYNCED) and carries on live.
    drop(c);
    let mut p = p;
    p.terminate();
    let elsewhere = spawn_tokend(dir.path(), &["--retention", "3"]).await;
    let mut c = elsewhere.tokens().await;
    for i in 0..5 {
        create_token(&mut c, &acc.id, &format!("while away {i}")).await;
    }
    drop(c);
    let mut elsewhere = elsewhere;
    elsewhere.terminate();
    let p = spawn_tokend_at(dir.path(), addr, &["--retention", "3"]).await;
    let resync = read_events(&lines, |e| e.last().is_some_and(|e| e["type"] == "SYNCED"));
    let snapshot: Vec<_> = resync.iter().filter(|e| e["type"] == "SNAPSHOT").collect();
    assert_eq!(
        snapshot.len(),
        1 + 2 + 5,
        "operator, a, b and the five: {resync:?}"
    );
    let (c2, _) = create_token(&mut p.tokens().await, &acc.id, "after resync").await;
    let live = read_events(&lines, |e| e.len() == 1);
    assert_eq!(live[0]["token"]["id"], c2.id.as_str());
    let _ = watcher.kill();
    let _ = watcher.wait();
}

/// Waits until the server whose metrics are at `metrics` has a watch stream
/// open: a watcher started "from now" hears only what comes after that.
fn until_watching(metrics: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sample(
        &scrape(metrics.parse().unwrap()),
        "tokend_watch_streams_open",
    ) < 1.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the watcher never connected"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A watcher's stdout, line by line.
type Lines = std::sync::mpsc::Receiver<std::io::Result<String>>;

/// Starts `tokend tokens watch --output json <args…>`; its stdout lines
/// arrive on the returned channel (stderr is discarded).
fn spawn_watcher(args: &[String]) -> (std::process::Child, Lines) {
    use std::io::BufRead;
    let mut watcher = Command::new(BIN)
        .args(["tokens", "watch", "--output", "json"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watcher.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (watcher, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_heard_nothing_before_a_restart_lists_instead_of_skipping_the_outage() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, metrics) = (free_addr(), free_addr().to_string());
    let p = spawn_tokend_at(dir.path(), addr, &["--metrics-addr", &metrics]).await;
    let acc = new_account(&mut p.accounts().await, ALL_MODULES).await;
    let (mut watcher, lines) = spawn_watcher(&client_args(&p));
    until_watching(&metrics);

    // The server stops before the watcher heard any revision; a token is
    // created while it is away. Resuming "from now" would never show it.
    let mut p = p;
    p.terminate();
    let elsewhere = spawn_tokend(dir.path(), &[]).await;
    let (away, _) = create_token(&mut elsewhere.tokens().await, &acc.id, "while away").await;
    let mut elsewhere = elsewhere;
    elsewhere.terminate();
    let p = spawn_tokend_at(dir.path(), addr, &[]).await;

    let listing = read_events(&lines, |e| e.last().is_some_and(|e| e["type"] == "SYNCED"));
    assert!(
        listing[..listing.len() - 1]
            .iter()
            .all(|e| e["type"] == "SNAPSHOT"),
        "{listing:?}"
    );
    assert!(
        listing.iter().any(|e| e["token"]["id"] == away.id.as_str()),
        "{listing:?}"
    );
    let (live, _) = create_token(&mut p.tokens().await, &acc.id, "live").await;
    let next = read_events(&lines, |e| e.len() == 1);
    assert_eq!(next[0]["type"], "CREATED");
    assert_eq!(next[0]["token"]["id"], live.id.as_str());
    let _ = watcher.kill();
    let _ = watcher.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_whose_credential_is_deleted_prints_the_delete_then_exits_5() {
    let (p, _dir, t) = setup().await;
    let mut c = p.tokens().await;
    let (own, secret) = issue(&mut c, &t.account_id, "watcher", &["access-management"]).await;
    let from = head(&mut c).await + 1;
    let (mut watcher, lines) = spawn_watcher(&[
        "--server".into(),
        p.url(),
        "--token".into(),
        secret,
        "--account".into(),
        t.account_id.clone(),
        "--from".into(),
        from.to_string(),
    ]);
    // A change it replays from --from: once printed, the stream is open
    // (a credential deleted before that would be refused at the open).
    c.disable_token(pb::DisableTokenRequest {
        id: t.id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let opened = read_events(&lines, |e| e.len() == 1);
    assert_eq!(opened[0]["type"], "DISABLED", "{opened:?}");

    delete(&mut c, &own.id).await.unwrap();
    // The stream ends with UNAUTHENTICATED (CREDENTIAL_REVOKED) right after
    // the delete: a refusal, not a dropped connection, so the command ends.
    let printed = read_to_end(&lines);
    assert_eq!(printed.len(), 1, "{printed:?}");
    assert_eq!(printed[0]["type"], "DELETED");
    assert_eq!(printed[0]["token"]["id"], own.id.as_str());
    assert_eq!(watcher.wait().unwrap().code(), Some(5));
}

#[tokio::test]
async fn history_prints_a_tokens_changes_newest_first() {
    let (p, _dir, t) = setup().await;
    cli(&p, &["tokens", "update", &t.id, "--name", "ci deploy 2"]);
    let out = cli(&p, &["tokens", "history", &t.id, "--output", "json"]);
    let events: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seen: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["token"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, [("UPDATED", "ci deploy 2"), ("CREATED", "ci-deploy")]);
    assert!(
        events
            .iter()
            .all(|e| e["actor"].as_str().unwrap().starts_with("TKN-"))
    );
    // The whole trail: no note.
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // For people, a table: its head names the columns.
    let table = String::from_utf8(cli(&p, &["tokens", "history", &t.id]).stdout).unwrap();
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert_eq!(
        lines[0],
        ["TIME", "REVISION", "TYPE", "TOKEN", "NAME", "ACTOR"],
        "{table}"
    );
    assert_eq!(lines[1][2..4], ["UPDATED", &t.id[..]], "{table}");

    // A token that does not exist: NOT_FOUND's exit code, and a plain message.
    let missing = Command::new(BIN)
        .args(["tokens", "history", "TKN-9999-9999"])
        .args(client_args(&p))
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("TKN-9999-9999"));
}

#[tokio::test]
async fn history_says_when_a_trails_start_was_compacted() {
    // --retention is the embedded store's; etcd compacts on its own terms.
    if sled_only("--retention compacts the event log") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_tokend(dir.path(), &["--retention", "2"]).await;
    let acc = new_account(&mut p.accounts().await, ALL_MODULES).await;
    let (t, _) = create_token(&mut p.tokens().await, &acc.id, "ci-deploy").await;
    for name in ["two", "three", "four"] {
        cli(&p, &["tokens", "update", &t.id, "--name", name]);
    }
    let out = cli(&p, &["tokens", "history", &t.id, "--output", "json"]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(!stdout.contains("CREATED"), "{stdout}");
    assert!(stdout.lines().count() <= 2, "{stdout}");
    // Each line is still an event for scripts; the note is on stderr.
    for line in stdout.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(
            "are no longer kept (compacted, or made before the store was restored) and are not shown"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("tokend tokens get {}", t.id)),
        "{stderr}"
    );
}

#[tokio::test]
async fn verify_without_a_secret_is_a_usage_error() {
    let (p, _dir, _) = setup().await;
    for args in [
        &["tokens", "verify"][..],
        &["tokens", "verify", "-"],
        &["tokens", "verify", ""],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .args(client_args(&p))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("no secret to verify"), "{args:?}: {stderr}");
    }
}

#[test]
fn a_server_that_is_not_a_url_or_not_there_is_said_so() {
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), common::pki::pki().ca_pem).unwrap();
    // Port 1 (tcpmux): privileged, and no test server takes it.
    let port = 1;
    for (server, code, says) in [
        (
            format!("127.0.0.1:{port}"),
            2,
            "must be a URL such as http://127.0.0.1:50051",
        ),
        ("notaurl".to_string(), 2, "must be a URL"),
        ("ftp://127.0.0.1".to_string(), 2, "must be a URL"),
        (
            format!("HTTPS://127.0.0.1:{port}"),
            6,
            "connection refused: is the server listening there?",
        ),
        (
            format!("http://127.0.0.1:{port}"),
            6,
            "connection refused: is the server listening there?",
        ),
    ] {
        // (A CA file for the https case: the machine may have no roots.)
        let ca = ca.path().display().to_string();
        let tls: &[&str] = if server.to_lowercase().starts_with("https") {
            &["--ca-file", &ca]
        } else {
            &[]
        };
        let out = Command::new(BIN)
            .args(["tokens", "list", "--token", "x", "--server", &server])
            .args(tls)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{server}: {stderr}");
        assert!(stderr.contains(says), "{server}: {stderr}");
    }
}

/// A web server's port (HTTP/1) is said to be one, not taken for a TLS
/// server: to h2 both close the connection at once.
#[tokio::test]
async fn a_web_servers_port_is_said_to_be_one() {
    let web = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = format!("http://{}", web.local_addr().unwrap());
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut conn in web.incoming().flatten() {
            let mut request = [0u8; 1024];
            let _ = conn.read(&mut request);
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["tokens", "list", "--token", "x", "--server", &server]);
    let out = output_within(cmd, Duration::from_secs(30), "a call to a web server").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{server} answers in HTTP/1, not gRPC: is it another service's port?"
        )),
        "{stderr}"
    );
}

/// A port that accepts connections and never answers (another service's,
/// or a server wedged) gets a clear failure after `--timeout`, for a plain
/// call and for a watch, instead of hanging the command and its script;
/// called over TLS too, where it is the handshake that gets no answer.
#[tokio::test]
async fn a_server_that_never_answers_times_out_and_says_so() {
    let silent = silent_addr();
    let watch = ["tokens", "watch", "--account", "ACC-nothing"];
    let calls: [&[&str]; 3] = [&["tokens", "list"], &watch, &["accounts", "list"]];
    let schemes = ["http", "https"];
    for (call, scheme) in calls.into_iter().flat_map(|c| schemes.map(|s| (c, s))) {
        let server = format!("{scheme}://{silent}");
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(call)
            .args(["--token", "x", "--server", &server, "--timeout", "1s"]);
        let out = output_within(cmd, Duration::from_secs(30), &format!("{call:?}")).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(6), "{call:?}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "{server} accepted the connection but did not answer within 1s (--timeout"
            )),
            "{call:?}: {stderr}"
        );
    }
    let server = format!("http://{silent}");
    // The deadline's env twin is read, and a zero one refused.
    let out = Command::new(BIN)
        .args(["tokens", "list", "--server", &server])
        .env("TOKEND_TIMEOUT", "0s")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("'0s' for '--timeout <TIMEOUT>': must be above zero")
    );
}

/// With no --token or --token-file, a server on this machine is called
/// with `./tokend-data/operator.token`, and any other with no credential.
/// `0.0.0.0` stands for another host here: the CLI cannot tell it is this
/// one (it is not a loopback address), and Linux still connects it to the
/// server on 127.0.0.1, which then sees what credential arrived. A default
/// `--token-file` once sent the local operator's secret to every server.
#[tokio::test]
async fn the_local_operator_secret_goes_to_a_local_server_only() {
    let (p, _dir, _) = setup().await;
    let cwd = tempfile::tempdir().unwrap();
    std::fs::create_dir(cwd.path().join("tokend-data")).unwrap();
    std::fs::copy(
        p.dir.join("operator.token"),
        cwd.path().join("tokend-data/operator.token"),
    )
    .unwrap();
    let list = |host: &str| {
        Command::new(BIN)
            .args(["tokens", "list", "--server"])
            .arg(format!("http://{host}:{}", p.addr.port()))
            .current_dir(cwd.path())
            .env_remove("TOKEND_TOKEN")
            .env_remove("TOKEND_TOKEN_FILE")
            .output()
            .unwrap()
    };
    let local = list("127.0.0.1");
    assert!(local.status.success(), "{local:?}");
    let other = list("0.0.0.0");
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert_eq!(other.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains("Unauthenticated: missing or invalid credentials"),
        "{stderr}"
    );
    // And it is told where a credential comes from.
    assert!(
        stderr.contains("this call sent no credential: give --token-file"),
        "{stderr}"
    );
    // An empty token file is a mistake, said before calling (it used to
    // send an empty bearer).
    let empty = Command::new(BIN)
        .args([
            "tokens",
            "list",
            "--token-file",
            "/dev/null",
            "--server",
            &p.url(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&empty.stderr);
    assert_eq!(empty.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("/dev/null is empty"), "{stderr}");
}

/// A reader that stops reading (`tokend tokens list | head`) ends the
/// command quietly and with success, as it ends `cat`: not with a panic, its
/// backtrace and exit code 101.
#[tokio::test]
async fn a_reader_that_goes_away_ends_the_command_quietly() {
    let (p, _dir, _) = setup().await;
    for output in ["table", "json"] {
        for args in [&["tokens", "list"][..], &["accounts", "list"]] {
            let mut child = Command::new(BIN)
                .args(args)
                .args(["--output", output])
                .args(client_args(&p))
                .env("RUST_BACKTRACE", "1")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            // Gone before the command has its answer to print.
            drop(child.stdout.take());
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(0), "{args:?} {output}: {stderr}");
            assert!(stderr.is_empty(), "{args:?} {output}: {stderr}");
        }
    }
}

/// `tokend …` with the server's operator credential, which must succeed.
fn cli(p: &Process, args: &[&str]) -> std::process::Output {
    let out = Command::new(BIN)
        .args(args)
        .args(client_args(p))
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    out
}

/// `tokend …` with the server's operator credential; stdout as JSON.
fn cli_json(p: &Process, args: &[&str]) -> serde_json::Value {
    let out = cli(p, &[args, &["--output", "json"]].concat());
    serde_json::from_slice(&out.stdout).unwrap()
}

fn instant(v: &serde_json::Value) -> std::time::SystemTime {
    humantime::parse_rfc3339(v.as_str().expect("an RFC 3339 instant")).unwrap()
}

#[tokio::test]
async fn expiries_and_lifetime_limits_from_the_command_line() {
    let (p, _dir, t) = setup().await;
    let day = Duration::from_secs(24 * 3600);
    let created = cli_json(
        &p,
        &[
            "tokens",
            "create",
            "--account",
            &t.account_id,
            "--name",
            "nightly",
            "--expires-in",
            "30d",
        ],
    );
    let token = &created["token"];
    let made = instant(&token["audit"]["created"]["at"]);
    assert_eq!(instant(&token["expire_time"]), made + 30 * day);

    let id = token["id"].as_str().unwrap();
    let cleared = cli_json(&p, &["tokens", "update", id, "--no-expiry"]);
    assert!(cleared[0]["expire_time"].is_null(), "{cleared}");

    let acc = cli_json(
        &p,
        &[
            "accounts",
            "update",
            &t.account_id,
            "--max-token-lifetime",
            "90d",
        ],
    );
    assert_eq!(acc[0]["max_token_lifetime_seconds"], 90 * 24 * 3600);
    let defaulted = cli_json(
        &p,
        &[
            "tokens",
            "create",
            "--account",
            &t.account_id,
            "--name",
            "bounded",
        ],
    );
    let made = instant(&defaulted["token"]["audit"]["created"]["at"]);
    assert_eq!(instant(&defaulted["token"]["expire_time"]), made + 90 * day);

    // Beyond the limit: refused, with the reason in plain words, and the
    // conflict exit code.
    let refused = Command::new(BIN)
        .args([
            "tokens",
            "create",
            "--account",
            &t.account_id,
            "--name",
            "too long",
            "--expires-in",
            "1y",
        ])
        .args(client_args(&p))
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(4), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("at most 90 days from now"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_token_rolled_from_the_command_line_shows_the_new_secret_once_and_when_the_old_one_stops()
{
    let (p, _dir, t) = setup().await;
    let rolled = cli_json(&p, &["tokens", "roll", &t.id, "--grace", "1h"]);
    let successor = &rolled["token"];
    assert_eq!(successor["replaces"], t.id.as_str());
    assert_eq!(successor["name"], "ci-deploy");
    assert_eq!(rolled["replaced"]["replaced_by"], successor["id"]);
    let rolled_at = instant(&successor["audit"]["created"]["at"]);
    assert_eq!(
        instant(&rolled["replaced"]["expire_time"]),
        rolled_at + Duration::from_secs(3600)
    );
    let secret = rolled["secret"].as_str().unwrap();
    let verified = cli_json(&p, &["tokens", "verify", secret]);
    assert_eq!(verified["token"]["id"], successor["id"], "{verified}");

    // Zero grace, as a person reads it; then the same token again is
    // refused with the conflict exit code and the successor's id.
    let id = successor["id"].as_str().unwrap();
    let out = Command::new(BIN)
        .args(["tokens", "roll", id, "--grace", "0s"])
        .args(client_args(&p))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("Secret (shown once; store it now):"),
        "{text}"
    );
    assert!(
        text.contains(&format!("The old token {id} was deleted.")),
        "{text}"
    );
    let again = Command::new(BIN)
        .args(["tokens", "roll", &t.id, "--grace", "1h"])
        .args(client_args(&p))
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(4), "{again:?}");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("was already replaced by"),
        "{again:?}"
    );
}
