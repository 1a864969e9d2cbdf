"""The agent's liveness endpoint: GET /healthz answers 200 while its event loop runs.

Served by the loop that runs the proxies and the watches, so an answer proves that loop is not
stuck. It does not depend on the API server: the data plane works without one, and a restart
would not bring it back.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

READ_TIMEOUT = 5.0


async def serve(endpoint: str) -> asyncio.Server:
    """Listen on the endpoint's host and port (e.g. http://0.0.0.0:9103/healthz)."""
    url = urlsplit(endpoint)
    path = url.path or "/healthz"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            target = head.split(b" ", 2)[1].decode("latin-1") if head.count(b" ") >= 2 else ""
            ok = target.split("?", 1)[0] == path
            body = b"ok\n" if ok else b"not found\n"
            writer.write(
                b"HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s"
                % (b"200 OK" if ok else b"404 Not Found", len(body), body)
            )
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
            IndexError,
        ):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), READ_TIMEOUT)

    return await asyncio.start_server(handle, url.hostname or "0.0.0.0", url.port or 80)
