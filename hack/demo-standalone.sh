#!/usr/bin/env bash
# Standalone demo (no cluster): a node netns runs `bridgeport agent --source dir:examples`,
# a container netns on the agent's bridge serves HTTP, a client netns curls the published
# port. Everything lives in namespaces created here and is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=hack/demo-lib.sh
source hack/demo-lib.sh
trap stop_demo EXIT

say "creating namespaces: node $NODE (192.0.2.1), client $CLIENT (192.0.2.2)"
make_namespaces

say "starting the agent on examples/ (standalone mode)"
mkdir -p "$work/resources" && cp examples/*.yaml "$work/resources/"
ip netns exec "$NODE" "$PY" -m bridgeport --log-format console agent \
  --source "dir:$work/resources" --node-name demo-node --state-file "$work/state.json" \
  >"$work/agent.log" 2>&1 &
pids+=($!)
wait_for_bridge bp-demo "$work/agent.log"

say "attaching a container (192.168.99.2) to bridge bp-demo and serving HTTP on :80"
attach_container

say "curl http://192.0.2.1:8080/index.html from the client (published port -> container:80)"
curl_published_port

say "every outcome the agent reports (bridgeport state $work/state.json)"
"$PY" -m bridgeport state "$work/state.json" >"$work/state-all.json"
"$PY" - "$work/state-all.json" <<'PY'
import json, sys
state = json.load(open(sys.argv[1]))
for r in state["resources"]:
    name = f"{r['namespace']}/{r['name']}" if r["namespace"] else r["name"]
    print(f"  {r['kind']:16} {name:18} {r['state']:9} {r['message']}")
print(f"  table digest {state['tableDigest']}, last sync {state['lastSync']}")
PY

say "the wildcard DNAT map the agent programmed (nft list map ip bridgeport pub_any)"
ip netns exec "$NODE" nft list map ip bridgeport pub_any
say "agent log (last lines)"
tail -n 5 "$work/agent.log"
say "demo done; removing the namespaces"
