"""Standalone source: every *.yaml, *.yml and *.json file in a directory (multi-document).

Scans cheaply (stat only) when inotify says the directory changed (dirwatch.py), and every
`rescan_interval` for what it cannot see (a symlinked file changed at its target); where no
watch can be had (no directory yet, the watch limit reached) it polls every `poll_interval`.
So changes are noticed well within a second and an idle agent is not woken. Only files whose
stat changed are read again, in a worker thread, so a large or
hostile file never stalls the event loop that serves the proxies. Only regular files are read
(a FIFO would block), each bounded in size, nesting depth and YAML alias expansion. Whatever
goes wrong with one file is an error for that file: the rest still applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import yaml

from bridgeport.adapters.dirwatch import DirWatch
from bridgeport.core import specs
from bridgeport.core.source import Snapshot

log = structlog.get_logger(__name__)
SUFFIXES = (".yaml", ".yml", ".json")
# Far above any real manifest directory, far below what stalls or exhausts the agent.
MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_DEPTH = 64  # Kubernetes objects nest about 10 levels
MAX_NODES = 1_000_000  # values in one file once YAML aliases are expanded (billion laughs)
MAX_ERRORS_PER_FILE = 20
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_OPENS = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSES = (yaml.MappingEndEvent, yaml.SequenceEndEvent)

# A file's identity for change detection: mtime, ctime (chmod, rename), size, inode, device;
# or the reason it cannot be read at all.
StatKey = tuple[int, int, int, int, int] | str


class Skipped(Exception):
    """A file that is not read, with the reason that goes in its error."""


@dataclass(frozen=True)
class _Loaded:
    key: StatKey
    resources: tuple[specs.ParseResult, ...]
    errors: tuple[str, ...]


class DirSource:
    def __init__(
        self,
        path: Path,
        poll_interval: float = 0.25,
        ignore: Iterable[Path] = (),
        rescan_interval: float = 30.0,
    ) -> None:
        self.path = path
        # The agent's own state file may live here: reading it back would loop forever.
        # (Its writes do wake a scan, which finds nothing changed.)
        self.ignore = {os.path.realpath(p) for p in ignore}
        self.poll_interval, self.rescan_interval = poll_interval, rescan_interval
        self._signature: dict[str, StatKey] | None = None
        self._loaded: dict[str, _Loaded] = {}
        self._snapshot: Snapshot | None = None

    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def _scan(self) -> dict[str, StatKey]:
        """name -> stat key of every candidate file; stat follows symlinks (a loop is an
        error for that entry)."""
        try:
            names = sorted(e.name for e in os.scandir(self.path))
        except OSError:
            return {}
        found: dict[str, StatKey] = {}
        for name in names:
            if not name.endswith(SUFFIXES) or name.startswith("."):
                continue
            full = os.path.join(self.path, name)
            if os.path.realpath(full) in self.ignore:
                continue
            try:
                st = os.stat(full)
            except OSError as exc:
                found[name] = f"cannot be read, skipped: {exc.strerror or exc}"
                continue
            if not stat.S_ISREG(st.st_mode):
                found[name] = "not a regular file, skipped"
                continue
            found[name] = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_dev)
        return found

    def refresh(self) -> bool:
        """Re-read the files that changed. Returns True when the snapshot changed."""
        sig = self._scan()
        if sig == self._signature and self._snapshot is not None:
            return False
        loaded: dict[str, _Loaded] = {}
        for name, key in sig.items():
            old = self._loaded.get(name)
            loaded[name] = (
                old if old is not None and old.key == key else (_load(self.path / name, key))
            )
        resources = [r for entry in loaded.values() for r in entry.resources]
        errors = [e for entry in loaded.values() for e in entry.errors]
        if not self.path.is_dir():
            errors.insert(0, f"{self.path}: not a directory")
        self._loaded = loaded
        self._snapshot = Snapshot(tuple(resources), tuple(errors))
        self._signature = sig  # only now: a failure above leaves the change pending
        return True

    async def run(self, changed: Callable[[], None]) -> None:
        loop, wake, watch = asyncio.get_running_loop(), asyncio.Event(), DirWatch()
        if watch.fd >= 0:
            loop.add_reader(watch.fd, watch.read, wake.set)
        try:
            while True:
                watching = watch.watch(str(self.path))  # before the scan: no change missed
                wake.clear()
                try:
                    if await asyncio.to_thread(self.refresh):
                        changed()
                except Exception:  # never let one bad read stop the watch
                    log.exception("directory source refresh failed", path=str(self.path))
                wait = self.rescan_interval if watching else self.poll_interval
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), wait)
        finally:
            if watch.fd >= 0:
                loop.remove_reader(watch.fd)
            watch.close()


def load_files(paths: list[Path]) -> tuple[list[specs.ParseResult], list[str]]:
    """Parse every document of every file; unreadable files become errors, never exceptions."""
    resources: list[specs.ParseResult] = []
    errors: list[str] = []
    for path in paths:
        entry = _load(path, "")
        resources += entry.resources
        errors += entry.errors
    return resources, errors


def _load(path: Path, key: StatKey) -> _Loaded:
    """One file's resources and errors. Never raises."""
    if isinstance(key, str) and key:
        return _Loaded(key, (), (_file_error(path, key),))
    try:
        docs, errors = _documents(path)
        resources = _parse_all(path.name, docs, errors)
    except Skipped as exc:
        return _Loaded(key, (), (_file_error(path, str(exc)),))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError) as exc:
        return _Loaded(key, (), (_file_error(path, f"unreadable, skipped: {_oneline(exc)}"),))
    except Exception as exc:  # anything unexpected stays an error of this file
        log.exception("resource file failed", file=str(path))
        return _Loaded(
            key,
            (),
            (_file_error(path, f"unreadable, skipped: {type(exc).__name__}: {_oneline(exc)}"),),
        )
    return _Loaded(key, tuple(resources), tuple(errors))


