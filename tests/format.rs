//! The storage format is a contract: data written by an older tokend opens
//! with this one, without migration, and reads back exactly.
//!
//! Two fixtures, both written by tokend at commit 952fdb9, whose records
//! were the serde JSON of the domain types themselves:
//!
//! - `tests/fixtures/sled-v1/`: a sled data dir (format marker
//!   `tokend-sled-1`), with the `operator.token` it wrote.
//! - `tests/fixtures/etcd-v1/`: an etcd key prefix, as `history.json`: every
//!   put and delete under the prefix in revision order (keys relative to the
//!   prefix), which the test replays, one transaction per etcd revision,
//!   under a fresh prefix. Leased keys (`replicas/`, `lock/`) belonged to the
//!   process that wrote them and are not replayed. Replaying gives the
//!   events new etcd revisions, so expected event revisions are mapped
//!   through the replay; record revisions (etcd versions) stay as they were.
//!
//! Each holds `expected.json`: what that old server answered over gRPC just
//! before it stopped (every account, every token with its tombstone, a page
//! token, the whole event history from revision 1, and each token's secret
//! with its verification result). The tests open a copy with the current
//! code and check every answer against it, field by field.
//!
//! Both were made with this file's own ignored generators, run once on the
//! old code (they use only the public API, so they compile there too):
//!
//! ```sh
//! git worktree add /tmp/tokend-v1 952fdb9
//! cp tests/format.rs /tmp/tokend-v1/tests/
//! cd /tmp/tokend-v1
//! TOKEND_FIXTURE_DIR=/tmp/sled-v1 \
//!   cargo test --features etcd --test format -- --ignored --exact write_sled_v1_fixture
//! TOKEND_FIXTURE_DIR=/tmp/etcd-v1 TOKEND_TEST_ETCD="$(scripts/etcd-cluster.sh /tmp/etcd)" \
//!   cargo test --features etcd --test format -- --ignored --exact write_etcd_v1_fixture
//! xargs kill </tmp/etcd/pids
//! ```
//!
//! then copy `/tmp/sled-v1` and `/tmp/etcd-v1` to `tests/fixtures/`. Never
//! regenerate them with newer code: their point is to be old. A format
//! change that cannot read them needs a new format version, a migration, and
//! new fixtures beside these.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokend::client::Bearer;
use tokend::proto as pb;
use tokend::proto::account_service_client::AccountServiceClient;
use tokend::proto::token_service_client::TokenServiceClient;
use tokend::server::{Config, Running, start};
use tokend::store::Backend;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Tokens = TokenServiceClient<InterceptedService<Channel, Bearer>>;
type Accounts = AccountServiceClient<InterceptedService<Channel, Bearer>>;

/// A server on `backend` with its data dir in `dir`, whatever backend the
/// rest of the suite runs on: each fixture is of one backend.
async fn serve(dir: &Path, backend: Backend) -> (Running, Tokens, Accounts) {
    let mut config = Config::new("127.0.0.1:0".parse().unwrap(), dir.to_path_buf());
    config.store = backend;
    config.shutdown_grace = Duration::from_secs(2);
    let running = start(config).await.expect("server starts");
    let secret = std::fs::read_to_string(dir.join("operator.token")).expect("operator.token");
    let bearer = Bearer::new(secret.trim()).expect("ASCII secret");
    let channel = Channel::from_shared(format!("http://{}", running.addr))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let tokens = TokenServiceClient::with_interceptor(channel.clone(), bearer.clone());
    let accounts = AccountServiceClient::with_interceptor(channel, bearer);
    (running, tokens, accounts)
}

// ------------------------------------------------------------ what is compared

fn time(t: &Option<prost_types::Timestamp>) -> Value {
    match t {
        Some(t) => json!({"seconds": t.seconds, "nanos": t.nanos}),
        None => Value::Null,
    }
}

