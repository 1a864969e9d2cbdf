"""Prometheus metrics of the agent, on one registry served at /metrics."""

from __future__ import annotations

import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILE_SECONDS = Histogram(
    "bridgeport_reconcile_duration_seconds",
    "Time to plan and converge the node once",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=REGISTRY,
)
ELEMENTS = Gauge(
    "bridgeport_nft_elements", "Set and map elements programmed in our tables", registry=REGISTRY
)
BRIDGES = Gauge("bridgeport_bridges", "Bridges this agent manages", registry=REGISTRY)
PROXIES = Gauge(
    "bridgeport_proxy_listeners_planned", "Userland proxy listeners in the plan", registry=REGISTRY
)
CLAIMS = Gauge(
    "bridgeport_port_claims_planned",
    "Bound, non-listening sockets holding DNATed ports (besides proxy listeners)",
    registry=REGISTRY,
)
ERRORS = Counter("bridgeport_errors_total", "Errors by component", ["component"], registry=REGISTRY)
for _component in ("reconcile", "links", "conntrack", "report", "nodestate", "doctor"):
    ERRORS.labels(_component)  # present at 0 from the start: rates and alerts see them
APPLY_FAILURES = Counter(
    "bridgeport_nft_apply_failures_total",
    "nftables transactions the kernel rejected",
    registry=REGISTRY,
)
DRIFT_REPAIRS = Counter(
    "bridgeport_drift_repairs_total",
    "Times the periodic resync found our tables changed and restored them",
    registry=REGISTRY,
)
TRIGGERS = Counter(
    "bridgeport_reconcile_triggers_total",
    "What woke the agent: resources (the source), ports (a bridge port joined, "
    "left or lost its flags), resync (a due periodic drift check)",
    ["trigger"],
    registry=REGISTRY,
)
DOCTOR_FINDINGS = Gauge(
    "bridgeport_doctor_findings",
    "Findings of the agent's periodic `bridgeport doctor` check",
    ["check", "severity"],
    registry=REGISTRY,
)
RESOURCE_PROBLEMS = Gauge(
    "bridgeport_resource_problem",
    "1 per resource this node selects but could not apply "
    "(Conflicted, Invalid, Failed), at most 500 per node",
    ["kind", "namespace", "name", "state", "reason"],
    registry=REGISTRY,
)
MAX_PROBLEM_SERIES = 500


class PortTaken(RuntimeError):
    """The /metrics port cannot be bound; the message names the flag that moves it."""


def serve(port: int, registry: CollectorRegistry) -> None:
    """Serve /metrics on `port` (0: not at all) from a thread of its own, so a scrape never
    waits for the event loop; a taken port is one clear error."""
    if not port:
        return
    try:
        server = make_server(
            "0.0.0.0", port, make_wsgi_app(registry), ThreadingWSGIServer, handler_class=_Quiet
        )
    except OSError as exc:
        raise PortTaken(
            f"cannot serve /metrics on port {port}: {exc.strerror or exc}; choose another "
            "port with --metrics-port (or METRICS_PORT), or 0 to disable"
        ) from None
    # prometheus_client's start_http_server serves with serve_forever()'s default, which
    # wakes every 0.5 s to look for a shutdown() that never comes (the thread ends with the
    # process): poll_interval None blocks until a scrape, so an idle agent stays asleep.
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": None}, name="metrics", daemon=True
    ).start()


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log line per scrape."""
