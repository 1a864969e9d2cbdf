"""The agent's state file and its journal.

The state file (JSON, written atomically: a temporary file in the same directory, then a
rename) is the node's report in O(exceptions), like the NodeState. The journal beside it
holds every outcome and first-seen time, written in O(change).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# mkstemp's names: the prefix, then 8 characters of [a-z0-9_].
_TEMP_SUFFIX = re.compile(r"^[a-z0-9_]{8}$")


def write_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_temporaries(path: Path) -> int:
    """Remove temporary files an interrupted write_atomic left (kill -9 mid-write); at start,
    before anything writes. Returns how many."""
    prefix = f".{path.name}."
    removed = 0
    try:
        candidates = [p for p in path.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return 0
    for candidate in candidates:
        if _TEMP_SUFFIX.match(candidate.name[len(prefix) :]) and candidate.is_file():
            candidate.unlink(missing_ok=True)
            removed += 1
    return removed


def journal_path(state_file: Path) -> Path:
    """Where every outcome and first-seen time goes, beside the state file."""
    return state_file.with_name(state_file.name + ".journal")


class Journal:
    """Every entry and first-seen time of the node as JSON lines, in O(change) per write.

    The first line is a full record; each write appends what changed since. When the
    appended lines outgrow the full record (and 64 KiB), the file is rewritten atomically as
    one full record, so a write costs O(change) amortised and the file stays within about
    twice its content. A kill -9 mid-append leaves at most one cut line, the last, which
    `read_journal` ignores; a rewrite is atomic (write_atomic).
    """

    SLACK = 64 * 1024

    def __init__(self, path: Path) -> None:
        self.path = path
        self._full = 0  # bytes of the last full record; 0: none written by us yet
        self._appended = 0
        self.id = ""  # names the file since its last rewrite (in its full record)

    def position(self) -> dict[str, Any]:
        """Where the journal stands: the state file records it, so a reader folds exactly
        the lines written before it (`load`), never a newer journal than its state file."""
        return {"file": self.path.name, "id": self.id, "bytes": self._full + self._appended}

    def write(
        self,
        change: dict[str, Any] | None,
        full: Callable[[], dict[str, Any]],
        everything: bool = False,
    ) -> None:
        """Append `change` (None: nothing changed), or rewrite the file with `full()` when
        `everything` changed, there is no full record of ours yet or the appended lines
        outgrew it."""
        if self._full and not everything and change is None:
            return
        if self._full and not everything and change is not None:
            line = json.dumps(change, separators=(",", ":")) + "\n"
            if self._appended + len(line.encode()) <= max(self._full, self.SLACK):
                try:
                    with self.path.open("a") as f:
                        f.write(line)
                except OSError:
                    self._full = 0  # perhaps a cut line mid-file: rewrite in full next time
                    raise
                self._appended += len(line.encode())
                return
        self.id = os.urandom(8).hex()
        text = json.dumps({"full": True, "id": self.id, **full()}, separators=(",", ":")) + "\n"
        write_text_atomic(self.path, text)
        self._full, self._appended = len(text.encode()), 0


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


Folded = tuple[dict[tuple[str, str, str], dict[str, Any]], dict[str, str]]


def read_journal(path: Path) -> Folded | None:
    """(entries by (kind, namespace, name), first-seen times) folded from a journal; None
    when there is none or it is unreadable (a cut last line is ignored, as a kill -9 leaves
    it)."""
    try:
        return fold(path.read_bytes())
    except OSError:
        return None


def fold(data: bytes) -> Folded | None:
    lines = data.decode(errors="replace").splitlines()
    entries: dict[tuple[str, str, str], dict[str, Any]] = {}
    seen: dict[str, str] = {}
    started = False
    for n, line in enumerate(lines):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not an object")
            if record.get("full"):
                entries, seen, started = {}, {}, True
            elif not started:
                return None
            for e in record.get("entries", ()):
                entries[(e["kind"], e["namespace"], e["name"])] = e
            for kind, namespace, name in record.get("gone", ()):
                entries.pop((kind, namespace, name), None)
            seen.update(record.get("firstSeen", {}))
            for key in record.get("forgotten", ()):
                seen.pop(key, None)
        except (ValueError, TypeError, KeyError, AttributeError):
            if n == len(lines) - 1 and started:
                break  # cut short by a kill -9 mid-append
            return None
    return (entries, seen) if started else None


def _journal_id(data: bytes) -> str:
    try:
        first = json.loads(data.split(b"\n", 1)[0])
    except ValueError:
        return ""
    return str(first.get("id", "")) if isinstance(first, dict) else ""


def load(state_file: Path, attempts: int = 50) -> dict[str, Any] | None:
    """The state file with every entry (from the journal) and the first-seen times: what
    the state file held in full before it listed only exceptions. None when unreadable.

    Consistent with the state file: only the journal lines written before it are folded.
    When the journal was rewritten since (a compaction), the state file is read again; a
    reader racing the agent gets one reconcile's report, never two mixed."""
    for _ in range(max(1, attempts)):
        try:
            head = json.loads(state_file.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(head, dict):
            return None
        at = head.pop("journal", None)
        try:
            data = journal_path(state_file).read_bytes()
        except OSError:
            return head
        if isinstance(at, dict) and isinstance(at.get("bytes"), int):
            if _journal_id(data) != at.get("id") or len(data) < at["bytes"]:
                time.sleep(0.01)  # rewritten since: its state file follows at once
                continue
            data = data[: at["bytes"]]
        folded = fold(data)
        if folded is not None:
            entries, seen = folded
            head["resources"] = [entries[k] for k in sorted(entries)]
            if seen:
                head["firstSeen"] = seen
        return head
    return None
