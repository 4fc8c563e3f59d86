#!/usr/bin/env bash
# tokend against etcd, side by side, on this machine: writes BENCHMARKS.md.
#
#   scripts/bench.sh              full run, writes BENCHMARKS.md; about 25
#                                 minutes on a 2-core machine
#   scripts/bench.sh --only deletes,fan-out
#                                 those scenarios only (fan-out, deletes, lookups,
#                                 catch-up, mesh, floors, tracing); the report goes to a
#                                 temp file, BENCHMARKS.md stays as it is
#   scripts/bench.sh --profile-base REV
#                                 the full run, then where a delete's CPU goes
#                                 (scripts/profile.sh), here and at REV, appended
#                                 to BENCHMARKS.md; needs perf, adds ~10 minutes
#   scripts/bench.sh --scale [N]  the scale scenario alone (N tokens, default
#                                 1,000,000, and ten times as many old tombstones:
#                                 memory, disk and start-up per token, tokend and
#                                 etcd; about 3 minutes at 100,000, 7 at a million
#                                 on 2 cores in the last run); its
#                                 section replaces the one in BENCHMARKS.md, and
#                                 full runs carry it over
#   scripts/bench.sh --smoke      about a minute: every scenario with tiny sizes (CI)
#   scripts/bench.sh --install    only install what the benchmark needs
#
# Needs Debian's etcd-server (the peer) and protobuf-compiler (the etcd
# client's build runs protoc); both are installed when missing, and so is
# etcd-client (etcdctl, for the test suite's secured cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
# Cargo's target dir: ./target unless CARGO_TARGET_DIR says otherwise.
target="${CARGO_TARGET_DIR:-target}"

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
    exec "$target/debug/tokend-bench" --smoke --out "$out"
    ;;
  --only)
    cargo build -q --release --features bench --bins
    out="$(mktemp -d)/BENCHMARKS.md"
    echo "report: $out" >&2
    exec "$target/release/tokend-bench" --only "${2:?--only takes a list of scenarios}" --out "$out"
    ;;
  "")
    cargo build -q --release --features bench --bins
    exec "$target/release/tokend-bench" --out BENCHMARKS.md
    ;;
  --scale)
    tokens="${2:-1000000}"
    [[ "$tokens" =~ ^[0-9]+$ ]] || { echo "--scale takes a number of tokens" >&2; exit 2; }
    cargo build -q --release --features bench --bins
    exec "$target/release/tokend-bench" --only scale --scale-tokens "$tokens" --out BENCHMARKS.md
    ;;
  --profile-base)
    base="${2:?--profile-base takes a git revision}"
    cargo build -q --release --features bench --bins
    "$target/release/tokend-bench" --out BENCHMARKS.md
    profile="$(scripts/profile.sh 32 --base "$base" --floor)"
    section="$(mktemp)"
    {
      echo "## 10. Where a delete's CPU goes"
      echo
      echo "tokend alone, 20,000 deletes from 32 clients, its CPU sampled by \`perf\` (999 Hz, DWARF stacks) and each sample put in the first part of the delete's path its stack touches (\`scripts/perf-breakdown.py\`); microseconds are that share of the run's measured server CPU per delete, which perf's own overhead inflates by roughly a third. The floor server's profile, taken the same way, shows which parts tokend shares with it (the stack, the sockets, the fsync) and which are its own. Reproduce with \`scripts/profile.sh 32 --base $base --floor\`. A base from before the write-ahead log (before 00d4bcf) had sled's own flush as the commit: there its fsync counts under *sled*, and the old writer's waiting under *other*."
      echo
      echo "$profile"
      echo
    } >"$section"
    # Numbered sections first: before the scale section the run carried
    # over (it has a run of its own), or else at the end.
    awk -v section="$section" '
      function put(line) { while ((getline line < section) > 0) print line }
      /^## Scale/ && !done { put(); done = 1 }
      { print }
      END { if (!done) { print ""; put() } }
    ' BENCHMARKS.md >"$section.md"
    mv "$section.md" BENCHMARKS.md
    rm -f "$section"
    ;;
  *)
    echo "usage: $0 [--smoke | --install | --only SCENARIOS | --scale [TOKENS] | --profile-base REV]" >&2
    exit 2
    ;;
esac
