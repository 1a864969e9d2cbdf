"""Atomic JSON state file: write to a temporary file in the same directory, then rename."""


from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

# mkstemp's names: the prefix, then 8 characters of [a-z0-9_].
_TEMP_SUFFIX = re.compile(r"^[a-z0-9_]{8}$")


def write_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_temporaries(path: Path) -> int:
    """Remove temporary files an interrupted write_atomic left (kill -9 mid-write); at start,
    before anything writes. Returns how many."""
    prefix = f".{path.name}."
    removed = 0
    try:
        candidates = [p for p in path.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return 0
    for candidate in candidates:
        if _TEMP_SUFFIX.match(candidate.name[len(prefix):]) and candidate.is_file():
            candidate.unlink(missing_ok=True)
            removed += 1
    return removed
