#!/usr/bin/env bash
# A real, minimal Kubernetes control plane for tests and the demo:
# etcd + kube-apiserver + kube-controller-manager, no nodes, no kubelet.
#
#   hack/kube/cluster.sh up [--netns NAME]     start (builds the binaries on first use)
#   hack/kube/cluster.sh down                  stop by pid, remove the run dir (and netns we made;
#                                              BRIDGEPORT_KEEP_RUN=1 keeps the dir: logs)
#   hack/kube/cluster.sh env                   print exports: eval "$(hack/kube/cluster.sh env)"
#   hack/kube/cluster.sh status                exit 0 iff all processes are alive and /readyz ok
#   hack/kube/cluster.sh stop-apiserver        stop only kube-apiserver (etcd data + certs kept)
#   hack/kube/cluster.sh start-apiserver       start it again with the same flags, wait for /readyz
#
# Environment (read by `up`; recorded in <run dir>/cluster.env for the other commands):
#   BRIDGEPORT_RUN                  run dir (default /tmp/bridgeport-cluster)
#   BRIDGEPORT_APISERVER_PORT       kube-apiserver secure port (default 6443)
#   BRIDGEPORT_APISERVER_BIND       kube-apiserver --bind-address (default 0.0.0.0)
#   BRIDGEPORT_APISERVER_EXTRA_SANS extra IP SANs for the serving cert, comma/space separated
#                                   (default 169.254.77.1)
#   BRIDGEPORT_ETCD_PORT            etcd client port (default 12379; peer port = +1)
#   BRIDGEPORT_KCM_PORT             kube-controller-manager secure port (default 10357)
#   BRIDGEPORT_SERVICE_CIDR         --service-cluster-ip-range (default 10.96.0.0/16)
#   BRIDGEPORT_KCM_CONTROLLERS      --controllers (default "*", i.e. the standard set)
#   BRIDGEPORT_READY_TIMEOUT        seconds to wait for readiness (default 120)
#   BRIDGEPORT_KUBE_BIN             dir with kube-apiserver/kube-controller-manager/kubectl
#                                   (default: output of hack/kube/build.sh)
#   BRIDGEPORT_ETCD                 etcd binary (default: etcd on PATH)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { printf '[kube/cluster] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

run_dir="${BRIDGEPORT_RUN:-/tmp/bridgeport-cluster}"
marker=".bridgeport-cluster"

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
    exit 2
}

# ---------------------------------------------------------------------------------------------
# helpers

# in_ns CMD...: run CMD in the cluster's network namespace (if any).
in_ns() {
    if [[ -n "${NETNS:-}" ]]; then
        ip netns exec "$NETNS" "$@"
    else
        "$@"
    fi
}

