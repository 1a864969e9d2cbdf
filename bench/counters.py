"""Per-publication counters: new connections/s with 10,000 counted publications against the
same 10,000 uncounted, side by side in one run (not a test).

The topology of bench/dataplane.py (client netns -> node netns with the real agent -> target
on its bridge, wrk `Connection: close` against a tiny epoll httpd). The agent is restarted
with and without `--no-publication-counters` in rounds ordered A B B A A B B A ..., so slow
drift of the machine hits both sides alike; the medians are compared. Also: how long one
Prometheus scrape of /metrics takes with 10,000 counted publications.

Run as root: `.venv/bin/python bench/counters.py [--seconds 10] [--rounds 3]`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tests.netns import Netns, netns, veth, wait_for  # noqa: E402

from dataplane import HTTPD_C, resources, wrk  # noqa: E402


def start_agent(node: Netns, tmp: Path, counted: bool) -> subprocess.Popen[str]:
    log = (tmp / "agent.log").open("a")
    extra = [] if counted else ["--no-publication-counters"]
    state = tmp / "state.json"
    state.unlink(missing_ok=True)
    return node.popen(
        [
            sys.executable,
            "-m",
            "bridgeport",
            "--log-format",
            "json",
            "agent",
            "--source",
            f"dir:{tmp / 'resources'}",
            "--node-name",
            "bench",
            "--state-file",
            str(state),
            "--resync",
            "3600",
            "--no-proxy",
            "--doctor-interval",
            "0",
            *extra,
        ],
        stdout=log,
        stderr=log,
    )


def applied(tmp: Path) -> int:
    try:
        return int(json.loads((tmp / "state.json").read_text())["counts"]["dnat"])
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

    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="bp-bench-counters-"))
        stack.callback(shutil.rmtree, tmp, True)
        httpd = tmp / "httpd"
        subprocess.run(["gcc", "-O2", "-o", str(httpd), str(HTTPD_C)], check=True)
        node, client, target = (stack.enter_context(netns(p)) for p in ("bcn", "bcc", "bct"))
        veth(client, "eth0", node, "eth0")
        node.run("ip addr add 192.0.2.1/24 dev eth0")
        client.run("ip addr add 192.0.2.2/24 dev eth0")
        node.sysctl("net.ipv4.ip_forward", "1")
        node.sysctl("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "1")
        (tmp / "resources").mkdir()
        (tmp / "resources" / "bench.yaml").write_text(yaml.safe_dump_all(resources(many)))

        agent = start_agent(node, tmp, True)
        wait_for(
            lambda: node.run("ip link show bp-bench", check=False).returncode == 0,
            timeout=120,
            what="agent bridge",
        )
        veth(target, "eth0", node, "bcport")
        node.run("ip link set bcport master bp-bench")
        target.run("ip addr add 10.77.0.2/24 dev eth0")
        target.run("ip route add default via 10.77.0.1")
        target.popen([str(httpd), "80", "2"])
        scrape_ms: list[float] = []
        for i in range(args.rounds * 2):
            counted = i % 4 in (0, 3)  # A B B A: neither side always runs later
            if i:
                agent = start_agent(node, tmp, counted)
            wait_for(lambda: applied(tmp) >= many, timeout=180, what=f"{many} applied")
            wait_for(
                lambda: (
                    "ok"
                    in client.run("curl -s --max-time 1 http://192.0.2.1:8080/", check=False).stdout
                ),
                what="published http",
            )
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
        node.run([sys.executable, "-m", "bridgeport", "agent", "--cleanup"], check=False)

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
