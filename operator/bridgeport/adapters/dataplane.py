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

    def refresh(self) -> None:
        """Read everything anew on the next calls (a periodic resync): nothing cached."""
        ...

    # bridges
    def converge_bridges(self, bridges: Sequence[BridgePlan]) -> list[LinkFailure]:
        """Create or update each planned bridge and configure its ports. Never raises for one
        bridge: its failure is returned."""
        ...

    def remove_stale_bridges(
        self,
        keep: Iterable[str],
        protect: Collection[str] = (),
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
        # Netlink answers kept while the port watch hears no link or address message (its
        # epoch stays): a reconcile of one publication reads no netlink dump. Each holds the
        # epoch read before asking netlink, so a message during the dump voids it.
        self._links: tuple[int, facts.Links] | None = None
        self._converged: tuple[int, tuple[BridgePlan, ...]] | None = None
        self._swept: tuple[int, frozenset[str], frozenset[str]] | None = None

    def _epoch(self) -> int | None:
        """The watch's message count, None when it is not running (then nothing is cached)."""
        return self.port_watch.epoch if self.port_watch.live else None

    def refresh(self) -> None:
        self._links = self._converged = self._swept = None

    def gather_facts(self, node: str, labels: Mapping[str, str]) -> NodeFacts:
        epoch = self._epoch()
        if epoch is None or self._links is None or self._links[0] != epoch:
            self._links = None if epoch is None else (epoch, facts.read_links())
        return facts.gather(node, labels, self._links[1] if self._links else None)

    def enable_forwarding(self) -> None:
        facts.enable_forwarding()

    def listening_ports(self) -> dict[str, frozenset[int]]:
        return facts.listening_ports()

    def converge_bridges(self, bridges: Sequence[BridgePlan]) -> list[LinkFailure]:
        epoch, planned = self._epoch(), tuple(bridges)
        if epoch is not None and self._converged == (epoch, planned):
            return []  # converged to this plan, and no link changed since
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
        self._converged = None if failures or epoch is None else (epoch, planned)
        return failures

    def remove_stale_bridges(
        self,
        keep: Iterable[str],
        protect: Collection[str] = (),
    ) -> tuple[list[str], list[KeptBridge]]:
        epoch, kept, guarded = self._epoch(), frozenset(keep), frozenset(protect)
        if epoch is not None and self._swept == (epoch, kept, guarded):
            return [], []  # nothing stale then, and no link changed since
        removed, held = links.remove_stale(kept, guarded)
        self._swept = None if held or epoch is None else (epoch, kept, guarded)
        return removed, held

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
