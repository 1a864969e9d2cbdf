"""One collection, listed in pages and watched from the listing's resourceVersion: what
client-go's reflector does, in a thread of its own (the Kubernetes client blocks).

- LIST in pages of `page` objects (limit/continue), so 100,000 objects are never one response;
  every page belongs to one consistent snapshot at the first page's resourceVersion.
- WATCH from that resourceVersion, so nothing between the list and the watch is missed; with
  bookmarks, so a quiet collection's resourceVersion stays recent; with a server-side timeout
  (randomised, so N agents do not reconnect together) and a read timeout above it, so a dead
  connection is noticed.
- 410 Gone (an expired continue token, a watch from a compacted resourceVersion): list again.
  The sink upserts each listed object and sweeps, at the end, what the listing did not return:
  deletes missed meanwhile, and deletes during the relist, are not kept.
- Any other failure (API server down, 5xx, timeouts, a malformed line): a bounded, jittered
  backoff, then the watch resumes from the last resourceVersion seen. Forever: the data plane
  does not need the API server.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from kubernetes.client.exceptions import ApiException

log = structlog.get_logger(__name__)
CONNECT_TIMEOUT = 10.0
LIST_TIMEOUT = 120.0  # one page
MAX_LINE = 64 * 2**20  # one watch event (objects are at most 1.5 MiB in etcd)


class Gone(Exception):
    """410: the resourceVersion (or continue token) is too old: list again."""


class WatchError(Exception):
    """The server ended a watch with an ERROR event other than 410."""


class Sink(Protocol):
    def begin(self) -> None: ...
    def put(self, obj: Mapping[str, Any]) -> None: ...
    def delete(self, obj: Mapping[str, Any]) -> None: ...
    def end(self) -> None: ...


@dataclass(frozen=True)
class Timing:
    page: int = 500
    watch_timeout: tuple[int, int] = (300, 600)  # seconds, asked of the server
    read_slack: float = 60.0  # the read timeout is the watch timeout plus this
    backoff: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 15.0)  # the last one repeats


class ListWatch:
    """`call` is a Kubernetes client list function with its path arguments bound (it takes
    limit, _continue, watch, resource_version, ... as keywords)."""

    def __init__(
        self, name: str, call: Callable[..., Any], sink: Sink, timing: Timing | None = None
    ) -> None:
        self.name = name
        self.call = call
        self.sink = sink
        self.timing = timing or Timing()
        self.resource_version: str | None = None  # None: list first
        self.lists = 0  # completed listings
        self.pages = 0  # pages received
        self._stop = threading.Event()
        self._relist = threading.Event()
        self._lock = threading.Lock()
        self._response: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # A daemon: a thread blocked in a read must never hold up the process's exit.
        self._thread = threading.Thread(target=self.run, name=f"watch-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._interrupt()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def relist(self) -> None:
        """List again soon (e.g. the node's labels changed and stubs may now match)."""
        self._relist.set()
        self._interrupt()

    def run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                if self.resource_version is None or self._relist.is_set():
                    self._relist.clear()
                    self.resource_version = self._list()
                started = time.monotonic()
                events = self._watch()
                if events or time.monotonic() - started > 1.0 or self._relist.is_set():
                    failures = 0
                    continue  # the server's timeout, or our interrupt: watch on
                raise WatchError("the watch ended at once without events")
            except Gone:
                log.info(
                    "resourceVersion expired; listing again",
                    collection=self.name,
                    resource_version=self.resource_version,
                )
                self.resource_version = None
                delay = self._delay(failures) if failures else 0.0  # the first one at once
            except Exception as exc:
                if self._stop.is_set():
                    break
                if self._relist.is_set():
                    continue  # our own interrupt
                delay = self._delay(failures)
                self._log_failure(exc, delay, failures)
            failures += 1
            self._stop.wait(delay)

    def _delay(self, failures: int) -> float:
        steps = self.timing.backoff
        return steps[min(failures, len(steps) - 1)] * random.uniform(0.8, 1.2)

    def _log_failure(self, exc: Exception, delay: float, failures: int) -> None:
        known = isinstance(exc, ApiException | WatchError | OSError | ValueError) or (
            type(exc).__module__.startswith("urllib3")
        )
        fields = {
            "collection": self.name,
            "retry_in": round(delay, 1),
            "failures": failures + 1,
            "error": _describe(exc),
        }
        if known:
            log.warning("cannot list or watch; retrying", **fields)
        else:
            log.exception("list-watch failed unexpectedly; retrying", **fields)

    def _request(self, **kwargs: Any) -> Any:
        try:
            return self.call(_preload_content=False, **kwargs)
        except ApiException as exc:
            if exc.status == 410:
                raise Gone(str(exc.reason)) from None
            raise

    def _list(self) -> str:
        self.sink.begin()
        token: str | None = None
        meta: Mapping[str, Any] = {}
        while not self._stop.is_set():
            kwargs: dict[str, Any] = {"limit": self.timing.page}
            if token:
                kwargs["_continue"] = token
            resp = self._request(**kwargs, _request_timeout=(CONNECT_TIMEOUT, LIST_TIMEOUT))
            try:
                page = json.loads(resp.data)
            finally:
                resp.release_conn()
            self.pages += 1
            for item in page.get("items") or ():
                self.sink.put(item)
            meta = page.get("metadata") or {}
            token = meta.get("continue") or None
            if not token:
                break
        if self._stop.is_set():
            return ""
        self.sink.end()
        self.lists += 1
        return str(meta.get("resourceVersion") or "")

    def _watch(self) -> int:
        """Watch until the server's timeout or an interrupt; the events seen."""
        timeout = random.randint(*self.timing.watch_timeout)
        resp = self._request(
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            _request_timeout=(CONNECT_TIMEOUT, timeout + self.timing.read_slack),
        )
        with self._lock:
            self._response = resp
        seen = 0
        try:
            if self._stop.is_set() or self._relist.is_set():
                return 0
            for line in _lines(resp):
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone(str(obj.get("message", "")))
                    raise WatchError(f"{obj.get('code')} {obj.get('reason')}: {obj.get('message')}")
                if kind == "DELETED":
                    self.sink.delete(obj)
                elif kind in ("ADDED", "MODIFIED"):
                    self.sink.put(obj)
                version = (obj.get("metadata") or {}).get("resourceVersion")
                if version:  # BOOKMARK events carry only this
                    self.resource_version = str(version)
                seen += 1
            return seen
        finally:
            with self._lock:
                self._response = None
            resp.close()

    def _interrupt(self) -> None:
        """Unblock a read in progress (the watch thread sees _stop or _relist next)."""
        with self._lock:
            resp = self._response
        if resp is None:
            return
        with contextlib.suppress(ValueError, RuntimeError, OSError):
            resp.shutdown()


def _lines(resp: Any) -> Iterator[bytes]:
    """The response's lines as they arrive (a watch sends one JSON event per line)."""
    buf = bytearray()
    for chunk in resp.stream(2**16, decode_content=True):
        buf += chunk
        start = 0
        while (end := buf.find(b"\n", start)) != -1:
            if end > start:
                yield bytes(buf[start:end])
            start = end + 1
        del buf[:start]
        if len(buf) > MAX_LINE:
            raise ValueError(f"a watch event longer than {MAX_LINE} bytes")
    if buf.strip():
        yield bytes(buf)


def _describe(exc: Exception) -> str:
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}".strip()
    return f"{type(exc).__name__}: {exc}"[:300]
