# shellcheck shell=bash disable=SC2034  # sourced: the variables are used by the sourcing script
# Versions of everything the offline kind path builds (sourced by hack/kind/*.sh).
# Every artifact is cached under $BRIDGEPORT_CACHE/kind/ keyed by these versions: bump one and
# only that part rebuilds.
KIND_VERSION=v0.33.0                # sigs.k8s.io/kind (the CLI and its base-image files)
KUBE_VERSION=$(sed -n -E 's/^require k8s\.io\/kubernetes (v[0-9.]+)$/\1/p' \
    "$(dirname "${BASH_SOURCE[0]}")/../kube/go.mod")   # one Kubernetes for the whole project
CONTAINERD_VERSION=v2.3.4           # github.com/containerd/containerd/v2
RUNC_VERSION=v1.4.3                 # github.com/opencontainers/runc (cgo + libseccomp)
CRICTL_VERSION=v1.36.0              # sigs.k8s.io/cri-tools
CNI_PLUGINS_VERSION=v1.9.1          # github.com/containernetworking/plugins
ETCD_VERSION=v3.6.8                 # go.etcd.io/etcd/server/v3 (etcdmain)
FLANNEL_VERSION=v0.28.10            # github.com/flannel-io/flannel (the CNI: host-gw, dual stack)
DEBIAN_SUITE=bookworm               # systemd 252: boots on cgroup v1 (trixie's 257 does not)
