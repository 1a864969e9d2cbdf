"""A proxy worker process: relays TCP and UDP for the listening sockets the agent hands it.

    python -m bridgeport.proxy.worker --index I --workers N --control-fd F --counters-fd M ...

The agent binds every port itself (binding is how it claims a port and sees conflicts) and
passes the sockets over a SOCK_SEQPACKET control channel with SCM_RIGHTS (messages: wire.py).
Every worker gets every TCP listener; a UDP listener goes to one worker only (its flow table).

Counters go to shared memory (shared_counters.py), not messages. The worker exits when the control
channel closes, so it never outlives the agent. Standard library only, to keep each worker's
memory to little more than the interpreter's (bench/proxy/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import signal
import socket
import sys

from bridgeport.proxy import wire
from bridgeport.proxy.engine import Engine
from bridgeport.proxy.shared_counters import Counters

MAX_MESSAGE = 1 << 20
MAX_FDS = 200  # per message; the kernel allows 253 (SCM_MAX_FD)


def raise_fd_limit() -> None:
    """Every relayed connection holds 2 sockets and 4 pipe ends: lift the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.control = socket.socket(fileno=args.control_fd)
        self.counters = Counters(args.counters_fd, args.workers)
        self.engine = Engine(
            self.counters, args.index, wire.Limits.from_args(args), report=self.send
        )
        self.engine.watch(self.control.fileno(), self.on_control)

    def send(self, message: wire.Log) -> None:
        # Best effort for logs: a full channel drops the line, never blocks the relays.
        with contextlib.suppress(BlockingIOError, OSError):
            self.control.send(wire.encode(message), socket.MSG_DONTWAIT)

    def on_control(self) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(self.control, MAX_MESSAGE, MAX_FDS)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, fds = b"", []
        if not data:  # the agent is gone
            self.engine.stop()
            return
        message = wire.to_worker(data)
        if message["op"] == "listen":
            for spec, fd in zip(message["listeners"], fds, strict=True):
                self.engine.listen(
                    spec["slot"], socket.socket(fileno=fd), wire.target(spec["target"])
                )
        elif message["op"] == "retarget":
            self.engine.retarget(message["slot"], wire.target(message["target"]))
        elif message["op"] == "unlisten":
            for slot in message["slots"]:
                self.engine.unlisten(slot)
            self.control.send(wire.encode({"op": "done", "seq": message["seq"]}))

    def run(self) -> None:
        try:
            self.engine.run()
        finally:
            self.engine.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bridgeport.proxy.worker", description=__doc__)
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--control-fd", type=int, required=True)
    p.add_argument("--counters-fd", type=int, required=True)
    wire.Limits.add_arguments(p)
    args = p.parse_args(argv)
    # The agent decides when workers stop (by closing the channel); a terminal's Ctrl-C
    # reaches the whole process group and must not kill relays under a running agent.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_fd_limit()
    Worker(args).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
