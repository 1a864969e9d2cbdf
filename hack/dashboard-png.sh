#!/usr/bin/env bash
# Re-render docs/dashboard-1.png and docs/dashboard-2.png (the README's picture): the
# monitoring test's real agent, traffic and Prometheus, plus every dashboard query drawn in
# Prometheus' own graph UI by headless Chromium (Debian's package, installed here on demand:
# Grafana is not packaged for Debian, so its own renderer is not used).
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/setup.sh
if ! dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q "install ok installed"; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
BRIDGEPORT_DASHBOARD_PNG="$PWD/docs/dashboard.png" .venv/bin/python -m pytest -q \
  tests/ops/test_monitoring.py -k "br_netfilter and not no_br_netfilter"
ls -l docs/dashboard-*.png
