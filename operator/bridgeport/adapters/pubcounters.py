"""Per-publication traffic: the kernel's element counters and the proxy's, as one metric family.

The kernel side reads the counters nft keeps on our DNAT map elements (one per connection: the
nat chain sees only a flow's first packet) and on the `cnt_*` sets (every later packet, see
`ruleset._count_chains`). Every element carries its owner as its comment. Reading lists only
our own sets, at scrape time only: the agent is never woken.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import structlog
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from bridgeport.core.ruleset import FAMILIES, TABLE

log = structlog.get_logger(__name__)

DNAT_MAPS = ("pub_host", "pub_host_range", "pub_any", "pub_any_range")
COUNT_SETS = ("cnt_host", "cnt_host_range", "cnt_any", "cnt_any_range")
_PROTOCOLS = {"tcp": "TCP", "udp": "UDP", "sctp": "SCTP"}


class Key(NamedTuple):
    namespace: str
    name: str
    protocol: str  # TCP | UDP | SCTP, as in the spec


@dataclass
class Traffic:
    connections: int = 0
    packets: int = 0
    bytes: int = 0


def parse_listing(listing: dict[str, Any], into: dict[Key, Traffic]) -> None:
    """Add one `list set|map` JSON answer to the per-publication totals."""
    for item in listing.get("nftables", []):
        decl = item.get("set") or item.get("map")
        if not decl:
            continue
        is_dnat = decl["name"] in DNAT_MAPS
        for entry in decl.get("elem", []):
            elem = entry[0] if isinstance(entry, list) else entry  # maps: [elem, value]
            elem = elem.get("elem", {}) if isinstance(elem, dict) else {}
            counter, owner = elem.get("counter"), elem.get("comment", "")
            namespace, sep, name = owner.partition("/")
            protocol = _protocol(elem.get("val"))
            if not counter or not sep or protocol is None:
                continue
            t = into.setdefault(Key(namespace, name, protocol), Traffic())
            t.packets += int(counter["packets"])
            t.bytes += int(counter["bytes"])
            if is_dnat:
                t.connections += int(counter["packets"])


def _protocol(val: Any) -> str | None:
    parts = val.get("concat", []) if isinstance(val, dict) else []
    for part in parts:
        if isinstance(part, str) and part in _PROTOCOLS:
            return _PROTOCOLS[part]
    return None


class KernelCounters:
    """Reads our sets with its own libnftables context (the agent's is never contended)."""

    def __init__(self) -> None:
        import nftables

        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)
        self._lock = threading.Lock()  # concurrent scrapes share one context

    def read(self) -> dict[Key, Traffic]:
        with self._lock:
            totals: dict[Key, Traffic] = {}
            for family in FAMILIES:
                for name in (*DNAT_MAPS, *COUNT_SETS):
                    kind = "map" if name in DNAT_MAPS else "set"
                    rc, out, err = self._nft.cmd(f"list {kind} {family} {TABLE} {name}")
                    if rc == 0 and out:
                        parse_listing(json.loads(out), totals)
                    elif "No such file" not in err:  # absent (no table, counters off) is fine
                        log.warning("cannot read publication counters", set=name, error=err)
            return totals


class PublicationCollector(Collector):
    """`bridgeport_publication_*{namespace,name,protocol,path}`: path is kernel or proxy."""

    def __init__(
        self,
        kernel: Callable[[], dict[Key, Traffic]],
        proxy: Callable[[], Iterable[tuple[Key, Traffic]]] = lambda: (),
    ) -> None:
        self._kernel, self._proxy = kernel, proxy

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(())  # registering must not read the kernel

    def collect(self) -> Iterator[CounterMetricFamily]:
        labels = ["namespace", "name", "protocol", "path"]
        p = "bridgeport_publication_"
        conns = CounterMetricFamily(
            p + "connections", "Connections (TCP) and flows (UDP) to a publication", labels=labels
        )
        packets = CounterMetricFamily(
            p + "packets",
            "Packets of a publication's flows, both directions (kernel path only)",
            labels=labels,
        )
        nbytes = CounterMetricFamily(
            p + "bytes",
            "Bytes of a publication's flows, both "
            "directions (IP packets on the kernel path, payload on "
            "the proxy path)",
            labels=labels,
        )
        for key, t in sorted(self._kernel().items()):
            row = [*key, "kernel"]
            conns.add_metric(row, t.connections)
            packets.add_metric(row, t.packets)
            nbytes.add_metric(row, t.bytes)
        proxied: dict[Key, Traffic] = {}
        for key, t in self._proxy():
            total = proxied.setdefault(key, Traffic())
            total.connections += t.connections
            total.bytes += t.bytes
        for key, t in sorted(proxied.items()):
            row = [*key, "proxy"]
            conns.add_metric(row, t.connections)
            nbytes.add_metric(row, t.bytes)
        yield from (conns, packets, nbytes)
