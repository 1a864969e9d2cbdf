"""Target servers for proxy tests. Prints "ready" once bound; runs until killed.

TCP (thread per connection) reads one command line, then:
  hello      -> "hello from NAME <peer-ip>\n", then waits for EOF and closes
  hash       -> reads to EOF, replies "<sha256> <bytes>\n" (half-close / upload integrity)
  send N S   -> sends N bytes of stream(S) and closes (download integrity)
  echo       -> echoes until EOF
UDP: answers each datagram with "NAME <peer-ip>:<peer-port> <payload>".
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


def tcp_conn(conn: socket.socket, peer: tuple[str, int], name: str) -> None:
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


def tcp_server(addr: str, port: int, name: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    srv.bind((addr, port))
    srv.listen(256)

    def accept() -> None:
        while True:
            conn, peer = srv.accept()
            threading.Thread(target=tcp_conn, args=(conn, peer, name), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return srv


def udp_server(addr: str, port: int, name: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((addr, port))

    def serve() -> None:
        while True:
            data, peer = sock.recvfrom(65536)
            sock.sendto(f"{name} {peer[0]}:{peer[1]} ".encode() + data, peer)

    threading.Thread(target=serve, daemon=True).start()
    return sock


def split(spec: str) -> tuple[str, int]:
    host, _, port = spec.rpartition(":")
    return host.strip("[]"), int(port)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--name", default="target")
    p.add_argument("--tcp", action="append", default=[], help="ADDR:PORT, repeatable")
    p.add_argument("--udp", action="append", default=[], help="ADDR:PORT, repeatable")
    a = p.parse_args()
    keep = [tcp_server(*split(x), a.name) for x in a.tcp]
    keep += [udp_server(*split(x), a.name) for x in a.udp]
    print("ready", flush=True)
    threading.Event().wait()
