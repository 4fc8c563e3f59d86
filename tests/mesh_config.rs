//! deploy/envoy and deploy/istio must agree with deploy/kubernetes and the
//! binary: the ext_authz call reaches the tokend Service over HTTP/2, fails
//! closed, sends the header tokend reads, and names modules the way Check
//! reads them. Parses the files; nothing here needs Envoy or a cluster.

use std::time::Duration;

use yaml_rust2::{Yaml, YamlLoader};

/// Envoy's well-known filter names (the per-route config is keyed by them).
const HCM: &str = "envoy.filters.network.http_connection_manager";
const EXT_AUTHZ: &str = "envoy.filters.http.ext_authz";
const ROUTER: &str = "envoy.filters.http.router";
const EXT_AUTHZ_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
const EXT_AUTHZ_PER_ROUTE_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute";
const HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// The CheckRequest `context_extensions` key that tokend's Check reads a
/// route's required module from ("tokend-module").
const MODULE_KEY: &str = tokend::service::authz::MODULE_EXTENSION;

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/deploy/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn parse(what: &str, text: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(text).unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn one_doc(path: &str) -> Yaml {
    let mut docs = parse(path, &read(path));
    assert_eq!(docs.len(), 1, "{path}: one YAML document");
    docs.remove(0)
}

fn kind<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn list<'a>(y: &'a Yaml, what: &str) -> &'a [Yaml] {
    y.as_vec()
        .unwrap_or_else(|| panic!("{what} is not a list: {y:?}"))
}

fn str_of<'a>(y: &'a Yaml, what: &str) -> &'a str {
    y.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {y:?}"))
}

/// The binary's own defaults, as `tokend serve` parses them.
fn defaults() -> tokend::cli::ServeArgs {
    tokend::cli::ServeArgs::defaults()
}

/// The tokend Service's name and its `grpc` port, from the Kubernetes manifest.
fn tokend_service() -> (String, i64) {
    let docs = parse("kubernetes/tokend.yaml", &read("kubernetes/tokend.yaml"));
    let svc = kind(&docs, "Service");
    let name = str_of(&svc["metadata"]["name"], "Service name").to_string();
    let port = list(&svc["spec"]["ports"], "Service ports")
        .iter()
        .find(|p| p["name"].as_str() == Some("grpc"))
        .and_then(|p| p["port"].as_i64())
        .expect("the Service has a grpc port");
    (name, port)
}

/// A port written as a number or, as Istio's docs do, a quoted number.
fn port_value(y: &Yaml, what: &str) -> i64 {
    y.as_i64()
        .or_else(|| y.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("{what} is not a port: {y:?}"))
}

/// A google.protobuf.Duration in its JSON/YAML form ("0.25s"; not "250ms",
/// which Envoy and Istio both refuse).
fn pb_duration(y: &Yaml, what: &str) -> Duration {
    let s = str_of(y, what);
    let secs = s
        .strip_suffix('s')
        .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{what} = {s:?} is not a protobuf duration like \"0.25s\""));
    Duration::from_secs_f64(secs)
}

/// Every `timeout`, `*_timeout` or `*Timeout` value in the tree is a
/// protobuf duration; returns how many there were.
fn check_durations(y: &Yaml, path: &str) -> usize {
    match y {
        Yaml::Hash(h) => h
            .iter()
            .map(|(k, v)| {
                let key = k.as_str().unwrap_or("?");
                let here = format!("{path}.{key}");
                let own =
                    if key == "timeout" || key.ends_with("_timeout") || key.ends_with("Timeout") {
                        pb_duration(v, &here);
                        1
                    } else {
                        0
                    };
                own + check_durations(v, &here)
            })
            .sum(),
        Yaml::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, v)| check_durations(v, &format!("{path}[{i}]")))
            .sum(),
        _ => 0,
    }
}

// ---- Envoy -------------------------------------------------------------

fn envoy() -> Yaml {
    one_doc("envoy/envoy.yaml")
}

/// The HTTP connection manager's typed_config.
fn hcm(envoy: &Yaml) -> &Yaml {
    let mut found = Vec::new();
    for l in list(&envoy["static_resources"]["listeners"], "listeners") {
        for fc in list(&l["filter_chains"], "filter_chains") {
            for f in list(&fc["filters"], "filters") {
                if f["name"].as_str() == Some(HCM) {
                    found.push(&f["typed_config"]);
                }
            }
        }
    }
    assert_eq!(found.len(), 1, "one HTTP connection manager");
    found[0]
}

fn http_filter_names(hcm: &Yaml) -> Vec<&str> {
    list(&hcm["http_filters"], "http_filters")
        .iter()
        .map(|f| str_of(&f["name"], "http filter name"))
        .collect()
}

/// The ext_authz filter's typed_config.
fn ext_authz(hcm: &Yaml) -> &Yaml {
    let filters = list(&hcm["http_filters"], "http_filters");
    let f = filters
        .iter()
        .find(|f| f["name"].as_str() == Some(EXT_AUTHZ))
        .expect("an ext_authz http filter");
    let cfg = &f["typed_config"];
    assert_eq!(cfg["@type"].as_str(), Some(EXT_AUTHZ_TYPE));
    cfg
}

