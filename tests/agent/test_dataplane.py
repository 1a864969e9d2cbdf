"""Real packets through the agent's rules, in throwaway namespaces.

Scenarios:
- a published TCP and UDP port reached from a client; the target sees the client's address
- the node reaching a published port on its own non-loopback address
- a host-IP-bound publication answers on that IP only
- a port range (interval map) and a shifted range (expanded map elements)
- hairpin: a container reaching its own and its neighbour's published port via the node
- egress masquerade: the outside sees the node's address
- isolation between two networks; two Shared networks may talk
- an internal network has no egress and no ingress
- interContainer: false stops neighbours; true lets them talk
- direct routed access: unpublished container ports refused, published ones reachable
- IPv6 publication end to end
- a UDP flow follows a retargeted publication at once (stale conntrack entries dropped)
- deleting a resource stops its traffic and removes its bridge
- drift repair: a flushed table and a deleted bridge come back on resync
- invalid input: reported per resource, everything else still programmed, agent alive
- restarting the agent keeps an established TCP connection working
"""

from __future__ import annotations

import subprocess
import sys
import time

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
from tests.netns import wait_for

pytestmark = pytest.mark.root

NET = network("net-a", "10.99.1.0/24", bridge="bp-a", subnet6="fd00:a::/64")
NET_B = network("net-b", "10.99.2.0/24", bridge="bp-b")


def test_published_tcp_and_udp_preserve_client_address(w: World) -> None:
    """Client -> node:8080/tcp and :8053/udp reach the container, which sees the client IP."""
    w.agent.apply(
        NET,
        publication("web", 8080, "10.99.1.2", 80),
        publication("dns", 8053, "10.99.1.2", 53, protocol="UDP"),
    )
    w.agent.wait({"net-a": "Applied", "web": "Applied", "dns": "Applied"})
    box = w.container("bp-a", "10.99.1.2/24", "10.99.1.1")
    w.serve(box, "--tcp", "80", "--udp", "53")
    assert w.ask(w.client, "tcp", NODE_IP, 8080) == f"{CLIENT_IP} 80"
    assert w.ask(w.client, "udp", NODE_IP, 8053) == f"{CLIENT_IP} 53"
    assert w.ask(w.client, "tcp", NODE_IP, 8081).startswith("ERR")


def test_node_reaches_its_own_address(w: World) -> None:
    """The node's own traffic to its non-loopback address is DNATed by the output chain."""
    w.agent.apply(NET, publication("web", 8080, "10.99.1.2", 80))
    w.agent.wait({"net-a": "Applied", "web": "Applied"})
    box = w.container("bp-a", "10.99.1.2/24", "10.99.1.1")
    w.serve(box, "--tcp", "80")
    assert w.ask(w.node, "tcp", NODE_IP, 8080).endswith(" 80")


def test_host_ip_binding_answers_on_that_ip_only(w: World) -> None:
    """hostIP 192.0.2.11 publishes there; the node's other address does not answer."""
    w.agent.apply(
        NET,
        publication("bound", 8082, "10.99.1.2", 80, hostIP=NODE_IP2),
        publication("elsewhere", 8083, "10.99.1.2", 80, hostIP="203.0.113.7"),
    )
    state = w.agent.wait({"net-a": "Applied", "bound": "Applied", "elsewhere": "Inactive"})
    assert "not an address of node" in _entry(state, "elsewhere")["message"]
    box = w.container("bp-a", "10.99.1.2/24", "10.99.1.1")
    w.serve(box, "--tcp", "80")
    assert w.ask(w.client, "tcp", NODE_IP2, 8082) == f"{CLIENT_IP} 80"
    assert w.ask(w.client, "tcp", NODE_IP, 8082, timeout=1).startswith("ERR")


def test_port_ranges(w: World) -> None:
    """9000-9002 keeps its ports (interval map); 9100-9101 -> 7000-7001 shifts them 1:1."""
    w.agent.apply(
        NET,
        publication("same", 9000, "10.99.1.2", 9000, hostPortEnd=9002),
        publication("shift", 9100, "10.99.1.2", 7000, hostPortEnd=9101),
    )
    w.agent.wait({"net-a": "Applied", "same": "Applied", "shift": "Applied"})
    box = w.container("bp-a", "10.99.1.2/24", "10.99.1.1")
    w.serve(box, *[a for p in (9000, 9001, 9002, 7000, 7001) for a in ("--tcp", str(p))])
    for host_port, port in ((9000, 9000), (9002, 9002), (9100, 7000), (9101, 7001)):
        assert w.ask(w.client, "tcp", NODE_IP, host_port) == f"{CLIENT_IP} {port}"
    assert w.ask(w.client, "tcp", NODE_IP, 9003, timeout=1).startswith("ERR")


