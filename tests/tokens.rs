//! The token lifecycle and the rules of docs/contract.md §1 and §3 over gRPC.

mod common;

use common::*;
use tokend::proto as pb;
use tonic::Code;

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

#[tokio::test]
async fn full_lifecycle_create_verify_update_disable_enable_delete() {
    let s = TestServer::start().await;
    let acc = create_account(&s, ALL_MODULES).await;
    let mut c = s.tokens().await;
    let created = c
        .create_token(pb::CreateTokenRequest {
            account_id: acc.id.clone(),
            name: "ci-deploy".into(),
            description: "Deploys from CI".into(),
            icon: "https://example.com/ci.png".into(),
            modules: vec!["commerce".into(), "billing".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let t = created.token.unwrap();
    let secret = created.secret;
    assert!(t.id.starts_with("TKN-") && t.id.len() == 13);
    assert!(secret.starts_with(&format!("idt:{}:", t.id)));
    assert_eq!(secret.len(), tokend::secret::SECRET_LEN);
    assert_eq!(t.status, pb::TokenStatus::Active as i32);
    assert_eq!(t.revision, 1);
    assert_eq!(t.modules, ["billing", "commerce"]);
    assert_eq!(
        t.audit.as_ref().unwrap().created.as_ref().unwrap().by,
        operator_id(&mut c).await
    );
    assert!(t.last_access_time.is_none());

    // The secret is shown once: nothing else ever returns it.
    let fetched = get(&mut c, &t.id, false).await.unwrap();
    assert_eq!(fetched, t);
    assert!(!format!("{fetched:?}").contains(&secret[18..]));

    let v = verify(&mut c, &secret).await;
    assert!(v.valid);
    assert_eq!(v.result, pb::VerifyResult::Valid as i32);
    assert_eq!(v.token.as_ref().unwrap().id, t.id);
    assert_eq!(v.account.as_ref().unwrap().id, acc.id);
    // Verification records an approximate access time and changes nothing else.
    let after = get(&mut c, &t.id, false).await.unwrap();
    assert!(after.last_access_time.is_some());
    assert_eq!((after.revision, &after.etag), (t.revision, &t.etag));
    // A watch's snapshot shows the token as it is now, its last access
    // included, as a read does.
    let mut snap = c
        .watch_tokens(pb::WatchTokensRequest {
            account_id: acc.id.clone(),
            send_initial: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = snap.message().await.unwrap().unwrap();
    assert_eq!(first.r#type, pb::EventType::Snapshot as i32);
    assert_eq!(
        first.token.unwrap().last_access_time,
        after.last_access_time
    );

    let updated = c
        .update_token(pb::UpdateTokenRequest {
            token: Some(pb::Token {
                id: t.id.clone(),
                name: "ci deploy v2".into(),
                description: String::new(),
                ..Default::default()
            }),
            update_mask: mask(&["name", "description"]),
            etag: t.etag.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.name, "ci deploy v2");
    assert_eq!(updated.description, "", "a masked empty field clears it");
    assert_eq!(updated.icon, t.icon, "unmasked fields stay");
    assert_eq!(updated.revision, 2);
    assert_ne!(updated.etag, t.etag);
    assert!(updated.audit.as_ref().unwrap().updated.is_some());

    let disabled = c
        .disable_token(pb::DisableTokenRequest {
            id: t.id.clone(),
            etag: updated.etag.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(disabled.status, pb::TokenStatus::Disabled as i32);
    assert_eq!(
        verify(&mut c, &secret).await.result,
        pb::VerifyResult::Disabled as i32
    );
    let again = c
        .disable_token(pb::DisableTokenRequest {
            id: t.id.clone(),
            etag: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert_eq!(reason(&again), "TOKEN_NOT_ACTIVE");

    let enabled = c
        .enable_token(pb::EnableTokenRequest {
            id: t.id.clone(),
            etag: disabled.etag.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(enabled.status, pb::TokenStatus::Active as i32);
    assert_eq!(enabled.revision, 4);
    let again = c
        .enable_token(pb::EnableTokenRequest {
            id: t.id.clone(),
            etag: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert!(verify(&mut c, &secret).await.valid);

    let stale = c
        .enable_token(pb::EnableTokenRequest {
            id: t.id.clone(),
            etag: t.etag.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);

    let r = delete(&mut c, &t.id).await.unwrap();
    assert_eq!(r.token.unwrap().revision, 5);
    assert!(!verify(&mut c, &secret).await.valid);
}

#[tokio::test]
async fn verify_tells_malformed_unknown_disabled_and_account_disabled_apart() {
    let s = TestServer::start().await;
    let acc = create_account(&s, ALL_MODULES).await;
    let mut c = s.tokens().await;
    let (_, secret) = create_token(&mut c, &acc.id, "t").await;

    // A bad checksum is malformed: decided offline.
    let mut forged = secret.clone().into_bytes();
    let last = forged.len() - 10;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    for bad in ["", "hello", "Bearer x", forged.as_str()] {
        let v = verify(&mut c, bad).await;
        assert_eq!(v.result, pb::VerifyResult::Malformed as i32, "{bad}");
        assert!(!v.valid && v.token.is_none());
    }
    // Well-formed, but not ours.
    let other =
        tokend::secret::Secret::generate(&tokend::domain::TokenId::parse("TKN-0000-0001").unwrap());
    assert_eq!(
        verify(&mut c, other.expose()).await.result,
        pb::VerifyResult::NotFound as i32
    );

    // The account is disabled: its tokens stop verifying, and come back.
    let mut a = s.accounts().await;
    let disabled = a
        .update_account(pb::UpdateAccountRequest {
            account: Some(pb::Account {
                id: acc.id.clone(),
                status: pb::AccountStatus::Disabled as i32,
                ..Default::default()
            }),
            update_mask: mask(&["status"]),
            etag: acc.etag.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let v = verify(&mut c, &secret).await;
    assert_eq!(v.result, pb::VerifyResult::AccountDisabled as i32);
    assert!(!v.valid);
    // A status that is none of them is named by its path, and changes nothing.
    let e = a
        .update_account(pb::UpdateAccountRequest {
            account: Some(pb::Account {
                id: acc.id.clone(),
                status: 99,
                ..Default::default()
            }),
            update_mask: mask(&["status"]),
            etag: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), field(&e).as_str()),
        (Code::InvalidArgument, "account.status")
    );
    // A disabled account gets no new tokens.
    let e = c
        .create_token(pb::CreateTokenRequest {
            account_id: acc.id.clone(),
            name: "new".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::FailedPrecondition, "ACCOUNT_DISABLED")
    );
    a.update_account(pb::UpdateAccountRequest {
        account: Some(pb::Account {
            id: acc.id.clone(),
            status: pb::AccountStatus::Active as i32,
            ..Default::default()
        }),
        update_mask: mask(&["status"]),
        etag: disabled.etag,
    })
    .await
    .unwrap();
    assert!(verify(&mut c, &secret).await.valid);
}

/// Bad input gets a precise status and leaves the store unchanged.
#[tokio::test]
async fn invalid_requests_are_refused_precisely_and_change_nothing() {
    let s = TestServer::start().await;
    let acc = create_account(&s, &["commerce"]).await;
    let mut c = s.tokens().await;
    let (t, _) = create_token(&mut c, &acc.id, "t").await;
    let next = head(&mut c).await + 1;
    let mut watch_all = watch_from(&mut c, next).await;

    let create = |name: &str, modules: &[&str], account: &str| pb::CreateTokenRequest {
        account_id: account.into(),
        name: name.into(),
        description: String::new(),
        icon: String::new(),
        modules: modules.iter().map(|m| m.to_string()).collect(),
        ..Default::default()
    };
    let cases: Vec<(pb::CreateTokenRequest, Code, &str)> = vec![
        (
            create("", &[], &acc.id),
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
        (
            create(&"a".repeat(201), &[], &acc.id),
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
        (
            create("semi;colon", &[], &acc.id),
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
        (
            create("ok", &["no-such-module"], &acc.id),
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
        (
            create("ok", &["billing"], &acc.id),
            Code::FailedPrecondition,
            "MODULE_NOT_IN_ACCOUNT",
        ),
        (
            create("ok", &[], ""),
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
        (
            create("ok", &[], "ACC-12"),
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
        (
            create("ok", &[], "ACC-0000-0000"),
            Code::NotFound,
            "ACCOUNT_NOT_FOUND",
        ),
        (
            pb::CreateTokenRequest {
                description: "x".repeat(2001),
                ..create("ok", &[], &acc.id)
            },
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
        (
            pb::CreateTokenRequest {
                icon: "javascript:alert(1)".into(),
                ..create("ok", &[], &acc.id)
            },
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
    ];
    for (req, code, why) in cases {
        let e = c.create_token(req.clone()).await.unwrap_err();
        assert_eq!((e.code(), reason(&e).as_str()), (code, why), "{req:?}");
        assert!(e.message().len() < 300, "short message: {}", e.message());
    }

    // Update: unknown mask paths and immutable fields.
    for paths in [
        &["status"][..],
        &["account_id"],
        &["secret"],
        &["name", "bogus"],
    ] {
        let e = c
            .update_token(pb::UpdateTokenRequest {
                token: Some(pb::Token {
                    id: t.id.clone(),
                    name: "x".into(),
                    ..Default::default()
                }),
                update_mask: mask(paths),
                etag: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{paths:?}");
    }
    let e = c
        .update_token(pb::UpdateTokenRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // A bad value is named by its path in the request, as the mask names it.
    let past = prost_types::Timestamp {
        seconds: 1,
        nanos: 0,
    };
    for (path, token) in [
        (
            "token.name",
            pb::Token {
                name: "semi;colon".into(),
                ..Default::default()
            },
        ),
        (
            "token.description",
            pb::Token {
                description: "x".repeat(2001),
                ..Default::default()
            },
        ),
        (
            "token.icon",
            pb::Token {
                icon: "ftp://example.com/x.png".into(),
                ..Default::default()
            },
        ),
        (
            "token.modules",
            pb::Token {
                modules: vec!["no-such-module".into()],
                ..Default::default()
            },
        ),
        (
            "token.expire_time",
            pb::Token {
                expire_time: Some(past),
                ..Default::default()
            },
        ),
    ] {
        let e = c
            .update_token(pb::UpdateTokenRequest {
                token: Some(pb::Token {
                    id: t.id.clone(),
                    ..token
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), field(&e).as_str()),
            (Code::InvalidArgument, path),
            "{e:?}"
        );
    }

    for id in ["", "TKN-1", "tkn-0000-0000", "ACC-0000-0000"] {
        let e = get(&mut c, id, false).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{id:?}");
    }
    assert_eq!(
        get(&mut c, "TKN-0000-0000", false)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // Nothing above changed anything: the token is as it was, and the next
    // event is the one a write made now (nothing came between, however
    // late it would have arrived).
    assert_eq!(get(&mut c, &t.id, false).await.unwrap(), t);
    let (sentinel, _) = create_token(&mut c, &acc.id, "after the refusals").await;
    let heard = next_change(&mut watch_all).await;
    assert_eq!(
        heard.token.map(|t| t.id),
        Some(sentinel.id),
        "an event after refused requests"
    );
    assert_follows(
        next - 1,
        heard.revision,
        "the first event after the refusals",
    );
}

#[tokio::test]
async fn update_masks_follow_aip_134_and_no_op_updates_change_nothing() {
    let s = TestServer::start().await;
    let acc = create_account(&s, ALL_MODULES).await;
    let mut c = s.tokens().await;
    let (t, _) = create_token(&mut c, &acc.id, "t").await;

    // No mask: the fields set in the request.
    let u = c
        .update_token(pb::UpdateTokenRequest {
            token: Some(pb::Token {
                id: t.id.clone(),
                modules: vec!["billing".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (u.modules.clone(), u.name.clone(), u.revision),
        (vec!["billing".to_string()], "t".to_string(), 2)
    );

    // The same values again: no change, no new revision.
    let same = c
        .update_token(pb::UpdateTokenRequest {
            token: Some(pb::Token {
                id: t.id.clone(),
                modules: vec!["billing".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(same, u);

    // "*" replaces every updatable field; the etag may come inside the token.
    let star = c
        .update_token(pb::UpdateTokenRequest {
            token: Some(pb::Token {
                id: t.id.clone(),
                name: "renamed".into(),
                etag: u.etag.clone(),
                ..Default::default()
            }),
            update_mask: mask(&["*"]),
            etag: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            star.name.as_str(),
            star.description.as_str(),
            star.modules.len()
        ),
        ("renamed", "", 0)
    );

    let e = c
        .update_token(pb::UpdateTokenRequest {
            token: Some(pb::Token {
                id: t.id.clone(),
                name: "stale".into(),
                etag: u.etag.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::Aborted, "ETAG_MISMATCH")
    );
}

#[tokio::test]
async fn listing_pages_per_aip_158_with_opaque_bound_page_tokens() {
    let s = TestServer::start().await;
    let acc = create_account(&s, ALL_MODULES).await;
    let other = create_account(&s, ALL_MODULES).await;
    let mut c = s.tokens().await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(create_token(&mut c, &acc.id, &format!("t{i}")).await.0.id);
    }
    create_token(&mut c, &other.id, "elsewhere").await;
    ids.sort();

    let list = |page_size: i32, page_token: String| pb::ListTokensRequest {
        account_id: acc.id.clone(),
        page_size,
        page_token,
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let r = c.list_tokens(list(3, token)).await.unwrap().into_inner();
        assert_eq!(r.total_size, 7);
        assert!(r.tokens.len() <= 3);
        seen.extend(r.tokens.into_iter().map(|t| t.id));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(seen, ids, "every token once, in id order");

    let all = c
        .list_tokens(list(0, String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.tokens.len(), 7);
    let capped = c
        .list_tokens(list(100_000, String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(capped.tokens.len(), 7);
    let everyone = c
        .list_tokens(pb::ListTokensRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(everyone.total_size, 8 + 1, "and the operator's own token");

    let e = c.list_tokens(list(-1, String::new())).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let first = c
        .list_tokens(list(3, String::new()))
        .await
        .unwrap()
        .into_inner();
    let mut tampered = first.next_page_token.clone().into_bytes();
    tampered[5] = if tampered[5] == b'A' { b'B' } else { b'A' };
    for bad in [
        String::from_utf8(tampered).unwrap(),
        "garbage".into(),
        "AAAA".into(),
    ] {
        let e = c.list_tokens(list(3, bad)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    }
    // A token from another query (another account) is refused.
    let foreign = c
        .list_tokens(pb::ListTokensRequest {
            account_id: other.id.clone(),
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::InvalidArgument);

    // Filters.
    let filtered = c
        .list_tokens(pb::ListTokensRequest {
            account_id: acc.id.clone(),
            filter: "name = \"t3\" AND status = ACTIVE AND modules:commerce".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(filtered.tokens.len(), 1);
    assert_eq!(filtered.tokens[0].name, "t3");
    let e = c
        .list_tokens(pb::ListTokensRequest {
            filter: "colour = red".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .list_tokens(pb::ListTokensRequest {
            account_id: "ACC-0000-0000".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn accounts_are_created_listed_and_bound_their_tokens_modules() {
    let s = TestServer::start().await;
    let mut a = s.accounts().await;
    let acc = create_account(&s, &["commerce", "billing"]).await;
    assert!(acc.id.starts_with("ACC-"));
    assert_eq!(acc.status, pb::AccountStatus::Active as i32);
    assert_eq!(
        a.get_account(pb::GetAccountRequest { id: acc.id.clone() })
            .await
            .unwrap()
            .into_inner(),
        acc
    );

    let mut c = s.tokens().await;
    let (_, _) = create_token(&mut c, &acc.id, "uses commerce").await;
    // The account cannot drop a module a live token holds.
    let e = a
        .update_account(pb::UpdateAccountRequest {
            account: Some(pb::Account {
                id: acc.id.clone(),
                modules: vec!["billing".into()],
                ..Default::default()
            }),
            update_mask: mask(&["modules"]),
            etag: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::FailedPrecondition, "MODULE_IN_USE")
    );

    for bad in [
        pb::CreateAccountRequest {
            name: "x".into(),
            r#type: 0,
            modules: vec![],
            ..Default::default()
        },
        pb::CreateAccountRequest {
            name: "".into(),
            r#type: pb::AccountType::Vendor as i32,
            modules: vec![],
            ..Default::default()
        },
        pb::CreateAccountRequest {
            name: "x".into(),
            r#type: pb::AccountType::Vendor as i32,
            modules: vec!["nope".into()],
            ..Default::default()
        },
    ] {
        assert_eq!(
            a.create_account(bad).await.unwrap_err().code(),
            Code::InvalidArgument
        );
    }
    let e = a
        .get_account(pb::GetAccountRequest {
            id: "ACC-0000-0000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::NotFound, "ACCOUNT_NOT_FOUND")
    );

    for i in 0..4 {
        a.create_account(pb::CreateAccountRequest {
            name: format!("Vendor {i}"),
            r#type: pb::AccountType::Vendor as i32,
            modules: vec![],
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let page = a
        .list_accounts(pb::ListAccountsRequest {
            page_size: 2,
            filter: "type = VENDOR".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((page.accounts.len(), page.total_size), (2, 4));
    let rest = a
        .list_accounts(pb::ListAccountsRequest {
            page_size: 10,
            filter: "type = VENDOR".into(),
            page_token: page.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.accounts.len(), 2);
    assert!(rest.next_page_token.is_empty());
}

/// Every page of `id`'s audit trail, `page_size` at a time.
async fn audit_trail(c: &mut Tokens, id: &str, page_size: i32) -> (Vec<pb::TokenEvent>, i64) {
    let (mut all, mut page_token) = (Vec::new(), String::new());
    loop {
        let r = c
            .list_token_events(pb::ListTokenEventsRequest {
                token_id: id.into(),
                page_size,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            r.events.len()
                <= if page_size == 0 {
                    50
                } else {
                    page_size as usize
                }
        );
        all.extend(r.events);
        if r.next_page_token.is_empty() {
            return (all, r.oldest_revision);
        }
        page_token = r.next_page_token;
    }
}

#[tokio::test]
async fn the_audit_trail_lists_a_tokens_changes_newest_first_with_who_and_when() {
    let s = TestServer::start().await;
    let acc = create_account(&s, ALL_MODULES).await;
    let mut op = s.tokens().await;
    let operator = operator_id(&mut op).await;
    let (manager, secret) = issue(&mut op, &acc.id, "manager", &["access-management"]).await;
    let mut m = s.tokens_as(bearer(&secret)).await;

    let (t, _) = create_token(&mut m, &acc.id, "audited").await;
    let (other, _) = create_token(&mut m, &acc.id, "bystander").await;
    m.update_token(pb::UpdateTokenRequest {
        token: Some(pb::Token {
            id: t.id.clone(),
            name: "audited - renamed".into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    delete(&mut m, &other.id).await.unwrap();
    let disable = pb::DisableTokenRequest {
        id: t.id.clone(),
        etag: String::new(),
    };
    op.disable_token(disable).await.unwrap();
    m.enable_token(pb::EnableTokenRequest {
        id: t.id.clone(),
        etag: String::new(),
    })
    .await
    .unwrap();

    // A live token's trail, for its account's manager, two at a time.
    let (trail, _) = audit_trail(&mut m, &t.id, 2).await;
    use pb::EventType::*;
    let got: Vec<_> = trail
        .iter()
        .map(|e| {
            (
                e.r#type,
                e.actor.as_str(),
                e.token.as_ref().unwrap().name.as_str(),
            )
        })
        .collect();
    let want = [
        (Enabled as i32, manager.id.as_str(), "audited - renamed"),
        (Disabled as i32, operator.as_str(), "audited - renamed"),
        (Updated as i32, manager.id.as_str(), "audited - renamed"),
        (Created as i32, manager.id.as_str(), "audited"),
    ];
    assert_eq!(got, want);
    // Newest first, each the revision the change took, at the time it
    // was made (the token's own audit says the same).
    assert!(trail.windows(2).all(|w| w[0].revision > w[1].revision));
    assert_eq!(
        trail[0].token.as_ref().unwrap().status,
        pb::TokenStatus::Active as i32
    );
    let now = get(&mut m, &t.id, false).await.unwrap();
    assert_eq!(trail[0].time, now.audit.unwrap().enabled.unwrap().at);

    // The manager acted in all of those events, but its own trail is its
    // own changes only.
    let (mine, _) = audit_trail(&mut op, &manager.id, 0).await;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].r#type, Created as i32);

    // Deleted: the operator reads the whole trail, tombstone first.
    delete(&mut op, &t.id).await.unwrap();
    let (trail, _) = audit_trail(&mut op, &t.id, 0).await;
    assert_eq!(trail.len(), 5);
    assert_eq!(trail[0].r#type, Deleted as i32);
    assert_eq!(trail[0].actor, operator);
    assert_eq!(
        trail[0].token.as_ref().unwrap().status,
        pb::TokenStatus::Deleted as i32
    );
}

/// Tokens made at once share commits, whose events sled keeps compressed:
/// each token's trail still finds its creation. (Searched for the id in
/// the compressed bytes, trails missed tokens whose ids LZ4 had encoded
/// against a neighbour's.)
#[tokio::test]
async fn every_token_made_in_one_burst_finds_its_creation_in_its_trail() {
    let s = TestServer::start().await;
    let acc = create_account(&s, ALL_MODULES).await;
    let mut op = s.tokens().await;
    let made = futures_util::future::join_all((0..64).map(|i| {
        let (mut c, account) = (op.clone(), acc.id.clone());
        async move {
            create_token(&mut c, &account, &format!("burst {i}"))
                .await
                .0
        }
    }))
    .await;
    for t in &made {
        let (trail, _) = audit_trail(&mut op, &t.id, 0).await;
        let kinds: Vec<_> = trail.iter().map(|e| e.r#type).collect();
        assert_eq!(kinds, [pb::EventType::Created as i32], "{}", t.id);
        assert_eq!(trail[0].token.as_ref().unwrap().name, t.name);
    }
}

#[tokio::test]
async fn bad_audit_trail_requests_are_refused_precisely() {
    let s = TestServer::start().await;
    let acc = create_account(&s, ALL_MODULES).await;
    let mut c = s.tokens().await;
    let (a, _) = create_token(&mut c, &acc.id, "a").await;
    let (b, _) = create_token(&mut c, &acc.id, "b").await;
    for i in 0..3 {
        c.update_token(pb::UpdateTokenRequest {
            token: Some(pb::Token {
                id: a.id.clone(),
                description: format!("edit {i}"),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let ask = |token_id: &str, page_size: i32, page_token: &str| pb::ListTokenEventsRequest {
        token_id: token_id.into(),
        page_size,
        page_token: page_token.into(),
    };
    let first = c
        .list_token_events(ask(&a.id, 1, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.next_page_token.is_empty());

    let cases = [
        (ask("", 0, ""), Code::InvalidArgument, "token_id"),
        (ask("TKN-12", 0, ""), Code::InvalidArgument, "TKN-NNNN-NNNN"),
        (ask(&a.id, -1, ""), Code::InvalidArgument, "page_size"),
        (
            ask(&a.id, 0, "garbage"),
            Code::InvalidArgument,
            "page_token",
        ),
        // A page token is bound to its token.
        (
            ask(&b.id, 1, &first.next_page_token),
            Code::InvalidArgument,
            "page_token",
        ),
        (ask("TKN-9999-9999", 0, ""), Code::NotFound, "TKN-9999-9999"),
    ];
    for (request, code, says) in cases {
        let e = c.list_token_events(request.clone()).await.unwrap_err();
        assert_eq!(e.code(), code, "{request:?}: {e:?}");
        assert!(e.message().contains(says), "{request:?}: {}", e.message());
    }
}

#[tokio::test]
async fn an_audit_trail_stops_where_the_history_was_compacted() {
    if sled_only("--retention compaction (etcd's own compaction: tests/replicas.rs)") {
        return;
    }
    let s = TestServer::start_with(|c| c.retention = 10).await;
    let acc = create_account(&s, ALL_MODULES).await;
    let mut c = s.tokens().await;
    let (t, _) = create_token(&mut c, &acc.id, "old").await;
    for i in 0..12 {
        c.update_token(pb::UpdateTokenRequest {
            token: Some(pb::Token {
                id: t.id.clone(),
                description: format!("edit {i}"),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    // Only the newest 10 revisions are kept: 10 of the 12 updates, no CREATED.
    let (trail, oldest) = audit_trail(&mut c, &t.id, 3).await;
    assert_eq!(trail.len(), 10);
    assert!(
        trail
            .iter()
            .all(|e| e.r#type == pb::EventType::Updated as i32)
    );
    assert_eq!(trail.last().unwrap().revision, oldest);
    assert_eq!(trail[0].token.as_ref().unwrap().description, "edit 11");
}
