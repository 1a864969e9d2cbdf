"""A node's report in O(its exceptions): Applied outcomes as digests, not entries (pure).

An agent lists in its NodeState only the outcomes the controller cannot derive: everything
but Applied, and but Inactive for a nodeSelector that does not match (the controller evaluates
selectors against the labels the agent reports). Applied outcomes are folded into BUCKETS
digests: bucket `bucket_of(ref)` holds the XOR of `item(...)` over the Applied resources of
that bucket, at the generation (and uid) the agent applied. XOR makes the controller's side
incremental and lets it tell which recent change a lagging node has not applied yet.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence

from bridgeport.core.plan import State
from bridgeport.core.specs import ResourceRef

BUCKETS = 256
SELECTOR_MISMATCH = "NodeSelectorMismatch"


def item(ref: ResourceRef, uid: str, generation: int) -> int:
    """64 bits naming one incarnation (uid) of one resource at one generation."""
    text = f"{ref.kind}\0{ref.namespace}\0{ref.name}\0{uid}\0{generation}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def bucket_of(ref: ResourceRef) -> int:
    """By name, not uid: a recreated resource shares its bucket with its old incarnation."""
    text = f"{ref.kind}\0{ref.namespace}\0{ref.name}".encode()
    return hashlib.blake2b(text, digest_size=2).digest()[0] % BUCKETS


def is_listed(state: str, reason: str) -> bool:
    """Whether an outcome is reported as an entry (else the controller derives it): all but
    a plain Applied (a qualified one, e.g. IPv6Disabled, says something) and Inactive for a
    nodeSelector that does not match."""
    if state == State.APPLIED:
        return reason not in ("", "Programmed")
    return not (state == State.INACTIVE and reason == SELECTOR_MISMATCH)


def digests(applied: Iterable[tuple[ResourceRef, str, int]]) -> list[int]:
    out = [0] * BUCKETS
    for ref, uid, generation in applied:
        out[bucket_of(ref)] ^= item(ref, uid, generation)
    return out


def encode(values: Sequence[int]) -> str:
    return base64.b64encode(b"".join(v.to_bytes(8, "big") for v in values)).decode()


def decode(text: object) -> tuple[int, ...] | None:
    """The digests of a report, or None when the text is not BUCKETS of them."""
    if not isinstance(text, str):
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    if len(raw) != 8 * BUCKETS:
        return None
    return tuple(int.from_bytes(raw[i : i + 8], "big") for i in range(0, len(raw), 8))
