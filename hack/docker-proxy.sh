#!/usr/bin/env bash
# docker-proxy, Docker's userland proxy, built from moby's Go module for side-by-side proxy
# benchmarks only (bench/proxy/run.py). Cached; prints the binary's path.
set -euo pipefail
version=${DOCKER_PROXY_VERSION:-v28.2.2+incompatible}
dir="${BRIDGEPORT_CACHE:-$HOME/.cache/bridgeport}/docker-proxy/${version%%+*}"
if [[ ! -x $dir/docker-proxy ]]; then
  echo "[docker-proxy] building github.com/docker/docker/cmd/docker-proxy@$version" >&2
  GOBIN=$dir GOFLAGS=-mod=mod go install "github.com/docker/docker/cmd/docker-proxy@$version"
fi
echo "$dir/docker-proxy"
