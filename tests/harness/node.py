"""A node with a real agent, a client outside it, and containers on the agent's bridges: the
`world` and `w` fixtures of the tests marked `root` (a pytest plugin, see tests/conftest.py).

    client netns (192.0.2.2, fd00:c::2) --veth-- node netns (192.0.2.1 + 192.0.2.11, fd00:c::1)
                                                   | agent: bridgeport agent --source dir:...
                                                   | a foreign nft table and bridge (never touched)
                                                 bridges <- veth -- container netns ...
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridgeport.adapters import statefile
from tests.netns import Netns, netns, run, unique, veth, wait_for

NODE_IP, NODE_IP2, CLIENT_IP = "192.0.2.1", "192.0.2.11", "192.0.2.2"
NODE_IP6, CLIENT_IP6 = "fd00:c::1", "fd00:c::2"

FOREIGN_TABLE = """
table inet foreigntool {
    set allowed { type ipv4_addr; elements = { 192.0.2.99 } }
    chain input { type filter hook input priority 10; policy accept;
        ip saddr @allowed counter accept
    }
}
"""


def bridgeport_argv(*args: str) -> list[str]:
    """`python -m bridgeport --log-format json ARGS` with this interpreter: the JSON lines the
    tests and benchmarks read back."""
    return [sys.executable, "-m", "bridgeport", "--log-format", "json", *args]


def agent_argv(source: Path, state: Path, *extra: str) -> list[str]:
    """A standalone agent on one directory of manifests, node "n", no metrics port."""
    return [
        sys.executable, "-m", "bridgeport", "agent", "--source", f"dir:{source}",
        "--node-name", "n", "--metrics-port", "0", "--state-file", str(state), *extra,
    ]  # fmt: skip


@dataclass
class Agent:
    node: Netns
    workdir: Path
    proc: subprocess.Popen[str] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.resources = self.workdir / "resources"
        self.resources.mkdir()
        self.state_file = self.workdir / "state.json"
        self.log_path = self.workdir / "agent.log"

    def start(self, *extra: str) -> None:
        log = self.log_path.open("a")
        cmd = bridgeport_argv(
            "agent", "--source", f"dir:{self.resources}", "--node-name", "node-1",
            "--state-file", str(self.state_file), "--resync", "1", *extra,
        )  # fmt: skip
        self.proc = subprocess.Popen(self.node.prefix() + cmd, stdout=log, stderr=log, text=True)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def apply(self, *docs: dict[str, Any], file: str = "resources.yaml") -> None:
        """Replace the whole resource set (atomic write, as an operator's tooling would)."""
        for old in self.resources.iterdir():
            old.unlink()
        if docs:
            tmp = self.resources / f".{file}.tmp"
            tmp.write_text(yaml.safe_dump_all(docs))
            tmp.rename(self.resources / file)

    def state(self) -> dict[str, Any]:
        """The state file with every entry (folded from its journal, as `bridgeport state`
        prints it); {} until the agent wrote one."""
        return statefile.load(self.state_file) or {}

    def entry(self, name: str, kind: str = "PortPublication") -> dict[str, Any] | None:
        for r in self.state().get("resources", []):
            if r["name"] == name and r["kind"] == kind:
                return dict(r)
        return None

    def wait(self, expected: dict[str, str], timeout: float = 10) -> dict[str, Any]:
        """Wait until the state file shows exactly these resources ({name: state})."""

        def done() -> bool:
            entries = {r["name"]: r["state"] for r in self.state().get("resources", [])}
            return entries == expected

        wait_for(done, timeout, what=f"agent state {expected} (log: {self.log_tail()})")
        return self.state()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""


@contextmanager
def lone_agent(prefix: str) -> Iterator[Agent]:
    """An agent (not started) in a node netns of its own, no client or foreign state; on the
    way out it is stopped, its tables and bridges removed and its files deleted."""
    if os.geteuid() != 0 or shutil.which("nft") is None:
        pytest.skip("kernel tests need root and nft")
    workdir = Path(tempfile.mkdtemp(prefix=f"bridgeport-{prefix}-"))
    try:
        with netns(prefix) as node:
            agent = Agent(node, workdir)
            try:
                yield agent
            finally:
                agent.stop()
                node.run([sys.executable, "-m", "bridgeport", "agent", "--cleanup"], check=False)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class World:
    node: Netns
    client: Netns
    agent: Agent
    stack: ExitStack
    br_netfilter: bool = True
    containers: list[Netns] = field(default_factory=list)

    def container(
        self,
        bridge: str,
        address: str,
        gateway: str,
        address6: str | None = None,
        gateway6: str | None = None,
    ) -> Netns:
        """A container netns attached to one of the agent's bridges by a veth."""
        wait_for(
            lambda: self.node.run(f"ip link show {bridge}", check=False).returncode == 0,
            what=f"bridge {bridge}",
        )
        ns = self.stack.enter_context(netns("bpk"))
        port = unique("bpp")
        veth(ns, "eth0", self.node, port)
        self.node.run(f"ip link set {port} master {bridge}")
        ns.run(f"ip addr add {address} dev eth0")
        ns.run(f"ip route add default via {gateway}")
        if address6 and gateway6:
            ns.run(f"ip -6 addr add {address6} dev eth0 nodad")
            ns.run(f"ip -6 route add default via {gateway6}")
        self.containers.append(ns)
        return ns

    def serve(self, ns: Netns, *args: str) -> None:
        proc = ns.popen(
            [sys.executable, str(Path(__file__).parent.parent / "tools" / "peer_server.py"), *args]
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"

    def ask(
        self, ns: Netns, mode: str, host: str, port: int, timeout: float = 2, sport: int = 0
    ) -> str:
        return ns.python(
            "peer_client.py",
            mode,
            host,
            str(port),
            str(timeout),
            str(sport),
            check=False,
            timeout=timeout + 10,
        ).stdout.strip()

    def foreign_snapshot(self) -> tuple[str, str]:
        table = self.node.run("nft list table inet foreigntool").stdout
        link = self.node.run("ip -d addr show fbr0").stdout
        return table, link


@pytest.fixture(scope="module", params=[True, False], ids=["br_netfilter", "no_br_netfilter"])
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    """The whole topology, once with bridged traffic through the ip hooks and once without
    (both occur on real nodes)."""
    if os.geteuid() != 0 or shutil.which("nft") is None:
        pytest.skip("kernel tests need root and nft")
    with ExitStack() as stack:
        node = stack.enter_context(netns("bpn"))
        client = stack.enter_context(netns("bpc"))
        veth(client, "eth0", node, "eth0")
        node.run(f"ip addr add {NODE_IP}/24 dev eth0")
        node.run(f"ip addr add {NODE_IP2}/24 dev eth0")
        node.run(f"ip -6 addr add {NODE_IP6}/64 dev eth0 nodad")
        client.run(f"ip addr add {CLIENT_IP}/24 dev eth0")
        client.run(f"ip -6 addr add {CLIENT_IP6}/64 dev eth0 nodad")
        node.sysctl("net.ipv4.ip_forward", "1")
        node.sysctl("net.ipv6.conf.all.forwarding", "1")
        for family in ("iptables", "ip6tables"):
            node.sysctl(f"net.bridge.bridge-nf-call-{family}", "1" if request.param else "0")
        # Something else on the node that we must never touch.
        node.run(["nft", "-f", "-"], input=FOREIGN_TABLE)
        node.run("ip link add fbr0 type bridge")
        node.run("ip addr add 198.51.100.1/24 dev fbr0")
        workdir = Path(tempfile.mkdtemp(prefix="bridgeport-test-"))
        stack.callback(shutil.rmtree, workdir, True)
        agent = Agent(node, workdir)
        stack.callback(agent.stop)
        agent.start()
        world = World(node, client, agent, stack, br_netfilter=request.param)
        yield world


@pytest.fixture
def w(world: World) -> Iterator[World]:
    """Per test: a clean resource set, the foreign state checked byte for byte afterwards."""
    before = world.foreign_snapshot()
    try:
        yield world
    finally:
        for ns in world.containers:
            ns.stop_processes()
        world.client.stop_processes()
        world.node.stop_processes()
        if not world.agent.alive():
            world.agent.start()
        world.agent.apply()
        world.agent.wait({})
        for ns in world.containers:
            run(["ip", "netns", "del", ns.name], check=False)
        world.containers.clear()
        time.sleep(0.05)
        assert world.foreign_snapshot() == before, "foreign nft table or bridge was modified"