fn audit(a: &Option<pb::Audit>) -> Value {
    let a = a.clone().unwrap_or_default();
    let entry = |e: &Option<pb::AuditEntry>| match e {
        Some(e) => json!({"at": time(&e.at), "by": e.by}),
        None => Value::Null,
    };
    json!({
        "created": entry(&a.created),
        "updated": entry(&a.updated),
        "enabled": entry(&a.enabled),
        "disabled": entry(&a.disabled),
        "deleted": entry(&a.deleted),
    })
}

/// Every field of a token. The operator's own last access moves with every
/// call made as the operator, so it is left out.
fn token(t: &pb::Token, operator: &str) -> Value {
    let last_access = if t.id == operator {
        Value::Null
    } else {
        time(&t.last_access_time)
    };
    json!({
        "id": t.id,
        "account_id": t.account_id,
        "name": t.name,
        "description": t.description,
        "icon": t.icon,
        "status": pb::TokenStatus::try_from(t.status).map_or("?", |s| s.as_str_name()),
        "modules": t.modules,
        "etag": t.etag,
        "revision": t.revision,
        "audit": audit(&t.audit),
        "last_access_time": last_access,
    })
}

fn account(a: &pb::Account) -> Value {
    json!({
        "id": a.id,
        "name": a.name,
        "type": pb::AccountType::try_from(a.r#type).map_or("?", |s| s.as_str_name()),
        "status": pb::AccountStatus::try_from(a.status).map_or("?", |s| s.as_str_name()),
        "modules": a.modules,
        "etag": a.etag,
        "revision": a.revision,
        "audit": audit(&a.audit),
    })
}

fn event(e: &pb::TokenEvent) -> Value {
    json!({
        "revision": e.revision,
        "type": pb::EventType::try_from(e.r#type).map_or("?", |s| s.as_str_name()),
        // A change event's token never carries a last access.
        "token": e.token.as_ref().map(|t| token(t, "")),
        "time": time(&e.time),
        "actor": e.actor,
    })
}

async fn all_accounts(a: &mut Accounts) -> Vec<Value> {
    let r = a
        .list_accounts(pb::ListAccountsRequest::default())
        .await
        .expect("accounts listed")
        .into_inner();
    assert!(r.next_page_token.is_empty(), "one page holds them all");
    r.accounts.iter().map(account).collect()
}

/// Every token of every account, tombstones included.
async fn all_tokens(c: &mut Tokens, operator: &str) -> Vec<Value> {
    let r = c
        .list_tokens(pb::ListTokensRequest {
            show_deleted: true,
            ..Default::default()
        })
        .await
        .expect("tokens listed")
        .into_inner();
    assert!(r.next_page_token.is_empty(), "one page holds them all");
    // The tombstones' part comes from their counts, made by the migration.
    assert_eq!(r.total_size as usize, r.tokens.len(), "total_size");
    r.tokens.iter().map(|t| token(t, operator)).collect()
}

/// The first `n` change events from revision 1, of every account (a token
/// watch skips account events).
async fn history(c: &mut Tokens, n: usize) -> Vec<Value> {
    let mut stream = c
        .watch_tokens(pb::WatchTokensRequest {
            start_revision: 1,
            ..Default::default()
        })
        .await
        .expect("watch opens")
        .into_inner();
    let mut out = Vec::new();
    while out.len() < n {
        let e = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("an event within 5 s")
            .expect("stream ok")
            .expect("stream open");
        if e.r#type != pb::EventType::Progress as i32 {
            out.push(event(&e));
        }
    }
    out
}

async fn page(c: &mut Tokens, page_token: &str) -> (Vec<String>, String) {
    let r = c
        .list_tokens(pb::ListTokensRequest {
            page_size: 2,
            page_token: page_token.into(),
            ..Default::default()
        })
        .await
        .expect("a page")
        .into_inner();
    (
        r.tokens.into_iter().map(|t| t.id).collect(),
        r.next_page_token,
    )
}

async fn verify(c: &mut Tokens, secret: &str) -> &'static str {
    let r = c
        .verify_token(pb::VerifyTokenRequest {
            secret: secret.into(),
        })
        .await
        .expect("verify answers OK")
        .into_inner();
    pb::VerifyResult::try_from(r.result).map_or("?", |s| s.as_str_name())
}

