"""Idle-agent benchmark (issue 9): what an agent costs when nothing changes (not a test).

    node netns: the real agent (dir source, --resync 2), one BridgeNetwork and one
    PortPublication; N container netns attached to its bridge by veths

Prints, for br_netfilter on and off: reconciles in 10 s (the reconcile histogram's count on
/metrics), the agent's CPU over those 10 s (at --log-level, DEBUG by default), how long a
deleted `ip bridgeport` table takes to come back, and how many pyroute2 lines reached the log.

Run as root: `.venv/bin/python bench/idle.py [--ports 2] [--seconds 10] [--log-level INFO]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.netns import Netns, netns, unique, veth, wait_for  # noqa: E402

METRICS_PORT = 9102
RESOURCES = """apiVersion: bridgeport.io/v1alpha1
kind: BridgeNetwork
metadata: {name: n}
spec: {subnet: 10.97.1.0/24, bridge: bp-idle}
---
apiVersion: bridgeport.io/v1alpha1
kind: PortPublication
metadata: {name: web, namespace: default}
spec: {hostPort: 8080, target: {address: 10.97.1.2, port: 80}}
"""


def reconciles(node: Netns) -> int:
    """bridgeport_reconcile_duration_seconds_count from the agent's /metrics."""
    script = (
        "import urllib.request; print(urllib.request.urlopen("
        f"'http://127.0.0.1:{METRICS_PORT}/metrics', timeout=5).read().decode())"
    )
    for line in node.run([sys.executable, "-c", script]).stdout.splitlines():
        if line.startswith("bridgeport_reconcile_duration_seconds_count "):
            return int(float(line.split()[1]))
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(br_netfilter: bool, ports: int, seconds: float, level: str) -> str:
    work = Path(tempfile.mkdtemp(prefix="bridgeport-idle-"))
    (work / "res").mkdir()
    (work / "res" / "r.yaml").write_text(RESOURCES)
    log = work / "agent.log"
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, work, True)
        node: Netns = stack.enter_context(netns("bpib"))
        for family in ("iptables", "ip6tables"):
            node.sysctl(f"net.bridge.bridge-nf-call-{family}", "1" if br_netfilter else "0")
        agent = subprocess.Popen(
            [
                *node.prefix(),
                sys.executable,
                "-m",
                "bridgeport",
                "--log-level",
                level,
                "--log-format",
                "json",
                "agent",
                "--source",
                f"dir:{work / 'res'}",
                "--node-name",
                "n",
                "--metrics-port",
                str(METRICS_PORT),
                "--resync",
                "2",
                "--state-file",
                str(work / "state.json"),
            ],
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        stack.callback(lambda: (agent.terminate(), agent.wait(10)))
        wait_for((work / "state.json").exists, timeout=30, what="first sync")
        wait_for(lambda: reconciles(node), timeout=30, what="metrics")
        for _ in range(ports):
            box = stack.enter_context(netns("bpic"))
            port = unique("bpip")
            veth(box, "eth0", node, port)
            node.run(f"ip link set {port} master bp-idle")
        time.sleep(3)  # attach events settle
        count0, cpu0 = reconciles(node), cpu_seconds(agent.pid)
        time.sleep(seconds)
        count, cpu = reconciles(node) - count0, cpu_seconds(agent.pid) - cpu0
        node.run("nft delete table ip bridgeport")
        started = time.monotonic()
        try:
            wait_for(
                lambda: node.run("nft list table ip bridgeport", check=False).returncode == 0,
                timeout=10,
                interval=0.1,
                what="table restored",
            )
            restored = f"{time.monotonic() - started:.1f} s"
        except AssertionError:
            restored = "not within 10 s"
        pyroute2 = sum('"pyroute2' in line for line in log.read_text().splitlines())
        node.run([sys.executable, "-m", "bridgeport", "agent", "--cleanup"], check=False)
    return (
        f"{level:5}  br_netfilter {'on ' if br_netfilter else 'off'}  ports {ports}  "
        f"reconciles/{seconds:g}s {count:4d}  cpu {100 * cpu / seconds:5.1f}%  "
        f"deleted table restored: {restored}  pyroute2 log lines {pyroute2}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ports", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--log-level", default="DEBUG")
    args = p.parse_args()
    for br_netfilter in (True, False):
        print(run(br_netfilter, args.ports, args.seconds, args.log_level), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
