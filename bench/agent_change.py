"""One change among N, agent-side end to end, against the full plan + render + apply: a ratio
measured in one process, several rounds (not a test).

Inside a scratch network namespace, the real Agent (KernelDataplane: libnftables and netlink;
the real ProxyManager holding a port claim for every publication; a state file; the NodeState
status built and serialised as the kube reporter sends it) converges N PortPublications that
look as the API server hands them out (uid, generation, creationTimestamp). Each round:

- full: a fresh agent's first reconcile (plan, render, one wholesale nft transaction, claims,
  state file, NodeState status), and beside it the same node's full plan, render and nft apply
  alone (the pure planner and renderer in this process, the nft transaction timed inside the
  agent's reconcile): the denominator;
- change: one publication's target port changes (its generation moves) and the agent
  reconciles, timed from the snapshot to the written state file and the serialised status,
  `--changes` times (the first change after a full load is reported apart: libnftables
  fills its cache then);
- add / delete: a new publication (a new port claim) is added, then deleted, `--adds`
  times, each one reconcile.

Run as root: `.venv/bin/python bench/agent_change.py [--publications 10000] [--rounds 3]`
(it re-executes itself in a scratch netns). `--profile FILE` writes a cProfile of the changes;
`--no-counters` runs the agent (and renders) without per-publication counters
(`--no-publication-counters`).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import ipaddress
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROFILING: list[bool] = []  # non-empty while the changes are profiled
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _doc(i: int, port: int, generation: int = 1) -> dict[str, Any]:
    from bridgeport.core.specs import API_VERSION

    return {
        "apiVersion": API_VERSION,
        "kind": "PortPublication",
        "metadata": {
            "name": f"p{i}",
            "namespace": "bench",
            "uid": f"uid-{i}",
            "generation": generation,
            "creationTimestamp": f"2026-01-01T00:{i // 3600 % 60:02d}:{i // 60 % 60:02d}Z",
        },
        "spec": {
            "hostPort": 20000 + i,
            "loopback": "Never",
            "target": {
                "address": str(ipaddress.IPv4Address("10.78.0.2") + i % 60000),
                "port": port,
            },
        },
    }


class MemorySource:
    """The resources as a kube source holds them: parsed objects by uid."""

    def __init__(self, n: int) -> None:
        from bridgeport.core.specs import API_VERSION, parse

        self.parse = parse
        self.objects: dict[str, Any] = {
            "net": parse(
                {
                    "apiVersion": API_VERSION,
                    "kind": "BridgeNetwork",
                    "metadata": {
                        "name": "scale",
                        "uid": "net",
                        "generation": 1,
                        "creationTimestamp": "2025-01-01T00:00:00Z",
                    },
                    "spec": {"subnet": "10.78.0.0/16", "bridge": "bp-scale"},
                }
            )
        }
        self.generation: dict[int, int] = {}
        for i in range(n):
            self.objects[f"uid-{i}"] = parse(_doc(i, 80))

    def change(self, i: int) -> None:
        gen = self.generation.get(i, 1) + 1
        self.generation[i] = gen
        self.objects[f"uid-{i}"] = self.parse(_doc(i, 80 + (gen - 1) % 2, gen))

    def add(self, i: int) -> None:
        self.objects[f"uid-{i}"] = self.parse(_doc(i, 80))

    def drop(self, i: int) -> None:
        del self.objects[f"uid-{i}"]

    def snapshot(self) -> Any:
        from bridgeport.core.source import Snapshot

        return Snapshot(tuple(self.objects.values()), node_labels={})

    async def run(self, changed: Callable[[], None]) -> None:
        await asyncio.Event().wait()


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


async def _round(
    n: int,
    changes: int,
    adds: int,
    source: MemorySource,
    state: Path,
    profile: cProfile.Profile | None,
    counters: bool = True,
) -> dict[str, Any]:
    from bridgeport.adapters.dataplane import KernelDataplane
    from bridgeport.agent import Agent, AgentSettings
    from bridgeport.core import planner, ruleset
    from bridgeport.core.report import Report
    from bridgeport.proxy.manager import ProxyManager

    applies: list[tuple[bool, float]] = []

    class TimedKernel(KernelDataplane):  # the real kernel; only records how long nft took
        def apply_tables(self, tables: Any, full: bool) -> int:
            start = time.perf_counter()
            try:
                return super().apply_tables(tables, full)
            finally:
                applies.append((full, _ms(start)))

    async def nodestate(report: Report) -> None:  # what the kube reporter builds and sends
        status, _ = report.status()
        json.dumps({"status": status})

    proxies = ProxyManager(workers=1)
    agent = Agent(
        source,
        AgentSettings("bench", state_file=state, resync=3600, doctor_interval=0, counters=counters),
        proxies=proxies,
        reporters=[nodestate],
        dataplane=TimedKernel(),
    )
    dataplane = agent.dataplane
    assert isinstance(dataplane, TimedKernel)
    agent._start_port_watch(asyncio.get_running_loop())
    for _ in range(500):  # the watch the agent's netlink caches follow (--code: may lack it)
        if getattr(dataplane.port_watch, "live", True):
            break
        await asyncio.sleep(0.01)
    start = time.perf_counter()
    first = await agent.reconcile()
    agent_full_ms = _ms(start)
    assert first is not None and first.full and len(first.plan.dnats) == n, first.plan.counts()
    nft_full_ms = applies[-1][1]
    # The pure full plan and render of the same node, beside it (the agent's facts).
    facts = agent._planner._facts
    assert facts is not None
    resources = source.snapshot().resources
    start = time.perf_counter()
    plan = planner.plan(resources, facts)
    plan_ms = _ms(start)
    start = time.perf_counter()
    ruleset.render(plan, counters=counters)
    render_ms = _ms(start)
    out: list[float] = []
    commands: list[int] = []
    gc_ms: list[float] = []
    gc_started: list[float] = []

    def collecting(phase: str, info: dict[str, int]) -> None:  # cyclic GC pauses, timed
        if phase == "start":
            gc_started[:] = [time.perf_counter()]
        elif gc_started:
            gc_ms.append(_ms(gc_started[0]))

    gc.collect()  # the garbage of the pure plan and render above is the bench's, not the agent's
    gc.callbacks.append(collecting)
    for k in range(changes + 1):
        if k == 1:  # the first change after a full load is reported apart
            gc_ms.clear()
        source.change(k % n)
        if profile is not None and k:
            profile.enable()
            PROFILING.append(True)
        start = time.perf_counter()
        report = await agent.reconcile()
        took = _ms(start)
        if profile is not None and k:
            profile.disable()
            PROFILING.clear()
        assert report is not None and not report.full, report
        out.append(took)
        commands.append(report.commands)
    gc.callbacks.remove(collecting)
    change_nft = [ms for full, ms in applies[-changes:]]
    # A publication added, then deleted: its port claim comes and goes too.
    added: list[float] = []
    dropped: list[float] = []
    for j in range(adds):
        for step, into in ((source.add, added), (source.drop, dropped)):
            step(n + j)
            if profile is not None:
                profile.enable()
                PROFILING.append(True)
            start = time.perf_counter()
            report = await agent.reconcile()
            into.append(_ms(start))
            if profile is not None:
                profile.disable()
                PROFILING.clear()
            assert report is not None and not report.full, report
    await proxies.close()
    return {
        "added_ms": added,
        "dropped_ms": dropped,
        "gc_ms": sum(gc_ms),
        "gc_max_ms": max(gc_ms, default=0.0),
        "agent_full_ms": agent_full_ms,
        "plan_ms": plan_ms,
        "render_ms": render_ms,
        "nft_full_ms": nft_full_ms,
        "full_ms": plan_ms + render_ms + nft_full_ms,
        "first_change_ms": out[0],
        "change_ms": out[1:],
        "commands": commands[1:],
        "change_nft_ms": change_nft,
    }


async def _child(
    n: int, rounds: int, changes: int, adds: int, profile_to: str | None, counters: bool
) -> None:
    from bridgeport import log
    from bridgeport.proxy.worker import raise_fd_limit

    log.setup("WARNING", False)
    raise_fd_limit()
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    source = MemorySource(n)
    profile = cProfile.Profile() if profile_to else None
    threads: list[cProfile.Profile] = []
    if profile is not None:  # the work the agent hands to worker threads, profiled there
        to_thread = asyncio.to_thread

        async def profiled(fn: Callable[..., Any], /, *args: Any, **kw: Any) -> Any:
            if not PROFILING:
                return await to_thread(fn, *args, **kw)
            prof = cProfile.Profile()
            threads.append(prof)
            return await to_thread(prof.runcall, fn, *args, **kw)

        asyncio.to_thread = profiled  # type: ignore[assignment]
    results = []
    with tempfile.TemporaryDirectory(prefix="bp-change-") as tmp:
        for _ in range(rounds):
            results.append(
                await _round(n, changes, adds, source, Path(tmp) / "state.json", profile, counters)
            )
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    if profile is not None and profile_to:
        stats = pstats.Stats(profile)
        for prof in threads:
            stats.add(prof)
        stats.dump_stats(profile_to)
    print(json.dumps({"publications": n, "counters": counters, "rounds": results}))


def _report(data: dict[str, Any]) -> None:
    n = data["publications"]
    counters = "on" if data["counters"] else "off"
    print(
        f"one change among {n:,} publications, agent-side end to end, same process "
        f"(per-publication counters {counters}):"
    )
    ratios, strict = [], []
    for i, r in enumerate(data["rounds"], 1):
        change = statistics.median(r["change_ms"])
        ratio = change / r["full_ms"]
        ratios.append(ratio)
        strict.append(change / (r["plan_ms"] + r["render_ms"]))
        print(
            f"  round {i}: full plan + render + apply {r['full_ms']:.0f} ms (plan "
            f"{r['plan_ms']:.0f}, render {r['render_ms']:.0f}, nft {r['nft_full_ms']:.0f}); "
            f"the agent's full reconcile {r['agent_full_ms']:.0f} ms"
        )
        print(
            f"           one change: median {change:.1f} ms of {len(r['change_ms'])} "
            f"(min {min(r['change_ms']):.1f}, max {max(r['change_ms']):.1f}; nft median "
            f"{statistics.median(r['change_nft_ms']):.1f}; {r['commands'][0]} commands; "
            f"first after the full load {r['first_change_ms']:.1f}) = {ratio:.1%} of full"
        )
        print(
            f"           cyclic GC during the changes: {r['gc_ms']:.1f} ms in all, longest "
            f"{r['gc_max_ms']:.1f} ms"
        )
        if r["added_ms"]:
            add, drop = statistics.median(r["added_ms"]), statistics.median(r["dropped_ms"])
            print(
                f"           one publication added: median {add:.1f} ms "
                f"({add / r['full_ms']:.1%}), deleted again: {drop:.1f} ms "
                f"({drop / r['full_ms']:.1%}) of {len(r['added_ms'])} each"
            )
    print(
        f"  ratio, median of rounds: {statistics.median(ratios):.1%} (target < 5%); against "
        f"the full plan + render alone, without nft: {statistics.median(strict):.1%}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--publications", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--changes", type=int, default=9)
    ap.add_argument(
        "--adds", type=int, default=3, help="publications added and deleted again, one at a time"
    )
    ap.add_argument("--profile", help="write a cProfile of the changes here")
    ap.add_argument("--no-counters", action="store_true", help="without per-publication counters")
    ap.add_argument(
        "--code",
        type=Path,
        help="measure the bridgeport package of another checkout (its operator/)",
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        if args.code:
            sys.path.insert(0, str(args.code / "operator"))
        asyncio.run(
            _child(
                args.publications,
                args.rounds,
                args.changes,
                args.adds,
                args.profile,
                not args.no_counters,
            )
        )
        return
    name = f"bpchange{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        cmd = [
            "ip",
            "netns",
            "exec",
            name,
            sys.executable,
            __file__,
            "--child",
            "--publications",
            str(args.publications),
            "--rounds",
            str(args.rounds),
            "--changes",
            str(args.changes),
            "--adds",
            str(args.adds),
        ]
        if args.profile:
            cmd += ["--profile", args.profile]
        if args.no_counters:
            cmd.append("--no-counters")
        if args.code:
            cmd += ["--code", str(args.code.resolve())]
        proc = subprocess.run(cmd, check=True, timeout=1800, stdout=subprocess.PIPE, text=True)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
    _report(json.loads(proc.stdout))


if __name__ == "__main__":
    main()
