#!/usr/bin/env bash
# The web console's build (web/README.md). cargo never runs this: the bundle
# in web/dist is committed and embedded by src/web.rs, so a build of tokend
# needs no node. This script is how that bundle is made and proven.
#
#   scripts/web.sh build [DIR]  npm ci (when the lock changed), buf generate,
#                               type-check, esbuild: web/dist (or DIR)
#   scripts/web.sh check        build into a temp dir; fail unless it is
#                               byte for byte the committed web/dist
#   scripts/web.sh lint         buf lint over proto/, and buf breaking against
#                               the previous commit's protos
#   scripts/web.sh deps         only install web/node_modules (npm ci)
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
web="$root/web"
bin="$web/node_modules/.bin"

# npm ci, unless node_modules was installed from this very package-lock.json.
deps() {
  local want have=""
  if ! command -v npm >/dev/null 2>&1; then
    echo "web: installing node and npm (Debian)" >&2
    apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
  fi
  want="$(sha256sum "$web/package-lock.json" | cut -d' ' -f1)"
  [[ -f "$web/node_modules/.tokend-lock" ]] && have="$(cat "$web/node_modules/.tokend-lock")"
  if [[ "$want" != "$have" || ! -x "$bin/esbuild" ]]; then
    echo "web: npm ci" >&2
    (cd "$web" && npm ci --no-audit --no-fund --loglevel=error >&2)
    echo "$want" >"$web/node_modules/.tokend-lock"
  fi
}

build() {
  local out="${1:-$web/dist}"
  deps
  # The client, from proto/ and the google.rpc copies in web/proto/.
  "$bin/buf" generate --template web/buf.gen.yaml
  (cd "$web" && "$bin/tsc" -p .)
  mkdir -p "$out"
  # Pinned esbuild, no source maps, no timestamps: the same sources give the
  # same bytes on any machine.
  (cd "$web" && "$bin/esbuild" src/main.ts --bundle --minify --format=esm \
    --target=chrome116,firefox124,safari17.4 --legal-comments=none \
    --log-level=warning --outfile="$out/console.js")
  (cd "$web" && "$bin/esbuild" src/console.css --bundle --minify \
    --target=chrome116,firefox124,safari17.4 --log-level=warning --outfile="$out/console.css")
  cp "$web/static/index.html" "$out/index.html"
}

check() {
  local tmp
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  build "$tmp/dist"
  if ! diff -r "$web/dist" "$tmp/dist" >/dev/null; then
    echo "web/dist is not what web/ builds: run scripts/web.sh build and commit web/dist" >&2
    diff -r --brief "$web/dist" "$tmp/dist" >&2 || true
    return 1
  fi
  echo "web/dist matches its sources ($(wc -c <"$web/dist/console.js") bytes of JS)"
}

lint() {
  deps
  "$bin/buf" lint --config web/buf.yaml
  echo "buf lint: proto/ ok"
  if ! git rev-parse -q --verify 'HEAD~1^{commit}' >/dev/null; then
    echo "buf breaking: no previous commit in this clone (shallow or first commit): skipped"
    return 0
  fi
  local prev
  prev="$(mktemp -d)"
  trap 'rm -rf "$prev"' RETURN
  git archive HEAD~1 proto | tar -x -C "$prev"
  "$bin/buf" breaking --config web/buf.yaml --against "$prev" --against-config web/buf.yaml
  echo "buf breaking: proto/ is compatible with $(git rev-parse --short HEAD~1)"
}

case "${1:-}" in
  build) build "${2:-}" ;;
  check) check ;;
  lint) lint ;;
  deps) deps ;;
  *)
    echo "usage: scripts/web.sh build [DIR] | check | lint | deps" >&2
    exit 2
    ;;
esac
