"""nftables rendering and the in-place diff.

Scenarios: an unchanged plan diffs to nothing; one changed publication is one element
delete + add; a new network adds its chains and vmap elements; a removed network deletes its
chains after their vmap elements; turning interContainer off is element changes only (the
bridge into icc_off, its ports into icc_proxy_*); changed declarations force a full replace;
the fingerprint counts what the kernel would list.
"""

from __future__ import annotations

from typing import Any

from bridgeport.core import planner, ruleset
from bridgeport.core.plan import NodeFacts
from tests.core.parsed import NODE, net, pub


def tables(*resources: Any) -> tuple[ruleset.Table, ruleset.Table]:
    return ruleset.render(planner.plan(list(resources), NODE))


def test_unchanged_plan_is_no_commands() -> None:
    """Same input twice: the diff is empty (a resync of a healthy node does nothing)."""
    a = tables(net("n", "10.0.0.0/24"), pub("web", 80))
    b = tables(net("n", "10.0.0.0/24"), pub("web", 80))
    assert ruleset.diff(a[0], b[0]) == []


def test_changed_target_is_one_element_swap() -> None:
    """Retargeting a publication deletes and re-adds its map element, nothing else."""
    old = tables(pub("web", 80))[0]
    new = tables(pub("web", 80, target={"address": "10.0.0.3", "port": 80}))[0]
    cmds = ruleset.diff(old, new)
    assert cmds == [
        "delete element ip bridgeport pub_any { tcp . 80 }",
        'add element ip bridgeport pub_any { tcp . 80 comment "default/web" : 10.0.0.3 . 80 }',
    ]


def test_network_added_then_removed() -> None:
    """A new network adds chains before the vmap elements that jump to them, and back."""
    empty = tables()[0]
    with_net = tables(net("n", "10.0.0.0/24"))[0]
    added = ruleset.diff(empty, with_net)
    assert added is not None
    assert added.index("add chain ip bridgeport from_bp-n") < added.index(
        'add element ip bridgeport fwd_in { "bp-n" : jump from_bp-n }'
    )
    removed = ruleset.diff(with_net, empty)
    assert removed is not None
    assert removed.index('delete element ip bridgeport fwd_in { "bp-n" }') < removed.index(
        "delete chain ip bridgeport from_bp-n"
    )


def test_icc_off_is_elements_only() -> None:
    """interContainer: false adds the bridge to icc_off and its published ports to
    icc_proxy_any; no declaration or chain changes, so no full replace."""
    chatty = tables(net("n", "10.0.0.0/24"), pub("web", 80), pub("dns", 53, protocol="UDP"))[0]
    quiet = tables(
        net("n", "10.0.0.0/24", interContainer=False),
        pub("web", 80),
        pub("dns", 53, protocol="UDP"),
    )[0]
    assert ruleset.diff(chatty, quiet) == [
        'add element ip bridgeport icc_off { "bp-n" }',
        'add element ip bridgeport icc_proxy_any { "bp-n" . tcp . 80 comment "default/web", '
        '"bp-n" . udp . 53 comment "default/dns" }',
    ]
    plan = planner.plan(
        [net("n", "10.0.0.0/24", interContainer=False), pub("dns", 53, protocol="UDP")], NODE
    )
    assert plan.udp_mappings() == {(4, 53): {("*", "10.0.0.2", 80, "bp-n")}}


def test_declaration_change_forces_full_replace() -> None:
    """If a set declaration differs, diff refuses and the caller replaces the table."""
    a = tables()[0]
    b = ruleset.Table(a.family, a.lookups[1:], a.chains, a.elements)
    assert ruleset.diff(a, b) is None


def test_replace_script_is_atomic_declare_delete_redeclare() -> None:
    """The full script works whether or not the table exists, in one batch."""
    table = tables(*(pub(f"p{i}", 8000 + i) for i in range(20)))[0]
    script = table.replace_script()
    assert script.startswith("add table ip bridgeport\ndelete table ip bridgeport\ntable ip")
    # The table as text() writes it, its elements in whatever order the sets hold them.
    assert sorted(script.splitlines()[2:]) == sorted(table.text().splitlines())


def test_set_digest_is_the_xor_of_its_element_hashes() -> None:
    """The incremental renderer flips one element's hash in or out of a set's digest: that is
    only right while a whole set's digest is the XOR of the same hashes."""
    table = tables(net("n", "10.0.0.0/24"), *(pub(f"p{i}", 8000 + i) for i in range(5)))[0]
    checked = 0
    for elements in table.elements.values():
        flipped = 0
        for e in elements:
            flipped ^= ruleset.element_hash(e)
        assert ruleset.elements_digest(elements) == flipped
        checked += bool(elements)
    assert checked >= 3  # maps with values and comments, sets without


def test_fingerprint_counts() -> None:
    """Fingerprint: rules per chain and elements per set, as a listing would show them."""
    same_ports = {"hostPortEnd": 95, "target": {"address": "10.0.0.2", "port": 90}}
    t = tables(net("n", "10.0.0.0/24"), pub("web", 80), pub("r", 90, **same_ports))[0]
    fp = t.fingerprint()
    assert fp["set pub_any"] == 1 and fp["set pub_any_range"] == 1
    assert fp["chain forward"] == 3 and fp["set fwd_in"] == 1


def test_no_forwarding_renders_no_dnat() -> None:
    """A family without forwarding has empty DNAT maps (the proxy serves it)."""
    t = ruleset.render(planner.plan([pub("web", 80)], NodeFacts("n", ipv4_forwarding=False)))[0]
    assert not t.elements["pub_any"]
