//! Several tokend replicas on one real etcd cluster (three members of
//! Debian's `etcd-server` on loopback): what one replica commits, the others
//! serve and stream; losing an etcd member or a replica loses nothing.
#![cfg(feature = "etcd")]

mod common;

use std::path::Path;
use std::time::Duration;

use common::etcd::EtcdCluster;
use common::*;
use tokend::domain::TokenId;
use tokend::proto as pb;
use tokend::secret::Secret;

/// A tokend process on `cluster` under `prefix`, with the operator secret
/// in `operator` (as a Kubernetes Secret would hand it to every replica).
async fn replica(
    cluster: &EtcdCluster,
    prefix: &str,
    operator: &Path,
) -> (Process, tempfile::TempDir) {
    replica_on(&cluster.store(prefix), operator).await
}

/// A tokend process with `--store store`.
async fn replica_on(store: &str, operator: &Path) -> (Process, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = operator.to_str().unwrap();
    let p = spawn_tokend(
        dir.path(),
        &["--store", store, "--operator-token-file", file],
    )
    .await;
    (p, dir)
}

/// A fresh operator secret, in a file of a temp dir (kept while it lives).
fn operator_file() -> (tempfile::TempDir, std::path::PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let secret = Secret::generate(&TokenId::from_number(4242_0001));
    let path = dir.path().join("operator.secret");
    std::fs::write(&path, secret.expose()).unwrap();
    (dir, path, secret.expose().to_string())
}

/// A new account with the `commerce` module, made through replica `p`.
async fn account_on(p: &Process, operator: &str) -> pb::Account {
    let mut accounts = accounts_at(&p.url(), bearer(operator)).await;
    new_account(&mut accounts, &["commerce"]).await
}