def test_hairpin_self_and_neighbour(w: World) -> None:
    """A container reaches its own and its neighbour's published port via the node address."""
    w.agent.apply(
        NET, publication("self", 8080, "10.99.1.2", 80), publication("peer", 8090, "10.99.1.3", 80)
    )
    w.agent.wait({"net-a": "Applied", "self": "Applied", "peer": "Applied"})
    a = w.container("bp-a", "10.99.1.2/24", "10.99.1.1")
    b = w.container("bp-a", "10.99.1.3/24", "10.99.1.1")
    w.serve(a, "--tcp", "80")
    w.serve(b, "--tcp", "80")
    # Ports get hairpin mode as they are attached (netlink watch).
    wait_for(lambda: w.ask(a, "tcp", NODE_IP, 8080).endswith(" 80"), timeout=5, what="self hairpin")
    assert w.ask(a, "tcp", NODE_IP, 8090).endswith(" 80")


def test_egress_is_masqueraded(w: World) -> None:
    """A container talking to the outside appears as the node's address."""
    w.agent.apply(NET)
    w.agent.wait({"net-a": "Applied"})
    box = w.container("bp-a", "10.99.1.2/24", "10.99.1.1")
    w.serve(w.client, "--tcp", "5000")
    assert w.ask(box, "tcp", CLIENT_IP, 5000) == f"{NODE_IP} 5000"


def test_no_masquerade_network_routes_plainly(w: World) -> None:
    """masquerade: false leaves the container's own source address (routed setups)."""
    w.agent.apply(network("net-a", "10.99.1.0/24", bridge="bp-a", masquerade=False))
    w.agent.wait({"net-a": "Applied"})
    box = w.container("bp-a", "10.99.1.2/24", "10.99.1.1")
    w.client.run(f"ip route add 10.99.1.0/24 via {NODE_IP}")
    try:
        w.serve(w.client, "--tcp", "5000")
        assert w.ask(box, "tcp", CLIENT_IP, 5000) == "10.99.1.2 5000"
    finally:
        w.client.run("ip route del 10.99.1.0/24", check=False)


def test_isolation_and_shared(w: World) -> None:
    """Two Isolated networks cannot talk; two Shared ones can."""
    w.agent.apply(NET, NET_B)
    w.agent.wait({"net-a": "Applied", "net-b": "Applied"})
    a = w.container("bp-a", "10.99.1.2/24", "10.99.1.1")
    b = w.container("bp-b", "10.99.2.2/24", "10.99.2.1")
    w.serve(b, "--tcp", "80")
    assert w.ask(a, "tcp", "10.99.2.2", 80, timeout=1).startswith("ERR")
    shared = [
        network("net-a", "10.99.1.0/24", bridge="bp-a", isolation="Shared"),
        network("net-b", "10.99.2.0/24", bridge="bp-b", isolation="Shared"),
    ]
    w.agent.apply(*shared)
    wait_for(
        lambda: w.ask(a, "tcp", "10.99.2.2", 80).endswith(" 80"),
        timeout=5,
        what="shared networks talk",
    )


def test_internal_network_has_no_egress_or_ingress(w: World) -> None:
    """internal: true keeps traffic on the bridge; publications into it are inactive."""
    w.agent.apply(
        network("net-i", "10.99.3.0/24", bridge="bp-i", internal=True),
        publication("into-internal", 8085, "10.99.3.2", 80),
    )
    state = w.agent.wait({"net-i": "Applied", "into-internal": "Inactive"})
    assert _entry(state, "into-internal")["reason"] == "InternalNetwork"
    box = w.container("bp-i", "10.99.3.2/24", "10.99.3.1")
    peer = w.container("bp-i", "10.99.3.3/24", "10.99.3.1")
    w.serve(w.client, "--tcp", "5000")
    w.serve(box, "--tcp", "80")
    assert w.ask(box, "tcp", CLIENT_IP, 5000, timeout=1).startswith("ERR")
    assert w.ask(w.client, "tcp", NODE_IP, 8085, timeout=1).startswith("ERR")
    assert w.ask(peer, "tcp", "10.99.3.2", 80).endswith(" 80")


