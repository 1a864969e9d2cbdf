"""Docker and netavark parity: the cases their own integration tests cover, with real packets.

Each runs with br_netfilter on and off (the `world` fixture).

Scenarios:
- dual stack, one publication: target.address + target.address6 publish one host port to both
  of a container's addresses (Docker's plain -p 8080:80 on an IPv6 network)
- dual stack, two publications: one host port, one per family, no conflict
- hostIP 0.0.0.0 and :: are one-family wildcards: they coexist on one port, and a specific
  address of the same family conflicts with its family's wildcard only
- interContainer: false: published ports stay reachable from the network's own containers
  (self and neighbour) through the node's addresses, both families, while direct
  container-to-container traffic stays blocked
- link-local IPv6: the node and a neighbour on the link reach a published port through the
  node's fe80:: address (served by the proxy, as Docker's docker-proxy serves it)
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.builders import network, publication
from tests.harness.node import (
    CLIENT_IP,
    CLIENT_IP6,
    NODE_IP,
    NODE_IP2,
    NODE_IP6,
    World,
)
from tests.netns import Netns, wait_for

pytestmark = pytest.mark.root

NET = network("net-d", "10.95.1.0/24", bridge="bp-d", subnet6="fd00:95::/64")
NO_ICC = network(
    "net-d", "10.95.1.0/24", bridge="bp-d", subnet6="fd00:95::/64", interContainer=False
)
GW, GW6 = "10.95.1.1", "fd00:95::1"


def dual(
    name: str, host_port: int, address: str, address6: str, port: int, **spec: Any
) -> dict[str, Any]:
    doc = publication(name, host_port, address, port, **spec)
    doc["spec"]["target"]["address6"] = address6
    return doc


def aged(doc: dict[str, Any], day: int) -> dict[str, Any]:
    doc["metadata"]["creationTimestamp"] = f"2026-01-{day:02d}T00:00:00Z"
    return doc


def box(w: World, last: int) -> Netns:
    return w.container("bp-d", f"10.95.1.{last}/24", GW, f"fd00:95::{last}/64", GW6)


def v6_ready(w: World, ns: Netns, host: str, port: int, expect: str) -> None:
    """Fresh IPv6 links finish duplicate address detection of their link-local first."""
    wait_for(
        lambda: w.ask(ns, "tcp", host, port, timeout=1) == expect,
        timeout=8,
        what=f"[{host}]:{port} answering {expect!r}",
    )


def test_dual_stack_one_publication(w: World) -> None:
    """One publication, both families: IPv4 and IPv6 clients reach the container's matching
    address and keep their own address; the node's 127.0.0.1 and ::1 are proxied."""
    w.agent.apply(NET, dual("web", 8070, "10.95.1.2", "fd00:95::2", 80))
    state = w.agent.wait({"net-d": "Applied", "web": "Applied"})
    message = next(r["message"] for r in state["resources"] if r["name"] == "web")
    assert "10.95.1.2:80" in message and "[fd00:95::2]:80" in message, message
    target = box(w, 2)
    w.serve(target, "--tcp", "80", "--udp", "80")
    assert w.ask(w.client, "tcp", NODE_IP, 8070) == f"{CLIENT_IP} 80"
    v6_ready(w, w.client, NODE_IP6, 8070, f"{CLIENT_IP6} 80")
    assert w.ask(w.node, "tcp", "127.0.0.1", 8070) == f"{GW} 80"
    assert w.ask(w.node, "tcp", "::1", 8070) == f"{GW6} 80"


