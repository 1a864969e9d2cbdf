"""The agent <-> proxy worker control protocol: one JSON message per SOCK_SEQPACKET packet.

    agent -> worker  Listen (+ one listening socket per listener, SCM_RIGHTS: TCP or UDP, as
                     the socket's type says), Retarget,
                     Unlisten (answered by Done once the sockets are closed)
    worker -> agent  Done, Log (an error, throttled in the worker; `suppressed` since the last)

The worker's `Limits` travel once, on its command line.

Standard library only: the worker imports it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, fields
from typing import Literal, TypedDict, cast

Target = tuple[str, int]  # (host, port) of the proxied target


@dataclass(frozen=True)
class Limits:
    """What one worker relays under: set by the agent's flags, passed on the worker's command
    line (`argv`, `add_arguments`, `from_args`: one name per field, `--max-connections`...)."""

    max_connections: int = 4096
    """TCP connections a worker relays at once; more are reset."""
    connect_timeout: float = 5.0
    """Seconds a connect to the target may take before the client is reset."""
    max_per_source: int = 0
    """TCP connections one client address may hold per listener (0: no limit)."""
    idle_timeout: float = 0.0
    """Seconds without a byte either way before a TCP connection is reset (0: never)."""
    max_udp_flows: int = 4096
    """UDP flows per listener; a new client past it is dropped."""
    udp_idle_timeout: float = 90.0
    """Seconds without a datagram before a UDP flow closes."""
    udp_per_source: int = 0
    """UDP flows one client address may hold per listener; its oldest gives way (0: no limit)."""

    def argv(self) -> list[str]:
        return [f"--{f.name.replace('_', '-')}={getattr(self, f.name)}" for f in fields(self)]

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for f in fields(cls):
            flag = f"--{f.name.replace('_', '-')}"
            parser.add_argument(flag, type=type(f.default), default=f.default)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Limits:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


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
