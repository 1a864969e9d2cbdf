"""Wakeups of a process, counted rather than timed: a test that an idle process stays asleep
compares its context switches before and after a window (the kernel counts one each time a
thread sleeps, or is preempted), so a loaded machine cannot make it pass or fail."""

from __future__ import annotations

from pathlib import Path


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of every live thread of `pid` so far."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        total += sum(
            int(line.split()[1]) for line in status.splitlines() if "ctxt_switches:" in line
        )
    return total
