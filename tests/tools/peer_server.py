"""Test target: answers every TCP connection / UDP datagram with "<peer-ip> <local-port>".

With --echo, TCP connections instead echo each line back (for long-lived connection tests).
Prints "ready" once every socket is bound. Runs until killed.
"""

import argparse
import socket
import threading


def tcp(port: int, echo: bool, family: int) -> None:
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    srv.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    srv.listen(128)
    READY.release()
    while True:
        conn, peer = srv.accept()
        threading.Thread(target=serve, args=(conn, peer, port, echo), daemon=True).start()


def serve(conn: socket.socket, peer: tuple, port: int, echo: bool) -> None:
    with conn:
        if not echo:
            conn.sendall(f"{peer[0]} {port}\n".encode())
            return
        f = conn.makefile("rwb")
        for line in f:
            f.write(line)
            f.flush()


def udp(port: int, family: int) -> None:
    s = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    READY.release()
    while True:
        _, peer = s.recvfrom(65535)
        s.sendto(f"{peer[0]} {port}\n".encode(), peer)


READY = threading.Semaphore(0)

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--tcp", type=int, action="append", default=[])
    p.add_argument("--udp", type=int, action="append", default=[])
    p.add_argument("--echo", action="store_true")
    a = p.parse_args()
    families = (socket.AF_INET, socket.AF_INET6)
    jobs = [(tcp, (port, a.echo, fam)) for port in a.tcp for fam in families]
    jobs += [(udp, (port, fam)) for port in a.udp for fam in families]
    for fn, args in jobs:
        threading.Thread(target=fn, args=args, daemon=True).start()
    for _ in jobs:
        READY.acquire()
    print("ready", flush=True)
    threading.Event().wait()