fn cluster<'a>(envoy: &'a Yaml, name: &str) -> &'a Yaml {
    let clusters = list(&envoy["static_resources"]["clusters"], "clusters");
    let named: Vec<&Yaml> = clusters
        .iter()
        .filter(|c| c["name"].as_str() == Some(name))
        .collect();
    assert_eq!(named.len(), 1, "exactly one cluster named {name}");
    named[0]
}

/// (address, port) of every endpoint of a cluster.
fn endpoints(cluster: &Yaml) -> Vec<(&str, i64)> {
    let la = &cluster["load_assignment"];
    assert_eq!(
        la["cluster_name"], cluster["name"],
        "load_assignment names its cluster"
    );
    list(&la["endpoints"], "endpoints")
        .iter()
        .flat_map(|e| list(&e["lb_endpoints"], "lb_endpoints"))
        .map(|lb| {
            let sa = &lb["endpoint"]["address"]["socket_address"];
            (
                str_of(&sa["address"], "socket_address.address"),
                port_value(&sa["port_value"], "socket_address.port_value"),
            )
        })
        .collect()
}

#[test]
fn envoy_ext_authz_calls_the_tokend_service_over_http2() {
    let envoy = envoy();
    let authz = ext_authz(hcm(&envoy));
    assert_eq!(
        authz["transport_api_version"].as_str(),
        Some("V3"),
        "tokend serves envoy.service.auth.v3"
    );
    let name = str_of(
        &authz["grpc_service"]["envoy_grpc"]["cluster_name"],
        "ext_authz grpc_service.envoy_grpc.cluster_name",
    );
    let c = cluster(&envoy, name);

    let (svc, port) = tokend_service();
    let eps = endpoints(c);
    assert!(!eps.is_empty(), "cluster {name} has no endpoints");
    for (addr, p) in &eps {
        assert_eq!(*addr, svc, "cluster {name} points at the Service's name");
        assert_eq!(*p, port, "cluster {name} uses the Service's grpc port");
    }
    // A Service name is a DNS name: a STATIC cluster would refuse it.
    let ty = str_of(&c["type"], "cluster type");
    assert!(
        ty == "STRICT_DNS" || ty == "LOGICAL_DNS",
        "cluster {name} is {ty}, which cannot resolve {svc}"
    );

    // gRPC needs HTTP/2 to the cluster; Envoy's default is HTTP/1.1.
    let opts = &c["typed_extension_protocol_options"][HTTP_OPTIONS];
    assert_eq!(
        opts["@type"]
            .as_str()
            .map(|t| t.rsplit('/').next().unwrap()),
        Some(HTTP_OPTIONS),
        "cluster {name} sets {HTTP_OPTIONS}"
    );
    let explicit = &opts["explicit_http_config"];
    assert!(
        explicit["http2_protocol_options"].as_hash().is_some(),
        "cluster {name} is not HTTP/2: {explicit:?}"
    );
    assert_eq!(
        explicit.as_hash().map(|h| h.len()),
        Some(1),
        "only one protocol in explicit_http_config"
    );
}

#[test]
fn envoy_ext_authz_fails_closed_with_a_short_timeout() {
    let envoy = envoy();
    let authz = ext_authz(hcm(&envoy));
    assert_eq!(
        authz["failure_mode_allow"].as_bool(),
        Some(false),
        "failure_mode_allow must be set, and false: a tokend outage must not open the door"
    );
    let timeout = pb_duration(&authz["grpc_service"]["timeout"], "ext_authz timeout");
    assert!(timeout > Duration::ZERO);
    assert!(
        timeout < defaults().request_timeout,
        "Envoy should give up on a Check ({timeout:?}) before tokend's own deadline"
    );
    assert!(
        check_durations(&envoy, "envoy") >= 3,
        "ext_authz and cluster timeouts"
    );
}

#[test]
fn envoy_sends_tokend_only_the_header_it_reads() {
    let envoy = envoy();
    let authz = ext_authz(hcm(&envoy));
    let header = defaults().authz_header;
    let patterns = list(
        &authz["allowed_headers"]["patterns"],
        "allowed_headers.patterns",
    );
    let exact: Vec<&str> = patterns
        .iter()
        .map(|p| {
            assert_eq!(
                p.as_hash().map(|h| h.len()),
                Some(1),
                "{p:?}: exact matches only, so no other header slips through"
            );
            str_of(&p["exact"], "allowed_headers pattern")
        })
        .collect();
    assert_eq!(
        exact,
        [header.as_str()],
        "the binary reads the secret from {header:?}"
    );
}

