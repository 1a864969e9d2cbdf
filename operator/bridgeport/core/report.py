"""A node's report: what its agent did with each resource. One type, one serializer (pure).

The agent builds a `Report` after each reconcile; the state file holds `report.document()`,
the NodeState's status `report.status()`, and the controller reads NodeStates back with
`entries()`, tolerant of agents of other versions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from bridgeport.core import summary
from bridgeport.core.plan import State
from bridgeport.core.specs import PORT_PUBLICATION, ResourceRef

ProxyState = Literal["off", "listening", "failed"]
PROXY_STATES: tuple[ProxyState, ...] = ("off", "listening", "failed")
MAX_ERRORS = 64
MAX_MESSAGE = 512
MAX_REPORT_BYTES = 1_300_000  # etcd refuses requests over 1.5 MiB
SHORT_MESSAGE = 96  # per entry, when the full messages would not fit
MAX_FINDINGS = 32


@dataclass(frozen=True)
class Entry:
    """One node's outcome for one resource."""

    node: str
    ref: ResourceRef
    uid: str
    observed_generation: int | None
    state: str  # a State value; reports from other agent versions may carry others
    reason: str = ""
    message: str = ""
    proxy: ProxyState = "off"  # PortPublications: the userland proxy's listeners
    # The host ports this node assigned (spec.hostPort absent): first and last, or None.
    assigned: tuple[int, int] | None = None

    @property
    def applied(self) -> bool:
        return self.state == State.APPLIED

    @property
    def ports(self) -> str:
        """The assigned ports as text: "32768" or "32768-32770" ("" when none)."""
        if self.assigned is None:
            return ""
        first, last = self.assigned
        return str(first) if first == last else f"{first}-{last}"

    def document(self, compact: bool = False) -> dict[str, Any]:
        """The entry as JSON. Compact (NodeState): a plain Applied entry's reason and message
        only restate the spec, so they are left out (a qualified one, IPv6Disabled, keeps
        them), and so is every empty field."""
        doc: dict[str, Any] = {
            "kind": self.ref.kind,
            "namespace": self.ref.namespace,
            "name": self.ref.name,
            "uid": self.uid,
            "observedGeneration": self.observed_generation,
            "state": self.state,
            "reason": self.reason,
            "message": self.message,
        }
        if self.ref.kind == PORT_PUBLICATION:
            doc["proxy"] = self.proxy
        if self.assigned is not None:
            doc["hostPort"], doc["hostPortEnd"] = self.assigned
            if self.assigned[0] == self.assigned[1]:
                del doc["hostPortEnd"]
        if not compact:
            return doc
        if self.applied and self.reason in ("", "Programmed"):
            doc["reason"] = doc["message"] = ""
        doc["message"] = doc["message"][:MAX_MESSAGE]
        if doc.get("proxy") == "off":
            doc["proxy"] = ""
        return {k: v for k, v in doc.items() if v != "" and v is not None}


@dataclass(frozen=True)
class Tally:
    """What a report lists and what it summarises (core/summary.py)."""

    listed: tuple[Entry, ...]  # in the entries' order
    applied: int  # Applied and not listed: folded into the digests
    digests: tuple[int, ...]


def summarised(e: Entry) -> bool:
    """Whether a report leaves the entry out (Applied ones then count in the digests)."""
    return not summary.is_listed(e.state, e.reason) and e.proxy != "failed" and e.assigned is None


def tally(entries: Iterable[Entry]) -> Tally:
    listed: list[Entry] = []
    applied: list[tuple[ResourceRef, str, int]] = []
    for e in entries:
        if summarised(e):
            if e.applied:
                applied.append((e.ref, e.uid, e.observed_generation or 0))
            continue
        listed.append(e)
    return Tally(tuple(listed), len(applied), tuple(summary.digests(applied)))


