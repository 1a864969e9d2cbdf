"""A real worker process (python -m bridgeport.proxy.worker) driven over its control channel
the way the agent's WorkerPool drives it, with sockets on 127.0.0.1.

Scenarios: an idle worker (listeners, a live TCP connection, a UDP flow, no pending connect)
sleeps in epoll_wait and is not woken at all, counted in context switches; a worker left with
no descriptor counts no accept error while no client waits, defers the client that comes
(counted, logged), keeps its live connection, and serves the deferred client once a
descriptor is free.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bridgeport.proxy import wire
from bridgeport.proxy.shared_counters import (
    ACTIVE,
    CONNECTIONS,
    ERROR_KINDS,
    FIRST_ERROR,
    Counters,
)
from tests.netns import wait_for
from tests.wakeups import context_switches

Target = tuple[str, int]
TIMEOUT = 20.0  # a bound on every blocking call, never a measurement
ACCEPT_ERRORS = FIRST_ERROR + ERROR_KINDS.index("accept")
# The production limits (the agent's defaults): far deadlines, as on a real node.
LIMITS = wire.Limits(idle_timeout=3600.0, udp_idle_timeout=90.0, connect_timeout=5.0)


class Worker:
    """One worker process, its control channel and its counters."""

    def __init__(self, limits: wire.Limits = LIMITS, prefix: tuple[str, ...] = ()) -> None:
        self.counters = Counters.create(workers=1)
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.control.settimeout(TIMEOUT)
        self.logs: list[dict[str, Any]] = []
        self._seq = 0
        argv = [
            *prefix, sys.executable, "-m", "bridgeport.proxy.worker", "--index", "0",
            "--workers", "1", "--control-fd", str(theirs.fileno()),
            "--counters-fd", str(self.counters.fd), *limits.argv(),
        ]  # fmt: skip
        try:
            self.proc = subprocess.Popen(
                argv, pass_fds=(theirs.fileno(), self.counters.fd), stdin=subprocess.DEVNULL
            )
        finally:
            theirs.close()

    def listen(self, listeners: list[tuple[socket.socket, Target]], first: int = 0) -> None:
        message: wire.Listen = {
            "op": "listen",
            "listeners": [
                {"slot": first + i, "target": list(target)}
                for i, (_, target) in enumerate(listeners)
            ],
        }
        socket.send_fds(self.control, [wire.encode(message)], [s.fileno() for s, _ in listeners])

    def sync(self) -> None:
        """A round trip: the worker has handled every earlier message (and is in its loop)."""
        self._seq += 1
        self.control.send(wire.encode({"op": "unlisten", "slots": [], "seq": self._seq}))
        while (message := self.receive())["op"] != "done" or message["seq"] != self._seq:
            pass

    def receive(self) -> wire.FromWorker:
        message = wire.from_worker(self.control.recv(1 << 16))
        if message["op"] == "log":
            self.logs.append(dict(message))
        return message

    def cell(self, slot: int, index: int) -> int:
        return int(self.counters.cells[self.counters.base(slot, 0) + index])

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def close(self) -> None:
        self.control.close()  # the worker's signal to exit
        try:
            self.proc.wait(TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.counters.close()


@pytest.fixture
def target() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(TIMEOUT)
        yield server


def tcp_listener() -> socket.socket:
    return socket.create_server(("127.0.0.1", 0))


def address(sock: socket.socket) -> Target:
    host, number = sock.getsockname()[:2]
    return str(host), int(number)


def connect(listener: socket.socket) -> socket.socket:
    return socket.create_connection(address(listener), timeout=TIMEOUT)


def round_trip(client: socket.socket, upstream: socket.socket, data: bytes) -> None:
    client.sendall(data)
    assert upstream.recv(len(data)) == data
    upstream.sendall(data)
    assert client.recv(len(data)) == data


IDLE_WINDOW = 5.0  # seconds watched; the old loop woke once a second (4-5 switches in it)
# Switches allowed: going back to sleep after the sync's reply (0 or 1 here), and a spare
# for being preempted on the way on a loaded machine.
IDLE_SLACK = 2


def test_idle_worker_is_never_woken(target: socket.socket) -> None:
    """A TCP and a UDP listener, one live idle TCP connection and one UDP flow: the worker's
    earliest deadlines (idle checks) are minutes away, so it sleeps through the window."""
    worker = Worker()
    udp_target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_target.bind(("127.0.0.1", 0))
    udp_target.settimeout(TIMEOUT)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(TIMEOUT)
    try:
        with tcp_listener() as listener:
            worker.listen([(listener, address(target)), (udp, address(udp_target))])
            worker.sync()
            with connect(listener) as tcp_client, target.accept()[0] as upstream:
                upstream.settimeout(TIMEOUT)
                round_trip(tcp_client, upstream, b"tcp")
                client.sendto(b"udp", address(udp))
                data, flow = udp_target.recvfrom(16)
                udp_target.sendto(data, flow)
                assert client.recv(16) == b"udp"
                worker.sync()
                assert worker.cell(0, ACTIVE) == worker.cell(1, ACTIVE) == 1
                before = context_switches(worker.proc.pid)
                time.sleep(IDLE_WINDOW)  # the observation window, not a wait for a condition
                woken = context_switches(worker.proc.pid) - before
                assert woken <= IDLE_SLACK, f"{woken} context switches in {IDLE_WINDOW:g}s"
                round_trip(tcp_client, upstream, b"still relayed")
    finally:
        for sock in (udp_target, udp, client):
            sock.close()
        worker.close()


def test_out_of_descriptors(target: socket.socket) -> None:
    """The worker's last two descriptors go to a client and its upstream: the accept that
    follows fails (EMFILE) with no client waiting, which is no error. The next client waits
    in the backlog, counted and logged once; the live connection keeps relaying; once it
    ends, the waiting client is served."""
    limit = 32
    worker = Worker(prefix=("prlimit", f"--nofile={limit}:{limit}"))
    spare: list[socket.socket] = []
    try:
        with tcp_listener() as listener:
            worker.listen([(listener, address(target))])
            worker.sync()
            # Fill the table but two descriptors: more listeners, which wait idle.
            spare = [tcp_listener() for _ in range(limit - 2 - worker.descriptors())]
            worker.listen([(s, address(target)) for s in spare], first=1)
            worker.sync()
            assert worker.descriptors() == limit - 2
            first = connect(listener)
            upstream, _ = target.accept()
            upstream.settimeout(TIMEOUT)
            round_trip(first, upstream, b"one")  # the worker has been through its loop again
            assert worker.descriptors() == limit
            assert worker.cell(0, ACCEPT_ERRORS) == 0, worker.logs
            second = connect(listener)  # the kernel completes the handshake; accept fails
            wait_for(lambda: worker.cell(0, ACCEPT_ERRORS) >= 1, what="the accept error")
            target.settimeout(0)
            with pytest.raises(BlockingIOError):  # no descriptor for its upstream either
                target.accept()
            target.settimeout(TIMEOUT)
            round_trip(first, upstream, b"live")
            worker.sync()
            assert [(m["slot"], m["kind"]) for m in worker.logs] == [(0, "accept")]
            assert "Too many open files" in worker.logs[0]["error"]
            first.close()
            upstream.close()  # the relay ends, its two descriptors free
            served, _ = target.accept()
            served.settimeout(TIMEOUT)
            round_trip(second, served, b"two")
            assert worker.cell(0, CONNECTIONS) == 2 and worker.cell(0, ACTIVE) == 1
            second.close()
            served.close()
    finally:
        for sock in spare:
            sock.close()
        worker.close()
