#!/usr/bin/env bash
# Build every image the offline kind cluster needs into the Docker daemon at $DOCKER_HOST
# (hack/kind/dockerd.sh's), from Debian (mmdebstrap) and the binaries of hack/kind/build-bin.sh.
# No image registry is contacted. Prints the node image's tag (last line of stdout).
#
#   debian:bookworm-slim                  mmdebstrap minbase (operator/Dockerfile's base)
#   bridgeport-kind/netbase:<suite>       minbase + iptables/nftables/conntrack (kube-proxy, flannel)
#   registry.k8s.io/kube-{apiserver,controller-manager,scheduler}:<kube>, etcd, pause: FROM scratch
#   registry.k8s.io/kube-proxy:<kube>, bridgeport-kind/flannel:<flannel>: FROM netbase
#   bridgeport-kind/node-base:<key>       kind's base image, built the way its Dockerfile does it
#                                         (its files/ from the kind module), on bookworm
#   bridgeport-kind/node:<key>            node-base + kubeadm/kubelet/kubectl + the images above,
#                                         imported into the node's containerd at boot
#
# Each tag carries the versions it was built from; an existing tag is reused (the daemon's
# data-root is the cache), so a warm run only checks tags.
# shellcheck disable=SC2016  # the mmdebstrap hooks are expanded by mmdebstrap ("$1": the root)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/kind/versions.sh
source "$here/versions.sh"
cache="${BRIDGEPORT_CACHE:-$HOME/.cache/bridgeport}"
bins="$cache/kind/bin"
kube_bin="$("$here/../kube/build.sh" 2>/dev/null | tail -1)"
export DOCKER_BUILDKIT=0  # the classic builder: nothing fetched, no buildx plugin needed

