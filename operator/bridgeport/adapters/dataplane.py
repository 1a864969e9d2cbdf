"""The agent's one seam around the kernel: bridges, tables, drift, conntrack, node facts.

`Dataplane` is what the agent needs; `KernelDataplane` does it with pyroute2 and libnftables
(root, a network namespace); `adapters.fake.FakeDataplane` does it in memory for unit tests.
Every method blocks: the agent calls them from a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Protocol

from bridgeport.adapters import conntrack, facts, links, nodeview
from bridgeport.adapters.nft import Nft, NftError
from bridgeport.adapters.portwatch import PortWatch
from bridgeport.core import doctor
from bridgeport.core.plan import BridgePlan, NodeFacts
from bridgeport.core.ruleset import Table
from bridgeport.core.settle import KeptBridge, LinkFailure

__all__ = ["Dataplane", "KernelDataplane", "LinkFailure", "NftError"]


class Dataplane(Protocol):
    # facts
    def gather_facts(self, node: str, labels: Mapping[str, str]) -> NodeFacts:
        """What the planner needs to know about this node (addresses, sysctls, interfaces)."""
        ...

    def enable_forwarding(self) -> None:
        """Turn IPv4/IPv6 forwarding on (only when the agent manages sysctls)."""
        ...

    def listening_ports(self) -> dict[str, frozenset[int]]:
        """Per protocol (TCP, UDP, SCTP), the ports processes listen on: what an assigned
        host port must not be. Read only when some publication wants one."""
        ...

    # bridges
    def converge_bridges(self, bridges: Sequence[BridgePlan]) -> list[LinkFailure]:
        """Create or update each planned bridge and configure its ports. Never raises for one
        bridge: its failure is returned."""
        ...

    def remove_stale_bridges(self, keep: Iterable[str], protect: Collection[str] = (),
                             ) -> tuple[list[str], list[KeptBridge]]:
        """Delete our bridges not named in `keep`; their names. Never anyone else's. A bridge
        with ports attached whose network is in `protect` (still exists) is kept and returned
        in the second list: deleting it would detach every container."""
        ...

    def watch_ports(self, changed: Callable[[], object]) -> None:
        """Blocking: call `changed()` whenever a bridge port needs the agent (a port joined,
        left or lost its flags). Returns or raises only when the watch ends."""
        ...

    # tables
    def apply_tables(self, tables: Sequence[Table], full: bool) -> int:
        """Converge our tables in one transaction (wholesale when `full`); the number of
        commands. Raises NftError when refused, and the kernel is then unchanged."""
        ...

    def drifted(self) -> list[str]:
        """Families whose table no longer matches what was last applied."""
        ...

    # conntrack
    def forget_udp(self, ports: Iterable[tuple[int, int]]) -> int:
        """Delete UDP conntrack entries for these (family, port); how many."""
        ...

    # diagnosis
    def check_node(self) -> list[doctor.Finding]:
        """`bridgeport doctor`'s findings (reads the whole ruleset; writes nothing)."""
        ...


class KernelDataplane:
    """The real kernel of the current network namespace."""

    def __init__(self) -> None:
        self.nft = Nft()
        self.port_watch = PortWatch()

    def gather_facts(self, node: str, labels: Mapping[str, str]) -> NodeFacts:
        return facts.gather(node, labels)

    def enable_forwarding(self) -> None:
        facts.enable_forwarding()

    def listening_ports(self) -> dict[str, frozenset[int]]:
        return facts.listening_ports()

    def converge_bridges(self, bridges: Sequence[BridgePlan]) -> list[LinkFailure]:
        # The watch judges the events of what follows against this plan, not as news.
        self.port_watch.expect({b.name: not b.inter_container for b in bridges})
        failures = links.converge(bridges)
        failed = {f.bridge for f in failures}
        for b in bridges:
            if b.name in failed:
                continue
            try:
                facts.converge_route_localnet(b.name, b.route_localnet)
            except OSError as exc:
                failures.append(LinkFailure(b.network, b.name, f"route_localnet: {exc}"))
        return failures

    def remove_stale_bridges(self, keep: Iterable[str], protect: Collection[str] = (),
                             ) -> tuple[list[str], list[KeptBridge]]:
        return links.remove_stale(keep, protect)

    def watch_ports(self, changed: Callable[[], object]) -> None:
        self.port_watch.run(changed)

    def apply_tables(self, tables: Sequence[Table], full: bool) -> int:
        return self.nft.apply(tables, full=full)

    def drifted(self) -> list[str]:
        return self.nft.drifted()

    def forget_udp(self, ports: Iterable[tuple[int, int]]) -> int:
        return conntrack.forget_udp(ports)

    def check_node(self) -> list[doctor.Finding]:
        return doctor.diagnose(nodeview.gather())

    def delete_tables(self, families: Sequence[str]) -> None:
        self.nft.delete_tables(families)