def test_inter_container_off_and_on(w: World) -> None:
    """interContainer: false isolates neighbours on one bridge; true lets them talk."""
    w.agent.apply(network("net-a", "10.99.1.0/24", bridge="bp-a", interContainer=False))
    w.agent.wait({"net-a": "Applied"})
    a = w.container("bp-a", "10.99.1.2/24", "10.99.1.1")
    b = w.container("bp-a", "10.99.1.3/24", "10.99.1.1")
    w.serve(b, "--tcp", "80")
    # The agent isolates ports as they are attached (netlink watch).
    wait_for(
        lambda: w.node.run("ip -d link show master bp-a").stdout.count("isolated on") == 2,
        timeout=5,
        what="both ports isolated",
    )
    assert w.ask(a, "tcp", "10.99.1.3", 80, timeout=1).startswith("ERR")
    w.agent.apply(NET)
    wait_for(
        lambda: w.ask(a, "tcp", "10.99.1.3", 80).endswith(" 80"),
        timeout=5,
        what="neighbours talk again",
    )


def test_direct_access_only_through_published_ports(w: World) -> None:
    """Routed straight to the container, every port is refused; the published host port works."""
    w.agent.apply(NET, publication("web", 8080, "10.99.1.2", 80))
    w.agent.wait({"net-a": "Applied", "web": "Applied"})
    box = w.container("bp-a", "10.99.1.2/24", "10.99.1.1")
    w.serve(box, "--tcp", "80", "--tcp", "22")
    w.client.run(f"ip route add 10.99.1.0/24 via {NODE_IP}")
    try:
        assert w.ask(w.client, "tcp", "10.99.1.2", 22, timeout=1).startswith("ERR")
        assert w.ask(w.client, "tcp", "10.99.1.2", 80, timeout=1).startswith("ERR")
        assert w.ask(w.client, "tcp", NODE_IP, 8080) == f"{CLIENT_IP} 80"
    finally:
        w.client.run("ip route del 10.99.1.0/24", check=False)


def test_ipv6_publication(w: World) -> None:
    """[fd00:c::1]:8086 reaches an IPv6 container, which sees the client's IPv6 address."""
    w.agent.apply(NET, publication("web6", 8086, "fd00:a::2", 80))
    w.agent.wait({"net-a": "Applied", "web6": "Applied"})
    box = w.container("bp-a", "10.99.1.2/24", "10.99.1.1", "fd00:a::2/64", "fd00:a::1")
    w.serve(box, "--tcp", "80")
    # Fresh IPv6 links finish duplicate address detection of their link-local first.
    wait_for(
        lambda: w.ask(w.client, "tcp", NODE_IP6, 8086, timeout=1) == f"{CLIENT_IP6} 80",
        timeout=8,
        what="IPv6 published port",
    )


def test_udp_flow_follows_a_retarget(w: World) -> None:
    """The same client flow (fixed source port) reaches the new target right after a change."""
    w.agent.apply(NET, publication("dns", 8053, "10.99.1.2", 53, protocol="UDP"))
    w.agent.wait({"net-a": "Applied", "dns": "Applied"})
    one = w.container("bp-a", "10.99.1.2/24", "10.99.1.1")
    two = w.container("bp-a", "10.99.1.3/24", "10.99.1.1")
    w.serve(one, "--udp", "53")
    w.serve(two, "--udp", "54")
    assert w.ask(w.client, "udp", NODE_IP, 8053, sport=40053) == f"{CLIENT_IP} 53"
    w.agent.apply(NET, publication("dns", 8053, "10.99.1.3", 54, protocol="UDP"))
    wait_for(
        lambda: "10.99.1.3" in w.node.run("nft list map ip bridgeport pub_any").stdout,
        what="retargeted map element",
    )
    assert w.ask(w.client, "udp", NODE_IP, 8053, sport=40053) == f"{CLIENT_IP} 54"


def test_delete_stops_traffic_and_removes_bridge(w: World) -> None:
    """Removing a publication stops its port; removing the network removes its bridge."""
    w.agent.apply(NET, publication("web", 8080, "10.99.1.2", 80))
    w.agent.wait({"net-a": "Applied", "web": "Applied"})
    box = w.container("bp-a", "10.99.1.2/24", "10.99.1.1")
    w.serve(box, "--tcp", "80")
    assert w.ask(w.client, "tcp", NODE_IP, 8080) == f"{CLIENT_IP} 80"
    w.agent.apply(NET)
    w.agent.wait({"net-a": "Applied"})
    assert w.ask(w.client, "tcp", NODE_IP, 8080, timeout=1).startswith("ERR")
    w.agent.apply()
    w.agent.wait({})
    wait_for(
        lambda: w.node.run("ip link show bp-a", check=False).returncode != 0, what="bridge removed"
    )


