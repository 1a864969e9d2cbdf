"""UDP listener: a flow table of connected sockets, one per client, reaped when idle.

Each client address gets its own socket connected to the target, so replies find their way
back without any state in the datagrams. On a wildcard listener the reply must leave from
the address the client sent to, or the client (which usually connect()ed) drops it: the
destination is read with IP_PKTINFO / IPV6_RECVPKTINFO and handed back to sendmsg.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from typing import Any

from bridgeport.core.plan import ProxyPort
from bridgeport.proxy.listener import Listener
from bridgeport.proxy.metrics import ListenerStats
from bridgeport.proxy.sockets import Ancillary, is_wildcard, reply_pktinfo

_BURST = 64  # datagrams per wakeup before yielding to other listeners
_ANCBUF = socket.CMSG_SPACE(20)  # in6_pktinfo, the larger of the two
FlowKey = tuple[Any, bytes]  # (client address, local address as pktinfo bytes)


class _Flow:
    __slots__ = ("client", "fd", "key", "last", "listener", "reply", "sock")

    def __init__(
        self,
        listener: UdpListener,
        key: FlowKey,
        client: Any,
        reply: Ancillary,
        sock: socket.socket,
    ) -> None:
        self.listener, self.key, self.client, self.reply = listener, key, client, reply
        self.sock, self.fd = sock, sock.fileno()
        self.last = listener.loop.time()

    def on_reply(self) -> None:
        lst = self.listener
        for _ in range(_BURST):
            try:
                n = self.sock.recv_into(lst.buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP unreachable from the target, reported on recv
                lst.error("target_unreachable", "proxy UDP target unreachable", error=str(exc))
                return
            self.last = lst.loop.time()
            try:
                if self.reply:
                    lst.sock.sendmsg([lst.view[:n]], self.reply, 0, self.client)
                else:
                    lst.sock.sendto(lst.view[:n], self.client)
            except OSError:  # a full socket buffer drops, as the network would
                lst.stats.errors["dropped"] += 1
            else:
                lst.stats.bytes_out += n

    def close(self) -> None:
        lst = self.listener
        lst.loop.remove_reader(self.fd)
        self.sock.close()
        lst.stats.flows -= 1
        flows = lst.by_source[self.client[0]]
        del flows[self.key]
        if not flows:
            del lst.by_source[self.client[0]]


class UdpListener(Listener):
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        port: ProxyPort,
        max_flows: int,
        idle_timeout: float,
        buf: bytearray,
        max_per_source: int = 0,
    ) -> None:
        super().__init__(loop, sock, port)
        self.stats = ListenerStats()
        self.throttle = Throttle()
        self.max_flows, self.idle_timeout = max_flows, idle_timeout
        # A source (client address) at its limit gives up its oldest flow for a new one, so
        # a flood from many ports of one address never locks other clients out.
        self.max_per_source = max_per_source
        self.by_source: dict[str, dict[FlowKey, _Flow]] = {}  # in creation order
        self.wildcard = is_wildcard(port.key.listen)
        self.flows: dict[FlowKey, _Flow] = {}
        # One 64 KiB buffer for all listeners of a manager (the loop runs one callback at a
        # time): per listener it would cost 64 MiB for 1,000 ports.
        self.buf, self.view = buf, memoryview(buf)
        loop.add_reader(sock.fileno(), self._on_datagram)

    def _on_datagram(self) -> None:
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
                self.error("receive", "proxy UDP receive failed", error=str(exc))
                return
            key = (client, reply[0][2] if reply else b"")
            flow = self.flows.get(key) or self._open(key, client, reply)
            if flow is None:
                continue
            flow.last = self.loop.time()
            try:
                flow.sock.send(self.view[:n])
            except BlockingIOError:
                self.stats.errors["dropped"] += 1
            except OSError as exc:  # e.g. ECONNREFUSED left by an earlier ICMP error
                self.error("target_unreachable", "proxy UDP target unreachable", error=str(exc))
            else:
                self.stats.bytes_in += n

    def _open(self, key: FlowKey, client: Any, reply: Ancillary) -> _Flow | None:
        own = self.by_source.get(client[0], {})
        if self.max_per_source and len(own) >= self.max_per_source:
            self._evict_oldest(client[0], own)
        if len(self.flows) >= self.max_flows:
            self.error(
                "udp_flow_limit",
                "proxy UDP flow table full, dropping datagrams from new clients",
                limit=self.max_flows,
                idle_timeout=self.idle_timeout,
            )
            return None
        sock = socket.socket(self.target_family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        try:
            sock.connect(self.target)
        except OSError as exc:
            sock.close()
            self.error("connect", "proxy cannot reach the UDP target", error=str(exc))
            return None
        flow = _Flow(self, key, client, reply, sock)
        self.flows[key] = flow
        self.by_source.setdefault(client[0], {})[key] = flow
        self.stats.connections += 1
        self.stats.flows += 1
        self.loop.add_reader(flow.fd, flow.on_reply)
        return flow

    def _evict_oldest(self, host: str, own: dict[FlowKey, _Flow]) -> None:
        self.flows.pop(next(iter(own))).close()
        self.error(
            "source_limit",
            "proxy UDP client at its flow limit: its oldest flow was closed for a new one",
            client=str(host)[:45],
            limit=self.max_per_source,
        )

    def tick(self, now: float) -> None:
        """Reap idle flows."""
        deadline = now - self.idle_timeout
        for key in [k for k, f in self.flows.items() if f.last <= deadline]:
            self.flows.pop(key).close()

    def retarget(self, port: ProxyPort) -> None:
        """Flows are connected to the old target: drop them, the next datagram re-opens."""
        if (port.target, port.target_port) != (self.port.target, self.port.target_port):
            self._close_flows()
        super().retarget(port)

    def _close_flows(self) -> None:
        for flow in list(self.flows.values()):
            flow.close()
        self.flows.clear()

    def snapshot(self) -> ListenerStats:
        return self.stats

    def error(self, kind: str, event: str, **fields: Any) -> None:
        """Count an error and log it (throttled per kind)."""
        self.stats.errors[kind] += 1
        suppressed = self.throttle.allow(kind)
        if suppressed is not None:
            self.warn(event, kind, suppressed, **fields)

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self._close_flows()


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
