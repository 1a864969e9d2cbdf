"""Kubernetes Events (`events.k8s.io/v1`) the controller posts for condition transitions.

Posted only after the status write that carries the transition succeeded, so a failed write
never posts an Event twice. A failure to post is counted and logged, never retried.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Any

import structlog
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from bridgeport.core import status as st
from bridgeport.core.specs import API_VERSION
from bridgeport.kube.controller_metrics import API_ERRORS, EVENTS_POSTED

log = structlog.get_logger(__name__)

REPORTING_CONTROLLER = "bridgeport.io/controller"
# Events about cluster-scoped objects live in "default", as the API server's own do.
CLUSTER_EVENT_NAMESPACE = "default"


def event_body(
    res: st.Resource, t: st.Transition, now: datetime.datetime, instance: str
) -> dict[str, Any]:
    """The Event about one transition of `res`, posted by controller replica `instance`."""
    namespace = res.ref.namespace or CLUSTER_EVENT_NAMESPACE
    regarding: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": res.ref.kind,
        "name": res.ref.name,
        "uid": res.uid,
    }
    if res.ref.namespace:
        regarding["namespace"] = res.ref.namespace
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        # Named like client-go's recorder does (generateName would end in "." or "-").
        "metadata": {"name": f"{res.ref.name[:230]}.{time.time_ns():x}", "namespace": namespace},
        "eventTime": st.micro_time(now),
        "reportingController": REPORTING_CONTROLLER,
        "reportingInstance": instance[:128],
        "action": "Aggregate",
        "type": t.type,
        "reason": t.reason,
        "note": t.message[:1024],
        "regarding": regarding,
    }


async def post_event(
    api: client.CustomObjectsApi,
    res: st.Resource,
    t: st.Transition,
    now: datetime.datetime,
    instance: str,
) -> None:
    event = event_body(res, t, now, instance)
    namespace = event["metadata"]["namespace"]
    try:
        await asyncio.to_thread(
            api.create_namespaced_custom_object, "events.k8s.io", "v1", namespace, "events", event
        )
    except (ApiException, OSError) as exc:
        API_ERRORS.labels("event").inc()
        log.warning(
            "cannot post event",
            resource=str(res.ref),
            reason=t.reason,
            error=str(getattr(exc, "reason", exc)),
            detail=str(getattr(exc, "body", ""))[:500],
        )
        return
    EVENTS_POSTED.labels(t.type, t.reason).inc()
    log.info("event posted", resource=str(res.ref), type=t.type, reason=t.reason)