async fn operator_id(c: &mut Tokens, dir: &Path) -> String {
    let secret = std::fs::read_to_string(dir.join("operator.token")).unwrap();
    let r = c
        .verify_token(pb::VerifyTokenRequest {
            secret: secret.trim().into(),
        })
        .await
        .unwrap()
        .into_inner();
    r.token.expect("the operator's token").id
}

// ------------------------------------------------------------ the checks

/// A copy of fixture `name` in a temp dir: opening a store writes to it.
fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf, Value) {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    copy(&fixture.join(name), &dir);
    let expected = serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap())
        .expect("expected.json");
    (tmp, dir, expected)
}

/// `got` is `want`, one record after the other: a failure names the first
/// record that differs and its fields that do.
fn same(what: &str, got: &[Value], want: &[Value]) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g != w {
            let fields = w.as_object().unwrap().keys();
            let differ: Vec<_> = fields.filter(|f| g[f.as_str()] != w[f.as_str()]).collect();
            panic!(
                "{what} #{i} differs in {differ:?}\nnow:    {}\nbefore: {}",
                serde_json::to_string_pretty(g).unwrap(),
                serde_json::to_string_pretty(w).unwrap()
            );
        }
    }
    assert_eq!(got.len(), want.len(), "how many {what}s");
}

/// Every answer of `expected` again, from a server on the old data;
/// `revision` maps an event revision of the old server to this one's.
async fn check(
    c: &mut Tokens,
    a: &mut Accounts,
    dir: &Path,
    expected: &Value,
    revision: impl Fn(i64) -> i64,
) {
    let operator = expected["operator"].as_str().unwrap();
    assert_eq!(operator_id(c, dir).await, operator);

    // Every record, field by field: names, descriptions, icons, modules,
    // status, revision and etag, audit, last access, tombstones.
    let accounts = expected["accounts"].as_array().unwrap();
    same("account", &all_accounts(a).await, accounts);
    let tokens = expected["tokens"].as_array().unwrap();
    same("token", &all_tokens(c, operator).await, tokens);

    // A tombstone: shown only when asked for, and its id stays taken.
    let deleted = expected["deleted"].as_str().unwrap();
    let get = |show_deleted| pb::GetTokenRequest {
        id: deleted.into(),
        show_deleted,
    };
    let hidden = c.get_token(get(false)).await.unwrap_err();
    assert_eq!(hidden.code(), tonic::Code::NotFound);
    let tomb = c.get_token(get(true)).await.unwrap().into_inner();
    assert_eq!(tomb.status, pb::TokenStatus::Deleted as i32);
    assert!(tokens.contains(&token(&tomb, operator)));

    // The event log: the same events, in the same order.
    let mut events = expected["events"].as_array().unwrap().clone();
    for e in &mut events {
        e["revision"] = json!(revision(e["revision"].as_i64().unwrap()));
    }
    same("event", &history(c, events.len()).await, &events);

    // The page-token key survived: a page token the old server signed
    // still continues its listing.
    let paged = &expected["page"];
    let (second, _) = page(c, paged["next_page_token"].as_str().unwrap()).await;
    assert_eq!(json!(second), paged["second"]);

    // Secrets: the live ones verify as before, the deleted one's hash is
    // gone (NOT_FOUND), the disabled one is refused as disabled. Last, as a
    // valid verification moves its token's last access.
    for s in expected["secrets"].as_array().unwrap() {
        let secret = s["secret"].as_str().unwrap();
        assert_eq!(verify(c, secret).await, s["result"], "{}", s["id"]);
    }
}

