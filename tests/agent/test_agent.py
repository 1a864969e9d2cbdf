"""The agent against the in-memory Dataplane: no root, no kernel (issue 17).

Scenarios: a burst of changes is one reconcile (debounce); the first apply is full, later
ones are small diffs and an unchanged node sends nothing; a deleted or flushed table waits for
the periodic drift check, which restores it wholesale; a refused bridge fails its network
(BridgeFailed) and a refused transaction fails everything that was to be Applied
(NftRejected), both recovering on the next reconcile; a port a host process holds makes its
publication Conflicted (PortInUse) with no DNAT; each problem is logged once, again only if it
comes back; a port joining a bridge is configured without waiting for a resync; the state file
and the reporters get every reconcile, and a failing reporter stops nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from bridgeport.adapters import statefile
from bridgeport.adapters.fake import FakeDataplane
from bridgeport.agent import Agent, AgentSettings
from bridgeport.core.plan import Claim, ProxyKey, ProxyPort
from bridgeport.core.report import Report
from bridgeport.core.sockets import SocketChanges, SocketReports
from bridgeport.core.source import Snapshot
from bridgeport.core.specs import ParseResult
from bridgeport.proxy.listener_status import ProxyStatus
from tests.core.parsed import NODE, net, pub


class ListSource:
    """Resources held in a list; `change()` replaces them and tells the agent."""

    def __init__(self, *resources: ParseResult, errors: Sequence[str] = ()) -> None:
        self.resources = list(resources)
        self.errors = tuple(errors)
        self._changed: Callable[[], None] | None = None

    def snapshot(self) -> Snapshot | None:
        return Snapshot(tuple(self.resources), self.errors)

    async def run(self, changed: Callable[[], None]) -> None:
        self._changed = changed
        await asyncio.Event().wait()

    @property
    def watched(self) -> bool:
        return self._changed is not None

    def change(self, *resources: ParseResult) -> None:
        self.resources = list(resources)
        assert self._changed is not None, "the agent is not watching yet"
        self._changed()


class HeldPorts:
    """Proxies and port claims where a host process already holds some ports. Records when
    sockets are let go, against the transactions the data plane committed by then."""

    def __init__(self, held: set[int], fake: FakeDataplane | None = None) -> None:
        self.held = held
        self.fake = fake
        self.synced: list[list[ProxyPort]] = []
        self.claimed: list[list[Claim]] = []
        self.releases: list[int] = []  # transactions committed at each release()
        self.told = 0  # syncs told only what changed
        self.last: Mapping[ProxyKey, ProxyStatus] = {}  # the last sync's statuses

    async def sync(
        self,
        desired: Sequence[ProxyPort],
        claims: Sequence[Claim] = (),
        release: bool = True,
        changes: SocketChanges | None = None,
    ) -> SocketReports[ProxyStatus]:
        if changes is not None:  # the agent vouches: the last sync's sockets, so changed
            self.told += 1
            for old, removed, added, new in (
                (self.synced[-1], changes.proxies_removed, changes.proxies_added, desired),
                (self.claimed[-1], changes.claims_removed, changes.claims_added, claims),
            ):
                assert Counter(removed) <= Counter(old), changes
                assert Counter(old) - Counter(removed) + Counter(added) == Counter(new), changes
        self.synced.append(list(desired))
        self.claimed.append(list(claims))
        statuses = {
            p.key: ProxyStatus("failed", p.owner, "PortInUse", f"{p.port} is in use")
            if p.port in self.held
            else ProxyStatus("listening", p.owner)
            for p in [*desired, *claims]
        }
        self.last = statuses
        return SocketReports.of(statuses, {c.key for c in claims})

    async def release(self) -> None:
        self.releases.append(len(self.fake.transactions) if self.fake else -1)

    async def close(self) -> None:
        pass


def agent_for(
    source: ListSource,
    fake: FakeDataplane,
    proxies: HeldPorts | None = None,
    reporters: Sequence[Callable[[Report], Awaitable[None]]] = (),
    **settings: Any,
) -> Agent:
    settings.setdefault("resync", 3600)
    return Agent(
        source,
        AgentSettings("node-1", **settings),
        proxies=proxies,
        reporters=reporters,
        dataplane=fake,
    )


def fake_node() -> FakeDataplane:
    return FakeDataplane(addresses=set(NODE.addresses))


def states(report: Any) -> dict[str, tuple[str, str]]:
    return {o.ref.name: (o.state.value, o.reason) for o in report.outcomes}


def events(logs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == event]


async def until(predicate: Callable[[], object], what: str, limit: float = 30) -> None:
    """Poll on the event loop (the agent runs on it too); the limit only ends a hung test."""

    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.005)

    try:
        await asyncio.wait_for(poll(), limit)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


async def running(agent: Agent, source: ListSource, body: Callable[[], Awaitable[None]]) -> None:
    task = asyncio.create_task(agent.run())
    try:
        await until(lambda: source.watched, "the agent watching its source")
        await body()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_a_burst_of_changes_is_one_reconcile() -> None:
    source = ListSource(net("a", "10.1.0.0/24"))
    fake = fake_node()
    agent = agent_for(source, fake, debounce=0.05)

    async def body() -> None:
        for port in range(8080, 8100):  # twenty changes in a row
            source.change(net("a", "10.1.0.0/24"), pub("web", port))
        await until(lambda: fake.transactions, "the first reconcile")
        assert not agent._dirty.is_set()  # nothing left over: the loop goes back to waiting
        source.change(net("a", "10.1.0.0/24"))
        # Its log line, not only its transaction: the reconcile settles after the kernel.
        await until(lambda: len(events(logs, "reconciled")) == 2, "the next change")
        assert len(fake.transactions) == 2

    with capture_logs() as logs:
        asyncio.run(running(agent, source, body))
    assert len(events(logs, "reconciled")) == 2
    elements = fake.tables["ip"].elements["pub_any"]
    assert not elements  # the last change won, in one go


def test_full_then_incremental_then_nothing() -> None:
    source = ListSource(net("a", "10.1.0.0/24"), pub("web", 8080))
    fake = fake_node()
    agent = agent_for(source, fake)

    async def body() -> None:
        first = await agent.reconcile()
        assert first is not None and first.full
        source.resources.append(pub("api", 8081))
        second = await agent.reconcile()
        assert second is not None and not second.full
        assert fake.transactions[-1].commands["ip"] == (
            'add element ip bridgeport pub_any { tcp . 8081 comment "default/api" '
            ": 10.0.0.2 . 80 }",
            'add element ip bridgeport cnt_any { tcp . 8081 comment "default/api" }',
            "add element ip bridgeport loop_ports { tcp . 8081 }",
        )  # the remote-loopback drop
        third = await agent.reconcile()
        assert third is not None and third.commands == 0 and not third.full

    with capture_logs() as logs:
        asyncio.run(body())
    levels = [e["log_level"] for e in events(logs, "reconciled")]
    assert levels == ["info", "info", "debug"]  # a resync that changed nothing stays quiet


def test_drift_waits_for_the_periodic_check_then_is_restored_wholesale() -> None:
    source = ListSource(net("a", "10.1.0.0/24"), pub("web", 8080))
    fake = fake_node()
    agent = agent_for(source, fake)

    async def body() -> None:
        await agent.reconcile()
        fake.tamper_delete_table("ip")
        fake.tamper_flush_chain("ip6", "forward")
        quiet = await agent.reconcile(check_drift=False)
        assert quiet is not None and quiet.commands == 0  # a change-driven reconcile trusts
        assert fake.drifted() == ["ip", "ip6"]  # what it applied; the resync does not
        repaired = await agent.reconcile(check_drift=True)
        assert repaired is not None and repaired.full
        assert fake.drifted() == []

    with capture_logs() as logs:
        asyncio.run(body())
    drift = events(logs, "our nftables content drifted; restoring it")
    assert [e["families"] for e in drift] == [["ip", "ip6"]]


def test_refused_bridge_fails_its_network_then_recovers() -> None:
    source = ListSource(net("a", "10.1.0.0/24"), net("b", "10.2.0.0/24"), pub("web", 8080))
    fake = fake_node()
    agent = agent_for(source, fake)
    fake.refuse_bridge("bp-a", "Operation not permitted")

    async def body() -> None:
        report = await agent.reconcile()
        assert report is not None
        assert states(report) == {
            "a": ("Failed", "BridgeFailed"),
            "b": ("Applied", "Programmed"),
            "web": ("Applied", "Programmed"),
        }
        failed = next(o for o in report.outcomes if o.ref.name == "a")
        assert failed.message == "bridge bp-a: Operation not permitted"
        again = await agent.reconcile()
        assert again is not None and states(again)["a"] == ("Applied", "Programmed")

    asyncio.run(body())


def test_refused_transaction_fails_what_was_to_be_applied_then_recovers() -> None:
    source = ListSource(
        net("a", "10.1.0.0/24"),
        pub("web", 8080, "2026-01-01T00:00:00Z"),
        pub("clash", 8080, "2026-02-01T00:00:00Z"),
    )
    fake = fake_node()
    agent = agent_for(source, fake)
    fake.refuse_next_apply("Error: Could not process rule: No buffer space available")

    async def body() -> None:
        report = await agent.reconcile()
        assert report is not None
        assert states(report) == {
            "a": ("Failed", "NftRejected"),
            "web": ("Failed", "NftRejected"),
            "clash": ("Conflicted", "PortConflict"),
        }  # not to be Applied: left as planned
        assert "No buffer space" in next(o.message for o in report.outcomes if o.ref.name == "web")
        assert "ip" not in fake.tables  # nothing of the refused transaction landed
        again = await agent.reconcile()
        assert again is not None and again.full  # unknown kernel state: replace wholesale
        assert states(again)["web"] == ("Applied", "Programmed")

    asyncio.run(body())


def test_a_port_held_by_a_host_process_is_conflicted_without_dnat() -> None:
    source = ListSource(pub("held", 8080), pub("free", 8081))
    fake = fake_node()
    proxies = HeldPorts({8080})
    agent = agent_for(source, fake, proxies=proxies)

    async def body() -> None:
        report = await agent.reconcile()
        assert report is not None
        assert states(report)["held"] == ("Conflicted", "PortInUse")
        assert states(report)["free"] == ("Applied", "Programmed")
        assert report.proxy_states == {pub("free", 8081).meta.ref: "listening"}
        keys = set(fake.tables["ip"].elements["pub_any"])
        assert keys == {"tcp . 8081"}  # the host process on 8080 is never shadowed
        assert {p.port for p in proxies.synced[-1]} == {8081}  # the replan let 8080 go

    asyncio.run(body())


def test_claims_hold_before_and_let_go_after_the_transaction() -> None:
    """loopback: Never still claims its port: a held one is Conflicted without DNAT, and the
    younger publication the replan hands the port to is tried as well. Sockets are let go
    only after a transaction committed, never after a refused one."""
    source = ListSource(
        pub("held", 8080, "2026-01-01T00:00:00Z", loopback="Never"),
        pub("next", 8080, "2026-02-01T00:00:00Z", loopback="Never"),
        pub("free", 8081, loopback="Never"),
    )
    fake = fake_node()
    proxies = HeldPorts({8080}, fake)
    agent = agent_for(source, fake, proxies=proxies)

    async def body() -> None:
        report = await agent.reconcile()
        assert report is not None
        assert states(report) == {
            "held": ("Conflicted", "PortInUse"),
            "next": ("Conflicted", "PortInUse"),
            "free": ("Applied", "Programmed"),
        }
        assert set(fake.tables["ip"].elements["pub_any"]) == {"tcp . 8081"}
        assert [{c.port for c in claims} for claims in proxies.claimed] == [
            {8080, 8081},
            {8080, 8081},
            {8081},
        ]  # held, then next, then neither
        assert report.proxy_states == {}  # bare claims are not proxies
        assert proxies.releases == [len(fake.transactions)]  # after the commit
        fake.refuse_next_apply("Error: Could not process rule: No buffer space available")
        source.resources.append(pub("more", 8082, loopback="Never"))
        await agent.reconcile()
        assert proxies.releases == [len(fake.transactions)]  # nothing let go

    asyncio.run(body())


def test_the_proxies_hear_only_what_changed_between_partial_plans() -> None:
    """A publication added or deleted after the first plan: the proxies are told those
    sockets alone (HeldPorts checks the changes against the last sync). A resync, a replan
    around a port in use and the sync after it walk every socket."""
    source = ListSource(*(pub(f"p{i}", 8100 + i, loopback="Never") for i in range(5)))
    fake = fake_node()
    proxies = HeldPorts({8090}, fake)
    agent = agent_for(source, fake, proxies=proxies)

    async def body() -> None:
        await agent.reconcile()
        assert proxies.told == 0  # the first plan is a full one
        source.resources.append(pub("new", 8200, loopback="Never"))
        await agent.reconcile()
        assert proxies.told == 1
        assert {c.port for c in proxies.claimed[-1]} == {*range(8100, 8105), 8200}
        source.resources.pop()
        await agent.reconcile()
        assert proxies.told == 2
        assert await agent.reconcile(check_drift=True) is not None
        source.resources.append(pub("held", 8090, loopback="Never"))  # a host process has it
        report = await agent.reconcile()
        assert report is not None and states(report)["held"] == ("Conflicted", "PortInUse")
        source.resources.append(pub("late", 8300, loopback="Never"))
        await agent.reconcile()
        assert proxies.told == 3  # the told sync failed; the replan's and the next: whole
        # 1 + 2 told + (told, replan) + (whole, replan): the resync had nothing to bind.
        assert len(proxies.claimed) == 7

    asyncio.run(body())


def test_reserved_ports_and_no_proxy_settings_reach_the_planner() -> None:
    source = ListSource(pub("ssh", 22), pub("web", 8080))
    proxies = HeldPorts(set())
    agent = agent_for(
        source, fake_node(), proxies=proxies, proxy_enabled=False, reserved_ports=frozenset({22})
    )

    async def body() -> None:
        report = await agent.reconcile()
        assert report is not None
        assert states(report)["ssh"] == ("Conflicted", "ReservedPort")
        assert proxies.synced[-1] == []  # --no-proxy: no listeners, only claims
        assert [str(c.listen) for c in proxies.claimed[-1]] == ["0.0.0.0"]

    asyncio.run(body())


def test_each_problem_is_logged_once_and_again_when_it_returns() -> None:
    conflict = [
        pub("old", 8080, "2026-01-01T00:00:00Z"),
        pub("young", 8080, "2026-02-01T00:00:00Z"),
    ]
    source = ListSource(*conflict, errors=["bad.yaml: unreadable, skipped: oops"])
    agent = agent_for(source, fake_node())

    async def body() -> None:
        for _ in range(3):
            await agent.reconcile()
        source.resources = conflict[:1]
        source.errors = ()
        await agent.reconcile()
        source.resources = conflict
        await agent.reconcile()

    with capture_logs() as logs:
        asyncio.run(body())
    warned = [(e["resource"], e["reason"]) for e in events(logs, "resource not applied")]
    assert warned == [("PortPublication default/young", "PortConflict")] * 2
    assert [e["error"] for e in events(logs, "input error")] == [
        "bad.yaml: unreadable, skipped: oops"
    ]


def test_a_joining_port_is_configured_without_a_resync() -> None:
    source = ListSource(net("a", "10.1.0.0/24", interContainer=False))
    fake = fake_node()
    agent = agent_for(source, fake)

    async def body() -> None:
        source.change(*source.resources)
        await until(lambda: "bp-a" in fake.bridges, "the bridge")
        await until(lambda: fake._watchers, "the port watch")
        fake.attach_port("veth1", "bp-a")
        await until(lambda: fake.port_flags["veth1"] == (1, 1), "hairpin and isolation")

    asyncio.run(running(agent, source, body))


def test_state_file_and_reporters(tmp_path: Path) -> None:
    source = ListSource(net("a", "10.1.0.0/24"))
    seen: list[Report] = []

    async def broken(_: Report) -> None:
        raise RuntimeError("API server down")

    async def recording(state: Report) -> None:
        seen.append(state)

    state_file = tmp_path / "state.json"
    agent = agent_for(source, fake_node(), state_file=state_file, reporters=[broken, recording])
    with capture_logs() as logs:
        report = asyncio.run(agent.reconcile())
    assert report is not None
    assert [e.ref.name for e in seen[0].entries] == ["a"]
    written = json.loads(state_file.read_text())
    assert written.pop("journal")["file"] == "state.json.journal"  # where the rest is
    assert written == seen[0].head() and written["tableDigest"] == report.digest
    assert written["resources"] == [] and written["applied"]["count"] == 1  # summarised
    # The journal beside it has every entry: folded, the whole report as before.
    loaded = statefile.load(state_file)
    assert loaded is not None
    assert loaded.pop("firstSeen") == {
        "BridgeNetwork//a": agent._stamper.first_seen["BridgeNetwork//a"]
    }
    assert loaded.pop("applied") == written["applied"]
    assert loaded == seen[0].document()
    assert events(logs, "state report failed")


@pytest.mark.parametrize("manage", [True, False])
def test_forwarding_is_enabled_only_when_managed(manage: bool) -> None:
    fake = fake_node()
    fake.ipv4_forwarding = fake.ipv6_forwarding = False
    agent = agent_for(ListSource(pub("web", 8080)), fake, manage_sysctls=manage)
    report = asyncio.run(agent.reconcile())
    assert report is not None
    assert fake.forwarding_enabled == int(manage)
    assert bool(report.plan.dnats) == manage  # without forwarding, the proxy serves instead
