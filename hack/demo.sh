#!/usr/bin/env bash
# The Kubernetes demo, on one machine, as root: a real control plane (built from source on the
# first run, ~6 minutes on 2 cores, then cached), the CRDs, the controller, one agent in a
# demo node namespace, a container on the agent's bridge, the example resources, a curl from
# a client namespace through the published port, and `kubectl get pp,bn,nodestates`.
# Everything runs in namespaces created here and is removed at the end (KEEP=1 keeps it up).
set -euo pipefail
cd "$(dirname "$0")/.."
export BRIDGEPORT_RUN=${BRIDGEPORT_RUN:-/tmp/bridgeport-demo-cluster}
export BRIDGEPORT_APISERVER_PORT=${BRIDGEPORT_APISERVER_PORT:-16443}
export BRIDGEPORT_APISERVER_BIND=127.0.0.1
# shellcheck source=hack/demo-lib.sh
source hack/demo-lib.sh
cleanup() {
  if [[ ${KEEP:-0} == 1 ]]; then
    say "KEEP=1: leaving everything running (namespaces $NODE $CLIENT $BOX, cluster in $BRIDGEPORT_RUN)"
    return
  fi
  stop_demo
  bash hack/kube/cluster.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT

say "building Kubernetes (cached after the first run) and starting a local control plane"
kube_bin=$(bash hack/kube/build.sh)
if ! bash hack/kube/cluster.sh up; then  # a loaded machine can lose a component at start
  say "the control plane did not come up; retrying once"
  bash hack/kube/cluster.sh down >/dev/null 2>&1 || true
  bash hack/kube/cluster.sh up
fi
eval "$(bash hack/kube/cluster.sh env)"
export KUBECONFIG
kubectl() { "$kube_bin/kubectl" "$@"; }

say "installing the CRDs (kubectl apply --server-side -f crds/)"
kubectl apply --server-side -f crds/ >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null

say "starting the controller"
"$PY" -m bridgeport --log-format json controller --no-peering --health-port 0 \
  --metrics-port 0 >"$work/controller.log" 2>&1 &
pids+=($!)

say "creating the demo node (namespace $NODE, 192.0.2.1) and a client (192.0.2.2)"
make_namespaces
kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Node
metadata: {name: demo-node, labels: {kubernetes.io/hostname: demo-node}}
YAML
# The API server listens on this machine's 127.0.0.1; the node namespace sees the same port on
# its own 127.0.0.1 through a unix socket (sockets are shared by every network namespace).
socat "UNIX-LISTEN:$work/api.sock,fork" "TCP:127.0.0.1:$BRIDGEPORT_APISERVER_PORT" &
pids+=($!)
sleep 0.2
ip netns exec "$NODE" socat "TCP-LISTEN:$BRIDGEPORT_APISERVER_PORT,bind=127.0.0.1,fork,reuseaddr" \
  "UNIX-CONNECT:$work/api.sock" &
pids+=($!)

say "starting the agent in the node namespace (bridgeport agent --source kube)"
NODE_NAME=demo-node ip netns exec "$NODE" "$PY" -m bridgeport --log-format json agent \
  --health-port 0 --metrics-port 0 >"$work/agent.log" 2>&1 &
pids+=($!)

say "kubectl apply -f examples/"
kubectl apply -f examples/
wait_for_bridge bp-demo "$work/agent.log"

say "a container (192.168.99.2) on bridge bp-demo serving HTTP on :80"
attach_container

say "curl http://192.0.2.1:8080/index.html from the client namespace"
curl_published_port

say "kubectl get pp,bn,nodestates"
for _ in $(seq 50); do
  [[ $(kubectl get pp web -o jsonpath='{.status.ready}' 2>/dev/null) == 1/1 ]] && break
  sleep 0.2
done
kubectl get pp,bn,nodestates
say "demo done"
