"""No publication takes a port a host process holds, whatever `loopback` says (issue 15).

Real agent in a node namespace, real host daemons (tests/tools/host_listener.py), real packets
from a client namespace. Scenarios, each the way a tenant would try it:
- a daemon on 0.0.0.0:P (TCP) and a publication with loopback: Never: Conflicted/PortInUse
  naming the daemon's pid and command; outside clients still reach the daemon
- the same daemon and a publication on hostIP <node address> (Auto): the same
- a daemon only on one node address and a wildcard publication: the same
- UDP: a daemon on 0.0.0.0:P/udp and a UDP publication with loopback: Never: the same
- daemons that start after a publication is Applied get EADDRINUSE, for a wildcard and a
  specific host IP, IPv4 and IPv6, TCP and UDP, and every port of a range; the publication keeps
  its traffic; once it is deleted the port is free
- a reserved port (--reserved-ports) is Conflicted/ReservedPort and never DNATed
"""

from __future__ import annotations

import subprocess

import pytest

from tests.builders import network, publication
from tests.harness.node import CLIENT_IP, NODE_IP, NODE_IP2, NODE_IP6, World
from tests.netns import wait_for

pytestmark = pytest.mark.root

NET = network("net-c", "10.96.1.0/24", bridge="bp-c", subnet6="fd00:96::/64")
TARGET, TARGET6 = "10.96.1.2", "fd00:96::2"


