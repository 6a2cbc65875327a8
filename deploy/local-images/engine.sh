#!/usr/bin/env bash
# Print a DOCKER_HOST whose engine answers. Order: $DOCKER_HOST as given, the system socket, then
# a private dockerd started here (root only) with what this kind of machine allows: no iptables,
# no bridge (containers use --network host), the vfs storage driver. Its data stays in
# $PRIVATE_DOCKER_DIR so images survive between runs; `engine.sh stop` ends the daemon it started.
set -euo pipefail

dir=${PRIVATE_DOCKER_DIR:-/var/lib/oci-referrers-proxy-docker}
private=unix://$dir/run/docker.sock

answers() { DOCKER_HOST=$1 timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

if [ "${1:-}" = stop ]; then
  pid=$(cat "$dir/run/dockerd.pid" 2>/dev/null || true)
  if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.1; done
    echo "dockerd $pid did not stop within 10 s" >&2; exit 1
  fi
  exit 0
fi

for host in ${DOCKER_HOST:-} unix:///var/run/docker.sock "$private"; do
  if answers "$host"; then echo "$host"; exit 0; fi
done
if [ -n "${DOCKER_HOST:-}" ] && [ "$DOCKER_HOST" != "$private" ]; then
  echo "no Docker engine answers at DOCKER_HOST=$DOCKER_HOST" >&2; exit 1
fi
if [ "$(id -u)" != 0 ] || ! command -v dockerd >/dev/null; then
  echo "no Docker engine answers, and a private one needs root and Debian's docker.io" >&2
  exit 1
fi
mkdir -p "$dir/data" "$dir/run"
# setsid: the daemon outlives this script and the make or pytest that ran it, until `stop`.
setsid dockerd --iptables=false --ip6tables=false --bridge=none --storage-driver=vfs \
  --data-root "$dir/data" --exec-root "$dir/run/exec" --pidfile "$dir/run/dockerd.pid" \
  -H "$private" >"$dir/dockerd.log" 2>&1 </dev/null &
for _ in $(seq 300); do
  if answers "$private"; then
    echo "started a private dockerd (pid $(cat "$dir/run/dockerd.pid")) at $private" >&2
    echo "$private"; exit 0
  fi
  sleep 0.1
done
echo "the private dockerd did not answer within 30 s; see $dir/dockerd.log" >&2
exit 1
