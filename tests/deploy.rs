//! deploy/ must agree with the binary: ports, probes, data paths, users.
//! Parses every manifest and the Dockerfile; nothing here needs a cluster.

use yaml_rust2::{Yaml, YamlLoader};

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/deploy/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn docs(path: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn kind<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn env<'a>(container: &'a Yaml, name: &str) -> &'a str {
    container["env"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("env {name} missing"))
}

fn port_of(addr: &str) -> i64 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// The binary's own defaults, as `tokend serve` parses them.
fn defaults() -> tokend::cli::ServeArgs {
    tokend::cli::ServeArgs::defaults()
}

#[test]
fn the_statefulset_service_and_probes_agree_with_the_binary() {
    let docs = docs("kubernetes/tokend.yaml");
    let sts = kind(&docs, "StatefulSet");
    let svc = kind(&docs, "Service");
    let pod = &sts["spec"]["template"]["spec"];
    let c = &pod["containers"][0];

    let grpc_port = port_of(env(c, "TOKEND_LISTEN"));
    assert_eq!(
        grpc_port,
        defaults().listen.port() as i64,
        "the binary's default port"
    );
    assert!(
        env(c, "TOKEND_LISTEN").starts_with("0.0.0.0:"),
        "reachable from outside the pod"
    );
    let metrics_port = port_of(env(c, "TOKEND_METRICS_ADDR"));
    let ports: Vec<(&str, i64)> = c["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["containerPort"].as_i64().unwrap(),
            )
        })
        .collect();
    assert!(ports.contains(&("grpc", grpc_port)), "{ports:?}");
    assert!(ports.contains(&("metrics", metrics_port)), "{ports:?}");

    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(
            c[probe]["grpc"]["port"].as_i64(),
            Some(grpc_port),
            "{probe} uses grpc.health.v1"
        );
    }
    let svc_ports = svc["spec"]["ports"].as_vec().unwrap();
    let grpc = svc_ports
        .iter()
        .find(|p| p["name"].as_str() == Some("grpc"))
        .unwrap();
    assert_eq!(grpc["port"].as_i64(), Some(grpc_port));
    assert_eq!(grpc["targetPort"].as_str(), Some("grpc"));
    assert_eq!(grpc["appProtocol"].as_str(), Some("grpc"));
    assert_eq!(
        svc["spec"]["selector"],
        sts["spec"]["selector"]["matchLabels"]
    );

    // The data dir is the mounted claim.
    let data_dir = env(c, "TOKEND_DATA_DIR");
    let mount = c["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(data_dir))
        .expect("the data dir is a volume mount");
    let claim = &sts["spec"]["volumeClaimTemplates"][0];
    assert_eq!(mount["name"], claim["metadata"]["name"]);
    assert_eq!(
        sts["spec"]["replicas"].as_i64(),
        Some(1),
        "sled has one writer"
    );

    // Locked down.
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(
        c["securityContext"]["allowPrivilegeEscalation"].as_bool(),
        Some(false)
    );
    assert_eq!(
        c["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    assert!(!c["resources"]["limits"]["memory"].is_badvalue());
    assert!(!c["resources"]["limits"]["cpu"].is_badvalue());
    assert!(
        pod["terminationGracePeriodSeconds"].as_i64().unwrap() > 5,
        "tokend exits within 5 s"
    );
}

#[test]
fn the_dockerfile_matches_the_manifest() {
    let docker = read("Dockerfile");
    let sts_docs = docs("kubernetes/tokend.yaml");
    let pod = &kind(&sts_docs, "StatefulSet")["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert!(docker.contains(&format!("TOKEND_DATA_DIR={}", env(c, "TOKEND_DATA_DIR"))));
    assert!(docker.contains(&format!("TOKEND_LISTEN={}", env(c, "TOKEND_LISTEN"))));
    let expose = docker.lines().find(|l| l.starts_with("EXPOSE")).unwrap();
    for port in [
        port_of(env(c, "TOKEND_LISTEN")),
        port_of(env(c, "TOKEND_METRICS_ADDR")),
    ] {
        assert!(expose.contains(&port.to_string()), "{expose}");
    }
    let user = docker.lines().rfind(|l| l.starts_with("USER ")).unwrap();
    let uid = pod["securityContext"]["runAsUser"].as_i64().unwrap();
    assert!(user.contains(&uid.to_string()) && uid != 0, "{user}");
    let instructions: Vec<&str> = docker
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    // protoc only for the etcd backend's build, and only when asked for.
    let protoc = instructions
        .iter()
        .position(|l| l.contains("protobuf-compiler"))
        .expect("protoc for --build-arg FEATURES=etcd");
    assert!(
        instructions[protoc - 1].contains(r#"if [ -n "$FEATURES" ]"#),
        "the default image is built without protoc"
    );
    assert_eq!(docker.matches("FROM ").count(), 2, "multi-stage");
}

/// What the build stage copies into the image's build context.
fn copied_for_the_build(docker: &str) -> Vec<String> {
    // Between the first `FROM` and the second.
    let docker = format!("\n{docker}");
    let build_stage = docker.split("\nFROM ").nth(1).expect("a build stage");
    build_stage
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            // Every word but the last (the destination).
            words[..words.len() - 1]
                .iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            // Installed packages are not part of the repository.
            if e.file_name() != "node_modules" {
                copy_tree(&e.path(), &to.join(e.file_name()));
            }
        }
    } else {
        std::fs::copy(from, to).unwrap();
    }
}

/// Files `include_bytes!` / `include_str!` name by a literal path in `file`
/// (under `dir`, a copy of the repository), resolved from the file's folder.
fn included(file: &std::path::Path) -> Vec<std::path::PathBuf> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut out = Vec::new();
    for mac in ["include_bytes!(\"", "include_str!(\""] {
        for (at, _) in text.match_indices(mac) {
            let rest = &text[at + mac.len()..];
            let path = &rest[..rest.find('"').unwrap()];
            out.push(file.parent().unwrap().join(path));
        }
    }
    out
}

/// `docker build` copies only what the Dockerfile names: the manifest must
/// parse with just that (its `[[test]]` targets need their files), and every
/// file the sources include must be there. A Dockerfile that missed `tests/`
/// and `web/dist/` failed both checks.
#[test]
fn the_image_build_copies_everything_the_build_reads() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let context = tempfile::tempdir().unwrap();
    for path in copied_for_the_build(&read("Dockerfile")) {
        let path = path.trim_end_matches('/');
        copy_tree(&root.join(path), &context.path().join(path));
    }
    // Asked for a target that does not exist, cargo reads the manifest and
    // finds every target's file, then stops before compiling anything.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let check = std::process::Command::new(cargo)
        .args([
            "check",
            "--offline",
            "--bin",
            "no-such-target",
            "--target-dir",
        ])
        .arg(context.path().join("target"))
        .current_dir(context.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stderr);
    assert!(
        said.contains("no bin target named `no-such-target`"),
        "the manifest does not read in the image's build context: {said}"
    );
    let mut sources = vec![context.path().join("src")];
    let mut checked = 0;
    while let Some(p) = sources.pop() {
        if p.is_dir() {
            sources.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if p.extension().is_some_and(|e| e == "rs") {
            for file in included(&p) {
                assert!(
                    file.exists(),
                    "{} includes {}, which the image's build context lacks",
                    p.display(),
                    file.display()
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 3, "the console's files are included: {checked}");
    // What must never be sent to the daemon: a data dir's secret, and
    // gigabytes of build output.
    let ignored = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    for never in ["target", "tokend-data", "**/node_modules"] {
        assert!(
            ignored.lines().any(|l| l == never),
            ".dockerignore lacks {never}"
        );
    }
}

#[test]
fn the_mesh_client_names_the_service_and_port() {
    let tokend = docs("kubernetes/tokend.yaml");
    let svc = kind(&tokend, "Service");
    let client = docs("kubernetes/mesh-client.yaml");
    let c = &kind(&client, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    let server = env(c, "TOKEND_SERVER");
    let port = svc["spec"]["ports"][0]["port"].as_i64().unwrap();
    let name = svc["metadata"]["name"].as_str().unwrap();
    assert_eq!(server, format!("http://{name}:{port}"));
    // The token it mounts is the file it reads.
    let file = env(c, "TOKEND_TOKEN_FILE");
    let mount = c["volumeMounts"][0]["mountPath"].as_str().unwrap();
    assert!(file.starts_with(mount), "{file} not under {mount}");
}

#[test]
fn the_replicas_shape_agrees_with_the_binary_and_the_single_replica_shape() {
    let replicas = docs("kubernetes/tokend-replicas.yaml");
    let deployment = kind(&replicas, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert!(deployment["spec"]["replicas"].as_i64().unwrap() >= 2);

    // TOKEND_STORE is what `--store` accepts, and names etcd.
    let store: tokend::store::Backend = env(c, "TOKEND_STORE").parse().unwrap();
    match store {
        tokend::store::Backend::Etcd { endpoints, prefix } => {
            assert_eq!(endpoints.hosts.len(), 3, "{endpoints:?}");
            assert_eq!(prefix, "/tokend/");
        }
        other => panic!("{other:?}"),
    }
    // Every replica reads the operator secret from the mounted Secret.
    let file = env(c, "TOKEND_OPERATOR_TOKEN_FILE");
    let mount = c["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|m| {
            file.starts_with(m["mountPath"].as_str().unwrap())
                && m["name"].as_str() == Some("operator")
        })
        .expect("the operator secret is mounted where TOKEND_OPERATOR_TOKEN_FILE points");
    assert_eq!(mount["readOnly"].as_bool(), Some(true));
    let secret = pod["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str() == Some("operator"))
        .unwrap();
    assert_eq!(
        secret["secret"]["secretName"].as_str(),
        Some("tokend-operator")
    );

    // Same Service as the one-replica shape: the mesh config fits both.
    let single = docs("kubernetes/tokend.yaml");
    assert_eq!(
        kind(&replicas, "Service")["spec"],
        kind(&single, "Service")["spec"]
    );
    assert_eq!(
        env(c, "TOKEND_LISTEN"),
        env(
            &kind(&single, "StatefulSet")["spec"]["template"]["spec"]["containers"][0],
            "TOKEND_LISTEN"
        )
    );
    assert!(
        kind(&replicas, "PodDisruptionBudget")["spec"]["minAvailable"]
            .as_i64()
            .unwrap()
            >= 1
    );
}
