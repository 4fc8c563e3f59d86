//! The built-in console (web/, served by tokend at `/`) in real headless
//! Chromium: each test starts the real `tokend` binary, makes an account
//! with tokens through the API, and runs one scenario of
//! tests/browser/console.mjs (or of audit.mjs, through it) against it
//! (node + puppeteer-core from web/node_modules, Debian's chromium). The scenarios change tokens "from
//! elsewhere" with the real `tokend` CLI. Screenshots of each step land in
//! `<target>/tmp/console/` (the test prints where).
//!
//! scripts/test.sh installs chromium and web/node_modules when missing.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::json;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn artifacts() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("console")
}

/// What a scenario needs: node, chromium, and web/node_modules.
fn prerequisites() -> (String, String) {
    let node = std::env::var("NODE").unwrap_or_else(|_| "node".into());
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let missing: Vec<&str> = [
        (
            std::process::Command::new(&node)
                .arg("--version")
                .output()
                .is_err(),
            "node",
        ),
        (!Path::new(&chromium).exists(), "chromium"),
        (
            !Path::new(ROOT)
                .join("web/node_modules/puppeteer-core")
                .exists(),
            "web/node_modules (scripts/web.sh deps)",
        ),
    ]
    .into_iter()
    .filter_map(|(gone, what)| gone.then_some(what))
    .collect();
    assert!(
        missing.is_empty(),
        "the browser tests need {missing:?}: scripts/test.sh installs them"
    );
    (node, chromium)
}

/// The world a scenario starts in.
struct World {
    p: Process,
    dir: tempfile::TempDir,
    fixture: serde_json::Value,
    target: String,
    other_token: String,
}

/// tokend, account A (access-management, commerce, billing) with an admin
/// token, a commerce-only token, `ci-deploy` (the one deleted) and
/// `nightly-sync`; account B with a token of its own.
async fn world() -> World {
    world_with(&[]).await
}

/// [`world`] with extra `tokend serve` flags.
async fn world_with(serve: &[&str]) -> World {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_tokend(dir.path(), serve).await;
    let mut accounts = p.accounts().await;
    let mut tokens = p.tokens().await;
    let a = new_account(&mut accounts, &["access-management", "commerce", "billing"]).await;
    let b = new_account(&mut accounts, &["access-management", "commerce"]).await;
    let (admin, admin_secret) =
        issue(&mut tokens, &a.id, "console-admin", &["access-management"]).await;
    let (_, commerce_secret) = issue(&mut tokens, &a.id, "shop-backend", &["commerce"]).await;
    let (target, _) = issue(&mut tokens, &a.id, "ci-deploy", &["commerce"]).await;
    let (other_target, _) =
        issue(&mut tokens, &a.id, "nightly-sync", &["billing", "commerce"]).await;
    let (b_token, _) = issue(&mut tokens, &b.id, "b-secret-project", &["commerce"]).await;
    let operator = operator_secret(dir.path());
    // Well-formed, but its checksum fails: tokend refuses it.
    let mut wrong = admin_secret.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'a' { 'b' } else { 'a' });
    let fixture = json!({
        "account": {"id": a.id, "name": a.name, "modules": a.modules},
        "other": {"id": b.id, "token": {"id": b_token.id, "name": b_token.name}},
        "target": {"id": target.id, "name": target.name},
        "other_target": {"id": other_target.id, "name": other_target.name},
        "admin": admin_secret,
        "admin_id": admin.id,
        "commerce_only": commerce_secret,
        "operator": operator,
        "operator_id": &operator[4..17],
        "wrong": wrong,
    });
    World {
        p,
        dir,
        fixture,
        target: target.id,
        other_token: b_token.id,
    }
}

/// Runs one scenario of tests/browser/console.mjs; its output on failure.
async fn scenario(name: &str, w: &World) -> String {
    scenario_with(name, w, &[]).await
}

