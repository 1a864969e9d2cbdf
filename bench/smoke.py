"""`make bench-smoke`: every benchmark in bench/ at a tiny size; fails if any crashes.

It checks that each benchmark runs to the end (exit status 0), never how fast: the figures of
a smoke run mean nothing. A new benchmark must be listed here (with its tiny arguments) or
named as a helper of one that is; an unlisted script fails the run, so none can rot unseen.

Run as root: `make bench-smoke` or `.venv/bin/python bench/smoke.py [NAME ...]`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# script (relative to bench/) -> its tiny arguments.
SMOKE: dict[str, list[str]] = {
    "dataplane.py": ["--seconds", "1", "--publications", "50"],
    "idle.py": ["--seconds", "2", "--ports", "1"],
    "input_stall.py": ["--resources", "50", "--rounds", "1", "--window", "20", "--baseline", "1"],
    "kube_latency.py": ["--changes", "3"],
    "proxy/run.py": ["--seconds", "1", "--rounds", "1", "--ports", "10"],
    "cluster_scale.py": ["--smoke", "--tracemalloc"],
    "claims.py": [],  # 10,000 claims bind in well under a second: its own size is tiny
    "sources.py": ["--seconds", "1", "--rounds", "1"],
    "counters.py": ["--seconds", "1", "--rounds", "1", "--publications", "50"],
    "agent_change.py": ["--publications", "200", "--rounds", "1", "--changes", "2"],
    "churn.py": ["--publications", "50", "--containers", "1"],
    "proxy/wakeups.py": ["--tcp", "2", "--udp", "1", "--seconds", "1", "--settle", "0.5"],
    # The BPF relay prototype's own correctness check (run.py runs it only when named).
    "proxy/sockmap_relay.py": ["--check", "--requests", "50", "--transfers", "1", "--mib", "4"],
}
# Scripts that are not benchmarks of their own: who runs them.
HELPERS = {
    "smoke.py": "this runner",
    "scale_probe.py": "dataplane.py",
    "proxy/alt_relay.py": "proxy/run.py",
    "agent_tracemalloc.py": "cluster_scale.py",
    "topology.py": "dataplane.py, sources.py, counters.py",
}
TIMEOUT = 900  # seconds per benchmark: a bound on a hang, generous for a loaded machine


def scripts() -> set[str]:
    return {str(p.relative_to(HERE)) for p in HERE.rglob("*.py")}


def run_one(name: str, env: dict[str, str]) -> tuple[bool, str]:
    """Run one benchmark at its tiny size: (succeeded, its output)."""
    try:
        proc = subprocess.run(
            [sys.executable, str(HERE / name), *SMOKE[name]],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        return False, f"timed out after {TIMEOUT}s\n{exc.stdout or ''}{exc.stderr or ''}"
    return proc.returncode == 0, proc.stdout + proc.stderr


def main() -> int:
    unlisted = sorted(scripts() - SMOKE.keys() - HELPERS.keys())
    missing = sorted((SMOKE.keys() | HELPERS.keys()) - scripts())
    if unlisted or missing:
        print(f"bench/smoke.py is out of date: unlisted {unlisted}, listed but gone {missing}")
        return 1
    chosen = sys.argv[1:] or sorted(SMOKE)
    env = {**os.environ, "BRIDGEPORT_DOCKER_PROXY_BUILD": "0"}  # never build Go in a smoke run
    failed: list[str] = []
    for name in chosen:
        print(f"[bench-smoke] {name} {' '.join(SMOKE[name])}", flush=True)
        # One retry: the smoke run proves a benchmark still runs, and 1-second runs on a shared
        # machine can lose a race; a benchmark that fails twice in a row has rotted.
        for attempt in (1, 2):
            started = time.monotonic()
            ok, out = run_one(name, env)
            took = time.monotonic() - started
            print(f"[bench-smoke] {name}: {'ok' if ok else 'FAILED'} ({took:.0f}s)", flush=True)
            if ok:
                break
            print(out[-6000:], flush=True)
            if attempt == 1:
                print(f"[bench-smoke] {name}: retrying once", flush=True)
        else:
            failed.append(name)
    if failed:
        print(f"[bench-smoke] failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
