"""A benchmark-only prototype (issue 14): a relay whose bytes never pass through the process.

Each relayed pair joins two BPF SOCKHASH maps. An sk_skb verdict program, attached to one of
them, runs on every skb a member socket receives: it builds the socket's 4-tuple key from the
__sk_buff, looks the peer up in the other map and redirects the skb to the peer's egress
(bpf_sk_redirect_hash). The process only accepts, connects, inserts the pair, and turns each
FIN it sees into a shutdown(SHUT_WR) of the peer. No new dependency: ctypes for bpf(2), the
program assembled below by hand. Needs root (CAP_BPF + CAP_NET_ADMIN), which the agent avoids.

Why two maps: a socket starts running the verdict the moment it joins the map the program is
attached to; if its peer were not yet findable, its bytes would be dropped or kept on the
socket. So both sockets first join `peers` (no program: key = a socket's 4-tuple, value = its
peer), then `members` (the program). Bytes queued before that are not run through the verdict
until the next data_ready: setting SO_RCVLOWAT (to 1, the default) calls tcp_data_ready, which
runs it for them, in order, inside the kernel.

What the kernel does not order: a redirected skb is queued on the peer's psock and sent by a
workqueue (net/core/skmsg.c sk_psock_skb_redirect -> schedule_delayed_work), so the FIN that
wakes this process may come before those bytes are in the peer's send queue. Shutting the peer
down then would put the FIN ahead of them (a truncated response), and closing it would drop
them. So a FIN is forwarded only once the peer has taken every byte the socket received
(TCP_INFO: the peer's bytes_sent - bytes_retrans + notsent_bytes >= the socket's
bytes_received - 1 for the FIN); until then the loop re-checks every millisecond, for at most
FLUSH_TIMEOUT. A reset closes both sockets at once (bytes still queued are lost, as with any
proxy that sees an RST).

usage: sockmap_relay.py [--workers N] LISTEN_HOST:PORT=TARGET_HOST:PORT ...
       (prints "ready (ATTACH_TYPE) PORT,...": the bound ports, for listeners given port 0)
       sockmap_relay.py --check         (correctness on loopback: HTTP-like close, sha256 bulk)
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import hashlib
import os
import platform
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
SYS_BPF = {"x86_64": 321, "aarch64": 280}[platform.machine()]
BPF_MAP_CREATE, BPF_MAP_UPDATE_ELEM, BPF_PROG_LOAD, BPF_PROG_ATTACH = 0, 2, 5, 8
BPF_MAP_TYPE_SOCKHASH, BPF_PROG_TYPE_SK_SKB = 18, 14
BPF_SK_SKB_STREAM_VERDICT, BPF_SK_SKB_VERDICT = 5, 38
BPF_FUNC_SK_REDIRECT_HASH = 72
BPF_PSEUDO_MAP_FD = 1
# struct __sk_buff (include/uapi/linux/bpf.h): fields sk_skb programs may read.
SKB_REMOTE_IP4, SKB_LOCAL_IP4, SKB_REMOTE_PORT, SKB_LOCAL_PORT = 92, 96, 132, 136
# struct tcp_info (include/uapi/linux/tcp.h), u64 fields.
TI_BYTES_RECEIVED, TI_NOTSENT, TI_BYTES_SENT, TI_BYTES_RETRANS, TI_SIZE = 128, 144, 200, 208, 232
SO_SNDBUFFORCE = 32
MAX_PAIRS = 32768
FLUSH_TIMEOUT = 5.0  # seconds a FIN waits for the peer to take the bytes before it


def bpf(cmd: int, attr: bytes) -> int:
    buf = ctypes.create_string_buffer(attr, 128)
    ret = _libc.syscall(SYS_BPF, cmd, buf, len(buf))
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"bpf({cmd}): {os.strerror(e)}")
    return int(ret)


def insn(op: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", op, src << 4 | dst, off, imm)


def verdict_program(peers_fd: int) -> bytes:
    """Empty skbs are dropped (below). Else r6 = skb; the key on the stack = remote_ip4,
    local_ip4, remote_port, local_port (16 bytes, as the kernel presents them: ports loaded
    as u32, see sock_key); return bpf_sk_redirect_hash(skb, peers, &key, 0): SK_PASS with the
    redirect set, or SK_DROP when the peer is gone (its socket closed)."""
    ldx_w, stx_w, mov_x, mov_k, add_k, jne_k = 0x61, 0x63, 0xBF, 0xB7, 0x07, 0x55
    code = [
        # A FIN arrives as an empty skb. Redirected, the peer's workqueue would send 0 bytes,
        # take that for a hard error (skmsg.c sk_psock_backlog), set EPIPE on the peer and
        # stop its transmit: drop it (the FIN itself is already in the TCP state).
        insn(ldx_w, 2, 1, 0),  # skb->len
        insn(jne_k, 2, 0, 2, 0),
        insn(mov_k, 0),  # SK_DROP
        insn(0x95),
        insn(mov_x, 6, 1),
    ]
    for i, off in enumerate((SKB_REMOTE_IP4, SKB_LOCAL_IP4, SKB_REMOTE_PORT, SKB_LOCAL_PORT)):
        code += [insn(ldx_w, 2, 6, off), insn(stx_w, 10, 2, -16 + 4 * i)]
    code += [
        insn(mov_x, 1, 6),
        insn(0x18, 2, BPF_PSEUDO_MAP_FD, 0, peers_fd),  # ld_imm64 r2 = map (two slots)
        insn(0),
        insn(mov_x, 3, 10),
        insn(add_k, 3, 0, 0, -16),
        insn(mov_k, 4),
        insn(0x85, 0, 0, 0, BPF_FUNC_SK_REDIRECT_HASH),  # call
        insn(0x95),  # exit: r0 is the helper's verdict
    ]
    return b"".join(code)


def sockhash() -> int:
    return bpf(BPF_MAP_CREATE, struct.pack("=5I", BPF_MAP_TYPE_SOCKHASH, 16, 4, MAX_PAIRS * 2, 0))


def load(code: bytes) -> int:
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(65536)
    attr = struct.pack(
        "=IIQQIIQ",
        BPF_PROG_TYPE_SK_SKB,
        len(code) // 8,
        ctypes.addressof(insns),
        ctypes.addressof(lic),
        1,  # log_level: the verifier's output if it refuses
        len(log),
        ctypes.addressof(log),
    )
    try:
        return bpf(BPF_PROG_LOAD, attr)
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror}; verifier: {log.value.decode()}") from None


def attach(map_fd: int, prog_fd: int) -> str:
    """BPF_SK_SKB_VERDICT (no strparser); STREAM_VERDICT on kernels without it."""
    for kind, name in ((BPF_SK_SKB_VERDICT, "skb_verdict"), (BPF_SK_SKB_STREAM_VERDICT, "stream")):
        try:
            bpf(BPF_PROG_ATTACH, struct.pack("=4I", map_fd, prog_fd, kind, 0))
            return name
        except OSError:
            continue
    raise OSError("BPF_PROG_ATTACH refused both verdict attach types")


def sock_key(local: tuple[str, int], remote: tuple[str, int]) -> bytes:
    """The verdict's key for a socket: remote_port is the network-order u16 shifted left 16
    (filter.c, little-endian), local_port the host-order u32."""
    return (
        socket.inet_aton(remote[0])
        + socket.inet_aton(local[0])
        + b"\0\0"
        + struct.pack("!H", remote[1])
        + struct.pack("=I", local[1])
    )


def update(map_fd: int, key: bytes, sock_fd: int) -> None:
    k = ctypes.create_string_buffer(key, 16)
    v = ctypes.create_string_buffer(struct.pack("=I", sock_fd), 4)
    bpf(
        BPF_MAP_UPDATE_ELEM,
        struct.pack("=IIQQQ", map_fd, 0, ctypes.addressof(k), ctypes.addressof(v), 0),
    )


@dataclass(eq=False)
class Side:
    sock: socket.socket
    key: bytes = b""
    active: bool = False  # the upstream: its connect is what completes the pair
    remote: tuple[str, int] = ("", 0)  # the upstream's target (no getpeername)
    peer: Side | None = None
    eof: bool = False  # FIN received
    shut: bool = False  # FIN forwarded to the peer (we shut its write side)
    since: float = 0.0  # when the FIN arrived, while it waits for the bytes before it


@dataclass
class Stats:
    pairs: int = 0
    failed: int = 0  # connect failed, reset, or a FIN that never saw its bytes flushed
    waits: int = 0  # FINs that had to wait for the workqueue
    forced: int = 0  # FINs forwarded after FLUSH_TIMEOUT (bytes may be missing)


@dataclass
class Relay:
    peers: int
    members: int
    ep: select.epoll = field(default_factory=select.epoll)
    # fd -> (listening socket, its address, the target)
    listeners: dict[int, tuple[socket.socket, tuple[str, int], tuple[str, int]]] = field(
        default_factory=dict
    )
    sides: dict[int, Side] = field(default_factory=dict)
    waiting: set[Side] = field(default_factory=set)
    stats: Stats = field(default_factory=Stats)
    sndbuf: int = 0  # SO_SNDBUFFORCE on both sockets; 0: autotuned

    def listen(self, sock: socket.socket, target: tuple[str, int]) -> None:
        self.listeners[sock.fileno()] = (sock, sock.getsockname(), target)
        self.ep.register(sock.fileno(), select.EPOLLIN | select.EPOLLEXCLUSIVE)

    def run(self) -> None:
        while True:
            for fd, mask in self.ep.poll(0.001 if self.waiting else -1):
                if fd in self.listeners:
                    self.accept(*self.listeners[fd])
                elif (side := self.sides.get(fd)) is not None:
                    self.event(side, mask)
            for side in list(self.waiting):
                self.forward_fin(side)

    def accept(
        self, listener: socket.socket, local: tuple[str, int], target: tuple[str, int]
    ) -> None:
        while True:
            try:
                conn, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # ECONNABORTED, EMFILE: the next connection may do better
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            up = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = up.connect_ex(target)
            if err not in (0, errno.EINPROGRESS):
                conn.close()
                up.close()
                self.stats.failed += 1
                continue
            if self.sndbuf:
                for s in (conn, up):
                    s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, self.sndbuf)
            client = Side(conn, sock_key(local, addr))
            upstream = Side(up, active=True, peer=client, remote=target)
            client.peer = upstream
            self.sides[conn.fileno()] = client
            self.sides[up.fileno()] = upstream
            self.ep.register(conn.fileno(), select.EPOLLRDHUP | select.EPOLLET)
            self.ep.register(up.fileno(), select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET)

    def event(self, side: Side, mask: int) -> None:
        peer = side.peer
        assert peer is not None
        if side.active and not side.key:  # the upstream's connect finished
            if mask & (select.EPOLLERR | select.EPOLLHUP):
                self.stats.failed += 1
                self.close(side)
                return
            try:
                self.link(peer, side)
            except OSError:  # a socket already closing (EOPNOTSUPP: not ESTABLISHED)
                self.stats.failed += 1
                self.close(side)
                return
        if mask & select.EPOLLERR:
            self.stats.failed += 1
            self.close(side)
        elif mask & (select.EPOLLRDHUP | select.EPOLLHUP) and not side.eof:
            side.eof, side.since = True, time.monotonic()
            self.forward_fin(side)

    def link(self, client: Side, upstream: Side) -> None:
        """Both sockets into `peers`, then into `members` (the verdict), then run the verdict
        over what either had queued before."""
        upstream.key = sock_key(upstream.sock.getsockname(), upstream.remote)
        for map_fd, pairs in (
            (self.peers, ((client, upstream), (upstream, client))),
            (self.members, ((client, client), (upstream, upstream))),
        ):
            for keyed, value in pairs:
                update(map_fd, keyed.key, value.sock.fileno())
        for s in (client, upstream):
            s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        self.ep.modify(upstream.sock.fileno(), select.EPOLLRDHUP | select.EPOLLET)
        self.stats.pairs += 1

    def forward_fin(self, side: Side) -> None:
        """shutdown(SHUT_WR) the peer once it has taken every byte `side` received."""
        peer = side.peer
        assert peer is not None
        try:
            got = struct.unpack_from("=Q", tcp_info(side.sock), TI_BYTES_RECEIVED)[0] - 1
            info = tcp_info(peer.sock)
            sent, retrans = struct.unpack_from("=QQ", info, TI_BYTES_SENT)
            taken = sent - retrans + struct.unpack_from("=I", info, TI_NOTSENT)[0]
        except OSError:
            self.close(side)
            return
        if taken < got and time.monotonic() - side.since < FLUSH_TIMEOUT:
            if side not in self.waiting:
                self.waiting.add(side)
                self.stats.waits += 1
            return
        if taken < got:
            self.stats.forced += 1
        self.waiting.discard(side)
        try:
            peer.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close(side)
            return
        side.shut = True
        if peer.shut:
            self.close(side)

    def close(self, side: Side) -> None:
        for s in (side, side.peer):
            if s is not None and self.sides.pop(s.sock.fileno(), None) is not None:
                self.waiting.discard(s)
                s.sock.close()  # leaves both maps (sock_map_close)


def tcp_info(sock: socket.socket) -> bytes:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TI_SIZE)


def parse(spec: str) -> tuple[tuple[str, int], tuple[str, int]]:
    listen, _, target = spec.partition("=")
    lh, _, lp = listen.rpartition(":")
    th, _, tp = target.rpartition(":")
    return (lh, int(lp)), (th, int(tp))


def serve(specs: list[str], workers: int, sndbuf: int) -> None:
    peers, members = sockhash(), sockhash()
    prog = load(verdict_program(peers))
    kind = attach(members, prog)
    relay = Relay(peers, members, sndbuf=sndbuf)
    for spec in specs:
        listen, target = parse(spec)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(listen)
        sock.listen(1024)
        sock.setblocking(False)
        relay.listen(sock, target)
    for _ in range(workers - 1):  # more processes on the same listeners, maps and program
        if os.fork() == 0:
            _libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG: die with the parent
            relay.ep = select.epoll()
            for fd in relay.listeners:
                relay.ep.register(fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
            break
    else:  # the bound ports, for listeners given port 0
        ports = ",".join(str(s.getsockname()[1]) for s, _, _ in relay.listeners.values())
        print(f"ready ({kind}) {ports}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (print(relay.stats, file=sys.stderr), os._exit(0)))
    relay.run()


# --check: correctness on loopback, the relay in a subprocess as the bench runs it.


def _http_target(listener: socket.socket, body: bytes) -> None:
    """Reads a request, answers with `body` and closes (bench/httpd.c's behaviour)."""
    while True:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


def _bulk_target(listener: socket.socket, results: list[str]) -> None:
    """Hashes every byte it receives, sends the digest back, closes."""
    while True:
        conn, _ = listener.accept()
        with conn:
            h = hashlib.sha256()
            while chunk := conn.recv(1 << 20):
                h.update(chunk)
            results.append(h.hexdigest())
            conn.sendall(h.hexdigest().encode())


def _banner_target(listener: socket.socket, banner: bytes) -> None:
    """Speaks first (SMTP, SSH, MySQL): its bytes reach the relay before the pair is linked."""
    while True:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(banner)
            conn.sendall(conn.recv(65536))


def check(requests: int, bulk_mib: int, transfers: int) -> int:
    targets = []
    body = os.urandom(3000)
    digests: list[str] = []
    banner = b"220 hello\r\n"
    for fn, arg in ((_http_target, body), (_bulk_target, digests), (_banner_target, banner)):
        t = socket.create_server(("127.0.0.1", 0), backlog=1024)
        targets.append(t.getsockname()[1])
        threading.Thread(target=fn, args=(t, arg), daemon=True).start()
    relay = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--workers",
            "1",
            *(f"127.0.0.1:0=127.0.0.1:{port}" for port in targets),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert relay.stdout is not None
        line = relay.stdout.readline()
        if "ready" not in line:
            print(f"relay did not start: {line!r} {relay.stderr.read() if relay.stderr else ''}")
            return 1
        print(line.strip())
        http_port, bulk_port, banner_port = (int(x) for x in line.split()[-1].split(","))
        want = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        bad = 0
        for _ in range(requests):
            with socket.create_connection(("127.0.0.1", http_port), timeout=10) as c:
                c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                got = b""
                try:
                    while chunk := c.recv(65536):
                        got += chunk
                except OSError:
                    pass
                bad += got != want
        print(f"request/response, close after the response: {bad} of {requests} wrong or cut")
        late = 0
        for _ in range(requests // 10):
            with socket.create_connection(("127.0.0.1", banner_port), timeout=10) as c:
                got = b""
                while len(got) < len(banner) and (chunk := c.recv(100)):
                    got += chunk
                c.sendall(b"QUIT\r\n")
                c.shutdown(socket.SHUT_WR)
                while chunk := c.recv(100):
                    got += chunk
                late += got != banner + b"QUIT\r\n"
        print(f"server speaks first: {late} of {requests // 10} wrong or cut")
        wrong = 0
        for _ in range(transfers):
            data = os.urandom(bulk_mib << 20)
            with socket.create_connection(("127.0.0.1", bulk_port), timeout=30) as c:
                c.sendall(data)
                c.shutdown(socket.SHUT_WR)
                reply = b""
                while chunk := c.recv(100):
                    reply += chunk
            wrong += reply.decode() != hashlib.sha256(data).hexdigest()
        print(f"bulk {bulk_mib} MiB, sha256 of every byte: {wrong} of {transfers} wrong")
        return 1 if bad or late or wrong else 0
    finally:
        relay.send_signal(signal.SIGTERM)
        _, err = relay.communicate(timeout=10)
        print(f"relay: {err.strip()}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, default=2, help="processes (bridgeport: one per CPU)")
    p.add_argument("--sndbuf", type=int, default=0, help="SO_SNDBUFFORCE bytes (an experiment)")
    p.add_argument("--check", action="store_true")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--transfers", type=int, default=5)
    p.add_argument("--mib", type=int, default=64)
    p.add_argument("spec", nargs="*")
    a = p.parse_args()
    if a.check:
        sys.exit(check(a.requests, a.mib, a.transfers))
    serve(a.spec, a.workers, a.sndbuf)


if __name__ == "__main__":
    main()
