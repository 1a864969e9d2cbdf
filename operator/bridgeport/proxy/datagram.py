"""The UDP relay of a proxy worker: one listener's flow table, on the engine's epoll loop.

Each client address gets its own socket connected to the target, so replies find their way
back without any state in the datagrams. On a wildcard listener the reply must leave from
the address the client sent to, or the client (which usually connect()ed) drops it: the
destination is read with IP_PKTINFO / IPV6_RECVPKTINFO and handed back to sendmsg.

A UDP listener lives in exactly one worker (the pool hands its socket to one), so its flow
table, flow limit and per-source limit are exact and local; the agent's event loop never
touches a datagram, so its control-plane work cannot stall them. Counters go to the shared
cells (ACTIVE: live flows), errors to the agent as throttled Log messages.

Standard library only: the worker imports it.
"""

from __future__ import annotations

import ipaddress
import math
import select
import socket
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from bridgeport.proxy.pktinfo import Ancillary, reply_pktinfo
from bridgeport.proxy.shared_counters import (
    ACTIVE,
    BYTES_IN,
    BYTES_OUT,
    CONNECTIONS,
    ERROR_KINDS,
    FIRST_ERROR,
)

if TYPE_CHECKING:
    from bridgeport.proxy.engine import Engine

_BURST = 64  # datagrams per wakeup before yielding to other sockets
_ANCBUF = socket.CMSG_SPACE(20)  # in6_pktinfo, the larger of the two
_ERROR_CELL = {kind: FIRST_ERROR + i for i, kind in enumerate(ERROR_KINDS)}
FlowKey = tuple[Any, bytes]  # (client address, local address as pktinfo bytes)


