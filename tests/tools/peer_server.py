"""The test peers' server: the target behind a published port. Runs until killed; prints
"ready" once every socket is bound.

  peer_server.py [--echo | --name NAME] [--tcp SPEC]... [--udp SPEC]...

SPEC is PORT (the wildcard address of each family) or ADDR:PORT ([ADDR]:PORT for IPv6).

Without --name, every TCP connection / UDP datagram is answered "<peer-ip> <local-port>";
with --echo, TCP connections instead echo each line back (long-lived connection tests).

With --name (the proxy tests), a TCP connection reads one command line, then:
  hello      -> "hello from NAME <peer-ip>\\n", then waits for EOF and closes
  hash       -> reads to EOF, replies "<sha256> <bytes>\\n" (half-close / upload integrity)
  send N S   -> sends N bytes of stream(S) and closes (download integrity)
  echo       -> echoes until EOF
and a UDP datagram is answered "NAME <peer-ip>:<peer-port> <payload>".

`bind` is shared with host_listener.py; `BLOCK`/`stream_block` with peer_client.py.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import socket
import threading

BLOCK = 1 << 20


def stream_block(seed: int) -> bytes:
    """The repeating 1 MiB block of the deterministic stream (random, so incompressible)."""
    return random.Random(seed).randbytes(BLOCK)


def bind(host: str, port: int, kind: int) -> socket.socket:
    """A socket bound the way daemons bind: one family (IPV6_V6ONLY), SO_REUSEADDR for TCP,
    listening if TCP."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, kind)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    if kind == socket.SOCK_STREAM:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    if kind == socket.SOCK_STREAM:
        s.listen(256)
    return s


def answer(conn: socket.socket, peer: tuple[str, int], port: int, echo: bool) -> None:
    with conn:
        if not echo:
            conn.sendall(f"{peer[0]} {port}\n".encode())
            return
        f = conn.makefile("rwb")
        for line in f:
            f.write(line)
            f.flush()


def command(conn: socket.socket, peer: tuple[str, int], name: str) -> None:
    with conn, conn.makefile("rb") as f:
        words = f.readline().decode().split()
        if not words:
            return
        if words[0] == "hello":
            conn.sendall(f"hello from {name} {peer[0]}\n".encode())
            while f.read(65536):
                pass
        elif words[0] == "hash":
            h, n = hashlib.sha256(), 0
            while chunk := f.read1(BLOCK):
                h.update(chunk)
                n += len(chunk)
            conn.sendall(f"{h.hexdigest()} {n}\n".encode())
        elif words[0] == "send":
            left, block = int(words[1]), stream_block(int(words[2]))
            while left > 0:
                conn.sendall(block[:left])
                left -= min(left, BLOCK)
        elif words[0] == "echo":
            while chunk := f.read1(65536):
                conn.sendall(chunk)


def serve_tcp(srv: socket.socket, name: str | None, echo: bool) -> None:
    port = srv.getsockname()[1]
    while True:
        conn, peer = srv.accept()
        if name is None:
            threading.Thread(target=answer, args=(conn, peer, port, echo), daemon=True).start()
        else:
            threading.Thread(target=command, args=(conn, peer, name), daemon=True).start()


def serve_udp(sock: socket.socket, name: str | None) -> None:
    port = sock.getsockname()[1]
    while True:
        data, peer = sock.recvfrom(65536)
        if name is None:
            sock.sendto(f"{peer[0]} {port}\n".encode(), peer)
        else:
            sock.sendto(f"{name} {peer[0]}:{peer[1]} ".encode() + data, peer)


def addresses(spec: str) -> list[tuple[str, int]]:
    """PORT: the wildcard of each family; ADDR:PORT: that address."""
    host, _, port = spec.rpartition(":")
    if not host:
        return [("0.0.0.0", int(port)), ("::", int(port))]
    return [(host.strip("[]"), int(port))]


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--tcp", action="append", default=[], help="PORT or ADDR:PORT, repeatable")
    p.add_argument("--udp", action="append", default=[], help="PORT or ADDR:PORT, repeatable")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--echo", action="store_true")
    mode.add_argument("--name")
    a = p.parse_args()
    for spec in a.tcp:
        for host, port in addresses(spec):
            srv = bind(host, port, socket.SOCK_STREAM)
            threading.Thread(target=serve_tcp, args=(srv, a.name, a.echo), daemon=True).start()
    for spec in a.udp:
        for host, port in addresses(spec):
            sock = bind(host, port, socket.SOCK_DGRAM)
            threading.Thread(target=serve_udp, args=(sock, a.name), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
