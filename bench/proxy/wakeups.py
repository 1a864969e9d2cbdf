"""Idle wakeups of the agent and its proxy workers (not a test): how often an idle node wakes.

    node netns: the real agent (dir source, its defaults: --resync 30, /metrics and /healthz
    served), one BridgeNetwork, TCP and UDP PortPublications (loopback: Auto, so each one has
    a 127.0.0.1 and a ::1 listener relayed by the workers); no traffic

After a settling pause, counts the context switches (voluntary + involuntary, from
/proc/PID/task/TID/status) of every thread of the agent and of each worker over the window,
and prints them per thread name: a thread blocked with nothing to do makes none.

usage (root): .venv/bin/python bench/proxy/wakeups.py [--tcp 20] [--udp 5] [--seconds 10]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.builders import network, publication  # noqa: E402
from tests.harness.node import bridgeport_argv  # noqa: E402
from tests.netns import netns, wait_for  # noqa: E402
from tests.wakeups import thread_switches  # noqa: E402


def children(pid: int) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False
    ).stdout
    return [int(p) for p in out.split()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tcp", type=int, default=20)
    p.add_argument("--udp", type=int, default=5)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--settle", type=float, default=5.0)
    p.add_argument("--strace", type=Path, help="also strace the agent into this file")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bridgeport-wakeups-"))
    (work / "res").mkdir()
    docs = [network("n", "10.97.1.0/24", bridge="bp-wake")]
    docs += [publication(f"t{i}", 18000 + i, "10.97.1.2", 80) for i in range(args.tcp)]
    docs += [
        publication(f"u{i}", 19000 + i, "10.97.1.2", 53, protocol="UDP") for i in range(args.udp)
    ]
    (work / "res" / "r.yaml").write_text(yaml.safe_dump_all(docs))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, work, True)
        node = stack.enter_context(netns("bpwk"))
        with (work / "agent.log").open("w") as log:
            agent = subprocess.Popen(
                node.prefix()
                + bridgeport_argv(
                    "agent",
                    "--source",
                    f"dir:{work / 'res'}",
                    "--node-name",
                    "n",
                    "--state-file",
                    str(work / "state.json"),
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        stack.callback(lambda: (agent.terminate(), agent.wait(10)))
        stack.callback(
            lambda: node.run(bridgeport_argv("agent", "--cleanup"), check=False),
        )
        wait_for((work / "state.json").exists, timeout=60, what="first sync")
        wait_for(lambda: children(agent.pid), timeout=30, what="proxy workers")
        listeners = node.run("ss -Hln sport ge :18000 and sport le :19999").stdout
        time.sleep(args.settle)  # startup work done: imports, first resync scheduled
        workers = children(agent.pid)
        before = {pid: thread_switches(pid) for pid in [agent.pid, *workers]}
        if args.strace:
            trace = subprocess.Popen(
                ["strace", "-f", "-tt", "-p", str(agent.pid), "-o", str(args.strace)]
            )
        time.sleep(args.seconds)  # the observation window
        if args.strace:
            trace.terminate()
            trace.wait()
        after = {pid: thread_switches(pid) for pid in [agent.pid, *workers]}
    print(
        f"{args.tcp} TCP + {args.udp} UDP publications, {len(listeners.splitlines())} "
        f"listening sockets, {len(workers)} workers; context switches in {args.seconds:g} s:"
    )
    total = 0
    for pid, seen in before.items():
        role = "agent " if pid == agent.pid else "worker"
        for name in sorted(after[pid]):
            count = after[pid][name] - seen.get(name, 0)
            total += count
            print(f"  {role} {pid:>7}  {name:<16} {count:6d}")
    print(f"  total {total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
