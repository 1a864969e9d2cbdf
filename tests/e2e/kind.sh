#!/usr/bin/env bash
# End-to-end tests on a kind cluster (for machines with Docker; CI without Docker runs the same
# tests against the local control plane instead, see hack/kube/).
#
#   tests/e2e/kind.sh            create the cluster, build + load the image, install, test
#   tests/e2e/kind.sh down       delete the cluster
#   KEEP_CLUSTER=1 tests/e2e/kind.sh   keep a cluster this run created (a reused one is kept)
#
# Steps: kind create cluster (kind-config.yaml: 1 control plane, 2 workers) -> docker build the
# image (operator/Dockerfile) -> kind load docker-image -> kubectl apply --server-side -f crds/
# -> helm install charts/bridgeport with that image -> pytest tests/kube/test_e2e.py.
#
# The tests get the cluster through two environment variables:
#   BRIDGEPORT_E2E_KUBECONFIG   the kind cluster's kubeconfig (instead of the local control
#                               plane fixture)
#   BRIDGEPORT_E2E_NODE_EXEC    a command prefix that runs a command on a node, with "{node}"
#                               replaced by the node name: "docker exec {node}" (kind nodes are
#                               containers named after their Kubernetes nodes)
# tests/kube/world.py must honour them (its kind_world does): with BRIDGEPORT_E2E_KUBECONFIG set,
# it uses the existing Nodes and the agents and controller the chart deployed (no local node
# netns, no locally started agent or controller) and runs node-side commands (nft, ip, the
# test servers in "container" netns) through BRIDGEPORT_E2E_NODE_EXEC.
#
# Needs: docker, kind, kubectl, helm (hack/helm.sh builds one), the repo's .venv (make setup).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
repo=$PWD

cluster="${KIND_CLUSTER_NAME:-bridgeport}"
image="${BRIDGEPORT_IMAGE:-bridgeport:dev}"
namespace="${BRIDGEPORT_NAMESPACE:-bridgeport}"
release="${BRIDGEPORT_RELEASE:-bridgeport}"
kubeconfig="${BRIDGEPORT_E2E_KUBECONFIG:-$repo/.cache/kind-$cluster.kubeconfig}"
python="${PYTHON:-$repo/.venv/bin/python}"

log() { printf '\033[1m[kind-e2e] %s\033[0m\n' "$*" >&2; }
need() {
    local cmd
    for cmd in "$@"; do
        command -v "$cmd" >/dev/null 2>&1 || { log "'$cmd' is required"; exit 1; }
    done
}

if [[ "${1:-}" == down ]]; then
    need kind
    kind delete cluster --name "$cluster"
    rm -f "$kubeconfig"
    exit 0
fi

need docker kind kubectl
helm="$("$repo/hack/helm.sh")"
[[ -x "$python" ]] || { log "$python not found: run 'make setup' first"; exit 1; }

created=0
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    if ((created)) && [[ "${KEEP_CLUSTER:-0}" != 1 ]]; then
        log "deleting kind cluster $cluster (KEEP_CLUSTER=1 keeps it)"
        kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
        rm -f "$kubeconfig"
    fi
}
trap cleanup EXIT

mkdir -p "$(dirname "$kubeconfig")"
if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
    log "reusing kind cluster $cluster"
    kind export kubeconfig --name "$cluster" --kubeconfig "$kubeconfig"
else
    log "creating kind cluster $cluster (kind-config.yaml)"
    created=1
    kind create cluster --name "$cluster" --config "$repo/kind-config.yaml" \
        --kubeconfig "$kubeconfig" --wait 120s
fi
export KUBECONFIG="$kubeconfig"

log "building $image"
docker build -f "$repo/operator/Dockerfile" -t "$image" \
    --build-arg REVISION="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    "$repo"
log "loading $image into the kind nodes"
kind load docker-image "$image" --name "$cluster"

log "applying CRDs (server-side: the one copy in crds/, also what upgrades use)"
kubectl apply --server-side --force-conflicts -f "$repo/crds/"
kubectl wait --for condition=established --timeout=60s -f "$repo/crds/"

log "installing the chart into namespace $namespace"
kubectl create namespace "$namespace" --dry-run=client -o yaml | kubectl apply -f -
kubectl label namespace "$namespace" --overwrite pod-security.kubernetes.io/enforce=privileged
"$helm" upgrade --install "$release" "$repo/charts/bridgeport" \
    --namespace "$namespace" --skip-crds --wait --timeout 5m \
    --set image.repository="${image%:*}" --set image.tag="${image##*:}" \
    --set image.pullPolicy=IfNotPresent \
    --set log.level=DEBUG
kubectl -n "$namespace" rollout status "daemonset/$release-agent" --timeout=180s
kubectl -n "$namespace" rollout status "deployment/$release-controller" --timeout=180s

log "preparing the workers for the tests: python3 and tests/tools (servers and clients)"
for node in $(kind get nodes --name "$cluster"); do
    docker exec "$node" sh -c 'command -v python3 >/dev/null ||
        (apt-get update -qq && apt-get install -y -qq python3 >/dev/null)'
    docker exec "$node" rm -rf /bridgeport-tools
    docker cp "$repo/tests/tools" "$node:/bridgeport-tools"
done

log "running tests/kube/test_e2e.py against the kind cluster"
export BRIDGEPORT_E2E_KUBECONFIG="$kubeconfig"
export BRIDGEPORT_E2E_NODE_EXEC="docker exec {node}"
status=0
"$python" -m pytest -q "$repo/tests/kube/test_e2e.py" "$@" || status=$?
if ((status != 0)); then
    log "tests failed; agent and controller logs follow"
    kubectl -n "$namespace" logs "daemonset/$release-agent" --all-containers --tail=100 \
        --prefix || true
    kubectl -n "$namespace" logs "deployment/$release-controller" --tail=100 || true
fi
exit "$status"
