#!/usr/bin/env bash
# A Docker daemon the kind tests own, in a network namespace of its own:
#
#   hack/kind/dockerd.sh up      start it (idempotent); prints the DOCKER_HOST to use
#   hack/kind/dockerd.sh egress  give the namespace outbound access (slirp4netns, for builds)
#   hack/kind/dockerd.sh noegress  take it away again (the cluster runs without it)
#   hack/kind/dockerd.sh down    stop it and remove the namespace and run dirs (idempotent)
#   hack/kind/dockerd.sh exec CMD...  run CMD in the namespace, with DOCKER_HOST set
#
# Why a namespace: dockerd with iptables on sets the FORWARD policy to DROP, adds chains and a
# MASQUERADE rule, creates bridges and turns ip_forward on, all in the namespace it runs in.
# In its own namespace none of that reaches the machine's firewall, interfaces or sysctls, and
# a developer's own Docker (if any) is untouched: own socket, pidfile, data-root, exec-root and
# config. kind's nodes, the API server's published port and every test client live in there;
# kubectl/helm/pytest run in it through `dockerd.sh exec`. The only way out is slirp4netns
# (user-mode networking, no firewall rules on the host), attached while images are built
# (apt, pip) and detached before the cluster starts, so no test packet leaves the machine.
#
# Machine quirks, each detected (not assumed):
#   - CAP_SYS_RESOURCE missing from the bounding set: Docker 20.10 hands privileged containers
#     (kind nodes) every capability the kernel knows and runc fails "unable to apply caps";
#     a runc wrapper (runc-nosysresource) drops that one capability from the spec.
#
# Env: BRIDGEPORT_CACHE (data-root lives in $BRIDGEPORT_CACHE/kind/docker: the image cache),
#      BRIDGEPORT_KIND_NETNS (default bridgeport-kind).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${BRIDGEPORT_CACHE:-$HOME/.cache/bridgeport}"
ns="${BRIDGEPORT_KIND_NETNS:-bridgeport-kind}"
run="/run/$ns"
data_root="$cache/kind/docker"
sock="$run/docker.sock"
export DOCKER_HOST="unix://$sock"

