"""The kernel-path benchmarks' topology (bench/dataplane.py, counters.py, sources.py):

    client netns 192.0.2.2 --veth-- node netns 192.0.2.1 (the real agent, dir source)
                                      bp-bench 10.77.0.1 --veth-- target netns 10.77.0.2

and the load generators they share: iperf3 for throughput, wrk with `Connection: close`
against a tiny epoll httpd (bench/httpd.c) for new connections per second.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness.node import bridgeport_argv  # noqa: E402
from tests.netns import Netns, netns, veth, wait_for  # noqa: E402

HTTPD_C = ROOT / "bench" / "httpd.c"
BRIDGE = "bp-bench"
NODE_IP, CLIENT_IP, TARGET_IP = "192.0.2.1", "192.0.2.2", "10.77.0.2"


@dataclass
class Bench:
    tmp: Path
    node: Netns
    client: Netns
    target: Netns
    httpd: Path
    port: str  # the target's veth end on the node

    @property
    def resources(self) -> Path:
        return self.tmp / "resources"

    @property
    def state(self) -> Path:
        return self.tmp / "state.json"

    @property
    def log(self) -> Path:
        return self.tmp / "agent.log"

    def write(self, docs: list[dict[str, Any]]) -> None:
        """Replace the agent's manifests (one file, picked up by its directory source)."""
        (self.resources / "bench.yaml").write_text(yaml.safe_dump_all(docs))

    def start_agent(self, *extra: str) -> subprocess.Popen[str]:
        """The real agent in the node netns, its periodic resync parked (a benchmark measures
        reconciles it causes); JSON logs appended to `log`."""
        argv = bridgeport_argv(
            "agent", "--source", f"dir:{self.resources}", "--node-name", "bench",
            "--state-file", str(self.state), "--resync", "3600", *extra,
        )  # fmt: skip
        out = self.log.open("a")
        return self.node.popen(argv, stdout=out, stderr=out)

    def attach_target(self, timeout: float = 120) -> None:
        """Once the agent has made its bridge: plug the target netns into it."""
        wait_for(
            lambda: self.node.run(f"ip link show {BRIDGE}", check=False).returncode == 0,
            timeout=timeout,
            what="agent bridge",
        )
        veth(self.target, "eth0", self.node, self.port)
        self.node.run(f"ip link set {self.port} master {BRIDGE}")
        self.target.run(f"ip addr add {TARGET_IP}/24 dev eth0")
        self.target.run("ip route add default via 10.77.0.1")

    def serve_http(self) -> None:
        self.target.popen([str(self.httpd), "80", "2"])

    def wait_published(self, url: str = f"http://{NODE_IP}:8080/", timeout: float = 120) -> None:
        """Until the client gets the httpd's answer through the published port."""
        wait_for(
            lambda: "ok" in self.client.run(f"curl -s --max-time 3 {url}", check=False).stdout,
            timeout=timeout,
            what=f"published http at {url}",
        )


@contextmanager
def topology(prefix: str) -> Iterator[Bench]:
    """Three fresh namespaces named from `prefix` (2 letters) and a scratch directory; on exit
    the agent's leftovers are cleaned and everything is removed."""
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix=f"bp-bench-{prefix}-"))
        stack.callback(shutil.rmtree, tmp, True)
        httpd = tmp / "httpd"
        subprocess.run(["gcc", "-O2", "-o", str(httpd), str(HTTPD_C)], check=True)
        node, client, target = (stack.enter_context(netns(prefix + s)) for s in "nct")
        veth(client, "eth0", node, "eth0")
        node.run(f"ip addr add {NODE_IP}/24 dev eth0")
        client.run(f"ip addr add {CLIENT_IP}/24 dev eth0")
        node.sysctl("net.ipv4.ip_forward", "1")
        # Tens of thousands of closed connections a second would fill conntrack (262,144
        # entries, TIME_WAIT 120 s) within seconds, and every path would measure the table.
        node.sysctl("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "1")
        (tmp / "resources").mkdir()

        def cleanup() -> None:
            node.stop_processes()  # the agent first, or it re-creates what --cleanup removes
            node.run([sys.executable, "-m", "bridgeport", "agent", "--cleanup"], check=False)

        stack.callback(cleanup)
        yield Bench(tmp, node, client, target, httpd, f"{prefix}port")


def iperf(client: Netns, host: str, port: int, seconds: int) -> float:
    """Gbit/s received, one iperf3 stream."""
    out = client.run(
        ["iperf3", "-c", host, "-p", str(port), "-t", str(seconds), "-J"], timeout=seconds + 30
    ).stdout
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9


def wrk(client: Netns, url: str, seconds: int, node: Netns) -> float:
    """New connections per second (one request each)."""
    # Measure the NAT path, not conntrack's capacity: start each run with an empty table.
    node.run(["conntrack", "-F"], check=False)
    out = client.run(
        ["wrk", "-t2", "-c50", f"-d{seconds}s", "-H", "Connection: close", url],
        timeout=seconds + 30,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise RuntimeError(f"wrk output not understood:\n{out}")
    return float(match.group(1))
