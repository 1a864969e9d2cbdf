"""Per-node reports -> a resource's `.status`, and the transitions worth an Event (pure).

Each node's agent reports, in its NodeState, one entry per resource it considered:
`{kind, namespace, name, uid, observedGeneration, state, reason, message}`. The controller
folds the entries of every node into the resource's status:

- `nodes.selected`: nodes whose entry for the resource (matching its uid when the entry
  carries one) is not `Inactive`; `nodes.ready`: selected nodes reporting `Applied` at the
  resource's current generation; `ready`: "ready/selected" (the printer column).
- `conditions` (metav1.Condition): `Ready`, `Conflicted`, `Invalid`, always all three, in
  that order (Ready True quotes what the nodes programmed: targets per family and how);
  BridgeNetworks also get `SubnetOverlapsNode` (True while a node applies it with that
  warning). `lastTransitionTime` moves only when a condition's status changes. Conditions of
  other types already on the object are kept as they are.
- `problemNodes`: selected nodes not Applied at the current generation, sorted by node name,
  at most MAX_PROBLEM_NODES (the CRD's maxItems); when there are more, the Ready condition's
  message says how many ("problemNodes lists 16 of 20").
- PortPublications whose nodes assigned host ports (spec.hostPort absent): `assignedPorts`,
  `[{node, port[, portEnd]}]` sorted by node, at most MAX_ASSIGNED_NODES, and `assignedPort`
  for the printer column: the port when every node assigned the same, else "N ports on M
  nodes". Both are left out (and removed by `status_patch`) when no node assigned any.

Everything here is deterministic: same inputs (including `now`), same output. No I/O.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bridgeport.core.plan import State
from bridgeport.core.report import Entry, integer, text
from bridgeport.core.specs import BRIDGE_NETWORK, ResourceRef

READY, CONFLICTED, INVALID = "Ready", "Conflicted", "Invalid"
# BridgeNetworks only: applied, but the subnet overlaps a node address's network (a warning).
SUBNET_OVERLAPS_NODE = "SubnetOverlapsNode"
MAX_PROBLEM_NODES = 16
MAX_NODE_MESSAGE = 256  # per problem node
MAX_CONDITION_MESSAGE = 1024  # metav1.Condition allows 32768; keep objects small
MAX_ASSIGNED_NODES = 128  # status.assignedPorts entries (the CRD's maxItems)
ASSIGNED_KEYS = ("assignedPort", "assignedPorts")  # present only while some node assigned
NORMAL, WARNING = "Normal", "Warning"
# metav1.Condition's reason (a CamelCase word); a node's reason that is not one is replaced.
_REASON = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")

# When several nodes are unhappy, the Ready condition's reason is the most serious state.
_SEVERITY = (State.INVALID, State.CONFLICTED, State.FAILED)


@dataclass(frozen=True)
class Resource:
    """What the aggregation needs to know about a PortPublication or BridgeNetwork."""

    ref: ResourceRef
    uid: str
    generation: int
    conditions: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class Transition:
    """A change worth a Kubernetes Event (type Normal or Warning)."""

    type: str
    reason: str
    message: str


def resource_from_body(body: Mapping[str, Any]) -> Resource:
    """A Resource from an object as the API returns it (kind, metadata, status)."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    conditions = status.get("conditions") if isinstance(status, Mapping) else None
    return Resource(
        ref=ResourceRef(
            text(body.get("kind")), text(meta.get("namespace")), text(meta.get("name"))
        ),
        uid=text(meta.get("uid")),
        generation=integer(meta.get("generation")) or 0,
        conditions=tuple(c for c in conditions or () if isinstance(c, Mapping)),
    )


def rfc3339(moment: datetime.datetime) -> str:
    """metav1.Time: UTC, second precision."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(moment: datetime.datetime) -> str:
    """metav1.MicroTime (events.k8s.io/v1 eventTime)."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- aggregation ------------------------------------------------------------------------------


