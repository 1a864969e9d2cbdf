"""Sysctls: read by default, written only when the agent is told to manage them.

Scenarios: with --manage-sysctls a node without forwarding gets IPv4/IPv6 forwarding turned on
once there is something to serve; without it the agent leaves them alone and falls back to
the proxy.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.builders import network
from tests.harness.node import agent_argv
from tests.netns import netns, wait_for

pytestmark = pytest.mark.root


@pytest.mark.parametrize("manage", [True, False])
def test_forwarding_managed_only_when_asked(tmp_path: Path, manage: bool) -> None:
    """--manage-sysctls turns forwarding on; without it the sysctl stays as it was."""
    (tmp_path / "net.yaml").write_text(yaml.safe_dump(network("n", "10.96.5.0/24")))
    with netns("bps") as node:
        node.sysctl("net.ipv4.ip_forward", "0")
        extra = ["--manage-sysctls"] if manage else []
        agent = node.popen(
            agent_argv(tmp_path, tmp_path / "out" / "state.json", *extra),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for((tmp_path / "out" / "state.json").exists, what="first sync")
        value = node.run("sysctl -n net.ipv4.ip_forward").stdout.strip()
        assert value == ("1" if manage else "0")
        agent.terminate()
        agent.wait(10)
        node.run([sys.executable, "-m", "bridgeport", "agent", "--cleanup"])