#[tokio::test]
async fn an_old_sled_data_dir_reads_back_exactly() {
    let (_tmp, dir, expected) = copy_fixture("sled-v1");
    let (running, mut c, mut a) = serve(&dir, Backend::Sled).await;
    // sled's revisions are its own: they stay.
    check(&mut c, &mut a, &dir, &expected, |r| r).await;
    running.stop().await.expect("clean stop");
    // Opening it migrated the marker to the current format (records
    // unchanged, the write-ahead log in wal/, a commit's events under one
    // key, tombstones apart from live tokens, issued numbers as bits; old
    // tombstones go to compressed packs as they age): an older tokend,
    // which would not replay the log or find the tombstones, refuses the
    // data dir instead of losing writes.
    let db = sled::open(dir.join("db")).unwrap();
    let tree = db.open_tree("tokend").unwrap();
    assert_eq!(
        tree.get("m/format").unwrap().as_deref(),
        Some(&b"tokend-sled-9"[..])
    );
    let deleted: Vec<&str> = expected["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] == "TOKEN_STATUS_DELETED")
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert!(!deleted.is_empty(), "the fixture has tombstones");
    for id in &deleted {
        assert!(
            tree.get(format!("t/{id}")).unwrap().is_none(),
            "{id} left t/"
        );
        assert!(
            tree.get(format!("d/{id}")).unwrap().is_some(),
            "{id} is under d/"
        );
    }
    assert!(
        tree.scan_prefix("u/").next().is_some(),
        "issued numbers marked"
    );
    drop((tree, db));
    // And it opens again, in the current format, with the same records (but for the
    // last access times the check's own verifications moved).
    let (running, mut c, mut a) = serve(&dir, Backend::Sled).await;
    let operator = expected["operator"].as_str().unwrap();
    let tokens = all_tokens(&mut c, operator).await;
    assert_eq!(tokens.len(), expected["tokens"].as_array().unwrap().len());
    same(
        "account",
        &all_accounts(&mut a).await,
        expected["accounts"].as_array().unwrap(),
    );
    // The old one-event keys and a new commit's key read as one log.
    let old = expected["events"].as_array().unwrap();
    // (A token like the operator's: its account may hold its modules.)
    let like = expected["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == expected["operator"])
        .unwrap();
    let made = c
        .create_token(pb::CreateTokenRequest {
            account_id: like["account_id"].as_str().unwrap().into(),
            name: "made by the current format".into(),
            modules: serde_json::from_value(like["modules"].clone()).unwrap(),
            ..Default::default()
        })
        .await
        .expect("a token created")
        .into_inner()
        .token
        .unwrap();
    let events = history(&mut c, old.len() + 1).await;
    same("event", &events[..old.len()], old);
    assert_eq!(events[old.len()]["token"]["id"], made.id.as_str());
    running.stop().await.expect("clean stop");

    // Old enough to shrink at once: the fixture's tombstones leave `d/` for
    // their packs, and still answer with what the contract keeps of them.
    let mut config = Config::new("127.0.0.1:0".parse().unwrap(), dir.clone());
    config.store = Backend::Sled;
    config.tombstone_shrink_after = Duration::ZERO;
    let running = start(config).await.expect("server starts");
    let mut c = TokenServiceClient::with_interceptor(
        Channel::from_shared(format!("http://{}", running.addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
        Bearer::new(operator_secret(&dir).trim()).unwrap(),
    );
    let want = |id: &str| {
        expected["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .unwrap()
            .clone()
    };
    // The pass packs one pack at a time: until every one is shrunk.
    for _ in 0..100 {
        let mut all = true;
        for id in &deleted {
            all &= get_deleted(&mut c, id).await.description.is_empty();
        }
        if all {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in &deleted {
        let got = get_deleted(&mut c, id).await;
        let want = want(id);
        assert!(got.description.is_empty(), "{id} shrunk");
        assert_eq!(json!(got.name), want["name"], "{id}");
        assert_eq!(json!(got.account_id), want["account_id"], "{id}");
        assert_eq!(
            audit(&got.audit)["deleted"],
            want["audit"]["deleted"],
            "{id}: deleted when and by whom"
        );
    }
    running.stop().await.expect("clean stop");
    let db = sled::open(dir.join("db")).unwrap();
    let tree = db.open_tree("tokend").unwrap();
    assert_eq!(
        tree.scan_prefix("d/").count(),
        0,
        "every old tombstone packed"
    );
    let packs: Vec<_> = tree.scan_prefix("p/").map(|kv| kv.unwrap().1).collect();
    assert!(!packs.is_empty());
    assert!(
        packs.iter().all(|v| v.first() == Some(&b'Z')),
        "packs are written compressed"
    );
}

async fn get_deleted(c: &mut Tokens, id: &str) -> pb::Token {
    c.get_token(pb::GetTokenRequest {
        id: id.into(),
        show_deleted: true,
    })
    .await
    .expect("the tombstone answers")
    .into_inner()
}

fn operator_secret(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("operator.token")).expect("operator.token")
}

// ------------------------------------------------------------ the generators

/// Writes a fresh fixture to `$TOKEND_FIXTURE_DIR` (see the file doc). Not
/// part of the suite: a fixture must come from the old code.
#[tokio::test]
#[ignore]
async fn write_sled_v1_fixture() {
    let dir = fixture_dir();
    let (running, mut c, mut a) = serve(&dir, Backend::Sled).await;
    let expected = populate(&mut c, &mut a, &dir).await;
    running.stop().await.expect("clean stop");
    write_json(&dir.join("expected.json"), &expected);
}

fn fixture_dir() -> PathBuf {
    let dir = PathBuf::from(std::env::var("TOKEND_FIXTURE_DIR").expect("TOKEND_FIXTURE_DIR"));
    assert!(!dir.exists(), "{} exists already", dir.display());
    dir
}

fn write_json(path: &Path, value: &Value) {
    std::fs::write(path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
}

/// Accounts and tokens in every state a record can be in (created,
/// updated, disabled, enabled again, deleted; description, icon, modules,
/// a last access), then what the server answers about them.
async fn populate(c: &mut Tokens, a: &mut Accounts, dir: &Path) -> Value {
    let operator = operator_id(c, dir).await;
    let acme = a
        .create_account(pb::CreateAccountRequest {
            name: "Acme Inc.".into(),
            r#type: pb::AccountType::Client as i32,
            modules: vec![
                "access-management".into(),
                "commerce".into(),
                "billing".into(),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let globex = a
        .create_account(pb::CreateAccountRequest {
            name: "Globex".into(),
            r#type: pb::AccountType::Vendor as i32,
            modules: vec!["commerce".into(), "helpdesk".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    a.update_account(pb::UpdateAccountRequest {
        account: Some(pb::Account {
            id: globex.id.clone(),
            name: "Globex Corp.".into(),
            modules: vec!["commerce".into(), "helpdesk".into(), "spotlight".into()],
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["name".into(), "modules".into()],
        }),
        etag: globex.etag.clone(),
    })
    .await
    .unwrap();

    let mut secrets = Vec::new();
    let mut issue =
        async |account: &str, name: &str, description: &str, icon: &str, modules: &[&str]| {
            let r = c
                .create_token(pb::CreateTokenRequest {
                    account_id: account.into(),
                    name: name.into(),
                    description: description.into(),
                    icon: icon.into(),
                    modules: modules.iter().map(|m| m.to_string()).collect(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let t = r.token.unwrap();
            secrets.push((t.id.clone(), r.secret));
            t
        };
    let ci = issue(
        &acme.id,
        "ci-deploy",
        "Deploys from CI",
        "https://example.com/ci.png",
        &["commerce", "billing"],
    )
    .await;
    let reader = issue(&acme.id, "reader", "", "", &["access-management"]).await;
    let _sync = issue(
        &globex.id,
        "vendor-sync \"eu\"",
        "Zoë's nightly sync",
        "http://example.org/sync.svg",
        &["helpdesk", "commerce"],
    )
    .await;
    let flapping = issue(&acme.id, "old-key", "rotated", "", &["commerce"]).await;
    let doomed = issue(&globex.id, "to-delete", "a tombstone", "", &["helpdesk"]).await;

    c.update_token(pb::UpdateTokenRequest {
        token: Some(pb::Token {
            id: ci.id.clone(),
            name: "ci-deploy-eu".into(),
            description: "Deploys from CI, EU region".into(),
            modules: vec!["commerce".into()],
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["name".into(), "description".into(), "modules".into()],
        }),
        etag: ci.etag.clone(),
    })
    .await
    .unwrap();
    for id in [&reader.id, &flapping.id] {
        c.disable_token(pb::DisableTokenRequest {
            id: id.clone(),
            etag: String::new(),
        })
        .await
        .unwrap();
    }
    c.enable_token(pb::EnableTokenRequest {
        id: flapping.id.clone(),
        etag: String::new(),
    })
    .await
    .unwrap();
    let gone = c
        .delete_token(pb::DeleteTokenRequest {
            id: doomed.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    // What the old server answers, to be answered again.
    let accounts = all_accounts(a).await;
    let (first, next_page_token) = page(c, "").await;
    let (second, _) = page(c, &next_page_token).await;
    // One create per token (the operator's too), the update, two
    // disables, the enable, the delete.
    let changes = 6 + 1 + 2 + 1 + 1;
    let events = history(c, changes).await;
    assert_eq!(events.last().unwrap()["revision"], json!(gone.revision));
    // Verifying records a last access for each live token verified: the
    // tokens are listed after it.
    let mut results = Vec::new();
    for (id, secret) in &secrets {
        results.push(json!({"id": id, "secret": secret, "result": verify(c, secret).await}));
    }
    let tokens = all_tokens(c, &operator).await;
    json!({
        "generated_by": "tests/format.rs at commit 952fdb9",
        "operator": operator,
        "deleted": doomed.id,
        "accounts": accounts,
        "tokens": tokens,
        "page": {"first": first, "next_page_token": next_page_token, "second": second},
        "events": events,
        "secrets": results,
    })
}

#[cfg(feature = "etcd")]
mod etcd {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use etcd_client::{Client, EventType, Txn, TxnOp, WatchOptions};

    /// The etcd cluster the suite's second pass runs on (`TOKEND_TEST_ETCD`),
    /// or a one-member cluster of this test's own.
    async fn cluster() -> (String, Option<super::common::etcd::EtcdCluster>) {
        match std::env::var("TOKEND_TEST_ETCD") {
            Ok(hosts) if !hosts.is_empty() => (hosts, None),
            _ => {
                let own = super::common::etcd::EtcdCluster::start(1).await;
                let store = own.store("x");
                let hosts = store.strip_prefix("etcd://").unwrap();
                (hosts.strip_suffix("/x").unwrap().to_string(), Some(own))
            }
        }
    }

    async fn client(hosts: &str) -> Client {
        let endpoints: Vec<&str> = hosts.split(',').collect();
        Client::connect(endpoints, None).await.expect("etcd")
    }

    fn unique_prefix(what: &str) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!("{what}-{}-{nanos}", std::process::id())
    }

    /// Leased keys: they belonged to the process that wrote them.
    fn leased(key: &str) -> bool {
        key.starts_with("replicas/") || key.starts_with("lock/")
    }

    #[tokio::test]
    async fn an_old_etcd_prefix_reads_back_exactly() {
        let (_tmp, dir, expected) = copy_fixture("etcd-v1");
        let history: Value =
            serde_json::from_slice(&std::fs::read(dir.join("history.json")).unwrap()).unwrap();
        let (hosts, _own) = cluster().await;
        let prefix = unique_prefix("format-etcd-v1");
        let mut etcd = client(&hosts).await;

        // Replay: one transaction per old revision, so that what one
        // transaction wrote (a record and `m/head`) keeps one revision.
        let mut revisions = std::collections::HashMap::new();
        let mut ops = Vec::new();
        let entries = history.as_array().unwrap();
        for (i, e) in entries.iter().enumerate() {
            let key = e["key"].as_str().unwrap();
            if !leased(key) {
                let key = format!("/{prefix}/{key}");
                ops.push(match e["op"].as_str().unwrap() {
                    "put" => {
                        let value = match (e["value"].as_str(), e["value_base64"].as_str()) {
                            (Some(text), _) => text.as_bytes().to_vec(),
                            (None, Some(b64)) => STANDARD.decode(b64).unwrap(),
                            _ => panic!("no value: {e}"),
                        };
                        TxnOp::put(key, value, None)
                    }
                    _ => TxnOp::delete(key, None),
                });
            }
            let old = e["revision"].as_i64().unwrap();
            let last_of_revision = entries
                .get(i + 1)
                .is_none_or(|next| next["revision"].as_i64() != Some(old));
            if last_of_revision && !ops.is_empty() {
                let r = etcd
                    .txn(Txn::new().and_then(std::mem::take(&mut ops)))
                    .await
                    .expect("replayed");
                revisions.insert(old, r.header().unwrap().revision());
            }
        }

        let backend = format!("etcd://{hosts}/{prefix}").parse().unwrap();
        let (running, mut c, mut a) = serve(&dir, backend).await;
        check(&mut c, &mut a, &dir, &expected, |r| revisions[&r]).await;
        running.stop().await.expect("clean stop");
    }

    /// Writes a fresh fixture to `$TOKEND_FIXTURE_DIR`, from a tokend on
    /// `$TOKEND_TEST_ETCD` (see the file doc).
    #[tokio::test]
    #[ignore]
    async fn write_etcd_v1_fixture() {
        let dir = fixture_dir();
        let (hosts, _own) = cluster().await;
        let prefix = unique_prefix("fixture-etcd-v1");
        let backend = format!("etcd://{hosts}/{prefix}").parse().unwrap();
        let (running, mut c, mut a) = serve(&dir, backend).await;
        let expected = populate(&mut c, &mut a, &dir).await;
        running.stop().await.expect("clean stop");
        write_json(&dir.join("expected.json"), &expected);
        // The replica's name is the writing process's, not the data's.
        std::fs::remove_file(dir.join("replica-id")).unwrap();

        // Every change under the prefix, from etcd's history, up to a
        // marker put after the server stopped.
        let mut etcd = client(&hosts).await;
        let root = format!("/{prefix}/");
        let end = format!("{root}~end");
        etcd.put(end.as_str(), "", None).await.unwrap();
        let options = WatchOptions::new().with_prefix().with_start_revision(1);
        let mut stream = etcd.watch(root.as_str(), Some(options)).await.unwrap();
        let mut entries = Vec::new();
        'history: while let Some(r) = stream.message().await.unwrap() {
            for e in r.events() {
                let kv = e.kv().unwrap();
                if kv.key() == end.as_bytes() {
                    break 'history;
                }
                let key = String::from_utf8(kv.key()[root.len()..].to_vec()).unwrap();
                let mut entry = json!({"revision": kv.mod_revision(), "key": key});
                match e.event_type() {
                    EventType::Put => {
                        entry["op"] = json!("put");
                        match std::str::from_utf8(kv.value()) {
                            Ok(text) => entry["value"] = json!(text),
                            Err(_) => entry["value_base64"] = json!(STANDARD.encode(kv.value())),
                        }
                    }
                    EventType::Delete => entry["op"] = json!("delete"),
                }
                entries.push(entry);
            }
        }
        write_json(&dir.join("history.json"), &json!(entries));
    }
}

#[cfg(feature = "etcd")]
mod common;
