"""Log setup: libraries stay at their own level, whatever ours is (issue 9: pyroute2 at DEBUG
printed every netlink message, tens of thousands of lines a minute on a busy node)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog

from bridgeport import log


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {lib: logging.getLogger(lib).level for lib in log.LIBRARIES}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for lib, lib_level in levels.items():
        logging.getLogger(lib).setLevel(lib_level)
    structlog.reset_defaults()


def emit() -> None:
    # pyroute2 sets its logger to NOTSET when imported, after our setup: do the same here.
    logging.getLogger("pyroute2").setLevel(logging.NOTSET)
    logging.getLogger("pyroute2.netlink.core").debug("get: 0 / None")
    logging.getLogger("kopf.objects").info("Handler succeeded")
    logging.getLogger("pyroute2.netlink.core").warning("netlink trouble")
    structlog.get_logger("bridgeport.agent").debug("reconciled")


def test_library_debug_stays_out_of_our_debug(capsys: pytest.CaptureFixture[str]) -> None:
    log.setup("DEBUG", json=True)
    emit()
    err = capsys.readouterr().err
    assert "reconciled" in err
    assert "netlink trouble" in err  # warnings still come through
    assert "get: 0 / None" not in err
    assert "Handler succeeded" not in err


def test_library_debug_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    log.setup("INFO", json=True, library_level="DEBUG")
    emit()
    err = capsys.readouterr().err
    assert "get: 0 / None" in err
    assert "Handler succeeded" in err
    assert "reconciled" not in err  # ours stays at INFO


def test_unknown_library_level_is_refused() -> None:
    with pytest.raises(ValueError, match="LOUD"):
        log.setup("INFO", json=True, library_level="LOUD")
