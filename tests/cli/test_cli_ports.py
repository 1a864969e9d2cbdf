"""A taken metrics port is one clear error line naming the flag (issue 11, case 9).

Scenarios: the controller and the agent, each started where another process holds its
metrics port (in a throwaway namespace), exit non-zero with one `error:` line on stderr
that names --metrics-port, and no traceback.
"""

from __future__ import annotations

import sys

import pytest

from tests.netns import netns

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
