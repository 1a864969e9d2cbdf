"""inotify on one directory, through libc (ctypes: no dependency): says *when* the directory
source should rescan, so an idle agent sleeps instead of polling.

The stat scan stays the source of truth; this only wakes it. It watches the directory's
entries (created, deleted, written, renamed, chmod: a ConfigMap's `..data` swap is a rename
there) and the directory itself (deleted or moved: the watch is dropped and added again on
the path). What it cannot see, a symlinked file changed at its target outside the directory,
the caller's slower rescan catches.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Callable

_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
_IN_ONLYDIR = 0x01000000
# An entry modified, chmod'ed, closed after writing, moved out or in, created, deleted.
_ENTRIES = 0x2 | 0x4 | 0x8 | 0x40 | 0x80 | 0x100 | 0x200
_SELF_GONE = 0x400 | 0x800 | 0x8000  # DELETE_SELF, MOVE_SELF, IGNORED (the watch was removed)
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


class DirWatch:
    """Calls `wake` when an entry of the watched directory changes. `watch(path)` (re)adds
    the watch when it is gone and says whether one is in place; without one (no inotify, the
    directory missing, the watch limit reached), the caller polls."""

    def __init__(self) -> None:
        self.fd, self.wd = -1, -1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            self._init1, self._add, self._rm = (
                libc.inotify_init1,
                libc.inotify_add_watch,
                libc.inotify_rm_watch,
            )
        except (OSError, AttributeError):  # not Linux, or no libc to call
            return
        self._add.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        self.fd = self._init1(_IN_NONBLOCK | _IN_CLOEXEC)

    def watch(self, path: str) -> bool:
        if self.fd < 0:
            return False
        if self.wd < 0:
            self.wd = self._add(self.fd, os.fsencode(path), _ENTRIES | _SELF_GONE | _IN_ONLYDIR)
        return self.wd >= 0

    def read(self, wake: Callable[[], None]) -> None:
        """The fd is readable: consume every event, note a lost watch, wake once."""
        events = False
        while True:
            try:
                data = os.read(self.fd, 64 * 1024)
            except OSError:  # EAGAIN: all read
                break
            events = events or bool(data)
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size + length
                # Only the current watch's: an IGNORED left over from a removed one must not
                # take down the watch added since.
                if mask & _SELF_GONE and wd == self.wd >= 0:
                    self._rm(self.fd, self.wd)  # a moved directory would stay watched
                    self.wd = -1
        if events:
            wake()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = self.wd = -1
