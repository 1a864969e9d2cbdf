"""`bridgeport doctor` and `bridgeport trace` on a node that reproduces each problem for real.

- a clean node: nothing worse than a note (br_netfilter off is one, in that variant)
- Docker's iptables-nft table (made by iptables-nft itself): FORWARD policy DROP kills the
  published port; doctor names the chain, trace names the verdict; the documented
  DOCKER-USER accept brings traffic back and doctor downgrades the finding
- a firewalld-shaped inet table ending in a reject: doctor and trace name that rule
- forwarding off and strict rp_filter
- a foreign process listening on a published port (agent stopped, kernel state left)
- the agent exports the same findings (metric, state document)
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.builders import network, publication
from tests.harness.node import CLIENT_IP, NODE_IP, World
from tests.netns import wait_for

pytestmark = pytest.mark.root

NET = network("net-d", "10.99.4.0/24", bridge="bp-d")
FIREWALLD = """
table inet firewalld {
    chain filter_FORWARD {
        type filter hook forward priority filter + 10; policy accept;
        ct state { established, related } accept
        ct status dnat accept comment "removed below to reproduce a zone without it"
        iifname "lo" accept
        reject with icmpx admin-prohibited
    }
}
"""


def doctor(w: World) -> tuple[int, dict[str, Any]]:
    proc = w.node.run(
        [sys.executable, "-m", "bridgeport", "doctor", "--format", "json"], check=False
    )
    return proc.returncode, json.loads(proc.stdout)


def findings(report: dict[str, Any], check: str) -> list[dict[str, str]]:
    return [f for f in report["findings"] if f["check"] == check]


@pytest.fixture
def published(w: World) -> Iterator[World]:
    w.agent.apply(NET, publication("web", 8080, "10.99.4.2", 80))
    w.agent.wait({"net-d": "Applied", "web": "Applied"})
    box = w.container("bp-d", "10.99.4.2/24", "10.99.4.1")
    w.serve(box, "--tcp", "80")
    assert w.ask(w.client, "tcp", NODE_IP, 8080) == f"{CLIENT_IP} 80"
    yield w


def test_clean_node_has_nothing_worse_than_a_note(published: World) -> None:
    rc, report = doctor(published)
    assert rc == 0, report
    assert report["severity"] == "info"
    notes = {f["check"] for f in report["findings"]}
    assert notes <= {"br_netfilter"}
    assert ("br_netfilter" in notes) != published.br_netfilter


@pytest.mark.skipif(shutil.which("iptables-nft") is None, reason="needs iptables-nft")
def test_docker_forward_drop_is_found_traced_and_fixed(published: World) -> None:
    w = published
    ipt = ["iptables-nft"]
    try:
        # What dockerd does to the FORWARD chain (moby's iptables setup, nft backend).
        w.node.run([*ipt, "-N", "DOCKER-USER"])
        w.node.run([*ipt, "-N", "DOCKER-FORWARD"])
        w.node.run([*ipt, "-A", "FORWARD", "-j", "DOCKER-USER"])
        w.node.run([*ipt, "-A", "FORWARD", "-j", "DOCKER-FORWARD"])
        w.node.run([*ipt, "-P", "FORWARD", "DROP"])
        assert w.ask(w.client, "tcp", NODE_IP, 8080, timeout=1).startswith("ERR")

        rc, report = doctor(w)
        assert rc == 2
        [drop] = [f for f in findings(report, "foreign") if f["severity"] == "error"]
        assert (
            "table ip filter chain FORWARD (hook forward, Docker) has policy drop"
            in drop["message"]
        )
        assert "policy drop" in drop["rule"] and "DOCKER-USER" in drop["fix"]

        trace = w.node.run(
            [sys.executable, "-m", "bridgeport", "trace", CLIENT_IP, f"{NODE_IP}:8080/tcp"],
            check=False,
        )
        assert trace.returncode == 1, trace.stdout + trace.stderr
        assert "ip filter FORWARD" in trace.stdout and "policy drop" in trace.stdout
        assert "DROPPED by table ip filter chain FORWARD" in trace.stdout

        # The documented fix: accept our bridges in Docker's own table.
        w.node.run([*ipt, "-I", "DOCKER-USER", "-o", "bp-+", "-j", "ACCEPT"])
        w.node.run([*ipt, "-I", "DOCKER-USER", "-i", "bp-+", "-j", "ACCEPT"])
        assert w.ask(w.client, "tcp", NODE_IP, 8080) == f"{CLIENT_IP} 80"
        rc, report = doctor(w)
        assert rc == 0, report
        assert "accepts our bridges" in findings(report, "foreign")[0]["message"]
    finally:
        w.node.run("nft delete table ip filter", check=False)


def test_firewalld_reject_is_named(published: World) -> None:
    w = published
    zone = FIREWALLD.replace(
        '        ct status dnat accept comment "removed below to reproduce a zone without it"\n', ""
    )
    w.node.run(["nft", "-f", "-"], input=zone)
    try:
        assert w.ask(w.client, "tcp", NODE_IP, 8080, timeout=1).startswith("ERR")
        rc, report = doctor(w)
        assert rc == 2
        [reject] = [f for f in findings(report, "foreign") if f["severity"] == "error"]
        assert (
            "table inet firewalld chain filter_FORWARD (hook forward, firewalld)"
            in reject["message"]
        )
        assert reject["rule"] == "reject with icmpx admin-prohibited"
        trace = w.node.run(
            [sys.executable, "-m", "bridgeport", "trace", CLIENT_IP, f"{NODE_IP}:8080/tcp"],
            check=False,
        )
        assert trace.returncode == 1, trace.stdout + trace.stderr
        assert "DROPPED by table inet firewalld chain filter_FORWARD" in trace.stdout
        assert "reject with icmpx admin-prohibited" in trace.stdout
    finally:
        w.node.run("nft delete table inet firewalld", check=False)


def test_forwarding_off_and_strict_rp_filter(published: World) -> None:
    w = published
    try:
        w.node.sysctl("net.ipv6.conf.all.forwarding", "0")
        w.node.sysctl("net.ipv4.conf.all.rp_filter", "1")
        rc, report = doctor(w)
        assert rc == 1, report
        [fwd] = findings(report, "forwarding")
        assert "IPv6 forwarding is off" in fwd["message"]
        [rp] = findings(report, "rp_filter")
        assert "bp-d" in rp["message"]
    finally:
        w.node.sysctl("net.ipv6.conf.all.forwarding", "1")
        w.node.sysctl("net.ipv4.conf.all.rp_filter", "0")


def test_foreign_listener_on_a_published_port(published: World) -> None:
    w = published
    w.agent.stop()  # the kernel state stays; someone else grabs the port meanwhile
    squatter = w.node.popen(
        [
            sys.executable,
            "-c",
            "import socket,time; s=socket.socket(); s.bind(('0.0.0.0', 8080));"
            " s.listen(); print('ready', flush=True); time.sleep(60)",
        ]
    )
    assert squatter.stdout is not None and squatter.stdout.readline().strip() == "ready"
    rc, report = doctor(w)
    assert rc == 2
    [listener] = findings(report, "listener")
    assert f"(pid {squatter.pid})" in listener["message"] or "python" in listener["message"]
    assert "0.0.0.0:8080/tcp" in listener["message"]


def test_agent_exports_the_findings(published: World) -> None:
    w = published
    w.agent.stop()
    w.agent.start("--doctor-interval", "0.5")
    w.node.sysctl("net.ipv4.conf.all.rp_filter", "1")
    try:

        def reported() -> bool:
            return w.agent.state().get("doctor", {}).get("severity") == "warning"

        wait_for(reported, 20, what=f"doctor findings in the state file ({w.agent.log_tail()})")
        text = w.node.run("curl -sf http://127.0.0.1:9102/metrics").stdout
        assert 'bridgeport_doctor_findings{check="rp_filter",severity="warning"} 1.0' in text
    finally:
        w.node.sysctl("net.ipv4.conf.all.rp_filter", "0")