port_in_use() { # port -> 0 if something accepts connections on 127.0.0.1:port
    in_ns timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

pid_alive() { # name -> 0 if <run>/<name>.pid names a live process running <name>
    local name="$1" pid
    [[ -f "$run_dir/$name.pid" ]] || return 1
    pid="$(cat "$run_dir/$name.pid")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    # guard against pid reuse: the process must still be the binary we started
    tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q -- "$name" || return 1
}

proc_running() { # pid -> 0 if it exists and is not a zombie (our daemons are reaped by init)
    local st
    st="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    st="${st##*) }"
    [[ -n "$st" && "${st%% *}" != Z ]]
}

stop_proc() { # name [grace-seconds=15]: SIGTERM, wait, then SIGKILL
    local name="$1" grace="${2:-15}" pid i
    if ! pid_alive "$name"; then
        rm -f "$run_dir/$name.pid"
        return 0
    fi
    pid="$(cat "$run_dir/$name.pid")"
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
        proc_running "$pid" || break
        sleep 0.1
    done
    if proc_running "$pid"; then
        log "$name still running ${grace}s after SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            proc_running "$pid" || break
            sleep 0.1
        done
    fi
    # Our daemons are orphans reaped by init; wait (bounded) until it has, so that
    # `pgrep kube-apiserver` right after `down` is clean even where init reaps lazily.
    for ((i = 0; i < 100; i++)); do
        [[ -e "/proc/$pid" ]] || break
        sleep 0.1
    done
    rm -f "$run_dir/$name.pid"
}

start_proc() { # name cmd...: start in background, logs to <run>/<name>.log, pid to <name>.pid
    local name="$1"
    shift
    # stdin/stdout/stderr detached so callers capturing our output (subprocess pipes) never
    # wait for the daemons. `ip netns exec` execs the command, so $! is the daemon's own pid.
    # (Plain commands, not the in_ns function, so that $! is not a subshell.)
    if [[ -n "${NETNS:-}" ]]; then
        ip netns exec "$NETNS" "$@" </dev/null >>"$run_dir/$name.log" 2>&1 &
    else
        "$@" </dev/null >>"$run_dir/$name.log" 2>&1 &
    fi
    echo $! >"$run_dir/$name.pid"
}

log_tail() { # name
    log "---- last 40 lines of $run_dir/$1.log ----"
    tail -n 40 "$run_dir/$1.log" >&2 2>/dev/null || true
    log "---- end of $1.log ----"
}

api_get() { # path: GET on the apiserver as admin (inside the netns if any)
    in_ns curl -sS --fail --max-time 5 \
        --cacert "$run_dir/pki/ca.crt" --cert "$run_dir/pki/admin.crt" \
        --key "$run_dir/pki/admin.key" "https://127.0.0.1:$APISERVER_PORT$1"
}

wait_for() { # description proc-name timeout cmd...
    local what="$1" name="$2" timeout="$3" deadline
    shift 3
    deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ! pid_alive "$name"; then
            log_tail "$name"
            die "$name exited while waiting for $what (log: $run_dir/$name.log)"
        fi
        if ((SECONDS >= deadline)); then
            log_tail "$name"
            die "timed out after ${timeout}s waiting for $what (log: $run_dir/$name.log)"
        fi
        sleep 0.5
    done
}

load_env() {
    [[ -f "$run_dir/cluster.env" ]] || die "no cluster in $run_dir (run: $0 up)"
    # shellcheck source=/dev/null
    source "$run_dir/cluster.env"
}

# ---------------------------------------------------------------------------------------------
# pki

gen_pki() {
    local pki="$run_dir/pki" sans ip
    mkdir -p "$pki"
    (
        cd "$pki"
        umask 077
        serial() { echo "0x$(openssl rand -hex 16)"; }
        ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
        sign() { # name subject extensions
            openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
            printf '%b' "$3" >"$1.ext"
            openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -set_serial "$(serial)" \
                -days 3650 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
            rm -f "$1.csr" "$1.ext"
        }

        ec_key ca.key
        openssl req -x509 -new -key ca.key -subj "/CN=bridgeport-test-ca" -days 3650 \
            -set_serial "$(serial)" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
            -out ca.crt

        # kube-apiserver serving cert
        sans="DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
        sans+=",DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$SERVICE_IP"
        for ip in ${APISERVER_EXTRA_SANS//,/ }; do
            sans+=",IP:$ip"
        done
        ec_key apiserver.key
        sign apiserver "/CN=kube-apiserver" \
            "subjectAltName=$sans\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\nbasicConstraints=critical,CA:FALSE\n"

        # client certs
        local client_ext="extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\nbasicConstraints=critical,CA:FALSE\n"
        ec_key admin.key
        sign admin "/O=system:masters/CN=kubernetes-admin" "$client_ext"
        ec_key kube-controller-manager.key
        sign kube-controller-manager "/CN=system:kube-controller-manager" "$client_ext"

        # front-proxy (aggregation layer / requestheader) CA and client cert
        ec_key front-proxy-ca.key
        openssl req -x509 -new -key front-proxy-ca.key -subj "/CN=bridgeport-front-proxy-ca" \
            -days 3650 -set_serial "$(serial)" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
            -out front-proxy-ca.crt
        ec_key front-proxy-client.key
        openssl req -new -key front-proxy-client.key -subj "/CN=front-proxy-client" \
            -out front-proxy-client.csr
        printf '%b' "$client_ext" >front-proxy-client.ext
        openssl x509 -req -in front-proxy-client.csr -CA front-proxy-ca.crt \
            -CAkey front-proxy-ca.key -set_serial "$(serial)" -days 3650 \
            -extfile front-proxy-client.ext -out front-proxy-client.crt 2>/dev/null
        rm -f front-proxy-client.csr front-proxy-client.ext

        # service-account token signing key pair
        openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
        openssl pkey -in sa.key -pubout -out sa.pub
        rm -f ca.srl
    )
}

write_kubeconfig() { # file user server
    local file="$1" user="$2" server="$3" pki="$run_dir/pki"
    (
        umask 077
        cat >"$file" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: bridgeport
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 "$pki/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$pki/$user.crt")
    client-key-data: $(base64 -w0 "$pki/$user.key")
contexts:
- name: bridgeport
  context:
    cluster: bridgeport
    user: $user
current-context: bridgeport
KCFG
    )
}

# ---------------------------------------------------------------------------------------------
# components

start_etcd() {
    log "starting etcd on 127.0.0.1:$ETCD_PORT ($("$ETCD" --version | head -n1))"
    start_proc etcd "$ETCD" \
        --name bridgeport \
        --data-dir "$run_dir/etcd-data" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "bridgeport=http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster-state new \
        --quota-backend-bytes $((2 * 1024 * 1024 * 1024)) \
        --logger zap --log-level warn
    wait_for "etcd health" etcd 30 \
        in_ns curl -sS --fail --max-time 2 "http://127.0.0.1:$ETCD_PORT/health"
}

start_apiserver() {
    log "starting kube-apiserver on https://127.0.0.1:$APISERVER_PORT (bind $APISERVER_BIND)"
    local pki="$run_dir/pki"
    start_proc kube-apiserver "$KUBE_BIN/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
        --bind-address "$APISERVER_BIND" \
        --secure-port "$APISERVER_PORT" \
        --advertise-address 127.0.0.1 \
        --endpoint-reconciler-type none \
        --tls-cert-file "$pki/apiserver.crt" \
        --tls-private-key-file "$pki/apiserver.key" \
        --client-ca-file "$pki/ca.crt" \
        --authorization-mode Node,RBAC \
        --service-account-issuer https://kubernetes.default.svc.cluster.local \
        --service-account-key-file "$pki/sa.pub" \
        --service-account-signing-key-file "$pki/sa.key" \
        --service-cluster-ip-range "$SERVICE_CIDR" \
        --requestheader-client-ca-file "$pki/front-proxy-ca.crt" \
        --requestheader-allowed-names front-proxy-client \
        --requestheader-username-headers X-Remote-User \
        --requestheader-group-headers X-Remote-Group \
        --requestheader-extra-headers-prefix X-Remote-Extra- \
        --proxy-client-cert-file "$pki/front-proxy-client.crt" \
        --proxy-client-key-file "$pki/front-proxy-client.key" \
        --allow-privileged=true \
        --profiling=false \
        --v=1
    wait_for "kube-apiserver /readyz" kube-apiserver "$READY_TIMEOUT" api_get /readyz
}

start_controller_manager() {
    log "starting kube-controller-manager (controllers: $KCM_CONTROLLERS)"
    local pki="$run_dir/pki" kcfg="$run_dir/kube-controller-manager.kubeconfig"
    mkdir -p "$run_dir/kcm-certs"
    start_proc kube-controller-manager "$KUBE_BIN/kube-controller-manager" \
        --kubeconfig "$kcfg" \
        --authentication-kubeconfig "$kcfg" \
        --authorization-kubeconfig "$kcfg" \
        --bind-address 127.0.0.1 \
        --secure-port "$KCM_PORT" \
        --cert-dir "$run_dir/kcm-certs" \
        --flex-volume-plugin-dir "$run_dir/flexvolume" \
        --leader-elect=false \
        --controllers "$KCM_CONTROLLERS" \
        --use-service-account-credentials=true \
        --service-account-private-key-file "$pki/sa.key" \
        --root-ca-file "$pki/ca.crt" \
        --cluster-signing-cert-file "$pki/ca.crt" \
        --cluster-signing-key-file "$pki/ca.key" \
        --service-cluster-ip-range "$SERVICE_CIDR" \
        --profiling=false \
        --v=1
    wait_for "kube-controller-manager /healthz" kube-controller-manager "$READY_TIMEOUT" \
        in_ns curl -sS --fail --max-time 2 -k "https://127.0.0.1:$KCM_PORT/healthz"
    # The serviceaccount controller creating "default" proves the controllers are running.
    wait_for "ServiceAccount default/default" kube-controller-manager "$READY_TIMEOUT" \
        api_get /api/v1/namespaces/default/serviceaccounts/default
}

# ---------------------------------------------------------------------------------------------
# commands

cmd_up() {
    if [[ -f "$run_dir/cluster.env" ]]; then
        load_env
        if pid_alive etcd && pid_alive kube-apiserver && pid_alive kube-controller-manager \
            && api_get /readyz >/dev/null 2>&1; then
            log "already running (run dir $run_dir)"
            return 0
        fi
        log "stale cluster in $run_dir; cleaning up first"
        cmd_down
    fi
    if [[ -e "$run_dir" ]]; then
        if [[ -f "$run_dir/$marker" ]] || [[ -z "$(ls -A "$run_dir")" ]]; then
            rm -rf "$run_dir"
        else
            die "$run_dir exists and is not a bridgeport cluster dir; refusing to touch it"
        fi
    fi

    local start=$SECONDS
    NETNS="${OPT_NETNS:-}"
    APISERVER_PORT="${BRIDGEPORT_APISERVER_PORT:-6443}"
    APISERVER_BIND="${BRIDGEPORT_APISERVER_BIND:-0.0.0.0}"
    APISERVER_EXTRA_SANS="${BRIDGEPORT_APISERVER_EXTRA_SANS-169.254.77.1}"
    ETCD_PORT="${BRIDGEPORT_ETCD_PORT:-12379}"
    ETCD_PEER_PORT=$((ETCD_PORT + 1))
    KCM_PORT="${BRIDGEPORT_KCM_PORT:-10357}"
    SERVICE_CIDR="${BRIDGEPORT_SERVICE_CIDR:-10.96.0.0/16}"
    KCM_CONTROLLERS="${BRIDGEPORT_KCM_CONTROLLERS:-*}"
    READY_TIMEOUT="${BRIDGEPORT_READY_TIMEOUT:-120}"
    ETCD="${BRIDGEPORT_ETCD:-$(command -v etcd || true)}"
    [[ -n "$ETCD" && -x "$ETCD" ]] || die "etcd not found (apt-get install etcd-server, or set BRIDGEPORT_ETCD)"
    command -v openssl >/dev/null || die "openssl not found"
    command -v curl >/dev/null || die "curl not found"

    # first IP of the service range, e.g. 10.96.0.0/16 -> 10.96.0.1 (IPv4 only)
    local net="${SERVICE_CIDR%/*}"
    SERVICE_IP="${net%.*}.$((${net##*.} + 1))"

    if [[ -n "${BRIDGEPORT_KUBE_BIN:-}" ]]; then
        KUBE_BIN="$BRIDGEPORT_KUBE_BIN"
    else
        KUBE_BIN="$("$here/build.sh")"
    fi
    local b
    for b in kube-apiserver kube-controller-manager kubectl; do
        [[ -x "$KUBE_BIN/$b" ]] || die "$KUBE_BIN/$b missing (run hack/kube/build.sh)"
    done

    mkdir -p "$run_dir"
    touch "$run_dir/$marker"
    # On any failure from here on: stop what we started, keep the run dir (logs) for debugging.
    trap 'up_failed' EXIT

    if [[ -n "$NETNS" ]]; then
        [[ "$(id -u)" == 0 ]] || die "--netns needs root"
        if ip netns list | awk '{print $1}' | grep -qx -- "$NETNS"; then
            log "using existing network namespace $NETNS"
        else
            log "creating network namespace $NETNS"
            ip netns add "$NETNS"
            touch "$run_dir/netns-created"
        fi
        ip netns exec "$NETNS" ip link set lo up
    fi

    local p
    for p in "$APISERVER_PORT" "$ETCD_PORT" "$ETCD_PEER_PORT" "$KCM_PORT"; do
        if port_in_use "$p"; then
            die "port 127.0.0.1:$p is already in use${NETNS:+ in netns $NETNS} (set BRIDGEPORT_*_PORT)"
        fi
    done

    cat >"$run_dir/cluster.env" <<ENV
NETNS='$NETNS'
APISERVER_PORT='$APISERVER_PORT'
APISERVER_BIND='$APISERVER_BIND'
APISERVER_EXTRA_SANS='$APISERVER_EXTRA_SANS'
ETCD_PORT='$ETCD_PORT'
ETCD_PEER_PORT='$ETCD_PEER_PORT'
KCM_PORT='$KCM_PORT'
SERVICE_CIDR='$SERVICE_CIDR'
SERVICE_IP='$SERVICE_IP'
KCM_CONTROLLERS='$KCM_CONTROLLERS'
READY_TIMEOUT='$READY_TIMEOUT'
ETCD='$ETCD'
KUBE_BIN='$KUBE_BIN'
ENV

    gen_pki
    write_kubeconfig "$run_dir/admin.kubeconfig" admin "https://127.0.0.1:$APISERVER_PORT"
    write_kubeconfig "$run_dir/kube-controller-manager.kubeconfig" kube-controller-manager \
        "https://127.0.0.1:$APISERVER_PORT"

    start_etcd
    start_apiserver
    start_controller_manager

    trap - EXIT
    log "cluster ready in $((SECONDS - start))s: $("$KUBE_BIN/kube-apiserver" --version)${NETNS:+ (in netns $NETNS)}"
    log "  kubeconfig: $run_dir/admin.kubeconfig"
    log "  try:        eval \"\$($0 env)\" && kubectl get ns"
}

up_failed() {
    local rc=$?
    log "startup failed; stopping components (logs kept in $run_dir, '$0 down' removes it)"
    stop_proc kube-controller-manager
    stop_proc kube-apiserver
    stop_proc etcd
    if [[ -f "$run_dir/netns-created" && -n "${NETNS:-}" ]]; then
        ip netns delete "$NETNS" 2>/dev/null || true
        rm -f "$run_dir/netns-created"
    fi
    exit "$rc"
}

cmd_down() {
    if [[ ! -d "$run_dir" ]]; then
        log "nothing to do ($run_dir does not exist)"
        return 0
    fi
    [[ -f "$run_dir/$marker" ]] || die "$run_dir is not a bridgeport cluster dir; refusing to touch it"
    if [[ -f "$run_dir/cluster.env" ]]; then
        # shellcheck source=/dev/null
        source "$run_dir/cluster.env"
    fi
    stop_proc kube-controller-manager
    stop_proc kube-apiserver
    stop_proc etcd
    if [[ -f "$run_dir/netns-created" && -n "${NETNS:-}" ]]; then
        log "deleting network namespace $NETNS"
        ip netns delete "$NETNS" 2>/dev/null || true
    fi
    if [[ -n "${BRIDGEPORT_KEEP_RUN:-}" ]]; then
        log "cluster down (logs kept in $run_dir)"
        return 0
    fi
    rm -rf "$run_dir"
    log "cluster down ($run_dir removed)"
}

cmd_env() {
    load_env
    local prefix=""
    [[ -n "$NETNS" ]] && prefix="# inside the netns: ip netns exec $NETNS kubectl ...\n"
    printf '%b' "$prefix"
    echo "export KUBECONFIG='$run_dir/admin.kubeconfig'"
    echo "export PATH='$KUBE_BIN':\"\$PATH\""
    echo "export BRIDGEPORT_APISERVER='https://127.0.0.1:$APISERVER_PORT'"
    echo "export BRIDGEPORT_KUBE_BIN='$KUBE_BIN'"
    [[ -n "$NETNS" ]] && echo "export BRIDGEPORT_NETNS='$NETNS'"
    return 0
}

cmd_status() {
    load_env
    local rc=0 n
    for n in etcd kube-apiserver kube-controller-manager; do
        if pid_alive "$n"; then
            echo "$n: running (pid $(cat "$run_dir/$n.pid"))"
        else
            echo "$n: not running"
            rc=1
        fi
    done
    if api_get /readyz >/dev/null 2>&1; then
        echo "readyz: ok (https://127.0.0.1:$APISERVER_PORT${NETNS:+ in netns $NETNS})"
    else
        echo "readyz: failing"
        rc=1
    fi
    return $rc
}

cmd_stop_apiserver() {
    load_env
    # With clients connected, kube-apiserver's graceful shutdown waits up to its request
    # timeout (60 s) for open watch connections; etcd holds all state, so don't wait long.
    stop_proc kube-apiserver "${BRIDGEPORT_STOP_GRACE:-5}"
}

cmd_start_apiserver() {
    load_env
    if pid_alive kube-apiserver; then
        log "kube-apiserver already running"
    else
        pid_alive etcd || die "etcd is not running; use '$0 up'"
        start_apiserver
    fi
}

# ---------------------------------------------------------------------------------------------

[[ $# -ge 1 ]] || usage
cmd="$1"
shift
OPT_NETNS=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --netns) OPT_NETNS="${2:?--netns needs a name}"; shift 2 ;;
        --netns=*) OPT_NETNS="${1#--netns=}"; shift ;;
        -h | --help) usage ;;
        *) die "unknown argument: $1" ;;
    esac
done
if [[ -n "$OPT_NETNS" && "$cmd" != up ]]; then
    die "--netns only applies to 'up' (other commands read it from $run_dir/cluster.env)"
fi

case "$cmd" in
    up) cmd_up ;;
    down) cmd_down ;;
    env) cmd_env ;;
    status) cmd_status ;;
    stop-apiserver) cmd_stop_apiserver ;;
    start-apiserver) cmd_start_apiserver ;;
    -h | --help | help) usage ;;
    *) die "unknown command: $cmd" ;;
esac
