"""The contract between the agent and wherever resources come from (a directory, the API)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from bridgeport.core.specs import ParseResult


@dataclass(frozen=True)
class Snapshot:
    """One complete view of the resources. Sources hand out None until they have one."""

    # A source hands out a resource that did not change as the same object as before: the
    # agent finds what changed from the objects that went and came (C-level set operations
    # on their ids), in O(change). New objects for unchanged resources stay correct (they
    # are compared by value then), only slower.
    resources: tuple[ParseResult, ...]
    errors: tuple[str, ...] = ()  # unreadable inputs, reported and skipped
    node_labels: Mapping[str, str] | None = None  # when the source knows them (the Node object)


@dataclass(frozen=True)
class Moved:
    """The objects that went and came between two successive sequences of resources (by
    identity): found once per reconcile (firstseen.Stamper) and handed on, so that the next
    consumer (the incremental planner) need not compare all of them again. Valid only for a
    consumer whose last sequence was `before`."""

    before: Sequence[ParseResult]
    went: tuple[ParseResult, ...]
    came: tuple[ParseResult, ...]


class SourceError(RuntimeError):
    """The source cannot work at all (no credentials, no directory): the agent stops with
    this message instead of a traceback."""


class Source(Protocol):
    def snapshot(self) -> Snapshot | None: ...

    async def run(self, changed: Callable[[], None]) -> None:
        """Watch forever; call `changed()` whenever `snapshot()` would return something new."""
