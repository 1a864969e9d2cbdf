"""NodeState report shaping (pure): compact entries that fit etcd's request limit.

Scenarios: Applied entries carry only identity and generation; problems keep reason and
message; an oversized report sheds Applied entries first and says so.
"""

from __future__ import annotations

import json
from typing import Any

from bridgeport.kube.nodestate import MAX_REPORT_BYTES, status_from_state


def state(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"agentVersion": "0.1.0", "lastSync": "t", "tableDigest": "d",
            "counts": {"Applied": 1, "bridges": 0}, "errors": [], "resources": entries}


def entry(name: str, status: str = "Applied", proxy: str = "off") -> dict[str, Any]:
    return {"kind": "PortPublication", "namespace": "default", "name": name,
            "uid": "u-" + name, "generation": 3, "state": status, "reason": "Why",
            "message": "long text", "proxy": proxy}


def test_applied_entries_are_compact() -> None:
    """An Applied entry keeps identity, uid, generation and proxy state only."""
    out = status_from_state(state([entry("a", proxy="listening"), entry("b", "Conflicted")]))
    assert out["resources"][0] == {"kind": "PortPublication", "namespace": "default",
                                   "name": "a", "uid": "u-a", "observedGeneration": 3,
                                   "state": "Applied", "proxy": "listening"}
    assert out["resources"][1]["message"] == "long text"
    assert out["counts"] == {"Applied": 1, "bridges": 0}


def test_oversized_report_sheds_applied_first() -> None:
    """Past the size limit, every problem entry stays and the truncation is reported."""
    entries = [entry(f"pub-{i:05d}") for i in range(12000)] + [entry("bad", "Invalid")]
    out = status_from_state(state(entries))
    assert len(json.dumps(out["resources"])) <= MAX_REPORT_BYTES
    assert any(r["name"] == "bad" for r in out["resources"])
    assert out["errors"][0].startswith("report truncated:")
