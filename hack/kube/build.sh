#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager and kubectl from the Go module proxy
# (k8s.io/kubernetes pinned in hack/kube/go.mod) into a per-version cache dir:
#
#   ${BRIDGEPORT_CACHE:-$HOME/.cache/bridgeport}/kube/<version>/bin/
#
# A second run is a no-op when all binaries exist. Progress goes to stderr; the bin dir is
# printed on stdout (last line), so callers can do: bin="$(hack/kube/build.sh)".
#
# Env:
#   BRIDGEPORT_CACHE   cache root (default ~/.cache/bridgeport)
#   BRIDGEPORT_REBUILD=1  rebuild even if the binaries exist
#   GOMAXPROCS / GOFLAGS are honoured (GOFLAGS gets -mod=mod appended).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

log() { printf '[kube/build] %s\n' "$*" >&2; }

version="$(sed -n -E 's/^require k8s\.io\/kubernetes (v[0-9]+\.[0-9]+\.[0-9]+)$/\1/p' go.mod)"
if [[ ! "$version" =~ ^v([0-9]+)\.([0-9]+)\.([0-9]+)$ ]]; then
    log "cannot find 'require k8s.io/kubernetes vX.Y.Z' in $here/go.mod (run gen-gomod.sh)"
    exit 1
fi
major="${BASH_REMATCH[1]}"
minor="${BASH_REMATCH[2]}"

cache_root="${BRIDGEPORT_CACHE:-$HOME/.cache/bridgeport}"
kube_dir="$cache_root/kube/$version"
bin_dir="$kube_dir/bin"
cmds=(kube-apiserver kube-controller-manager kubectl)

all_built() {
    local c
    for c in "${cmds[@]}"; do
        [[ -x "$bin_dir/$c" ]] || return 1
    done
}

if [[ "${BRIDGEPORT_REBUILD:-0}" != 1 ]] && all_built; then
    log "using cached Kubernetes $version binaries in $bin_dir"
    echo "$bin_dir"
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    log "'go' is not on PATH; Go >= $(sed -n 's/^go //p' go.mod) is required to build Kubernetes"
    exit 1
fi

mkdir -p "$kube_dir"
# Serialise concurrent builds (e.g. several pytest workers) on the same cache dir.
exec 9>"$kube_dir/.build.lock"
if ! flock -n 9; then
    log "another build of $version is running; waiting for it..."
    flock 9
fi
if [[ "${BRIDGEPORT_REBUILD:-0}" != 1 ]] && all_built; then
    log "using cached Kubernetes $version binaries in $bin_dir"
    echo "$bin_dir"
    exit 0
fi

export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export CGO_ENABLED=0 # static binaries, same as upstream release builds; no C toolchain needed

build_date="$(date -u +'%Y-%m-%dT%H:%M:%SZ')"
ldflags="-s -w"
add_ldflag() {
    ldflags+=" -X 'k8s.io/client-go/pkg/version.$1=$2'"
    ldflags+=" -X 'k8s.io/component-base/version.$1=$2'"
}
add_ldflag gitVersion "$version"
add_ldflag gitMajor "$major"
add_ldflag gitMinor "$minor"
add_ldflag gitTreeState "archive"
add_ldflag gitCommit ""
add_ldflag buildDate "$build_date"

pkgs=()
for c in "${cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done

staging="$(mktemp -d "$kube_dir/.build.XXXXXX")"
trap 'rm -rf "$staging"' EXIT

log "building ${cmds[*]} $version with $(go env GOVERSION) into $bin_dir"
log "first run takes ~6 minutes on 2 cores (~600 MB of modules, ~3 GB Go build cache, ~2 GB RAM);"
log "later runs with a warm Go build cache take well under a minute"
start=$(date +%s)
go mod download
log "modules downloaded ($(($(date +%s) - start)) s); compiling..."
# One `go build` for all commands shares the package graph and parallelises across it.
go build -tags providerless -trimpath -ldflags "$ldflags" -o "$staging/" "${pkgs[@]}"
elapsed=$(($(date +%s) - start))

mkdir -p "$bin_dir"
for c in "${cmds[@]}"; do
    mv -f "$staging/$c" "$bin_dir/$c"
done
cat >"$kube_dir/build-info.txt" <<INFO
version=$version
go=$(go env GOVERSION)
built=$build_date
build_seconds=$elapsed
nproc=$(nproc)
INFO
log "built Kubernetes $version in ${elapsed}s: $("$bin_dir/kube-apiserver" --version)"
echo "$bin_dir"
