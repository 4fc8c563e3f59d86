#!/usr/bin/env bash
# tokend against etcd, side by side, on this machine: writes BENCHMARKS.md.
#
#   scripts/bench.sh              full run, writes BENCHMARKS.md; takes several
#                                 minutes (about 6 on a 2-core machine)
#   scripts/bench.sh --only deletes,fan-out
#                                 those scenarios only (fan-out, deletes, lookups,
#                                 catch-up, mesh, floors); the report goes to a
#                                 temp file, BENCHMARKS.md stays as it is
#   scripts/bench.sh --smoke      seconds: every scenario once with tiny sizes (CI)
#   scripts/bench.sh --install    only install what the benchmark needs
#
# Needs Debian's etcd-server (the peer) and protobuf-compiler (the etcd
# client's build runs protoc); both are installed when missing, and so is
# etcd-client (etcdctl, for the test suite's secured cluster).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
# etcdctl: tests/etcd_secure.rs sets up etcd users, roles and auth with it.
command -v etcdctl >/dev/null || missing+=(etcd-client)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
if ((${#missing[@]})); then
  echo "installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

case "${1:-}" in
  --install)
    exit 0
    ;;
  --smoke)
    # The test profile's build is reused: a smoke run measures nothing.
    cargo build -q --features bench --bins
    out="$(mktemp -d)/BENCHMARKS.md"
    exec target/debug/tokend-bench --smoke --out "$out"
    ;;
  --only)
    cargo build -q --release --features bench --bins
    out="$(mktemp -d)/BENCHMARKS.md"
    echo "report: $out" >&2
    exec target/release/tokend-bench --only "${2:?--only takes a list of scenarios}" --out "$out"
    ;;
  "")
    cargo build -q --release --features bench --bins
    exec target/release/tokend-bench --out BENCHMARKS.md
    ;;
  *)
    echo "usage: $0 [--smoke | --install | --only SCENARIOS]" >&2
    exit 2
    ;;
esac
