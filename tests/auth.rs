//! docs/contract.md §4: who may do what, watch isolation, credential revocation cutting
//! streams, the operator bootstrap, TLS and mTLS, request limits.

mod common;

use common::*;
use std::time::Duration;
use tokend::proto as pb;
use tonic::Code;

/// Two accounts and every kind of caller the matrix needs.
struct World {
    s: TestServer,
    a: pb::Account,
    b: pb::Account,
    /// A token of account A that the calls below act on.
    target: pb::Token,
    callers: Vec<(&'static str, Bearer)>,
}

async fn world() -> World {
    let s = TestServer::start().await;
    let a = create_account(&s, ALL_MODULES).await;
    let b = create_account(&s, ALL_MODULES).await;
    let mut op = s.tokens().await;
    let (target, _) = issue(&mut op, &a.id, "target", &["commerce"]).await;
    let (_, a_manager) = issue(&mut op, &a.id, "a manager", &["access-management"]).await;
    let (_, a_plain) = issue(&mut op, &a.id, "a plain", &["commerce"]).await;
    let (_, b_manager) = issue(&mut op, &b.id, "b manager", &["access-management"]).await;
    let (disabled, disabled_secret) =
        issue(&mut op, &a.id, "disabled", &["access-management"]).await;
    let (deleted, deleted_secret) = issue(&mut op, &a.id, "deleted", &["access-management"]).await;
    op.disable_token(pb::DisableTokenRequest {
        id: disabled.id,
        etag: String::new(),
    })
    .await
    .unwrap();
    delete(&mut op, &deleted.id).await.unwrap();
    let callers = vec![
        ("operator", s.operator()),
        ("a-manager", bearer(&a_manager)),
        ("a-plain", bearer(&a_plain)),
        ("b-manager", bearer(&b_manager)),
        ("disabled", bearer(&disabled_secret)),
        ("deleted", bearer(&deleted_secret)),
        ("none", Bearer::none()),
        ("garbage", bearer("idt:TKN-0000-0000:garbage")),
    ];
    World {
        s,
        a,
        b,
        target,
        callers,
    }
}

const OK: Option<Code> = None;
const UA: Option<Code> = Some(Code::Unauthenticated);
const PD: Option<Code> = Some(Code::PermissionDenied);
const NF: Option<Code> = Some(Code::NotFound);
const FP: Option<Code> = Some(Code::FailedPrecondition);
const AB: Option<Code> = Some(Code::Aborted);

/// Every RPC, as each caller, with the exact status (None = OK). Calls are
/// chosen to change nothing that later rows depend on.
#[tokio::test]
async fn the_permission_matrix() {
    let w = world().await;
    let rows: &[(&str, [Option<Code>; 8])] = &[
        //                     operator a-mgr a-plain b-mgr disabled deleted none garbage
        ("CreateToken(A)", [OK, OK, PD, NF, UA, UA, UA, UA]),
        ("GetToken(A)", [OK, OK, PD, NF, UA, UA, UA, UA]),
        ("ListTokens(A)", [OK, OK, PD, NF, UA, UA, UA, UA]),
        ("ListTokens()", [OK, OK, PD, OK, UA, UA, UA, UA]),
        ("UpdateToken(A)", [OK, OK, PD, NF, UA, UA, UA, UA]),
        ("EnableToken(A)", [FP, FP, PD, NF, UA, UA, UA, UA]),
        (
            "DisableToken(A, stale etag)",
            [AB, AB, PD, NF, UA, UA, UA, UA],
        ),
        (
            "DeleteToken(A, validate_only)",
            [OK, OK, PD, NF, UA, UA, UA, UA],
        ),
        (
            "DeleteToken(A, allow_missing, stale etag)",
            [AB, AB, PD, OK, UA, UA, UA, UA],
        ),
        ("VerifyToken", [OK, OK, OK, OK, UA, UA, UA, UA]),
        ("WatchTokens(A)", [OK, OK, PD, NF, UA, UA, UA, UA]),
        ("WatchTokens()", [OK, OK, PD, OK, UA, UA, UA, UA]),
        ("ListTokenEvents(A)", [OK, OK, PD, NF, UA, UA, UA, UA]),
        ("CreateAccount", [OK, PD, PD, PD, UA, UA, UA, UA]),
        ("GetAccount(A)", [OK, PD, PD, PD, UA, UA, UA, UA]),
        ("ListAccounts", [OK, PD, PD, PD, UA, UA, UA, UA]),
        ("UpdateAccount(A)", [OK, PD, PD, PD, UA, UA, UA, UA]),
        ("SaveSnapshot", [OK, PD, PD, PD, UA, UA, UA, UA]),
    ];
    let (a, t) = (w.a.id.clone(), w.target.clone());
    let mut failures = Vec::new();
    for (col, (who, bearer)) in w.callers.iter().enumerate() {
        let mut c = w.s.tokens_as(bearer.clone()).await;
        let mut acc = w.s.accounts_as(bearer.clone()).await;
        for (rpc, expected) in rows {
            let got = match *rpc {
                "CreateToken(A)" => code(
                    c.create_token(pb::CreateTokenRequest {
                        account_id: a.clone(),
                        name: format!("by {who}"),
                        ..Default::default()
                    })
                    .await,
                ),
                "GetToken(A)" => code(get(&mut c, &t.id, false).await),
                "ListTokens(A)" => code(
                    c.list_tokens(pb::ListTokensRequest {
                        account_id: a.clone(),
                        ..Default::default()
                    })
                    .await,
                ),
                "ListTokens()" => code(c.list_tokens(pb::ListTokensRequest::default()).await),
                "UpdateToken(A)" => code(
                    c.update_token(pb::UpdateTokenRequest {
                        token: Some(pb::Token {
                            id: t.id.clone(),
                            name: t.name.clone(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .await,
                ),
                "EnableToken(A)" => code(
                    c.enable_token(pb::EnableTokenRequest {
                        id: t.id.clone(),
                        etag: String::new(),
                    })
                    .await,
                ),
                "DisableToken(A, stale etag)" => code(
                    c.disable_token(pb::DisableTokenRequest {
                        id: t.id.clone(),
                        etag: "0000000000000000".into(),
                    })
                    .await,
                ),
                "DeleteToken(A, validate_only)" => code(
                    c.delete_token(pb::DeleteTokenRequest {
                        id: t.id.clone(),
                        validate_only: true,
                        ..Default::default()
                    })
                    .await,
                ),
                "DeleteToken(A, allow_missing, stale etag)" => code(
                    c.delete_token(pb::DeleteTokenRequest {
                        id: t.id.clone(),
                        etag: "0000000000000000".into(),
                        allow_missing: true,
                        ..Default::default()
                    })
                    .await,
                ),
                "VerifyToken" => code(
                    c.verify_token(pb::VerifyTokenRequest {
                        secret: "not a secret".into(),
                    })
                    .await,
                ),
                "WatchTokens(A)" => code(
                    c.watch_tokens(pb::WatchTokensRequest {
                        account_id: a.clone(),
                        ..Default::default()
                    })
                    .await,
                ),
                "WatchTokens()" => code(c.watch_tokens(pb::WatchTokensRequest::default()).await),
                "ListTokenEvents(A)" => code(
                    c.list_token_events(pb::ListTokenEventsRequest {
                        token_id: t.id.clone(),
                        ..Default::default()
                    })
                    .await,
                ),
                "CreateAccount" => code(
                    acc.create_account(pb::CreateAccountRequest {
                        name: format!("by {who}"),
                        r#type: pb::AccountType::Client as i32,
                        modules: vec![],
                        ..Default::default()
                    })
                    .await,
                ),
                "GetAccount(A)" => code(
                    acc.get_account(pb::GetAccountRequest { id: a.clone() })
                        .await,
                ),
                "ListAccounts" => code(acc.list_accounts(pb::ListAccountsRequest::default()).await),
                "UpdateAccount(A)" => code(
                    acc.update_account(pb::UpdateAccountRequest {
                        account: Some(pb::Account {
                            id: a.clone(),
                            name: w.a.name.clone(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .await,
                ),
                "SaveSnapshot" => code(acc.save_snapshot(pb::SaveSnapshotRequest {}).await),
                other => unreachable!("{other}"),
            };
            if got != expected[col] {
                failures.push(format!(
                    "{rpc} as {who}: expected {:?}, got {got:?}",
                    expected[col]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[tokio::test]
async fn unauthenticated_answers_are_all_alike() {
    let w = world().await;
    let mut messages = Vec::new();
    for (who, bearer) in &w.callers[4..] {
        let e =
            w.s.tokens_as(bearer.clone())
                .await
                .list_tokens(pb::ListTokensRequest::default())
                .await
                .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{who}");
        messages.push(e.message().to_string());
    }
    messages.dedup();
    assert_eq!(messages.len(), 1, "{messages:?}");
    // Odd headers too: wrong scheme, no scheme, raw bytes.
    for value in ["Basic abc", "Bearer", "idt:TKN-0000-0000:x"] {
        let mut c = w.s.tokens_as(Bearer::none()).await;
        let mut req = tonic::Request::new(pb::ListTokensRequest::default());
        req.metadata_mut()
            .insert("authorization", value.parse().unwrap());
        assert_eq!(
            c.list_tokens(req).await.unwrap_err().code(),
            Code::Unauthenticated,
            "{value}"
        );
    }
    let mut c = w.s.tokens_as(Bearer::none()).await;
    let mut req = tonic::Request::new(pb::ListTokensRequest::default());
    req.metadata_mut().insert(
        "authorization",
        tonic::metadata::MetadataValue::try_from(&b"Bearer \xff\xfe"[..])
            .unwrap_or_else(|_| "Bearer x".parse().unwrap()),
    );
    assert_eq!(
        c.list_tokens(req).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn a_disabled_account_locks_out_its_tokens() {
    let s = TestServer::start().await;
    let a = create_account(&s, ALL_MODULES).await;
    let mut op = s.tokens().await;
    let (_, secret) = issue(&mut op, &a.id, "m", &["access-management"]).await;
    let mut m = s.tokens_as(bearer(&secret)).await;
    m.list_tokens(pb::ListTokensRequest::default())
        .await
        .unwrap();
    set_account_status(&s, &a.id, pb::AccountStatus::Disabled).await;
    let e = m
        .list_tokens(pb::ListTokensRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn watch_streams_never_carry_another_accounts_events() {
    let w = world().await;
    let b_manager = w.callers[3].1.clone();
    let mut b = w.s.tokens_as(b_manager).await;
    let mut op = w.s.tokens().await;

    // Replay from the start, snapshot and live: B sees B only.
    let mut replay = watch_from(&mut b, 1).await;
    let mut snapshot = watch(
        &mut b,
        pb::WatchTokensRequest {
            send_initial: true,
            ..Default::default()
        },
    )
    .await;
    let mut everything = watch(&mut op, pb::WatchTokensRequest::default()).await;
    let (_, _) = create_token(&mut op, &w.a.id, "in A").await;
    let (in_b, _) = create_token(&mut op, &w.b.id, "in B").await;

    let mut accounts_seen = Vec::new();
    loop {
        let e = next_change(&mut replay).await;
        accounts_seen.push(e.token.as_ref().unwrap().account_id.clone());
        if e.token.unwrap().id == in_b.id {
            break;
        }
    }
    assert!(
        accounts_seen.iter().all(|acc| *acc == w.b.id),
        "{accounts_seen:?}"
    );
    loop {
        let e = next_change(&mut snapshot).await;
        if let Some(t) = &e.token {
            assert_eq!(t.account_id, w.b.id);
        }
        if e.token.is_some_and(|t| t.id == in_b.id) {
            break;
        }
    }
    // The operator sees both accounts.
    let first = next_change(&mut everything).await.token.unwrap();
    let second = next_change(&mut everything).await.token.unwrap();
    assert_eq!(
        (first.account_id, second.account_id),
        (w.a.id.clone(), w.b.id.clone())
    );
}

#[tokio::test]
async fn deleting_or_disabling_a_credential_cuts_its_open_streams() {
    let s = TestServer::start().await;
    let a = create_account(&s, ALL_MODULES).await;
    let mut op = s.tokens().await;
    for how in ["delete", "disable", "disable account"] {
        let (me, secret) = issue(&mut op, &a.id, "watcher", &["access-management"]).await;
        let mut c = s.tokens_as(bearer(&secret)).await;
        let mut w = watch(&mut c, pb::WatchTokensRequest::default()).await;
        match how {
            "delete" => {
                delete(&mut op, &me.id).await.unwrap();
            }
            "disable" => {
                op.disable_token(pb::DisableTokenRequest {
                    id: me.id.clone(),
                    etag: String::new(),
                })
                .await
                .unwrap();
            }
            _ => {
                let mut accounts = s.accounts().await;
                accounts
                    .update_account(pb::UpdateAccountRequest {
                        account: Some(pb::Account {
                            id: a.id.clone(),
                            status: pb::AccountStatus::Disabled as i32,
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            }
        }
        if how != "disable account" {
            // The revoking event itself is delivered first.
            let e = next_change(&mut w).await;
            assert_eq!(e.token.unwrap().id, me.id, "{how}");
        }
        let end = tokio::time::timeout(Duration::from_secs(5), w.message())
            .await
            .expect("stream ended");
        let status = end.expect_err("with a status");
        assert_eq!(status.code(), Code::Unauthenticated, "{how}");
        assert_eq!(reason(&status), "CREDENTIAL_REVOKED", "{how}");
        if how == "disable account" {
            set_account_status(&s, &a.id, pb::AccountStatus::Active).await;
        }
    }
}

#[tokio::test]
async fn audit_and_events_name_the_calling_token() {
    let s = TestServer::start().await;
    let a = create_account(&s, ALL_MODULES).await;
    let mut op = s.tokens().await;
    let (manager, secret) = issue(&mut op, &a.id, "manager", &["access-management"]).await;
    let mut m = s.tokens_as(bearer(&secret)).await;
    let mut events = watch(&mut op, pb::WatchTokensRequest::default()).await;
    let (t, _) = create_token(&mut m, &a.id, "made by manager").await;
    assert_eq!(t.audit.unwrap().created.unwrap().by, manager.id);
    let gone = delete(&mut m, &t.id).await.unwrap().token.unwrap();
    assert_eq!(gone.audit.unwrap().deleted.unwrap().by, manager.id);
    for _ in 0..2 {
        assert_eq!(next_change(&mut events).await.actor, manager.id);
    }
}

#[tokio::test]
async fn bootstrap_writes_a_private_operator_secret_and_never_logs_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("tokend.log");
    let data = dir.path().join("data");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "trace")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut p = Process {
        child,
        addr: "127.0.0.1:1".parse().unwrap(),
        dir: data.clone(),
    };
    for _ in 0..200 {
        if data.join("operator.token").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    p.terminate();
    let secret = operator_secret(&data);
    assert!(tokend::secret::parse(&secret).is_ok());
    let mode = std::fs::metadata(data.join("operator.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("operator.token"), "the path is logged");
    assert!(
        !logs.contains(&secret[18..]),
        "the secret leaked into the log"
    );

    // A restart reuses it; no second operator appears.
    let p = spawn_tokend(&data, &[]).await;
    let list = p
        .tokens()
        .await
        .list_tokens(pb::ListTokensRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        list.tokens.iter().filter(|t| t.name == "operator").count(),
        1
    );
    assert_eq!(operator_secret(&data), secret);
}

#[tokio::test]
async fn a_supplied_operator_secret_is_used_instead() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mounted-secret");
    let id = tokend::domain::TokenId::parse("TKN-4242-4242").unwrap();
    let secret = tokend::secret::Secret::generate(&id);
    std::fs::write(&file, format!("{}\n", secret.expose())).unwrap();
    let data = dir.path().join("data");
    let p = spawn_tokend(&data, &["--operator-token-file", file.to_str().unwrap()]).await;
    assert!(!data.join("operator.token").exists());
    let mut c = tokens_at(&p.url(), bearer(secret.expose())).await;
    let me = get(&mut c, "TKN-4242-4242", false).await.unwrap();
    assert_eq!(me.name, "operator");
    drop(p);

    // A file that holds no secret is refused at start-up, in one line.
    std::fs::write(&file, "hunter2").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("other"))
        .arg("--operator-token-file")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .last()
            .unwrap()
            .contains("does not hold a tokend secret"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"));
}

#[tokio::test]
async fn oversize_requests_are_refused_and_change_nothing() {
    let s = TestServer::start().await;
    let a = create_account(&s, ALL_MODULES).await;
    let mut c = s.tokens().await;
    let before = head(&mut c).await;
    let e = c
        .create_token(pb::CreateTokenRequest {
            account_id: a.id.clone(),
            name: "big".into(),
            description: "x".repeat(5 * 1024 * 1024),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert_eq!(head(&mut c).await, before);
}

mod tls {
    use super::*;
    use common::pki::{Pki, list_over_tls, pki};
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};

    async fn tls_server(p: &Pki, mtls: bool) -> (TestServer, tempfile::TempDir) {
        tokend::server::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        let files = tokend::server::TlsFiles {
            cert: write("server.pem", &p.server.0),
            key: write("server.key", &p.server.1),
            client_ca: mtls.then(|| write("ca.pem", &p.ca_pem)),
        };
        let s = TestServer::start_with(move |c| c.tls = Some(files.clone())).await;
        (s, dir)
    }

    async fn call(s: &TestServer, tls: ClientTlsConfig) -> Result<(), String> {
        list_over_tls(s.addr.port(), tls, s.operator()).await
    }

    #[tokio::test]
    async fn tls_serves_clients_that_trust_the_ca() {
        let p = pki();
        let (s, _dir) = tls_server(&p, false).await;
        let trusting = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&p.ca_pem))
            .domain_name("localhost");
        call(&s, trusting).await.unwrap();
        // A plaintext client cannot talk to it.
        let mut plain = s.tokens().await;
        assert!(
            plain
                .list_tokens(pb::ListTokensRequest::default())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn mtls_requires_a_client_certificate_from_the_ca() {
        let p = pki();
        let (s, _dir) = tls_server(&p, true).await;
        let base = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&p.ca_pem))
            .domain_name("localhost");
        assert!(
            call(&s, base.clone()).await.is_err(),
            "no client certificate"
        );
        let with_cert = base.identity(Identity::from_pem(&p.client.0, &p.client.1));
        call(&s, with_cert).await.unwrap();
    }
}

/// The Operations account's id (the bootstrap operator's account).
async fn operations_account(c: &mut Tokens) -> String {
    let id = operator_id(c).await;
    get(c, &id, false).await.unwrap().account_id
}

#[tokio::test]
async fn only_operators_grant_operator_rights_or_read_tombstones() {
    let s = TestServer::start().await;
    let mut op = s.tokens().await;
    let ops = operations_account(&mut op).await;
    // A token manager inside the Operations account, without operator rights.
    let (me, secret) = issue(&mut op, &ops, "ops helper", &["access-management"]).await;
    let mut helper = s.tokens_as(bearer(&secret)).await;
    let escalate = vec![
        "access-management".into(),
        "platform-account-management".into(),
    ];
    let e = helper
        .create_token(pb::CreateTokenRequest {
            account_id: ops.clone(),
            name: "sneaky".into(),
            modules: escalate.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = helper
        .update_token(pb::UpdateTokenRequest {
            token: Some(pb::Token {
                id: me.id.clone(),
                modules: escalate,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // Tombstones: operators only.
    let (gone, _) = create_token(&mut helper, &ops, "gone").await;
    delete(&mut helper, &gone.id).await.unwrap();
    assert_eq!(
        get(&mut helper, &gone.id, true).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let e = helper
        .list_tokens(pb::ListTokensRequest {
            show_deleted: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(
        get(&mut op, &gone.id, true).await.unwrap().status,
        pb::TokenStatus::Deleted as i32
    );
    // A deleted token's audit trail ends in its tombstone: the same rule.
    let trail = |id: &str| pb::ListTokenEventsRequest {
        token_id: id.into(),
        ..Default::default()
    };
    let e = helper.list_token_events(trail(&gone.id)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let events = op
        .list_token_events(trail(&gone.id))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events[0].r#type, pb::EventType::Deleted as i32);
}

#[tokio::test]
async fn losing_the_module_a_stream_needs_cuts_it() {
    let s = TestServer::start().await;
    let a = create_account(&s, ALL_MODULES).await;
    let mut op = s.tokens().await;
    let (me, secret) = issue(
        &mut op,
        &a.id,
        "watcher",
        &["access-management", "commerce"],
    )
    .await;
    let mut w = watch(
        &mut s.tokens_as(bearer(&secret)).await,
        pb::WatchTokensRequest::default(),
    )
    .await;
    op.update_token(pb::UpdateTokenRequest {
        token: Some(pb::Token {
            id: me.id.clone(),
            modules: vec!["commerce".into()],
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(next_change(&mut w).await.token.unwrap().id, me.id);
    let status = tokio::time::timeout(Duration::from_secs(5), w.message())
        .await
        .unwrap()
        .expect_err("cut");
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::Unauthenticated, "CREDENTIAL_REVOKED")
    );
}

#[tokio::test]
async fn tokend_still_starts_after_its_bootstrap_operator_token_was_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_tokend(dir.path(), &[]).await;
    let mut op = p.tokens().await;
    let ops = operations_account(&mut op).await;
    let bootstrap = operator_id(&mut op).await;
    // A replacement operator first, then the (say, leaked) original goes.
    let (_, secret) = issue(
        &mut op,
        &ops,
        "operator 2",
        &["access-management", "platform-account-management"],
    )
    .await;
    delete(&mut op, &bootstrap).await.unwrap();
    drop((op, p));
    let p = spawn_tokend(dir.path(), &[]).await;
    let mut replacement = tokens_at(&p.url(), bearer(&secret)).await;
    replacement
        .list_tokens(pb::ListTokensRequest::default())
        .await
        .unwrap();
    let mut old = p.tokens().await;
    let e = old
        .list_tokens(pb::ListTokensRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}

/// The way back in when the last operator token is gone (an operator who
/// deleted the token they were signed in with): moved away, its file is
/// written anew at the next start, with a working token. While an operator
/// can call, a missing file makes nothing, and a missing
/// `--operator-token-file` (a wrong path) is refused.
#[tokio::test]
async fn a_new_operator_credential_is_made_only_when_no_operator_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_tokend(dir.path(), &[]).await;
    let mut op = p.tokens().await;
    let bootstrap = operator_id(&mut op).await;
    let first = operator_secret(dir.path());

    // With the operator alive, a wrong --operator-token-file path is refused
    // and left unwritten.
    drop((op, p));
    let wrong = dir.path().join("no-such.token");
    let refused = launch(
        serve_command(
            dir.path(),
            free_addr(),
            &["--operator-token-file", wrong.to_str().unwrap()],
        ),
        dir.path(),
        free_addr(),
    )
    .await;
    assert!(refused.is_none(), "served with a missing credential file");
    assert!(!wrong.exists());

    // The operator deletes its own token: nobody can call, even after a
    // restart with the file (which still names the deleted token).
    let p = spawn_tokend(dir.path(), &[]).await;
    delete(&mut p.tokens().await, &bootstrap).await.unwrap();
    drop(p);
    let p = spawn_tokend(dir.path(), &[]).await;
    let e = p
        .tokens()
        .await
        .list_tokens(pb::ListTokensRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    drop(p);

    // The file moved away: the next start writes a new one, which works.
    std::fs::rename(
        dir.path().join("operator.token"),
        dir.path().join("deleted.token"),
    )
    .unwrap();
    let p = spawn_tokend(dir.path(), &[]).await;
    let second = operator_secret(dir.path());
    assert_ne!(second, first);
    let mut op = p.tokens().await;
    let ops = operations_account(&mut op).await;
    assert!(!ops.is_empty());
    assert_ne!(operator_id(&mut op).await, bootstrap);

    // And now that an operator can call again, a start without the file
    // makes none.
    drop((op, p));
    std::fs::remove_file(dir.path().join("operator.token")).unwrap();
    let addr = free_addr();
    let _p = Process {
        child: serve_command(dir.path(), addr, &[]).spawn().unwrap(),
        addr,
        dir: dir.path().to_path_buf(),
    };
    // (`launch` would wait for the file.) Serving once the new operator's
    // call is answered.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let served = match tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            Ok(channel) => pb::token_service_client::TokenServiceClient::with_interceptor(
                channel,
                bearer(&second),
            )
            .list_tokens(pb::ListTokensRequest::default())
            .await
            .is_ok(),
            Err(_) => false,
        };
        if served {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!dir.path().join("operator.token").exists());
}
