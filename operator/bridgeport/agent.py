"""The agent loop: any change marks the node dirty; one reconcile converges everything.

Level-based: each reconcile reads a complete snapshot, plans the whole node, and converges
bridges, the userland proxies and nftables to it. Debounced and coalescing; a periodic resync
repairs drift. Stopping the agent leaves the kernel as it is, so traffic keeps flowing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import structlog

from bridgeport import __version__, metrics
from bridgeport.adapters.dataplane import Dataplane, KernelDataplane, NftError
from bridgeport.adapters.statefile import Journal, journal_path, read_journal, write_atomic
from bridgeport.core import doctor, firstseen, ruleset, settle
from bridgeport.core.incremental import Delta, IncrementalPlanner, IncrementalRenderer
from bridgeport.core.ledger import Ledger
from bridgeport.core.plan import (
    Claim,
    Fwmark,
    NodeFacts,
    NodePlan,
    Outcome,
    ProxyPort,
    State,
    udp_mappings,
)
from bridgeport.core.report import Entry, ProxyState, Report, assigned_ports, entries
from bridgeport.core.sockets import ProxyReport, SocketChanges, SocketReports
from bridgeport.core.source import Snapshot, Source
from bridgeport.core.specs import ResourceRef

log = structlog.get_logger(__name__)
RECALL_WAIT = 60.0  # seconds to retry reading back assigned ports before assigning afresh
MAX_AVOIDED = 64  # ports a host process took from one publication, remembered to avoid


class Proxies(Protocol):
    async def sync(
        self,
        desired: Sequence[ProxyPort],
        claims: Sequence[Claim] = (),
        release: bool = True,
        changes: SocketChanges | None = None,
    ) -> SocketReports[ProxyReport]: ...

    async def release(self) -> None: ...

    async def close(self) -> None: ...


@dataclass
class SyncReport:
    plan: NodePlan
    overrides: Mapping[ResourceRef, Outcome]  # what the kernel and proxies made of the plan
    digest: str
    commands: int
    full: bool
    duration: float
    proxy_states: Mapping[ResourceRef, ProxyState]

    @functools.cached_property
    def outcomes(self) -> tuple[Outcome, ...]:
        """Every outcome, in the plan's order (O(resources): the agent itself never needs
        them all, its ledger keeps the reports in O(change))."""
        return settle.outcomes(self.plan, self.overrides)


@dataclass(frozen=True)
class AgentSettings:
    """How the agent behaves on this node (the `bridgeport agent` flags)."""

    node_name: str
    """This node's name: the Node whose labels select resources, the NodeState it writes."""

    labels: Mapping[str, str] = field(default_factory=dict)
    """The node's labels where the source cannot tell (standalone); the Node's win."""

    state_file: Path | None = None
    """Where to write the node's report after every reconcile (atomically), if anywhere."""

    resync: float = 30.0
    """Seconds between drift checks (and reconciles of an otherwise idle node)."""

    debounce: float = 0.05
    """Seconds to let a burst of changes coalesce into one reconcile."""

    manage_sysctls: bool = False
    """Turn IPv4/IPv6 forwarding on, as Docker does, and set route_localnet on the bridges
    `loopback: Kernel` needs; otherwise only read them."""

    watch_ports: bool = True
    """Configure a port joining one of our bridges at once, not at the next resync."""

    proxy_enabled: bool = True
    """Run the userland proxy (--no-proxy: off). DNATed ports are claimed either way."""

    reserved_ports: frozenset[int] = frozenset()
    """Host ports no publication may take here (ReservedPort)."""

    accept_mark: Fwmark | None = None
    """Packets with this mark pass our forward drops (Docker 29's --bridge-accept-fwmark)."""

    counters: bool = True
    """Per-publication packet/byte counters in our tables (`--no-publication-counters`)."""

    doctor_interval: float = 300.0
    """Run the `doctor` checks after the first sync, then on a resync at most this often
    (seconds; 0: never). They read the whole ruleset, so they never get a timer of their own."""


