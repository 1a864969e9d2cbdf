"""A host daemon as tests need one: `tcp|udp ADDRESS PORT [PORT_END]` binds every port the way
daemons do (SO_REUSEADDR for TCP, dual-stack off for IPv6), prints `ready` or `ERR <errno name>`
(exit 1), then answers every TCP connection or UDP datagram with `host-process`."""

import errno
import selectors
import socket
import sys


def main() -> int:
    mode, host, first = sys.argv[1], sys.argv[2], int(sys.argv[3])
    last = int(sys.argv[4]) if len(sys.argv) > 4 else first
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_STREAM if mode == "tcp" else socket.SOCK_DGRAM
    sel = selectors.DefaultSelector()
    try:
        for port in range(first, last + 1):
            s = socket.socket(family, kind)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
            if kind == socket.SOCK_STREAM:
                s.listen(16)
            sel.register(s, selectors.EVENT_READ)
    except OSError as exc:
        print(f"ERR {errno.errorcode.get(exc.errno or 0, exc)}", flush=True)
        return 1
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            assert isinstance(s, socket.socket)
            if kind == socket.SOCK_STREAM:
                conn, _ = s.accept()
                conn.sendall(b"host-process\n")
                conn.close()
            else:
                _, peer = s.recvfrom(2048)
                s.sendto(b"host-process\n", peer)


if __name__ == "__main__":
    sys.exit(main())
