"""NodeState report shaping (pure): O(exceptions), within etcd's request limit at any size.

Scenarios: Applied outcomes and Inactive-by-nodeSelector are summarised (digests and labels),
not listed; problems and qualified Applied entries (IPv6Disabled) keep reason and
message; an Applied publication whose proxy failed is listed; so is an assigned host port,
which recall() reads back; 20,000 publications fit, every outcome accounted for; an oversized
list of problems cuts messages first, then entries, and says so; the state file keeps
everything.
"""

from __future__ import annotations

import json
from typing import Any

from bridgeport.core import summary
from bridgeport.core.report import MAX_REPORT_BYTES, Entry, Report
from bridgeport.core.specs import ResourceRef


def state(entries: list[Entry]) -> Report:
    return Report(
        node="n",
        agent_version="0.1.0",
        last_sync="t",
        last_sync_ms=1.0,
        table_digest="d",
        counts={"Applied": 1, "bridges": 0},
        entries=tuple(entries),
        labels={"zone": "a"},
    )


def entry(
    name: str,
    status: str = "Applied",
    proxy: str = "off",
    reason: str = "",
    message: str = "long text",
) -> Entry:
    reason = reason or ("Programmed" if status == "Applied" else "Why")
    return Entry(
        "n",
        ResourceRef("PortPublication", "default", name),
        "u-" + name,
        3,
        status,
        reason,
        message,
        proxy,
    )  # type: ignore[arg-type]


def status_from_state(report: Report) -> dict[str, Any]:
    return report.status()[0]


def test_applied_is_summarised_problems_listed() -> None:
    out = status_from_state(
        state(
            [
                entry("a", proxy="listening"),
                entry("b", "Conflicted"),
                entry("c", "Inactive", reason="NodeSelectorMismatch"),
                entry("d", "Inactive", reason="HostIPNotLocal"),
                entry("e", proxy="failed"),
            ]
        )
    )
    assert [r["name"] for r in out["resources"]] == ["b", "d", "e"]
    assert out["resources"][0]["message"] == "long text"
    assert out["labels"] == {"zone": "a"} and out["applied"]["count"] == 1
    ref = ResourceRef("PortPublication", "default", "a")
    assert summary.decode(out["applied"]["digest"]) == tuple(summary.digests([(ref, "u-a", 3)]))
    assert out["counts"] == {"Applied": 1, "bridges": 0}


def test_qualified_applied_entry_keeps_its_reason() -> None:
    """Applied with a reason other than Programmed (subnet6 skipped: IPv6Disabled) says so."""
    out: dict[str, Any] = status_from_state(state([entry("n", reason="IPv6Disabled")]))
    assert out["resources"][0]["reason"] == "IPv6Disabled"
    assert out["resources"][0]["message"] == "long text"


def test_twenty_thousand_publications_fit() -> None:
    entries = [entry(f"pub-{i:05d}") for i in range(20000)]
    entries += [entry(f"bad-{i}", "Conflicted") for i in range(100)]
    out = status_from_state(state(entries))
    assert len(json.dumps(out)) < 64_000
    assert out["applied"]["count"] == 20000 and len(out["resources"]) == 100
    assert out["errors"] == []


def test_oversized_problems_cut_messages_then_entries() -> None:
    entries = [entry(f"bad-{i:05d}", "Invalid", message="x" * 400) for i in range(4000)]
    out = status_from_state(state(entries))
    assert len(out["resources"]) == 4000 and len(out["resources"][0]["message"]) < 100
    entries = [entry(f"bad-{i:05d}", "Invalid") for i in range(20000)]
    out = status_from_state(state(entries))
    assert len(json.dumps(out["resources"])) <= MAX_REPORT_BYTES
    assert out["errors"][0].startswith("report truncated:")


def test_the_state_file_is_the_whole_report() -> None:
    """The state file keeps every field of every entry (proxy: off included) and the report
    reads back from a NodeState to the same entries, proxy state included."""
    from bridgeport.core.report import entries

    report = state([entry("a", proxy="listening"), entry("b", "Conflicted")])
    doc = report.document()
    assert doc["resources"][1] == {
        "kind": "PortPublication",
        "namespace": "default",
        "name": "b",
        "uid": "u-b",
        "observedGeneration": 3,
        "state": "Conflicted",
        "reason": "Why",
        "message": "long text",
        "proxy": "off",
    }
    assert entries("n", report.status()[0])[0] == report.entries[1]  # "a" is summarised


def test_applied_with_a_warning_keeps_reason_and_message() -> None:
    """SubnetOverlapsNode (issue 11) reaches the controller through the compact entry."""
    warned = Entry(
        "n",
        ResourceRef("BridgeNetwork", "", "ov"),
        "u",
        1,
        "Applied",
        "SubnetOverlapsNode",
        "warning: subnet overlaps 192.0.2.0/24",
    )
    doc = warned.document(compact=True)
    assert doc["reason"] == "SubnetOverlapsNode" and "192.0.2.0/24" in doc["message"]


class _Api:
    """get_cluster_custom_object answering with `reply` (an object, or an ApiException)."""

    def __init__(self, reply: Any) -> None:
        self.reply = reply

    def get_cluster_custom_object(self, *args: Any) -> Any:
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


def _recall(reply: Any) -> Any:
    from bridgeport.kube.nodestate import NodeStateReporter

    class Reporter(NodeStateReporter):
        @property
        def api(self) -> Any:
            return _Api(reply)

    return Reporter("n", lambda: None).recall()


def test_recall_reads_back_assigned_ports_from_the_nodestate() -> None:
    """The agent (no state file) keeps its assigned ports through its own NodeState: only
    assigned entries, not those a host process took; no NodeState or no RBAC: nothing; any
    other error: try again (None)."""
    from kubernetes.client.exceptions import ApiException

    entries = [
        Entry(
            "n",
            ResourceRef("PortPublication", "default", "a"),
            "u-a",
            1,
            "Applied",
            "Programmed",
            assigned=(40000, 40000),
        ),
        Entry(
            "n",
            ResourceRef("PortPublication", "default", "b"),
            "u-b",
            1,
            "Conflicted",
            "PortInUse",
            "held",
            assigned=(40001, 40001),
        ),
        entry("c"),
    ]
    status = state(entries).status()[0]
    assert _recall({"status": json.loads(json.dumps(status))}) == {
        ResourceRef("PortPublication", "default", "a"): ("u-a", 40000)
    }
    assert _recall(ApiException(status=404)) == {}
    assert _recall(ApiException(status=403)) == {}
    assert _recall(ApiException(status=500)) is None
    assert _recall(ConnectionRefusedError()) is None
