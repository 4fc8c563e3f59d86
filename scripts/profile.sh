#!/usr/bin/env bash
# Where a delete's CPU goes, in microseconds per delete, from a CPU profile
# of tokend alone while CLIENTS clients delete (default 32):
#
#   scripts/profile.sh [CLIENTS]             this checkout
#   scripts/profile.sh [CLIENTS] --base REV  also REV (built in a worktree
#                                            under target/profile-base), side
#                                            by side: before and after
#   scripts/profile.sh [CLIENTS] --floor     also the floor server (the same
#                                            stack and fsync, no database):
#                                            what tokend adds to it
#
# Needs perf (Debian's linux-perf; installed when missing) and what
# scripts/bench.sh needs. Prints a Markdown table (scripts/perf-breakdown.py).
set -euo pipefail
cd "$(dirname "$0")/.."

clients=32
base=""
floor=""
while (($#)); do
  case "$1" in
    --base) base="${2:?--base takes a git revision}"; shift 2 ;;
    --floor) floor=1; shift ;;
    *) clients="$1"; shift ;;
  esac
done

command -v perf >/dev/null || {
  echo "installing linux-perf" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null
}
scripts/bench.sh --install

# profile DIR [--floor]: the table for the tokend-bench and tokend built
# in DIR (or for the floor server).
profile() {
  local bin="$1" data
  shift
  data="$(mktemp -d)/perf.data"
  local line
  line="$("$bin/tokend-bench" --profile-deletes "$clients" "$data" "$@" | tail -1)"
  echo "$line" >&2
  local cpu="${line##*server_cpu_us=}"
  perf script -i "$data" 2>/dev/null | python3 scripts/perf-breakdown.py "$cpu"
  rm -rf "$(dirname "$data")"
}

cargo build -q --profile profiling --features bench --bins
echo "### Where a delete's CPU goes at $clients clients ($(git rev-parse --short HEAD))"
echo
profile target/profiling

if [[ -n "$base" ]]; then
  wt="target/profile-base/src"
  rm -rf "$wt" && git worktree prune
  git worktree add -q --detach "$wt" "$base"
  # The base may predate --profile-deletes: this checkout's bench drives it.
  (cd "$wt" && CARGO_TARGET_DIR="$PWD/../target" cargo build -q --profile profiling --bin tokend)
  mkdir -p target/profile-base/bin
  cp target/profile-base/target/profiling/tokend target/profile-base/bin/
  cp target/profiling/tokend-bench target/profile-base/bin/
  git worktree remove --force "$wt"
  echo
  echo "### The same at $clients clients, $(git rev-parse --short "$base") (before)"
  echo
  profile target/profile-base/bin
fi

if [[ -n "$floor" ]]; then
  echo
  echo "### The floor server at $clients clients"
  echo
  profile target/profiling --floor
fi
