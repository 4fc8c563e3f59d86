//! Runs the README's grpcurl walkthrough against the real binary, so the
//! examples cannot rot. Blocks fenced as "```sh test" run in order in one bash
//! session; "```sh test-background" blocks run in the background (a watcher in
//! "another terminal") and their output is checked at the end.

mod common;

use common::*;
use std::fmt::Write as _;

#[derive(Debug)]
struct Block {
    background: bool,
    text: String,
}

fn readme_blocks() -> Vec<Block> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<Block> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh test") => {
                current = Some(Block {
                    background: false,
                    text: String::new(),
                })
            }
            (None, "```sh test-background") => {
                current = Some(Block {
                    background: true,
                    text: String::new(),
                })
            }
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(b), l) => {
                b.text.push_str(l);
                b.text.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[tokio::test]
async fn the_readme_grpcurl_walkthrough_works_as_written() {
    let blocks = readme_blocks();
    assert!(
        blocks.len() >= 4,
        "README test blocks not found: {blocks:?}"
    );
    assert!(
        std::process::Command::new("grpcurl")
            .arg("-version")
            .output()
            .is_ok(),
        "grpcurl is not installed: run the tests with scripts/test.sh, which installs it"
    );
    let data = tempfile::tempdir().unwrap();
    let server = spawn_tokend(data.path(), &[]).await;
    let work = tempfile::tempdir().unwrap();

    let mut script = String::from("set -euo pipefail\n");
    let mut background = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        let text = b
            .text
            .replace("localhost:50051", &server.addr.to_string())
            .replace("tokend-data/", &format!("{}/", data.path().display()));
        if b.background {
            let out = format!("background-{i}.out");
            // The next block runs once the stream is live (it printed
            // SYNCED, 30 s at most), not after a pause a loaded machine
            // can outlast.
            writeln!(script, "( {text} ) > {out} 2>&1 &\nBG_{i}=$!").unwrap();
            writeln!(script, "{}", wait_for("EVENT_TYPE_SYNCED", &out)).unwrap();
            background.push((i, out));
        } else {
            script.push_str(&text);
        }
    }
    for (i, out) in &background {
        writeln!(script, "{}", wait_for("EVENT_TYPE_DELETED", out)).unwrap();
        writeln!(script, "kill $BG_{i} 2>/dev/null || true").unwrap();
    }

    let out = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(work.path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "README walkthrough failed\n{stdout}\n{stderr}"
    );
    for want in [
        "apitokens.v1.TokenService",
        "\"valid\": true",
        "VERIFY_RESULT_NOT_FOUND",
        "TOKEN_STATUS_DELETED",
        "\"status\": \"SERVING\"",
    ] {
        assert!(stdout.contains(want), "{want} missing from\n{stdout}");
    }
    for (_, file) in background {
        let watched = std::fs::read_to_string(work.path().join(file)).unwrap();
        for want in [
            "EVENT_TYPE_SNAPSHOT",
            "EVENT_TYPE_SYNCED",
            "EVENT_TYPE_DELETED",
        ] {
            assert!(
                watched.contains(want),
                "{want} missing from the watcher's output\n{watched}"
            );
        }
    }
}

/// A shell loop that waits until `file` holds `text`, 30 s at most (the
/// test's own checks then say what is missing).
fn wait_for(text: &str, file: &str) -> String {
    format!("for _ in $(seq 300); do grep -q {text} {file} && break; sleep 0.1; done")
}

/// The README starts the server with `cargo run --release -- serve`: with
/// two binaries in the package (the server and `tokend-bench`), cargo runs
/// one only when the manifest names it (`default-run`); without it, the
/// README's first command fails with "could not determine which binary to
/// run". Checked from cargo's own reading of the manifest, without a build.
#[test]
fn cargo_run_in_the_readme_starts_the_server() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(
        readme.contains("cargo run --release -- serve"),
        "the README no longer says so"
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let package = &meta["packages"][0];
    let binaries = package["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
        .count();
    assert!(
        binaries == 1 || package["default_run"] == "tokend",
        "{binaries} binaries and default_run {}: `cargo run` cannot choose",
        package["default_run"]
    );
}
