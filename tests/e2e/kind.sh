#!/usr/bin/env bash
# End-to-end tests on a kind cluster: the way users run bridgeport (image, Helm chart, kubelet).
#
#   tests/e2e/kind.sh [pytest args]   build + load the image, create the cluster, install, test
#   tests/e2e/kind.sh down            delete the cluster
#   KEEP_CLUSTER=1 tests/e2e/kind.sh  keep a cluster this run created (a reused one is kept)
#
# Two ways to run it; only where the node images come from differs:
#   - a laptop with Docker and internet: kind's official kindest/node image, kind's default CNI
#     (kindnet) and CoreDNS. Needs docker, kind, kubectl, .venv (make setup); helm is built by
#     hack/helm.sh.
#   - offline (CI, `make e2e-kind`): hack/kind/e2e.sh builds kind, a node image and every
#     component image from Debian and the Go module proxy, runs this script inside the network
#     namespace of a Docker daemon it owns, and sets:
#       KIND_NODE_IMAGE               the node image (kind create cluster --image)
#       BRIDGEPORT_KIND_CONFIG        kind-config.yaml plus this machine's patches
#       BRIDGEPORT_KIND_CNI_MANIFEST  a CNI to apply (the config disables kind's default CNI)
#       BRIDGEPORT_IMAGE_BUILT=1      the image is already built (it needed egress for pip)
#
# Steps: docker build operator/Dockerfile -> kind create cluster (kind-config.yaml: dual stack,
# 1 control plane + 2 workers) -> [CNI] -> kind load docker-image -> CRDs -> helm install
# charts/bridgeport -> helm test -> pytest tests/e2e/test_e2e.py tests/e2e/test_kind.py.
# The tests reach the cluster through BRIDGEPORT_E2E_KUBECONFIG and run node-side commands with
# BRIDGEPORT_E2E_NODE_EXEC="docker exec {node}" (kind nodes are containers named after their
# Nodes). The cluster is deleted on exit, whatever happened (trap), unless KEEP_CLUSTER=1.
#
# Env: EXTRA_CA_CERTS_FILE  a PEM file given to the image build for pip (TLS-intercepting proxy)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
repo=$PWD

cluster="${KIND_CLUSTER_NAME:-bridgeport}"
image="${BRIDGEPORT_IMAGE:-bridgeport:dev}"
namespace="${BRIDGEPORT_NAMESPACE:-bridgeport}"
release="${BRIDGEPORT_RELEASE:-bridgeport}"
config="${BRIDGEPORT_KIND_CONFIG:-$repo/kind-config.yaml}"
kubeconfig="${BRIDGEPORT_E2E_KUBECONFIG:-$repo/.cache/kind-$cluster.kubeconfig}"
python="${PYTHON:-$repo/.venv/bin/python}"
t0=$SECONDS

log() { printf '\033[1m[kind-e2e +%ds] %s\033[0m\n' "$((SECONDS - t0))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
need() {
    local cmd
    for cmd in "$@"; do
        command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' is required (see the header of $0)"
    done
}
# step <what> <cmd...>: a named step; a failure says which one.
step() {
    local what=$1
    shift
    log "$what"
    "$@" || die "failed: $what"
}

if [[ "${1:-}" == down ]]; then
    need kind
    kind delete cluster --name "$cluster"
    rm -f "$kubeconfig"
    exit 0
fi

need docker kind kubectl
helm="$("$repo/hack/helm.sh")"
[[ -x "$python" ]] || die "$python not found: run 'make setup' first"

created=0
status=1
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    if ((status != 0)) && [[ -s "$kubeconfig" ]]; then
        log "failed; cluster state, agent and controller logs follow"
        kubectl --kubeconfig "$kubeconfig" get nodes,pods -A -o wide 2>&1 | tail -40 || true
        kubectl --kubeconfig "$kubeconfig" -n "$namespace" logs "daemonset/$release-agent" \
            --all-containers --tail=60 --prefix 2>&1 || true
        kubectl --kubeconfig "$kubeconfig" -n "$namespace" logs \
            "deployment/$release-controller" --tail=60 2>&1 || true
    fi
    if ((created)) && [[ "${KEEP_CLUSTER:-0}" != 1 ]]; then
        log "deleting kind cluster $cluster (KEEP_CLUSTER=1 keeps it)"
        kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
        rm -f "$kubeconfig"
    fi
}
trap cleanup EXIT

