"""The in-memory Dataplane is strict where nftables is, and where bridgeport must be.

Scenarios: any sequence of plans converges through `ruleset.diff` (property: every command is
accepted and leaves exactly the new table); commands nft would refuse are refused, all or
nothing; a table that is not ours, or a diff that does not converge, breaks an invariant;
drift is seen after tampering; a foreign interface is never taken, a refused bridge fails.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridgeport.adapters.fake import FakeDataplane, InvariantBroken
from bridgeport.adapters.nft import NftError
from bridgeport.core import planner, ruleset
from tests.core.parsed import NODE, net, pub


def tables(*resources: Any) -> tuple[ruleset.Table, ruleset.Table]:
    return ruleset.render(planner.plan(list(resources), NODE))


NETWORKS = [
    net("a", "10.1.0.0/24"),
    net("b", "10.2.0.0/24", interContainer=False),
    net("c", "10.3.0.0/24", internal=True),
    net("d", "10.4.0.0/24", isolation="Shared", subnet6="fd00:4::/64"),
]
PUBLICATIONS = [
    pub("p80", 80),
    pub("p81", 81, target={"address": "10.1.0.3", "port": 81}),
    pub("range", 9000, hostPortEnd=9005),
    pub("shift", 7000, hostPortEnd=7002, target={"address": "10.1.0.4", "port": 8000}),
    pub("udp", 53, protocol="UDP"),
    pub("host", 8443, hostIP="192.0.2.1"),
    # interContainer: false (icc_proxy_* elements), dual stack, a family wildcard
    pub("quiet", 8080, target={"address": "10.2.0.2", "port": 80}),
    pub(
        "quiet-host",
        8081,
        hostIP="192.0.2.1",
        hostPortEnd=8083,
        target={"address": "10.2.0.3", "port": 81},
    ),
    pub("dual", 8084, target={"address": "10.4.0.2", "address6": "fd00:4::2", "port": 80}),
    pub("any6", 8085, hostIP="::", target={"address": "fd00:4::3", "port": 80}),
]
subsets = st.lists(st.sampled_from(NETWORKS + PUBLICATIONS), unique_by=id, max_size=10)


@settings(max_examples=150, deadline=None)
@given(st.lists(subsets, min_size=1, max_size=5))
def test_any_sequence_of_plans_converges_incrementally(steps: list[list[Any]]) -> None:
    """After the first (full) apply, every change is a diff the fake accepts and that leaves
    exactly the new tables (the fake checks the latter itself on every transaction)."""
    fake = FakeDataplane()
    for i, resources in enumerate(steps):
        fake.apply_tables(tables(*resources), full=i == 0)
        assert fake.drifted() == []
    assert not any(t.full for t in fake.transactions[1:])


def test_refused_commands_change_nothing() -> None:
    fake = FakeDataplane()
    fake.apply_tables(tables(pub("p80", 80)), full=True)
    before = {f: m.copy() for f, m in fake.tables.items()}
    fake.tamper_delete_table("ip6")  # now every ip6 command fails
    with pytest.raises(NftError, match="No such file"):
        fake.apply_tables(
            tables(pub("p81", 81), net("a", "10.1.0.0/24", subnet6="fd00::/64")), full=False
        )
    assert fake.tables["ip"] == before["ip"], "half a transaction was applied"
    # The real adapter forgets what it applied after a refusal: the next apply is full.
    fake.apply_tables(tables(pub("p81", 81)), full=False)
    assert fake.transactions[-1].full


def test_the_kernels_refusals() -> None:
    fake = FakeDataplane()
    fake.apply_tables(tables(net("a", "10.1.0.0/24")), full=True)
    stage = {f: m.copy() for f, m in fake.tables.items()}
    refused = [
        "add rule ip bridgeport nochain counter drop",
        "delete element ip bridgeport pub_any { tcp . 1 }",
        'add element ip bridgeport fwd_in { "bp-x" : jump from_bp-x }',  # no such chain
        'add element ip bridgeport fwd_in { "bp-a" : jump to_bp-a }',  # key exists, new value
        "delete chain ip bridgeport from_bp-a",  # still jumped to from fwd_in
        "flush chain ip bridgeport nochain",
        "add element ip bridgeport nomap { 1 }",
        "add element ip bridgeport pub_any { tcp . 1 }",  # a map element needs a value
    ]
    for cmd in refused:
        with pytest.raises(NftError):
            fake._execute(stage, cmd)


def test_only_our_tables() -> None:
    fake = FakeDataplane()
    fake.apply_tables(tables(), full=True)
    stage = {f: m.copy() for f, m in fake.tables.items()}
    for cmd in ("add rule inet filter input accept", "flush chain ip nat POSTROUTING"):
        with pytest.raises(InvariantBroken, match="not ours"):
            fake._execute(stage, cmd)


def test_a_diff_that_does_not_converge_breaks_an_invariant(monkeypatch: pytest.MonkeyPatch) -> None:
    from bridgeport.adapters import fake as fake_module

    fake = FakeDataplane()
    fake.apply_tables(tables(pub("p80", 80)), full=True)

    def lossy(old: ruleset.Table, new: ruleset.Table) -> list[str] | None:
        cmds = ruleset.diff(old, new)
        return [c for c in cmds if not c.startswith("delete")] if cmds is not None else None

    monkeypatch.setattr(fake_module, "diff", lossy)
    with pytest.raises(InvariantBroken, match="does not turn"):
        fake.apply_tables(tables(pub("p81", 81)), full=False)


def test_drift_is_seen() -> None:
    fake = FakeDataplane()
    fake.apply_tables(tables(net("a", "10.1.0.0/24")), full=True)
    fake.tamper_flush_chain("ip", "forward")
    assert fake.drifted() == ["ip"]
    fake.apply_tables(tables(net("a", "10.1.0.0/24")), full=True)
    fake.tamper_delete_table("ip6")
    assert fake.drifted() == ["ip6"]


def test_bridges_foreign_and_refused() -> None:
    plan = planner.plan([net("a", "10.1.0.0/24"), net("b", "10.2.0.0/24")], NODE)
    fake = FakeDataplane(foreign_interfaces={"bp-b"})
    fake.refuse_bridge("bp-a", "Operation not permitted")
    failures = fake.converge_bridges(plan.bridges)
    assert [(f.bridge, f.message) for f in failures] == [
        ("bp-a", "Operation not permitted"),
        ("bp-b", "interface bp-b exists and is not managed by bridgeport"),
    ]
    assert fake.converge_bridges(plan.bridges[:1]) == []  # refused once only
    assert set(fake.bridges) == {"bp-a"}
    assert fake.remove_stale_bridges([]) == (["bp-a"], [])
