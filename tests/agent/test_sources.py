"""spec.allowedSources and the remote-loopback drop, with real packets (issue 15).

Scenarios:
- a publication allowing only another address: the client's connection is dropped on the DNAT
  path, and the node's own 127.0.0.1 (the proxy path) too; one allowing the client's /24 works
- a UDP range on a host IP allowing the client answers; a UDP port allowing someone else
  does not
- a frame from a neighbour to 127.0.0.1:<published port> (what route_localnet=1 would route,
  CVE-2020-8558) is dropped in raw before NAT: the drop rule counts it and conntrack never sees
  it, while the same frame to the node's address is DNATed; a port inside a published range
  is dropped too (the ranges' own set and rule)
"""

from __future__ import annotations

import re
import sys

import pytest

from tests.builders import network, publication
from tests.harness.node import CLIENT_IP, NODE_IP, World
from tests.netns import wait_for

pytestmark = pytest.mark.root

NET = network("net-s", "10.95.1.0/24", bridge="bp-s")
TARGET = "10.95.1.2"


def _serve(w: World) -> None:
    target = w.container("bp-s", f"{TARGET}/24", "10.95.1.1")
    w.serve(target, "--tcp", "80", "--udp", "53")


def test_allowed_sources(w: World) -> None:
    w.agent.apply(
        NET,
        publication("closed", 8201, TARGET, 80, allowedSources=["192.0.2.11/32"]),
        publication("open", 8202, TARGET, 80, allowedSources=["192.0.2.0/24", "fd00::/8"]),
        publication("local", 8203, TARGET, 80, allowedSources=["127.0.0.0/8"]),
        publication(
            "udp",
            8210,
            TARGET,
            53,
            hostPortEnd=8211,
            protocol="UDP",
            hostIP=NODE_IP,
            allowedSources=[f"{CLIENT_IP}/32"],
        ),
        publication(
            "udp-other",
            8212,
            TARGET,
            53,
            protocol="UDP",
            loopback="Never",
            allowedSources=["192.0.2.11/32"],
        ),
    )
    w.agent.wait(
        {
            "net-s": "Applied",
            "closed": "Applied",
            "open": "Applied",
            "local": "Applied",
            "udp": "Applied",
            "udp-other": "Applied",
        }
    )
    _serve(w)
    assert w.ask(w.client, "tcp", NODE_IP, 8202) == f"{CLIENT_IP} 80"
    assert "timed out" in w.ask(w.client, "tcp", NODE_IP, 8201, timeout=1)
    assert "timed out" in w.ask(w.node, "tcp", "127.0.0.1", 8201, timeout=1)  # proxy path
    assert "timed out" in w.ask(w.client, "tcp", NODE_IP, 8203, timeout=1)
    assert w.ask(w.node, "tcp", "127.0.0.1", 8203) == "10.95.1.1 80"
    assert w.ask(w.client, "udp", NODE_IP, 8210) == f"{CLIENT_IP} 53"
    assert "timed out" in w.ask(w.client, "udp", NODE_IP, 8212, timeout=1)


_SEND_FRAME = r"""
import socket, struct, sys
dst_mac, src_mac = bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2])
src_ip, port, dst_ip = sys.argv[3], int(sys.argv[4]), sys.argv[5]
payload = b"hi"
udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                  socket.inet_aton(src_ip), socket.inet_aton(dst_ip))
csum = sum(struct.unpack("!10H", hdr))
csum = (csum >> 16) + (csum & 0xffff)
csum = ~(csum + (csum >> 16)) & 0xffff
hdr = hdr[:10] + struct.pack("!H", csum) + hdr[12:]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for _ in range(3):
    s.send(dst_mac + src_mac + b"\x08\x00" + hdr + udp)
"""


def _mac(ns: object, dev: str) -> str:
    out = ns.run(f"cat /sys/class/net/{dev}/address").stdout  # type: ignore[attr-defined]
    return str(out).strip().replace(":", "")


def _drops(w: World, lookup: str = "loop_ports") -> int:
    """Packets the remote-loopback drop counted: single ports (`loop_ports`) or port ranges
    (`loop_ranges`), each its own rule."""
    out = w.node.run("nft list chain ip bridgeport raw_prerouting").stdout
    found = re.search(rf"@{lookup} counter packets (\d+)", out)
    return int(found.group(1)) if found else -1


def test_remote_loopback_is_dropped(w: World) -> None:
    w.node.sysctl("net.ipv4.conf.all.route_localnet", "1")
    w.node.sysctl("net.ipv4.conf.eth0.route_localnet", "1")
    try:
        w.agent.apply(
            NET,
            publication("dns", 8220, TARGET, 53, protocol="UDP"),
            # A range without proxies: its ports are only in the interval set.
            publication(
                "dnsr", 8230, TARGET, 53, protocol="UDP", hostPortEnd=8232, loopback="Never"
            ),
        )
        w.agent.wait({"net-s": "Applied", "dns": "Applied", "dnsr": "Applied"})
        _serve(w)
        before, ranged = _drops(w), _drops(w, "loop_ranges")
        assert before >= 0 and ranged >= 0
        frame = [
            sys.executable,
            "-c",
            _SEND_FRAME,
            _mac(w.node, "eth0"),
            _mac(w.client, "eth0"),
            CLIENT_IP,
            "8220",
        ]
        w.client.run([*frame, "127.0.0.1"])
        wait_for(lambda: _drops(w) >= before + 3, timeout=5, what="raw drop counted")
        assert "sport=40000" not in w.node.run("cat /proc/net/nf_conntrack", check=False).stdout
        # The same frame to the node's address is DNATed to the target: the frame is sound,
        # only the remote loopback destination is dropped.
        w.client.run([*frame, NODE_IP])
        wait_for(
            lambda: (
                "sport=40000 dport=8220"
                in w.node.run("cat /proc/net/nf_conntrack", check=False).stdout
            ),
            timeout=5,
            what="DNATed flow",
        )
        assert _drops(w) == before + 3
        w.client.run([*frame[:-1], "8231", "127.0.0.1"])  # inside the range
        wait_for(
            lambda: _drops(w, "loop_ranges") >= ranged + 3, timeout=5, what="range drop counted"
        )
        assert _drops(w) == before + 3
    finally:
        w.node.sysctl("net.ipv4.conf.all.route_localnet", "0")
        w.node.sysctl("net.ipv4.conf.eth0.route_localnet", "0")
