"""Docker 28/29's bridge-driver options (issue 13), with real packets.

Scenarios:
- hostBinding: a publication without hostIP answers only on the network's binding address;
  a 127.0.0.1 binding answers on the node's loopback only, not from outside
- gatewayMode routed: a client routing to the container reaches its published port (and ping),
  nothing else; the host port is not DNATed; egress keeps the container's address; the IPv6
  side (gatewayMode6 nat) is still NATed
- gatewayMode6 routed on its own: the IPv6 container port opens, IPv4 stays NATed and closed
- gatewayMode nat-unprotected: every container port is open to direct routing, published ports
  still DNAT, another bridge stays isolated
- gatewayMode isolated: the bridge has no IPv4 address; containers on it still talk
- trustedInterfaces: a peer behind a trusted node interface reaches any container port
  directly; the untrusted client does not
- egressAddress / egressAddress6: the outside sees the chosen node address (not the one
  masquerade picks); an address the node lacks is reported inactive and masquerade is used
- loopback: Kernel: the node's 127.0.0.1:port reaches the container by kernel DNAT (source
  masqueraded to the bridge address), no proxy listens on 127.0.0.1, ::1 still answers
  through the proxy; route_localnet is set on that bridge only; a container cannot reach the
  node's loopback services through it (raw drop, with a positive control); a client sending
  to 127.0.0.1 from outside gets nothing
- accept mark: the README's worked example (an administrator's own table at priority
  filter - 10 marks one flow) opens it only once the agent runs with --accept-fwmark
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

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
from tests.netns import Netns, netns, veth, wait_for

pytestmark = pytest.mark.root


def test_host_binding(w: World) -> None:
    """hostBinding 192.0.2.11 / 127.0.0.1 is the hostIP of publications that name none."""
    w.agent.apply(
        network("pub", "10.98.1.0/24", bridge="bp-pub", hostBinding=NODE_IP2),
        network("loc", "10.98.2.0/24", bridge="bp-loc", hostBinding="127.0.0.1"),
        publication("web", 8080, "10.98.1.2", 80),
        publication("admin", 9000, "10.98.2.2", 80),
    )
    w.agent.wait({"pub": "Applied", "loc": "Applied", "web": "Applied", "admin": "Applied"})
    web = w.container("bp-pub", "10.98.1.2/24", "10.98.1.1")
    admin = w.container("bp-loc", "10.98.2.2/24", "10.98.2.1")
    w.serve(web, "--tcp", "80")
    w.serve(admin, "--tcp", "80")
    assert w.ask(w.client, "tcp", NODE_IP2, 8080) == f"{CLIENT_IP} 80"
    assert w.ask(w.client, "tcp", NODE_IP, 8080, timeout=1).startswith("ERR")
    assert w.ask(w.node, "tcp", "127.0.0.1", 9000).endswith(" 80")
    assert w.ask(w.client, "tcp", NODE_IP, 9000, timeout=1).startswith("ERR")
    assert w.ask(w.node, "tcp", NODE_IP, 9000, timeout=1).startswith("ERR")


@contextmanager
def routes(w: World, *subnets: str) -> Iterator[None]:
    """The client routes these container subnets via the node (a routed setup)."""
    added = []
    try:
        for subnet in subnets:
            via = NODE_IP6 if ":" in subnet else NODE_IP
            w.client.run(f"ip route add {subnet} via {via}")
            added.append(subnet)
        yield
    finally:
        for subnet in added:
            w.client.run(f"ip route del {subnet}", check=False)


# One ICMP echo over a raw socket (no ping binary on minimal machines): exit 0 on a reply.
ECHO = """
import os, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(1)
# A fresh identifier per probe: conntrack keys ICMP on it, so an earlier echo's entry (still
# "established") cannot let this one through.
ident = (os.getpid() & 0xFFFF).to_bytes(2, "big")
body = bytes([8, 0, 0, 0]) + ident + bytes([0, 1]) + b"bridgeport"
total = sum(body[i] << 8 | body[i + 1] for i in range(0, len(body), 2))
total = (total >> 16) + (total & 0xFFFF)
check = ~(total + (total >> 16)) & 0xFFFF
s.sendto(body[:2] + check.to_bytes(2, "big") + body[4:], (sys.argv[1], 0))
deadline = time.monotonic() + 1
while time.monotonic() < deadline:
    try:
        packet, (source, _) = s.recvfrom(2048)
    except TimeoutError:
        break
    if source == sys.argv[1] and packet[(packet[0] & 15) * 4] == 0:
        sys.exit(0)