async fn scenario_with(name: &str, w: &World, env: &[(&str, String)]) -> String {
    let (node, chromium) = prerequisites();
    let out = tokio::time::timeout(
        Duration::from_secs(240),
        tokio::process::Command::new(node)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .arg(Path::new(ROOT).join("tests/browser/console.mjs"))
            .arg(name)
            .env("TOKEND_URL", w.p.url())
            .env("TOKEND_BIN", env!("CARGO_BIN_EXE_tokend"))
            .env("TOKEND_TOKEN_FILE", w.p.dir.join("operator.token"))
            .env("FIXTURE", w.fixture.to_string())
            .env("ARTIFACTS", artifacts())
            .env("WEB_DIR", Path::new(ROOT).join("web"))
            .env("CHROMIUM", chromium)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("scenario {name} took over 240 s"))
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser scenario {name} failed (screenshots in {})\n{stdout}\n{stderr}",
        artifacts().display()
    );
    println!("{stdout}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_from_the_list_menu_after_escape_and_cancel_changed_nothing() {
    let w = world().await;
    scenario("delete-from-list", &w).await;
    let e = get(&mut w.p.tokens().await, &w.target, false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_from_the_details_page_dropdown_after_disable_enable_and_edit() {
    let w = world().await;
    scenario("delete-from-details", &w).await;
    let e = get(&mut w.p.tokens().await, &w.target, false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_changed_while_the_dialog_is_open_is_not_deleted() {
    let w = world().await;
    scenario("changed-in-between", &w).await;
    let t = get(&mut w.p.tokens().await, &w.target, false)
        .await
        .expect("still there");
    assert_eq!(t.name, "renamed-meanwhile");
    assert_eq!(t.status, tokend::proto::TokenStatus::Active as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_add_wizard_shows_the_secret_exactly_once() {
    let w = world().await;
    let out = scenario("add-wizard", &w).await;
    let result = out
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .expect("the scenario reports the new token");
    let result: serde_json::Value = serde_json::from_str(result).unwrap();
    let t = get(
        &mut w.p.tokens().await,
        result["created"].as_str().unwrap(),
        false,
    )
    .await
    .expect("created through the console");
    assert_eq!(t.name, "deploy-bot");
    assert_eq!(t.modules, ["commerce"]);
    assert_eq!(t.icon, "https://example.com/logo.png");
    let created = t.audit.unwrap().created.unwrap().at.unwrap().seconds;
    assert_eq!(
        t.expire_time
            .expect("an expiry picked in the wizard")
            .seconds
            - created,
        30 * 24 * 3600,
        "expires 30 days after its creation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roll_from_the_menu_shows_the_new_secret_once_and_when_the_old_one_stops() {
    let w = world().await;
    let out = scenario("roll", &w).await;
    let result = out
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .expect("the scenario reports both tokens");
    let result: serde_json::Value = serde_json::from_str(result).unwrap();
    let mut c = w.p.tokens().await;
    let successor = get(&mut c, result["successor"].as_str().unwrap(), false)
        .await
        .expect("made through the console");
    let old = get(&mut c, &w.target, false).await.expect("still live");
    assert_eq!(successor.replaces, old.id);
    assert_eq!(old.replaced_by, successor.id);
    let rolled = successor
        .audit
        .unwrap()
        .created
        .unwrap()
        .at
        .unwrap()
        .seconds;
    assert_eq!(
        old.expire_time.expect("a grace").seconds - rolled,
        3600,
        "the old secret works for the hour picked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_changes_reach_other_browser_sessions_without_a_reload() {
    let w = world().await;
    scenario("live", &w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_sees_and_changes_only_what_it_may() {
    let w = world().await;
    scenario("access", &w).await;
    // Account B's token was shown to nobody and changed by nobody.
    let t = get(&mut w.p.tokens().await, &w.other_token, false)
        .await
        .expect("B's token is untouched");
    assert_eq!(t.revision, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_resumes_after_tokend_restarts_and_lists_again_after_compaction() {
    let serve = ["--retention", "3"];
    let w = world_with(&serve).await;
    // How the scenario starts tokend again: same port, data and store.
    let again = serve_command(w.dir.path(), w.p.addr, &serve);
    let argv: Vec<String> = std::iter::once(again.get_program())
        .chain(again.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let env = [
        ("TOKEND_PID", w.p.child.id().to_string()),
        ("TOKEND_RESTART", serde_json::to_string(&argv).unwrap()),
    ];
    scenario_with("resume", &w, &env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_filters_by_status_searches_by_name_and_pages() {
    let w = world().await;
    scenario("filters", &w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrow_window_gets_cards_and_a_dialog_that_fits() {
    let w = world().await;
    scenario("narrow", &w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_tab_shows_who_changed_what_and_when_live_and_pages() {
    let mut w = world().await;
    // A token with more changes than one page of its trail (50): created,
    // then 54 description changes.
    let mut tokens = w.p.tokens().await;
    let account = w.fixture["account"]["id"].as_str().unwrap().to_owned();
    let (busy, _) = issue(&mut tokens, &account, "busy-bot", &["commerce"]).await;
    for i in 1..=54 {
        let t = tokend::proto::Token {
            id: busy.id.clone(),
            description: format!("step {i}"),
            ..Default::default()
        };
        let req = tokend::proto::UpdateTokenRequest {
            token: Some(t),
            ..Default::default()
        };
        tokens.update_token(req).await.expect("updated");
    }
    w.fixture["busy"] = json!({"id": busy.id, "events": 55});
    scenario("audit", &w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_says_when_older_changes_were_compacted() {
    // --retention is the embedded store's; etcd compacts on its own terms
    // (tests/replicas.rs covers an audit trail etcd compacted).
    if sled_only("--retention compacts the event log") {
        return;
    }
    let w = world_with(&["--retention", "2"]).await;
    scenario("audit-compacted", &w).await;
}

/// Every reason tokend can put in an ErrorInfo has a sentence in the page.
#[test]
fn every_error_reason_has_a_plain_sentence() {
    let rust = std::fs::read_to_string(Path::new(ROOT).join("src/error.rs")).unwrap();
    let page = std::fs::read_to_string(Path::new(ROOT).join("web/src/errors.ts")).unwrap();
    let reasons: Vec<&str> = rust
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name)
        .filter(|n| *n != "DOMAIN")
        .collect();
    assert!(reasons.len() >= 19, "{reasons:?}");
    for r in reasons {
        assert!(
            page.contains(&format!("\n  {r}: \"")) || page.contains(&format!("\n  {r}:\n")),
            "web/src/errors.ts has no sentence for {r}"
        );
    }
}
