"""`python -m bridgeport ARGS...` with tracemalloc on (a helper of cluster_scale.py).

When the file $TRACEMALLOC_OUT.go appears, the allocations still alive are written to
$TRACEMALLOC_OUT: the total, the top files and the top lines. A thread polls for the trigger
(a signal handler would wait for the event loop to run Python code).
"""

from __future__ import annotations

import os
import runpy
import sys
import threading
import time
import tracemalloc
from pathlib import Path

TOP = 15


def dump(out: Path) -> None:
    snap = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )
    lines = [
        f"traced {sum(s.size for s in snap.statistics('filename')) / 2**20:.1f} MiB "
        f"(peak {tracemalloc.get_traced_memory()[1] / 2**20:.1f} MiB)"
    ]
    for group in ("filename", "lineno"):
        lines.append(f"top {TOP} by {group}:")
        for s in snap.statistics(group)[:TOP]:
            frame = s.traceback[0]
            where = frame.filename.split("site-packages/")[-1].split("/operator/")[-1]
            where += f":{frame.lineno}" if group == "lineno" else ""
            lines.append(f"  {s.size / 2**20:8.1f} MiB {s.count:>9,} blocks  {where}")
    out.write_text("\n".join(lines) + "\n")


def watch(out: Path) -> None:
    trigger = Path(f"{out}.go")
    while not trigger.exists():
        time.sleep(0.2)
    dump(out)


def main() -> None:
    tracemalloc.start()
    out = Path(os.environ["TRACEMALLOC_OUT"])
    threading.Thread(target=watch, args=(out,), daemon=True).start()
    sys.argv = ["bridgeport", *sys.argv[1:]]
    runpy.run_module("bridgeport", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