log() { printf '[kind/images] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
have() { docker image inspect "$1" >/dev/null 2>&1; }
timed() {  # timed <what> <cmd...>
    local start=$SECONDS
    log "$1..."
    "${@:2}" || die "$1 failed"
    log "$1: done in $((SECONDS - start)) s"
}
bin() { local d="$bins/$1-$2"; [[ -d "$d" ]] || die "$d missing (run hack/kind/build-bin.sh)"; echo "$d"; }

work="$(mktemp -d /tmp/bridgeport-kind-images.XXXXXX)"
trap 'rm -rf "$work"' EXIT

mmdebstrap_import() {  # mmdebstrap_import <tag> <mmdebstrap args...>
    local tag=$1
    shift
    mmdebstrap --quiet --variant=minbase --format=tar --skip=output/dev \
        --aptopt='Acquire::Retries "3"' \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
        "$@" "$DEBIAN_SUITE" - | docker import - "$tag" >/dev/null
}

# Debian slim: operator/Dockerfile's DEBIAN_IMAGE, so the Dockerfile builds unchanged.
slim=debian:$DEBIAN_SUITE-slim
have "$slim" || timed "$slim (mmdebstrap minbase)" mmdebstrap_import "$slim"

netbase=bridgeport-kind/netbase:$DEBIAN_SUITE
have "$netbase" || timed "$netbase (minbase + iptables, nftables, conntrack)" \
    mmdebstrap_import "$netbase" --include=iptables,nftables,conntrack,iproute2,ca-certificates

image_from() {  # image_from <tag> <base> <file>...: FROM base + files in /usr/local/bin
    local tag=$1 base=$2 ctx="$work/ctx-${1//[\/:]/_}"
    shift 2
    have "$tag" && return
    mkdir -p "$ctx"
    cp "$@" "$ctx/"
    {
        echo "FROM $base"
        echo "COPY . /usr/local/bin/"
    } >"$ctx/Dockerfile"
    timed "$tag" docker build -q -t "$tag" "$ctx" >/dev/null
}

kb="$(bin kube "$KUBE_VERSION")"
# The tags kubeadm $KUBE_VERSION asks for (etcd's and pause's versions are kubeadm's choice).
mapfile -t wanted < <("$kb/kubeadm" config images list --kubernetes-version "$KUBE_VERSION" 2>/dev/null)
tag_of() { printf '%s\n' "${wanted[@]}" | grep "/$1:" || die "kubeadm lists no $1 image"; }
image_from "$(tag_of kube-apiserver)" scratch "$kube_bin/kube-apiserver"
image_from "$(tag_of kube-controller-manager)" scratch "$kube_bin/kube-controller-manager"
image_from "$(tag_of kube-scheduler)" scratch "$kb/kube-scheduler"
image_from "$(tag_of kube-proxy)" "$netbase" "$kb/kube-proxy"
image_from "$(tag_of etcd)" scratch "$(bin etcd "$ETCD_VERSION")/etcd"
pause_dir="$(bin pause "$KUBE_VERSION")"
# containerd's sandbox image (kind's config.toml) and kubeadm's may differ: tag both.
sandbox=$(sed -n 's/^ *sandbox_image = "\(.*\)"/\1/p' "$(bin kind "$KIND_VERSION")/base-files/etc/containerd/config.toml")
for t in "$(tag_of pause)" "$sandbox"; do
    have "$t" && continue
    mkdir -p "$work/pause"
    cp "$pause_dir/pause" "$work/pause/"
    printf 'FROM scratch\nCOPY pause /pause\nENTRYPOINT ["/pause"]\n' >"$work/pause/Dockerfile"
    timed "$t" docker build -q -t "$t" "$work/pause" >/dev/null
done
flannel=bridgeport-kind/flannel:$FLANNEL_VERSION-$(basename "$(ls -d "$bins"/cniconf-*)" | cut -d- -f2)
image_from "$flannel" "$netbase" "$(bin flannel "$FLANNEL_VERSION")/flanneld" "$bins"/cniconf-*/cniconf

# kind's base image, as images/base/Dockerfile builds it (that Dockerfile needs BuildKit's
# COPY --chmod, git clones and debian:trixie, whose systemd 257 does not boot on cgroup v1).
node_base=bridgeport-kind/node-base:$KIND_VERSION-$DEBIAN_SUITE-$CONTAINERD_VERSION-$RUNC_VERSION-$CRICTL_VERSION-$CNI_PLUGINS_VERSION
if ! have "$node_base"; then
    files="$(bin kind "$KIND_VERSION")/base-files"
    cd_="$(bin containerd "$CONTAINERD_VERSION")"
    # The base spec kind's containerd uses for every container (as in kind's Dockerfile).
    "$cd_/ctr" oci spec | python3 -c '
import json, sys
s = json.load(sys.stdin)
s.setdefault("hooks", {}).setdefault("createContainer", []).append({"path": "/kind/bin/mount-product-files.sh"})
s["process"].pop("rlimits", None)
json.dump(s, sys.stdout, indent=2)' >"$work/cri-base.json"
    cat >"$work/bp-import-images.service" <<'UNIT'
[Unit]
Description=Import the node image's container images into containerd (offline node image)
After=containerd.service
Requires=containerd.service
Before=kubelet.service
ConditionDirectoryNotEmpty=/kind/images

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'for i in /kind/images/*.tar; do ctr -n k8s.io images import --all-platforms --digests --snapshotter=overlayfs "$i" || exit 1; done'

[Install]
WantedBy=multi-user.target kubelet.service
UNIT
    timed "$node_base (mmdebstrap $DEBIAN_SUITE + kind $KIND_VERSION base files)" bash -c '
        set -euo pipefail
        mmdebstrap --quiet --variant=minbase --format=tar --skip=output/dev \
          --include=systemd,systemd-sysv,dbus,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,e2fsprogs,bash,ca-certificates,curl,jq,procps,python3 \
          --customize-hook="cp -r '"$files"'/. \"\$1\"/" \
          --customize-hook="chmod 0755 \"\$1\"/usr/local/bin/* \"\$1\"/kind \"\$1\"/kind/bin \"\$1\"/kind/bin/*" \
          --customize-hook="install -m 0755 '"$cd_"'/containerd '"$cd_"'/ctr '"$cd_"'/containerd-shim-runc-v2 '"$(bin crictl "$CRICTL_VERSION")"'/crictl \"\$1\"/usr/local/bin/" \
          --customize-hook="install -m 0755 '"$(bin runc "$RUNC_VERSION")"'/runc \"\$1\"/usr/local/sbin/runc" \
          --customize-hook="mkdir -p \"\$1\"/opt/cni/bin \"\$1\"/etc/kubernetes/manifests \"\$1\"/kind/images && install -m 0755 '"$(bin cni "$CNI_PLUGINS_VERSION")"'/* \"\$1\"/opt/cni/bin/" \
          --customize-hook="install -m 0644 '"$work"'/cri-base.json \"\$1\"/etc/containerd/cri-base.json" \
          --customize-hook="install -m 0644 '"$work"'/bp-import-images.service \"\$1\"/etc/systemd/system/" \
          --customize-hook="rm -f \"\$1\"/etc/systemd/system/containerd-fuse-overlayfs.service" \
          --customize-hook="chroot \"\$1\" sh -c \"find /lib/systemd/system/sysinit.target.wants/ -name systemd-tmpfiles-setup.service -delete; rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/*; echo ReadKMsg=no >>/etc/systemd/journald.conf; ln -sf /usr/lib/systemd/systemd /sbin/init; systemctl enable kubelet.service containerd.service undo-mount-hacks.service bp-import-images.service; systemctl mask systemd-binfmt.service\"" \
          --customize-hook="rm -rf \"\$1\"/var/lib/apt/lists/* \"\$1\"/usr/share/doc \"\$1\"/usr/share/man" \
          "'"$DEBIAN_SUITE"'" - |
        docker import --change "ENV container=docker" \
          --change "ENTRYPOINT [\"/usr/local/bin/entrypoint\", \"/sbin/init\"]" - "'"$node_base"'" >/dev/null'
fi

# The node image: what `kind build node-image` adds (Kubernetes binaries, component images).
bp_key=$(cat "$here/images.sh" "$here/versions.sh" | sha256sum | cut -c1-8)
node=bridgeport-kind/node:$KUBE_VERSION-$bp_key
if ! have "$node"; then
    ctx="$work/node"
    mkdir -p "$ctx/bin" "$ctx/images"
    cp "$kb/kubeadm" "$kb/kubelet" "$kube_bin/kubectl" "$ctx/bin/"
    imgs=("${wanted[@]}")
    imgs=("${imgs[@]/*coredns*/}")  # no CoreDNS: nothing in the tests needs cluster DNS
    # shellcheck disable=SC2046  # one image per word
    timed "saving the component images" docker save -o "$ctx/images/components.tar" \
        $(printf '%s\n' "${imgs[@]}" "$sandbox" "$flannel" | sort -u | grep .)
    echo "$KUBE_VERSION" >"$ctx/version"
    # Forwarding on from boot, as kubeadm's preflight demands of every node (kind skips it;
    # its kindnetd turns forwarding on, our flannel does not). Without it the agent serves
    # published ports through its userland proxy, as Docker does on such a host.
    mkdir -p "$ctx/sysctl.d"
    printf 'net.ipv4.ip_forward=1\nnet.ipv6.conf.all.forwarding=1\n' \
        >"$ctx/sysctl.d/99-bridgeport-kind-forwarding.conf"
    cat >"$ctx/Dockerfile" <<DF
FROM $node_base
# systemd exits on SIGRTMIN+3 (docker import cannot set it)
STOPSIGNAL SIGRTMIN+3
COPY sysctl.d/ /etc/sysctl.d/
COPY bin/ /usr/bin/
COPY images/ /kind/images/
COPY version /kind/version
DF
    timed "$node" docker build -q -t "$node" "$ctx" >/dev/null
fi
echo "flannel=$flannel" >"$cache/kind/images.env"
echo "$node"
