"""Proxy test world: a ProxyManager in a node netns, targets and clients in their own.

client netns  c0 198.51.100.2, fd00:51::2
    | veth
node netns    n1 198.51.100.1 + .100, fd00:51::1 + ::100     <- proxy_driver.py runs here
              n0 192.0.2.1, fd00:2::1
    | veth
target netns  t0 192.0.2.2, fd00:2::2   peer_server.py --name target: TCP 7000 / UDP 7001,
                                                       "other"  TCP 7002 / UDP 7003
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.netns import TOOLS, Netns, netns, veth

TARGET, TARGET6 = "192.0.2.2", "fd00:2::2"
NODE_UP, NODE_UP6 = "192.0.2.1", "fd00:2::1"
NODE, NODE2, NODE6, NODE6_2 = "198.51.100.1", "198.51.100.100", "fd00:51::1", "fd00:51::100"
CLIENT, CLIENT6 = "198.51.100.2", "fd00:51::2"
TCP_PORT, UDP_PORT, OTHER_TCP, OTHER_UDP = 7000, 7001, 7002, 7003


def port(
    listen: str,
    number: int,
    protocol: str = "TCP",
    target: str = TARGET,
    target_port: int | None = None,
    owner: str = "default/web",
) -> dict[str, Any]:
    if target_port is None:
        target_port = TCP_PORT if protocol == "TCP" else UDP_PORT
    return {
        "listen": listen,
        "port": number,
        "protocol": protocol,
        "target": target,
        "target_port": target_port,
        "owner": owner,
    }


class Driver:
    """A proxy_driver.py process: one JSON command in, one JSON reply out."""

    def __init__(self, ns: Netns, *options: str, prefix: tuple[str, ...] = ()) -> None:
        self.log = tempfile.NamedTemporaryFile("w+", prefix="bp-proxy-", suffix=".log")  # noqa: SIM115
        self.proc = ns.popen(
            [*prefix, sys.executable, str(TOOLS / "proxy_driver.py"), *options],
            stdin=subprocess.PIPE,
            stderr=self.log,
        )
        assert self.read(15)["ready"]

    def read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise AssertionError(f"proxy driver gave no answer; log:\n{self.logs()[-3000:]}")
        return dict(json.loads(line))

    def call(self, cmd: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.read(timeout)

    def sync(self, *ports: dict[str, Any]) -> dict[str, dict[str, str]]:
        return dict(self.call({"sync": list(ports)})["statuses"])

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        text = self.call({"metrics": True})["metrics"]
        return sum(
            s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
            if s.name == name and labels.items() <= s.labels.items()
        )

    def rss_kib(self) -> int:
        return int(self.call({"rss": True})["rss_kib"])

    def logs(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.call({"close": True}, timeout=10)["closed"]
                self.proc.wait(10)
            finally:
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait(5)
        self.log.close()


@dataclass
class World:
    node: Netns
    target: Netns
    client: Netns
    stack: ExitStack

    def driver(self, *options: str, prefix: tuple[str, ...] = ()) -> Driver:
        """A proxy in the node netns, closed at the end of the current test."""
        d = Driver(self.node, *options, prefix=prefix)
        self.stack.callback(d.close)
        return d

    def ask(self, ns: Netns, *args: str | int, timeout: float = 60) -> dict[str, Any]:
        proc = ns.python("peer_client.py", *map(str, args), timeout=timeout)
        return dict(json.loads(proc.stdout))

    def start(self, ns: Netns, *args: str | int) -> subprocess.Popen[str]:
        """A long-running client; returns once it printed its first line."""
        proc = ns.popen([sys.executable, str(TOOLS / "peer_client.py"), *map(str, args)])
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        assert ready and proc.stdout.readline(), "client did not start"
        return proc

    def serve(self, ns: Netns, *args: str) -> None:
        proc = ns.popen([sys.executable, str(TOOLS / "peer_server.py"), *args])
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        assert ready and proc.stdout.readline().strip() == "ready"


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    if os.geteuid() != 0:
        pytest.skip("proxy kernel tests need root (network namespaces)")
    with ExitStack() as stack:
        node = stack.enter_context(netns("bpxn"))
        target = stack.enter_context(netns("bpxt"))
        client = stack.enter_context(netns("bpxc"))
        veth(node, "n0", target, "t0")
        veth(node, "n1", client, "c0")
        for ns, dev, addrs in (
            (node, "n0", (NODE_UP, NODE_UP6)),
            (target, "t0", (TARGET, TARGET6)),
            (node, "n1", (NODE, NODE2, NODE6, NODE6_2)),
            (client, "c0", (CLIENT, CLIENT6)),
        ):
            for addr in addrs:
                plen = 64 if ":" in addr else 24
                ns.run(f"ip addr add {addr}/{plen} dev {dev}" + (" nodad" if ":" in addr else ""))
        w = World(node, target, client, stack)
        # The target's servers live for the module; node/client processes per test.
        w.serve(
            target,
            "--name",
            "target",
            "--tcp",
            f"0.0.0.0:{TCP_PORT}",
            "--tcp",
            f"[::]:{TCP_PORT}",
            "--udp",
            f"0.0.0.0:{UDP_PORT}",
            "--udp",
            f"[::]:{UDP_PORT}",
        )
        w.serve(
            target,
            "--name",
            "other",
            "--tcp",
            f"0.0.0.0:{OTHER_TCP}",
            "--udp",
            f"0.0.0.0:{OTHER_UDP}",
        )
        yield w


@pytest.fixture
def w(world: World) -> Iterator[World]:
    """Per test: drivers and clients started by the test are stopped after it."""
    try:
        with ExitStack() as per_test:
            world.stack = per_test
            yield world
    finally:
        world.client.stop_processes()
        world.node.stop_processes()
