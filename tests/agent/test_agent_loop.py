"""The agent's run loop: debounced marks, and a drift check that keeps its schedule.

Scenario (issue 9): marks arrive during every reconcile (as the port watch's did, reacting to
the agent's own writes). A due resync must still run its drift check; it used to lose to the
pending mark every time, so a deleted table was never restored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from bridgeport.adapters.fake import FakeDataplane
from bridgeport.agent import Agent, AgentSettings, SyncReport
from bridgeport.core.source import Snapshot


class StillSource:
    """A source with one fixed snapshot that never calls `changed` by itself."""

    def snapshot(self) -> Snapshot | None:
        return Snapshot(())

    async def run(self, changed: Callable[[], None]) -> None:
        await asyncio.Event().wait()


class Recording(Agent):
    """Records each reconcile's kind instead of touching the kernel; optionally marks the node
    dirty from inside every reconcile, so a mark is always pending when the loop looks."""

    def __init__(self, busy: bool, stop_after: int) -> None:
        super().__init__(
            StillSource(),
            AgentSettings("n", resync=0.05, debounce=0.001, watch_ports=False),
            dataplane=FakeDataplane(),
        )
        self.busy = busy
        self.stop_after = stop_after
        self.kinds: list[bool] = []  # check_drift of each reconcile, in order
        self.done = asyncio.Event()

    async def reconcile(self, check_drift: bool = False) -> SyncReport | None:
        self.kinds.append(check_drift)
        if self.busy:
            self.mark_dirty()
        await asyncio.sleep(0.002)  # a reconcile takes time; marks arrive meanwhile
        if sum(self.kinds) >= 3 or len(self.kinds) >= self.stop_after:
            self.done.set()
        return None


async def _run(agent: Recording) -> None:
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.done.wait(), timeout=120)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_drift_check_runs_on_schedule_while_marks_keep_coming() -> None:
    """Up to 3,000 reconciles, each leaving a mark behind: at least 3 are drift checks."""
    agent = Recording(busy=True, stop_after=3000)
    asyncio.run(_run(agent))
    assert sum(agent.kinds) >= 3, f"{sum(agent.kinds)} drift checks in {len(agent.kinds)}"
    assert not all(agent.kinds), "the marks themselves were never served"


def test_idle_agent_only_resyncs() -> None:
    """With nothing marking the node, every reconcile is a periodic drift check."""
    agent = Recording(busy=False, stop_after=50)
    asyncio.run(_run(agent))
    assert all(agent.kinds)
