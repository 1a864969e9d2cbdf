"""How both processes reach the API server: the client for their own requests, the
controller's kopf settings (kopf is imported only there: the agent runs without it), and paged
metadata-only listings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from kubernetes import client, config

from bridgeport.core.specs import GROUP, VERSION

MERGE_PATCH = "application/merge-patch+json"
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
PAGE = 500

if TYPE_CHECKING:
    import kopf


def load_api() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else KUBECONFIG / ~/.kube/config."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def kopf_settings() -> kopf.OperatorSettings:
    """What the controller wants from kopf (imported here: the agent runs without it)."""
    import kopf

    s = kopf.OperatorSettings()
    s.scanning.disabled = True  # fixed kinds: no CRD watching, no namespace discovery
    s.posting.enabled = False  # kopf's own events: N agents would flood objects; the
    # controller's handlers have nothing to report
    s.watching.reconnect_backoff = 1.0
    # Ride out an API server outage of any sane length (kopf's default gives up after ~90 s):
    # keep retrying, slowly.
    s.networking.error_backoffs = [1, 2, 4, 8, *([15] * 240)]
    return s


def list_metadata(
    api: client.CustomObjectsApi, plural: str, key: str, namespace: str | None = None
) -> set[str]:
    """One metadata field (`uid`, `name`) of every object of our group's `plural`: metadata
    only, in pages, so a listing of 10,000 objects stays small. Blocking."""
    out: set[str] = set()
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"limit": PAGE, "_headers": {"Accept": METADATA_LIST}}
        if token:
            kwargs["_continue"] = token
        if namespace:
            page = api.list_namespaced_custom_object(GROUP, VERSION, namespace, plural, **kwargs)
        else:
            page = api.list_cluster_custom_object(GROUP, VERSION, plural, **kwargs)
        page = cast(Mapping[str, Any], page)
        out.update(str((i.get("metadata") or {}).get(key, "")) for i in page.get("items") or ())
        token = (page.get("metadata") or {}).get("continue") or None
        if not token:
            return out