sys.exit(1)
"""


def pings(ns: Netns, address: str) -> bool:
    return ns.run([sys.executable, "-c", ECHO, address], check=False).returncode == 0


def test_gateway_mode_routed(w: World) -> None:
    """routed: no NAT; only the published container port (and ICMP) is reachable directly."""
    w.agent.apply(
        network(
            "rt", "10.98.3.0/24", bridge="bp-rt", subnet6="fd00:98:3::/64", gatewayMode="routed"
        ),
        publication("web", 8080, "10.98.3.2", 80),
        publication("web6", 8086, "fd00:98:3::2", 80),
        # Container port ranges go to the routed_range interval set, single ports to routed.
        publication("span", 9000, "10.98.3.2", 9000, hostPortEnd=9001),
    )
    state = w.agent.wait({"rt": "Applied", "web": "Applied", "web6": "Applied", "span": "Applied"})
    assert "ignored" in next(r for r in state["resources"] if r["name"] == "web")["message"]
    box = w.container("bp-rt", "10.98.3.2/24", "10.98.3.1", "fd00:98:3::2/64", "fd00:98:3::1")
    w.serve(box, "--tcp", "80", "--tcp", "22", "--tcp", "9001", "--tcp", "9002")
    w.serve(w.client, "--tcp", "5000")
    with routes(w, "10.98.3.0/24"):
        assert w.ask(w.client, "tcp", "10.98.3.2", 80) == f"{CLIENT_IP} 80"
        assert w.ask(w.client, "tcp", "10.98.3.2", 9001) == f"{CLIENT_IP} 9001"
        assert w.ask(w.client, "tcp", "10.98.3.2", 9002, timeout=1).startswith("ERR")
        assert w.ask(w.client, "tcp", "10.98.3.2", 22, timeout=1).startswith("ERR")
        assert pings(w.client, "10.98.3.2")
        assert w.ask(w.client, "tcp", NODE_IP, 8080, timeout=1).startswith("ERR")
        assert w.ask(box, "tcp", CLIENT_IP, 5000) == "10.98.3.2 5000"  # not masqueraded
    # The IPv6 side kept gatewayMode6 nat: published through the node, masqueraded.
    wait_for(
        lambda: w.ask(w.client, "tcp", NODE_IP6, 8086, timeout=1) == f"{CLIENT_IP6} 80",
        timeout=8,
        what="IPv6 published port",
    )


def test_gateway_mode6_routed_alone(w: World) -> None:
    """gatewayMode6 routed, gatewayMode nat: each family follows its own mode."""
    w.agent.apply(
        network(
            "rt", "10.98.3.0/24", bridge="bp-rt", subnet6="fd00:98:3::/64", gatewayMode6="routed"
        ),
        publication("web", 8080, "10.98.3.2", 80),
        publication("web6", 8086, "fd00:98:3::2", 80),
    )
    w.agent.wait({"rt": "Applied", "web": "Applied", "web6": "Applied"})
    box = w.container("bp-rt", "10.98.3.2/24", "10.98.3.1", "fd00:98:3::2/64", "fd00:98:3::1")
    w.serve(box, "--tcp", "80", "--tcp", "22")
    with routes(w, "10.98.3.0/24", "fd00:98:3::/64"):
        wait_for(
            lambda: w.ask(w.client, "tcp", "fd00:98:3::2", 80, timeout=1) == f"{CLIENT_IP6} 80",
            timeout=8,
            what="routed IPv6 container port",
        )
        assert w.ask(w.client, "tcp", "fd00:98:3::2", 22, timeout=1).startswith("ERR")
        assert w.ask(w.client, "tcp", NODE_IP6, 8086, timeout=1).startswith("ERR")
        assert w.ask(w.client, "tcp", "10.98.3.2", 80, timeout=1).startswith("ERR")
        assert not pings(w.client, "10.98.3.2")  # nat drops direct routed access, ICMP too
        assert w.ask(w.client, "tcp", NODE_IP, 8080) == f"{CLIENT_IP} 80"


def test_gateway_mode_nat_unprotected(w: World) -> None:
    """nat-unprotected: direct routed access to any port; other bridges stay isolated."""
    w.agent.apply(
        network("un", "10.98.4.0/24", bridge="bp-un", gatewayMode="nat-unprotected"),
        network("other", "10.98.5.0/24", bridge="bp-other"),
        publication("web", 8080, "10.98.4.2", 80),
    )
    w.agent.wait({"un": "Applied", "other": "Applied", "web": "Applied"})
    box = w.container("bp-un", "10.98.4.2/24", "10.98.4.1")
    neighbour = w.container("bp-other", "10.98.5.2/24", "10.98.5.1")
    w.serve(box, "--tcp", "80", "--tcp", "22")
    w.serve(w.client, "--tcp", "5000")
    with routes(w, "10.98.4.0/24"):
        assert w.ask(w.client, "tcp", "10.98.4.2", 22) == f"{CLIENT_IP} 22"
        assert w.ask(w.client, "tcp", NODE_IP, 8080) == f"{CLIENT_IP} 80"
        assert w.ask(neighbour, "tcp", "10.98.4.2", 22, timeout=1).startswith("ERR")
        assert w.ask(box, "tcp", CLIENT_IP, 5000) == f"{NODE_IP} 5000"  # still masqueraded


def test_gateway_mode_isolated(w: World) -> None:
    """isolated (internal only): no IPv4 address on the bridge; neighbours still talk."""
    w.agent.apply(
        network("iso", "10.98.6.0/24", bridge="bp-iso", internal=True, gatewayMode="isolated")
    )
    w.agent.wait({"iso": "Applied"})
    assert "inet " not in w.node.run("ip -4 addr show dev bp-iso").stdout
    a = w.container("bp-iso", "10.98.6.2/24", "10.98.6.1")
    b = w.container("bp-iso", "10.98.6.3/24", "10.98.6.1")
    w.serve(b, "--tcp", "80")
    assert w.ask(a, "tcp", "10.98.6.3", 80).endswith(" 80")
    assert w.ask(w.node, "tcp", "10.98.6.3", 80, timeout=1).startswith("ERR")


def test_trusted_interfaces(w: World) -> None:
    """Traffic arriving on trusted interface tr0 may reach container addresses directly."""
    w.agent.apply(network("tr", "10.98.7.0/24", bridge="bp-tr", trustedInterfaces=["tr0"]))
    w.agent.wait({"tr": "Applied"})
    box = w.container("bp-tr", "10.98.7.2/24", "10.98.7.1")
    w.serve(box, "--tcp", "22")
    with netns("bpt") as peer:
        veth(peer, "eth0", w.node, "tr0")
        w.node.run("ip addr add 198.18.0.1/24 dev tr0")
        peer.run("ip addr add 198.18.0.2/24 dev eth0")
        peer.run("ip route add 10.98.7.0/24 via 198.18.0.1")
        assert w.ask(peer, "tcp", "10.98.7.2", 22) == "198.18.0.2 22"
        with routes(w, "10.98.7.0/24"):
            assert w.ask(w.client, "tcp", "10.98.7.2", 22, timeout=1).startswith("ERR")


# The README's worked example ("Overriding bridgeport"), verbatim but for the address.
ADMIN_TABLE = """
table inet admin {
    chain forward {
        type filter hook forward priority filter - 10; policy accept;
        iifname "eth0" ip daddr 10.98.8.2 tcp dport 22 meta mark set meta mark | 0x10000
    }
}
"""


def test_accept_mark_lets_an_admin_override(w: World) -> None:
    """Our drop holds against a mark until the agent is told to honour it."""
    w.agent.apply(network("mk", "10.98.8.0/24", bridge="bp-mk"))
    w.agent.wait({"mk": "Applied"})
    box = w.container("bp-mk", "10.98.8.2/24", "10.98.8.1")
    w.serve(box, "--tcp", "22", "--tcp", "23")
    w.node.run(["nft", "-f", "-"], input=ADMIN_TABLE)
    try:
        with routes(w, "10.98.8.0/24"):
            assert w.ask(w.client, "tcp", "10.98.8.2", 22, timeout=1).startswith("ERR")
            w.agent.stop()
            w.agent.start("--accept-fwmark", "0x10000/0x10000")
            wait_for(
                lambda: "meta mark" in w.node.run("nft list chain ip bridgeport forward").stdout,
                what="accept-mark rule",
            )
            assert w.ask(w.client, "tcp", "10.98.8.2", 22) == f"{CLIENT_IP} 22"
            assert w.ask(w.client, "tcp", "10.98.8.2", 23, timeout=1).startswith("ERR")
    finally:
        w.node.run("nft delete table inet admin", check=False)
        w.agent.stop()
        w.agent.start()


def test_egress_address(w: World) -> None:
    """egressAddress 192.0.2.11 and egressAddress6 fd00:c::11: SNAT to them, per family."""
    w.node.run("ip -6 addr add fd00:c::11/64 dev eth0 nodad")
    try:
        w.agent.apply(
            network(
                "eg",
                "10.98.9.0/24",
                bridge="bp-eg",
                subnet6="fd00:98:9::/64",
                egressAddress=NODE_IP2,
                egressAddress6="fd00:c::11",
            ),
            network("away", "10.98.10.0/24", bridge="bp-away", egressAddress="203.0.113.7"),
        )
        state = w.agent.wait({"eg": "Applied", "away": "Applied"})
        away = next(r for r in state["resources"] if r["name"] == "away")
        assert "egressAddress 203.0.113.7 is inactive" in away["message"]
        box = w.container("bp-eg", "10.98.9.2/24", "10.98.9.1", "fd00:98:9::2/64", "fd00:98:9::1")
        other = w.container("bp-away", "10.98.10.2/24", "10.98.10.1")
        w.serve(w.client, "--tcp", "5000")
        assert w.ask(box, "tcp", CLIENT_IP, 5000) == f"{NODE_IP2} 5000"
        assert w.ask(other, "tcp", CLIENT_IP, 5000) == f"{NODE_IP} 5000"  # masqueraded
        wait_for(
            lambda: w.ask(box, "tcp", CLIENT_IP6, 5000, timeout=1) == "fd00:c::11 5000",
            timeout=8,
            what="IPv6 egress SNAT",
        )
    finally:
        w.node.run("ip -6 addr del fd00:c::11/64 dev eth0", check=False)


def route_loopback_via(ns: Netns, dev: str, gateway: str) -> None:
    """Make `ns` send 127.0.0.1 out of `dev` to `gateway`, as an attacker on that link would."""
    ns.run("ip route del local 127.0.0.0/8 dev lo table local")
    ns.run("ip route del local 127.0.0.1 dev lo table local")
    ns.sysctl(f"net.ipv4.conf.{dev}.route_localnet", "1")
    ns.run(f"ip route add 127.0.0.1/32 via {gateway} dev {dev}")


RECEIVE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7001))
s.settimeout(2)
print("ready", flush=True)
try:
    print("got", s.recvfrom(64)[1][0], flush=True)
except TimeoutError:
    print("nothing", flush=True)
"""
SEND = """
import socket
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"hi", ("127.0.0.1", 7001))
"""


