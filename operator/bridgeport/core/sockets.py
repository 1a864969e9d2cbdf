"""What the agent tells the proxy manager about the sockets it wants, and what it answers. Pure.

A sync names every wanted listener (ProxyPort) and port claim (Claim). Between partial plans
the agent can also say how they changed since the last sync (`SocketChanges`), so that one
publication added among 10,000 costs a few binds, not a walk over every claim. The answer
(`SocketReports`) holds every wanted socket's report, and apart the few a reconcile reads:
the failed ones and the listeners' (what a publication's proxy state is made of).
"""

from __future__ import annotations

import typing
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from bridgeport.core.plan import Claim, ProxyKey, ProxyPort
from bridgeport.core.specs import ResourceRef


class ProxyReport(typing.Protocol):
    """One socket's answer (proxy.listener_status.ProxyStatus has this shape)."""

    @property
    def state(self) -> str: ...  # listening | failed

    @property
    def reason(self) -> str: ...

    @property
    def message(self) -> str: ...

    @property
    def owner(self) -> ResourceRef: ...


@dataclass(frozen=True)
class SocketChanges:
    """How the wanted listeners and claims differ from those of the last sync: the ones that
    went and the ones that came (a changed one is in both, its old and its new version)."""

    proxies_removed: tuple[ProxyPort, ...] = ()
    proxies_added: tuple[ProxyPort, ...] = ()
    claims_removed: tuple[Claim, ...] = ()
    claims_added: tuple[Claim, ...] = ()

    def keys(self) -> set[ProxyKey]:
        """Every address the change touches."""
        keys = {p.key for p in (*self.proxies_removed, *self.proxies_added)}
        return keys | {c.key for c in (*self.claims_removed, *self.claims_added)}


R_co = TypeVar("R_co", bound=ProxyReport, covariant=True)


class SocketReports(Mapping[ProxyKey, R_co], Generic[R_co]):
    """Every wanted socket's report, and apart, readable in O(their number): the failed ones
    (listeners first, then claims, each by address) and `served`, the listeners' whose
    address no claim names (a bare claim is no proxy)."""

    __slots__ = ("_every", "failed", "served")

    def __init__(
        self,
        every: Mapping[ProxyKey, R_co],
        failed: Mapping[ProxyKey, R_co],
        served: Mapping[ProxyKey, R_co],
    ) -> None:
        self._every = every
        self.failed = failed
        self.served = served

    @classmethod
    def of(
        cls, every: Mapping[ProxyKey, R_co], claimed: Container[ProxyKey]
    ) -> SocketReports[R_co]:
        """The reports of a whole sync sorted out (O(sockets)); `claimed`: the claims' keys.
        Every key that is not a claim's is a listener's."""
        return cls(
            every,
            {k: r for k, r in every.items() if r.state == "failed"},
            {k: r for k, r in every.items() if k not in claimed},
        )

    def __getitem__(self, key: ProxyKey) -> R_co:
        return self._every[key]

    def __iter__(self) -> Iterator[ProxyKey]:
        return iter(self._every)

    def __len__(self) -> int:
        return len(self._every)