def _matches(resource: Resource, report: Entry) -> bool:
    """Same object: same kind/namespace/name, and same uid when both sides know it (a deleted
    and recreated resource with the same name must not inherit the old object's reports)."""
    return report.ref == resource.ref and (
        not report.uid or not resource.uid or report.uid == resource.uid
    )


def _current(resource: Resource, report: Entry) -> bool:
    return report.observed_generation == resource.generation


def _pick(resource: Resource, reports: Sequence[Entry]) -> Entry:
    """One report per node (an agent reports each resource once; be deterministic anyway):
    a uid match beats a uid-less one, then the newest generation, then the state name."""
    return max(
        reports,
        key=lambda r: (
            bool(r.uid) and r.uid == resource.uid,
            r.observed_generation or 0,
            r.state,
            r.reason,
            r.message,
        ),
    )


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reason(text: str, default: str) -> str:
    return text if len(text) <= 1024 and _REASON.match(text) else default


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _quote(reports: Sequence[Entry], what: str) -> str:
    """'node a: <its message>' for the first node by name, plus how many more nodes."""
    first = reports[0]
    text = f"node {first.node}: {first.message or first.reason or what}"
    if len(reports) > 1:
        text += f" (and {_plural(len(reports) - 1, 'more node')})"
    return _clip(text, MAX_CONDITION_MESSAGE)


def _programmed(ready: Sequence[Entry]) -> str:
    """What the nodes programmed (e.g. a publication's targets per family), as the first
    node by name says it, and how many nodes say something else (a node without IPv6
    forwarding serves that family through the proxy, for instance)."""
    if not ready or not ready[0].message:
        return ""
    others = sum(1 for r in ready[1:] if r.message != ready[0].message)
    differ = f" ({_plural(others, 'node')} differ)" if others else ""
    return f": {ready[0].message}{differ}"


def _condition(
    ctype: str, true: bool, reason: str, message: str, generation: int
) -> dict[str, Any]:
    return {
        "type": ctype,
        "status": "True" if true else "False",
        "reason": reason,
        "message": _clip(message, MAX_CONDITION_MESSAGE),
        "observedGeneration": generation,
    }


