"""New bridge ports are configured at once, not at the next resync; our own writes are not news.

Scenarios: an agent with a one-hour resync; a port attached to its interContainer: false bridge
after the first sync gets hairpin mode and port isolation within seconds (netlink watch). And
the watch, fed the kernel's real messages, reacts to joins, leaves, flags someone else changed
and the deletion of a planned bridge, but not to writes that leave the flags as we want them,
carrier changes or changes to the bridge itself (the agent's own writes).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.builders import network
from tests.harness.node import agent_argv
from tests.netns import TOOLS, netns, wait_for

pytestmark = pytest.mark.root


def test_new_port_is_isolated_without_waiting_for_resync(tmp_path: Path) -> None:
    """A veth enslaved after the first sync is isolated and in hairpin mode within seconds."""
    doc = network("n", "10.96.6.0/24", bridge="bp-watch", interContainer=False)
    (tmp_path / "net.yaml").write_text(yaml.safe_dump(doc))
    with netns("bpw") as node:
        state = tmp_path / "out" / "state.json"
        agent = node.popen(
            agent_argv(tmp_path, state, "--resync", "3600"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(state.exists, what="first sync")
            node.run("ip link add wport type veth peer name wpeer")
            node.run("ip link set wport master bp-watch")
            wait_for(
                lambda: "isolated on" in node.run("ip -d link show wport").stdout,
                timeout=5,
                what="port isolation",
            )
            assert "hairpin on" in node.run("ip -d link show wport").stdout
        finally:
            agent.terminate()
            agent.wait(10)
            node.run([sys.executable, "-m", "bridgeport", "agent", "--cleanup"], check=False)


def test_watch_reacts_to_news_only() -> None:
    """Each step's netlink messages, judged by the real PortWatch inside a netns."""
    with netns("bpwp") as node:
        out = node.run([sys.executable, str(TOOLS / "port_watch_probe.py")]).stdout
    assert json.loads(out) == {
        "join": True,
        "ours": False,  # hairpin + isolation set as the agent sets them
        "ours again": False,  # the same write again: the kernel announces it all the same
        "carrier": False,
        "bridge mtu": False,
        "hairpin off": True,
        "restored": False,
        "isolated off": True,
        "restored again": False,
        "leave": True,
        "rejoin": True,
        "bridge deleted": True,
    }
