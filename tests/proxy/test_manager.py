"""ProxyManager in this process on 127.0.0.1 (no root, no namespaces), on asyncio and uvloop.

Scenarios: TCP relay with half-close; UDP request/reply and idle expiry; retarget keeps the
bound socket; a port held by someone else fails as PortInUse without raising; SCTP is
reported, not raised; removal and close() release ports and metrics; a refused target resets
the client and counts an error.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop
from prometheus_client import CollectorRegistry

from bridgeport.core.plan import ProxyPort
from bridgeport.core.specs import Protocol, ResourceRef
from bridgeport.proxy.manager import ProxyManager

LOCAL = ipaddress.IPv4Address("127.0.0.1")
OWNER = ResourceRef("PortPublication", "default", "web")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pp(port: int, target_port: int, protocol: Protocol = Protocol.TCP) -> ProxyPort:
    return ProxyPort(LOCAL, port, protocol, LOCAL, target_port, OWNER, "loopback")


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[Any]], Any]:
    def runner(coro: Awaitable[Any]) -> Any:
        async def bounded() -> Any:
            return await asyncio.wait_for(coro, 20)

        if request.param == "uvloop":
            return uvloop.run(bounded())
        return asyncio.run(bounded())

    return runner


async def tcp_target(tag: bytes) -> tuple[asyncio.Server, int]:
    """Reads to EOF, then answers tag + what it read (so half-close is required)."""

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            w.write(tag + await r.read())
            await w.drain()
        except ConnectionResetError:  # the proxy resets connections it closes
            pass
        w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def ask(port: int, payload: bytes) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(payload)
    w.write_eof()
    reply = await r.read()
    w.close()
    return reply


def test_tcp_relay_half_close_and_retarget(run: Callable[[Awaitable[Any]], Any]) -> None:
    """Relays with half-close; a new target for the same key keeps the listening socket."""

    async def main() -> None:
        (a, a_port), (b, b_port) = await tcp_target(b"a:"), await tcp_target(b"b:")
        port = free_port()
        m = ProxyManager(registry=CollectorRegistry())
        statuses = await m.sync([pp(port, a_port)])
        assert [s.state for s in statuses.values()] == ["listening"]
        assert await ask(port, b"x" * 100_000) == b"a:" + b"x" * 100_000
        sock = m.listeners[pp(port, a_port).key].sock
        await m.sync([pp(port, b_port)])
        assert m.listeners[pp(port, b_port).key].sock is sock
        assert await ask(port, b"hi") == b"b:hi"
        await m.close()
        a.close()
        b.close()

    run(main())


def test_udp_reply_and_idle_expiry(run: Callable[[Awaitable[Any]], Any]) -> None:
    """A datagram gets its reply through a flow, which the sweeper reaps when idle."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        target.bind(("127.0.0.1", 0))
        target.setblocking(False)
        loop.add_reader(
            target.fileno(), lambda: target.sendto(b"re:" + (d := target.recvfrom(100))[0], d[1])
        )
        port = free_port(socket.SOCK_DGRAM)
        m = ProxyManager(udp_idle_timeout=0.2)
        await m.sync([pp(port, target.getsockname()[1], Protocol.UDP)])
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.setblocking(False)
        client.connect(("127.0.0.1", port))
        client.send(b"ping")
        assert await loop.sock_recv(client, 100) == b"re:ping"
        listener = next(iter(m.listeners.values()))
        assert listener.snapshot().flows == 1
        for _ in range(100):  # a snapshot is "as of now": take a fresh one each time
            if listener.snapshot().flows == 0:
                break
            await asyncio.sleep(0.05)
        stats = listener.snapshot()
        assert stats.flows == 0 and stats.connections == 1
        await m.close()
        loop.remove_reader(target.fileno())
        target.close()
        client.close()

    run(main())


def test_bind_failures_are_statuses(run: Callable[[Awaitable[Any]], Any]) -> None:
    """A held port and SCTP come back as failed statuses; the other port still listens."""

    async def main() -> None:
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        held, ok = holder.getsockname()[1], free_port()
        m = ProxyManager()
        sctp = ProxyPort(LOCAL, ok, Protocol.SCTP, LOCAL, 1, OWNER, "always")
        statuses = await m.sync([pp(held, 1), pp(ok, 1), sctp])
        assert statuses[pp(held, 1).key].reason == "PortInUse"
        assert f"127.0.0.1:{held}/TCP" in statuses[pp(held, 1).key].message
        assert statuses[pp(ok, 1).key].state == "listening"
        assert statuses[sctp.key].reason == "BindFailed"
        holder.close()
        retried = await m.sync([pp(held, 1)])  # failures are retried on every sync
        assert retried[pp(held, 1).key].state == "listening"
        await m.close()

    run(main())


