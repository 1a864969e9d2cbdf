"""The end-to-end suite in its external-cluster mode (what tests/e2e/kind.sh uses), run here.

kind needs Docker, which these machines lack. This builds the same shape from namespaces: three
"nodes" on one switch (a control-plane node used as the client, two workers), Node objects
with their InternalIPs, agents and the controller already running (as the chart would run
them), then runs tests/e2e/test_e2e.py with BRIDGEPORT_E2E_KUBECONFIG and
BRIDGEPORT_E2E_NODE_EXEC="nsenter --net=/run/netns/{node}" instead of "docker exec {node}".

Scenario: the whole e2e suite passes in external mode (node discovery, labels, node exec,
container namespaces created on the nodes, tools run by the nodes' python3).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.world import KubeWorld, Node, loopback_bridge
from tests.netns import Netns, netns, run, veth

pytestmark = [pytest.mark.root, pytest.mark.apiserver]
REPO = Path(__file__).resolve().parents[2]


def node_object(name: str, address: str, control_plane: bool) -> dict[str, Any]:
    labels = {"node-role.kubernetes.io/control-plane": ""} if control_plane else {}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}


@pytest.fixture
def fake_kind(control_plane: Any, crds: Any, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Nodes as named namespaces on one switch, agents and controller running."""
    with ExitStack() as stack:
        switch = stack.enter_context(netns("bpxs"))
        switch.run("ip link add sw type bridge")
        switch.run("ip link set sw up")
        names = {"cp": "bpx-cp", "w1": "bpx-w1", "w2": "bpx-w2"}
        addresses = {"cp": "192.0.2.2", "w1": "192.0.2.1", "w2": "192.0.2.3"}
        port = int(control_plane.server.rsplit(":", 1)[1])
        for key, name in names.items():
            run(["ip", "netns", "add", name])
            stack.callback(run, ["ip", "netns", "del", name], check=False)
            ns = Netns(name)
            ns.run("ip link set lo up")
            veth(ns, "eth0", switch, f"sw-{key}")
            switch.run(f"ip link set sw-{key} master sw")
            ns.run(f"ip addr add {addresses[key]}/24 dev eth0")
            ns.sysctl("net.ipv4.ip_forward", "1")
            control_plane.kubectl(
                "apply",
                "-f",
                "-",
                input=yaml.safe_dump(node_object(name, addresses[key], key == "cp")),
            )
            stack.callback(
                control_plane.kubectl, "delete", "node", name, "--ignore-not-found", check=False
            )
            control_plane.kubectl(
                "patch",
                "node",
                name,
                "--subresource=status",
                "--type=merge",
                "-p",
                yaml.safe_dump(
                    {"status": {"addresses": [{"type": "InternalIP", "address": addresses[key]}]}}
                ),
            )
            if key != "cp":  # the chart's agents: one per worker
                stack.enter_context(loopback_bridge(ns, port, tmp_path))
                env = {**os.environ, "KUBECONFIG": str(control_plane.kubeconfig), "NODE_NAME": name}
                agent = Node(name, ns, addresses[key], addresses["cp"], tmp_path, env)
                agent.start_agent()
                stack.callback(agent.stop_agent)
        world = KubeWorld(control_plane, Netns(""), [], stack, tmp_path, control_plane.kubeconfig)
        world.start_controller()
        assert world.controller is not None
        stack.callback(world.controller.wait, 15)
        stack.callback(world.controller.terminate)
        yield {
            "BRIDGEPORT_E2E_KUBECONFIG": str(control_plane.kubeconfig),
            # nsenter, not `ip netns exec`: like docker exec, it leaves the mount namespace
            # alone, so the suite can create and enter namespaces "on" the node.
            "BRIDGEPORT_E2E_NODE_EXEC": "nsenter --net=/run/netns/{node}",
            "BRIDGEPORT_E2E_TOOLS": str(REPO / "tests" / "tools"),
            "BRIDGEPORT_E2E_KUBECTL": str(control_plane.kubectl_path),
            "BRIDGEPORT_E2E_WORKERS": f"{names['w1']},{names['w2']}",
        }


def test_e2e_suite_in_external_cluster_mode(fake_kind: dict[str, str]) -> None:
    """tests/e2e/test_e2e.py passes against an already-running 'cluster', as on kind."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(REPO / "tests" / "e2e" / "test_e2e.py"),
        ],
        cwd=REPO,
        env={**os.environ, **fake_kind},
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    # Every test runs, except those that must stop or restart a part only the local world
    # owns (the API server, an agent), and they say so.
    summary = re.search(r"(\d+) passed(?:, (\d+) skipped)? in ", tail)
    assert summary, tail
    skips = re.findall(r"SKIPPED \[\d+\] \S+: (.*)", tail)
    assert len(skips) == int(summary[2] or 0), tail
    assert all(
        reason.endswith(("the local control plane", "the local world")) for reason in skips
    ), skips
    assert int(summary[1]) >= 7, tail
