//! tokend on a secured etcd: a real 3-member cluster serving clients TLS,
//! requiring client certificates, with authentication enabled and tokend's
//! user confined to its key prefix (set up with etcdctl, as the README says).
//! The right files and password work end to end; each wrong one stops the
//! real binary at start-up, quickly, with one line naming the cause, and
//! never with the password in it.
#![cfg(feature = "etcd")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::etcd::{EtcdCluster, ServerTls};
use common::*;
use rcgen::{CertificateParams, CertifiedIssuer, DnType, KeyPair};
use tokend::proto as pb;

const PASSWORD: &str = "s3cret-tokend-pw";
const ROOT: &str = "root:root-pw";
/// tokend's keys; its role may read and write under it, nothing else.
const PREFIX: &str = "secure";

/// A CA, and certificates it signed, in files of a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    /// etcd's serving certificate (127.0.0.1) and the CA it trusts.
    server: ServerTls,
    /// A client certificate etcd trusts, with the right CA to verify etcd.
    client: ServerTls,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate for `names`, signed by `issuer`: (cert PEM, key PEM).
fn leaf(issuer: &CertifiedIssuer<'static, KeyPair>, cn: &str, names: &[&str]) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    // Not an etcd user's name: with --client-cert-auth, etcd would take a
    // certificate's CN as the user when a request carries no token.
    params.distinguished_name.push(DnType::CommonName, cn);
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("tokend test etcd CA");
    let (server_cert, server_key) = leaf(&ca, "etcd", &["127.0.0.1", "localhost"]);
    let (client_cert, client_key) = leaf(&ca, "tokend-client", &[]);
    let mut p = Pki {
        dir,
        server: ServerTls {
            ca: PathBuf::new(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
        },
        client: ServerTls {
            ca: PathBuf::new(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
        },
    };
    let ca_pem = p.write("ca.pem", &ca.pem());
    p.server = ServerTls {
        ca: ca_pem.clone(),
        cert: p.write("server.pem", &server_cert),
        key: p.write("server.key", &server_key),
    };
    p.client = ServerTls {
        ca: ca_pem,
        cert: p.write("client.pem", &client_cert),
        key: p.write("client.key", &client_key),
    };
    p
}

/// A TLS cluster with authentication on: `tokend` may read and write under
/// `/secure/`, `intruder` only under `/elsewhere/`.
async fn secured_cluster(p: &Pki) -> EtcdCluster {
    let cluster = EtcdCluster::start_tls(3, &p.server).await;
    let ctl = |args: &[&str]| cluster.etcdctl(Some(&p.client), None, args);
    let pw = format!("--new-user-password={PASSWORD}");
    // The README's commands, in its order.
    ctl(&["user", "add", "root", "--new-user-password=root-pw"]);
    ctl(&["user", "grant-role", "root", "root"]);
    ctl(&["role", "add", "tokend"]);
    ctl(&[
        "role",
        "grant-permission",
        "tokend",
        "--prefix=true",
        "readwrite",
        &format!("/{PREFIX}/"),
    ]);
    ctl(&["user", "add", "tokend", &pw]);
    ctl(&["user", "grant-role", "tokend", "tokend"]);
    ctl(&["role", "add", "elsewhere"]);
    ctl(&[
        "role",
        "grant-permission",
        "elsewhere",
        "--prefix=true",
        "readwrite",
        "/elsewhere/",
    ]);
    ctl(&["user", "add", "intruder", &pw]);
    ctl(&["user", "grant-role", "intruder", "elsewhere"]);
    ctl(&["auth", "enable"]);
    cluster
}

/// Flags to set to another value, or leave out (`None`).
type Changes<'a> = Vec<(&'a str, Option<String>)>;

/// `--store` and the `--etcd-*` flags: every file right unless changed.
fn flags(cluster: &EtcdCluster, p: &Pki, changes: &[(&str, Option<String>)]) -> Vec<String> {
    let password = p.write("password", &format!("{PASSWORD}\n"));
    let mut set: Vec<(&str, Option<String>)> = vec![
        ("--store", Some(cluster.store(PREFIX))),
        ("--etcd-ca", Some(show(&p.client.ca))),
        ("--etcd-cert", Some(show(&p.client.cert))),
        ("--etcd-key", Some(show(&p.client.key))),
        ("--etcd-user", Some("tokend".into())),
        ("--etcd-password-file", Some(show(&password))),
    ];
    for (flag, value) in changes {
        set.iter_mut().find(|(f, _)| f == flag).unwrap().1 = value.clone();
    }
    set.into_iter()
        .filter_map(|(f, v)| v.map(|v| [f.to_string(), v]))
        .flatten()
        .collect()
}

fn show(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

#[tokio::test]
async fn the_right_ca_certificate_and_password_serve_end_to_end() {
    let p = pki();
    let cluster = secured_cluster(&p).await;
    let dir = tempfile::tempdir().unwrap();
    let args = flags(&cluster, &p, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let tokend = spawn_tokend(dir.path(), &args).await;

    let mut tokens = tokend.tokens().await;
    let mut accounts = tokend.accounts().await;
    let account = new_account(&mut accounts, &["commerce"]).await;
    let (token, secret) = create_token(&mut tokens, &account.id, "over tls").await;
    assert_eq!(
        verify(&mut tokens, &secret).await.result,
        pb::VerifyResult::Valid as i32
    );
    let mut events = watch(&mut tokens, pb::WatchTokensRequest::default()).await;
    let deleted = delete(&mut tokens, &token.id).await.expect("deleted");
    let event = tokio::time::timeout(Duration::from_secs(10), next_change(&mut events))
        .await
        .expect("the watch hears the delete");
    assert_eq!(event.r#type, pb::EventType::Deleted as i32);
    assert_eq!(event.revision, deleted.revision);
    assert_eq!(
        verify(&mut tokens, &secret).await.result,
        pb::VerifyResult::NotFound as i32
    );
    // The token's record (a tombstone now) is in etcd under the prefix.
    let keys = cluster.etcdctl(
        Some(&p.client),
        Some(ROOT),
        &["get", "--prefix", "--keys-only", &format!("/{PREFIX}/r/t/")],
    );
    let key = format!("/{PREFIX}/r/t/{}", token.id);
    assert!(keys.lines().any(|k| k == key), "{key} not in {keys}");
}

/// Runs `tokend serve` with `args` until it exits (15 s at most): its
/// stderr's last line, and how long it took.
fn start_up_failure(args: &[String]) -> (String, Duration, String) {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = serve_command(dir.path(), free_addr(), &args);
    cmd.stderr(Stdio::piped()).env("RUST_LOG", "warn");
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            panic!("tokend {args:?} still running after 15 s: start-up hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "tokend {args:?} started: {stderr}");
    assert!(
        !stderr.contains(PASSWORD),
        "the password is in tokend's output: {stderr}"
    );
    let last = stderr.lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("tokend: "), "{stderr}");
    (last, took, stderr)
}

#[tokio::test]
async fn each_wrong_credential_stops_start_up_quickly_with_one_line_naming_it() {
    let p = pki();
    let cluster = secured_cluster(&p).await;
    // A CA that did not sign etcd's certificate.
    let other = ca("some other CA");
    let wrong_ca = p.write("other-ca.pem", &other.pem());
    let wrong_password = p.write("wrong-password", "not-the-password\n");
    let wrong = |s: &Path| Some(show(s));
    let cases: Vec<(&str, Changes, &str)> = vec![
        (
            "wrong CA",
            vec![("--etcd-ca", wrong(&wrong_ca))],
            "TLS handshake failed: the members' certificate is not signed by --etcd-ca",
        ),
        (
            "no client certificate",
            vec![("--etcd-cert", None), ("--etcd-key", None)],
            // The words before it depend on whether etcd's alert or its
            // close reaches tokend first.
            "etcd requires a client certificate: give --etcd-cert and --etcd-key",
        ),
        (
            "wrong password",
            vec![("--etcd-password-file", wrong(&wrong_password))],
            "authentication failed: wrong user or password (--etcd-user tokend",
        ),
        (
            "a user whose role lacks the prefix",
            vec![("--etcd-user", Some("intruder".into()))],
            "permission denied: etcd user \"intruder\" may not read and write tokend's keys",
        ),
        (
            "no user on a cluster with authentication",
            vec![("--etcd-user", None), ("--etcd-password-file", None)],
            // (etcd takes the client certificate's common name as the
            // user then: one without a role.)
            "permission denied: tokend has no --etcd-user",
        ),
        (
            "plaintext to a TLS cluster",
            vec![
                (
                    "--store",
                    Some(cluster.store(PREFIX).replacen("etcds", "etcd", 1)),
                ),
                ("--etcd-ca", None),
                ("--etcd-cert", None),
                ("--etcd-key", None),
            ],
            "write etcds://… and give --etcd-ca",
        ),
        (
            "nobody listening",
            vec![(
                "--store",
                Some(format!("etcds://127.0.0.1:{}/x", free_addr().port())),
            )],
            "connection refused",
        ),
    ];
    let mut lines = Vec::new();
    for (case, changes, cause) in cases {
        let (line, took, stderr) = start_up_failure(&flags(&cluster, &p, &changes));
        assert!(
            line.contains(cause),
            "{case}: {line}\nall of stderr: {stderr}"
        );
        assert!(
            took < Duration::from_secs(10),
            "{case}: took {took:?} to fail"
        );
        lines.push(format!("{case} ({took:.1?}): {line}"));
    }
    // The lines, for whoever reads the test's output.
    println!("{}", lines.join("\n"));
}

#[test]
fn tls_flags_that_do_not_fit_the_store_are_refused_before_connecting() {
    let cases = [
        (
            vec!["--store", "etcd://127.0.0.1:1/x", "--etcd-ca", "ca.pem"],
            "write etcds://",
        ),
        (
            vec!["--store", "etcds://127.0.0.1:1/x"],
            "etcds:// needs --etcd-ca",
        ),
        (
            vec![
                "--store",
                "sled",
                "--etcd-user",
                "u",
                "--etcd-password-file",
                "pw",
            ],
            "need --store etcd://",
        ),
    ];
    for (args, cause) in cases {
        let args: Vec<String> = args.into_iter().map(str::to_string).collect();
        let (line, took, _) = start_up_failure(&args);
        assert!(line.contains(cause), "{args:?}: {line}");
        assert!(took < Duration::from_secs(5), "{args:?}: {took:?}");
    }
}

/// The health probes that keep a member that hangs out of the etcd client's
/// rotation go over the same TLS, with the client certificate, to a cluster
/// with authentication on: a paused member leaves the rotation (which takes
/// another member answering in the same round) and comes back once resumed
/// (which takes its own answer), as tokend's log says, and tokend serves
/// throughout. Probes that could not reach the members (in plaintext, say)
/// leave the rotation as it is, and the test fails.
#[tokio::test]
async fn a_member_that_hangs_leaves_the_rotation_and_comes_back_over_tls() {
    let p = pki();
    let cluster = secured_cluster(&p).await;
    let dir = tempfile::tempdir().unwrap();
    let log = p.path("tokend.log");
    let args = flags(&cluster, &p, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let tokend = spawn_tokend_with(dir.path(), &args, |cmd| {
        cmd.stderr(std::fs::File::create(&log).unwrap())
            .env("RUST_LOG", "info");
    })
    .await;
    let mut tokens = tokend.tokens().await;
    let mut accounts = tokend.accounts().await;
    let account = new_account(&mut accounts, &["commerce"]).await;
    let member = cluster.client(2).to_string();
    let said = |what: &'static str| {
        let log = log.clone();
        let member = member.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let text = std::fs::read_to_string(&log).unwrap();
                if text
                    .lines()
                    .any(|l| l.contains(what) && l.contains(&member))
                {
                    return text;
                }
                assert!(
                    Instant::now() < deadline,
                    "no {what:?} for {member} in 20 s:\n{text}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };

    cluster.pause(2);
    said("out of rotation").await;
    let (_, secret) = create_token(&mut tokens, &account.id, "during the hang").await;
    assert_eq!(
        verify(&mut tokens, &secret).await.result,
        pb::VerifyResult::Valid as i32
    );
    cluster.resume(2);
    let text = said("back in rotation").await;
    assert!(!text.contains(PASSWORD), "the password is in the log");
}
