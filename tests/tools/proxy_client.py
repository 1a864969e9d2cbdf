"""Client side of the proxy tests; prints one JSON object. Every socket op has a timeout.

  hello HOST PORT               one request/reply, then a clean close
  upload HOST PORT MIB          stream MIB MiB, half-close, read the target's sha256
  download HOST PORT MIB SEED   receive MIB MiB and hash them
  halfclose HOST PORT           send a little, shut write, still read the reply
  stuck HOST PORT               ask for 1 GB, never read it (held until killed)
  refused HOST PORT             how fast a proxied connection to a dead target ends
  udp HOST PORT TAG COUNT       COUNT datagrams, report replies and their source address
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import time
from typing import Any

from proxy_peer import BLOCK, stream_block  # type: ignore[import-not-found]

TIMEOUT = 20.0


def connect(host: str, port: str) -> socket.socket:
    return socket.create_connection((host, int(port)), timeout=TIMEOUT)


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def hello(host: str, port: str) -> dict[str, Any]:
    with connect(host, port) as s:
        s.sendall(b"hello\n")
        line = s.makefile("rb").readline().decode().strip()
        s.shutdown(socket.SHUT_WR)
        return {"reply": line, "rest": read_all(s).decode()}


def upload(host: str, port: str, mib: str) -> dict[str, Any]:
    block, h = stream_block(7), hashlib.sha256()
    with connect(host, port) as s:
        s.sendall(b"hash\n")
        for _ in range(int(mib)):
            s.sendall(block)
            h.update(block)
        s.shutdown(socket.SHUT_WR)
        got, n = read_all(s).decode().split()
    return {"sent": h.hexdigest(), "received": got, "bytes": int(n)}


def download(host: str, port: str, mib: str, seed: str) -> dict[str, Any]:
    expected, got, n = hashlib.sha256(), hashlib.sha256(), 0
    block = stream_block(int(seed))
    for _ in range(int(mib)):
        expected.update(block)
    with connect(host, port) as s:
        s.sendall(f"send {int(mib) * BLOCK} {seed}\n".encode())
        buf = bytearray(BLOCK)
        while k := s.recv_into(buf):
            got.update(buf[:k])
            n += k
    return {"expected": expected.hexdigest(), "received": got.hexdigest(), "bytes": n}


def halfclose(host: str, port: str) -> dict[str, Any]:
    with connect(host, port) as s:
        s.sendall(b"hash\nhalf-closed")
        s.shutdown(socket.SHUT_WR)
        reply = read_all(s).decode().split()
    return {"sha256": reply[0], "bytes": int(reply[1]),
            "expected": hashlib.sha256(b"half-closed").hexdigest()}


def stuck(host: str, port: str) -> dict[str, Any]:
    s = connect(host, port)
    s.sendall(b"send 1000000000 3\n")
    print(json.dumps({"stuck": True}), flush=True)
    time.sleep(120)
    return {}


def idle(host: str, port: str) -> dict[str, Any]:
    """Connect, send nothing; print how the connection ended (a reset by the proxy's idle
    timeout shows as eof or ConnectionResetError)."""
    s = connect(host, port)
    print(json.dumps({"idle": True}), flush=True)
    s.settimeout(120)
    try:
        outcome = "eof" if not s.recv(100) else "data"
    except OSError as exc:
        outcome = type(exc).__name__
    print(json.dumps({"outcome": outcome}), flush=True)
    return {}


def refused(host: str, port: str) -> dict[str, Any]:
    start = time.monotonic()
    try:
        with connect(host, port) as s:
            s.sendall(b"hello\n")
            outcome = "eof" if not s.recv(100) else "data"
    except OSError as exc:
        outcome = type(exc).__name__
    return {"outcome": outcome, "seconds": time.monotonic() - start}


def udp(host: str, port: str, tag: str, count: str) -> dict[str, Any]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    replies: list[str | None] = []
    sources: set[str] = set()
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(2.0)
        for i in range(int(count)):
            s.sendto(f"{tag}-{i}".encode(), (host, int(port)))
            try:
                data, src = s.recvfrom(65536)
            except TimeoutError:
                replies.append(None)
                continue
            replies.append(data.decode())
            sources.add(src[0])
        local = s.getsockname()[1]
    return {"replies": replies, "sources": sorted(sources), "local_port": local}


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    print(json.dumps(globals()[cmd](*rest)), flush=True)
