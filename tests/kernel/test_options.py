"""Docker 28/29's bridge-driver options (issue 13), with real packets.

Scenarios:
- hostBinding: a publication without hostIP answers only on the network's binding address;
  a 127.0.0.1 binding answers on the node's loopback only, not from outside
"""

from __future__ import annotations

import pytest

from tests.kernel.conftest import CLIENT_IP, NODE_IP, NODE_IP2, World, network, publication

pytestmark = pytest.mark.kernel


def test_host_binding(w: World) -> None:
    """hostBinding 192.0.2.11 / 127.0.0.1 is the hostIP of publications that name none."""
    w.agent.apply(network("pub", "10.98.1.0/24", bridge="bp-pub", hostBinding=NODE_IP2),
                  network("loc", "10.98.2.0/24", bridge="bp-loc", hostBinding="127.0.0.1"),
                  publication("web", 8080, "10.98.1.2", 80),
                  publication("admin", 9000, "10.98.2.2", 80))
    w.agent.wait({"pub": "Applied", "loc": "Applied", "web": "Applied", "admin": "Applied"})
    web = w.container("bp-pub", "10.98.1.2/24", "10.98.1.1")
    admin = w.container("bp-loc", "10.98.2.2/24", "10.98.2.1")
    w.serve(web, "--tcp", "80")
    w.serve(admin, "--tcp", "80")
    assert w.ask(w.client, "tcp", NODE_IP2, 8080) == f"{CLIENT_IP} 80"
    assert w.ask(w.client, "tcp", NODE_IP, 8080, timeout=1).startswith("ERR")
    assert w.ask(w.node, "tcp", "127.0.0.1", 9000).endswith(" 80")
    assert w.ask(w.client, "tcp", NODE_IP, 9000, timeout=1).startswith("ERR")
    assert w.ask(w.node, "tcp", NODE_IP, 9000, timeout=1).startswith("ERR")
