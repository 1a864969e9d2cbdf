"""Which controller replica may write: kopf's peering, and our own check of its verdict.

One replica is active at a time (a `ClusterKopfPeering`, by default `bridgeport-controller`).
kopf pauses its watches on a standby, not our tasks, so every reconcile pass asks again
before writing. kopf's rule itself (`is_active_peer`) and our identity are in `kube.store`.
"""

from __future__ import annotations

import asyncio
import datetime
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import kopf
import structlog
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from bridgeport.kube.controller_metrics import API_ERRORS
from bridgeport.kube.store import is_active_peer, own_identity

log = structlog.get_logger(__name__)

PEERING_NAME = "bridgeport-controller"
PEERING_GROUP, PEERING_VERSION, PEERING_PLURAL = "kopf.dev", "v1", "clusterkopfpeerings"


@dataclass
class Peering:
    api: Callable[[], client.CustomObjectsApi]
    enabled: bool = True
    """False: a single replica that never waits for a peer (`--no-peering`)."""
    name: str = PEERING_NAME
    """The ClusterKopfPeering object the replicas share."""
    identity: str = field(default_factory=own_identity)
    """This replica, as kopf names it in the peering object."""
    priority: int = field(default_factory=lambda: random.randint(1, 2**30))
    """Distinct per replica, so that exactly one is active."""

    def configure(self, s: kopf.OperatorSettings) -> None:
        s.peering.name = self.name
        s.peering.mandatory = self.enabled
        s.peering.standalone = not self.enabled
        s.peering.priority = self.priority

    def _get(self) -> Any:
        return self.api().get_cluster_custom_object(
            PEERING_GROUP, PEERING_VERSION, PEERING_PLURAL, self.name
        )

    async def active(self) -> bool:
        """Double-check kopf's peering verdict before writing: a standby must never write."""
        if not self.enabled:
            return True
        try:
            obj = await asyncio.to_thread(self._get)
        except ApiException as exc:
            if exc.status == 404:
                return True  # no peering object: kopf does not pause either
            API_ERRORS.labels("peering").inc()
            return False
        except OSError:
            API_ERRORS.labels("peering").inc()
            return False
        return is_active_peer(
            cast(Mapping[str, Any], obj).get("status"),
            self.identity,
            self.priority,
            datetime.datetime.now(datetime.UTC),
        )

    async def explain_wait(self, interval: float = 5.0) -> None:
        """kopf waits silently, forever, for a missing peering object: say once what we wait
        for and how to proceed, and once when it appears."""
        said = False
        while True:
            try:
                await asyncio.to_thread(self._get)
            except ApiException as exc:
                if exc.status == 404 and not said:
                    log.warning(
                        f"waiting for the ClusterKopfPeering {self.name!r}: peering is "
                        "on and that object does not exist, so nothing is processed. The helm "
                        "chart creates it; else apply crds/clusterkopfpeerings.kopf.dev.yaml and "
                        f"create it (kubectl create -f - with kind ClusterKopfPeering, name "
                        f"{self.name}), or run a single replica with --no-peering"
                    )
                    said = True
            except OSError:
                pass  # the API is unreachable: kopf says so itself
            else:
                if said:
                    log.info("ClusterKopfPeering found", name=self.name)
                return
            await asyncio.sleep(interval)
