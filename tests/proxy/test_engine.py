"""The relay engine's copy and splice paths, with real sockets on 127.0.0.1.

The engine runs in a thread of the test process, so a test can drive both ends itself and
look at a relay's state: small exchanges are copied (no pipe taken); a direction switches to
splice once a read fills the copy buffer, mid-stream and with no byte lost; copied bytes the
client cannot take are held, the target's further bytes wait in its socket, and all arrive
in order once the client reads; half-closes after copied data pass on in both directions.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from bridgeport.proxy import engine as engine_module
from bridgeport.proxy import wire
from bridgeport.proxy.engine import Engine, Relay
from bridgeport.proxy.shared_counters import BYTES_IN, BYTES_OUT, Counters
from tests.netns import wait_for

TIMEOUT = 20.0  # a bound on every blocking call, never a measurement


@dataclass
class Ends:
    """One relayed connection: the client's socket, the target's, and the engine's relay."""

    engine: Engine
    client: socket.socket
    target: socket.socket
    relay: Relay

    def cell(self, index: int) -> int:
        return int(self.engine.cells[self.engine.counters.base(0, 0) + index])


@pytest.fixture
def relay(request: pytest.FixtureRequest) -> Iterator[Ends]:
    counters = Counters.create(workers=1, slots=2)
    limits = wire.Limits(max_connections=16, connect_timeout=2.0)
    engine = Engine(counters, 0, limits, report=lambda _: None)
    target_listener = socket.create_server(("127.0.0.1", 0))
    listener = socket.socket()
    # Accepted sockets inherit the listener's buffer sizes: a small send buffer toward the
    # client makes backpressure come after a few chunks rather than megabytes.
    if sndbuf := getattr(request, "param", 0):
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    engine.listen(0, listener, target_listener.getsockname()[:2])
    # The engine sleeps until an event: closing `stop` wakes it to stop, as a worker's
    # control channel does when the agent goes.
    stop, stopped = socket.socketpair()
    engine.watch(stopped.fileno(), engine.stop)
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()
    client = target = None
    try:
        client = socket.create_connection(listener.getsockname()[:2], timeout=TIMEOUT)
        target_listener.settimeout(TIMEOUT)
        target, _ = target_listener.accept()
        target.settimeout(TIMEOUT)
        wait_for(lambda: engine.acceptors[0].relays, what="the relay")
        yield Ends(engine, client, target, next(iter(engine.acceptors[0].relays)))
    finally:
        stop.close()
        thread.join(TIMEOUT)
        for sock in (client, target, target_listener, stopped):
            if sock is not None:
                sock.close()
        engine.close()
        counters.close()


def receive(sock: socket.socket, size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(min(size - got, 1 << 20))
        assert chunk, f"EOF after {got} of {size} bytes"
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def pattern(size: int, seed: bytes) -> bytes:
    blocks = (hashlib.sha256(seed + i.to_bytes(8, "big")).digest() for i in range(size // 32 + 1))
    return b"".join(blocks)[:size]


def test_small_exchange_is_copied(relay: Ends) -> None:
    """A request and its response are copied: neither direction takes a pipe."""
    relay.client.sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert receive(relay.target, 18) == b"GET / HTTP/1.1\r\n\r\n"
    relay.target.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
    assert receive(relay.client, 19) == b"HTTP/1.1 200 OK\r\n\r\n"
    assert [p.pipe for p in relay.relay.pumps] == [None, None]
    wait_for(lambda: (relay.cell(BYTES_IN), relay.cell(BYTES_OUT)) == (18, 19), what="counts")


def test_bulk_switches_to_splice_mid_stream(relay: Ends) -> None:
    """A small exchange is copied; a bulk download then fills the copy buffer and that
    direction splices from there on, every byte in order; the upload side still copies."""
    to_target, to_client = relay.relay.pumps
    relay.client.sendall(b"hello")
    assert receive(relay.target, 5) == b"hello"
    relay.target.sendall(b"hi")
    assert receive(relay.client, 2) == b"hi"
    assert [p.pipe for p in relay.relay.pumps] == [None, None], "both copied so far"
    size = 16 * engine_module.COPY_SIZE + 12345
    data = pattern(size, b"down")
    writer = threading.Thread(target=relay.target.sendall, args=(data,))
    writer.start()
    got = receive(relay.client, size)
    writer.join(TIMEOUT)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert to_client.pipe is not None, "a bulk direction splices"
    assert to_target.pipe is None, "the other direction still copies"
    relay.client.sendall(b"more")  # the copied direction is unaffected
    assert receive(relay.target, 4) == b"more"
    wait_for(lambda: relay.cell(BYTES_OUT) == 2 + size, what="every byte counted")


@pytest.mark.parametrize("relay", [8192], indirect=True)
def test_partial_send_under_backpressure(relay: Ends) -> None:
    """The client stops reading: a copied send falls short, the rest is held, the target's
    further bytes wait in its socket (nothing is read ahead), and once the client reads,
    everything arrives in order and counted."""
    to_client = relay.relay.pumps[1]
    relay.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    chunk, sent = 1000, 0
    # One short chunk at a time, each copied before the next is written, until a send
    # falls short: every read stays below the copy buffer, so the direction keeps copying.
    for _ in range(1000):
        relay.target.sendall(pattern(chunk, sent.to_bytes(8, "big")))
        sent += chunk
        wait_for(
            lambda: to_client.pending or relay.cell(BYTES_OUT) == sent,  # noqa: B023
            timeout=TIMEOUT,
            interval=0.001,
            what="the chunk copied or held",
        )
        if to_client.pending:
            break
    assert to_client.pending and to_client.pipe is None, "a copied send fell short"
    held_at = relay.cell(BYTES_OUT)
    for _ in range(5):  # these wait in the upstream socket: the relay reads no further
        relay.target.sendall(pattern(chunk, sent.to_bytes(8, "big")))
        sent += chunk
    assert relay.cell(BYTES_OUT) == held_at
    got = receive(relay.client, sent)
    expected = b"".join(pattern(chunk, i.to_bytes(8, "big")) for i in range(0, sent, chunk))
    assert got == expected
    wait_for(lambda: relay.cell(BYTES_OUT) == sent, what="every byte counted")
    assert to_client.pending == 0 and to_client.pipe is None


def test_client_half_close_after_copied_data(relay: Ends) -> None:
    """The client sends a request and shuts its write side: the target reads the request,
    then EOF, and its response still reaches the client, followed by EOF."""
    relay.client.sendall(b"request")
    relay.client.shutdown(socket.SHUT_WR)
    assert receive(relay.target, 7) == b"request"
    assert relay.target.recv(10) == b"", "the half-close reaches the target"
    relay.target.sendall(b"response")
    relay.target.close()
    assert receive(relay.client, 8) == b"response"
    assert relay.client.recv(10) == b""
    wait_for(lambda: not relay.engine.acceptors[0].relays, what="the relay to end")


def test_target_half_close_after_copied_data(relay: Ends) -> None:
    """The target sends its data and FIN together (a short read after EPOLLRDHUP ends that
    direction): the client gets the data, then EOF, and can still send to the target."""
    relay.target.sendall(b"banner")
    relay.target.shutdown(socket.SHUT_WR)
    assert receive(relay.client, 6) == b"banner"
    assert relay.client.recv(10) == b"", "the half-close reaches the client"
    relay.client.sendall(b"still talking")
    assert receive(relay.target, 13) == b"still talking"
    relay.client.close()
    assert relay.target.recv(10) == b""
    wait_for(lambda: not relay.engine.acceptors[0].relays, what="the relay to end")