def _file_error(path: Path, message: str) -> str:
    log.error("resource file skipped", file=str(path), error=message)
    return f"{path.name}: {message}"


def _parse_all(
    name: str, docs: list[tuple[str, Any]], errors: list[str]
) -> list[specs.ParseResult]:
    resources: list[specs.ParseResult] = []
    unnamed = 0
    for where, doc in docs:
        result = specs.parse(doc)
        if isinstance(result, specs.InvalidResource) and result.ref is None:
            unnamed += 1
            if unnamed > MAX_ERRORS_PER_FILE:
                continue
            result = specs.InvalidResource(
                None, tuple(f"{name} {where}: {e}" for e in result.errors)
            )
        resources.append(result)
    if unnamed > MAX_ERRORS_PER_FILE:
        errors.append(
            f"{name}: ... and {unnamed - MAX_ERRORS_PER_FILE} more documents that name no resource"
        )
    return resources


def read_file(path: Path) -> bytes:
    """A regular file's bytes, at most MAX_FILE_BYTES. Opened non-blocking, so a FIFO swapped
    in after the stat is refused, never waited on."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Skipped("not a regular file, skipped")
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise Skipped(f"larger than the {MAX_FILE_BYTES:,}-byte limit, skipped")
    return data


def _documents(path: Path) -> tuple[list[tuple[str, Any]], list[str]]:
    """(where, document) for every document, `kind: List` contributing its items; and the
    errors of Lists whose items are not a list."""
    text = read_file(path).decode("utf-8")
    if path.suffix == ".json":
        docs = [_json(text)]
    else:
        _check_yaml(text)
        docs = list(yaml.load_all(text, Loader=_LOADER))
    out: list[tuple[str, Any]] = []
    errors: list[str] = []
    for i, doc in enumerate(docs, 1):
        if doc is None:
            continue
        if isinstance(doc, dict) and doc.get("kind") == "List":
            items = doc.get("items") or []
            if not isinstance(items, list):
                errors.append(
                    f"{path.name} document {i}: items must be a list, not {type(items).__name__}"
                )
                continue
            out += [(f"document {i} item {j}", item) for j, item in enumerate(items, 1)]
        else:
            out.append((f"document {i}", doc))
    return out, errors


def _too_deep() -> Skipped:
    return Skipped(f"nested deeper than {MAX_DEPTH} levels (the limit), skipped")


def _json(text: str) -> Any:
    try:
        doc = json.loads(text)
    except RecursionError:
        raise _too_deep() from None
    for depth, value in _walk(doc):
        if depth > MAX_DEPTH:
            raise _too_deep()
        del value
    return doc


def _walk(doc: Any) -> Iterator[tuple[int, Any]]:
    """Every container in a parsed document with its depth, without recursion."""
    stack = [(1, doc)]
    while stack:
        depth, value = stack.pop()
        children = (
            value.values()
            if isinstance(value, dict)
            else (value if isinstance(value, list) else ())
        )
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((depth + 1, child))
        yield depth, value


def _check_yaml(text: str) -> None:
    """Depth and alias expansion from the event stream, before anything is composed (the
    composer recurses; an alias bomb is small until something walks it)."""
    open_: list[list[Any]] = []  # per open collection: [expanded values, anchor]
    sizes: dict[str, int] = {}
    total = 0
    for event in _events(text):
        if isinstance(event, _OPENS):
            if len(open_) >= MAX_DEPTH:
                raise _too_deep()
            open_.append([1, event.anchor])
            continue
        if isinstance(event, _CLOSES):
            count, anchor = open_.pop()
        elif isinstance(event, yaml.ScalarEvent):
            count, anchor = 1, event.anchor
        elif isinstance(event, yaml.AliasEvent):
            count, anchor = sizes.get(event.anchor or "", 1), None
        else:
            continue
        if anchor:
            sizes[anchor] = count
        if open_:
            open_[-1][0] += count
        total += count if not open_ else 0
        if total > MAX_NODES or (open_ and open_[-1][0] > MAX_NODES):
            raise Skipped(
                f"more than {MAX_NODES:,} values once YAML aliases are expanded "
                "(the limit), skipped"
            )


def _events(text: str) -> Iterator[Any]:
    try:
        yield from yaml.parse(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        if "nesting depth" in str(exc):  # libyaml's own limit (1000) is far above ours
            raise _too_deep() from None
        raise


def _oneline(exc: BaseException) -> str:
    return specs.short(" ".join(str(exc).split()), 300)
