"""The metrics port: a taken one is one clear error line naming the flag (issue 11, case 9);
an idle one does not wake its process.

Scenarios: the controller and the agent, each started where another process holds its
metrics port (in a throwaway namespace), exit non-zero with one `error:` line on stderr
that names --metrics-port, and no traceback. A process serving /metrics with nothing else
to do makes (almost) no context switches in a few seconds, and still answers a scrape.
"""

from __future__ import annotations

import sys
import time

import pytest

from tests.netns import netns
from tests.wakeups import context_switches

pytestmark = pytest.mark.root

HOLD = (
    "import socket, sys\n"
    "s = socket.socket(); s.bind(('0.0.0.0', 9102)); s.listen(1); print('ready', flush=True)\n"
    "sys.stdin.read()\n"
)


@pytest.mark.parametrize(
    "command",
    [
        ["controller", "--no-peering", "--health-port", "0"],
        ["agent", "--source", "dir:/nonexistent", "--node-name", "n", "--no-proxy"],
    ],
)
def test_taken_metrics_port_is_one_error_line(command: list[str]) -> None:
    with netns("bpm") as ns:
        holder = ns.popen([sys.executable, "-c", HOLD], stdin=-1)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        result = ns.run(
            [sys.executable, "-m", "bridgeport", *command, "--metrics-port", "9102"],
            check=False,
            timeout=60,
        )
        assert result.returncode == 1, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert "--metrics-port" in lines[0] and "9102" in lines[0]


SERVE = (
    "import sys\n"
    "from bridgeport.metrics import REGISTRY, serve\n"
    "serve(9102, REGISTRY); print('ready', flush=True)\n"
    "sys.stdin.read()\n"
)
SCRAPE = (
    "import urllib.request\n"
    "print(urllib.request.urlopen('http://127.0.0.1:9102/metrics', timeout=20).read().decode())"
)
IDLE_WINDOW = 3.0  # seconds watched; prometheus_client's own server woke twice a second
IDLE_SLACK = 2  # switches allowed (the threads settling after `ready`)


def test_idle_metrics_server_sleeps() -> None:
    with netns("bpm") as ns:
        server = ns.popen([sys.executable, "-c", SERVE], stdin=-1)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        assert (
            "bridgeport_reconcile_duration_seconds" in ns.run([sys.executable, "-c", SCRAPE]).stdout
        )
        before = context_switches(server.pid)
        time.sleep(IDLE_WINDOW)  # the observation window, not a wait for a condition
        woken = context_switches(server.pid) - before
        assert woken <= IDLE_SLACK, f"{woken} context switches in {IDLE_WINDOW:g}s"
        assert (
            "bridgeport_reconcile_duration_seconds" in ns.run([sys.executable, "-c", SCRAPE]).stdout
        )
