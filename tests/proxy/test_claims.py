"""Port claims in the ProxyManager, on 127.0.0.1 in this process (real sockets, no namespaces).

Scenarios: a claim keeps every later bind off the port (TCP with SO_REUSEADDR, UDP); TIME_WAIT
leftovers of a closed listener do not stop a TCP claim, and the claim still keeps a later
daemon off; a port a
process already holds fails as PortInUse naming that process's pid and command; with
release=False a claim no longer wanted is held until release() (the agent releases only after
the nftables transaction); a port moving from a claim to a listener of ours in one sync is not
mistaken for someone else's.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import subprocess
import sys

import pytest

from bridgeport.core.plan import Claim, ProxyPort
from bridgeport.core.specs import Protocol, ResourceRef
from bridgeport.proxy.manager import ProxyManager
from tests.proxy.test_manager import free_port

LOCAL = ipaddress.IPv4Address("127.0.0.1")
OWNER = ResourceRef("PortPublication", "default", "web")


def bind_errno(port: int, kind: int = socket.SOCK_STREAM) -> int:
    """0 when a daemon-like bind of 127.0.0.1:port succeeds, else its errno."""
    with socket.socket(socket.AF_INET, kind) as s:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno or -1
        return 0


def test_claims_keep_others_off() -> None:
    tcp, udp = free_port(), free_port(socket.SOCK_DGRAM)

    async def main() -> None:
        m = ProxyManager(workers=1)
        statuses = await m.sync(
            [], [Claim(LOCAL, tcp, Protocol.TCP, OWNER), Claim(LOCAL, udp, Protocol.UDP, OWNER)]
        )
        assert {s.state for s in statuses.values()} == {"listening"}
        assert bind_errno(tcp) == errno.EADDRINUSE
        assert bind_errno(udp, socket.SOCK_DGRAM) == errno.EADDRINUSE
        await m.sync([], [])
        assert bind_errno(tcp) == 0 and bind_errno(udp, socket.SOCK_DGRAM) == 0
        await m.close()

    asyncio.run(main())


def test_time_wait_does_not_block_a_claim() -> None:
    port = free_port()
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(1)
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            accepted.close()  # the server side closes first: TIME_WAIT on our port
            client.recv(1)
    with socket.socket() as plain:
        with pytest.raises(OSError) as exc:
            plain.bind(("127.0.0.1", port))
        assert exc.value.errno == errno.EADDRINUSE  # the leftover is there

    async def main() -> None:
        m = ProxyManager(workers=1)
        (status,) = (await m.sync([], [Claim(LOCAL, port, Protocol.TCP, OWNER)])).values()
        assert status.state == "listening", status
        assert bind_errno(port) == errno.EADDRINUSE
        await m.close()

    asyncio.run(main())


def test_holder_is_named() -> None:
    port = free_port()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import socket, sys, time\n"
                f"s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(1)\n"
                "print('ready', flush=True); time.sleep(60)\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"

        async def main() -> str:
            m = ProxyManager(workers=1)
            statuses = await m.sync([], [Claim(LOCAL, port, Protocol.TCP, OWNER)])
            await m.close()
            (status,) = statuses.values()
            assert status.reason == "PortInUse"
            return status.message

        message = asyncio.run(main())
        assert f"127.0.0.1:{port}/TCP is already in use" in message
        assert f"held by pid {holder.pid} (python" in message, message
    finally:
        holder.kill()
        holder.wait(5)


def test_release_waits_for_the_agent() -> None:
    port = free_port()

    async def main() -> None:
        m = ProxyManager(workers=1)
        await m.sync([], [Claim(LOCAL, port, Protocol.TCP, OWNER)])
        await m.sync([], [], release=False)  # the rule capturing it may still exist
        assert bind_errno(port) == errno.EADDRINUSE
        await m.release()  # the transaction removing it committed
        assert bind_errno(port) == 0
        await m.close()

    asyncio.run(main())


@pytest.mark.parametrize("protocol", [Protocol.TCP, Protocol.UDP])
def test_claim_becomes_a_listener(protocol: Protocol) -> None:
    kind = socket.SOCK_STREAM if protocol is Protocol.TCP else socket.SOCK_DGRAM
    port, target = free_port(kind), free_port(kind)

    async def main() -> None:
        m = ProxyManager(workers=1)
        await m.sync([], [Claim(LOCAL, port, protocol, OWNER)])
        listener = ProxyPort(LOCAL, port, protocol, LOCAL, target, OWNER, "always", holds=True)
        statuses = await m.sync([listener], [], release=False)
        assert [s.state for s in statuses.values()] == ["listening"], statuses
        assert not m.held
        await m.close()

    asyncio.run(main())