def test_drift_is_repaired(w: World) -> None:
    """Someone flushes our table or deletes our bridge: the periodic resync restores both."""
    w.agent.apply(NET, publication("web", 8080, "10.99.1.2", 80))
    w.agent.wait({"net-a": "Applied", "web": "Applied"})
    w.node.run("nft flush table ip bridgeport")
    w.node.run("ip link del bp-a")
    wait_for(
        lambda: w.node.run("ip link show bp-a", check=False).returncode == 0,
        timeout=5,
        what="bridge recreated",
    )
    wait_for(
        lambda: (
            "pub_any" in w.node.run("nft list table ip bridgeport").stdout
            and "tcp . 8080" in w.node.run("nft list map ip bridgeport pub_any").stdout
            and "jump publish" in w.node.run("nft list chain ip bridgeport prerouting").stdout
        ),
        timeout=5,
        what="table restored",
    )
    box = w.container("bp-a", "10.99.1.2/24", "10.99.1.1")
    w.serve(box, "--tcp", "80")
    assert w.ask(w.client, "tcp", NODE_IP, 8080) == f"{CLIENT_IP} 80"


def test_invalid_input_is_reported_and_isolated(w: World) -> None:
    """Bad documents become Invalid/Conflicted entries; good ones are still programmed."""
    bad_port = publication("bad-port", 8080, "10.99.1.2", 70000)
    unknown_net = publication("no-net", 8081, "10.99.1.2", 80, network="missing")
    clash = publication("clash", 8080, "10.99.1.9", 80)
    good = publication("good", 8080, "10.99.1.2", 80)
    w.agent.apply(NET, good, bad_port, unknown_net, {"kind": "Nonsense"})
    (w.agent.resources / "broken.yaml").write_text("kind: [unclosed\n")
    state = w.agent.wait(
        {"net-a": "Applied", "good": "Applied", "bad-port": "Invalid", "no-net": "Invalid"}
    )
    assert _entry(state, "bad-port")["message"] == (
        "PortPublication default/bad-port: spec.target.port: 70000 is not a port (1-65535)"
    )
    assert "BridgeNetwork 'missing' does not exist" in _entry(state, "no-net")["message"]
    assert any("broken.yaml" in e for e in state["errors"])
    assert any("Nonsense" in e for e in state["errors"])
    good["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    clash["metadata"]["creationTimestamp"] = "2026-01-02T00:00:00Z"  # younger: loses
    w.agent.apply(NET, good, clash, file="b.yaml")
    state = w.agent.wait({"net-a": "Applied", "good": "Applied", "clash": "Conflicted"})
    assert "default/good" in _entry(state, "clash")["message"]
    box = w.container("bp-a", "10.99.1.2/24", "10.99.1.1")
    w.serve(box, "--tcp", "80")
    assert w.ask(w.client, "tcp", NODE_IP, 8080) == f"{CLIENT_IP} 80"
    assert w.agent.alive()


def test_restart_keeps_established_connection(w: World) -> None:
    """SIGTERM leaves the kernel state; a live TCP connection survives the agent's restart."""
    w.agent.apply(NET, publication("echo", 8087, "10.99.1.2", 7))
    w.agent.wait({"net-a": "Applied", "echo": "Applied"})
    box = w.container("bp-a", "10.99.1.2/24", "10.99.1.1")
    w.serve(box, "--tcp", "7", "--echo")
    conn = w.client.popen(
        [sys.executable, "tests/tools/peer_client.py", "hold", NODE_IP, "8087", "5"],
        stdin=subprocess.PIPE,
    )
    assert conn.stdin is not None and conn.stdout is not None
    conn.stdin.write("one\n")
    conn.stdin.flush()
    assert conn.stdout.readline().strip() == "one"
    digest = w.agent.state()["tableDigest"]
    w.agent.stop()
    assert "dnat" in w.node.run("nft list chain ip bridgeport publish").stdout
    w.agent.start()
    wait_for(
        lambda: (
            w.agent.state().get("tableDigest") == digest
            and w.agent.state().get("lastSync") is not None
        ),
        what="agent back",
    )
    time.sleep(1.2)
    conn.stdin.write("two\n")
    conn.stdin.flush()
    assert conn.stdout.readline().strip() == "two"
    conn.stdin.close()
    conn.wait(5)


def _entry(state: dict[str, object], name: str) -> dict[str, str]:
    for r in state["resources"]:  # type: ignore[attr-defined]
        if r["name"] == name:
            return dict(r)
    raise AssertionError(f"{name} not in state")