def test_dual_stack_two_publications(w: World) -> None:
    """One host port, one publication per family: both Applied, each family to its target."""
    w.agent.apply(
        NET, publication("web4", 8071, "10.95.1.2", 80), publication("web6", 8071, "fd00:95::2", 81)
    )
    w.agent.wait({"net-d": "Applied", "web4": "Applied", "web6": "Applied"})
    target = box(w, 2)
    w.serve(target, "--tcp", "80", "--tcp", "81")
    assert w.ask(w.client, "tcp", NODE_IP, 8071) == f"{CLIENT_IP} 80"
    v6_ready(w, w.client, NODE_IP6, 8071, f"{CLIENT_IP6} 81")
    assert w.ask(w.node, "tcp", "127.0.0.1", 8071) == f"{GW} 80"
    assert w.ask(w.node, "tcp", "::1", 8071) == f"{GW6} 81"


def test_family_wildcards(w: World) -> None:
    """hostIP 0.0.0.0 and :: share a port; a specific IPv4 address loses to 0.0.0.0 only."""
    w.agent.apply(
        NET,
        aged(publication("any4", 8072, "10.95.1.2", 80, hostIP="0.0.0.0"), 1),
        aged(publication("any6", 8072, "fd00:95::2", 81, hostIP="::"), 2),
        aged(publication("one4", 8072, "10.95.1.2", 82, hostIP=NODE_IP2), 3),
    )
    state = w.agent.wait(
        {"net-d": "Applied", "any4": "Applied", "any6": "Applied", "one4": "Conflicted"}
    )
    loser = next(r["message"] for r in state["resources"] if r["name"] == "one4")
    assert "default/any4" in loser, loser
    target = box(w, 2)
    w.serve(target, "--tcp", "80", "--tcp", "81")
    assert w.ask(w.client, "tcp", NODE_IP, 8072) == f"{CLIENT_IP} 80"
    assert w.ask(w.client, "tcp", NODE_IP2, 8072) == f"{CLIENT_IP} 80"
    v6_ready(w, w.client, NODE_IP6, 8072, f"{CLIENT_IP6} 81")


def test_icc_off_keeps_published_ports_reachable_from_inside(w: World) -> None:
    """interContainer: false: a container reaches its own and its neighbour's published
    ports through the node's addresses (IPv4 and IPv6); direct traffic stays blocked."""
    w.agent.apply(
        NO_ICC,
        publication("self", 8073, "10.95.1.2", 80),
        publication("peer", 8074, "10.95.1.3", 80),
        publication("self6", 8077, "fd00:95::2", 80),
        publication("peer6", 8078, "fd00:95::3", 80),
        publication("peer-udp", 8079, "10.95.1.3", 80, protocol="UDP"),
        publication("peer-bound", 8075, "10.95.1.3", 80, hostIP=NODE_IP2),
        # Port ranges live in the icc_proxy_*_range interval sets, single ports in hash sets.
        publication("peer-range", 8090, "10.95.1.3", 8090, hostPortEnd=8091),
        publication("peer-bound-range", 8092, "10.95.1.3", 8092, hostPortEnd=8093, hostIP=NODE_IP2),
    )
    w.agent.wait(
        {
            "net-d": "Applied",
            "self": "Applied",
            "peer": "Applied",
            "self6": "Applied",
            "peer6": "Applied",
            "peer-udp": "Applied",
            "peer-bound": "Applied",
            "peer-range": "Applied",
            "peer-bound-range": "Applied",
        }
    )
    a, b = box(w, 2), box(w, 3)
    w.serve(a, "--tcp", "80", "--udp", "80")
    w.serve(b, "--tcp", "80", "--udp", "80", *(f"--tcp={p}" for p in range(8090, 8094)))
    wait_for(
        lambda: w.node.run("ip -d link show master bp-d").stdout.count("isolated on") == 2,
        timeout=5,
        what="both ports isolated",
    )
    for host in (NODE_IP, GW):
        assert w.ask(a, "tcp", host, 8073).endswith(" 80"), f"self via {host}"
        assert w.ask(a, "tcp", host, 8074).endswith(" 80"), f"neighbour via {host}"
    assert w.ask(a, "udp", NODE_IP, 8079) == f"{GW} 80"
    assert w.ask(a, "tcp", NODE_IP2, 8075) == f"{GW} 80"  # a host-IP publication
    assert w.ask(a, "tcp", NODE_IP, 8075, timeout=1).startswith("ERR")  # not published there
    assert w.ask(a, "tcp", NODE_IP, 8091) == f"{GW} 8091"  # a range, served by the proxy
    assert w.ask(a, "tcp", NODE_IP2, 8093) == f"{GW} 8093"  # a host-IP range
    v6_ready(w, a, NODE_IP6, 8078, f"{GW6} 80")
    assert w.ask(a, "tcp", NODE_IP6, 8077) == f"{GW6} 80"
    assert w.ask(a, "tcp", "10.95.1.3", 80, timeout=1).startswith("ERR")
    assert w.ask(a, "tcp", "fd00:95::3", 80, timeout=1).startswith("ERR")
    assert w.ask(a, "udp", "10.95.1.3", 80, timeout=1).startswith("ERR")
    # Outside clients still take the kernel path and keep their address.
    assert w.ask(w.client, "tcp", NODE_IP, 8074) == f"{CLIENT_IP} 80"


