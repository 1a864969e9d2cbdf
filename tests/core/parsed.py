"""Parsed resources and a node for planner-level tests (the planner takes parsed specs, not
documents): shared by tests/core and the agent tests that check plans."""

from __future__ import annotations

import ipaddress
from typing import Any

from bridgeport.core import specs
from bridgeport.core.plan import NodeFacts, NodePlan
from tests.builders import network, publication

ADDRESSES = ("192.0.2.1", "192.0.2.11", "2001:db8::1", "2001:db8::11")
NODE = NodeFacts("node-1", {"zone": "a"}, frozenset(ipaddress.ip_address(a) for a in ADDRESSES))


def pub(name: str, port: int, created: str = "", ns: str = "default", **spec: Any) -> Any:
    """A parsed PortPublication for hostPort `port` (tests.builders.publication's defaults)."""
    return specs.parse(publication(name, port, namespace=ns, created=created, **spec))


def net(name: str, subnet: str, created: str = "", **spec: Any) -> Any:
    """A parsed BridgeNetwork."""
    return specs.parse(network(name, subnet, created=created, **spec))


def states(plan: NodePlan) -> dict[str, tuple[str, str]]:
    """Each outcome's (state, reason), by resource name."""
    return {o.ref.name: (o.state.value, o.reason) for o in plan.outcomes}


def message(plan: NodePlan, name: str) -> str:
    """The message of the outcome for the resource named `name`."""
    return next(o.message for o in plan.outcomes if o.ref.name == name)