def compute_status(
    resource: Resource,
    reports: Iterable[Entry],
    now: str,
    ready_elsewhere: int = 0,
    inactive_elsewhere: int = 0,
) -> dict[str, Any]:
    """The desired `.status` of `resource`, given the reports of every node.

    `reports` may contain entries for other resources or other incarnations (uids) of this
    one: they are ignored. `ready_elsewhere` / `inactive_elsewhere` count further nodes, not
    in `reports`, where it is Applied at the current generation / Inactive (derived from the
    nodes' digests and labels, core/fold.py). `now` (RFC 3339) is used only as the
    lastTransitionTime of a condition whose status changes.
    """
    by_node: dict[str, list[Entry]] = {}
    for r in reports:
        if _matches(resource, r):
            by_node.setdefault(r.node, []).append(r)
    chosen = [_pick(resource, rs) for _, rs in sorted(by_node.items())]
    selected = [r for r in chosen if r.state != State.INACTIVE]
    ready = [r for r in selected if r.state == State.APPLIED and _current(resource, r)]
    problems = [r for r in selected if not (r.state == State.APPLIED and _current(resource, r))]
    by_state: dict[str, list[Entry]] = {}
    for r in selected:
        by_state.setdefault(r.state, []).append(r)
    gen = resource.generation
    n_ready, n_selected = len(ready) + ready_elsewhere, len(selected) + ready_elsewhere
    n_chosen = len(chosen) + ready_elsewhere + inactive_elsewhere
    counts = f"{n_ready}/{n_selected} selected nodes ready"

    # Ready
    if n_selected and n_ready == n_selected:
        ready_cond = _condition(
            READY, True, "AllNodesReady", f"{counts} at generation {gen}{_programmed(ready)}", gen
        )
    elif not n_chosen:
        ready_cond = _condition(
            READY,
            False,
            "NoReports",
            "no node has reported this resource yet (are the agents running?)",
            gen,
        )
    elif not n_selected:
        quoted = (
            _quote(chosen, "Inactive")
            if chosen
            else "its nodeSelector matches none of their labels"
        )
        ready_cond = _condition(
            READY,
            False,
            "NotSelected",
            f"no node selects this resource ({_plural(n_chosen, 'node')}"
            f" report it Inactive: {quoted})",
            gen,
        )
    else:
        worst = next((s for s in _SEVERITY if s in by_state), None)
        parts = [f"{len(v)} {k}" for k, v in sorted(by_state.items()) if k != State.APPLIED]
        stale = [r for r in selected if r.state == State.APPLIED and not _current(resource, r)]
        if stale:
            parts.append(f"{len(stale)} not yet at generation {gen}")
        summary = f"{counts} ({', '.join(parts)})"
        if len(problems) > MAX_PROBLEM_NODES:
            summary += f"; problemNodes lists {MAX_PROBLEM_NODES} of {len(problems)}"
        if worst is None:
            ready_cond = _condition(READY, False, "NodesPending", summary, gen)
        else:
            ready_cond = _condition(
                READY, False, worst.value, f"{summary}; {_quote(by_state[worst], worst.value)}", gen
            )

    # Conflicted / Invalid: as last reported by the selected nodes (even at an older
    # generation: a conflict does not go away just because the spec changed).
    conflicted = by_state.get(State.CONFLICTED, [])
    conflict_cond = (
        _condition(
            CONFLICTED,
            True,
            _reason(conflicted[0].reason, "Conflicted"),
            _quote(conflicted, "conflicted"),
            gen,
        )
        if conflicted
        else _condition(CONFLICTED, False, "NoConflict", "", gen)
    )
    invalid = by_state.get(State.INVALID, [])
    invalid_cond = (
        _condition(
            INVALID, True, _reason(invalid[0].reason, "Invalid"), _quote(invalid, "invalid"), gen
        )
        if invalid
        else _condition(INVALID, False, "Valid", "", gen)
    )

    conditions = [ready_cond, conflict_cond, invalid_cond]
    if resource.ref.kind == BRIDGE_NETWORK:
        warned = [
            r for r in selected if r.state == State.APPLIED and r.reason == SUBNET_OVERLAPS_NODE
        ]
        conditions.append(
            _condition(
                SUBNET_OVERLAPS_NODE,
                True,
                SUBNET_OVERLAPS_NODE,
                _quote(warned, "overlaps a node network"),
                gen,
            )
            if warned
            else _condition(SUBNET_OVERLAPS_NODE, False, "NoOverlap", "", gen)
        )

    problem_nodes = [
        {
            "node": r.node,
            "state": r.state,
            "reason": r.reason if r.state != State.APPLIED else "GenerationPending",
            "message": _clip(
                r.message if r.state != State.APPLIED else _pending(r, gen), MAX_NODE_MESSAGE
            ),
        }
        for r in problems[:MAX_PROBLEM_NODES]
    ]
    return {
        "observedGeneration": gen,
        "ready": f"{n_ready}/{n_selected}",
        "nodes": {"selected": n_selected, "ready": n_ready},
        "conditions": merge_conditions(resource.conditions, conditions, now),
        "problemNodes": problem_nodes,
        **assigned_ports(chosen),
    }


def assigned_ports(chosen: Sequence[Entry]) -> dict[str, Any]:
    """status.assignedPorts and .assignedPort from one entry per node (sorted by node)."""
    assigned = [r for r in chosen if r.assigned is not None]
    if not assigned:
        return {}
    distinct = {r.ports for r in assigned}
    summary = (
        next(iter(distinct))
        if len(distinct) == 1
        else f"{len(distinct)} ports on {_plural(len(assigned), 'node')}"
    )
    listed = [
        {
            "node": r.node,
            "port": r.assigned[0],
            **({"portEnd": r.assigned[1]} if r.assigned[1] != r.assigned[0] else {}),
        }
        for r in assigned[:MAX_ASSIGNED_NODES]
        if r.assigned is not None
    ]
    return {"assignedPort": summary, "assignedPorts": listed}