class Agent:
    def __init__(
        self,
        source: Source,
        settings: AgentSettings,
        *,
        proxies: Proxies | None = None,
        reporters: Sequence[Callable[[Report], Awaitable[None]]] = (),
        dataplane: Dataplane | None = None,
        recall: Callable[[], Mapping[ResourceRef, tuple[str, int]] | None] | None = None,
    ) -> None:
        self.source = source
        self.settings = settings
        self.proxies = proxies
        self.reporters = list(reporters)
        self.dataplane: Dataplane = dataplane if dataplane is not None else KernelDataplane()
        self._reported: set[tuple[str, ...]] = set()  # problems already logged
        self._dirty = asyncio.Event()
        self._synced_once = False
        self._last_digest = ""
        # Plan and render in O(change); each equals the full planner/renderer (tested).
        self._planner = IncrementalPlanner()
        self._renderer = IncrementalRenderer(counters=settings.counters)
        self._said_waiting = False
        self._udp_mappings: dict[tuple[int, int], set[tuple[str, str, int, str]]] | None = None
        self._applied = False  # the last nftables transaction committed
        # Incumbency: what is Applied here keeps its claims. Until the first reconcile, what
        # the state file says was Applied (else the kernel's bridges).
        first_seen, self._incumbents, self._ports = _remembered(self.settings.state_file)
        self._stamper = firstseen.Stamper(first_seen)
        # Assigned host ports are kept for the life of a publication on this node: from the
        # state file (standalone) or, with `recall`, from the node's own NodeState (kube).
        self._recall = recall
        self._recall_since: float | None = None
        self._avoid: dict[ResourceRef, frozenset[int]] = {}  # ports host processes took
        # The reports' entries, kept in O(change) from what each reconcile changed.
        self._ledger = Ledger()
        self._overridden: set[ResourceRef] = set()  # refs whose outcome settle overrode
        self._proxy_states: Mapping[ResourceRef, ProxyState] = {}
        self._proxy_retry = True  # the last proxy sync had failures: sync again
        self._proxied: NodePlan | None = None  # the plan whose sockets the proxies hold
        self._unreleased = False  # a sync's unwanted sockets wait for a committed transaction
        self._journal = (
            Journal(journal_path(settings.state_file)) if settings.state_file is not None else None
        )
        self._unwritten: dict[ResourceRef, Entry | None] | None = None  # not yet journalled
        self._tally = self._ledger.tally()
        self._frozen = False  # the heap is frozen out of the cyclic collector (_freeze_heap)
        self._node_check: dict[str, Any] | None = None
        self._node_check_at = 0.0

    def mark_dirty(self, trigger: str = "resources") -> None:
        metrics.TRIGGERS.labels(trigger).inc()
        self._dirty.set()

    async def run(self) -> None:
        """Until cancelled, or until the source stops (kopf handles SIGTERM itself)."""
        watch = asyncio.create_task(self.source.run(self.mark_dirty), name="source")
        if self.settings.watch_ports:
            self._start_port_watch(asyncio.get_running_loop())
        next_resync = time.monotonic() + self.settings.resync
        try:
            while True:
                dirty = asyncio.create_task(self._dirty.wait())
                done, _ = await asyncio.wait(
                    {dirty, watch},
                    timeout=max(0.0, next_resync - time.monotonic()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                dirty.cancel()
                if watch in done:
                    watch.result()  # a crashed source surfaces here instead of idling
                    log.info("source stopped; leaving the kernel state in place")
                    return
                await asyncio.sleep(self.settings.debounce)  # let a burst of changes coalesce
                self._dirty.clear()
                # A due resync checks drift whatever woke us: on a busy node marks never stop.
                periodic = time.monotonic() >= next_resync
                if periodic:
                    metrics.TRIGGERS.labels("resync").inc()
                await self.reconcile(check_drift=periodic)
                if periodic:
                    next_resync = time.monotonic() + self.settings.resync
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            if self.proxies is not None:
                await self.proxies.close()

    def _start_port_watch(self, loop: asyncio.AbstractEventLoop) -> None:
        def watch() -> None:
            try:
                self.dataplane.watch_ports(
                    lambda: loop.call_soon_threadsafe(self.mark_dirty, "ports")
                )
            except Exception as exc:  # the periodic resync still covers new ports
                metrics.ERRORS.labels("links").inc()
                log.warning(
                    "bridge port watch stopped; new ports wait for the next resync", error=str(exc)
                )

        threading.Thread(target=watch, name="port-watch", daemon=True).start()

    async def reconcile(self, check_drift: bool = False) -> SyncReport | None:
        """One full convergence. Never raises: failures become outcomes, logs and metrics."""
        snapshot = self.source.snapshot()
        if snapshot is None:
            if not self._said_waiting:
                log.info("waiting for the first complete listing before touching anything")
                self._said_waiting = True
            return None
        if self._recall is not None and not await self._recall_ports():
            return None
        started = time.perf_counter()
        try:
            report = await self._reconcile(snapshot, check_drift, started)
        except Exception as exc:
            metrics.ERRORS.labels("reconcile").inc()
            log.exception("reconcile failed", error=str(exc))
            return None
        metrics.RECONCILE_SECONDS.observe(report.duration)
        if self._planner.delta is None:  # after a full plan only
            self._frozen = _freeze_heap(len(self._ledger.entries), self._frozen)
        await self._check_node(check_drift)
        # Thousands of resources make this tens of milliseconds: off the loop, like planning.
        published = await asyncio.to_thread(
            self._publishable, report, snapshot.errors, snapshot.node_labels
        )
        for publish in self.reporters:
            try:
                await publish(published)
            except Exception as exc:  # a reporter must never stop the data plane
                metrics.ERRORS.labels("report").inc()
                log.exception("state report failed", error=str(exc))
        return report

    async def _reconcile(self, snapshot: Snapshot, check_drift: bool, started: float) -> SyncReport:
        labels = snapshot.node_labels if snapshot.node_labels is not None else self.settings.labels
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        # Netlink and libnftables calls block (and pyroute2 runs its own loop), and planning
        # thousands of resources takes a while: keep them off the event loop that serves the
        # proxies and the watch.
        resources = await asyncio.to_thread(self._stamper.stamp, snapshot.resources, now)
        snapshot = replace(snapshot, resources=tuple(resources))
        if check_drift:  # a resync reads every netlink fact anew, whatever the watch heard
            await asyncio.to_thread(self.dataplane.refresh)
        if self.settings.manage_sysctls and snapshot.resources:
            await asyncio.to_thread(self.dataplane.enable_forwarding)
        facts = await asyncio.to_thread(
            self.dataplane.gather_facts, self.settings.node_name, labels
        )
        assigning = self._stamper.assigning > 0  # kept in O(change), not a scan
        listening = await asyncio.to_thread(self.dataplane.listening_ports) if assigning else {}
        facts = replace(
            facts,
            reserved_ports=self.settings.reserved_ports,
            remembered=dict(self._ports),
            avoid=dict(self._avoid),
            listening=listening,
            userland_proxy=self.proxies is not None and self.settings.proxy_enabled,
            incumbents=facts.incumbents if self._incumbents is None else self._incumbents,
            accept_mark=self.settings.accept_mark,
            route_localnet=self.settings.manage_sysctls and facts.route_localnet,
        )
        plan = await asyncio.to_thread(
            self._planner.plan, snapshot.resources, facts, self._stamper.moved
        )
        delta = self._planner.delta
        proxy_states = self._proxy_states
        # Sockets are synced when the plan's changed, or when some could not be bound (the
        # port may be free now): a partial plan that kept them all has nothing to bind.
        synced = self.proxies is not None and (
            delta is None or delta.sockets_changed or self._proxy_retry
        )
        if synced:
            # Between partial plans the proxies hear only what changed: O(change). A resync
            # has them walk every socket anyway.
            changes = (
                delta.sockets()
                if delta is not None and delta.before is self._proxied and not check_drift
                else None
            )
            proxied, proxy_states = await self._sync_proxies(plan, snapshot, facts, changes)
            if proxied is not plan:  # replanned with ports in use: render it in full
                plan, delta = proxied, None
        elif delta is not None and delta.before is self._proxied:
            self._proxied = plan  # the same sockets
        tables, digest = await asyncio.to_thread(self._render, plan, delta)
        overrides, commands, full = await asyncio.to_thread(
            self._converge_kernel, plan, delta, tables, check_drift, self._planner.networks()
        )
        if self.proxies is not None and self._applied and (synced or self._unreleased):
            # Only now does no rule of ours capture them. After a rejected transaction the
            # old rules still do: keep holding until one commits.
            await self.proxies.release()
            self._unreleased = False
        elif synced:
            self._unreleased = True  # released after the next committed transaction
        await asyncio.to_thread(self._settle, plan, delta, overrides, proxy_states)
        # Assigned ports need every outcome (O(resources)): only on nodes that assign some.
        if (assigning or self._ports or self._avoid) and self._remember_ports(
            settle.outcomes(plan, overrides)
        ):
            self.mark_dirty("ports")  # a host process took an assigned port: pick another
        duration = time.perf_counter() - started
        metrics.ELEMENTS.set(sum(sum(len(v) for v in t.elements.values()) for t in tables))
        metrics.BRIDGES.set(len(plan.bridges))
        metrics.PROXIES.set(len(plan.proxies))
        metrics.CLAIMS.set(len(plan.claims))
        report = SyncReport(plan, overrides, digest, commands, full, duration, proxy_states)
        # A resync that changed nothing is routine: keep it out of INFO.
        emit = log.info if commands or full or self._last_digest != report.digest else log.debug
        self._last_digest = report.digest
        emit(
            "reconciled",
            node=self.settings.node_name,
            digest=report.digest,
            commands=commands,
            full=full,
            resync=check_drift,
            ms=round(duration * 1000, 1),
            **self._ledger.counts(),
        )
        self._log_new_problems((*snapshot.errors, *plan.errors))
        return report

    async def _recall_ports(self) -> bool:
        """Read back the host ports this node assigned before it restarted; False while that
        is still to be done (an API error: retried at the next reconcile, for RECALL_WAIT
        seconds at most, then given up with a warning: fresh assignments prefer the same
        ports anyway)."""
        assert self._recall is not None
        now = time.monotonic()
        self._recall_since = self._recall_since or now
        try:
            ports = await asyncio.to_thread(self._recall)
        except Exception as exc:  # never let a read-back stop the agent
            log.warning("cannot read back assigned host ports", error=str(exc))
            ports = None
        if ports is None and now - self._recall_since < RECALL_WAIT:
            return False
        if ports is None:
            log.warning(
                "giving up reading back assigned host ports; assigning afresh", waited=RECALL_WAIT
            )
        self._ports = dict(ports or {}) | self._ports
        self._recall = None
        log.info("assigned host ports read back", count=len(self._ports))
        return True

    def _remember_ports(self, outcomes: Sequence[Outcome]) -> bool:
        """Keep each publication's assigned ports for the next reconcile; a port a host
        process took (PortInUse) is avoided from now on, and True says: reassign soon."""
        ports: dict[ResourceRef, tuple[str, int]] = {}
        retry = False
        for o in outcomes:
            if o.assigned is None:
                continue
            if o.reason == "PortInUse":
                taken = frozenset(range(o.assigned[0], o.assigned[1] + 1))
                before = self._avoid.get(o.ref, frozenset())
                if len(before) < MAX_AVOIDED and not taken <= before:
                    self._avoid[o.ref] = before | taken
                    retry = True
                continue
            ports[o.ref] = (o.uid, o.assigned[0])
        present = {o.ref for o in outcomes}
        self._avoid = {r: v for r, v in self._avoid.items() if r in present}
        self._ports = ports
        return retry

    def _settle(
        self,
        plan: NodePlan,
        delta: Delta | None,
        overrides: Mapping[ResourceRef, Outcome],
        proxy_states: Mapping[ResourceRef, ProxyState],
    ) -> None:
        """Bring the ledger to this reconcile's outcomes: every one after a full plan, else
        those the plan, the overrides or the proxies changed."""
        node = self.settings.node_name

        def entry(o: Outcome) -> Entry:
            return Entry(
                node,
                o.ref,
                o.uid,
                o.generation,
                o.state.value,
                o.reason,
                o.message,
                proxy=proxy_states.get(o.ref, "off"),
                assigned=o.assigned,
            )

        if delta is None:
            self._ledger.reset(entry(overrides.get(o.ref, o)) for o in plan.outcomes)
        else:
            refs = set(delta.refs) | overrides.keys() | self._overridden
            if proxy_states is not self._proxy_states:
                before = self._proxy_states
                refs |= {
                    r
                    for r in before.keys() | proxy_states.keys()
                    if before.get(r) != proxy_states.get(r)
                }
            for ref in refs:
                o = overrides.get(ref) or self._planner.outcome(ref)
                if o is None:
                    self._ledger.drop(ref)
                else:
                    self._ledger.put(entry(o))
        self._overridden = set(overrides)
        self._proxy_states = proxy_states
        changed = self._ledger.take_changes()
        self._unwritten = _merge(self._unwritten, changed)
        self._tally = self._ledger.tally()
        # Incumbency: what is Applied here keeps its claims (a new set only when it moved).
        applied, held = self._ledger.applied, self._incumbents
        if changed is None or held is None or any((r in applied) != (r in held) for r in changed):
            self._incumbents = frozenset(applied)

    def _log_new_problems(self, errors: Sequence[str]) -> None:
        """Each problem once, when it appears, not again on every resync. Every problem is
        an entry the reports list: O(exceptions)."""
        troubled = [e for e in self._tally.listed if e.state not in (State.APPLIED, State.INACTIVE)]
        problems: set[settle.Problem] = {
            (str(e.ref), e.state, e.reason, e.message) for e in troubled
        }
        problems |= {("input", err) for err in errors}
        for p in sorted(problems - self._reported):
            if p[0] == "input":
                log.error("input error", error=p[1])
            else:
                log.warning(
                    "resource not applied", resource=p[0], state=p[1], reason=p[2], message=p[3]
                )
        self._reported = problems
        metrics.RESOURCE_PROBLEMS.clear()
        for e in troubled[: metrics.MAX_PROBLEM_SERIES]:  # sorted by ref
            metrics.RESOURCE_PROBLEMS.labels(
                e.ref.kind, e.ref.namespace, e.ref.name, e.state, e.reason
            ).set(1)

    async def _check_node(self, periodic: bool) -> None:
        """The doctor's findings, after the first sync and then on resyncs at most every
        doctor_interval: it reads the whole ruleset, so it never runs on its own timer."""
        now, interval = time.monotonic(), self.settings.doctor_interval
        if not interval or (
            self._node_check is not None and (not periodic or now - self._node_check_at < interval)
        ):
            return
        self._node_check_at = now
        try:
            findings = await asyncio.to_thread(self.dataplane.check_node)
        except Exception as exc:  # a diagnosis must never disturb the data plane
            metrics.ERRORS.labels("doctor").inc()
            log.warning("node check failed", error=str(exc))
            return
        severity = doctor.worst(findings)
        metrics.DOCTOR_FINDINGS.clear()
        for f in findings:
            metrics.DOCTOR_FINDINGS.labels(f.check, f.severity).inc()
        before = self._node_check or {}
        if before.get("severity") != severity:
            emit = log.warning if severity != doctor.INFO else log.info
            emit("node check", severity=severity, summary=doctor.summary(findings))
        self._node_check = {
            "severity": severity,
            "since": before.get("since")
            if before.get("severity") == severity
            else datetime.now(UTC).isoformat(timespec="seconds"),
            "summary": doctor.summary(findings),
            "findings": [f.as_dict() for f in findings],
        }

    def _converge_kernel(
        self,
        plan: NodePlan,
        delta: Delta | None,
        tables: Sequence[ruleset.Table],
        check_drift: bool,
        networks: set[str],
    ) -> tuple[dict[ResourceRef, Outcome], int, bool]:
        """Bridges first (rules may name them), then one nft transaction, then stale bridges."""
        failures = self.dataplane.converge_bridges(plan.bridges)
        overrides = settle.bridge_failed(plan, failures)
        if failures:
            metrics.ERRORS.labels("links").inc(len(failures))
        full = not self._synced_once
        if check_drift and not full:
            drifted = self.dataplane.drifted()
            if drifted:
                log.warning("our nftables content drifted; restoring it", families=drifted)
                metrics.DRIFT_REPAIRS.inc()
                full = True
        commands = 0
        self._applied = False
        try:
            commands = self.dataplane.apply_tables(tables, full=full)
            self._synced_once = self._applied = True
        except NftError as exc:
            metrics.APPLY_FAILURES.inc()
            log.error(
                "nftables transaction rejected; kernel unchanged",
                error=str(exc),
                script=exc.context,
            )
            overrides |= settle.nft_rejected(plan, str(exc))
        else:
            self._forget_stale_udp(plan, delta)
        # Only with a complete listing (we have one) and a committed ruleset: drop stale bridges,
        # except those with containers whose network still exists.
        _, kept = self.dataplane.remove_stale_bridges(
            (b.name for b in plan.bridges), protect=networks
        )
        overrides |= settle.bridges_kept(plan, overrides, kept)
        return overrides, commands, full

    def _forget_stale_udp(self, plan: NodePlan, delta: Delta | None) -> None:
        """Flush the conntrack entries of UDP ports whose mapping changed; after a partial
        plan only the ports of the DNATs that left or joined are looked at (a plan maps
        each port's (host IP, target) once, so sets suffice)."""
        before = self._udp_mappings
        if before is None or delta is None:
            now = plan.udp_mappings()
            changed = {
                k for k in now.keys() | (before or {}).keys() if now.get(k) != (before or {}).get(k)
            }
        else:
            now, changed = before, set()
            gone, came = udp_mappings(delta.removed), udp_mappings(delta.added)
            for port in gone.keys() | came.keys():
                old = now.get(port, set())
                new = (old - gone.get(port, set())) | came.get(port, set())
                if new != old:
                    changed.add(port)
                if new:
                    now[port] = new
                else:
                    now.pop(port, None)
        self._udp_mappings = now
        try:
            self.dataplane.forget_udp(changed)
        except (OSError, RuntimeError) as exc:  # conntrack support missing: NAT still works
            metrics.ERRORS.labels("conntrack").inc()
            log.warning("cannot flush stale UDP conntrack entries", error=str(exc))

    async def _sync_proxies(
        self,
        plan: NodePlan,
        snapshot: Snapshot,
        facts: NodeFacts,
        changes: SocketChanges | None,
    ) -> tuple[NodePlan, dict[ResourceRef, ProxyState]]:
        """Claim first, program after: every proxy listener and port claim is bound before
        nftables changes, and released only after (release()). A port a host process holds
        makes its publication Conflicted (PortInUse); the replan drops its DNAT, so the process
        is never shadowed. A replan can hand the port to a younger publication, whose claim is
        then tried too: repeat until every planned socket is held (each round adds a loser)."""
        assert self.proxies is not None
        lost = settle.Lost(dict(facts.ports_in_use), dict(facts.claims_failed))
        self._proxied = None  # until the proxies answer
        while True:
            statuses = await self.proxies.sync(
                plan.proxies, plan.claims, release=False, changes=changes
            )
            if not lost.add(plan, statuses.failed):
                break
            plan = await asyncio.to_thread(
                settle.replan_without, snapshot.resources, facts, lost.in_use, lost.unclaimed
            )
            changes = None  # another plan altogether
        self._proxied = plan
        # Any loser or failure: bind again on the next reconcile (the port may be free then,
        # and a partial plan does not know which ports were in use).
        self._proxy_retry = bool(lost.in_use or lost.unclaimed or statuses.failed)
        # O(listeners + failures): a bare claim is not a proxy.
        return plan, settle.proxy_states((*statuses.served.values(), *statuses.failed.values()))

    def _render(
        self, plan: NodePlan, delta: Delta | None
    ) -> tuple[tuple[ruleset.Table, ruleset.Table], str]:
        tables = self._renderer.render(plan, delta)
        return tables, self._renderer.digest()

    def _publishable(
        self, report: SyncReport, errors: Sequence[str], node_labels: Mapping[str, str] | None
    ) -> Report:
        """The node's report, in O(exceptions + changes): the ledger's entries and tally."""
        labels = node_labels if node_labels is not None else self.settings.labels
        plan = report.plan
        published = Report(
            node=self.settings.node_name,
            agent_version=__version__,
            last_sync=datetime.now(UTC).isoformat(timespec="milliseconds"),
            last_sync_ms=round(report.duration * 1000, 2),
            table_digest=report.digest,
            counts={
                **self._ledger.counts(),
                "bridges": len(plan.bridges),
                "dnat": len(plan.dnats),
                "proxies": len(plan.proxies),
                "claims": len(plan.claims),
            },
            entries=tuple(self._ledger.entries.values()),
            errors=(*errors, *plan.errors),
            labels=dict(labels or {}),  # what nodeSelectors were matched against
            node_check=self._node_check,
            tallied=self._tally,
        )
        self._write_state(published)
        return published

    def _write_state(self, published: Report) -> None:
        """The journal first (every entry, O(change)), then the state file (O(exceptions)):
        after a kill -9 between the two, the journal is the newer one."""
        entries, self._unwritten = self._unwritten, {}
        seen = self._stamper.take_changes()
        if self.settings.state_file is None or self._journal is None:
            return
        try:
            self._journal.write(
                None if entries is None or seen is None else _journal_change(entries, seen),
                lambda: {
                    "entries": [e.document() for e in self._ledger.entries.values()],
                    "firstSeen": dict(self._stamper.first_seen),
                },
                everything=entries is None or seen is None,
            )
            write_atomic(
                self.settings.state_file, {**published.head(), "journal": self._journal.position()}
            )
        except OSError as exc:
            self._unwritten = None  # the journal is rewritten in full next time
            log.error("cannot write state file", path=str(self.settings.state_file), error=str(exc))


FREEZE_AT = 1000  # resources: below that, collections are short and nothing is frozen


def _freeze_heap(resources: int, frozen: bool) -> bool:
    """After a full plan of a large node: what it holds now (thousands of parsed resources,
    the plan, the tables) leaves the cyclic collector's view, so a partial reconcile no
    longer pays for collections that walk all of it (tens of ms at 10,000 publications).
    The previous full plan's frozen objects are unfrozen and collected first: nothing stays
    frozen for longer than one full plan. Returns whether the heap is frozen now."""
    if frozen:
        gc.unfreeze()
    if resources < FREEZE_AT:
        return False
    gc.collect()
    gc.freeze()
    return True


def _merge(
    a: dict[ResourceRef, Entry | None] | None, b: dict[ResourceRef, Entry | None] | None
) -> dict[ResourceRef, Entry | None] | None:
    return None if a is None or b is None else {**a, **b}


def _journal_change(
    entries: Mapping[ResourceRef, Entry | None], seen: Mapping[str, str | None]
) -> dict[str, Any] | None:
    """A journal line: the entries that changed or went, the first-seen times that came or
    went; None when nothing did."""
    if not entries and not seen:
        return None
    line: dict[str, Any] = {}
    if put := [e.document() for e in entries.values() if e is not None]:
        line["entries"] = put
    if gone := [list(ref) for ref, e in entries.items() if e is None]:
        line["gone"] = gone
    if came := {k: v for k, v in seen.items() if v is not None}:
        line["firstSeen"] = came
    if forgotten := [k for k, v in seen.items() if v is None]:
        line["forgotten"] = forgotten
    return line


def _remembered(
    state_file: Path | None,
) -> tuple[dict[str, str], frozenset[ResourceRef] | None, dict[ResourceRef, tuple[str, int]]]:
    """First-seen times, the Applied resources and the assigned host ports from the last
    state journal (or a state file of an earlier version), if readable."""
    if state_file is None:
        return {}, None, {}
    folded = read_journal(journal_path(state_file))
    try:
        if folded is not None:
            docs, seen = folded
            resources: Any = docs.values()
        else:
            state = json.loads(state_file.read_text())
            if "journal" in state:  # its journal is gone: it lists the exceptions only
                ports = assigned_ports(entries("", state))  # assigned ones are all listed
                return {}, None, ports  # incumbents: the kernel's bridges
            # A state file of an earlier version: every entry in it.
            resources, seen = state["resources"], state.get("firstSeen", {})
        first_seen = {str(k): str(v) for k, v in seen.items()}
        applied = frozenset(
            ResourceRef(r["kind"], r["namespace"], r["name"])
            for r in resources
            if r["state"] == State.APPLIED.value
        )
        ports = assigned_ports(entries("", {"resources": list(resources)}))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}, None, {}
    return first_seen, applied, ports


def cleanup() -> list[str]:
    """Remove everything bridgeport owns on this node: our tables and our bridges."""
    kernel = KernelDataplane()
    kernel.delete_tables(ruleset.FAMILIES)
    return kernel.remove_stale_bridges([])[0]
