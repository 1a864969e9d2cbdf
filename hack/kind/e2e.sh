#!/usr/bin/env bash
# `make e2e-kind`: the kind end-to-end suite on a fresh machine with no image registry reachable.
#
#   1. packages from Debian (docker.io, mmdebstrap, slirp4netns, gcc + libseccomp-dev), installed
#      without starting (or leaving enabled) the system's Docker;
#   2. kind, the node's Kubernetes, containerd, runc, crictl, CNI plugins, etcd and flannel from
#      the Go module proxy (hack/kind/build-bin.sh), kubectl/apiserver/controller-manager from
#      hack/kube, helm from hack/helm.sh;
#   3. a Docker daemon this run owns, in its own network namespace (hack/kind/dockerd.sh);
#   4. the images (hack/kind/images.sh) and the bridgeport image from operator/Dockerfile, with
#      egress through slirp4netns; egress is then removed: the cluster never reaches outside;
#   5. tests/e2e/kind.sh in that namespace, with the node image, the CNI and the config patches
#      this machine needs (each detected, see quirk_patches);
#   6. teardown, always (trap): cluster, daemon, namespace. Built artifacts stay cached in
#      $BRIDGEPORT_CACHE/kind (default ~/.cache/bridgeport/kind), keyed by version.
#
# Env: BRIDGEPORT_CACHE; KEEP_CLUSTER=1 (leave the cluster and daemon running; remove them with
# `hack/kind/dockerd.sh down`); REUSE_CLUSTER=1 (reuse such a cluster; by default a cluster or
# daemon found at start is an interrupted run's leftover and is removed first); EXTRA_CA_CERTS_FILE (default: the CAs added under
# /usr/local/share/ca-certificates, e.g. a TLS-intercepting proxy's, given to pip in the build).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${BRIDGEPORT_CACHE:-$HOME/.cache/bridgeport}"
t0=$SECONDS
log() { printf '\033[1m[kind +%ds] %s\033[0m\n' "$((SECONDS - t0))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
step() {
    local what=$1 start=$SECONDS
    shift
    log "$what..."
    "$@" || die "failed: $what"
    log "$what: done in $((SECONDS - start)) s"
}

[[ $EUID == 0 ]] || die "run as root (network namespaces, a Docker daemon)"
# One run at a time per machine: the daemon's data-root (the image cache) is shared.
mkdir -p "$cache/kind"
exec 8>"$cache/kind/.run.lock"
if ! flock -n 8; then
    log "another kind run holds $cache/kind/.run.lock; waiting for it..."
    flock 8
fi

# shellcheck disable=SC2317  # invoked by the EXIT trap
teardown() {
    local rc=$?
    if [[ "${KEEP_CLUSTER:-0}" == 1 ]]; then
        log "KEEP_CLUSTER=1: cluster and daemon left running; 'hack/kind/dockerd.sh down' removes them"
    else
        log "teardown: cluster, Docker daemon, network namespace"
        "$here/dockerd.sh" down || log "WARNING: teardown incomplete (run hack/kind/dockerd.sh down)"
    fi
    log "total $((SECONDS - t0)) s, exit $rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# We hold the lock, so a daemon, namespace or cluster found now was left by a run that was
# killed before its teardown (its containers persist in the cached data-root). Reusing that
# cluster would test a stale image and state: remove it. REUSE_CLUSTER=1 keeps one that
# KEEP_CLUSTER=1 left on purpose.
if [[ "${REUSE_CLUSTER:-0}" != 1 ]]; then
    if [[ -e "/run/netns/${BRIDGEPORT_KIND_NETNS:-bridgeport-kind}" ]] \
        || compgen -G "$cache/kind/docker/containers/*" >/dev/null; then
        log "removing what an interrupted earlier run left (daemon, namespace, containers)"
        { "$here/dockerd.sh" up >/dev/null && "$here/dockerd.sh" down; } \
            || die "cannot remove an earlier run's leftovers (try hack/kind/dockerd.sh down)"
    fi
fi

step "Debian packages" "$here/install-deps.sh"
step "Go binaries (kind, Kubernetes node, containerd, runc, crictl, CNI, etcd, flannel)" \
    nice -n 10 "$here/build-bin.sh" >/dev/null
kube_bin="$(nice -n 10 "$repo/hack/kube/build.sh" | tail -1)"
nice -n 10 "$repo/hack/helm.sh" >/dev/null  # tests/e2e/kind.sh finds it there
# shellcheck source=hack/kind/versions.sh
source "$here/versions.sh"
kind_bin="$cache/kind/bin/kind-$KIND_VERSION"

export DOCKER_HOST
DOCKER_HOST="$("$here/dockerd.sh" up)"
step "egress for the image builds" "$here/dockerd.sh" egress
node_image="$(nice -n 10 "$here/images.sh" | tail -1)"
[[ -n "$node_image" ]] || die "no node image"
# shellcheck disable=SC1091
source "$cache/kind/images.env"  # flannel=<image>

ca_file="${EXTRA_CA_CERTS_FILE:-}"
if [[ -z "$ca_file" ]] && compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    ca_file="$cache/kind/extra-ca.pem"
    cat /usr/local/share/ca-certificates/*.crt >"$ca_file"
fi
build_args=(--build-arg REVISION="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)")
[[ -z "$ca_file" ]] || build_args+=(--build-arg EXTRA_CA_CERTS="$(cat "$ca_file")")
step "bridgeport image (operator/Dockerfile${ca_file:+, extra CA from $ca_file})" \
    env DOCKER_BUILDKIT=0 nice -n 10 docker build -q -f "$repo/operator/Dockerfile" \
    -t bridgeport:dev "${build_args[@]}" "$repo"
step "removing egress (nothing in the cluster reaches outside)" "$here/dockerd.sh" noegress

# kind-config.yaml plus what this cluster needs: our CNI instead of kindnet (not buildable from
# the Go proxy), no CoreDNS (nothing needs cluster DNS; no upstream queries), and each quirk
# this machine has.
work="$(mktemp -d /tmp/bridgeport-kind.XXXXXX)"
config="$work/kind-config.yaml"
patches=()
if [[ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ]]; then
    log "quirk: cgroup v1 -> kubelet failCgroupV1: false"
    patches+=(cgroupv1)
fi
if ! (echo -999 >/proc/self/oom_score_adj) 2>/dev/null; then
    log "quirk: cannot lower oom_score_adj -> containerd restrict_oom_score_adj = true"
    patches+=(oom)
fi
"$repo/.venv/bin/python" "$here/kind_config.py" "$repo/kind-config.yaml" "${patches[@]}" >"$config"
# shellcheck disable=SC2154  # flannel comes from images.env
sed "s|IMAGE|$flannel|" "$here/flannel.yaml" >"$work/flannel.yaml"

status=0
"$here/dockerd.sh" exec env PATH="$kind_bin:$kube_bin:$PATH" \
    KIND_NODE_IMAGE="$node_image" BRIDGEPORT_KIND_CONFIG="$config" \
    BRIDGEPORT_KIND_CNI_MANIFEST="$work/flannel.yaml" BRIDGEPORT_IMAGE_BUILT=1 \
    KEEP_CLUSTER="${KEEP_CLUSTER:-0}" "$repo/tests/e2e/kind.sh" "$@" || status=$?
rm -rf "$work"
((status == 0)) || die "the kind suite failed (exit $status)"
log "the kind suite passed"