def _pending(report: Entry, gen: int) -> str:
    if report.observed_generation is None:
        return f"the node has not yet reported generation {gen} applied"
    return f"applied generation {report.observed_generation}, current is {gen}"


def merge_conditions(
    old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]], now: str
) -> list[dict[str, Any]]:
    """`new` (without times) merged with `old`: lastTransitionTime is kept while a condition's
    status is unchanged and set to `now` when it changes; old conditions of types not in
    `new` are kept after ours, unchanged."""
    previous = {c.get("type"): c for c in old}
    out: list[dict[str, Any]] = []
    for c in new:
        before = previous.get(c["type"])
        same = before is not None and before.get("status") == c["status"]
        kept = before.get("lastTransitionTime") if before is not None and same else None
        out.append({**c, "lastTransitionTime": kept if isinstance(kept, str) and kept else now})
    ours = {c["type"] for c in new}
    out.extend(dict(c) for c in old if c.get("type") not in ours)
    return out


def condition(conditions: Iterable[Mapping[str, Any]], ctype: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions if c.get("type") == ctype), None)


def transitions(
    old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]
) -> list[Transition]:
    """Events worth posting when the conditions go from `old` to `new` (transitions only:
    the same conditions twice give nothing, so a reconcile that changes nothing is silent).

    - Ready becomes True: Normal `Ready`.
    - Ready's reason becomes `Failed` (a node's kernel refused it): Warning `Failed`.
    - Conflicted becomes True: Warning `Conflicted` (the message names the winner);
      Conflicted becomes False after being True: Normal `ConflictResolved`.
    - Invalid becomes True: Warning `Invalid`.
    - SubnetOverlapsNode becomes True: Warning `SubnetOverlapsNode`.
    """

    def status_of(conds: Sequence[Mapping[str, Any]], ctype: str) -> str:
        c = condition(conds, ctype)
        return str(c.get("status", "Unknown")) if c is not None else "Unknown"

    def became(ctype: str, value: str) -> Mapping[str, Any] | None:
        c = condition(new, ctype)
        if c is not None and c.get("status") == value and status_of(old, ctype) != value:
            return c
        return None

    out: list[Transition] = []
    if (c := became(READY, "True")) is not None:
        out.append(Transition(NORMAL, "Ready", text(c.get("message"))))
    ready_new, ready_old = condition(new, READY), condition(old, READY)
    if (
        ready_new is not None
        and ready_new.get("status") == "False"
        and ready_new.get("reason") == State.FAILED
        and not (
            ready_old is not None
            and ready_old.get("status") == "False"
            and ready_old.get("reason") == State.FAILED
        )
    ):
        out.append(Transition(WARNING, "Failed", text(ready_new.get("message"))))
    if (c := became(CONFLICTED, "True")) is not None:
        out.append(Transition(WARNING, "Conflicted", text(c.get("message"))))
    elif status_of(old, CONFLICTED) == "True" and (c := became(CONFLICTED, "False")) is not None:
        out.append(Transition(NORMAL, "ConflictResolved", "no node reports a conflict anymore"))
    if (c := became(INVALID, "True")) is not None:
        out.append(Transition(WARNING, "Invalid", text(c.get("message"))))
    if (c := became(SUBNET_OVERLAPS_NODE, "True")) is not None:
        out.append(Transition(WARNING, SUBNET_OVERLAPS_NODE, text(c.get("message"))))
    return out


def status_patch(
    current: Mapping[str, Any] | None, desired: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The JSON merge patch of `.status` that turns `current` into `desired` (the top-level
    fields that differ; other writers' fields are left alone), or None when nothing changed."""
    current = current or {}
    patch: dict[str, Any] = {k: v for k, v in desired.items() if current.get(k) != v}
    # Ours, but only while some node assigned ports: null removes them (merge patch).
    patch |= {k: None for k in ASSIGNED_KEYS if k in current and k not in desired}
    return patch or None
