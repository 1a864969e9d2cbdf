"""A BridgeNetwork with subnet6 on a node where IPv6 is off (kind's ipv4 clusters, plain Docker
containers): the IPv4 side is applied, the entry says IPv6Disabled, nothing fails.

Before, adding the IPv6 gateway failed with EACCES and failed the whole bridge.
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
from tests.netns import netns, wait_for

pytestmark = pytest.mark.root


def test_subnet6_without_ipv6_applies_the_ipv4_side(tmp_path: Path) -> None:
    (tmp_path / "net.yaml").write_text(
        yaml.safe_dump(network("dual", "10.96.6.0/24", bridge="bp-dual6", subnet6="fd00:96:6::/64"))
    )
    state = tmp_path / "out" / "state.json"
    with netns("bp6") as node:
        for conf in ("all", "default"):
            node.sysctl(f"net.ipv6.conf.{conf}.disable_ipv6", "1")
        agent = node.popen(
            agent_argv(tmp_path, state),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(state.exists, timeout=20, what="first sync")
            (entry,) = json.loads(state.read_text())["resources"]
            assert (entry["state"], entry["reason"]) == ("Applied", "IPv6Disabled"), entry
            assert "subnet6 fd00:96:6::/64 not applied" in entry["message"]
            addrs = node.run("ip -j addr show bp-dual6").stdout
            assert "10.96.6.1" in addrs and "fd00:96:6::1" not in addrs
            assert "bp-dual6" in node.run("nft list ruleset").stdout
        finally:
            agent.terminate()
            agent.wait(10)
            node.run([sys.executable, "-m", "bridgeport", "agent", "--cleanup"])