log() { printf '[kind/dockerd] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Address pools: 198.18.0.0/15 is reserved for benchmarking (RFC 2544), never routed, and used
# nowhere else by the tests; docker0 and kind's network take /24s from it.
pools='[{"base": "198.18.0.0/16", "size": 24}]'

missing_sys_resource() {  # CAP_SYS_RESOURCE is bit 24 of the bounding set
    local bnd
    bnd=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
    (( (0x$bnd >> 24 & 1) == 0 ))
}

up() {
    [[ $EUID == 0 ]] || die "needs root (a network namespace and a Docker daemon)"
    command -v dockerd >/dev/null || die "dockerd not found (hack/kind/install-deps.sh installs docker.io)"
    if [[ -S "$sock" ]] && docker version >/dev/null 2>&1; then
        log "dockerd already running in netns $ns ($DOCKER_HOST)"
        echo "$DOCKER_HOST"
        return
    fi
    mkdir -p "$run" "$data_root"
    ip netns add "$ns" 2>/dev/null || [[ -e /run/netns/$ns ]] || die "cannot create netns $ns"
    ip -n "$ns" link set lo up
    local runtime=""
    if missing_sys_resource; then
        log "quirk: no CAP_SYS_RESOURCE in the bounding set -> runc wrapper drops it from specs"
        install -m 0755 "$here/runc-nosysresource" "$run/runc-nosysresource"
        runtime=', "runtimes": {"runc-nosysresource": {"path": "'"$run"'/runc-nosysresource"}},
  "default-runtime": "runc-nosysresource"'
    fi
    cat >"$run/daemon.json" <<JSON
{
  "hosts": ["unix://$sock"],
  "pidfile": "$run/docker.pid",
  "exec-root": "$run/exec",
  "data-root": "$data_root",
  "default-address-pools": $pools,
  "storage-driver": "overlay2",
  "log-level": "warn",
  "features": {"buildkit": false}$runtime
}
JSON
    log "starting dockerd in netns $ns (config $run/daemon.json, data-root $data_root)"
    # --config-file alone: no /etc/docker/daemon.json, no system socket, no systemd unit.
    nsenter --net="/run/netns/$ns" setsid dockerd --config-file "$run/daemon.json" \
        >"$run/dockerd.log" 2>&1 </dev/null &
    local i
    for ((i = 0; i < 120; i++)); do
        docker version >/dev/null 2>&1 && break
        kill -0 $! 2>/dev/null || { tail -20 "$run/dockerd.log" >&2; die "dockerd exited"; }
        sleep 0.5
    done
    docker version >/dev/null 2>&1 || { tail -20 "$run/dockerd.log" >&2; die "dockerd did not answer in 60 s"; }
    log "dockerd $(docker version -f '{{.Server.Version}}') up in netns $ns"
    echo "$DOCKER_HOST"
}

egress() {
    command -v slirp4netns >/dev/null || die "slirp4netns not found (apt-get install slirp4netns)"
    [[ -s "$run/slirp.pid" ]] && kill -0 "$(cat "$run/slirp.pid")" 2>/dev/null && return
    # slirp4netns attaches to a namespace by a pid in it: a sleeper holds the netns open.
    nsenter --net="/run/netns/$ns" sleep infinity &
    echo $! >"$run/holder.pid"
    sleep 0.2
    slirp4netns --configure --mtu=1500 --disable-host-loopback "$(cat "$run/holder.pid")" tap0 \
        >"$run/slirp.log" 2>&1 &
    echo $! >"$run/slirp.pid"
    local i
    for ((i = 0; i < 50; i++)); do
        ip -n "$ns" route show default 2>/dev/null | grep -q tap0 && break
        sleep 0.1
    done
    ip -n "$ns" route show default | grep -q tap0 || die "slirp4netns did not come up ($(cat "$run/slirp.log"))"
    log "egress on for netns $ns (slirp4netns, user mode: no host firewall rules)"
}

stop_pidfile() {  # stop_pidfile <file> <seconds>: TERM the process, wait, KILL if needed
    local pid
    [[ -s "$1" ]] || return 0
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null || { rm -f "$1"; return 0; }
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$1"
}

noegress() {
    stop_pidfile "$run/slirp.pid" 5
    stop_pidfile "$run/holder.pid" 5
    ip -n "$ns" link del tap0 2>/dev/null || true
    log "egress off for netns $ns"
}

down() {
    noegress 2>/dev/null || true
    if [[ -S "$sock" ]] && docker version >/dev/null 2>&1; then
        local ids
        ids=$(docker ps -aq)
        # shellcheck disable=SC2086  # one id per word
        [[ -z "$ids" ]] || { log "removing $(wc -w <<<"$ids") containers"; docker rm -f $ids >/dev/null || true; }
        docker network prune -f >/dev/null 2>&1 || true
        docker volume prune -f >/dev/null 2>&1 || true
    fi
    stop_pidfile "$run/docker.pid" 30
    # Anything still running in the namespace was started by us (the namespace is ours).
    local pids
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    # shellcheck disable=SC2086  # one pid per word
    [[ -z "$pids" ]] || kill -9 $pids 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    umount -R "$run/exec" 2>/dev/null || true
    rm -rf "$run"
    log "dockerd and netns $ns removed (images stay cached in $data_root)"
}

case "${1:-}" in
    up) up ;;
    egress) egress ;;
    noegress) noegress ;;
    down) down ;;
    exec) shift; exec nsenter --net="/run/netns/$ns" env DOCKER_HOST="$DOCKER_HOST" "$@" ;;
    *) die "usage: $0 up|egress|noegress|down|exec CMD..." ;;
esac
