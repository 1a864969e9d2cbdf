"""The test peers' client, against tests/tools/peer_server.py. Every socket op has a timeout.

One line out: the server's answer, or `ERR <why>` (exit 1):
  tcp|udp HOST PORT [TIMEOUT [SPORT]]  one exchange (SPORT: a fixed UDP source port, for flows)
  hold HOST PORT [TIMEOUT]             one TCP connection kept open: echoes a line, then for
                                       every line read on stdin sends it and prints the echo
                                       (tests that established connections survive)

One JSON object out, against `peer_server.py --name` (the proxy tests):
  hello HOST PORT               one request/reply, then a clean close
  upload HOST PORT MIB          stream MIB MiB, half-close, read the target's sha256
  download HOST PORT MIB SEED   receive MIB MiB and hash them
  halfclose HOST PORT           send a little, shut write, still read the reply
  stuck HOST PORT               ask for 1 GB, never read it (held until killed)
  idle HOST PORT                connect, send nothing, print how the connection ended
  refused HOST PORT             how fast a proxied connection to a dead target ends
  datagrams HOST PORT TAG COUNT COUNT datagrams, report replies and their source address
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import time
from typing import Any

from peer_server import BLOCK, stream_block  # type: ignore[import-not-found]

TIMEOUT = 20.0


def one_line(mode: str, host: str, port: int, timeout: float, sport: int) -> int:
    """tcp|udp|hold: one line out (see the module docstring)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        if mode == "udp":
            s = socket.socket(family, socket.SOCK_DGRAM)
            s.settimeout(timeout)
            if sport:
                s.bind(("", sport))
            s.sendto(b"hi", (host, port))
            print(s.recv(1024).decode().strip())
            return 0
        s = socket.create_connection((host, port), timeout=timeout)
        if mode == "hold":
            f = s.makefile("rwb")
            for text in sys.stdin:
                f.write(text.encode())
                f.flush()
                print(f.readline().decode().strip(), flush=True)
            return 0
        print(s.makefile().readline().strip())
        return 0
    except OSError as exc:
        print(f"ERR {type(exc).__name__}: {exc}")
        return 1


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
    return {
        "sha256": reply[0],
        "bytes": int(reply[1]),
        "expected": hashlib.sha256(b"half-closed").hexdigest(),
    }


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


def datagrams(host: str, port: str, tag: str, count: str) -> dict[str, Any]:
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


EXCHANGES = {
    f.__name__: f for f in (hello, upload, download, halfclose, stuck, idle, refused, datagrams)
}


def main() -> int:
    mode, *args = sys.argv[1:]
    if mode in ("tcp", "udp", "hold"):
        timeout = float(args[2]) if len(args) > 2 else 2.0
        sport = int(args[3]) if len(args) > 3 else 0
        return one_line(mode, args[0], int(args[1]), timeout, sport)
    print(json.dumps(EXCHANGES[mode](*args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
