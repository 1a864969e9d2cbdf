"""Runs a ProxyManager and obeys JSON-line commands on stdin, one JSON reply per line.

  {"sync": [{"listen", "port", "protocol", "target", "target_port", "owner"}, ...]}
      -> {"statuses": {"127.0.0.1:8080/TCP": {"state", "reason", "message", "owner"}}, "seconds"}
  {"metrics": true} -> {"metrics": "<prometheus text>"}
  {"rss": true}     -> {"rss_kib": N}
  {"close": true}   -> {"closed": true}, then exits

Options: --udp-idle-timeout, --max-udp-flows, --max-tcp-connections, --connect-timeout,
--max-tcp-per-source, --tcp-idle-timeout, --max-udp-flows-per-source, --workers,
--uvloop. Prints {"ready": true} first. Used by tests/proxy and bench/proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
import time
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from bridgeport import log
from bridgeport.core.plan import ProxyPort
from bridgeport.core.specs import Protocol, ResourceRef
from bridgeport.proxy.listener_status import describe
from bridgeport.proxy.manager import Fairness, ProxyManager


def port_of(d: dict[str, Any]) -> ProxyPort:
    ns, _, name = str(d.get("owner", "default/test")).rpartition("/")
    return ProxyPort(
        ipaddress.ip_address(d["listen"]),
        int(d["port"]),
        Protocol(d["protocol"]),
        ipaddress.ip_address(d["target"]),
        int(d["target_port"]),
        ResourceRef("PortPublication", ns, name),
        "always",
    )


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


async def main(args: argparse.Namespace) -> None:
    registry = CollectorRegistry()
    manager = ProxyManager(
        registry=registry,
        udp_idle_timeout=args.udp_idle_timeout,
        max_udp_flows=args.max_udp_flows,
        max_tcp_connections=args.max_tcp_connections,
        connect_timeout=args.connect_timeout,
        workers=args.workers,
        fairness=Fairness(
            args.max_tcp_per_source, args.tcp_idle_timeout, args.max_udp_flows_per_source
        ),
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)  # a sync of 1,000 ports is one long line
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    reply({"ready": True, "loop": type(loop).__module__})
    while line := await reader.readline():
        cmd = json.loads(line)
        if "sync" in cmd:
            start = time.perf_counter()
            statuses = await manager.sync([port_of(p) for p in cmd["sync"]])
            reply(
                {
                    "seconds": time.perf_counter() - start,
                    "statuses": {
                        describe(k): {
                            "state": s.state,
                            "reason": s.reason,
                            "message": s.message,
                            "owner": s.owner.key,
                        }
                        for k, s in statuses.items()
                    },
                }
            )
        elif "metrics" in cmd:
            reply({"metrics": generate_latest(registry).decode()})
        elif "rss" in cmd:
            reply({"rss_kib": rss_kib()})
        elif "close" in cmd:
            break
    await manager.close()
    reply({"closed": True})


def reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--udp-idle-timeout", type=float, default=90.0)
    p.add_argument("--max-udp-flows", type=int, default=4096)
    p.add_argument("--max-tcp-connections", type=int, default=4096)
    p.add_argument("--connect-timeout", type=float, default=5.0)
    p.add_argument("--max-tcp-per-source", type=int, default=Fairness.tcp_per_source)
    p.add_argument("--tcp-idle-timeout", type=float, default=Fairness.tcp_idle_timeout)
    p.add_argument("--max-udp-flows-per-source", type=int, default=Fairness.udp_flows_per_source)
    p.add_argument("--workers", type=int, default=None, help="proxy worker processes (TCP and UDP)")
    p.add_argument("--uvloop", action="store_true")
    a = p.parse_args()
    log.setup("INFO", json=True)  # to stderr: stdout carries the replies
    if a.uvloop:
        import uvloop

        uvloop.run(main(a))
    else:
        asyncio.run(main(a))
