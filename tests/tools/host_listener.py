"""A host daemon as tests need one: `tcp|udp ADDRESS PORT [PORT_END]` binds every port the way
daemons do (SO_REUSEADDR for TCP, dual-stack off for IPv6), prints `ready` or `ERR <errno name>`
(exit 1), then answers every TCP connection or UDP datagram with `host-process`."""

import errno
import selectors
import socket
import sys

from peer_server import bind  # type: ignore[import-not-found]


def main() -> int:
    mode, host, first = sys.argv[1], sys.argv[2], int(sys.argv[3])
    last = int(sys.argv[4]) if len(sys.argv) > 4 else first
    kind = socket.SOCK_STREAM if mode == "tcp" else socket.SOCK_DGRAM
    sel = selectors.DefaultSelector()
    try:
        for port in range(first, last + 1):
            sel.register(bind(host, port, kind), selectors.EVENT_READ)
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
