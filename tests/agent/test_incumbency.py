"""One bad network never takes down a good one (issue 11, case 7), with a real agent.

Scenarios:
- a newcomer whose subnet overlaps a working network's (and whose name sorts first) is
  Conflicted; the working bridge and its container port stay; 0.0.0.0/0 is Invalid
- the working network keeps its claim across an agent restart (state file)
- a network that loses a conflict while containers are attached keeps its bridge (reported);
  deleting the resource removes it
- stale .state.json.* temporary files are removed when the agent starts (case 8)
"""

from __future__ import annotations

import pytest
import yaml

from tests.builders import network
from tests.harness.node import World
from tests.netns import wait_for

pytestmark = pytest.mark.root

WORKING = network("zz-working", "10.98.0.0/24", bridge="bp-zz")


def _write(w: World, name: str, *docs: dict[str, object]) -> None:
    tmp = w.agent.resources / f".{name}.tmp"
    tmp.write_text(yaml.safe_dump_all(docs))
    tmp.rename(w.agent.resources / name)


def _ports(w: World, bridge: str) -> str:
    return w.node.run(f"ip -o link show master {bridge}", check=False).stdout


def test_newcomer_never_takes_a_working_subnet(w: World) -> None:
    w.agent.apply(WORKING)
    w.agent.wait({"zz-working": "Applied"})
    w.container("bp-zz", "10.98.0.2/24", "10.98.0.1")
    assert _ports(w, "bp-zz")
    _write(
        w,
        "newcomer.yaml",
        network("aa-new", "10.98.0.0/16", bridge="bp-aa"),
        network("aa-all", "0.0.0.0/0", bridge="bp-all"),
    )
    state = w.agent.wait({"zz-working": "Applied", "aa-new": "Conflicted", "aa-all": "Invalid"})
    assert _ports(w, "bp-zz"), "the working bridge lost its container port"
    assert "bp-aa" not in w.node.run("ip -o link").stdout
    entry = next(r for r in state["resources"] if r["name"] == "aa-new")
    assert "BridgeNetwork zz-working" in entry["message"]
    # A restart remembers who was first (standalone files have no creation time).
    w.agent.stop()
    (w.agent.resources / "newcomer.yaml").unlink()
    _write(w, "newcomer.yaml", network("aa-new", "10.98.0.0/16", bridge="bp-aa"))
    leftover = w.agent.state_file.parent / f".{w.agent.state_file.name}.abcd1234"
    leftover.write_text("{")
    # A kill -9 mid-append leaves the journal's last line cut, and a rewrite its temporary:
    # the incumbency is still read from the lines before.
    journal = w.agent.state_file.with_name(w.agent.state_file.name + ".journal")
    with journal.open("a") as f:
        f.write('{"entries":[{"kind":"BridgeNetwork","nam')
    journal_leftover = journal.parent / f".{journal.name}.abcd1234"
    journal_leftover.write_text("{")
    w.agent.start()
    w.agent.wait({"zz-working": "Applied", "aa-new": "Conflicted"})
    assert _ports(w, "bp-zz")
    wait_for(
        lambda: not leftover.exists() and not journal_leftover.exists(),
        what="stale temporary state and journal files removed",
    )


def test_losing_network_keeps_its_attached_bridge(w: World) -> None:
    a = network("net-a", "10.98.1.0/24", bridge="bp-na")
    b = network("net-b", "10.98.2.0/24", bridge="bp-nb")
    w.agent.apply(a, b)
    w.agent.wait({"net-a": "Applied", "net-b": "Applied"})
    w.container("bp-nb", "10.98.2.2/24", "10.98.2.1")
    _write(w, "resources.yaml", a, network("net-b", "10.98.0.0/16", bridge="bp-nb"))
    state = w.agent.wait({"net-a": "Applied", "net-b": "Conflicted"})
    entry = next(r for r in state["resources"] if r["name"] == "net-b")
    assert "bridge bp-nb is kept" in entry["message"], entry
    assert _ports(w, "bp-nb"), "the container was detached"
    _write(w, "resources.yaml", a)
    w.agent.wait({"net-a": "Applied"})
    wait_for(
        lambda: "bp-nb" not in w.node.run("ip -o link").stdout,
        what="bridge removed with its resource",
    )


def test_subnet_over_a_node_network_is_a_warning(w: World) -> None:
    """The node's 192.0.2.1/24 is inside 192.0.0.0/16: applied, with the warning."""
    w.agent.apply(network("ov", "192.0.0.0/16", bridge="bp-ov", gateway="192.0.3.1"))
    state = w.agent.wait({"ov": "Applied"})
    entry = next(r for r in state["resources"] if r["name"] == "ov")
    assert entry["reason"] == "SubnetOverlapsNode" and "192.0.2.0/24" in entry["message"]
