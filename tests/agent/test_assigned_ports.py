"""Assigned host ports with a real agent and real packets (issue 13, item 6).

The node netns gets a five-port ephemeral range (41000-41004), two of them reserved
(ip_local_reserved_ports) and one held by a host process listening on TCP. Publications
without a hostPort then get the two free TCP ports, a UDP one may take the port the TCP
listener holds, and the next TCP one is Conflicted (NoFreePort) while the rest work. Packets
from the client reach the containers through the assigned ports; after an agent restart
(with the host process gone, so a fresh pick could differ) every port is the same and still
answers, and the freed port goes to the publication that had none.
"""

from __future__ import annotations

import sys

import pytest

from tests.builders import network, publication
from tests.harness.node import CLIENT_IP, NODE_IP, World
from tests.netns import wait_for

pytestmark = pytest.mark.root

NET = network("net-as", "10.95.7.0/24", bridge="bp-as")
TARGET = "10.95.7.2"
RANGE, RESERVED, HELD = (41000, 41004), {41000, 41001}, 41002
_LISTEN = (
    f"import socket, time; s = socket.socket(); s.bind(('0.0.0.0', {HELD})); "
    "s.listen(); print('ready', flush=True); time.sleep(600)"
)


def _assigned(name: str, *, created: str, **spec: object) -> dict[str, object]:
    doc = publication(name, 0, TARGET, 80, created=created, **spec)
    del doc["spec"]["hostPort"]  # type: ignore[index]
    return doc


def _ports(w: World) -> dict[str, int | None]:
    return {
        r["name"]: r.get("hostPort")
        for r in w.agent.state()["resources"]
        if r["kind"] == "PortPublication"
    }


def test_assigned_ports_carry_traffic_and_survive_a_restart(w: World) -> None:
    saved = {
        k: w.node.run(f"sysctl -n net.ipv4.{k}").stdout.strip()
        for k in ("ip_local_port_range", "ip_local_reserved_ports")
    }
    held = w.node.popen([sys.executable, "-c", _LISTEN])
    try:
        assert held.stdout is not None and held.stdout.readline().strip() == "ready"
        w.node.sysctl("net.ipv4.ip_local_port_range", f"{RANGE[0]} {RANGE[1]}")
        w.node.sysctl("net.ipv4.ip_local_reserved_ports", "41000-41001")
        w.agent.apply(
            NET,
            _assigned("web", created="2026-01-01T00:00:01Z"),
            _assigned("more", created="2026-01-01T00:00:02Z"),
            _assigned(
                "dns",
                created="2026-01-01T00:00:03Z",
                protocol="UDP",
                target={"address": TARGET, "port": 53},
            ),
            _assigned("full", created="2026-01-01T00:00:04Z"),
        )
        state = w.agent.wait(
            {
                "net-as": "Applied",
                "web": "Applied",
                "more": "Applied",
                "dns": "Applied",
                "full": "Conflicted",
            }
        )
        full = next(r for r in state["resources"] if r["name"] == "full")
        assert full["reason"] == "NoFreePort" and "41000-41004" in full["message"]
        ports = _ports(w)
        assert {ports["web"], ports["more"]} == {41003, 41004}  # not reserved, not held
        assert ports["dns"] in {HELD, 41003, 41004} and ports["full"] is None
        target = w.container("bp-as", f"{TARGET}/24", "10.95.7.1")
        w.serve(target, "--tcp", "80", "--udp", "53")
        for name in ("web", "more"):
            assert w.ask(w.client, "tcp", NODE_IP, ports[name] or 0) == f"{CLIENT_IP} 80"
        assert w.ask(w.client, "udp", NODE_IP, ports["dns"] or 0) == f"{CLIENT_IP} 53"

        # Restart with the host process gone: the ports stay where they were (a fresh pick
        # would move web: its search starts at 41001, so it would take 41002), and the port
        # the process freed goes to the publication that had none.
        before = state["lastSync"]
        w.agent.stop()
        held.kill()
        held.wait(10)
        w.agent.start()
        wait_for(
            lambda: w.agent.state().get("lastSync") != before,
            timeout=10,
            what=f"a report of the restarted agent ({w.agent.log_tail()})",
        )
        w.agent.wait(
            {
                "net-as": "Applied",
                "web": "Applied",
                "more": "Applied",
                "dns": "Applied",
                "full": "Applied",
            }
        )
        assert _ports(w) == {**ports, "full": HELD}
        assert w.ask(w.client, "tcp", NODE_IP, HELD) == f"{CLIENT_IP} 80"
        for name in ("web", "more"):
            assert w.ask(w.client, "tcp", NODE_IP, ports[name] or 0) == f"{CLIENT_IP} 80"
        assert w.ask(w.client, "udp", NODE_IP, ports["dns"] or 0) == f"{CLIENT_IP} 53"
    finally:
        if held.poll() is None:
            held.kill()
        for key, value in saved.items():
            w.node.sysctl(f"net.ipv4.{key}", value)