def test_icc_turned_off_at_runtime_keeps_hairpin(w: World) -> None:
    """Turning interContainer off on a live network moves the port's proxy from 127.0.0.1 to
    0.0.0.0 in one sync; hairpin keeps working, the neighbour's port becomes unreachable."""
    w.agent.apply(NET, publication("peer", 8074, "10.95.1.3", 80))
    w.agent.wait({"net-d": "Applied", "peer": "Applied"})
    a, b = box(w, 2), box(w, 3)
    w.serve(b, "--tcp", "80")
    wait_for(
        lambda: w.ask(a, "tcp", NODE_IP, 8074).endswith(" 80"),
        timeout=5,
        what="hairpin with ICC on",
    )
    assert w.ask(a, "tcp", "10.95.1.3", 80).endswith(" 80")
    w.agent.apply(NO_ICC, publication("peer", 8074, "10.95.1.3", 80))
    wait_for(
        lambda: w.node.run("ip -d link show master bp-d").stdout.count("isolated on") == 2,
        timeout=5,
        what="both ports isolated",
    )
    # The ruleset follows the ports within the same reconcile.
    wait_for(
        lambda: w.ask(a, "tcp", NODE_IP, 8074, timeout=1) == f"{GW} 80",
        timeout=8,
        what="hairpin with ICC off",
    )
    assert w.ask(w.node, "tcp", "127.0.0.1", 8074) == f"{GW} 80"
    assert w.ask(a, "tcp", "10.95.1.3", 80, timeout=1).startswith("ERR")


def _link_local(ns: Netns, dev: str = "eth0") -> str:
    """The interface's fe80:: address once duplicate address detection is done."""
    found: list[str] = []

    def ready() -> bool:
        out = ns.run(f"ip -6 -o addr show dev {dev} scope link").stdout
        found[:] = [
            line.split()[3].split("/")[0] for line in out.splitlines() if "tentative" not in line
        ]
        return bool(found)

    wait_for(ready, timeout=8, what=f"link-local address on {dev}")
    return found[0]


def test_link_local_is_served_by_the_proxy(w: World) -> None:
    """[fe80::node%eth0]:port answers from the node itself and from a neighbour on the link
    (link-local sources cannot be forwarded, so Docker leaves them to its proxy)."""
    w.agent.apply(NET, publication("web6", 8076, "fd00:95::2", 80))
    w.agent.wait({"net-d": "Applied", "web6": "Applied"})
    target = box(w, 2)
    w.serve(target, "--tcp", "80")
    v6_ready(w, w.client, NODE_IP6, 8076, f"{CLIENT_IP6} 80")
    node_ll = _link_local(w.node)
    _link_local(w.client)
    assert w.ask(w.node, "tcp", f"{node_ll}%eth0", 8076) == f"{GW6} 80"
    assert w.ask(w.client, "tcp", f"{node_ll}%eth0", 8076) == f"{GW6} 80"
