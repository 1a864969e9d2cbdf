"""Assigned host ports: which free ports a node gives publications without a hostPort (pure).

Docker's allocator for `-p 80`: ports from the kernel's ephemeral range
(net.ipv4.ip_local_port_range), never one in net.ipv4.ip_local_reserved_ports or one a
process already uses, TCP, UDP and SCTP counted apart. Unlike Docker's, the result is a
function of its inputs alone, so every reconcile of the same inputs gives the same ports:
- A previous assignment (what this node gave the publication before, kept across agent
  restarts by the caller) is kept while it is still valid: inside the requested range, not
  reserved, not avoided (a host process took it), not held by a publication ahead of it.
- Otherwise the search starts at a point derived from the publication's name and wraps
  around the range (Docker starts after the last port it gave out; a name-derived start
  needs no memory, rarely hands a just-freed port to the next newcomer, and gives one
  publication the same port on every node where it is free).
- Requests are served in claim order (incumbents, then the oldest, then by name); fixed
  host ports of publications ahead of a previous assignment block it, and every fixed port
  blocks new assignments (a newcomer never takes a port a fixed publication asks for).
Ports a process listens on block new assignments only: a previous assignment's port is
normally held by our own socket, and the claim (core/claims.py) finds a foreign one.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from bridgeport.core.specs import ResourceRef

PORTS = 65536
DEFAULT_RANGE = (32768, 60999)  # Linux's default net.ipv4.ip_local_port_range
_FREE, _TAKEN = 0, 1


@dataclass(frozen=True)
class Request:
    """One publication's wish: `count` consecutive ports of `protocol` in start-end."""

    ref: ResourceRef
    protocol: str
    start: int
    end: int
    count: int = 1
    previous: int | None = None  # the first port this node gave it before (same uid)
    avoid: frozenset[int] = frozenset()  # ports a host process took from it


@dataclass(frozen=True)
class Fixed:
    """A publication's own host ports (hostPort-hostPortEnd)."""

    protocol: str
    first: int
    last: int


@dataclass
class _Ports:
    """Per protocol, one byte per port: taken or free (bytes.find scans them in C)."""

    reserved: bytes
    taken: dict[str, bytearray] = field(default_factory=dict)

    def of(self, protocol: str) -> bytearray:
        if protocol not in self.taken:
            self.taken[protocol] = bytearray(self.reserved)
        return self.taken[protocol]


def _mask(ports: Iterable[int]) -> bytearray:
    out = bytearray(PORTS)
    for p in ports:
        if 0 < p < PORTS:
            out[p] = _TAKEN
    return out


@functools.lru_cache(maxsize=65536)
def preferred(ref: ResourceRef, start: int, end: int, count: int) -> int:
    """Where the search for `ref` starts: stable, spread over the range by name."""
    slots = end - start + 2 - count
    digest = hashlib.blake2b(ref.key.encode(), digest_size=8).digest()
    return start + int.from_bytes(digest, "big") % max(1, slots)


def _find(taken: bytearray, start: int, end: int, count: int, first: int) -> int | None:
    """The first run of `count` free ports in start-end at or after `first`, wrapping."""
    run = bytes(count)
    hit = taken.find(run, first, end + 1)
    if hit < 0:
        hit = taken.find(run, start, min(end, first + count - 1) + 1)
    return hit if hit >= 0 else None


def allocate(
    items: Sequence[Request | Fixed],
    reserved: Iterable[int] = (),
    in_use: Mapping[str, Iterable[int]] | None = None,
) -> dict[ResourceRef, int | None]:
    """Each request's first port, or None when no run of free ports is left.

    `items` mixes Requests and Fixed ports in claim order; `reserved` ports are never
    given; `in_use` (per protocol: ports processes listen on) are not given to new
    assignments.
    """
    ports = _Ports(bytes(_mask(reserved)))
    out: dict[ResourceRef, int | None] = {}
    fresh: list[Request] = []
    for item in items:
        taken = ports.of(item.protocol)
        if isinstance(item, Fixed):
            taken[item.first : item.last + 1] = b"\x01" * (item.last - item.first + 1)
            continue
        prev = item.previous
        if (
            prev is not None
            and item.start <= prev
            and prev + item.count - 1 <= item.end
            and not any(prev <= a < prev + item.count for a in item.avoid)
            and taken.find(b"\x01", prev, prev + item.count) < 0
        ):
            taken[prev : prev + item.count] = b"\x01" * item.count
            out[item.ref] = prev
        else:
            fresh.append(item)
    for protocol, listening in (in_use or {}).items():
        taken = ports.of(protocol)
        for p in listening:
            if 0 < p < PORTS:
                taken[p] = _TAKEN
    for req in fresh:
        taken = ports.of(req.protocol)
        avoided = [(p, taken[p]) for p in req.avoid if 0 < p < PORTS]
        for p, _ in avoided:
            taken[p] = _TAKEN  # only for this request: the port is free for the others
        first = preferred(req.ref, req.start, req.end, req.count)
        hit = _find(taken, req.start, req.end, req.count, first)
        for p, before in avoided:
            taken[p] = before
        if hit is not None:
            taken[hit : hit + req.count] = b"\x01" * req.count
        out[req.ref] = hit
    return out
