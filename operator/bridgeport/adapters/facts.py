"""Node facts from the kernel: local addresses, forwarding sysctls, interfaces that aren't ours."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from bridgeport.adapters import links
from bridgeport.core.plan import NodeFacts
from bridgeport.core.specs import ResourceRef

PROC_SYS = Path("/proc/sys/net")


def _sysctl_on(path: str) -> bool:
    try:
        return (PROC_SYS / path).read_text().strip() == "1"
    except OSError:
        return False


def gather(name: str, labels: Mapping[str, str],
           ports_in_use: Mapping[ResourceRef, str] | None = None) -> tuple[NodeFacts, set[str]]:
    """(facts for the planner, names of our existing bridges)."""
    ours, foreign = links.inventory()
    facts = NodeFacts(
        name=name,
        labels=dict(labels),
        addresses=frozenset(links.local_addresses()),
        ipv4_forwarding=_sysctl_on("ipv4/ip_forward"),
        ipv6_forwarding=_sysctl_on("ipv6/conf/all/forwarding"),
        foreign_interfaces=frozenset(foreign),
        ports_in_use=dict(ports_in_use or {}),
    )
    return facts, set(ours)
