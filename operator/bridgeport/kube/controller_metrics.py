"""The controller's Prometheus metrics, on their own registry (the agent's are in
`bridgeport.metrics`): reconcile time, status writes, Events posted and API errors."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

METRICS = CollectorRegistry(auto_describe=True)
RECONCILE_SECONDS = Histogram(
    "bridgeport_controller_reconcile_duration_seconds",
    "Time to recompute and write the statuses of one batch of dirty resources",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=METRICS,
)
STATUS_WRITES = Counter(
    "bridgeport_controller_status_writes_total",
    "Status subresource patches",
    ["kind"],
    registry=METRICS,
)
EVENTS_POSTED = Counter(
    "bridgeport_controller_events_total",
    "Kubernetes Events posted",
    ["type", "reason"],
    registry=METRICS,
)
API_ERRORS = Counter(
    "bridgeport_controller_errors_total", "API errors by operation", ["operation"], registry=METRICS
)