def test_removal_and_close_release_everything(run: Callable[[Awaitable[Any]], Any]) -> None:
    """Ports leave with `desired`; close() ends live connections and unregisters metrics."""

    async def main() -> None:
        server, target = await tcp_target(b"")
        registry = CollectorRegistry()
        first, second = free_port(), free_port()
        m = ProxyManager(registry=registry)
        await m.sync([pp(first, target), pp(second, target)])
        await m.sync([pp(second, target)])
        socket.create_server(("127.0.0.1", first)).close()  # plain bind works again
        r, w = await asyncio.open_connection("127.0.0.1", second)
        w.write(b"held")
        await asyncio.sleep(0.05)
        assert (
            registry.get_sample_value(
                "bridgeport_proxy_active_connections",
                {
                    "listen": "127.0.0.1",
                    "port": str(second),
                    "protocol": "TCP",
                    "owner": "default/web",
                },
            )
            == 1
        )
        await m.close()
        with pytest.raises(ConnectionResetError):  # RST: no TIME_WAIT keeps the port
            await r.read()
        assert (
            registry.get_sample_value(
                "bridgeport_proxy_active_connections",
                {
                    "listen": "127.0.0.1",
                    "port": str(second),
                    "protocol": "TCP",
                    "owner": "default/web",
                },
            )
            is None
        )
        w.close()
        server.close()

    run(main())


def test_refused_target_resets_client(run: Callable[[Awaitable[Any]], Any]) -> None:
    """Nothing listens at the target: the client's connection ends and the error counts."""

    async def main() -> None:
        port, dead = free_port(), free_port()
        m = ProxyManager()
        await m.sync([pp(port, dead)])
        r, w = await asyncio.open_connection("127.0.0.1", port)
        with pytest.raises(ConnectionResetError):
            await r.read()
        w.close()
        assert next(iter(m.listeners.values())).snapshot().errors["connect_refused"] == 1
        await m.close()

    run(main())


def test_udp_relayed_while_the_agent_loop_is_blocked(
    run: Callable[[Awaitable[Any]], Any],
) -> None:
    """The agent's event loop held busy (as a big plan or a garbage collection holds it): a
    worker still answers every datagram, of a client seen before and of a new one. When the
    agent relayed UDP itself, not one was answered until the loop was free again."""

    def echo(sock: socket.socket) -> None:
        while True:
            try:
                data, peer = sock.recvfrom(100)
            except OSError:  # closed: the test is over
                return
            sock.sendto(b"re:" + data, peer)

    def ask_all(port: int, replies: list[bytes | None], done: threading.Event) -> None:
        try:
            for _ in range(2):  # a client, then a new client (a new flow)
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                    client.settimeout(5)
                    for i in range(20):
                        client.sendto(b"%d" % i, ("127.0.0.1", port))
                        try:
                            replies.append(client.recv(100))
                        except TimeoutError:  # not answered: the test fails, end it now
                            replies.append(None)
                            return
        finally:
            done.set()

    async def main() -> None:
        target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        target.bind(("127.0.0.1", 0))
        threading.Thread(target=echo, args=(target,), daemon=True).start()
        port = free_port(socket.SOCK_DGRAM)
        m = ProxyManager(workers=1)
        await m.sync([pp(port, target.getsockname()[1], Protocol.UDP)])
        replies: list[bytes | None] = []
        done = threading.Event()
        threading.Thread(target=ask_all, args=(port, replies, done), daemon=True).start()
        # Blocks this event loop (the agent's) until every datagram was answered or not.
        assert done.wait(60)
        assert replies == [b"re:%d" % i for _ in range(2) for i in range(20)]
        stats = next(iter(m.listeners.values())).snapshot()
        assert stats.connections == 2 and stats.bytes_out == sum(len(r or b"") for r in replies)
        await m.close()
        target.close()

    run(main())
