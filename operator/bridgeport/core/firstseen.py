"""First-seen times stand in for creationTimestamp where there is none (standalone files).

Conflicts go to the oldest resource; a file has no creation time, so without this the name
would decide, and a new file named "a..." would take a working network's subnet. The agent
keeps these times in its state file, so they survive restarts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from bridgeport.core.source import Moved
from bridgeport.core.specs import InvalidResource, ParseResult, PortPublication, ResourceRef


def key(ref: ResourceRef) -> str:
    return f"{ref.kind}/{ref.namespace}/{ref.name}"


def stamp(
    resources: Iterable[ParseResult], first_seen: Mapping[str, str], now: str
) -> tuple[list[ParseResult], dict[str, str]]:
    """Resources without a creation time get their first-seen time (`now` when new); returns
    them and the times of the resources still present."""
    out: list[ParseResult] = []
    seen: dict[str, str] = {}
    for res in resources:
        if isinstance(res, InvalidResource) or res.meta.created:
            out.append(res)
            continue
        k = key(res.meta.ref)
        seen[k] = first_seen.get(k, now)
        out.append(replace(res, meta=replace(res.meta, created=seen[k])))
    return out, seen


class Stamper:
    """`stamp` in O(change): the resources a source hands out again are the same objects
    (sources keep what did not change), so only objects not seen last time are looked at;
    finding them takes C-level set operations on their ids. `moved` says which objects of
    the result went and came (None after the first call), so the planner need not look
    again. `take_changes` tells which first-seen times appeared or went since the last call
    (None: all of them, at first)."""

    def __init__(self, first_seen: Mapping[str, str]) -> None:
        self.first_seen = dict(first_seen)
        self._keys: dict[str, int] = {}  # key -> resources without a creation time holding it
        self._stamped: dict[int, ParseResult] = {}  # id(resource) -> what stamp() made of it
        self._seen: dict[int, ParseResult] = {}  # id -> the resource (keeps the id valid)
        self._replaced = 0  # how many of _stamped differ from their resource
        self._changes: dict[str, str | None] | None = None
        self._started = False
        # How many of the resources are publications that assign their host port: kept as
        # objects come and go, so the agent need not scan for them.
        self.assigning = 0
        self._out: tuple[ParseResult, ...] | None = None  # the last result
        self.moved: Moved | None = None  # its objects that went and came

    def stamp(self, resources: Sequence[ParseResult], now: str) -> tuple[ParseResult, ...]:
        by_id = dict(zip(map(id, resources), resources, strict=True))
        gone = self._seen.keys() - by_id.keys()
        new = by_id.keys() - self._seen.keys()
        went = [self._stamped[i] for i in gone]
        # New ones first: a resource replaced by a new object keeps its first-seen time.
        for i in new:
            res = by_id[i]
            self._seen[i] = res
            self.assigning += _assigns(res)
            if isinstance(res, InvalidResource) or res.meta.created:
                self._stamped[i] = res
                continue
            k = key(res.meta.ref)
            self._keys[k] = self._keys.get(k, 0) + 1
            if k not in self.first_seen:
                self.first_seen[k] = now
                self._change(k, now)
            self._stamped[i] = replace(res, meta=replace(res.meta, created=self.first_seen[k]))
            self._replaced += 1
        for i in gone:
            res = self._seen.pop(i)
            self.assigning -= _assigns(res)
            if self._stamped.pop(i) is not res:
                self._replaced -= 1
                self._release(key(res.meta.ref))  # type: ignore[union-attr]
        if not self._started:  # times remembered for resources no longer here are dropped
            self._started = True
            for k in [k for k in self.first_seen if k not in self._keys]:
                del self.first_seen[k]
            self._changes = None
        if not self._replaced:  # every resource has its own creation time (the API's)
            out = tuple(resources)
        else:
            stamped = self._stamped
            out = tuple([stamped[id(r)] for r in resources])
        came = tuple(self._stamped[i] for i in new)
        self.moved = None if self._out is None else Moved(self._out, tuple(went), came)
        self._out = out
        return out

    def _release(self, k: str) -> None:
        left = self._keys[k] - 1
        if left:
            self._keys[k] = left
            return
        del self._keys[k], self.first_seen[k]
        self._change(k, None)

    def _change(self, k: str, value: str | None) -> None:
        if self._changes is not None:
            self._changes[k] = value

    def take_changes(self) -> dict[str, str | None] | None:
        changes, self._changes = self._changes, {}
        return changes


def _assigns(res: ParseResult) -> int:
    return int(isinstance(res, PortPublication) and res.assign is not None)