def daemon(w: World, mode: str, host: str, port: int, end: int = 0) -> subprocess.Popen[str]:
    proc = w.node.popen(
        [*w.node.interpreter("host_listener.py"), mode, host, str(port), str(end or port)]
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def try_daemon(w: World, mode: str, host: str, port: int, end: int = 0) -> str:
    """What a daemon starting now gets: 'ready' or 'ERR EADDRINUSE'."""
    proc = w.node.popen(
        [*w.node.interpreter("host_listener.py"), mode, host, str(port), str(end or port)]
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    proc.terminate()
    proc.wait(5)
    return line


def conflicted(w: World, name: str, holder: subprocess.Popen[str]) -> str:
    state = w.agent.wait({"net-c": "Applied", name: "Conflicted"})
    entry = next(r for r in state["resources"] if r["name"] == name)
    assert entry["reason"] == "PortInUse", entry
    assert f"pid {holder.pid} (python" in entry["message"], entry["message"]
    return str(entry["message"])


def no_dnat(w: World, port: int) -> None:
    for family, table_map in (("ip", "pub_any"), ("ip", "pub_host")):
        assert (
            f" . {port} " not in w.node.run(f"nft list map {family} bridgeport {table_map}").stdout
        )


def test_wildcard_daemon_beats_never(w: World) -> None:
    holder = daemon(w, "tcp", "0.0.0.0", 8101)
    w.agent.apply(NET, publication("never", 8101, TARGET, 80, loopback="Never"))
    assert "0.0.0.0:8101/TCP is already in use" in conflicted(w, "never", holder)
    no_dnat(w, 8101)
    assert w.ask(w.client, "tcp", NODE_IP, 8101) == "host-process"


def test_wildcard_daemon_beats_a_host_ip(w: World) -> None:
    """The realistic attack: hostIP <node address> to take sshd there."""
    holder = daemon(w, "tcp", "0.0.0.0", 8102)
    w.agent.apply(NET, publication("sshd", 8102, TARGET, 80, hostIP=NODE_IP))
    assert f"{NODE_IP}:8102/TCP is already in use" in conflicted(w, "sshd", holder)
    no_dnat(w, 8102)
    assert w.ask(w.client, "tcp", NODE_IP, 8102) == "host-process"


def test_specific_daemon_beats_a_wildcard(w: World) -> None:
    holder = daemon(w, "tcp", NODE_IP2, 8103)
    w.agent.apply(NET, publication("wild", 8103, TARGET, 80, loopback="Never"))
    conflicted(w, "wild", holder)
    no_dnat(w, 8103)
    assert w.ask(w.client, "tcp", NODE_IP2, 8103) == "host-process"


def test_udp_daemon_beats_never(w: World) -> None:
    holder = daemon(w, "udp", "0.0.0.0", 8104)
    w.agent.apply(NET, publication("dns", 8104, TARGET, 53, protocol="UDP", loopback="Never"))
    conflicted(w, "dns", holder)
    no_dnat(w, 8104)
    assert w.ask(w.client, "udp", NODE_IP, 8104) == "host-process"


def test_later_daemons_get_eaddrinuse(w: World) -> None:
    w.agent.apply(
        NET,
        publication("wild", 8110, TARGET, 80, loopback="Never"),
        publication("auto", 8111, TARGET, 80),
        publication("bound", 8112, TARGET, 80, hostIP=NODE_IP),
        publication("udp", 8113, TARGET, 53, protocol="UDP", loopback="Never"),
        publication("range", 8120, TARGET, 8120, hostPortEnd=8129, loopback="Never"),
        publication("six", 8114, TARGET6, 80, loopback="Never"),
    )
    w.agent.wait(
        {
            "net-c": "Applied",
            "wild": "Applied",
            "auto": "Applied",
            "bound": "Applied",
            "udp": "Applied",
            "range": "Applied",
            "six": "Applied",
        }
    )
    target = w.container("bp-c", f"{TARGET}/24", "10.96.1.1", f"{TARGET6}/64", "fd00:96::1")
    w.serve(target, "--tcp", "80", "--udp", "53")
    for mode, host, port, end in [
        ("tcp", "0.0.0.0", 8110, 0),
        ("tcp", NODE_IP, 8110, 0),
        ("tcp", NODE_IP2, 8111, 0),
        ("tcp", "127.0.0.1", 8111, 0),
        ("tcp", NODE_IP, 8112, 0),
        ("tcp", "0.0.0.0", 8112, 0),
        ("udp", NODE_IP, 8113, 0),
        ("udp", "0.0.0.0", 8113, 0),
        ("tcp", NODE_IP, 8120, 0),
        ("tcp", NODE_IP, 8129, 0),
        ("tcp", "0.0.0.0", 8125, 0),
        ("tcp", "::", 8114, 0),
        ("tcp", NODE_IP6, 8114, 0),
    ]:
        assert try_daemon(w, mode, host, port, end) == "ERR EADDRINUSE", (mode, host, port)
    # The publications keep their traffic.
    assert w.ask(w.client, "tcp", NODE_IP, 8110) == f"{CLIENT_IP} 80"
    assert w.ask(w.client, "tcp", NODE_IP2, 8111) == f"{CLIENT_IP} 80"
    assert w.ask(w.client, "udp", NODE_IP, 8113) == f"{CLIENT_IP} 53"
    # A port of another family or protocol is not ours to hold.
    assert try_daemon(w, "udp", "0.0.0.0", 8110) == "ready"
    assert try_daemon(w, "tcp", "::", 8110) == "ready"
    w.agent.apply(NET)
    w.agent.wait({"net-c": "Applied"})
    wait_for(
        lambda: try_daemon(w, "tcp", NODE_IP, 8110) == "ready", timeout=10, what="claim released"
    )
    assert try_daemon(w, "tcp", "0.0.0.0", 8120, 8129) == "ready"


def test_reserved_port(w: World) -> None:
    """The default list has 22; the agent's own ports are always in it."""
    w.agent.apply(
        NET,
        publication("ssh", 22, TARGET, 22, loopback="Never"),
        publication("metrics", 9102, TARGET, 80),
    )
    state = w.agent.wait({"net-c": "Applied", "ssh": "Conflicted", "metrics": "Conflicted"})
    reasons = {r["name"]: r["reason"] for r in state["resources"]}
    assert reasons == {"net-c": "Programmed", "ssh": "ReservedPort", "metrics": "ReservedPort"}
    no_dnat(w, 22)
    assert try_daemon(w, "tcp", "0.0.0.0", 22) == "ready"