class UdpRelay:
    """A UDP listening socket and its flows, each flow a socket connected to the target."""

    def __init__(
        self, engine: Engine, slot: int, sock: socket.socket, target: tuple[str, int]
    ) -> None:
        self.engine, self.slot, self.sock = engine, slot, sock
        self.cells = engine.cells
        self.base = engine.counters.base(slot, engine.worker)
        self.max_flows, self.idle_timeout = engine.max_udp_flows, engine.udp_idle_timeout
        # A source (client address) at its limit gives up its oldest flow for a new one, so
        # a flood from many ports of one address never locks other clients out.
        self.max_per_source = engine.udp_per_source
        self.flows: dict[FlowKey, Flow] = {}
        self.by_source: dict[str, dict[FlowKey, Flow]] = {}  # in creation order
        self.throttle = Throttle(engine.log_interval)
        self.wildcard = ipaddress.ip_address(sock.getsockname()[0]).is_unspecified
        # One 64 KiB buffer for all listeners of a worker (one callback runs at a time).
        self.buf, self.view = engine.datagram_buffer, memoryview(engine.datagram_buffer)
        self.target, self.family = target, _family(target)
        sock.setblocking(False)
        engine.handlers[sock.fileno()] = self
        engine.epoll.register(sock.fileno(), select.EPOLLIN)

    def set_target(self, target: tuple[str, int]) -> None:
        """Flows are connected to the old target: drop them, the next datagram re-opens."""
        if target != self.target:
            self.close_flows()
        self.target, self.family = target, _family(target)

    def event(self, fd: int, mask: int) -> None:
        for _ in range(_BURST):
            reply: Ancillary = []
            try:
                if self.wildcard:
                    n, anc, _, client = self.sock.recvmsg_into([self.buf], _ANCBUF)
                    reply = reply_pktinfo(anc)
                else:
                    n, client = self.sock.recvfrom_into(self.buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.error("receive", str(exc))
                return
            key = (client, reply[0][2] if reply else b"")
            flow = self.flows.get(key) or self._open(key, client, reply)
            if flow is None:
                continue
            flow.last = self.engine.now
            # Counted before the send, taken back if it fails: whoever sees the datagram
            # arrive sees it counted.
            self.cells[self.base + BYTES_IN] += n
            try:
                flow.sock.send(self.view[:n])
            except BlockingIOError:
                self.cells[self.base + BYTES_IN] -= n
                self.cells[self.base + _ERROR_CELL["dropped"]] += 1
            except OSError as exc:  # e.g. ECONNREFUSED left by an earlier ICMP error
                self.cells[self.base + BYTES_IN] -= n
                self.error("target_unreachable", str(exc))

    def _open(self, key: FlowKey, client: Any, reply: Ancillary) -> Flow | None:
        own = self.by_source.get(client[0], {})
        if self.max_per_source and len(own) >= self.max_per_source:
            self.flows.pop(next(iter(own))).close()
            self.error(
                "source_limit",
                f"{str(client[0])[:45]} holds {self.max_per_source} flows, the per-source "
                "limit: its oldest flow was closed for a new one",
            )
        if len(self.flows) >= self.max_flows:
            self.error(
                "udp_flow_limit",
                f"limit {self.max_flows} flows (idle timeout {self.idle_timeout:g}s)",
            )
            return None
        try:
            sock = socket.socket(self.family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        except OSError as exc:  # out of file descriptors: this client waits, others go on
            self.error("connect", f"cannot open a socket to the target: {exc}")
            return None
        try:
            sock.connect(self.target)
        except OSError as exc:
            sock.close()
            self.error("connect", str(exc))
            return None
        flow = Flow(self, key, client, reply, sock)
        self.flows[key] = flow
        self.by_source.setdefault(client[0], {})[key] = flow
        self.cells[self.base + CONNECTIONS] += 1
        self.cells[self.base + ACTIVE] += 1
        return flow

    def reap(self, now: float) -> float:
        """Close the flows idle for idle_timeout; the last activity of the oldest one left
        (inf: none left)."""
        deadline, oldest = now - self.idle_timeout, math.inf
        for key, flow in list(self.flows.items()):
            if flow.last <= deadline:
                self.flows.pop(key).close()
            elif flow.last < oldest:
                oldest = flow.last
        return oldest

    def drop(self, flow: Flow) -> None:
        """Close one flow (a bug in its handler must cost that flow, not the worker)."""
        if self.flows.get(flow.key) is flow:
            del self.flows[flow.key]
            flow.close()

    def close_flows(self) -> None:
        for flow in list(self.flows.values()):
            flow.close()
        self.flows.clear()

    def close(self) -> None:
        fd = self.sock.fileno()
        self.engine.epoll.unregister(fd)
        del self.engine.handlers[fd]
        self.sock.close()
        self.close_flows()

    def error(self, kind: str, message: str) -> None:
        """Count an error and report it to the agent (throttled per kind)."""
        self.cells[self.base + _ERROR_CELL[kind]] += 1
        suppressed = self.throttle.allow(kind)
        if suppressed is not None:
            self.engine.report(
                {
                    "op": "log",
                    "slot": self.slot,
                    "kind": kind,
                    "error": message,
                    "suppressed": suppressed,
                }
            )


def _family(target: tuple[str, int]) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in target[0] else socket.AF_INET


class Flow:
    """One client of a listener: its socket connected to the target, and where replies go."""

    __slots__ = ("client", "fd", "key", "last", "relay", "reply", "sock")

    def __init__(
        self,
        relay: UdpRelay,
        key: FlowKey,
        client: Any,
        reply: Ancillary,
        sock: socket.socket,
    ) -> None:
        self.relay, self.key, self.client, self.reply = relay, key, client, reply
        self.sock, self.fd = sock, sock.fileno()
        engine = relay.engine
        self.last = engine.now
        if engine.next_udp == math.inf:  # the first flow: its expiry is the next check
            engine.next_udp = self.last + relay.idle_timeout
        engine.handlers[self.fd] = self
        engine.epoll.register(self.fd, select.EPOLLIN)

    def event(self, fd: int, mask: int) -> None:
        relay = self.relay
        cells, base = relay.cells, relay.base
        for _ in range(_BURST):
            try:
                n = self.sock.recv_into(relay.buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP unreachable from the target, reported on recv
                relay.error("target_unreachable", str(exc))
                return
            self.last = relay.engine.now
            cells[base + BYTES_OUT] += n  # before the send, as BYTES_IN
            try:
                if self.reply:
                    relay.sock.sendmsg([relay.view[:n]], self.reply, 0, self.client)
                else:
                    relay.sock.sendto(relay.view[:n], self.client)
            except OSError:  # a full socket buffer drops, as the network would
                cells[base + BYTES_OUT] -= n
                cells[base + _ERROR_CELL["dropped"]] += 1

    def close(self) -> None:
        relay = self.relay
        del relay.engine.handlers[self.fd]
        self.sock.close()  # closing the fd removes it from the epoll set
        relay.cells[relay.base + ACTIVE] -= 1
        flows = relay.by_source[self.client[0]]
        del flows[self.key]
        if not flows:
            del relay.by_source[self.client[0]]


class Throttle:
    """At most one log line per kind per interval; says how many were suppressed."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._next: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def allow(self, kind: str) -> int | None:
        """None to stay quiet, else the number of lines suppressed since the last one."""
        now = time.monotonic()
        if now < self._next.get(kind, 0.0):
            self._suppressed[kind] += 1
            return None
        self._next[kind] = now + self.interval
        return self._suppressed.pop(kind, 0)
