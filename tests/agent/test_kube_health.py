"""The agent's liveness endpoint (kube/health.py) on loopback: GET /healthz is 200, any other
path or garbage 404; the server keeps serving."""

from __future__ import annotations

import asyncio


async def ask(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return reply


def test_healthz() -> None:
    from bridgeport.kube import health

    async def main() -> None:
        server = await health.serve("http://127.0.0.1:0/healthz")
        port = server.sockets[0].getsockname()[1]
        try:
            ok = await ask(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert ok.startswith(b"HTTP/1.1 200 OK") and ok.endswith(b"ok\n")
            missing = await ask(port, b"GET /metrics HTTP/1.1\r\n\r\n")
            assert missing.startswith(b"HTTP/1.1 404")
            assert (await ask(port, b"\r\n\r\n")).startswith(b"HTTP/1.1 404")  # garbage
            assert (await ask(port, b"GET /healthz?x=1 HTTP/1.0\r\n\r\n")).startswith(
                b"HTTP/1.1 200"
            )
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())
