"""What the kernel and the proxy answered, folded into the plan's outcomes. Pure.

The planner decides what should happen; these rules decide what a resource's outcome is once
the node has tried: a bridge the kernel refused fails its network (BridgeFailed), a refused
nftables transaction fails everything that was to be Applied (NftRejected), and a port a host
process already holds makes its publication Conflicted (PortInUse) through a replan, so no
DNAT ever shadows that process (another bind error on an address a DNAT captures:
ClaimFailed, the same way).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from bridgeport.core import planner
from bridgeport.core.plan import NodeFacts, NodePlan, Outcome, ProxyKey, State
from bridgeport.core.report import ProxyState
from bridgeport.core.sockets import ProxyReport
from bridgeport.core.specs import BRIDGE_NETWORK, ParseResult, ResourceRef

Overrides = dict[ResourceRef, Outcome]


@dataclass(frozen=True)
class LinkFailure:
    """A planned bridge the kernel would not create or update."""

    network: str
    bridge: str
    message: str


@dataclass(frozen=True)
class KeptBridge:
    """A bridge no longer planned but kept: containers are attached and its network exists."""

    network: str
    bridge: str
    ports: int


def bridges_kept(plan: NodePlan, overrides: Overrides, kept: Iterable[KeptBridge]) -> Overrides:
    """A kept bridge is reported on its network's outcome (whatever that is)."""
    out: Overrides = {}
    for k in kept:
        ref = ResourceRef(BRIDGE_NETWORK, "", k.network)
        base = overrides.get(ref) or plan.outcome(ref)
        if base is not None:
            out[ref] = replace(
                base,
                message=(
                    f"{base.message}; bridge {k.bridge} is kept with its {k.ports} attached "
                    "port(s) until this BridgeNetwork is deleted"
                ),
            )
    return out


def bridge_failed(plan: NodePlan, failures: Iterable[LinkFailure]) -> Overrides:
    """Each failed bridge makes its BridgeNetwork Failed (BridgeFailed)."""
    overrides: Overrides = {}
    for failure in failures:
        failed = plan.outcome(ResourceRef(BRIDGE_NETWORK, "", failure.network))
        if failed is not None:
            overrides[failed.ref] = replace(
                failed,
                state=State.FAILED,
                reason="BridgeFailed",
                message=f"bridge {failure.bridge}: {failure.message}",
            )
    return overrides


def nft_rejected(plan: NodePlan, error: str) -> Overrides:
    """A refused transaction changed nothing: whatever was to be Applied is Failed."""
    return {
        o.ref: replace(
            o,
            state=State.FAILED,
            reason="NftRejected",
            message=f"nftables rejected the update: {error}",
        )
        for o in plan.outcomes
        if o.state is State.APPLIED
    }


def outcomes(plan: NodePlan, overrides: Mapping[ResourceRef, Outcome]) -> tuple[Outcome, ...]:
    """The plan's outcomes with the overrides in place, in the plan's order."""
    return tuple(overrides.get(o.ref, o) for o in plan.outcomes)


def ports_in_use(reports: Iterable[ProxyReport]) -> dict[ResourceRef, str]:
    """Publications whose proxy port a host process holds, with the proxy's message."""
    return {r.owner: r.message for r in reports if r.state == "failed" and r.reason == "PortInUse"}


@dataclass
class Lost:
    """Publications that could not hold their sockets, gathered over the agent's replans."""

    in_use: dict[ResourceRef, str]  # PortInUse: someone else is there
    unclaimed: dict[ResourceRef, str]  # another bind error on an address a DNAT captures

    def add(self, plan: NodePlan, reports: Mapping[ProxyKey, ProxyReport]) -> int:
        """Record the new losers among `reports` (the failed ones will do) for `plan`; how
        many there were. A listener that only serves loopback (holds nothing) failing for
        another reason is not a loss: the DNAT does not depend on it."""
        holding: set[ProxyKey] | None = None  # O(sockets): only when something failed so
        new = 0
        for key, r in reports.items():
            if r.state != "failed" or r.owner in self.in_use or r.owner in self.unclaimed:
                continue
            if r.reason == "PortInUse":
                self.in_use[r.owner] = r.message
                new += 1
                continue
            if holding is None:
                holding = {c.key for c in plan.claims} | {p.key for p in plan.proxies if p.holds}
            if key in holding:
                self.unclaimed[r.owner] = r.message
            else:
                continue
            new += 1
        return new


def replan_without(
    resources: Sequence[ParseResult],
    facts: NodeFacts,
    in_use: Mapping[ResourceRef, str],
    unclaimed: Mapping[ResourceRef, str] | None = None,
) -> NodePlan:
    """The plan again, knowing which ports are held: those publications become Conflicted
    (PortInUse) or Failed (ClaimFailed) and lose their DNAT."""
    return planner.plan(
        resources, replace(facts, ports_in_use=dict(in_use), claims_failed=dict(unclaimed or {}))
    )


def proxy_states(reports: Iterable[ProxyReport]) -> dict[ResourceRef, ProxyState]:
    """Per publication: failed if any of its listeners failed, else listening."""
    states: dict[ResourceRef, ProxyState] = {}
    for r in reports:
        if states.get(r.owner) != "failed":
            states[r.owner] = "failed" if r.state == "failed" else "listening"
    return states


Problem = tuple[str, ...]


def problems(settled: Iterable[Outcome], errors: Iterable[str]) -> set[Problem]:
    """Everything worth telling a human: outcomes that are neither Applied nor Inactive, and
    input errors. The agent logs each once, when it first appears."""
    found: set[Problem] = {
        (str(o.ref), o.state.value, o.reason, o.message)
        for o in settled
        if o.state not in (State.APPLIED, State.INACTIVE)
    }
    found |= {("input", err) for err in errors}
    return found
