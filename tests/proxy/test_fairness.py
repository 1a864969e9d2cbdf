"""Proxy fairness (issue 11, case 10): one client cannot take a listener from the others.

Scenarios: a client address at its TCP connection limit is reset while another address is
served, and the refusal is counted; an idle TCP connection is reset after the idle timeout
and counted; a UDP flood from many ports of one address keeps only that address's newest
flows, so another client still gets a flow and its replies.
"""

from __future__ import annotations

import json
import select

import pytest

from tests.netns import wait_for
from tests.proxy.conftest import NODE, NODE_UP, World, port

pytestmark = pytest.mark.root


def test_tcp_per_source_limit(w: World) -> None:
    d = w.driver("--max-tcp-per-source", "2")
    d.sync(port(NODE, 8095))
    for _ in range(2):  # the node's own address is one source
        w.start(w.node, "stuck", NODE, 8095)
    labels = {"listen": NODE, "port": "8095"}
    wait_for(
        lambda: d.metric("bridgeport_proxy_active_connections", **labels) == 2,
        what="two held connections",
    )
    assert w.ask(w.node, "refused", NODE, 8095)["outcome"] in ("ConnectionResetError", "eof")
    assert d.metric("bridgeport_proxy_errors_total", kind="source_limit") == 1
    assert w.ask(w.client, "hello", NODE, 8095)["reply"] == f"hello from target {NODE_UP}"
    assert "per-source limit" in d.logs()


def test_tcp_idle_timeout(w: World) -> None:
    d = w.driver("--tcp-idle-timeout", "0.5")
    d.sync(port("127.0.0.1", 8097))
    client = w.start(w.node, "idle", "127.0.0.1", 8097)
    assert client.stdout is not None
    ready, _, _ = select.select([client.stdout], [], [], 60)
    assert ready, "the idle connection was never closed"
    assert json.loads(client.stdout.readline())["outcome"] in ("ConnectionResetError", "eof")
    wait_for(
        lambda: d.metric("bridgeport_proxy_errors_total", kind="idle_timeout") == 1,
        what="the idle reset counted",
    )
    assert w.ask(w.node, "hello", "127.0.0.1", 8097)["reply"] == f"hello from target {NODE_UP}"


def test_udp_flood_from_one_source(w: World) -> None:
    d = w.driver("--max-udp-flows", "8", "--max-udp-flows-per-source", "4")
    d.sync(port(NODE, 8096, "UDP"))
    for i in range(10):  # ten client ports of one address (the old table filled at 8)
        assert None not in w.ask(w.node, "datagrams", NODE, 8096, f"n{i}", 1)["replies"]
    labels = {"listen": NODE, "port": "8096"}
    assert d.metric("bridgeport_proxy_udp_flows", **labels) == 4
    assert d.metric("bridgeport_proxy_errors_total", kind="source_limit") == 6
    got = w.ask(w.client, "datagrams", NODE, 8096, "other", 2)
    assert None not in got["replies"], got
    assert got["sources"] == [NODE]  # from the address the client sent to
