//! Years of churn: memory keeps live tokens only, tombstones live in the
//! store (and, on sled, shrink once old), and still no id is ever issued
//! twice. Against a real `tokend` process, on sled or (second pass) etcd,
//! with the test-only id source (`token-id-draw`, a fail point) forcing
//! every new token onto the same number.

mod common;

use std::time::Duration;

use common::*;
use tokend::proto as pb;

/// Every draw of a new token number gives 4242: only the search for the
/// next free number keeps two tokens apart. And sled is reopened at every
/// start, as a large store's is once its state is read (`sled-reopen`).
const FORCED: (&str, &str) = (
    "FAILPOINTS",
    "token-id-draw=return(4242);sled-reopen=return",
);

async fn start(dir: &std::path::Path, extra: &[&str]) -> Process {
    spawn_tokend_with(dir, extra, |cmd| {
        cmd.env(FORCED.0, FORCED.1);
    })
    .await
}

async fn create(c: &mut Tokens, account: &str, name: &str) -> pb::Token {
    let r = c
        .create_token(pb::CreateTokenRequest {
            account_id: account.into(),
            name: name.into(),
            description: "d".repeat(200),
            modules: vec!["billing".into()],
            ..Default::default()
        })
        .await
        .expect("token created")
        .into_inner();
    r.token.unwrap()
}

/// Waits until tombstone `id`, read with show_deleted, has lost its
/// description: shrunk by the background pass.
async fn until_shrunk(c: &mut Tokens, id: &str) -> pb::Token {
    for _ in 0..200 {
        let t = get(c, id, true).await.expect("the tombstone answers");
        if t.description.is_empty() {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("tombstone {id} was not shrunk within 10 s");
}

#[tokio::test]
async fn a_deleted_tokens_id_is_never_issued_again_after_shrinking_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let shrink = ["--tombstone-shrink-after", "0s"];
    let server = start(dir.path(), &shrink).await;
    let mut c = server.tokens().await;
    let mut a = server.accounts().await;
    let acc = new_account(&mut a, &["billing"]).await;

    // Every draw is 4242: the operator's token, made at the first start,
    // took it; each new one takes the next free number.
    assert_eq!(operator_id(&mut c).await, "TKN-0000-4242");
    let first = create(&mut c, &acc.id, "first").await;
    assert_eq!(first.id, "TKN-0000-4243");
    let second = create(&mut c, &acc.id, "second").await;
    assert_eq!(second.id, "TKN-0000-4244");
    delete(&mut c, &first.id).await.expect("deleted");

    // Its tombstone keeps answering show_deleted; on sled it shrinks to
    // what the contract keeps (etcd keeps it whole).
    let tomb = if sled_only("tombstones stay whole in etcd") {
        get(&mut c, &first.id, true).await.unwrap()
    } else {
        until_shrunk(&mut c, &first.id).await
    };
    assert_eq!(tomb.status, pb::TokenStatus::Deleted as i32);
    assert_eq!(
        (tomb.name.as_str(), tomb.account_id.as_str()),
        ("first", acc.id.as_str())
    );
    let deleted = tomb.audit.as_ref().unwrap().deleted.as_ref().unwrap();
    assert_eq!(deleted.by, operator_id(&mut c).await);
    assert!(deleted.at.is_some());
    assert!(
        tomb.audit.as_ref().unwrap().created.is_some(),
        "when it was made stays"
    );
    assert_eq!(
        code(get(&mut c, &first.id, false).await),
        Some(tonic::Code::NotFound)
    );

    // A third token skips the deleted one's number too.
    let third = create(&mut c, &acc.id, "third").await;
    assert_eq!(third.id, "TKN-0000-4245");

    // After a restart (SIGTERM: a clean one) and after a crash (SIGKILL:
    // the log replayed), the numbers are still taken.
    drop(c);
    let mut server = server;
    server.terminate();
    let mut server = start(dir.path(), &shrink).await;
    let mut c = server.tokens().await;
    let fourth = create(&mut c, &acc.id, "fourth").await;
    assert_eq!(fourth.id, "TKN-0000-4246");
    delete(&mut c, &fourth.id).await.expect("deleted");
    server.kill();
    let metrics = free_addr();
    let server = start(dir.path(), &["--metrics-addr", &metrics.to_string()]).await;
    let mut c = server.tokens().await;
    // What an operator watches the id space and sizing on.
    let mut text = String::new();
    for _ in 0..100 {
        text = scrape(metrics);
        if sample(&text, "tokend_token_ids_issued ") > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The operator's and 4243…4246, two of them deleted.
    assert_eq!(
        sample(&text, "tokend_token_ids_issued "),
        5.0,
        "deleted ones count"
    );
    assert_eq!(sample(&text, "tokend_tokens_live "), 3.0);
    assert_eq!(sample(&text, "tokend_token_ids_limit "), 90_000_000.0);
    let fifth = create(&mut c, &acc.id, "fifth").await;
    assert_eq!(fifth.id, "TKN-0000-4247");

    // Every tombstone is listed with show_deleted, live tokens beside them,
    // in id order; without it, only the live ones.
    let all = list_ids(&mut c, &acc.id, true).await;
    assert_eq!(
        all,
        [
            "TKN-0000-4243",
            "TKN-0000-4244",
            "TKN-0000-4245",
            "TKN-0000-4246",
            "TKN-0000-4247"
        ]
    );
    let live = list_ids(&mut c, &acc.id, false).await;
    assert_eq!(live, ["TKN-0000-4244", "TKN-0000-4245", "TKN-0000-4247"]);
}

/// The ids of `account`'s tokens, two to a page, with or without tombstones.
async fn list_ids(c: &mut Tokens, account: &str, show_deleted: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let r = c
            .list_tokens(pb::ListTokensRequest {
                account_id: account.into(),
                page_size: 2,
                page_token,
                show_deleted,
                ..Default::default()
            })
            .await
            .expect("listed")
            .into_inner();
        out.extend(r.tokens.iter().map(|t| t.id.clone()));
        if r.next_page_token.is_empty() {
            assert_eq!(
                r.total_size as usize,
                out.len(),
                "total_size counts them all"
            );
            return out;
        }
        page_token = r.next_page_token;
    }
}
