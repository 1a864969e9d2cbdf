"""The agent's userland fallback proxy, end to end in a node namespace.

Scenarios:
- 127.0.0.1:hostPort on the node reaches an IPv4 target (loopback: Auto), TCP and UDP; the
  state file says proxy: listening; [::1] is not claimed by an IPv4-only publication, and
  hostIP ::1 proxies it across families
- loopback: Never: nothing listens on loopback, the state file says proxy: off
- IPv4 forwarding off: a client in another namespace reaches the target through the proxy and
  no IPv4 DNAT element exists
- a host process holding the port first: Conflicted/PortInUse naming the address; the process
  keeps getting its traffic (no DNAT shadows it)
- removing the publication frees the port for another process
"""

from __future__ import annotations

import sys

import pytest

from tests.builders import network, publication
from tests.harness.node import CLIENT_IP, NODE_IP, World
from tests.netns import wait_for

pytestmark = pytest.mark.root

NET = network("net-p", "10.97.1.0/24", bridge="bp-p", subnet6="fd00:97::/64")


def _entry(w: World, name: str) -> dict[str, str]:
    entry = w.agent.entry(name)
    assert entry is not None, w.agent.state()
    return entry


def test_loopback_reaches_target(w: World) -> None:
    """Auto: the node's 127.0.0.1 is proxied to an IPv4 target, TCP and UDP. Its wildcard
    claims IPv4 only, so [::1] stays free; hostIP ::1 publishes it, proxied across families."""
    w.agent.apply(
        NET,
        publication("web", 8080, "10.97.1.2", 80),
        publication("dns", 8053, "10.97.1.2", 53, protocol="UDP"),
        publication("web-lo6", 8081, "10.97.1.2", 80, hostIP="::1"),
    )
    w.agent.wait({"net-p": "Applied", "web": "Applied", "dns": "Applied", "web-lo6": "Applied"})
    assert _entry(w, "web")["proxy"] == "listening"
    target = w.container("bp-p", "10.97.1.2/24", "10.97.1.1")
    w.serve(target, "--tcp", "80", "--udp", "53")
    assert w.ask(w.node, "tcp", "127.0.0.1", 8080) == "10.97.1.1 80"
    assert "ConnectionRefused" in w.ask(w.node, "tcp", "::1", 8080)
    assert w.ask(w.node, "tcp", "::1", 8081) == "10.97.1.1 80"
    assert w.ask(w.node, "udp", "127.0.0.1", 8053) == "10.97.1.1 53"
    assert w.ask(w.client, "tcp", NODE_IP, 8080) == f"{CLIENT_IP} 80"  # kernel path intact


def test_never_means_no_proxy(w: World) -> None:
    """loopback: Never: 127.0.0.1 is refused, the kernel path still serves the port."""
    w.agent.apply(NET, publication("web", 8080, "10.97.1.2", 80, loopback="Never"))
    w.agent.wait({"net-p": "Applied", "web": "Applied"})
    assert _entry(w, "web")["proxy"] == "off"
    target = w.container("bp-p", "10.97.1.2/24", "10.97.1.1")
    w.serve(target, "--tcp", "80")
    assert "ConnectionRefused" in w.ask(w.node, "tcp", "127.0.0.1", 8080)
    assert w.ask(w.client, "tcp", NODE_IP, 8080) == f"{CLIENT_IP} 80"


def test_forwarding_off_is_served_by_the_proxy(w: World) -> None:
    """No IPv4 forwarding: no IPv4 DNAT element; the proxy on 0.0.0.0 serves the client."""
    w.node.sysctl("net.ipv4.ip_forward", "0")
    try:
        w.agent.apply(NET, publication("web", 8080, "10.97.1.2", 80))
        w.agent.wait({"net-p": "Applied", "web": "Applied"})
        wait_for(
            lambda: "tcp . 8080" not in w.node.run("nft list map ip bridgeport pub_any").stdout,
            what="no IPv4 DNAT element",
        )
        target = w.container("bp-p", "10.97.1.2/24", "10.97.1.1")
        w.serve(target, "--tcp", "80")
        assert w.ask(w.client, "tcp", NODE_IP, 8080) == "10.97.1.1 80"
    finally:
        w.node.sysctl("net.ipv4.ip_forward", "1")


def test_host_process_first_wins(w: World) -> None:
    """A host process on 0.0.0.0:8088: Conflicted/PortInUse, and it still gets its traffic."""
    holder = w.node.popen(
        [
            sys.executable,
            "-c",
            (
                "import socket\n"
                "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                "s.bind(('0.0.0.0', 8088)); s.listen(8); print('ready', flush=True)\n"
                "while True:\n"
                "    c, a = s.accept(); c.sendall(b'host-process\\n'); c.close()\n"
            ),
        ]
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
    w.agent.apply(NET, publication("shadow", 8088, "10.97.1.2", 80))
    state = w.agent.wait({"net-p": "Applied", "shadow": "Conflicted"})
    entry = next(r for r in state["resources"] if r["name"] == "shadow")
    assert entry["reason"] == "PortInUse" and "0.0.0.0:8088" in entry["message"]
    assert f"held by pid {holder.pid} (python" in entry["message"], entry["message"]
    assert "8088" not in w.node.run("nft list map ip bridgeport pub_any").stdout
    assert w.ask(w.client, "tcp", NODE_IP, 8088) == "host-process"


def test_removal_frees_the_port(w: World) -> None:
    """Once the publication is gone another process can bind 127.0.0.1:8089."""
    w.agent.apply(NET, publication("web", 8089, "10.97.1.2", 80))
    w.agent.wait({"net-p": "Applied", "web": "Applied"})
    probe = "import socket; s = socket.socket(); s.bind(('127.0.0.1', 8089)); print('bound')"
    assert "bound" not in w.node.run([sys.executable, "-c", probe], check=False).stdout
    w.agent.apply(NET)
    w.agent.wait({"net-p": "Applied"})
    wait_for(
        lambda: "bound" in w.node.run([sys.executable, "-c", probe], check=False).stdout,
        timeout=5,
        what="port released",
    )
