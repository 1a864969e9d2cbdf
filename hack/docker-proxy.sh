#!/usr/bin/env bash
# docker-proxy, Docker's userland proxy, built from moby's Go module for side-by-side proxy
# benchmarks only (bench/proxy/run.py). Cached; prints the binary's path.
set -euo pipefail
version=${DOCKER_PROXY_VERSION:-v28.2.2+incompatible}
dir="${BRIDGEPORT_CACHE:-$HOME/.cache/bridgeport}/docker-proxy/${version%%+*}"
if [[ ! -x $dir/docker-proxy ]]; then
  # The bench smoke run (bench/smoke.py) uses a cached binary only: no build in `make test`.
  [[ ${BRIDGEPORT_DOCKER_PROXY_BUILD:-1} == 0 ]] && { echo "[docker-proxy] not built" >&2; exit 1; }
  echo "[docker-proxy] building github.com/docker/docker/cmd/docker-proxy@$version" >&2
  GOBIN=$dir GOFLAGS=-mod=mod go install "github.com/docker/docker/cmd/docker-proxy@$version"
fi
echo "$dir/docker-proxy"
