"""Golden rulesets: the exact nft text each case in tests/golden/cases.yaml renders to.

Scenarios: one per case (empty node, the shipped examples, isolation/internal/shared matrix,
host IPs with ranges/IPv6/SCTP, a node without IPv4 forwarding, dual stack with family
wildcards and an interContainer: false network). The .nft files are the
ruleset documentation; CI fails when code and documentation drift apart.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridgeport.adapters.dirsource import load_files
from bridgeport.core import planner, ruleset, specs
from bridgeport.core.plan import Fwmark, NodeFacts
from tests.builders import API

ROOT = Path(__file__).parent.parent.parent
GOLDEN = ROOT / "tests" / "golden"
CASES: dict[str, Any] = yaml.safe_load((GOLDEN / "cases.yaml").read_text())


def render_case(case: dict[str, Any]) -> str:
    docs = [{"apiVersion": API, **d} for d in case.get("resources", [])]
    resources = [specs.parse(d) for d in docs]
    if "files" in case:
        loaded, errors = load_files([ROOT / f for f in case["files"]])
        assert not errors
        resources += loaded
    node = case["node"]
    facts = NodeFacts(
        name="node-1",
        addresses=frozenset(ipaddress.ip_address(a) for a in node["addresses"]),
        ipv4_forwarding=node.get("ipv4_forwarding", True),
        accept_mark=Fwmark.parse(node["accept_fwmark"]) if "accept_fwmark" in node else None,
        route_localnet=node.get("route_localnet", False),
    )
    plan = planner.plan(resources, facts)
    header = [f"# {o.ref}: {o.state.value} ({o.reason}) {o.message}" for o in plan.outcomes]
    header += [
        f"# proxy {specs.hostport(p.listen)}:{p.port}/{p.protocol.value} -> "
        f"{specs.hostport(p.target)}:{p.target_port} ({p.why})"
        for p in plan.proxies
    ]
    header += [
        f"# claim {specs.hostport(c.listen)}:{c.port}/{c.protocol.value}" for c in plan.claims
    ]
    return (
        "\n".join(header)
        + ("\n" if header else "")
        + "".join(t.text() for t in ruleset.render(plan))
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    """The rendered ruleset equals tests/golden/<name>.nft (UPDATE_GOLDEN=1 rewrites it)."""
    path = GOLDEN / f"{name}.nft"
    text = render_case(CASES[name])
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"{path} missing: run UPDATE_GOLDEN=1 pytest {__file__}"
    assert text == path.read_text()
