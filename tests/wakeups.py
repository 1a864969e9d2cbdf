"""Wakeups of a process, counted rather than timed: a test that an idle process stays asleep
compares its context switches before and after a window (the kernel counts one each time a
thread sleeps, or is preempted), so a loaded machine cannot make it pass or fail."""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def thread_switches(pid: int) -> Counter[str]:
    """Voluntary and involuntary context switches so far of each live thread of `pid`, by
    thread name and id ("python3/1234")."""
    found: Counter[str] = Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = f"{(task / 'comm').read_text().strip()}/{task.name}"
            status = (task / "status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        found[name] += sum(
            int(line.split()[1]) for line in status.splitlines() if "ctxt_switches:" in line
        )
    return found


def context_switches(pid: int) -> int:
    """All of `pid`'s threads' context switches so far."""
    return sum(thread_switches(pid).values())
