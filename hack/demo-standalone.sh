#!/usr/bin/env bash
# Standalone demo (no cluster): a node netns runs `bridgeport agent --source dir:examples`,
# a container netns on the agent's bridge serves HTTP, a client netns curls the published
# port. Everything lives in namespaces created here and is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
id=$$
NODE=bpdemo-node-$id CLIENT=bpdemo-client-$id BOX=bpdemo-box-$id
work=$(mktemp -d /tmp/bridgeport-demo.XXXXXX)
say() { printf '\n\033[1m>>> %s\033[0m\n' "$*"; }
cleanup() {
  [[ -n ${agent_pid:-} ]] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true
  for ns in "$BOX" "$CLIENT" "$NODE"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

say "creating namespaces: node $NODE (192.0.2.1), client $CLIENT (192.0.2.2)"
for ns in "$NODE" "$CLIENT" "$BOX"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip link add bpd-n$id type veth peer name bpd-c$id
ip link set bpd-n$id netns "$NODE" name eth0
ip link set bpd-c$id netns "$CLIENT" name eth0
ip -n "$NODE" addr add 192.0.2.1/24 dev eth0 && ip -n "$NODE" link set eth0 up
ip -n "$CLIENT" addr add 192.0.2.2/24 dev eth0 && ip -n "$CLIENT" link set eth0 up
ip netns exec "$NODE" sysctl -qw net.ipv4.ip_forward=1

say "starting the agent on examples/ (standalone mode)"
mkdir -p "$work/resources" && cp examples/*.yaml "$work/resources/"
ip netns exec "$NODE" "$PY" -m bridgeport --log-format console agent \
  --source "dir:$work/resources" --node-name demo-node --state-file "$work/state.json" \
  >"$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 50); do ip -n "$NODE" link show bp-demo >/dev/null 2>&1 && break; sleep 0.1; done
ip -n "$NODE" link show bp-demo >/dev/null || { cat "$work/agent.log"; exit 1; }

say "attaching a container (192.168.99.2) to bridge bp-demo and serving HTTP on :80"
ip link add bpd-b$id type veth peer name bpd-p$id
ip link set bpd-b$id netns "$BOX" name eth0
ip link set bpd-p$id netns "$NODE"
ip -n "$NODE" link set bpd-p$id master bp-demo up
ip -n "$BOX" addr add 192.168.99.2/24 dev eth0 && ip -n "$BOX" link set eth0 up
ip -n "$BOX" route add default via 192.168.99.1
echo "hello from the container behind bridgeport" >"$work/index.html"
ip netns exec "$BOX" "$PY" -m http.server 80 --bind 0.0.0.0 --directory "$work" \
  >/dev/null 2>&1 &

say "curl http://192.0.2.1:8080/index.html from the client (published port -> container:80)"
for _ in $(seq 50); do
  ip netns exec "$CLIENT" curl -fs --max-time 1 http://192.0.2.1:8080/index.html >/dev/null && break
  sleep 0.2
done
ip netns exec "$CLIENT" curl -fsS --max-time 2 http://192.0.2.1:8080/index.html

say "state file written by the agent ($work/state.json)"
"$PY" - "$work/state.json" <<'PY'
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
