//! Hostile input: malformed and oversize requests, table-driven. Each gets its
//! exact status, and the store's contents are unchanged afterwards, compared
//! key by key with the server stopped (last-access times excepted: recording
//! them is what authenticated calls do, and they are no part of any token's
//! revision).

mod common;

use common::*;
use std::collections::BTreeMap;
use tokend::proto as pb;
use tonic::Code;

/// Every key and value of the store except last-access records.
fn dump(dir: &std::path::Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let db = sled::open(dir.join("db")).unwrap();
    let tree = db.open_tree("tokend").unwrap();
    tree.iter()
        .map(|kv| kv.unwrap())
        .filter(|(k, _)| !k.starts_with(b"l/"))
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect()
}

/// One hostile call: returns its status code (`None` for OK).
type Call = Box<
    dyn Fn(Tokens) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Code>> + Send>>,
>;

#[tokio::test]
async fn malformed_and_oversize_requests_get_exact_statuses_and_change_nothing() {
    let s = TestServer::start().await;
    let acc = create_account(&s, &["commerce"]).await;
    let mut c = s.tokens().await;
    let (t, secret) = create_token(&mut c, &acc.id, "victim").await;
    let page = c
        .list_tokens(pb::ListTokensRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .next_page_token;
    assert!(!page.is_empty());
    drop(c);
    let d = s.stop().await;
    let before = dump(d.path());
    let s = TestServer::start_in(d).await;

    let (a, id, etag) = (acc.id.clone(), t.id.clone(), t.etag.clone());
    let mut bad_checksum = secret.clone().into_bytes();
    let n = bad_checksum.len() - 1;
    bad_checksum[n] = if bad_checksum[n] == b'A' { b'B' } else { b'A' };
    let bad_checksum = String::from_utf8(bad_checksum).unwrap();
    let create =
        move |name: String, modules: Vec<String>, description: String| pb::CreateTokenRequest {
            account_id: a.clone(),
            name,
            description,
            modules,
            ..Default::default()
        };
    let cases: Vec<(&str, Code, Call)> = vec![
        ("id: empty", Code::InvalidArgument, {
            Box::new(|mut c| Box::pin(async move { code(get(&mut c, "", false).await) }))
        }),
        ("id: wrong prefix", Code::InvalidArgument, {
            Box::new(|mut c| {
                Box::pin(async move { code(get(&mut c, "ACC-0000-0001", false).await) })
            })
        }),
        ("id: letters", Code::InvalidArgument, {
            Box::new(|mut c| {
                Box::pin(async move { code(get(&mut c, "TKN-ABCD-0001", false).await) })
            })
        }),
        ("id: 5 MB", Code::OutOfRange, {
            Box::new(|mut c| {
                Box::pin(async move { code(get(&mut c, &"9".repeat(5 << 20), false).await) })
            })
        }),
        ("delete: bad id", Code::InvalidArgument, {
            Box::new(|mut c| Box::pin(async move { code(delete(&mut c, "TKN-0000-00001").await) }))
        }),
        ("name: 201 chars", Code::InvalidArgument, {
            let create = create.clone();
            Box::new(move |mut c| {
                let r = create("a".repeat(201), vec![], String::new());
                Box::pin(async move { code(c.create_token(r).await) })
            })
        }),
        ("name: forbidden chars", Code::InvalidArgument, {
            let create = create.clone();
            Box::new(move |mut c| {
                let r = create("<script>".into(), vec![], String::new());
                Box::pin(async move { code(c.create_token(r).await) })
            })
        }),
        ("name: NUL", Code::InvalidArgument, {
            let create = create.clone();
            Box::new(move |mut c| {
                let r = create("a\0b".into(), vec![], String::new());
                Box::pin(async move { code(c.create_token(r).await) })
            })
        }),
        ("modules: unknown", Code::InvalidArgument, {
            let create = create.clone();
            Box::new(move |mut c| {
                let r = create("ok".into(), vec!["root".into()], String::new());
                Box::pin(async move { code(c.create_token(r).await) })
            })
        }),
        ("modules: not the account's", Code::FailedPrecondition, {
            let create = create.clone();
            Box::new(move |mut c| {
                let r = create("ok".into(), vec!["billing".into()], String::new());
                Box::pin(async move { code(c.create_token(r).await) })
            })
        }),
        // Durations protobuf forbids, which prost's conversion would
        // normalise into 4.999999999 s and 11.5 s.
        (
            "ttl: nanos against the sign of seconds",
            Code::InvalidArgument,
            {
                let create = create.clone();
                Box::new(move |mut c| {
                    let mut r = create("ok".into(), vec![], String::new());
                    r.expiration = Some(pb::create_token_request::Expiration::Ttl(
                        prost_types::Duration {
                            seconds: 5,
                            nanos: -1,
                        },
                    ));
                    Box::pin(async move { code(c.create_token(r).await) })
                })
            },
        ),
        ("ttl: nanos past a second", Code::InvalidArgument, {
            let create = create.clone();
            Box::new(move |mut c| {
                let mut r = create("ok".into(), vec![], String::new());
                r.expiration = Some(pb::create_token_request::Expiration::Ttl(
                    prost_types::Duration {
                        seconds: 10,
                        nanos: 1_500_000_000,
                    },
                ));
                Box::pin(async move { code(c.create_token(r).await) })
            })
        }),
        (
            "roll grace: nanos against the sign of seconds",
            Code::InvalidArgument,
            {
                let id = id.clone();
                Box::new(move |mut c| {
                    let r = pb::RollTokenRequest {
                        id: id.clone(),
                        grace: Some(prost_types::Duration {
                            seconds: 5,
                            nanos: -1,
                        }),
                        ..Default::default()
                    };
                    Box::pin(async move { code(c.roll_token(r).await) })
                })
            },
        ),
        ("description: 5 MB", Code::OutOfRange, {
            let create = create.clone();
            Box::new(move |mut c| {
                let r = create("ok".into(), vec![], "x".repeat(5 << 20));
                Box::pin(async move { code(c.create_token(r).await) })
            })
        }),
        ("page_size: negative", Code::InvalidArgument, {
            Box::new(|mut c| {
                Box::pin(async move {
                    code(
                        c.list_tokens(pb::ListTokensRequest {
                            page_size: -5,
                            ..Default::default()
                        })
                        .await,
                    )
                })
            })
        }),
        ("page_token: forged", Code::InvalidArgument, {
            Box::new(|mut c| {
                Box::pin(async move {
                    code(
                        c.list_tokens(pb::ListTokensRequest {
                            page_token: "VEtOLTAwMDAtMDAwMQ".into(),
                            ..Default::default()
                        })
                        .await,
                    )
                })
            })
        }),
        ("page_token: another query's", Code::InvalidArgument, {
            let page = page.clone();
            Box::new(move |mut c| {
                let page = page.clone();
                Box::pin(async move {
                    code(
                        c.list_tokens(pb::ListTokensRequest {
                            page_token: page,
                            show_deleted: true,
                            ..Default::default()
                        })
                        .await,
                    )
                })
            })
        }),
        ("etag: wrong", Code::Aborted, {
            let id = id.clone();
            Box::new(move |mut c| {
                let id = id.clone();
                Box::pin(async move {
                    code(
                        c.delete_token(pb::DeleteTokenRequest {
                            id,
                            etag: "ffffffffffffffff".into(),
                            ..Default::default()
                        })
                        .await,
                    )
                })
            })
        }),
        ("etag: right, but validate_only", Code::Ok, {
            let (id, etag) = (id.clone(), etag.clone());
            Box::new(move |mut c| {
                let (id, etag) = (id.clone(), etag.clone());
                Box::pin(async move {
                    let r = c
                        .delete_token(pb::DeleteTokenRequest {
                            id,
                            etag,
                            validate_only: true,
                            ..Default::default()
                        })
                        .await;
                    Some(r.map(|_| Code::Ok).unwrap_or_else(|e| e.code()))
                })
            })
        }),
        (
            "secret: bad checksum (verify answers OK, MALFORMED)",
            Code::Ok,
            {
                let bad = bad_checksum.clone();
                Box::new(move |mut c| {
                    let bad = bad.clone();
                    Box::pin(async move {
                        let v = verify(&mut c, &bad).await;
                        assert_eq!(v.result, pb::VerifyResult::Malformed as i32);
                        Some(Code::Ok)
                    })
                })
            },
        ),
        ("update: immutable field", Code::InvalidArgument, {
            let id = id.clone();
            Box::new(move |mut c| {
                let id = id.clone();
                Box::pin(async move {
                    code(
                        c.update_token(pb::UpdateTokenRequest {
                            token: Some(pb::Token {
                                id,
                                account_id: "ACC-0000-0001".into(),
                                ..Default::default()
                            }),
                            update_mask: Some(prost_types::FieldMask {
                                paths: vec!["account_id".into()],
                            }),
                            etag: String::new(),
                        })
                        .await,
                    )
                })
            })
        }),
        ("watch: negative revision", Code::InvalidArgument, {
            Box::new(|mut c| {
                Box::pin(async move {
                    code(
                        c.watch_tokens(pb::WatchTokensRequest {
                            start_revision: -1,
                            ..Default::default()
                        })
                        .await,
                    )
                })
            })
        }),
    ];
    for (what, want, call) in &cases {
        let got = call(s.tokens().await).await.unwrap_or(Code::Ok);
        assert_eq!(got, *want, "{what}");
    }

    // Credentials that are not UTF-8 (raw header bytes, past what the client
    // library would build), or not ours: UNAUTHENTICATED, never a panic.
    for raw in [&b"Bearer \xc3\x28"[..], b"Bearer \xff", b"\x80\x81"] {
        let mut c = s.tokens_as(Bearer::none()).await;
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", http::HeaderValue::from_bytes(raw).unwrap());
        let mut req = tonic::Request::new(pb::ListTokensRequest::default());
        *req.metadata_mut() = tonic::metadata::MetadataMap::from_headers(headers);
        assert_eq!(
            c.list_tokens(req).await.unwrap_err().code(),
            Code::Unauthenticated,
            "{raw:?}"
        );
    }
    let mut c = s.tokens_as(bearer(&bad_checksum)).await;
    let e = c
        .list_tokens(pb::ListTokensRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    let d = s.stop().await;
    assert_eq!(dump(d.path()), before, "the store changed");
}

/// A secret pasted into the wrong field is refused, and the refusal (its
/// message and its details, which reach clients, proxies and their logs)
/// never carries it back: docs/contract.md §9. Quoting input back in errors
/// is the one place it could leak: every field below is quoted when wrong.
#[tokio::test]
async fn a_secret_pasted_into_the_wrong_field_never_comes_back_in_the_refusal() {
    let s = TestServer::start().await;
    let acc = create_account(&s, &["commerce"]).await;
    let mut c = s.tokens().await;
    let (t, secret) = create_token(&mut c, &acc.id, "victim").await;
    // The secret's random part; any 20 characters of it in a refusal would
    // be a piece of the credential.
    let random = secret.rsplit(':').next().unwrap().to_string();
    assert_eq!(random.len(), 46, "{}", secret.len());
    let pieces: Vec<&str> = (0..=random.len() - 20)
        .map(|i| &random[i..i + 20])
        .collect();

    let mut refusals = Vec::new();
    let create = |modules: Vec<String>, account_id: String| pb::CreateTokenRequest {
        account_id,
        name: "x".into(),
        modules,
        ..Default::default()
    };
    refusals.push(
        c.create_token(create(vec![secret.clone()], acc.id.clone()))
            .await
            .unwrap_err(),
    );
    refusals.push(
        c.create_token(create(vec![], secret.clone()))
            .await
            .unwrap_err(),
    );
    for filter in [
        format!("name = x {secret}"),
        format!("{secret} = x"),
        format!("name {secret} x"),
        format!("status = {secret}"),
        format!("modules:{secret}"),
    ] {
        refusals.push(
            c.list_tokens(pb::ListTokensRequest {
                filter,
                ..Default::default()
            })
            .await
            .unwrap_err(),
        );
    }
    refusals.push(
        c.update_token(pb::UpdateTokenRequest {
            token: Some(pb::Token {
                id: t.id.clone(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![secret.clone()],
            }),
            ..Default::default()
        })
        .await
        .unwrap_err(),
    );
    refusals.push(get(&mut c, &secret, false).await.unwrap_err());

    for status in &refusals {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let said = [status.message().as_bytes(), status.details()].concat();
        let said = String::from_utf8_lossy(&said);
        for piece in &pieces {
            assert!(
                !said.contains(piece),
                "a refusal carried the secret: {said}"
            );
        }
    }
}
