"""NodeState report shaping (pure): compact entries that fit etcd's request limit.

Scenarios: Applied entries carry only identity and generation; problems and qualified
Applied entries (IPv6Disabled) keep reason and message; an oversized report sheds Applied
entries first and says so.
"""

from __future__ import annotations

import json
from typing import Any

from bridgeport.core.report import MAX_REPORT_BYTES, Entry, Report
from bridgeport.core.specs import ResourceRef


def state(entries: list[Entry]) -> Report:
    return Report(node="n", agent_version="0.1.0", last_sync="t", last_sync_ms=1.0,
                  table_digest="d", counts={"Applied": 1, "bridges": 0}, entries=tuple(entries))


def entry(name: str, status: str = "Applied", proxy: str = "off", reason: str = "") -> Entry:
    reason = reason or ("Programmed" if status == "Applied" else "Why")
    return Entry("n", ResourceRef("PortPublication", "default", name), "u-" + name, 3, status,
                 reason, "long text", proxy)  # type: ignore[arg-type]


def status_from_state(report: Report) -> dict[str, object]:
    return report.status()[0]


def test_applied_entries_are_compact() -> None:
    """An Applied entry keeps identity, uid, generation and proxy state only."""
    out: dict[str, Any] = status_from_state(state([entry("a", proxy="listening"),
                                                   entry("b", "Conflicted")]))
    assert out["resources"][0] == {"kind": "PortPublication", "namespace": "default",
                                   "name": "a", "uid": "u-a", "observedGeneration": 3,
                                   "state": "Applied", "proxy": "listening"}
    assert out["resources"][1]["message"] == "long text"
    assert out["counts"] == {"Applied": 1, "bridges": 0}


def test_qualified_applied_entry_keeps_its_reason() -> None:
    """Applied with a reason other than Programmed (subnet6 skipped: IPv6Disabled) says so."""
    out: dict[str, Any] = status_from_state(state([entry("n", reason="IPv6Disabled")]))
    assert out["resources"][0]["reason"] == "IPv6Disabled"
    assert out["resources"][0]["message"] == "long text"


def test_oversized_report_sheds_applied_first() -> None:
    """Past the size limit, every problem entry stays and the truncation is reported."""
    entries = [entry(f"pub-{i:05d}") for i in range(12000)] + [entry("bad", "Invalid")]
    out: dict[str, Any] = status_from_state(state(entries))
    assert len(json.dumps(out["resources"])) <= MAX_REPORT_BYTES
    assert any(r["name"] == "bad" for r in out["resources"])
    assert out["errors"][0].startswith("report truncated:")


def test_the_state_file_is_the_whole_report() -> None:
    """The state file keeps every field of every entry (proxy: off included) and the report
    reads back from a NodeState to the same entries, proxy state included."""
    from bridgeport.core.report import entries

    report = state([entry("a", proxy="listening"), entry("b", "Conflicted")])
    doc = report.document()
    assert doc["resources"][1] == {"kind": "PortPublication", "namespace": "default",
                                   "name": "b", "uid": "u-b", "observedGeneration": 3,
                                   "state": "Conflicted", "reason": "Why",
                                   "message": "long text", "proxy": "off"}
    assert entries("n", report.status()[0])[1] == report.entries[1]


def test_applied_with_a_warning_keeps_reason_and_message() -> None:
    """SubnetOverlapsNode (issue 11) reaches the controller through the compact entry."""
    warned = Entry("n", ResourceRef("BridgeNetwork", "", "ov"), "u", 1, "Applied",
                   "SubnetOverlapsNode", "warning: subnet overlaps 192.0.2.0/24")
    doc = warned.document(compact=True)
    assert doc["reason"] == "SubnetOverlapsNode" and "192.0.2.0/24" in doc["message"]
