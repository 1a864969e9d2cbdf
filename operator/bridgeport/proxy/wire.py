"""The agent <-> proxy worker control protocol: one JSON message per SOCK_SEQPACKET packet.

    agent -> worker  Listen (+ one listening socket per listener, SCM_RIGHTS: TCP or UDP, as
                     the socket's type says), Retarget,
                     Unlisten (answered by Done once the sockets are closed)
    worker -> agent  Done, Log (an error, throttled in the worker; `suppressed` since the last)

Standard library only: the worker imports it.
"""

from __future__ import annotations

import json
from typing import Literal, TypedDict, cast

Target = tuple[str, int]  # (host, port) of the proxied target


class ListenerSpec(TypedDict):
    slot: int
    target: list[str | int]  # [host, port]


class Listen(TypedDict):
    op: Literal["listen"]
    listeners: list[ListenerSpec]


class Retarget(TypedDict):
    op: Literal["retarget"]
    slot: int
    target: list[str | int]


class Unlisten(TypedDict):
    op: Literal["unlisten"]
    slots: list[int]
    seq: int


class Done(TypedDict):
    op: Literal["done"]
    seq: int


class Log(TypedDict):
    op: Literal["log"]
    slot: int  # -1: not about one listener
    kind: str  # an ERROR_KINDS entry, or "internal"
    error: str
    suppressed: int


ToWorker = Listen | Retarget | Unlisten
FromWorker = Done | Log


def encode(message: ToWorker | FromWorker) -> bytes:
    return json.dumps(message).encode()


def to_worker(data: bytes) -> ToWorker:
    """Trusted: only the agent writes to this channel (the worker is its child)."""
    return cast(ToWorker, json.loads(data))


def from_worker(data: bytes) -> FromWorker:
    """Trusted: only our own worker writes to this channel."""
    return cast(FromWorker, json.loads(data))


def target(value: list[str | int]) -> Target:
    host, port = value
    return str(host), int(port)
