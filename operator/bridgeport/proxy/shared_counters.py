"""Proxy counters in shared memory: each worker adds to its own cells, the agent sums.

One memfd holds an int64 array laid out [slot][worker][cell]. A listener's cells are
adjacent, so only the pages of slots in use are ever touched (the file is sparse). Each
worker writes only its own cells, so there are no locks; the agent reads them at scrape time
(always current, no messages), and workers read each other's `active` cells to hold one
connection limit per listener across all of them. A UDP listener lives in one worker: its
ACTIVE cell counts live flows, CONNECTIONS the flows created.

After the listeners, each worker has SOURCE_BUCKETS cells counting live connections per
(listener, source address) bucket (a CRC of both): the per-source limit sums one bucket over
the workers. Two sources in one bucket share a limit, which errs on the strict side.

Imports nothing beyond the standard library: the worker process stays small.
"""

from __future__ import annotations

import mmap
import os
import zlib

CONNECTIONS, ACTIVE, BYTES_IN, BYTES_OUT = range(4)
ERROR_KINDS = (
    "accept",
    "connection_limit",
    "connect",
    "connect_refused",
    "connect_timeout",
    "connect_unreachable",
    "reset",
    "internal",
    "source_limit",
    "idle_timeout",
    # UDP (datagram.py)
    "udp_flow_limit",
    "target_unreachable",
    "receive",
    "dropped",
)
FIRST_ERROR = 4  # index of the first error cell: FIRST_ERROR + ERROR_KINDS.index(kind)
WIDTH = FIRST_ERROR + len(ERROR_KINDS)
SLOTS = 1 << 16  # listeners per agent (TCP and UDP): every port of one family and then some
SOURCE_BUCKETS = 1 << 14


class Counters:
    def __init__(self, fd: int, workers: int, slots: int = SLOTS) -> None:
        self.fd, self.workers, self.slots = fd, workers, slots
        self._sources = slots * workers * WIDTH  # first per-source cell
        size = (self._sources + workers * SOURCE_BUCKETS) * 8
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)
        self._map = mmap.mmap(fd, size)  # MAP_SHARED: the same pages in every process
        self.cells = memoryview(self._map).cast("q")

    @classmethod
    def create(cls, workers: int, slots: int = SLOTS) -> Counters:
        return cls(os.memfd_create("bridgeport-proxy-counters", os.MFD_CLOEXEC), workers, slots)

    def base(self, slot: int, worker: int) -> int:
        return (slot * self.workers + worker) * WIDTH

    def active(self, slot: int) -> int:
        """Live connections of a listener over all workers."""
        cells, start = self.cells, self.base(slot, 0)
        return sum(cells[start + w * WIDTH + ACTIVE] for w in range(self.workers))

    @staticmethod
    def bucket(slot: int, source: str) -> int:
        return zlib.crc32(f"{slot} {source}".encode()) % SOURCE_BUCKETS

    def source_cell(self, bucket: int, worker: int) -> int:
        return self._sources + worker * SOURCE_BUCKETS + bucket

    def source_active(self, bucket: int) -> int:
        """Live connections of one (listener, source) bucket over all workers."""
        cells, start = self.cells, self._sources + bucket
        return sum(cells[start + w * SOURCE_BUCKETS] for w in range(self.workers))

    def totals(self, slot: int) -> list[int]:
        """Every cell of a listener, summed over the workers."""
        start = self.base(slot, 0)
        row = self.cells[start : start + self.workers * WIDTH]
        return [sum(row[i::WIDTH]) for i in range(WIDTH)]

    def clear(self, slot: int) -> None:
        start = self.base(slot, 0)
        for i in range(start, start + self.workers * WIDTH):
            self.cells[i] = 0

    def worker_gone(self, worker: int, slots: list[int]) -> None:
        """A worker exited: its connections went with it, its totals stay counted."""
        for slot in slots:
            self.cells[self.base(slot, worker) + ACTIVE] = 0
        start = self.source_cell(0, worker)
        for i in range(start, start + SOURCE_BUCKETS):
            self.cells[i] = 0

    def close(self) -> None:
        self.cells.release()
        self._map.close()
        os.close(self.fd)
