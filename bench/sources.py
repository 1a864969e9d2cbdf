"""spec.allowedSources on the kernel path: new connections/s with 1,000 publications each
carrying 10 source ranges against the same publications with none, alternated in one run
(not a test; issue 15's target is >= 0.95x).

    client netns 192.0.2.2 --veth-- node netns 192.0.2.1 (the real agent, dir source)
                                      bp-bench 10.77.0.1 --veth-- target netns 10.77.0.2 httpd :80

The measured publication (8080 -> httpd) carries 10 ranges too, one of them the client's, so
every new connection goes through the restricted-port map (1,000 elements) and its
publication's own list of 10 ranges. wrk -t2 -c50 with Connection: close; conntrack flushed
before each run.

Run as root: `.venv/bin/python bench/sources.py [--seconds 10] [--rounds 2]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tests.builders import network, publication  # noqa: E402
from tests.netns import wait_for  # noqa: E402

from topology import topology, wrk  # noqa: E402

PUBLICATIONS, RANGES = 1000, 10


def _ranges(i: int, client: bool) -> list[str]:
    out = [f"10.{(i % 200) + 1}.{j * 16}.0/24" for j in range(RANGES)]
    if client:
        out[-1] = "192.0.2.0/24"
    return out


def resources(with_sources: bool) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [network("bench", "10.77.0.0/24", bridge="bp-bench")]
    for i in range(PUBLICATIONS):
        port = 8080 if i == 0 else 20000 + i
        spec: dict[str, Any] = {"loopback": "Never"}
        if with_sources:
            spec["allowedSources"] = _ranges(i, client=i == 0)
        docs.append(publication(f"p{i}", port, "10.77.0.2", 80, namespace="bench", **spec))
    return docs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    results: dict[bool, list[float]] = {False: [], True: []}
    with topology("bs") as b:
        node, client, state = b.node, b.client, b.state
        b.write(resources(False))
        b.start_agent()
        b.attach_target(timeout=60)
        b.serve_http()

        def applied(with_sources: bool) -> bool:
            try:
                doc = json.loads(state.read_text())
            except (OSError, ValueError):
                return False
            has = "jump src_" in node.run("nft list map ip bridgeport src_any").stdout
            return bool(doc["counts"]["Applied"] == PUBLICATIONS + 1 and has == with_sources)

        for _ in range(args.rounds):
            for with_sources in (False, True):
                b.write(resources(with_sources))
                wait_for(
                    lambda w=with_sources: applied(w),
                    timeout=300,
                    what=f"publications applied (allowedSources={with_sources})",
                )
                b.wait_published()
                results[with_sources].append(
                    wrk(client, "http://192.0.2.1:8080/", args.seconds, node)
                )
        listing = node.run("nft list table ip bridgeport").stdout
        elements = listing.count(" : jump src_")
        ranges_listed = sum(
            line.count("/") for line in listing.splitlines() if "saddr != {" in line
        )
    none, ranges = statistics.median(results[False]), statistics.median(results[True])
    print(f"\nallowedSources, {args.seconds}s per measurement, {args.rounds} rounds alternated:")
    print(
        f"  new conn/s, {PUBLICATIONS} publications, no allowedSources: "
        + " / ".join(f"{v:.0f}" for v in results[False])
        + f"  (median {none:.0f})"
    )
    print(
        f"  new conn/s, {PUBLICATIONS} x {RANGES} ranges ({elements} map elements, "
        f"{ranges_listed} ranges in the kernel): "
        + " / ".join(f"{v:.0f}" for v in results[True])
        + f"  (median {ranges:.0f})"
    )
    print(f"  ratio with : without  {ranges / none:.2f}x  (target >= 0.95x)")


if __name__ == "__main__":
    main()