def loopback_datagram_arrives(node: Netns, sender: Netns) -> bool:
    """Does a datagram `sender` sends to 127.0.0.1:7001 reach a UDP socket of the node?"""
    receiver = node.popen([sys.executable, "-c", RECEIVE])
    assert receiver.stdout is not None
    assert receiver.stdout.readline().strip() == "ready"
    sender.run([sys.executable, "-c", SEND])
    answer = receiver.stdout.readline().strip()
    receiver.wait(10)
    return answer.startswith("got")


def test_loopback_kernel(w: World) -> None:
    """loopback: Kernel serves 127.0.0.1 in the kernel, with Docker's protections."""
    w.agent.stop()
    w.agent.start("--manage-sysctls")
    try:
        w.agent.apply(
            network("lk", "10.98.11.0/24", bridge="bp-lk", subnet6="fd00:98:11::/64"),
            network("lo2", "10.98.12.0/24", bridge="bp-lo2"),
            publication(
                "web",
                8088,
                "10.98.11.2",
                80,
                loopback="Kernel",
                target={"address": "10.98.11.2", "address6": "fd00:98:11::2", "port": 80},
            ),
        )
        state = w.agent.wait({"lk": "Applied", "lo2": "Applied", "web": "Applied"})
        entry = next(r for r in state["resources"] if r["name"] == "web")
        assert "127.0.0.1 by kernel DNAT" in entry["message"]
        assert "::1 stays on the proxy" in entry["message"]
        localnet = "cat /proc/sys/net/ipv4/conf/{}/route_localnet"
        assert w.node.run(localnet.format("bp-lk")).stdout.strip() == "1"
        assert w.node.run(localnet.format("bp-lo2")).stdout.strip() == "0"
        box = w.container(
            "bp-lk", "10.98.11.2/24", "10.98.11.1", "fd00:98:11::2/64", "fd00:98:11::1"
        )
        w.serve(box, "--tcp", "80")
        assert w.ask(w.node, "tcp", "127.0.0.1", 8088) == "10.98.11.1 80"
        # ::1 through the proxy (listening on ::), to the container's IPv6 address.
        wait_for(
            lambda: w.ask(w.node, "tcp", "::1", 8088, timeout=1).endswith(" 80"),
            timeout=8,
            what="::1 through the proxy",
        )
        listeners = w.node.run("ss -ltnH").stdout
        assert "127.0.0.1:8088" not in listeners and "0.0.0.0:8088" not in listeners
        assert "[::]:8088" in listeners
        # A container on the route_localnet bridge aims at the node's loopback services (one
        # way is enough to harm: a datagram to a UDP service).
        route_loopback_via(box, "eth0", "10.98.11.1")
        assert not loopback_datagram_arrives(w.node, box)
        # From outside, 127.0.0.1:8088 is never DNATed.
        route_loopback_via(w.client, "eth0", NODE_IP)
        try:
            assert w.ask(w.client, "tcp", "127.0.0.1", 8088, timeout=1).startswith("ERR")
        finally:
            w.client.run("ip route del 127.0.0.1/32", check=False)
            w.client.run("ip route add local 127.0.0.0/8 dev lo table local", check=False)
            w.client.run("ip route add local 127.0.0.1 dev lo table local", check=False)
            w.client.sysctl("net.ipv4.conf.eth0.route_localnet", "0")
        # Positive control: without our raw drop (agent stopped, kernel as it left it) the
        # container's datagram does reach the node's loopback service.
        w.agent.stop()
        w.node.run("nft flush chain ip bridgeport raw_prerouting")
        assert loopback_datagram_arrives(w.node, box)
    finally:
        w.agent.stop()
        w.agent.start()
