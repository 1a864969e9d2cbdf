"""Test client: `tcp|udp HOST PORT` prints the server's one-line answer, or `ERR <why>` (exit 1).

`hold HOST PORT` keeps one TCP connection open: it echoes a line, then for every line read on
stdin sends it and prints the echo (tests that established connections survive).
"""

import socket
import sys


def main() -> int:
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 2.0
    sport = int(sys.argv[5]) if len(sys.argv) > 5 else 0  # fixed source port (UDP flows)
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
            for line in sys.stdin:
                f.write(line.encode())
                f.flush()
                print(f.readline().decode().strip(), flush=True)
            return 0
        print(s.makefile().readline().strip())
        return 0
    except OSError as exc:
        print(f"ERR {type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
