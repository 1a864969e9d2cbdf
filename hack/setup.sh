#!/usr/bin/env bash
# Install everything bridgeport needs on a fresh Debian 12 machine (as root), idempotently:
# distribution packages (libnftables and its Python binding come from Debian, not PyPI) and a
# virtualenv with the Python dependencies. Re-running is cheap: each step checks first.
set -euo pipefail
cd "$(dirname "$0")/.."

# prometheus: promtool and a real Prometheus for the monitoring tests (started by the tests
# themselves, never as a service); iptables: iptables-nft reproduces Docker's table for doctor.
APT_PACKAGES=(nftables python3-nftables python3-venv python3-pip iproute2 curl socat iperf3 wrk
              conntrack etcd-server procps make openssl ca-certificates git shellcheck
              prometheus iptables)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo ">>> apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's etcd-server package starts a system etcd on the default ports; tests run their own.
if systemctl is-active --quiet etcd 2>/dev/null; then systemctl stop etcd || true; fi
# The same for Debian's prometheus package: the tests start their own, on their own ports.
for svc in prometheus prometheus-node-exporter; do
  if systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true; systemctl disable "$svc" 2>/dev/null || true
  elif [[ -x /etc/init.d/$svc ]] && /etc/init.d/"$svc" status >/dev/null 2>&1; then
    /etc/init.d/"$svc" stop || true
  fi
done

# The venv uses Debian's python3 so the distribution's `nftables` binding is importable.
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [[ ! -f $stamp ]]; then
  echo ">>> creating .venv (Debian python3 + system site packages for python3-nftables)"
  /usr/bin/python3 -m venv --system-site-packages .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev,fast]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
.venv/bin/python -c 'import nftables, pyroute2, kopf, structlog' \
  || { echo "setup: Python dependencies are not importable" >&2; exit 1; }
echo ">>> setup done"
