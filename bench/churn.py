"""Containers coming and going on a bridge of a node with N publications: what each costs the
agent, against its full reconcile of the N (not a test).

Every container start or stop adds or removes a veth on the node (an interface that is not
ours) and may bring or take IPv6 link-local addresses: node facts change, and the agent
reconciles. Only publications naming those facts can move, so the reconcile should cost
little whatever N is. The topology of bench/topology.py; the agent's reconcile time is read
from its `bridgeport_reconcile_duration_seconds` histogram around the container events, and
its full reconcile of the N from its log.

Run as root: `.venv/bin/python bench/churn.py [--publications 10000] [--containers 4]`;
`--code DIR` runs the agent from another checkout's operator/ (e.g. a worktree of an older
commit) for a before/after in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tests.netns import netns, veth, wait_for  # noqa: E402

from dataplane import reconciles, resources  # noqa: E402
from topology import Bench, topology  # noqa: E402

SETTLE = 2.5  # seconds after each event: the agent's watch wakes it, and it reconciles


def histogram(b: Bench) -> tuple[float, float]:
    """The agent's reconcile time histogram: (sum of seconds, count)."""
    text = b.node.run("curl -sf http://127.0.0.1:9102/metrics").stdout
    found = [
        float(re.search(rf"^bridgeport_reconcile_duration_seconds_{k} (\S+)", text, re.M)[1])  # type: ignore[index]
        for k in ("sum", "count")
    ]
    return found[0], found[1]


def run(code: str | None, count: int, containers: int) -> tuple[float, float, int]:
    """(full reconcile ms, mean ms per reconcile after the events, reconciles)."""
    if code:
        os.environ["PYTHONPATH"] = str(Path(code) / "operator")
    with topology("ch") as b:
        b.write(resources(count))
        b.start_agent()
        b.attach_target()
        wait_for(
            lambda: b.state.exists() and json.loads(b.state.read_text())["counts"]["dnat"] >= count,
            timeout=300,
            what=f"{count} publications applied",
        )
        time.sleep(SETTLE)
        full = max(float(r["ms"]) for r in reconciles(b.log))
        before = histogram(b)
        for k in range(containers):
            with netns("chx") as box:  # a container: its veth joins the bridge, then goes
                veth(box, "eth0", b.node, f"chv{k}")
                b.node.run(f"ip link set chv{k} master bp-bench")
                time.sleep(SETTLE)
            time.sleep(SETTLE)
        after = histogram(b)
    os.environ.pop("PYTHONPATH", None)
    n = int(after[1] - before[1])
    return full, 1000 * (after[0] - before[0]) / max(1, n), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--publications", type=int, default=10_000)
    ap.add_argument("--containers", type=int, default=4)
    ap.add_argument("--code", help="also run the agent from this checkout (before/after)")
    args = ap.parse_args()
    many = args.publications
    print(f"\n{args.containers} containers come and go on a node with {many} publications:")
    for label, code in (("this code", None), *((("--code", args.code),) if args.code else ())):
        full, each, n = run(code, many, args.containers)
        print(
            f"  {label:<10} {n} reconciles after the events, {each:.1f} ms each on average = "
            f"{each / full:.1%} of the agent's full reconcile of the {many} ({full:.0f} ms)"
        )


if __name__ == "__main__":
    main()
