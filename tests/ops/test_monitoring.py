"""The chart's dashboard and alerts against a real Prometheus (Debian's package) scraping the
real agent of the test topology.

Prometheus runs inside the node namespace (its own loopback: nothing on the machine's
127.0.0.1 is touched), started and stopped by this test, never as a service. Traffic goes
through the kernel path and the proxy, one publication is Conflicted and a node check finds
something, so every panel has something to show; then every query of the dashboard must
return data and the alert rules must load and evaluate (the Conflicted resource makes
BridgeportResourceNotReady pending).

BRIDGEPORT_DASHBOARD_PNG=path additionally renders all the dashboard's queries in
Prometheus' own graph UI with headless Chromium (the README's picture).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.builders import network, publication
from tests.harness.node import NODE_IP, World
from tests.netns import Netns, wait_for

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "charts" / "bridgeport" / "monitoring" / "dashboard.json"
ALERTS = REPO / "charts" / "bridgeport" / "monitoring" / "alerts.yaml"
PROM_PORT = 9090
NET = network("net-m", "10.99.5.0/24", bridge="bp-m")


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) with Grafana's variables replaced as Grafana would."""
    dash = json.loads(DASHBOARD.read_text())
    return [
        (p["title"], t["expr"].replace("$__rate_interval", "1m").replace("$instance", ".*"))
        for p in dash["panels"]
        for t in p["targets"]
    ]


class Prometheus:
    def __init__(self, ns: Netns, workdir: Path) -> None:
        self.ns = ns
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {
                    "job_name": "bridgeport-agent",
                    "static_configs": [{"targets": ["127.0.0.1:9102"]}],
                }
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (workdir / "prometheus.log").open("w")
        self.proc = ns.popen(
            [
                "prometheus",
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{PROM_PORT}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for(
            lambda: (
                self.ns.run(
                    f"curl -sf http://127.0.0.1:{PROM_PORT}/-/ready", check=False
                ).returncode
                == 0
            ),
            60,
            0.5,
            "prometheus ready",
        )

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{PROM_PORT}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        body = json.loads(self.ns.run(["curl", "-sf", url]).stdout)
        assert body["status"] == "success", body
        return body["data"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        self.log.close()


@pytest.fixture
def prometheus(w: World) -> Iterator[Prometheus]:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed: run hack/setup.sh (Debian's prometheus)")
    if not w.br_netfilter:
        pytest.skip("one run is enough: the monitoring path does not depend on br_netfilter")
    workdir = Path(tempfile.mkdtemp(prefix="bridgeport-prom-"))
    prom = Prometheus(w.node, workdir)
    try:
        yield prom
    finally:
        prom.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_every_dashboard_query_returns_data_and_alerts_evaluate(
    w: World, prometheus: Prometheus
) -> None:
    w.agent.stop()
    w.agent.start("--doctor-interval", "1")
    w.agent.apply(
        NET,
        publication("web", 8080, "10.99.5.2", 80),
        publication("dns", 8053, "10.99.5.2", 53, protocol="UDP"),
        publication("web-copy", 8080, "10.99.5.3", 80),
    )  # younger: Conflicted
    w.agent.wait({"net-m": "Applied", "web": "Applied", "dns": "Applied", "web-copy": "Conflicted"})
    box = w.container("bp-m", "10.99.5.2/24", "10.99.5.1")
    w.serve(box, "--tcp", "80", "--udp", "53")
    w.node.sysctl("net.ipv6.conf.all.forwarding", "0")  # something for the node checks
    try:
        queries = dashboard_queries()
        missing: list[str] = []

        def all_have_data() -> bool:
            # Keep traffic flowing on both paths while the rate windows fill.
            w.ask(w.client, "tcp", NODE_IP, 8080)
            w.ask(w.client, "udp", NODE_IP, 8053)
            w.ask(w.node, "tcp", "127.0.0.1", 8080)
            missing[:] = [
                f"{title}: {expr}"
                for title, expr in queries
                if not prometheus.api("query", query=expr)["result"]
            ]
            return not missing

        wait_for(all_have_data, 90, 1.0, f"data for every dashboard query (missing: {missing})")

        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        assert len(rules) == len(yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"])
        assert all(r["health"] == "ok" for r in rules), rules

        def not_ready() -> list[dict[str, Any]]:
            return [
                a
                for a in prometheus.api("alerts")["alerts"]
                if a["labels"]["alertname"] == "BridgeportResourceNotReady"
            ]

        wait_for(lambda: bool(not_ready()), 30, 0.5, "BridgeportResourceNotReady evaluated")
        [alert] = not_ready()
        assert alert["labels"]["name"] == "web-copy"
        assert alert["state"] == "pending"  # for: 10m

        if os.environ.get("BRIDGEPORT_DASHBOARD_PNG"):
            deadline = time.monotonic() + 90  # a picture with some history
            while time.monotonic() < deadline:
                all_have_data()
            render_png(w.node, queries, Path(os.environ["BRIDGEPORT_DASHBOARD_PNG"]))
    finally:
        w.node.sysctl("net.ipv6.conf.all.forwarding", "1")


def render_png(ns: Netns, queries: list[tuple[str, str]], out: Path) -> None:
    """All dashboard queries as graphs in Prometheus' UI, through headless Chromium: two
    pictures (`out` with -1 and -2 before the suffix), since the UI keeps at most 10 graphs
    in its URL in order (g0..g9)."""
    half = (len(queries) + 1) // 2
    for part, chunk in enumerate((queries[:half], queries[half:]), 1):
        params: dict[str, str] = {}
        for i, (_, expr) in enumerate(chunk):
            params |= {
                f"g{i}.expr": expr,
                f"g{i}.tab": "0",
                f"g{i}.range_input": "2m",
                f"g{i}.stacked": "0",
                f"g{i}.show_exemplars": "0",
            }
        url = f"http://127.0.0.1:{PROM_PORT}/graph?{urllib.parse.urlencode(params)}"
        profile = tempfile.mkdtemp(prefix="bridgeport-chromium-")
        try:
            ns.run(
                [
                    "chromium",
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    f"--user-data-dir={profile}",
                    "--hide-scrollbars",
                    f"--window-size=1200,{len(chunk) * 760 + 400}",
                    "--virtual-time-budget=15000",
                    f"--screenshot={out.with_stem(f'{out.stem}-{part}')}",
                    url,
                ],
                timeout=180,
            )
        finally:
            shutil.rmtree(profile, ignore_errors=True)