if [[ "${BRIDGEPORT_IMAGE_BUILT:-0}" != 1 ]]; then
    build_args=(--build-arg REVISION="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)")
    if [[ -n "${EXTRA_CA_CERTS_FILE:-}" ]]; then
        build_args+=(--build-arg EXTRA_CA_CERTS="$(cat "$EXTRA_CA_CERTS_FILE")")
    fi
    step "building $image (operator/Dockerfile)" \
        docker build -q -f "$repo/operator/Dockerfile" -t "$image" "${build_args[@]}" "$repo"
fi

mkdir -p "$(dirname "$kubeconfig")"
if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
    log "reusing kind cluster $cluster"
    kind export kubeconfig --name "$cluster" --kubeconfig "$kubeconfig"
else
    created=1
    wait=(--wait 180s)
    # Nodes become Ready only once a CNI is installed: wait after applying it.
    [[ -z "${BRIDGEPORT_KIND_CNI_MANIFEST:-}" ]] || wait=()
    step "creating kind cluster $cluster ($(basename "$config")${KIND_NODE_IMAGE:+, $KIND_NODE_IMAGE})" \
        kind create cluster --name "$cluster" --config "$config" --kubeconfig "$kubeconfig" \
        ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} "${wait[@]}"
fi
export KUBECONFIG="$kubeconfig"
if [[ -n "${BRIDGEPORT_KIND_CNI_MANIFEST:-}" ]]; then
    step "installing the CNI ($(basename "$BRIDGEPORT_KIND_CNI_MANIFEST"))" \
        kubectl apply -f "$BRIDGEPORT_KIND_CNI_MANIFEST"
fi
step "waiting for every node to be Ready" kubectl wait --for condition=Ready nodes --all --timeout=240s

step "loading $image into the kind nodes" kind load docker-image "$image" --name "$cluster"

step "applying CRDs (server-side: the one copy in crds/, also what upgrades use)" \
    kubectl apply --server-side --force-conflicts -f "$repo/crds/"
kubectl wait --for condition=established --timeout=60s -f "$repo/crds/" >/dev/null

kubectl create namespace "$namespace" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace "$namespace" --overwrite pod-security.kubernetes.io/enforce=privileged \
    >/dev/null
step "installing charts/bridgeport into namespace $namespace" \
    "$helm" upgrade --install "$release" "$repo/charts/bridgeport" \
    --namespace "$namespace" --skip-crds --wait --timeout 5m \
    --set image.repository="${image%:*}" --set image.tag="${image##*:}" \
    --set image.pullPolicy=Never --set log.level=DEBUG
step "agent rollout" kubectl -n "$namespace" rollout status "daemonset/$release-agent" --timeout=180s
step "controller rollout" kubectl -n "$namespace" rollout status "deployment/$release-controller" --timeout=180s

log "preparing the nodes for the tests: python3 and tests/tools (servers and clients)"
for node in $(kind get nodes --name "$cluster"); do
    # kind's official images lack python3 (installed from the internet); ours include it.
    docker exec "$node" sh -c 'command -v python3 >/dev/null ||
        (apt-get update -qq && apt-get install -y -qq python3 >/dev/null)' ||
        die "python3 is missing on $node and cannot be installed"
    docker exec "$node" rm -rf /bridgeport-tools
    docker cp -q "$repo/tests/tools" "$node:/bridgeport-tools"
done

# As a user would right after installing (agents idle, before the load tests).
step "helm test $release (the chart's own test)" \
    "$helm" test "$release" --namespace "$namespace" --logs --timeout 3m

export BRIDGEPORT_E2E_KUBECONFIG="$kubeconfig"
export BRIDGEPORT_E2E_NODE_EXEC="docker exec {node}"
export BRIDGEPORT_E2E_NAMESPACE="$namespace" BRIDGEPORT_E2E_RELEASE="$release"
export BRIDGEPORT_E2E_CHART="$repo/charts/bridgeport" BRIDGEPORT_E2E_HELM="$helm"
export BRIDGEPORT_E2E_IMAGE="$image"
log "running tests/e2e/test_e2e.py and tests/e2e/test_kind.py against the kind cluster"
status=0
"$python" -m pytest -q -p no:cacheprovider "$repo/tests/e2e/test_e2e.py" \
    "$repo/tests/e2e/test_kind.py" "$@" || status=$?
log "done (status $status)"
exit "$status"
