"""The proxy's per-listener bounds are the agent's flags, not fixed defaults.

Scenario: an agent started with --proxy-max-connections 1, --proxy-connect-timeout 1.5 and
--proxy-max-udp-flows 1 publishes a TCP and a UDP port to an address on its bridge where no
container answers. A first TCP client waits on the proxy's connect; a second one, meanwhile,
is refused (connection_limit); the first is reset at 1.5 s (connect_timeout, where the kernel
would have given up on ARP at ~3 s: connect_unreachable). A second UDP client address/port
is dropped (udp_flow_limit). Each outcome is read from /metrics. Bad values are refused with
argparse's one-line error before anything starts.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.builders import network, publication
from tests.harness.node import Agent, lone_agent
from tests.netns import wait_for

pytestmark = pytest.mark.root

SCRAPE = (
    "import urllib.request\n"
    "print(urllib.request.urlopen('http://127.0.0.1:9102/metrics', timeout=20).read().decode())"
)
# Two TCP clients (the second while the first still waits), then two UDP clients (two
# source ports: two flows).
CLIENTS = """
import socket

def outcome(s):
    try:
        return "closed" if s.recv(1) == b"" else "data"
    except ConnectionResetError:
        return "reset"

first = socket.create_connection(("127.0.0.1", 18400), timeout=10)
second = socket.create_connection(("127.0.0.1", 18400), timeout=10)
print("second:", outcome(second))
print("first:", outcome(first))
for _ in range(2):
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", 18401))
"""


@pytest.fixture
def agent() -> Iterator[Agent]:
    with lone_agent("bpl") as agent:
        yield agent


def errors(agent: Agent) -> dict[str, float]:
    text = agent.node.run([sys.executable, "-c", SCRAPE]).stdout
    found: dict[str, float] = {}
    pattern = r'bridgeport_proxy_errors_total\{kind="(\w+)"[^}]*\} (\S+)'
    for kind, value in re.findall(pattern, text):
        found[kind] = found.get(kind, 0.0) + float(value)
    return found


def test_limit_flags_reach_the_workers(agent: Agent) -> None:
    agent.apply(
        network("n", "10.96.11.0/24", bridge="bp-lim"),
        publication("t", 18400, "10.96.11.9", 80),
        publication("u", 18401, "10.96.11.9", 53, protocol="UDP"),
    )
    agent.start(
        "--proxy-workers", "1",  # one worker: the two connections are accepted in order
        "--proxy-max-connections", "1",
        "--proxy-connect-timeout", "1.5",
        "--proxy-max-udp-flows", "1",
    )  # fmt: skip
    agent.wait({"n": "Applied", "t": "Applied", "u": "Applied"}, timeout=60)
    out = agent.node.run([sys.executable, "-c", CLIENTS], timeout=60).stdout
    assert "second: reset" in out, out  # refused (the metrics below say why)
    assert "first: reset" in out, out  # after the connect timeout
    wait_for(
        lambda: errors(agent).get("udp_flow_limit") == 1.0,
        timeout=10,
        what="the second UDP client counted as over the flow limit",
    )
    counted = errors(agent)
    assert counted.get("connection_limit") == 1.0, counted
    assert counted.get("connect_timeout") == 1.0, counted
    assert not counted.get("connect_unreachable"), counted


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--proxy-max-connections", "0"),
        ("--proxy-connect-timeout", "0"),
        ("--proxy-max-udp-flows", "many"),
        ("--proxy-max-connections-per-source", "-1"),
        ("--proxy-tcp-idle-timeout", "-5"),
        ("--udp-idle-timeout", "inf"),
    ],
)
def test_bad_limit_is_one_error_line(flag: str, value: str, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "bridgeport", "agent", "--source", f"dir:{tmp_path}"]
    out = subprocess.run(
        [*cmd, "--node-name", "n", f"{flag}={value}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2, out
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"bridgeport agent: error: argument {flag}"), out.stderr
