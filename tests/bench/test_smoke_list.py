"""Every script in bench/ is run by `make bench-smoke` or named as a helper of one that is.

bench/smoke.py refuses to run when the list is out of date; this checks the same thing in the
unit tests, so a new benchmark that was never listed fails `make unit`, not only CI's smoke run.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SMOKE = Path(__file__).resolve().parents[2] / "bench" / "smoke.py"


def test_every_bench_script_is_listed() -> None:
    spec = importlib.util.spec_from_file_location("bench_smoke", SMOKE)
    assert spec is not None and spec.loader is not None
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)
    listed = smoke.SMOKE.keys() | smoke.HELPERS.keys()
    assert sorted(smoke.scripts() - listed) == [], "add them to bench/smoke.py"
    assert sorted(listed - smoke.scripts()) == [], "listed in bench/smoke.py but gone"
