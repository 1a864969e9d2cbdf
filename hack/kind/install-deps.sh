#!/usr/bin/env bash
# Debian packages the offline kind path needs. docker.io's daemon must not start, be enabled,
# or touch the machine's firewall: only hack/kind/dockerd.sh runs dockerd, in its own namespace.
# A policy-rc.d that denies service starts is put in place for the install (and removed after
# if we added it); with systemd as init, the units are masked as well. Checked afterwards.
set -euo pipefail
log() { printf '[kind/deps] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
pkgs=(docker.io mmdebstrap slirp4netns gcc libc6-dev libseccomp-dev pkg-config)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    added=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        added=1
    fi
    if [[ -d /run/systemd/system ]]; then
        systemctl mask docker.service docker.socket containerd.service >/dev/null 2>&1 || true
    fi
    log "installing ${missing[*]} (services kept from starting)"
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null
    ((added == 0)) || rm -f /usr/sbin/policy-rc.d
fi
# The system's daemon must not be running (ours has its own socket; this checks the default).
if pgrep -x dockerd >/dev/null && [[ -S /var/run/docker.sock ]] && [[ -z "$(pgrep -f 'dockerd --config-file /run/bridgeport-kind')" ]]; then
    log "note: a system dockerd is running; it is left alone (ours uses its own socket and namespace)"
fi
log "packages present: ${pkgs[*]}"
