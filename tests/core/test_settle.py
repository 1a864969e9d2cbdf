"""The pure rules folding the kernel's and the proxy's answers into outcomes (core/settle.py).

Scenarios: a failed bridge fails only its own network; a refused transaction fails only what
was to be Applied; a publication with one failed listener is failed; only held ports replan;
problems are the outcomes neither Applied nor Inactive, plus input errors.
"""

from __future__ import annotations

from bridgeport.core import planner, settle
from bridgeport.core.specs import ResourceRef
from bridgeport.proxy.listener_status import ProxyStatus
from tests.core.parsed import NODE, net, pub, states

WEB = ResourceRef("PortPublication", "default", "web")
API = ResourceRef("PortPublication", "default", "api")


def test_bridge_failure_fails_its_network_only() -> None:
    plan = planner.plan([net("a", "10.1.0.0/24"), net("b", "10.2.0.0/24"), pub("web", 80)], NODE)
    overrides = settle.bridge_failed(
        plan, [settle.LinkFailure("a", "bp-a", "EPERM"), settle.LinkFailure("gone", "bp-gone", "x")]
    )
    settled = {o.ref.name: o for o in settle.outcomes(plan, overrides)}
    assert (settled["a"].state.value, settled["a"].reason) == ("Failed", "BridgeFailed")
    assert settled["a"].message == "bridge bp-a: EPERM"
    assert settled["b"] == plan.outcome(settled["b"].ref)
    assert settled["web"] == plan.outcome(WEB)


def test_rejection_fails_only_what_was_to_be_applied() -> None:
    plan = planner.plan(
        [pub("web", 80, "2026-01-01T00:00:00Z"), pub("late", 80, "2026-02-01T00:00:00Z")], NODE
    )
    overrides = settle.nft_rejected(plan, "Error: boom")
    assert set(overrides) == {WEB}
    assert overrides[WEB].message == "nftables rejected the update: Error: boom"
    assert states(plan)["late"] == ("Conflicted", "PortConflict")


def test_proxy_states_and_held_ports() -> None:
    reports = [
        ProxyStatus("listening", WEB),
        ProxyStatus("failed", WEB, "PortInUse", "held"),
        ProxyStatus("listening", API),
        ProxyStatus("failed", API, "PermissionDenied", ""),
    ]
    assert settle.proxy_states(reports) == {WEB: "failed", API: "failed"}
    assert settle.ports_in_use(reports) == {WEB: "held"}
    assert settle.proxy_states(reports[:1]) == {WEB: "listening"}
    plan = settle.replan_without([pub("web", 80)], NODE, {WEB: "held"})
    assert states(plan)["web"] == ("Conflicted", "PortInUse") and not plan.dnats


def test_problems() -> None:
    plan = planner.plan(
        [
            pub("web", 80, "2026-01-01T00:00:00Z"),
            pub("late", 80, "2026-02-01T00:00:00Z"),
            pub("bad", 0),
        ],
        NODE,
    )
    found = settle.problems(plan.outcomes, ["x.yaml: unreadable"])
    assert {p[0] for p in found} == {
        "PortPublication default/late",
        "PortPublication default/bad",
        "input",
    }
