"""Pure pieces of the proxy: status messages, pktinfo encoding, log throttling, metrics.

Scenarios: every bind errno maps to a reason and a message naming the address; v4/v6
pktinfo of a received datagram becomes the reply's source; throttled warnings count what they
suppress; the collector exposes every listener (failed ones as listener_up 0); shared
counters add up over workers and outlive a dead one.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import socket

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from bridgeport.core.plan import ProxyKey
from bridgeport.core.specs import Protocol, ResourceRef
from bridgeport.proxy import wire
from bridgeport.proxy.datagram import Throttle
from bridgeport.proxy.listener_status import bind_failure, describe
from bridgeport.proxy.metrics import ListenerStats, ProxyCollector, Row
from bridgeport.proxy.pktinfo import IP_PKTINFO, pack_pktinfo, reply_pktinfo
from bridgeport.proxy.shared_counters import ACTIVE, CONNECTIONS, ERROR_KINDS, FIRST_ERROR, Counters

OWNER = ResourceRef("PortPublication", "shop", "web")


def test_describe_brackets_ipv6() -> None:
    """IPv6 listen addresses are bracketed; the protocol is spelled like the API."""
    assert describe(ProxyKey("127.0.0.1", 80, Protocol.TCP)) == "127.0.0.1:80/TCP"
    assert describe(ProxyKey("::", 53, Protocol.UDP)) == "[::]:53/UDP"


@pytest.mark.parametrize(
    ("code", "reason", "fragment"),
    [
        (errno.EADDRINUSE, "PortInUse", "127.0.0.1:8080/TCP is already in use by another process"),
        (errno.EACCES, "PermissionDenied", "CAP_NET_BIND_SERVICE"),
        (errno.EADDRNOTAVAIL, "AddressNotAvailable", "127.0.0.1 is not an address of this node"),
        (errno.ENOBUFS, "BindFailed", "cannot bind 127.0.0.1:8080/TCP"),
    ],
)
def test_bind_failure_reasons(code: int, reason: str, fragment: str) -> None:
    """Each bind errno becomes a failed status with a reason and an actionable message."""
    key = ProxyKey("127.0.0.1", 8080, Protocol.TCP)
    status = bind_failure(key, OWNER, OSError(code, "x"))
    assert (status.state, status.reason, status.owner) == ("failed", reason, OWNER)
    assert fragment in status.message and status.state != "listening"


def test_reply_pktinfo_ipv4_uses_the_local_address() -> None:
    """A received in_pktinfo turns into a reply pktinfo with spec_dst = the dialled address."""
    local, header_dst = ipaddress.IPv4Address("198.51.100.100"), b"\xff" * 4
    received = [
        (socket.IPPROTO_IP, IP_PKTINFO, (7).to_bytes(4, "little") + local.packed + header_dst)
    ]
    assert reply_pktinfo(received) == pack_pktinfo(str(local))


def test_reply_pktinfo_ipv6_keeps_the_interface() -> None:
    """An in6_pktinfo is echoed as is: address and interface (link-local needs it)."""
    received = pack_pktinfo("fe80::1", ifindex=3)
    assert reply_pktinfo(received) == received
    assert reply_pktinfo([]) == [] and reply_pktinfo([(0, 0, b"")]) == []


def test_throttle_counts_suppressed_lines() -> None:
    """The first line of a kind passes, repeats within the interval are counted, not logged."""
    t = Throttle(interval=3600)
    assert t.allow("refused") == 0
    assert t.allow("refused") is None and t.allow("refused") is None
    assert t.allow("timeout") == 0
    t.interval = 0
    t._next.clear()
    assert t.allow("refused") == 2


def test_collector_exposes_each_listener() -> None:
    """Counters, gauges and errors per listener; a failed listener shows listener_up 0."""
    stats = ListenerStats()
    stats.connections, stats.active, stats.bytes_in, stats.bytes_out = 3, 1, 10, 20
    stats.errors["connect_refused"] += 2
    rows = [
        Row(ProxyKey("::1", 8080, Protocol.TCP), OWNER, True, stats),
        Row(ProxyKey("127.0.0.1", 53, Protocol.UDP), OWNER, False, ListenerStats()),
    ]
    registry = CollectorRegistry()
    registry.register(ProxyCollector(lambda: rows))
    text = generate_latest(registry).decode()
    labels = 'listen="::1",owner="shop/web",port="8080",protocol="TCP"'
    for line in (
        f"bridgeport_proxy_connections_total{{{labels}}} 3.0",
        f"bridgeport_proxy_active_connections{{{labels}}} 1.0",
        f'bridgeport_proxy_bytes_total{{direction="target_to_client",{labels}}} 20.0',
        f'bridgeport_proxy_errors_total{{kind="connect_refused",{labels}}} 2.0',
        'bridgeport_proxy_listener_up{listen="127.0.0.1",owner="shop/web",port="53",'
        'protocol="UDP"} 0.0',
    ):
        assert line in text, text


def test_shared_counters_sum_workers_and_survive_a_dead_one() -> None:
    """Listener totals sum every worker's cells; a gone worker's live connections drop to 0
    while its totals stay; clear() zeroes a slot for reuse; a second mapping sees it all."""
    counters = Counters.create(workers=3, slots=8)
    other = Counters(os.dup(counters.fd), workers=3, slots=8)  # as a worker maps it
    try:
        for worker, (conns, active) in enumerate([(5, 2), (7, 1), (0, 0)]):
            base = other.base(slot=4, worker=worker)
            other.cells[base + CONNECTIONS] += conns
            other.cells[base + ACTIVE] += active
        other.cells[other.base(4, 1) + FIRST_ERROR + ERROR_KINDS.index("reset")] += 1
        totals = counters.totals(4)
        assert totals[CONNECTIONS] == 12 and totals[ACTIVE] == 3 and counters.active(4) == 3
        assert totals[FIRST_ERROR + ERROR_KINDS.index("reset")] == 1
        assert counters.totals(3) == [0] * len(totals)  # neighbours untouched
        counters.worker_gone(0, [4])
        assert counters.active(4) == 1 and counters.totals(4)[CONNECTIONS] == 12
        counters.clear(4)
        assert counters.totals(4) == [0] * len(totals)
    finally:
        other.close()
        counters.close()


def test_worker_limits_survive_the_command_line() -> None:
    """The pool passes a worker its limits as flags; the worker reads back the same ones."""
    limits = wire.Limits(
        max_connections=7,
        connect_timeout=1.5,
        max_per_source=3,
        idle_timeout=60.0,
        max_udp_flows=9,
        udp_idle_timeout=2.5,
        udp_per_source=4,
    )
    parser = argparse.ArgumentParser()
    wire.Limits.add_arguments(parser)
    assert wire.Limits.from_args(parser.parse_args(limits.argv())) == limits
    assert wire.Limits.from_args(parser.parse_args([])) == wire.Limits()
