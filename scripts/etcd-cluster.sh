#!/usr/bin/env bash
# Starts a 3-member etcd cluster (Debian's etcd-server) on free loopback
# ports in DIR, prints its client endpoints (host:port,…) on stdout and the
# member pids in DIR/pids. Used by scripts/test.sh's second pass.
#
#   scripts/etcd-cluster.sh DIR
set -euo pipefail
dir="$1"
mkdir -p "$dir"
ports=($(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(6)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
))
initial=""
for i in 0 1 2; do
  initial+="m$i=http://127.0.0.1:${ports[$((i + 3))]},"
done
initial="${initial%,}"
: >"$dir/pids"
for i in 0 1 2; do
  etcd --name "m$i" --data-dir "$dir/m$i" \
    --listen-client-urls "http://127.0.0.1:${ports[$i]}" \
    --advertise-client-urls "http://127.0.0.1:${ports[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${ports[$((i + 3))]}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${ports[$((i + 3))]}" \
    --initial-cluster "$initial" --initial-cluster-state new \
    --initial-cluster-token "tokend-suite-$$" \
    --logger zap --log-level error >"$dir/m$i.log" 2>&1 &
  echo $! >>"$dir/pids"
done
for i in 0 1 2; do
  for _ in $(seq 600); do
    if python3 - "${ports[$i]}" <<'PY' 2>/dev/null; then break; fi
import sys, urllib.request
body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2).read()
sys.exit(0 if b'"health":"true"' in body else 1)
PY
    sleep 0.1
  done
done
echo "127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
