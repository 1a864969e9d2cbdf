"""Netlink watch over the ports of our bridges: react at once to what a reconcile must fix.

A container attached to one of our bridges needs hairpin mode (and port isolation with
interContainer: false) now, not a resync later. But every link message is not a reason to
reconcile: the reconcile's own writes (setting those very flags), carrier changes and other
bridges' traffic would keep the agent reconciling forever. The watch therefore reacts only to
  - a port joining or leaving one of our bridges,
  - a port of ours whose hairpin/isolation flags differ from what we want,
  - one of our planned bridges being deleted.
`PortFilter` is that decision, pure and fed reduced messages; `PortWatch` feeds it from netlink.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute

from bridgeport.adapters.links import HAIRPIN_ON, port_flags

RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
AF_BRIDGE = 7


@dataclass(frozen=True)
class LinkEvent:
    """One link message, reduced to what the filter needs."""

    index: int
    name: str | None = None
    master: int | None = None  # the bridge it is enslaved to, if any
    deleted: bool = False  # the link is gone (RTM_DELLINK, family unspecified)
    unported: bool = False  # it stopped being a bridge port (RTM_DELLINK, family bridge)
    flags: tuple[int, int] | None = None  # (hairpin mode, isolated), when the message says


class PortFilter:
    """Decides whether a link event can change what we program. Not thread-safe by itself:
    `PortWatch` calls `relevant` from its thread; `expect` replaces the policy atomically."""

    def __init__(self) -> None:
        self._isolated: Mapping[str, bool] = {}  # our planned bridge name -> isolated ports
        self._names: dict[int, str] = {}  # ifindex -> name, every link we have heard of
        self._masters: dict[int, int] = {}  # port ifindex -> bridge ifindex, every port

    def expect(self, isolated_by_bridge: Mapping[str, bool]) -> None:
        """The bridges we program and whether their ports are isolated. Set before converging,
        so that the events of our own changes are judged against what we are about to do."""
        self._isolated = dict(isolated_by_bridge)

    def seed(self, events: Iterable[LinkEvent]) -> None:
        """Learn the links that exist when the watch starts (a dump), without reacting."""
        for event in events:
            self.relevant(event)

    def relevant(self, event: LinkEvent) -> bool:
        if event.name:
            self._names[event.index] = event.name
        before = self._masters.get(event.index)
        if event.deleted or event.unported:
            self._masters.pop(event.index, None)
            ours_gone = event.deleted and self._names.get(event.index) in self._isolated
            if event.deleted:
                self._names.pop(event.index, None)
            return self._ours(before) is not None or ours_gone
        if event.master is None:
            self._masters.pop(event.index, None)
            return self._ours(before) is not None  # left one of our bridges
        self._masters[event.index] = event.master
        isolated = self._ours(event.master)
        if isolated is None:
            return self._ours(before) is not None  # moved from one of ours to a foreign one
        if before != event.master:
            return True  # joined one of our bridges
        return event.flags is not None and event.flags != (HAIRPIN_ON, int(isolated))

    def _ours(self, bridge_index: int | None) -> bool | None:
        """Whether ports of this bridge are isolated, or None when it is not one of ours."""
        if bridge_index is None:
            return None
        return self._isolated.get(self._names.get(bridge_index, ""))


def reduce(msg: Any) -> LinkEvent | None:
    """A pyroute2 link message as a LinkEvent (None for anything else)."""
    kind = msg.get("event")
    if kind not in ("RTM_NEWLINK", "RTM_DELLINK"):
        return None
    bridge_family = msg["family"] == AF_BRIDGE
    if kind == "RTM_DELLINK":
        return LinkEvent(msg["index"], unported=bridge_family, deleted=not bridge_family)
    return LinkEvent(
        msg["index"],
        name=msg.get_attr("IFLA_IFNAME"),
        master=msg.get_attr("IFLA_MASTER") or None,
        flags=port_flags(msg),
    )


class PortWatch:
    """Runs `PortFilter` over this namespace's link messages in a thread of its own."""

    def __init__(self) -> None:
        self.filter = PortFilter()
        self._lock = threading.Lock()
        # Counts every link and address message: what was read from netlink at one count
        # is still true while the count stays (the dataplane's caches), when `live`.
        self.epoch = 0
        self.live = False

    def expect(self, isolated_by_bridge: Mapping[str, bool]) -> None:
        with self._lock:
            self.filter.expect(isolated_by_bridge)

    def run(self, changed: Callable[[], object]) -> None:
        """Blocking (run it in a thread): call `changed()` for each relevant link event."""
        ipr = IPRoute()
        try:
            # Subscribe first: nothing between dump and watch.
            ipr.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
            with IPRoute() as dump:
                seen = [e for e in map(reduce, dump.get_links()) if e is not None]
            with self._lock:
                self.filter.seed(seen)
            self.live = True
            while True:
                messages = ipr.get()
                self.epoch += 1  # before judging them: a cache of the old count is stale
                for msg in messages:
                    event = reduce(msg)
                    if event is None:
                        continue
                    with self._lock:
                        relevant = self.filter.relevant(event)
                    if relevant:
                        changed()
        finally:
            self.live = False
            self.epoch += 1
            ipr.close()
