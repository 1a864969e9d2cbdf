#!/usr/bin/env bash
# Ensure a helm v3 binary, built from the Go module proxy (helm is not packaged by Debian 12):
#
#   GOBIN=<cache>/helm/<version> go install helm.sh/helm/v3/cmd/helm@<version>
#
# into ${BRIDGEPORT_CACHE:-$HOME/.cache/bridgeport}/helm/<version>/helm. A second run is a
# no-op when the binary exists. Progress goes to stderr; the binary's path is printed on stdout
# (last line), so callers can do: helm="$(hack/helm.sh)".
#
# Measured on a 2-vCPU Debian 12 machine (go1.26.8), helm v3.22.0: first build 4 min 21 s wall
# clock (158 s user + 25 s sys, most of the rest module downloads; peak RSS 0.85 GB; 62 MB
# binary; the Go build cache was cold for its k8s.io v0.37 deps); relinking with a warm Go
# cache (BRIDGEPORT_REBUILD=1): 4 s; a run when the binary exists: under 0.01 s.
#
# Env:
#   BRIDGEPORT_HELM_VERSION  helm version to build (default below; keep it on the newest v3)
#   BRIDGEPORT_CACHE         cache root (default ~/.cache/bridgeport)
#   BRIDGEPORT_REBUILD=1     rebuild even if the binary exists
set -euo pipefail

version="${BRIDGEPORT_HELM_VERSION:-v3.22.0}"
if [[ ! "$version" =~ ^v3\.[0-9]+\.[0-9]+$ ]]; then
    echo "[helm] BRIDGEPORT_HELM_VERSION=$version: expected v3.X.Y" >&2
    exit 1
fi

log() { printf '[helm] %s\n' "$*" >&2; }

dir="${BRIDGEPORT_CACHE:-$HOME/.cache/bridgeport}/helm/$version"
bin="$dir/helm"

if [[ "${BRIDGEPORT_REBUILD:-0}" != 1 && -x "$bin" ]]; then
    echo "$bin"
    exit 0
fi
if ! command -v go >/dev/null 2>&1; then
    log "'go' is not on PATH: it is needed to build helm $version"
    exit 1
fi

mkdir -p "$dir"
exec 9>"$dir/.build.lock" # concurrent callers (pytest workers) build once
flock 9
if [[ "${BRIDGEPORT_REBUILD:-0}" != 1 && -x "$bin" ]]; then
    echo "$bin"
    exit 0
fi

staging="$(mktemp -d "$dir/.build.XXXXXX")"
trap 'rm -rf "$staging"' EXIT
log "building helm $version with $(go env GOVERSION) into $dir (first time: a few minutes)"
start=$(date +%s)
export CGO_ENABLED=0 GOTOOLCHAIN="${GOTOOLCHAIN:-local}" # static binary, no C toolchain
# Same version ldflags as upstream's Makefile. Without the Kubernetes ones, `helm template` and
# `helm lint` assume Kubernetes v1.20 and reject charts with a newer kubeVersion constraint.
gomod="$(cd "$staging" && go mod download -json "helm.sh/helm/v3@$version" |
    sed -n -E 's/^[[:space:]]*"GoMod": "(.*)",?$/\1/p')"
client_go="$(sed -n -E 's/^[[:space:]]*k8s\.io\/client-go v([0-9]+)\.([0-9]+)\..*/\1 \2/p' "$gomod")"
read -r k8s_major k8s_minor <<<"$client_go"
k8s_major=$((k8s_major + 1)) # client-go v0.37 <-> Kubernetes 1.37
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version"
ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $pkg.k8sVersionMajor=$k8s_major -X $pkg.k8sVersionMinor=$k8s_minor"
done
# Module mode outside any module: the version is pinned by @version, go.sum comes from the
# checksum database.
(cd "$staging" && GOBIN="$staging" go install -trimpath -ldflags "$ldflags" \
    "helm.sh/helm/v3/cmd/helm@$version")
mv -f "$staging/helm" "$bin"
log "built helm $version (Kubernetes $k8s_major.$k8s_minor) in $(($(date +%s) - start)) s"
echo "$bin"
