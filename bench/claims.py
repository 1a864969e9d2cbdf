"""The cost of port claims (issue 15): sockets, RSS and bind time, not a test.

Every address:port a DNAT captures is held by a socket of the agent. This plans 10,000
single-port publications (loopback: Never, so each needs one bare claim) and one 1,000-port
range publication with the real planner, then binds them with the real ProxyManager inside a
fresh network namespace, and prints per case: sockets held, file descriptors added, RSS added,
the time of the first sync (binding everything) and of a steady-state sync (nothing to do).

Run as root: `.venv/bin/python bench/claims.py` (it re-executes itself in a scratch netns).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.builders import publication  # noqa: E402


def _pub(name: str, port: int, end: int = 0, protocol: str = "TCP") -> dict[str, Any]:
    spec: dict[str, Any] = {"loopback": "Never", "protocol": protocol}
    if end:
        spec["hostPortEnd"] = end
    return publication(name, port, "10.77.0.2", port, namespace="bench", **spec)


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _case(label: str, docs: list[dict[str, Any]]) -> str:
    from bridgeport.core import planner, specs
    from bridgeport.core.plan import NodeFacts
    from bridgeport.proxy.manager import ProxyManager

    facts = NodeFacts("bench", addresses=frozenset({ipaddress.ip_address("192.0.2.1")}))
    plan = planner.plan([specs.parse(d) for d in docs], facts)
    manager = ProxyManager(workers=1)
    rss, fds = _rss_kib(), _fds()
    started = time.perf_counter()
    statuses = await manager.sync(plan.proxies, plan.claims)
    first = time.perf_counter() - started
    failed = sum(1 for s in statuses.values() if s.state == "failed")
    started = time.perf_counter()
    await manager.sync(plan.proxies, plan.claims)
    steady = time.perf_counter() - started
    held, added_fds, added_rss = len(manager.held), _fds() - fds, (_rss_kib() - rss) / 1024
    await manager.close()
    return (
        f"  {label:<34} {held:>6} sockets  +{added_fds:>6} fds  +{added_rss:5.1f} MiB RSS"
        f"  bind {first * 1000:6.0f} ms  steady sync {steady * 1000:5.1f} ms"
        f"  ({failed} failed)"
    )


CASES = {
    "tcp": ("10,000 publications (TCP)", lambda: [_pub(f"p{i}", 20000 + i) for i in range(10_000)]),
    "udp": (
        "10,000 publications (UDP)",
        lambda: [_pub(f"p{i}", 20000 + i, protocol="UDP") for i in range(10_000)],
    ),
    "range": ("one 1,000-port range (TCP)", lambda: [_pub("range", 40000, 40999)]),
}


def main() -> None:
    """Each case in its own process (a clean RSS baseline) inside one scratch netns."""
    if len(sys.argv) > 1:
        from bridgeport import log
        from bridgeport.proxy.worker import raise_fd_limit

        log.setup("WARNING", False)
        raise_fd_limit()
        label, docs = CASES[sys.argv[1]]
        print(asyncio.run(_case(label, docs())), flush=True)
        return
    name = f"bpclaims{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        print("port claims, bound in a fresh network namespace by the real ProxyManager:")
        for case in CASES:
            subprocess.run(
                ["ip", "netns", "exec", name, sys.executable, __file__, case],
                check=True,
                timeout=600,
            )
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


if __name__ == "__main__":
    main()
