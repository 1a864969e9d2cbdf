"""Latency from `PortPublication` applied to the rule live on the node (not a test).

Starts the local control plane (tests/harness), one agent in a node namespace, then changes a
publication's host port N times (default 100) through the API and, for each change, polls
the node's nftables map until the new element is there. Prints p50/p90/p99/max.

Run as root: `.venv/bin/python bench/kube_latency.py [--changes 100]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.builders import API  # noqa: E402
from tests.e2e.world import kube_world  # noqa: E402
from tests.harness import controlplane  # noqa: E402
from tests.netns import wait_for  # noqa: E402


def publication(port: int) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": API,
            "kind": "PortPublication",
            "metadata": {"name": "latency", "namespace": "default"},
            "spec": {
                "hostPort": port,
                "loopback": "Never",
                "target": {"address": "10.66.0.2", "port": 80},
            },
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--changes", type=int, default=100)
    args = ap.parse_args()
    controlplane.ensure_built()
    with tempfile.TemporaryDirectory(prefix="bp-latency-") as tmp:
        cp = controlplane.start(Path(tmp) / "kube")
        try:
            cp.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
            cp.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
            with kube_world(cp, node_count=1) as w:
                node = w.nodes[0]
                cp.kubectl("apply", "-f", "-", input=publication(30000))
                wait_for(lambda: "tcp . 30000 " in node.nft_map(), timeout=60, what="first rule")
                samples = []
                for i in range(1, args.changes + 1):
                    port = 30000 + i
                    cp.kubectl("apply", "-f", "-", input=publication(port))
                    applied = time.perf_counter()
                    wait_for(
                        lambda p=port: f"tcp . {p} " in node.nft_map(),
                        timeout=10,
                        interval=0.005,
                        what=f"rule for {port}",
                    )
                    # From the API's acceptance of the change to the rule in the kernel.
                    samples.append((time.perf_counter() - applied) * 1000)
        finally:
            cp.stop()
    samples.sort()

    def pct(p: float) -> float:
        return samples[min(len(samples) - 1, int(p / 100 * len(samples)))]

    print(f"\napplied -> rule live on the node, {len(samples)} changes:")
    print(
        f"  p50 {pct(50):.0f} ms   p90 {pct(90):.0f} ms   p99 {pct(99):.0f} ms   "
        f"max {samples[-1]:.0f} ms   mean {statistics.mean(samples):.0f} ms"
    )


if __name__ == "__main__":
    main()