@dataclass(frozen=True)
class Report:
    node: str
    agent_version: str
    last_sync: str  # RFC 3339, milliseconds
    last_sync_ms: float  # how long the reconcile took
    table_digest: str
    counts: Mapping[str, int]  # per state, plus bridges, dnat, proxies
    entries: tuple[Entry, ...]
    errors: tuple[str, ...] = ()
    # Standalone: when each resource without a creationTimestamp was first seen (state file).
    first_seen: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)  # matched against nodeSelectors
    # The agent's periodic `doctor` check: severity, since, summary, findings (None: not run).
    node_check: Mapping[str, Any] | None = None
    # The entries' tally when the agent kept it up to date (core/ledger.py); else computed.
    tallied: Tally | None = None

    def _header(self) -> dict[str, Any]:
        """The fields every form of the state file opens with."""
        return {
            "node": self.node,
            "agentVersion": self.agent_version,
            "lastSync": self.last_sync,
            "lastSyncMs": self.last_sync_ms,
            "tableDigest": self.table_digest,
            "counts": dict(self.counts),
            "labels": dict(self.labels),
        }

    def document(self) -> dict[str, Any]:
        """The state file: everything, entries in full."""
        return {
            **self._header(),
            "resources": [e.document() for e in self.entries],
            "errors": list(self.errors),
            **({"firstSeen": dict(self.first_seen)} if self.first_seen else {}),
            **({"doctor": dict(self.node_check)} if self.node_check is not None else {}),
        }

    def head(self) -> dict[str, Any]:
        """The state file in O(exceptions): the report without its plainly Applied entries,
        which it counts and digests as the NodeState does (the state journal has them all)."""
        t = self.tallied or tally(self.entries)
        return {
            **self._header(),
            "resources": [e.document() for e in t.listed],
            "applied": {
                "count": t.applied,
                "buckets": summary.BUCKETS,
                "digest": summary.encode(t.digests),
            },
            "errors": list(self.errors),
            **({"doctor": dict(self.node_check)} if self.node_check is not None else {}),
        }

    def status(self) -> tuple[dict[str, Any], int]:
        """NodeState.status in O(exceptions), and how many entries were left out to fit.

        Listed: the outcomes the controller cannot derive (not Applied, and not Inactive for a
        nodeSelector that does not match), Applied publications whose proxy failed, and
        publications with host ports this node assigned (the port is news, and the agent
        reads it back after a restart).
        Everything else is summarised: the node's labels (the controller evaluates
        nodeSelectors itself) and digests of the Applied resources at their uid and
        generation (core/summary.py), about 3 KB whatever their number. Entries are compact;
        past etcd's request limit their messages are cut, then the list is, and the report
        says so in `errors` (the counts stay exact).
        """
        t = self.tallied or tally(self.entries)
        listed = [e.document(compact=True) for e in t.listed]
        errors = list(self.errors)[:MAX_ERRORS]
        if len(json.dumps(listed)) > MAX_REPORT_BYTES:
            listed = [{**e, "message": e.get("message", "")[:SHORT_MESSAGE]} for e in listed]
        size = len(json.dumps(listed))
        omitted = 0
        if size > MAX_REPORT_BYTES:
            keep = len(listed) * MAX_REPORT_BYTES // size
            omitted = len(listed) - keep
            errors = [
                f"report truncated: {omitted} of {len(listed)} entries left out to fit "
                "the NodeState size limit",
                *errors,
            ][:MAX_ERRORS]
            listed = listed[:keep]
        return {
            **_node_check_status(self.node_check),
            "agentVersion": self.agent_version,
            "lastSync": self.last_sync,
            "tableDigest": self.table_digest,
            "counts": dict(self.counts),
            "errors": errors,
            "labels": dict(self.labels),
            "applied": {
                "count": t.applied,
                "buckets": summary.BUCKETS,
                "digest": summary.encode(t.digests),
            },
            "resources": listed,
        }, omitted


def _node_check_status(check: Mapping[str, Any] | None) -> dict[str, Any]:
    """The doctor's findings as NodeState status: a NodeHealthy condition (False on errors)
    and the findings themselves (bounded)."""
    if check is None:
        return {}
    severity = check["severity"]
    condition = {
        "type": "NodeHealthy",
        "status": "False" if severity == "error" else "True",
        "reason": {"error": "Errors", "warning": "Warnings"}.get(severity, "NoProblems"),
        "message": check["summary"][:MAX_MESSAGE] or "bridgeport doctor found nothing",
        "lastTransitionTime": check["since"],
    }
    findings = [
        {k: str(v)[:MAX_MESSAGE] for k, v in f.items()} for f in check["findings"][:MAX_FINDINGS]
    ]
    return {"conditions": [condition], "findings": findings}


# -- reading reports back (tolerant: agents of other versions may write more or less) ----------


def text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def entries(node: str, status: Mapping[str, Any] | None) -> tuple[Entry, ...]:
    """The entries of one NodeState's status; malformed entries are skipped, never fatal."""
    found = (status or {}).get("resources")
    if not isinstance(found, list):
        return ()
    out: list[Entry] = []
    for e in found:
        if not isinstance(e, Mapping) or not text(e.get("kind")) or not text(e.get("name")):
            continue
        if not text(e.get("state")):
            continue
        proxy = e.get("proxy")
        first = integer(e.get("hostPort"))
        last = integer(e.get("hostPortEnd")) or first
        assigned = (first, last) if first and last and 0 < first <= last < 65536 else None
        out.append(
            Entry(
                node=node,
                ref=ResourceRef(e["kind"], text(e.get("namespace")), e["name"]),
                uid=text(e.get("uid")),
                observed_generation=integer(e.get("observedGeneration")),
                state=e["state"],
                reason=text(e.get("reason")),
                message=text(e.get("message")),
                proxy=proxy if proxy in PROXY_STATES else "off",
                assigned=assigned,
            )
        )
    return tuple(out)


def assigned_ports(reported: Iterable[Entry]) -> dict[ResourceRef, tuple[str, int]]:
    """What a node's report says it assigned: ref -> (uid, first port). A port a host process
    took (PortInUse) is not kept: the next reconcile assigns another."""
    return {
        e.ref: (e.uid, e.assigned[0])
        for e in reported
        if e.assigned is not None and e.reason != "PortInUse"
    }
