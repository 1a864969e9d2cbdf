#!/usr/bin/env bash
# Build every binary the offline kind path needs from the Go module proxy (no image registry):
#
#   hack/kind/build-bin.sh [part...]     (default: all parts)
#
# into $BRIDGEPORT_CACHE/kind/bin/<part>-<version>/ (default cache ~/.cache/bridgeport). A part
# whose directory exists is skipped, so a warm run costs nothing. Parts: kind kube containerd
# runc crictl cni etcd flannel cniconf pause. Progress (one line per part, with its time) goes
# to stderr.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/kind/versions.sh
source "$here/versions.sh"
cache="${BRIDGEPORT_CACHE:-$HOME/.cache/bridgeport}"
bin_root="$cache/kind/bin"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}" GOFLAGS="-mod=mod"

log() { printf '[kind/build-bin] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
command -v go >/dev/null || die "'go' is not on PATH (Go >= 1.26 builds every part)"

# build <part> <version> <function>: runs <function> <staging-dir> once, caches the result.
build() {
    local part=$1 version=$2 fn=$3 dir="$bin_root/$1-$2" start
    if [[ -d "$dir" ]]; then
        log "$part $version: cached ($dir)"
        return
    fi
    mkdir -p "$bin_root"
    local staging
    staging="$(mktemp -d "$bin_root/.$part.XXXXXX")"
    start=$(date +%s)
    log "$part $version: building..."
    if ! "$fn" "$staging" >"$staging.log" 2>&1; then
        tail -30 "$staging.log" >&2
        rm -rf "$staging"
        die "$part $version failed to build (full log: $staging.log)"
    fi
    mv "$staging" "$dir"
    rm -f "$staging.log"
    log "$part $version: built in $(($(date +%s) - start)) s"
}

# A throwaway module whose go.mod pins <module>@<version>; `go build` there (for modules that
# `go install` refuses: replace directives, wrappers).
gomod() {  # gomod <dir> <module> <version>
    mkdir -p "$1"
    (cd "$1" && go mod init bridgeport.local/kind/tmp >/dev/null 2>&1 && go get "$2@$3")
}

b_kind() {
    CGO_ENABLED=0 GOBIN="$1" go install -trimpath -ldflags=-s "sigs.k8s.io/kind@$KIND_VERSION"
    # kind's node-image base files (systemd units, entrypoint, containerd config) come from
    # the same module; keep them with the binary.
    local src
    src="$(go env GOMODCACHE)/sigs.k8s.io/kind@$KIND_VERSION/images/base/files"
    cp -r "$src" "$1/base-files" && chmod -R u+w "$1/base-files"
}

b_kube() {  # the node's Kubernetes binaries, from the same module set as hack/kube
    local mod="$1/.mod" major minor ldflags=""
    mkdir -p "$mod"
    cp "$here/../kube/go.mod" "$here/../kube/go.sum" "$mod/"
    major=${KUBE_VERSION#v}; minor=${major#*.}; major=${major%%.*}; minor=${minor%%.*}
    for k in gitVersion="$KUBE_VERSION" gitMajor="$major" gitMinor="$minor" gitTreeState=archive; do
        ldflags+=" -X k8s.io/client-go/pkg/version.$k -X k8s.io/component-base/version.$k"
    done
    (cd "$mod" && CGO_ENABLED=0 go build -tags providerless -trimpath -ldflags "-s -w $ldflags" \
        -o "$1/" k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubeadm \
        k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kube-scheduler)
    rm -rf "$mod"
}

b_containerd() {
    local m=github.com/containerd/containerd/v2
    CGO_ENABLED=0 GOBIN="$1" go install -trimpath -tags "no_btrfs no_devmapper no_zfs" \
        -ldflags "-s -X $m/version.Version=$CONTAINERD_VERSION" \
        "$m/cmd/containerd@$CONTAINERD_VERSION" "$m/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
        "$m/cmd/ctr@$CONTAINERD_VERSION"
}

b_runc() {  # cgo + libseccomp (Debian's libseccomp-dev), statically linked like upstream
    if ! command -v gcc >/dev/null || ! pkg-config --exists libseccomp; then
        die "runc needs gcc and libseccomp-dev (apt-get install gcc libseccomp-dev pkg-config)"
    fi
    CGO_ENABLED=1 GOBIN="$1" go install -trimpath -tags "seccomp urfave_cli_no_docs" \
        -ldflags "-s -X main.version=${RUNC_VERSION#v} -extldflags -static" \
        "github.com/opencontainers/runc@$RUNC_VERSION"
}

b_crictl() {
    CGO_ENABLED=0 GOBIN="$1" go install -trimpath -ldflags=-s \
        "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
}

b_cni() {
    local m=github.com/containernetworking/plugins p pkgs=()
    for p in main/loopback main/bridge main/ptp ipam/host-local meta/portmap; do
        pkgs+=("$m/plugins/$p@$CNI_PLUGINS_VERSION")
    done
    CGO_ENABLED=0 GOBIN="$1" go install -trimpath -ldflags=-s "${pkgs[@]}"
}

b_etcd() {  # etcd's modules carry relative replace directives: wrap etcdmain in our own main
    local mod="$1/.mod"
    gomod "$mod" go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
    cat >"$mod/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    (cd "$mod" && go mod tidy && CGO_ENABLED=0 go build -trimpath -ldflags=-s -o "$1/etcd" .)
    rm -rf "$mod"
}

b_flannel() {  # flannel's main with the host-gw and vxlan backends only: the cloud backends
    # (tencentvpc) need modules the Go proxy does not serve, and we use neither.
    local mod="$1/.mod" m=github.com/flannel-io/flannel
    gomod "$mod" "$m" "$FLANNEL_VERSION"
    grep -v -E '"'"$m"'/pkg/backend/(tencentvpc|ipsec|wireguard|udp|ipip|alloc|extension)"' \
        "$(go env GOMODCACHE)/$m@$FLANNEL_VERSION/main.go" >"$mod/main.go"
    (cd "$mod" && go mod tidy && CGO_ENABLED=0 go build -trimpath \
        -ldflags "-s -X $m/pkg/version.Version=$FLANNEL_VERSION" -o "$1/flanneld" .)
    rm -rf "$mod"
}

b_cniconf() {  # ours: writes the node's CNI config from flannel's lease (hack/kind/cniconf)
    (cd "$here/cniconf" && CGO_ENABLED=0 go build -trimpath -ldflags=-s -o "$1/cniconf" .)
}

b_pause() {  # Kubernetes' pause.c, from the module cache hack/kube already filled
    local src
    src="$(go env GOMODCACHE)/k8s.io/kubernetes@$KUBE_VERSION/build/pause/linux/pause.c"
    [[ -f "$src" ]] || (cd "$here/../kube" && go mod download k8s.io/kubernetes)
    gcc -Os -static -DVERSION="bridgeport-$KUBE_VERSION" -o "$1/pause" "$src" && strip "$1/pause"
}

declare -A version=([kind]=$KIND_VERSION [kube]=$KUBE_VERSION [containerd]=$CONTAINERD_VERSION
    [runc]=$RUNC_VERSION [crictl]=$CRICTL_VERSION [cni]=$CNI_PLUGINS_VERSION [etcd]=$ETCD_VERSION
    [flannel]=$FLANNEL_VERSION [cniconf]=$(cat "$here"/cniconf/*.go | sha256sum | cut -c1-12)
    [pause]=$KUBE_VERSION)
parts=("$@")
((${#parts[@]})) || parts=(kind pause cni cniconf crictl runc containerd etcd flannel kube)
for p in "${parts[@]}"; do
    [[ -n "${version[$p]:-}" ]] || die "unknown part '$p' (one of: ${!version[*]})"
    build "$p" "${version[$p]}" "b_$p"
done
echo "$bin_root"
