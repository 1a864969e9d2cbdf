"""Standalone source: every *.yaml, *.yml and *.json file in a directory (multi-document).

Polls cheaply (stat only) so changes are noticed well within a second, with no inotify
dependency; a changed directory is re-read whole. A file that cannot be read or parsed is
reported and skipped: the rest still applies.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import structlog
import yaml

from bridgeport.core import specs
from bridgeport.core.source import Snapshot

log = structlog.get_logger(__name__)
SUFFIXES = (".yaml", ".yml", ".json")


class DirSource:
    def __init__(self, path: Path, poll_interval: float = 0.25,
                 ignore: Iterable[Path] = ()) -> None:
        self.path = path
        # The agent's own state file may live here: reading it back would loop forever.
        self.ignore = {p.resolve() for p in ignore}
        self.poll_interval = poll_interval
        self._signature: tuple[tuple[str, int, int, int], ...] | None = None
        self._snapshot: Snapshot | None = None

    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def _files(self) -> list[Path]:
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir()
                      if p.suffix in SUFFIXES and not p.name.startswith(".")
                      and p.resolve() not in self.ignore)

    def _signature_now(self) -> tuple[tuple[str, int, int, int], ...]:
        sig = []
        for p in self._files():
            try:
                st = p.stat()
            except OSError:
                continue
            sig.append((p.name, st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(sig)

    def refresh(self) -> bool:
        """Re-read the directory if anything changed. Returns True when the snapshot changed."""
        sig = self._signature_now()
        if sig == self._signature and self._snapshot is not None:
            return False
        self._signature = sig
        resources, errors = load_files(self._files())
        if not self.path.is_dir():
            errors.insert(0, f"{self.path}: not a directory")
        self._snapshot = Snapshot(tuple(resources), tuple(errors))
        return True

    async def run(self, changed: Callable[[], None]) -> None:
        while True:
            try:
                if self.refresh():
                    changed()
            except Exception:  # never let one bad read stop the watch
                log.exception("directory source refresh failed", path=str(self.path))
            await asyncio.sleep(self.poll_interval)


def load_files(paths: list[Path]) -> tuple[list[specs.ParseResult], list[str]]:
    """Parse every document of every file; unreadable files become errors, never exceptions."""
    resources: list[specs.ParseResult] = []
    errors: list[str] = []
    for path in paths:
        try:
            docs = list(_documents(path))
        except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError) as exc:
            log.error("resource file skipped", file=str(path), error=_oneline(exc))
            errors.append(f"{path.name}: unreadable, skipped: {_oneline(exc)}")
            continue
        for i, doc in enumerate(docs):
            result = specs.parse(doc)
            if isinstance(result, specs.InvalidResource) and result.ref is None:
                result = specs.InvalidResource(
                    None, tuple(f"{path.name} document {i + 1}: {e}" for e in result.errors))
            resources.append(result)
    return resources, errors


def _documents(path: Path) -> Iterator[Any]:
    text = path.read_text(encoding="utf-8")
    docs = [json.loads(text)] if path.suffix == ".json" else list(yaml.safe_load_all(text))
    for doc in docs:
        if doc is None:
            continue
        if isinstance(doc, dict) and doc.get("kind") == "List":
            yield from doc.get("items") or []
        else:
            yield doc


def _oneline(exc: BaseException) -> str:
    return " ".join(str(exc).split())