#[tokio::test]
async fn a_delete_through_one_replica_is_streamed_by_the_other_and_refused_there_at_once() {
    let cluster = EtcdCluster::start(3).await;
    let (_keys, file, operator) = operator_file();
    let (a, _da) = replica(&cluster, "live", &file).await;
    let (b, _db) = replica(&cluster, "live", &file).await;
    let mut on_a = tokens_at(&a.url(), bearer(&operator)).await;
    let mut on_b = tokens_at(&b.url(), bearer(&operator)).await;

    let account = account_on(&a, &operator).await;
    let (token, secret) = create_token(&mut on_a, &account.id, "ci deploy").await;
    // Created through A, answered: B already verifies it.
    assert_eq!(
        verify(&mut on_b, &secret).await.result,
        pb::VerifyResult::Valid as i32
    );

    let mut events = watch(&mut on_b, pb::WatchTokensRequest::default()).await;
    let deleted = delete(&mut on_a, &token.id)
        .await
        .expect("deleted through A");
    // The moment A has answered, B refuses the secret...
    let answer = verify(&mut on_b, &secret).await;
    assert_eq!(
        answer.result,
        pb::VerifyResult::NotFound as i32,
        "{answer:?}"
    );
    // ...and B's watcher hears the deletion, at A's revision.
    let event = tokio::time::timeout(Duration::from_secs(10), next_change(&mut events))
        .await
        .expect("B streams A's delete");
    assert_eq!(event.r#type, pb::EventType::Deleted as i32);
    assert_eq!(event.revision, deleted.revision);
    assert_eq!(event.token.unwrap().id, token.id);
}

#[tokio::test]
async fn replicas_started_together_bootstrap_the_operator_once() {
    let cluster = EtcdCluster::start(3).await;
    let (_keys, file, operator) = operator_file();
    let ((a, _da), (b, _db)) = tokio::join!(
        replica(&cluster, "boot", &file),
        replica(&cluster, "boot", &file)
    );
    for p in [&a, &b] {
        one_operations_account(p, &operator).await;
    }
}

/// Checks that the operator secret works on replica `p` and that it lists
/// exactly one Operations account: the bootstrap ran once.
async fn one_operations_account(p: &Process, operator: &str) {
    let mut accounts = accounts_at(&p.url(), bearer(operator)).await;
    let listed = accounts
        .list_accounts(pb::ListAccountsRequest::default())
        .await
        .expect("the operator secret works on every replica")
        .into_inner()
        .accounts;
    let operations = listed
        .iter()
        .filter(|a| a.r#type == pb::AccountType::Operations as i32)
        .count();
    assert_eq!(operations, 1, "one Operations account: {listed:?}");
}

#[tokio::test]
async fn losing_one_etcd_member_keeps_the_service_working() {
    let mut cluster = EtcdCluster::start(3).await;
    let (_keys, file, operator) = operator_file();
    let (a, _da) = replica(&cluster, "quorum", &file).await;
    let mut tokens = tokens_at(&a.url(), bearer(&operator)).await;
    let account = account_on(&a, &operator).await;
    let (before, _) = create_token(&mut tokens, &account.id, "before").await;

    cluster.kill(0);

    // Writes go on with two of three members (the client fails over when
    // the member it used is the one that died).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (after, secret) = loop {
        let request = pb::CreateTokenRequest {
            account_id: account.id.clone(),
            name: "after".into(),
            modules: vec!["commerce".into()],
            ..Default::default()
        };
        match tokens.create_token(request).await {
            Ok(made) => {
                let made = made.into_inner();
                break (made.token.unwrap(), made.secret);
            }
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no write after losing a member: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    // The replica may still be re-attaching its own watch to a live member
    // (it answers UNAVAILABLE, "try another", until it has caught up): a
    // client retries, within the same deadline.
    loop {
        match delete(&mut tokens, &before.id).await {
            Ok(_) => break,
            Err(e) if e.code() == tonic::Code::Unavailable => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no delete with two members: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("a delete with two members: {e}"),
        }
    }
    assert_eq!(
        verify(&mut tokens, &secret).await.result,
        pb::VerifyResult::Valid as i32
    );
    assert_eq!(after.status, pb::TokenStatus::Active as i32);
}

#[tokio::test]
async fn a_watcher_whose_replica_dies_resumes_on_another_and_misses_nothing() {
    let cluster = EtcdCluster::start(3).await;
    let (_keys, file, operator) = operator_file();
    let (mut a, _da) = replica(&cluster, "resume", &file).await;
    let (b, _db) = replica(&cluster, "resume", &file).await;
    let mut writer = tokens_at(&b.url(), bearer(&operator)).await;
    let account = account_on(&b, &operator).await;

    let mut on_a = tokens_at(&a.url(), bearer(&operator)).await;
    let mut events = watch(&mut on_a, pb::WatchTokensRequest::default()).await;
    let mut made = Vec::new();
    for i in 0..3 {
        made.push(
            create_token(&mut writer, &account.id, &format!("first {i}"))
                .await
                .0,
        );
    }
    let mut last = 0;
    for t in &made {
        let e = next_change(&mut events).await;
        assert_eq!(e.token.unwrap().id, t.id);
        last = e.revision;
    }

    a.kill();
    // Changes while the watcher is away.
    let mut missed = Vec::new();
    for i in 0..3 {
        missed.push(
            create_token(&mut writer, &account.id, &format!("missed {i}"))
                .await
                .0,
        );
    }
    delete(&mut writer, &made[0].id).await.unwrap();

    let mut events = watch_from(&mut writer, last + 1).await;
    let mut heard = Vec::new();
    for _ in 0..4 {
        let e = next_change(&mut events).await;
        assert!(e.revision > last, "in order, nothing twice");
        last = e.revision;
        heard.push((e.r#type, e.token.unwrap().id));
    }
    let mut expected: Vec<_> = missed
        .iter()
        .map(|t| (pb::EventType::Created as i32, t.id.clone()))
        .collect();
    expected.push((pb::EventType::Deleted as i32, made[0].id.clone()));
    assert_eq!(heard, expected);
}

#[tokio::test]
async fn a_replica_cut_off_from_etcd_stops_verifying_before_a_delete_it_missed_is_answered() {
    let mut cluster = EtcdCluster::start(3).await;
    let (_keys, file, operator) = operator_file();
    // A reaches members 1 and 2; B only member 0.
    let (a, _da) = replica_on(&cluster.store_on(&[1, 2], "fence"), &file).await;
    let (b, _db) = replica_on(&cluster.store_on(&[0], "fence"), &file).await;
    let mut on_a = tokens_at(&a.url(), bearer(&operator)).await;
    let mut on_b = tokens_at(&b.url(), bearer(&operator)).await;
    let account = account_on(&a, &operator).await;
    let (token, secret) = create_token(&mut on_a, &account.id, "cut off").await;
    assert_eq!(
        verify(&mut on_b, &secret).await.result,
        pb::VerifyResult::Valid as i32
    );

    // B loses etcd: it can neither hear the delete nor renew its lease.
    cluster.kill(0);
    let deleted = tokio::time::timeout(Duration::from_secs(20), delete(&mut on_a, &token.id))
        .await
        .expect("A answers once B's lease has expired")
        .expect("deleted through A");
    assert!(deleted.revision > 0);

    // B never says the deleted secret is good: it refuses to decide.
    let refused = on_b
        .verify_token(pb::VerifyTokenRequest {
            secret: secret.clone(),
        })
        .await
        .expect_err("a fenced replica does not answer from its stale state");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    // ...and says so to probes and load balancers, which route around it.
    let mut health = tonic_health::pb::health_client::HealthClient::new(connect(&b.url()).await);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner()
            .status;
        if status == tonic_health::pb::health_check_response::ServingStatus::NotServing as i32 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B still reports SERVING"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A, in touch with a quorum, answers.
    assert_eq!(
        verify(&mut on_a, &secret).await.result,
        pb::VerifyResult::NotFound as i32
    );
}

/// A replica whose watch stalls while its other calls still reach etcd (its
/// watch on a member that hangs, the others answering: the fail point
/// `etcd-watch-stall` stops the watch at its first answer) stops verifying
/// before a delete it never heard of is answered elsewhere. Before, its
/// lease alone kept it verifying: renewals went on through the other
/// members, and the writer gave up waiting for it after 6 s.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_replica_whose_watch_stalls_stops_verifying_before_a_delete_it_missed_is_answered() {
    let cluster = EtcdCluster::start(3).await;
    let (_keys, file, operator) = operator_file();
    let (a, _da) = replica(&cluster, "stall", &file).await;
    let mut on_a = tokens_at(&a.url(), bearer(&operator)).await;
    let account = account_on(&a, &operator).await;
    let (token, secret) = create_token(&mut on_a, &account.id, "stalled").await;
    // B loads the token as it opens; its watch then hears nothing more.
    let dir = tempfile::tempdir().unwrap();
    let b = spawn_tokend_with(
        dir.path(),
        &[
            "--store",
            &cluster.store("stall"),
            "--operator-token-file",
            file.to_str().unwrap(),
        ],
        |cmd| {
            cmd.env("FAILPOINTS", "etcd-watch-stall=return");
        },
    )
    .await;
    let mut on_b = tokens_at(&b.url(), bearer(&operator)).await;
    assert_eq!(
        verify(&mut on_b, &secret).await.result,
        pb::VerifyResult::Valid as i32
    );

    tokio::time::timeout(Duration::from_secs(20), delete(&mut on_a, &token.id))
        .await
        .expect("A answers once B's lease has lapsed")
        .expect("deleted through A");
    // From the answer on, B never says the deleted secret is good.
    for _ in 0..10 {
        match on_b
            .verify_token(pb::VerifyTokenRequest {
                secret: secret.clone(),
            })
            .await
        {
            Ok(r) => assert_ne!(
                r.into_inner().result,
                pb::VerifyResult::Valid as i32,
                "B verified a secret whose deletion was answered"
            ),
            Err(refused) => assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A member that hangs (SIGSTOP) rather than dies: calls it holds would
/// wait for the request's deadline (30 s) and watches and lease renewals on
/// it never end on their own, and its port still accepts connections, so
/// the etcd client would keep sending it calls. Each call to etcd is
/// bounded and tried again, and the member, which stops answering health
/// probes, leaves the client's rotation and takes no more calls; the
/// streams are taken again through the others. So while the member still
/// hangs, both replicas verify and write again within 15 s (2 to 3 s here;
/// without the rotation, 4 to 27 s, so CI's loaded machine is given room),
/// no write waits for the request's deadline, and the reads they answer
/// from etcd are answered (below).
#[tokio::test]
async fn a_member_that_hangs_stops_neither_verification_nor_writes_for_long() {
    let cluster = EtcdCluster::start(3).await;
    let (_keys, file, operator) = operator_file();
    let (a, _da) = replica(&cluster, "hang", &file).await;
    let (b, _db) = replica(&cluster, "hang", &file).await;
    let mut on_a = tokens_at(&a.url(), bearer(&operator)).await;
    let mut on_b = tokens_at(&b.url(), bearer(&operator)).await;
    let account = account_on(&a, &operator).await;
    let (_, secret) = create_token(&mut on_a, &account.id, "before").await;
    let (gone, _) = create_token(&mut on_a, &account.id, "deleted before").await;
    delete(&mut on_a, &gone.id).await.unwrap();

    cluster.pause(1);
    let hung = std::time::Instant::now();
    // Within 15 s of the hang, and while it lasts: every replica
    // verifies, and a write through each is answered (not cut at 30 s).
    let deadline = hung + Duration::from_secs(15);
    for (name, c) in [("A", &mut on_a), ("B", &mut on_b)] {
        loop {
            let verified = tokio::time::timeout(
                Duration::from_secs(3),
                c.verify_token(pb::VerifyTokenRequest {
                    secret: secret.clone(),
                }),
            )
            .await;
            let created = match verified {
                Ok(Ok(r)) if r.get_ref().result == pb::VerifyResult::Valid as i32 => {
                    tokio::time::timeout(
                        Duration::from_secs(10),
                        c.create_token(pb::CreateTokenRequest {
                            account_id: account.id.clone(),
                            name: format!("during the hang through {name}"),
                            ..Default::default()
                        }),
                    )
                    .await
                }
                _ => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{name} does not verify 15 s into the hang: {verified:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            };
            match created {
                Ok(Ok(_)) => {
                    eprintln!(
                        "{name} verified and wrote {:?} into the hang",
                        hung.elapsed()
                    );
                    break;
                }
                Ok(Err(e)) if e.code() != tonic::Code::Unavailable => {
                    panic!("{name}: a write refused: {e:?}")
                }
                other => assert!(
                    std::time::Instant::now() < deadline,
                    "{name} does not write 15 s into the hang: {other:?}"
                ),
            }
        }
    }
    for (name, c) in [("A", &mut on_a), ("B", &mut on_b)] {
        reads_from_etcd_are_answered(name, c, &gone.id).await;
    }
    cluster.resume(1);
}

/// A replica started while a member hangs, or while one is down, opens and
/// serves. Every member's health is asked before the client connects, and
/// only those that answer get its calls, the login included; a call made
/// while opening is bounded and tried again while unanswered. Before, the
/// page key's transaction went to the hung member about one start in three,
/// waited for HTTP/2's pings (9 s) and stopped the replica (2 of 4 starts
/// in a trial). Each start is tried once (`spawn_tokend` would start a
/// replica that exited again): the first on a new prefix, the others on
/// the prefix it made.
#[tokio::test]
async fn replicas_start_while_a_member_hangs_or_is_down() {
    let mut cluster = EtcdCluster::start(3).await;
    let (_keys, file, operator) = operator_file();
    let store = cluster.store("start in a hang");
    cluster.pause(1);
    for start in 0..4 {
        start_once(
            &store,
            &file,
            &operator,
            &format!("start {start}, a member hung"),
        )
        .await;
    }
    cluster.resume(1);
    cluster.kill(2);
    for start in 0..4 {
        start_once(
            &store,
            &file,
            &operator,
            &format!("start {start}, a member down"),
        )
        .await;
    }
}

/// Starts one replica on `store`, which must open and answer its operator.
async fn start_once(store: &str, file: &Path, operator: &str, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let p = loop {
        let addr = free_addr();
        let args = [
            "--store",
            store,
            "--operator-token-file",
            file.to_str().unwrap(),
        ];
        let mut cmd = serve_command(dir.path(), addr, &args);
        cmd.stderr(std::fs::File::create(&log).unwrap());
        if let Some(p) = launch(cmd, dir.path(), addr).await {
            break p;
        }
        let said = std::fs::read_to_string(&log).unwrap();
        // Another test took the port first: not this test's concern.
        assert!(said.contains("cannot listen"), "{what}: it stopped: {said}");
    };
    let mut accounts = accounts_at(&p.url(), bearer(operator)).await;
    let listed = tokio::time::timeout(
        Duration::from_secs(25),
        accounts.list_accounts(pb::ListAccountsRequest::default()),
    )
    .await;
    assert!(matches!(listed, Ok(Ok(_))), "{what}: {listed:?}");
}

/// The reads a replica answers from etcd rather than from memory, about
/// `gone` (deleted): a tombstone, a list of them and a token's history,
/// until each has been answered twice. No read of etcd may fail: a call
/// that went to the hung member once and was not tried elsewhere failed
/// about one read in three, and one tried for 10 s while the client kept
/// the member in its rotation failed in CI when every try landed on it.
/// The only refusal allowed is the replica's own while its lease renewal is
/// late (it tells its callers to try another), and only a few: with the
/// hung member in the rotation, a replica refused 96 to 179 of these calls
/// (no renewal it sent to the member was answered); out of it, none.
async fn reads_from_etcd_are_answered(name: &str, c: &mut Tokens, gone: &str) {
    let mut refused = Vec::new();
    let mut answers = [0; 3];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while answers.iter().any(|&n| n < 2) {
        assert!(
            std::time::Instant::now() < deadline,
            "{name}: answered {answers:?} in 60 s, refused: {refused:?}"
        );
        let tombstone = pb::GetTokenRequest {
            id: gone.into(),
            show_deleted: true,
        };
        if let Some(t) = answered(c.get_token(tombstone), &mut refused).await {
            assert_eq!(t.id, gone, "{name}");
            answers[0] += 1;
        }
        let list = pb::ListTokensRequest {
            show_deleted: true,
            ..Default::default()
        };
        if let Some(l) = answered(c.list_tokens(list), &mut refused).await {
            assert!(l.tokens.iter().any(|t| t.id == gone), "{name}: {l:?}");
            answers[1] += 1;
        }
        let history = pb::ListTokenEventsRequest {
            token_id: gone.into(),
            ..Default::default()
        };
        if let Some(h) = answered(c.list_token_events(history), &mut refused).await {
            assert_eq!(h.events.len(), 2, "{name}: {h:?}");
            answers[2] += 1;
        }
        let failed: Vec<_> = refused
            .iter()
            .filter(|m| !m.contains("lost touch with etcd"))
            .collect();
        assert!(failed.is_empty(), "{name}: reads failed: {failed:?}");
        assert!(
            refused.len() < 10,
            "{name}: {} refusals by the replica ({answers:?} answered): {refused:?}",
            refused.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "{name}: each read answered twice; {} refusals by the replica meanwhile",
        refused.len()
    );
}

/// A call's answer, or `None` with its refusal's message kept: any refusal
/// but UNAVAILABLE, or no end within 25 s (before the request's deadline),
/// fails the test.
async fn answered<T: std::fmt::Debug>(
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    refused: &mut Vec<String>,
) -> Option<T> {
    match tokio::time::timeout(Duration::from_secs(25), call).await {
        Ok(Ok(answer)) => Some(answer.into_inner()),
        Ok(Err(e)) if e.code() == tonic::Code::Unavailable => {
            refused.push(e.message().to_string());
            None
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_resume_point_etcd_has_compacted_is_out_of_range_with_the_oldest_revision() {
    let cluster = EtcdCluster::start(3).await;
    let (_keys, file, operator) = operator_file();
    let (a, _da) = replica(&cluster, "compact", &file).await;
    let mut on_a = tokens_at(&a.url(), bearer(&operator)).await;
    let account = account_on(&a, &operator).await;
    let (first, _) = create_token(&mut on_a, &account.id, "old").await;
    let old = delete(&mut on_a, &first.id).await.unwrap().revision;
    for i in 0..3 {
        create_token(&mut on_a, &account.id, &format!("new {i}")).await;
    }
    let (edited, _) = create_token(&mut on_a, &account.id, "edited").await;
    let edit = pb::UpdateTokenRequest {
        token: Some(pb::Token {
            id: edited.id.clone(),
            description: "after".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    on_a.update_token(edit).await.unwrap();
    let now = head(&mut on_a).await;
    cluster.compact(now);

    // A replica that starts now has only etcd's history to replay from.
    let (b, _db) = replica(&cluster, "compact", &file).await;
    let mut on_b = tokens_at(&b.url(), bearer(&operator)).await;
    let from_old = pb::WatchTokensRequest {
        start_revision: old,
        ..Default::default()
    };
    // Refused when the stream opens, or as its first message.
    let refused = match on_b.watch_tokens(from_old).await {
        Err(e) => e,
        Ok(stream) => stream
            .into_inner()
            .message()
            .await
            .expect_err("history etcd compacted is not replayed"),
    };
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
    assert_eq!(reason(&refused), "REVISION_COMPACTED");
    use tonic_types::StatusExt;
    let oldest: i64 = refused.get_details_error_info().unwrap().metadata["oldest_revision"]
        .parse()
        .unwrap();
    assert!(
        oldest > old && oldest <= now + 1,
        "oldest {oldest}, compacted at {now}"
    );

    // What the client does next: list again with send_initial, and go on.
    let mut w = watch(
        &mut on_b,
        pb::WatchTokensRequest {
            send_initial: true,
            ..Default::default()
        },
    )
    .await;
    let mut live = 0;
    loop {
        let e = next_change(&mut w).await;
        if e.r#type == pb::EventType::Synced as i32 {
            assert_eq!(e.revision, now);
            break;
        }
        live += 1;
    }
    assert_eq!(
        live, 5,
        "the operator's token and the four made after the deleted one"
    );

    // An audit trail goes back as far as etcd still has the token's
    // versions: the update, not the create, and says where history starts.
    let trail = on_b
        .list_token_events(pb::ListTokenEventsRequest {
            token_id: edited.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let types: Vec<_> = trail.events.iter().map(|e| e.r#type).collect();
    assert_eq!(types, [pb::EventType::Updated as i32]);
    assert!(trail.oldest_revision > trail.events[0].revision - 1);
}

#[tokio::test]
async fn replicas_that_all_watch_for_expiries_delete_each_expired_token_once() {
    let cluster = EtcdCluster::start(1).await;
    let (_keys, file, operator) = operator_file();
    let store = cluster.store("expiry");
    let args = |every| {
        [
            "--store",
            &store,
            "--operator-token-file",
            file.to_str().unwrap(),
            "--expiry-check",
            every,
        ]
        .map(str::to_string)
    };
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = spawn_tokend(da.path(), &args("50ms").each_ref().map(String::as_str)).await;
    let b = spawn_tokend(db.path(), &args("50ms").each_ref().map(String::as_str)).await;
    let mut on_a = tokens_at(&a.url(), bearer(&operator)).await;
    let mut on_b = tokens_at(&b.url(), bearer(&operator)).await;
    let account = account_on(&a, &operator).await;
    let mut events = watch(&mut on_b, pb::WatchTokensRequest::default()).await;

    let mut expiring = std::collections::BTreeSet::new();
    for n in 0..20 {
        let t = on_a
            .create_token(pb::CreateTokenRequest {
                account_id: account.id.clone(),
                name: format!("ephemeral {n}"),
                modules: vec!["commerce".into()],
                expiration: Some(pb::create_token_request::Expiration::Ttl(
                    prost_types::Duration {
                        seconds: 1,
                        nanos: 0,
                    },
                )),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .token
            .unwrap();
        expiring.insert(t.id);
    }
    // Both replicas look every 50 ms: each deletion is planned twice, and
    // committed once. Watch until every token is deleted, then a second
    // longer for any second deletion.
    let mut deleted = Vec::new();
    let mut quiet = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Ok(e) = tokio::time::timeout_at(quiet, next_change(&mut events)).await {
        if e.r#type == pb::EventType::Deleted as i32 {
            assert_eq!(e.actor, "expiry");
            deleted.push(e.token.unwrap().id);
            if deleted.len() == expiring.len() {
                quiet = tokio::time::Instant::now() + Duration::from_secs(1);
            }
        }
    }
    deleted.sort();
    assert_eq!(
        deleted,
        expiring.into_iter().collect::<Vec<_>>(),
        "each expired token deleted exactly once"
    );
    drop(on_b);
}

/// The bootstrap lock holds for as long as its holder works, past its
/// lease's time to live: replica A reads the state under the lock, then
/// takes three times its (shortened) lease's life to act on it; B, started
/// meanwhile, waits for A, and sees the operator A made. Before the lease
/// was renewed, B took the lock when the lease ran out, and both made an
/// Operations account.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_slow_bootstrap_keeps_its_lock_past_the_leases_life() {
    let cluster = EtcdCluster::start(3).await;
    let (_keys, file, operator) = operator_file();
    let store = cluster.store("slowboot");
    let args = [
        "--store",
        &store,
        "--operator-token-file",
        file.to_str().unwrap(),
    ];
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = spawn_tokend_with(dir_a.path(), &args, |cmd| {
        cmd.env(
            "FAILPOINTS",
            "etcd-bootstrap-lease-ttl=return(2);bootstrap-hold=return(6000)",
        );
    });
    let b = async {
        // A has the lock by then (it starts in well under a second).
        tokio::time::sleep(Duration::from_secs(2)).await;
        spawn_tokend(dir_b.path(), &args).await
    };
    let (a, b) = tokio::join!(a, b);
    for p in [&a, &b] {
        one_operations_account(p, &operator).await;
    }
}

/// Whether each etcd member is in the client's rotation is a gauge per
/// member: 1 for all three at start, 0 for a member while it hangs
/// (SIGSTOP), 1 again once it answers.
#[tokio::test]
async fn a_member_out_of_the_rotation_shows_in_the_metrics() {
    let cluster = EtcdCluster::start(3).await;
    let (_keys, file, _operator) = operator_file();
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_addr();
    let _p = spawn_tokend(
        dir.path(),
        &[
            "--store",
            &cluster.store("rotation"),
            "--operator-token-file",
            file.to_str().unwrap(),
            "--metrics-addr",
            &metrics.to_string(),
        ],
    )
    .await;
    let series = |i: usize| {
        format!(
            "tokend_etcd_member_in_rotation{{member=\"http://{}\"}} ",
            cluster.client(i)
        )
    };
    // The value of member i's series; None while it is not exported.
    let value = |i: usize| {
        let text = scrape(metrics);
        let line = text.lines().find(|l| l.starts_with(&series(i)))?;
        line.rsplit(' ').next()?.parse::<f64>().ok()
    };
    let until = |i: usize, want: f64| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while value(i) != Some(want) {
            assert!(
                std::time::Instant::now() < deadline,
                "member {i} never showed {want}: {:?}",
                value(i)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    for i in 0..3 {
        assert_eq!(value(i), Some(1.0), "member {i} at start");
    }
    cluster.pause(1);
    until(1, 0.0).await;
    assert_eq!((value(0), value(2)), (Some(1.0), Some(1.0)));
    cluster.resume(1);
    until(1, 1.0).await;
}
