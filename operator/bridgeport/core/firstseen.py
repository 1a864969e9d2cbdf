"""First-seen times stand in for creationTimestamp where there is none (standalone files).

Conflicts go to the oldest resource; a file has no creation time, so without this the name
would decide, and a new file named "a..." would take a working network's subnet. The agent
keeps these times in its state file, so they survive restarts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from bridgeport.core.specs import InvalidResource, ParseResult, ResourceRef


def key(ref: ResourceRef) -> str:
    return f"{ref.kind}/{ref.namespace}/{ref.name}"


def stamp(resources: Iterable[ParseResult], first_seen: Mapping[str, str],
          now: str) -> tuple[list[ParseResult], dict[str, str]]:
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
