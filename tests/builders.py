"""Resource documents for every test: one builder per kind, the API version from the code.

Parsed forms (what the planner takes) are in tests/core/parsed.py.
"""

from __future__ import annotations

from typing import Any

from bridgeport.core.specs import API_VERSION, BRIDGE_NETWORK, PORT_PUBLICATION

API = API_VERSION


def network(name: str, subnet: str, *, created: str = "", **spec: Any) -> dict[str, Any]:
    """A BridgeNetwork document; `spec` adds or overrides fields (bridge=, subnet6=, ...)."""
    meta: dict[str, Any] = {"name": name}
    if created:
        meta["creationTimestamp"] = created
    return {
        "apiVersion": API,
        "kind": BRIDGE_NETWORK,
        "metadata": meta,
        "spec": {"subnet": subnet, **spec},
    }


def publication(
    name: str,
    host_port: int,
    address: str = "10.0.0.2",
    port: int = 80,
    *,
    namespace: str = "default",
    created: str = "",
    **spec: Any,
) -> dict[str, Any]:
    """A PortPublication document for hostPort -> address:port; `spec` adds or overrides
    fields (protocol=, hostIP=, hostPortEnd=, a whole target={...}, ...)."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if created:
        meta["creationTimestamp"] = created
    body = {"hostPort": host_port, "target": {"address": address, "port": port}, **spec}
    return {"apiVersion": API, "kind": PORT_PUBLICATION, "metadata": meta, "spec": body}
