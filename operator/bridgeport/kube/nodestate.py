"""This node's NodeState: the one object the agent writes, through its status subresource.

One writer per object (the node's own agent), garbage-collected with its Node through an
ownerReference. Written only when the report changed (plus a slow heartbeat), so N idle agents
cost the API server nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from bridgeport import metrics
from bridgeport.core.report import Report, assigned_ports, entries
from bridgeport.core.specs import API_VERSION, GROUP, VERSION, ResourceRef
from bridgeport.core.specs import NODESTATES as PLURAL
from bridgeport.kube.api import load_api

log = structlog.get_logger(__name__)
HEARTBEAT = 300.0


class NodeStateReporter:
    def __init__(
        self,
        node_name: str,
        node_uid: Callable[[], str | None],
        api: client.ApiClient | None = None,
    ) -> None:
        self.node_name = node_name
        self.node_uid = node_uid
        self._api = api
        self._last: dict[str, Any] | None = None
        self._last_at = 0.0

    @property
    def api(self) -> client.CustomObjectsApi:
        if self._api is None:
            self._api = load_api()
        return client.CustomObjectsApi(self._api)

    async def publish(self, report: Report) -> None:
        status, omitted = report.status()
        if omitted:
            log.warning("NodeState report truncated", omitted=omitted)
        comparable = {k: v for k, v in status.items() if k != "lastSync"}
        if comparable == self._last and time.monotonic() - self._last_at < HEARTBEAT:
            return
        try:
            await asyncio.to_thread(self._write, status)
        except (ApiException, OSError) as exc:
            metrics.ERRORS.labels("nodestate").inc()
            log.warning(
                "cannot write NodeState; will retry on the next sync",
                node=self.node_name,
                error=str(getattr(exc, "reason", exc)),
            )
            return
        self._last, self._last_at = comparable, time.monotonic()

    def recall(self) -> dict[ResourceRef, tuple[str, int]] | None:
        """The host ports this node assigned, as its NodeState says (blocking; the agent
        calls it once, before its first reconcile): {} when there is no NodeState or RBAC
        forbids reading it (said once, loudly), None on another error (try again)."""
        try:
            obj = self.api.get_cluster_custom_object(GROUP, VERSION, PLURAL, self.node_name)
        except ApiException as exc:
            if exc.status == 404:
                return {}
            if exc.status == 403:
                log.warning(
                    "RBAC forbids reading this node's NodeState: assigned host ports "
                    "are assigned afresh after a restart (the chart grants get on "
                    "nodestates)",
                    node=self.node_name,
                )
                return {}
            log.warning(
                "cannot read this node's NodeState back; retrying",
                node=self.node_name,
                error=str(exc.reason),
            )
            return None
        except OSError as exc:
            log.warning(
                "cannot read this node's NodeState back; retrying",
                node=self.node_name,
                error=str(exc),
            )
            return None
        status = obj.get("status") if isinstance(obj, dict) else None
        return assigned_ports(entries(self.node_name, status))

    def _write(self, status: dict[str, Any]) -> None:
        body = {"status": status}
        try:
            self.api.patch_cluster_custom_object_status(
                GROUP, VERSION, PLURAL, self.node_name, body
            )
            return
        except ApiException as exc:
            if exc.status != 404:
                raise
        self.api.create_cluster_custom_object(GROUP, VERSION, PLURAL, self._new_object())
        self.api.patch_cluster_custom_object_status(GROUP, VERSION, PLURAL, self.node_name, body)
        log.info("NodeState created", node=self.node_name)

    def _new_object(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "name": self.node_name,
            "labels": {"app.kubernetes.io/managed-by": "bridgeport"},
        }
        uid = self.node_uid()
        if uid:
            meta["ownerReferences"] = [
                {"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": uid}
            ]
        return {
            "apiVersion": API_VERSION,
            "kind": "NodeState",
            "metadata": meta,
            "spec": {"nodeName": self.node_name},
        }