#[test]
fn envoy_route_requires_a_module_through_context_extensions() {
    let envoy = envoy();
    let hcm = hcm(&envoy);
    // typed_per_filter_config is keyed by the filter's name in the chain.
    let filter_name = http_filter_names(hcm)
        .into_iter()
        .find(|n| *n == EXT_AUTHZ)
        .unwrap();
    let mut module_routes = 0;
    for vh in list(&hcm["route_config"]["virtual_hosts"], "virtual_hosts") {
        let routes = list(&vh["routes"], "routes");
        let mut catch_all_seen = false;
        for r in routes {
            let per_filter = &r["typed_per_filter_config"];
            if let Some(h) = per_filter.as_hash() {
                for k in h.keys() {
                    assert_eq!(k.as_str(), Some(filter_name), "per-filter config key");
                }
                let cfg = &per_filter[filter_name];
                assert_eq!(cfg["@type"].as_str(), Some(EXT_AUTHZ_PER_ROUTE_TYPE));
                let ext = cfg["check_settings"]["context_extensions"]
                    .as_hash()
                    .expect("check_settings.context_extensions");
                let keys: Vec<&str> = ext.keys().map(|k| str_of(k, "key")).collect();
                assert_eq!(keys, [MODULE_KEY], "the key tokend's Check reads");
                let module = str_of(ext.values().next().unwrap(), "module");
                assert!(
                    tokend::domain::MODULE_CATALOGUE.contains(&module),
                    "{module:?} is not a module tokend knows"
                );
                // Envoy takes the first matching route.
                assert!(
                    !catch_all_seen,
                    "a catch-all route before the {module} route would shadow it"
                );
                assert_ne!(
                    r["match"]["prefix"].as_str(),
                    Some("/"),
                    "the {module} route must not catch everything"
                );
                module_routes += 1;
            } else if r["match"]["prefix"].as_str() == Some("/") {
                catch_all_seen = true;
            }
        }
        assert!(
            catch_all_seen,
            "virtual host has a default route without a module"
        );
    }
    assert!(module_routes >= 1, "no route requires a module");
}

#[test]
fn envoy_checks_before_routing() {
    let envoy = envoy();
    let names = http_filter_names(hcm(&envoy));
    let authz = names.iter().position(|n| *n == EXT_AUTHZ).unwrap();
    let router = names
        .iter()
        .position(|n| *n == ROUTER)
        .expect("a router filter");
    assert!(
        authz < router,
        "ext_authz must run before the router: {names:?}"
    );
    assert_eq!(
        router,
        names.len() - 1,
        "the router is the last filter: {names:?}"
    );
}

// ---- Istio -------------------------------------------------------------

/// The `extensionProviders` list inside the `mesh` ConfigMap value.
fn extension_providers() -> Vec<Yaml> {
    let cm = one_doc("istio/mesh-config.yaml");
    let mesh = str_of(&cm["data"]["mesh"], "data.mesh");
    let mut docs = parse("data.mesh", mesh);
    assert_eq!(docs.len(), 1);
    let mesh = docs.remove(0);
    list(&mesh["extensionProviders"], "extensionProviders").to_vec()
}

#[test]
fn istio_policy_uses_a_fail_closed_grpc_provider_for_the_tokend_service() {
    let ap = one_doc("istio/authorization-policy.yaml");
    assert_eq!(ap["kind"].as_str(), Some("AuthorizationPolicy"));
    assert_eq!(ap["apiVersion"].as_str(), Some("security.istio.io/v1"));
    let spec = &ap["spec"];
    assert_eq!(spec["action"].as_str(), Some("CUSTOM"));
    assert!(
        !list(&spec["rules"], "rules").is_empty(),
        "a CUSTOM policy without rules never calls the provider"
    );
    assert!(
        spec["selector"]["matchLabels"]
            .as_hash()
            .is_some_and(|h| !h.is_empty()),
        "the policy selects a workload"
    );

    let name = str_of(&spec["provider"]["name"], "provider.name");
    let providers = extension_providers();
    let matching: Vec<&Yaml> = providers
        .iter()
        .filter(|p| p["name"].as_str() == Some(name))
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "exactly one extensionProviders entry is named {name:?}"
    );
    let grpc = &matching[0]["envoyExtAuthzGrpc"];
    assert!(
        grpc.as_hash().is_some(),
        "{name} must be envoyExtAuthzGrpc: tokend serves Check over gRPC"
    );

    // service is `[<Namespace>/]<Hostname>`, the hostname a cluster FQDN.
    let (svc, port) = tokend_service();
    let service = str_of(&grpc["service"], "envoyExtAuthzGrpc.service");
    let host = service.rsplit('/').next().unwrap();
    let (first, rest) = host.split_once('.').unwrap_or((host, ""));
    assert_eq!(first, svc, "{host} names the tokend Service");
    let namespace = rest
        .strip_suffix(".svc.cluster.local")
        .unwrap_or_else(|| panic!("{host} is not <service>.<namespace>.svc.cluster.local"));
    assert!(
        !namespace.is_empty() && !namespace.contains('.'),
        "{host}: namespace {namespace:?}"
    );
    assert_eq!(
        port_value(&grpc["port"], "envoyExtAuthzGrpc.port"),
        port,
        "the Service's grpc port"
    );

    assert_eq!(
        grpc["failOpen"].as_bool(),
        Some(false),
        "failOpen must be set, and false"
    );
    let timeout = pb_duration(&grpc["timeout"], "envoyExtAuthzGrpc.timeout");
    assert!(timeout > Duration::ZERO && timeout < defaults().request_timeout);
    check_durations(matching[0], name);
}
