"""The agent's side of the proxy workers: spawn them, hand them listening sockets, keep them
alive.

Why processes: one Python event loop relaying short connections saturates a core while the
kernel work it drives needs more (bench/proxy/README.md); threads share one interpreter lock.
The agent still binds every port (port claims and conflicts stay in one place) and every
worker accepts on the same sockets (EPOLLEXCLUSIVE wakes one of them per connection), so the
number of processes does not grow with the number of ports.

A UDP listener goes to one worker only, the one with the fewest UDP listeners when it came:
its datagrams must all meet one flow table. The agent's event loop never relays, so its own
work (a big plan, a garbage collection) cannot stall traffic.

A worker that exits is restarted with a backoff and handed every listener again (TCP: all of
them, UDP: its own; their flows are gone); the others keep serving meanwhile. The listening
sockets never leave the agent, so no port is lost.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from bridgeport.proxy import wire
from bridgeport.proxy.shared_counters import SLOTS, Counters
from bridgeport.proxy.worker import MAX_FDS, MAX_MESSAGE

log = structlog.get_logger(__name__)
_ACK_TIMEOUT = 5.0  # a worker that cannot close its sockets in time is killed (and restarted)
_SEND_TIMEOUT = 5.0
_BACKOFF = (0.5, 30.0)  # restart delays: first, longest
_STABLE = 30.0  # a worker that lived this long restarts at the first delay again


def default_workers() -> int:
    """One worker per CPU the agent may run on, at most 4 (each costs memory: see
    bench/proxy/README.md)."""
    return max(1, min(len(os.sched_getaffinity(0)), 4))


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes]
    control: socket.socket
    started: float
    acks: dict[int, asyncio.Future[None]] = field(default_factory=dict)
    alive: bool = True


LogSink = Callable[[int, wire.Log], None]


class WorkerPool:
    def __init__(
        self,
        count: int,
        limits: wire.Limits,
        *,
        on_log: LogSink,
    ) -> None:
        self.count, self.limits = count, limits
        self.on_log = on_log
        self.counters = Counters.create(count)
        self.listening: dict[int, tuple[socket.socket, tuple[str, int]]] = {}  # by slot
        self.udp_owner: dict[int, int] = {}  # UDP listener slot -> the worker relaying it
        self._udp_load = [0] * count  # UDP listeners per worker
        self.workers: list[_Worker | None] = [None] * count
        self.restarts = 0
        self._seq = 0
        self._next_slot = 0
        self._free_slots: list[int] = []
        self._backoff = [_BACKOFF[0]] * count
        self._respawns: dict[int, asyncio.TimerHandle] = {}
        self._closing = False
        self._loop = asyncio.get_running_loop()
        for index in range(count):
            self._spawn(index)

    # -- slots and listeners -------------------------------------------------------------

    def allocate(self) -> int | None:
        """A counter slot for a new listener; None when all SLOTS are in use."""
        if self._free_slots:
            return self._free_slots.pop()
        if self._next_slot >= SLOTS:
            return None
        self._next_slot += 1
        return self._next_slot - 1

    def listen(self, slot: int, sock: socket.socket, target: tuple[str, int]) -> None:
        """Hand a listening socket to the workers: TCP to all, UDP to one (a dead one gets
        it when it restarts)."""
        self.listening[slot] = (sock, target)
        if sock.type == socket.SOCK_DGRAM and slot not in self.udp_owner:
            owner = self.udp_owner[slot] = self._udp_load.index(min(self._udp_load))
            self._udp_load[owner] += 1
        for worker in self._serving(slot):
            self._send_listeners(worker, [slot])

    def retarget(self, slot: int, target: tuple[str, int]) -> None:
        sock, _ = self.listening[slot]
        self.listening[slot] = (sock, target)
        for worker in self._serving(slot):
            self._send(worker, {"op": "retarget", "slot": slot, "target": list(target)})

    def _serving(self, slot: int) -> list[_Worker]:
        """The live workers that relay a listener."""
        owner = self.udp_owner.get(slot)
        return [w for w in self._live() if owner is None or w.index == owner]

    async def unlisten(self, slots: list[int]) -> None:
        """Every worker closes its copy of the sockets and resets their connections; the
        ports are free when this returns (the agent closes its own copies itself)."""
        if not slots:
            return
        for slot in slots:
            self.listening.pop(slot, None)
            if (owner := self.udp_owner.pop(slot, None)) is not None:
                self._udp_load[owner] -= 1
        waits = []
        for worker in self._live():
            self._seq += 1
            ack = worker.acks[self._seq] = self._loop.create_future()
            self._send(worker, {"op": "unlisten", "slots": slots, "seq": self._seq})
            waits.append((worker, ack))
        for worker, ack in waits:
            try:
                await asyncio.wait_for(asyncio.shield(ack), _ACK_TIMEOUT)
            except TimeoutError:
                log.error(
                    "proxy worker did not close its sockets in time, killing it",
                    worker=worker.index,
                    pid=worker.proc.pid,
                )
                worker.proc.kill()
            if not worker.alive or worker.proc.poll() is not None:
                await self._reap(worker)  # an exiting worker frees its sockets when it is gone
        for slot in slots:
            self.counters.clear(slot)
            self._free_slots.append(slot)

    def totals(self, slot: int) -> list[int]:
        return self.counters.totals(slot)

    def live_workers(self) -> int:
        return sum(1 for w in self.workers if w is not None and w.alive)

    # -- processes -----------------------------------------------------------------------

    def _live(self) -> list[_Worker]:
        return [w for w in self.workers if w is not None and w.alive]

    def _spawn(self, index: int) -> None:
        self._respawns.pop(index, None)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bridgeport.proxy.worker",
                    "--index",
                    str(index),
                    "--workers",
                    str(self.count),
                    "--control-fd",
                    str(theirs.fileno()),
                    "--counters-fd",
                    str(self.counters.fd),
                    *self.limits.argv(),
                ],
                pass_fds=(theirs.fileno(), self.counters.fd),
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            ours.close()
            log.error("proxy worker cannot start", worker=index, error=str(exc))
            self._schedule_respawn(index)
            return
        finally:
            theirs.close()
        ours.settimeout(_SEND_TIMEOUT)  # sends wait for a busy worker; reads happen when ready
        worker = _Worker(index, proc, ours, self._loop.time())
        self.workers[index] = worker
        self._loop.add_reader(ours.fileno(), self._on_message, worker)
        self._send_listeners(
            worker, [s for s in self.listening if self.udp_owner.get(s, index) == index]
        )

    def _send_listeners(self, worker: _Worker, slots: list[int]) -> None:
        for i in range(0, len(slots), MAX_FDS):
            batch = slots[i : i + MAX_FDS]
            message: wire.Listen = {
                "op": "listen",
                "listeners": [{"slot": s, "target": list(self.listening[s][1])} for s in batch],
            }
            fds = [self.listening[s][0].fileno() for s in batch]
            self._send(worker, message, fds)

    def _send(self, worker: _Worker, message: wire.ToWorker, fds: Sequence[int] = ()) -> None:
        try:
            socket.send_fds(worker.control, [wire.encode(message)], fds)
        except OSError as exc:  # gone or stuck: restarting it re-sends everything
            log.error(
                "proxy worker unreachable, restarting it",
                worker=worker.index,
                pid=worker.proc.pid,
                error=str(exc),
            )
            worker.proc.kill()
            self._gone(worker)

    def _on_message(self, worker: _Worker) -> None:
        try:
            data = worker.control.recv(MAX_MESSAGE)
        except (BlockingIOError, InterruptedError, TimeoutError):
            return
        except OSError:
            data = b""
        if not data:
            self._gone(worker)
            return
        message = wire.from_worker(data)
        if message["op"] == "done":
            ack = worker.acks.pop(message["seq"], None)
            if ack is not None and not ack.done():
                ack.set_result(None)
        elif message["op"] == "log":
            self.on_log(message["slot"], message)

    def _gone(self, worker: _Worker) -> None:
        """The worker's channel closed: its connections are gone; restart it unless closing."""
        if not worker.alive:
            return
        worker.alive = False
        self._loop.remove_reader(worker.control.fileno())
        worker.control.close()
        self.counters.worker_gone(worker.index, list(self.listening))
        for ack in worker.acks.values():  # its sockets close as it exits: see _reap
            if not ack.done():
                ack.set_result(None)
        if self._closing:
            return
        code = worker.proc.poll()
        if self._loop.time() - worker.started > _STABLE:
            self._backoff[worker.index] = _BACKOFF[0]
        log.error(
            "proxy worker exited, restarting it",
            worker=worker.index,
            pid=worker.proc.pid,
            code=code,
            delay=self._backoff[worker.index],
        )
        self.restarts += 1
        self._schedule_respawn(worker.index)

    def _schedule_respawn(self, index: int) -> None:
        delay = self._backoff[index]
        self._backoff[index] = min(delay * 2, _BACKOFF[1])
        self._respawns[index] = self._loop.call_later(delay, self._spawn, index)

    async def _reap(self, worker: _Worker) -> None:
        """Wait until the process is gone, and with it every socket it held."""
        self._gone(worker)
        if not await _exited(worker.proc, 2.0):
            worker.proc.kill()
            await _exited(worker.proc, 1.0)

    async def close(self) -> None:
        """Stop every worker (after unlisten() has reset their connections)."""
        self._closing = True
        for handle in self._respawns.values():
            handle.cancel()
        self._respawns.clear()
        workers = [w for w in self.workers if w is not None]
        for worker in workers:
            self._gone(worker)  # closing the channel is the worker's signal to exit
        for worker in workers:
            if not await _exited(worker.proc, 2.0):
                worker.proc.kill()
                await _exited(worker.proc, 1.0)
        self.counters.close()


async def _exited(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Poll (and so reap) the process without blocking the loop; True once it has exited."""
    for _ in range(int(timeout / 0.02)):
        if proc.poll() is not None:
            return True
        await asyncio.sleep(0.02)
    return proc.poll() is not None
