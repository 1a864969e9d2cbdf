"""The relay bridgeport does NOT use, kept to re-measure the choice: plain asyncio
Protocols (transport.write + pause/resume_reading for backpressure), no splice.

usage: alt_relay.py [--uvloop] LISTEN_HOST:PORT=TARGET_HOST:PORT ...   (prints "ready")
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import socket
from typing import cast


class Side(asyncio.Protocol):
    """One socket of a relayed pair; pauses the peer's reading while its own buffer is full."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Side | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.peer is None or self.peer.transport is None:
            self.early.append(data)
            return
        self.peer.transport.write(data)

    def eof_received(self) -> bool:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write_eof()
        return True  # keep our write side open for the reply

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class Client(Side):
    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__()
        self.target = target

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self.connect())

    async def connect(self) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        try:
            _, up = await loop.create_connection(Side, *self.target)
        except OSError:
            self.transport.abort()
            return
        up.peer, self.peer = self, up
        assert up.transport is not None
        for chunk in self.early:
            up.transport.write(chunk)
        self.early.clear()


async def main(specs: list[str]) -> None:
    loop = asyncio.get_running_loop()
    for spec in specs:
        listen, _, target = spec.partition("=")
        lh, _, lp = listen.rpartition(":")
        th, _, tp = target.rpartition(":")
        await loop.create_server(
            functools.partial(Client, (th, int(tp))), lh, int(lp), reuse_address=True, backlog=1024
        )
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--uvloop", action="store_true")
    p.add_argument("spec", nargs="+")
    a = p.parse_args()
    if a.uvloop:
        import uvloop

        uvloop.run(main(a.spec))
    else:
        asyncio.run(main(a.spec))
