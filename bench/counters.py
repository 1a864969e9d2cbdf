"""Per-publication counters: new connections/s with 10,000 counted publications against the
same 10,000 uncounted, side by side in one run (not a test).

The topology of bench/topology.py (client netns -> node netns with the real agent -> target
on its bridge, wrk `Connection: close` against a tiny epoll httpd). The agent is restarted
with and without `--no-publication-counters` in rounds ordered A B B A A B B A ..., so slow
drift of the machine hits both sides alike; the medians are compared. Also: how long one
Prometheus scrape of /metrics takes with 10,000 counted publications.

Run as root: `.venv/bin/python bench/counters.py [--seconds 10] [--rounds 3]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tests.netns import wait_for  # noqa: E402

from dataplane import resources  # noqa: E402
from topology import Bench, topology, wrk  # noqa: E402


def start_agent(b: Bench, counted: bool) -> subprocess.Popen[str]:
    b.state.unlink(missing_ok=True)
    extra = [] if counted else ["--no-publication-counters"]
    return b.start_agent("--no-proxy", "--doctor-interval", "0", *extra)


def applied(b: Bench) -> int:
    try:
        return int(json.loads(b.state.read_text())["counts"]["dnat"])
    except (OSError, ValueError, KeyError):
        return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--publications", type=int, default=10_000)
    args = ap.parse_args()
    many = args.publications
    results: dict[bool, list[float]] = {True: [], False: []}

    with topology("bc") as b:
        node, client = b.node, b.client
        b.write(resources(many))
        agent = start_agent(b, True)
        b.attach_target()
        b.serve_http()
        scrape_ms: list[float] = []
        for i in range(args.rounds * 2):
            counted = i % 4 in (0, 3)  # A B B A: neither side always runs later
            if i:
                agent = start_agent(b, counted)
            wait_for(lambda: applied(b) >= many, timeout=180, what=f"{many} applied")
            b.wait_published()
            has_counters = (
                "counter" in node.run("nft list set ip bridgeport cnt_any", check=False).stdout
            )
            assert has_counters == counted, "the agent did not switch counters"
            time.sleep(1)
            results[counted].append(wrk(client, "http://192.0.2.1:8080/", args.seconds, node))
            if counted:
                started = time.perf_counter()
                text = node.run("curl -sf http://127.0.0.1:9102/metrics").stdout
                scrape_ms.append((time.perf_counter() - started) * 1000)
                assert text.count('path="kernel"') >= 3 * many
            agent.terminate()
            agent.wait(20)

    on, off = statistics.median(results[True]), statistics.median(results[False])
    print(
        f"\nper-publication counters, {many} publications, {args.seconds}s wrk runs, "
        f"{args.rounds} rounds alternating:"
    )
    print(f"  new conn/s counted   {' '.join(f'{v:.0f}' for v in results[True])}  median {on:.0f}")
    print(
        f"  new conn/s uncounted {' '.join(f'{v:.0f}' for v in results[False])}  median {off:.0f}"
    )
    print(f"  ratio counted:uncounted  {on / off:.2f}x (target >= 0.95x)")
    print(
        f"  one /metrics scrape with {many} counted publications (ms): "
        f"{' '.join(f'{v:.0f}' for v in scrape_ms)}"
    )


if __name__ == "__main__":
    main()
