# shellcheck shell=bash disable=SC2154
# Shared by hack/demo.sh and hack/demo-standalone.sh (sourced from the repository root, not
# run): names unique to this run, a scratch dir, and the plumbing both demos need.
PY=${PY:-$PWD/.venv/bin/python}
id=$$
NODE=bpdemo-node-$id CLIENT=bpdemo-client-$id BOX=bpdemo-box-$id
work=$(mktemp -d /tmp/bridgeport-demo.XXXXXX)
pids=()

say() { printf '\n\033[1m>>> %s\033[0m\n' "$*"; }

# node (192.0.2.1, forwarding on) --veth-- client (192.0.2.2); the container netns is created
# too and attached later, once the agent has made the bridge.
make_namespaces() {
  for ns in "$NODE" "$CLIENT" "$BOX"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
  ip link add "bpd-n$id" type veth peer name "bpd-c$id"
  ip link set "bpd-n$id" netns "$NODE" name eth0
  ip link set "bpd-c$id" netns "$CLIENT" name eth0
  ip -n "$NODE" addr add 192.0.2.1/24 dev eth0 && ip -n "$NODE" link set eth0 up
  ip -n "$CLIENT" addr add 192.0.2.2/24 dev eth0 && ip -n "$CLIENT" link set eth0 up
  ip netns exec "$NODE" sysctl -qw net.ipv4.ip_forward=1
}

# Stop what the demo started and remove its namespaces and scratch dir.
stop_demo() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for ns in "$BOX" "$CLIENT" "$NODE"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$work"
}

wait_for_bridge() { # bridge log
  for _ in $(seq 100); do ip -n "$NODE" link show "$1" >/dev/null 2>&1 && return; sleep 0.1; done
  tail -20 "$2"
  return 1
}

# The container: 192.168.99.2 on bridge bp-demo, serving $work/index.html on :80.
attach_container() {
  ip link add "bpd-b$id" type veth peer name "bpd-p$id"
  ip link set "bpd-b$id" netns "$BOX" name eth0
  ip link set "bpd-p$id" netns "$NODE"
  ip -n "$NODE" link set "bpd-p$id" master bp-demo up
  ip -n "$BOX" addr add 192.168.99.2/24 dev eth0 && ip -n "$BOX" link set eth0 up
  ip -n "$BOX" route add default via 192.168.99.1
  echo "hello from a container behind bridgeport" >"$work/index.html"
  ip netns exec "$BOX" "$PY" -m http.server 80 --bind 0.0.0.0 --directory "$work" \
    >/dev/null 2>&1 &
  pids+=($!)
}

curl_published_port() {
  for _ in $(seq 50); do
    ip netns exec "$CLIENT" curl -fs --max-time 1 http://192.0.2.1:8080/index.html >/dev/null \
      && break
    sleep 0.2
  done
  ip netns exec "$CLIENT" curl -fsS --max-time 2 http://192.0.2.1:8080/index.html
}
