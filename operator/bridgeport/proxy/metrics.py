"""The proxy's metrics: per-listener counters and the Prometheus collector that exposes them.

The relay hot path only adds to plain integers; the collector turns them into metric families
at scrape time. prometheus_client's Counter.inc() takes a lock, which costs more per splice
than the splice itself, and removed listeners must disappear from /metrics anyway.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from bridgeport.core.plan import ProxyKey
from bridgeport.core.specs import ResourceRef

_LABELS = ["listen", "port", "protocol", "owner"]


class ListenerStats:
    """Monotonic counters of one listener (bytes are counted when written to the peer)."""

    __slots__ = ("active", "bytes_in", "bytes_out", "connections", "errors", "flows")

    def __init__(self) -> None:
        self.connections = 0  # TCP connections accepted / UDP flows created
        self.active = 0  # live TCP connections
        self.flows = 0  # live UDP flows
        self.bytes_in = 0  # client -> target
        self.bytes_out = 0  # target -> client
        self.errors: Counter[str] = Counter()


@dataclass(frozen=True)
class Row:
    key: ProxyKey
    owner: ResourceRef
    listening: bool
    stats: ListenerStats


class ProxyCollector(Collector):
    def __init__(
        self,
        rows: Callable[[], Iterable[Row]],
        workers: Callable[[], tuple[int, int]] = lambda: (0, 0),
    ) -> None:
        self._rows, self._workers = rows, workers

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        p = "bridgeport_proxy_"
        up = GaugeMetricFamily(
            p + "listener_up",
            "1 if the listener is bound, 0 if binding failed (see the publication's status)",
            labels=_LABELS,
        )
        conns = CounterMetricFamily(
            p + "connections", "TCP connections accepted and UDP flows created", labels=_LABELS
        )
        active = GaugeMetricFamily(p + "active_connections", "Live TCP connections", labels=_LABELS)
        flows = GaugeMetricFamily(p + "udp_flows", "Live UDP flows", labels=_LABELS)
        nbytes = CounterMetricFamily(p + "bytes", "Bytes relayed", labels=[*_LABELS, "direction"])
        errors = CounterMetricFamily(
            p + "errors", "Relay errors by kind", labels=[*_LABELS, "kind"]
        )
        for row in self._rows():
            labels = [row.key.listen, str(row.key.port), row.key.protocol.value, row.owner.key]
            s = row.stats
            up.add_metric(labels, 1 if row.listening else 0)
            conns.add_metric(labels, s.connections)
            active.add_metric(labels, s.active)
            flows.add_metric(labels, s.flows)
            nbytes.add_metric([*labels, "client_to_target"], s.bytes_in)
            nbytes.add_metric([*labels, "target_to_client"], s.bytes_out)
            # dict() copies in one step under the GIL: a scrape thread never sees it change.
            for kind, count in sorted(dict(s.errors).items()):
                errors.add_metric([*labels, kind], count)
        live, restarts = self._workers()
        yield GaugeMetricFamily(
            p + "workers", "Proxy worker processes running (they relay TCP and UDP)", live
        )
        yield CounterMetricFamily(
            p + "worker_restarts",
            "Proxy workers restarted after exiting unexpectedly",
            restarts,
        )
        yield from (up, conns, active, flows, nbytes, errors)
