"""libnftables adapter: one transaction per sync, our tables only.

Writes are text batches (JSON cannot declare the concatenated NAT maps on nft 1.0.6); reads
are JSON and only ever `list table <family> bridgeport`, never the whole ruleset. The last
applied content is kept in memory so steady-state changes are small element/chain diffs.
"""

from __future__ import annotations

import json
import re
import tempfile
import threading
from collections.abc import Sequence
from typing import Any

import structlog

from bridgeport.core.ruleset import TABLE, Table, diff

log = structlog.get_logger(__name__)


class NftError(RuntimeError):
    """nft refused a batch; nothing of it was applied (transactions are all-or-nothing).
    `context`: the script's lines around the one nft cites, numbered, for the log."""

    def __init__(self, message: str, context: str = "") -> None:
        super().__init__(message)
        self.context = context


_CITED = re.compile(r"^\S+?:(\d+):[\d-]+: (Error: .*)$", re.MULTILINE)


def numbered(script: str, line: int | None, radius: int = 3, head: int = 20) -> str:
    """The script's lines around `line` (1-based), or its first `head` lines, numbered."""
    lines = script.splitlines()
    first, last = (
        (max(1, line - radius), min(len(lines), line + radius))
        if line
        else (1, min(len(lines), head))
    )
    out = [f"{n:6d}{'>' if n == line else ' '} {lines[n - 1]}" for n in range(first, last + 1)]
    if last < len(lines):
        out.append(f"       ... {len(lines)} lines in all")
    return "\n".join(out)


class Nft:
    def __init__(self) -> None:
        import nftables  # the distribution's binding over libnftables.so

        self._nft = nftables.Nftables()
        self._nft.set_json_output(False)
        self._lock = threading.Lock()  # one libnftables context is not thread-safe
        self._applied: dict[str, Table] = {}  # family -> what we last committed

    def _cmd(self, text: str, json_output: bool = False) -> str:
        with self._lock:
            self._nft.set_json_output(json_output)
            rc, out, err = self._nft.cmd(text)
        if rc != 0:
            raise NftError(err.strip() or f"nft exited {rc}")
        return str(out)

    def apply(self, tables: Sequence[Table], full: bool = False) -> int:
        """Converge our tables to `tables` in one transaction. Returns the number of commands.

        `full` (or no remembered state) replaces each table wholesale: declare, delete,
        redeclare, so the result is exact whatever was there, and still atomic.
        """
        parts: list[str] = []
        for table in tables:
            old = None if full else self._applied.get(table.family)
            cmds = diff(old, table) if old is not None else None
            parts.append(table.replace_script() if cmds is None else "\n".join(cmds))
        script = "\n".join(p for p in parts if p)
        if script.strip():
            try:
                self._cmd(script)
            except NftError as exc:
                self._applied.clear()  # unknown relation to the kernel now: next sync is full
                raise self._explain(script, exc) from None
        for table in tables:
            self._applied[table.family] = table
        return script.count("\n") + 1 if script.strip() else 0

    def _explain(self, script: str, exc: NftError) -> NftError:
        """The refusal with the line nft cites. libnftables 1.0 shows the wrong line for a
        buffer, so the script is checked again from a file, as a dry run (changes nothing)."""
        with tempfile.NamedTemporaryFile("w", suffix=".nft") as f:
            f.write(script)
            f.flush()
            with self._lock:
                self._nft.set_dry_run(True)
                try:
                    _, _, err = self._nft.cmd_from_file(f.name)
                finally:
                    self._nft.set_dry_run(False)
        cited = _CITED.search(str(err))
        if cited is None:  # the kernel changed meanwhile, or nft cites nothing
            return NftError(str(exc), numbered(script, None))
        line = int(cited[1])
        return NftError(f"line {line}: {cited[2]}", numbered(script, line))

    def list_table(self, family: str) -> dict[str, Any] | None:
        """Our table as libnftables JSON, or None if it does not exist."""
        try:
            out = self._cmd(f"list table {family} {TABLE}", json_output=True)
        except NftError as exc:
            if "No such file or directory" in str(exc):
                return None
            raise
        return dict(json.loads(out))

    def observed_fingerprint(self, family: str) -> dict[str, int] | None:
        """Rule count per chain, element count per set, as the kernel has them now."""
        listing = self.list_table(family)
        if listing is None:
            return None
        counts: dict[str, int] = {}
        for item in listing.get("nftables", []):
            if "chain" in item:
                counts.setdefault(f"chain {item['chain']['name']}", 0)
            elif "rule" in item:
                key = f"chain {item['rule']['chain']}"
                counts[key] = counts.get(key, 0) + 1
            elif "set" in item or "map" in item:
                s = item.get("set") or item.get("map")
                counts[f"set {s['name']}"] = len(s.get("elem", []))
        return counts

    def drifted(self) -> list[str]:
        """Families whose kernel table no longer matches what we applied."""
        drifted = []
        for family, table in self._applied.items():
            if self.observed_fingerprint(family) != table.fingerprint():
                drifted.append(family)
        return drifted

    def delete_tables(self, families: Sequence[str]) -> None:
        """Remove our tables (cleanup). Absent tables are fine."""
        script = "\n".join(f"add table {f} {TABLE}\ndelete table {f} {TABLE}" for f in families)
        self._cmd(script)
        self._applied.clear()
