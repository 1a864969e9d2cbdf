"""Kernel data plane benchmark: ratios measured side by side in one run (not a test).

    client netns 192.0.2.2 --veth-- node netns 192.0.2.1 (the real agent, dir source)
                                      bp-bench 10.77.0.1 --veth-- target netns 10.77.0.2
                                                                  iperf3 -s :5201, httpd :80

Prints: published-port vs direct throughput (iperf3) and new connections/s (wrk, Connection:
close); new connections/s with 10,000 publications vs 10 (maps keep the per-packet cost flat)
and with 10,000 Docker-style linear DNAT rules for contrast; plan/render/apply timings for
10,000 publications and for changing one (bench/scale_probe.py); the agent's RSS.

Run as root: `make bench` or `.venv/bin/python bench/dataplane.py [--seconds 10]`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tests.builders import network, publication  # noqa: E402
from tests.netns import netns, wait_for  # noqa: E402

from topology import iperf, topology, wrk  # noqa: E402


def resources(count: int) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        network("bench", "10.77.0.0/24", bridge="bp-bench"),
        _pub("iperf", 15201, 5201),
        _pub("http", 8080, 80),
    ]
    docs += [_pub(f"filler-{i}", 20000 + i, 80) for i in range(count)]
    return docs


def _pub(name: str, host_port: int, port: int) -> dict[str, Any]:
    return publication(name, host_port, "10.77.0.2", port, namespace="bench", loopback="Never")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def reconciles(log: Path) -> list[dict[str, Any]]:
    """The agent's "reconciled" log records (JSON lines)."""
    out = []
    for line in log.read_text().splitlines():
        if '"reconciled"' in line:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--publications", type=int, default=10_000)
    args = ap.parse_args()
    secs, many = args.seconds, args.publications
    rows: list[tuple[str, str]] = []

    with topology("bb") as b:
        node, client, target = b.node, b.client, b.target
        client.run("ip route add 10.77.0.0/24 via 192.0.2.1")  # for the direct baseline
        b.write(resources(8))
        agent = b.start_agent()
        b.attach_target()
        target.popen(["iperf3", "-s", "-p", "5201"])
        b.serve_http()
        b.wait_published()
        # Direct access is dropped by design; admit the client for the baseline only (the
        # agent's drift repair is parked with --resync 3600).
        node.run(["nft", "insert rule ip bridgeport to_bp-bench ip saddr 192.0.2.2 accept"])

        direct_bw = iperf(client, "10.77.0.2", 5201, secs)
        dnat_bw = iperf(client, "192.0.2.1", 15201, secs)
        direct_cps = wrk(client, "http://10.77.0.2:80/", secs, node)
        dnat_cps = wrk(client, "http://192.0.2.1:8080/", secs, node)
        rows += [
            ("throughput direct / published (Gbit/s)", f"{direct_bw:.1f} / {dnat_bw:.1f}"),
            ("throughput ratio published:direct", f"{dnat_bw / direct_bw:.2f}x"),
            ("new conn/s direct / published", f"{direct_cps:.0f} / {dnat_cps:.0f}"),
            ("new conn/s ratio published:direct", f"{dnat_cps / direct_cps:.2f}x"),
        ]
        rss_small = rss_mib(agent.pid)

        b.write(resources(many))
        wait_for(
            lambda: json.loads(b.state.read_text())["counts"]["dnat"] >= many,
            timeout=120,
            what=f"{many} publications applied",
        )
        time.sleep(1)
        many_cps = wrk(client, "http://192.0.2.1:8080/", secs, node)
        rss_many = rss_mib(agent.pid)
        # One publication changes among `many`, three times: the agent's own reconcile time,
        # from its log (the first change after the load is reported apart).
        agent_changes: list[dict[str, Any]] = []
        for k in range(3):
            changed = resources(many)
            changed[5 + k]["spec"]["target"]["port"] = 81
            seen = len(reconciles(b.log))
            b.write(changed)
            wait_for(
                lambda seen=seen: len(reconciles(b.log)) > seen,
                timeout=120,
                what="the agent's reconcile of one change",
            )
            agent_changes.append(reconciles(b.log)[-1])
            time.sleep(0.5)
        agent_change = min(agent_changes[1:], key=lambda r: float(r["ms"]))
        rows += [
            (f"new conn/s with {many} publications", f"{many_cps:.0f}"),
            (f"ratio {many} : 10 publications", f"{many_cps / dnat_cps:.2f}x"),
            (
                "agent RSS with 10 / " + str(many) + " publications (MiB)",
                f"{rss_small:.0f} / {rss_many:.0f}",
            ),
        ]

        # Contrast: Docker's design, one linear DNAT rule per published port, evaluated first.
        linear = [
            "table ip linearbench {",
            " chain pre { type nat hook prerouting priority -101; policy accept;",
        ]
        linear += [f"  tcp dport {30000 + i} dnat to 10.77.0.2:80" for i in range(many)]
        linear += [" }", "}"]
        node.run(["nft", "-f", "-"], input="\n".join(linear))
        linear_cps = wrk(client, "http://192.0.2.1:8080/", secs, node)
        node.run("nft delete table ip linearbench")
        rows.append(
            (
                f"new conn/s behind {many} linear rules (Docker-style)",
                f"{linear_cps:.0f} ({linear_cps / dnat_cps:.2f}x)",
            )
        )
        agent.terminate()
        agent.wait(10)

        with netns("bbs") as scratch:
            scratch.sysctl("net.ipv4.ip_forward", "1")
            probe = json.loads(
                scratch.run(
                    [sys.executable, str(ROOT / "bench" / "scale_probe.py"), str(many)], timeout=300
                ).stdout
            )
        reconcile_ms = sum(
            probe[k]
            for k in ("change_plan_ms", "change_render_ms", "change_diff_ms", "steady_apply_ms")
        )
        full_ms = probe["plan_ms"] + probe["render_ms"] + probe["apply_full_ms"]
        inc_ms = sum(
            probe[k] for k in ("inc_change_plan_ms", "inc_change_render_ms", "inc_change_apply_ms")
        )
        rows += [
            (
                f"plan + render + apply {many} (ms, one transaction)",
                f"{probe['plan_ms'] + probe['render_ms'] + probe['apply_full_ms']:.0f} "
                f"(plan {probe['plan_ms']:.0f}, render {probe['render_ms']:.0f}, "
                f"nft {probe['apply_full_ms']:.0f}); parse {probe['parse_ms']:.0f}",
            ),
            (
                "change one publication: nft transaction (ms)",
                f"{probe['steady_apply_ms']:.2f} for {probe['change_commands']} commands "
                f"(first change after a full load: {probe['change_apply_ms']:.1f}, nft cache fill)",
            ),
            (
                "change one publication, full planner + renderer (ms)",
                f"{reconcile_ms:.0f} (replan {probe['change_plan_ms']:.0f}, "
                f"render {probe['change_render_ms']:.0f}, diff {probe['change_diff_ms']:.1f})",
            ),
            (
                "change one publication, incremental plan + render + apply (ms)",
                f"{inc_ms:.1f} (plan {probe['inc_change_plan_ms']:.1f}, render "
                f"{probe['inc_change_render_ms']:.1f}, nft {probe['inc_change_apply_ms']:.1f}): "
                f"{inc_ms / full_ms:.1%} of the full plan + render + apply",
            ),
            (
                "change one publication, the agent's whole reconcile (ms, its log)",
                f"{agent_change['ms']:.1f} ({agent_change['commands']} commands): "
                f"{agent_change['ms'] / full_ms:.1%} of the full plan + render + apply "
                f"(the dir source re-reads the file, so all {many} documents are compared; "
                f"bench/agent_change.py times a change as the kube source hands it over); "
                f"the first change after the load {agent_changes[0]['ms']:.0f}; "
                f"table digest alone {probe['digest_ms']:.1f}",
            ),
        ]

    width = max(len(k) for k, _ in rows)
    print(f"\nbridgeport kernel data plane, {secs}s per measurement, same run:")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


if __name__ == "__main__":
    main()
