"""Per-publication counters: real packets through the agent's rules, read back from /metrics.

- UDP: every query is a new flow of exactly two packets (the query DNATed, the reply), so the
  kernel counters must say connections == queries and packets == 2 x queries, exactly.
- TCP on a host-IP publication and on a port range: counted under their own owner, replies
  included, nothing counted for a publication that saw no traffic.
- The proxy path: a connection to 127.0.0.1 shows up under the same metric with path="proxy".
"""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.builders import network, publication
from tests.harness.node import NODE_IP, NODE_IP2, World

pytestmark = pytest.mark.root

NET = network("net-c", "10.99.3.0/24", bridge="bp-c")


def publication_metrics(w: World) -> dict[tuple[str, str, str, str], float]:
    """{(metric, name, protocol, path): value} for bridgeport_publication_* (namespace default)."""
    text = w.node.run("curl -sf http://127.0.0.1:9102/metrics").stdout
    out: dict[tuple[str, str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("bridgeport_publication_"):
            continue
        for s in family.samples:
            if s.name.endswith("_total"):
                assert s.labels["namespace"] == "default"
                out[
                    (
                        family.name.removeprefix("bridgeport_publication_"),
                        s.labels["name"],
                        s.labels["protocol"],
                        s.labels["path"],
                    )
                ] = s.value
    return out


def test_kernel_counters_per_publication(w: World) -> None:
    w.agent.apply(
        NET,
        publication("dns", 8053, "10.99.3.2", 53, protocol="UDP"),
        publication("web-ip", 8080, "10.99.3.2", 80, hostIP=NODE_IP2),
        publication("range", 9000, "10.99.3.2", 9000, hostPortEnd=9001),
        publication("idle", 8090, "10.99.3.2", 80),
    )
    w.agent.wait(
        {
            "net-c": "Applied",
            "dns": "Applied",
            "web-ip": "Applied",
            "range": "Applied",
            "idle": "Applied",
        }
    )
    box = w.container("bp-c", "10.99.3.2/24", "10.99.3.1")
    w.serve(box, "--tcp", "80", "--tcp", "9001", "--udp", "53")
    for _ in range(3):
        assert w.ask(w.client, "udp", NODE_IP, 8053).endswith(" 53")
    for _ in range(2):
        assert w.ask(w.client, "tcp", NODE_IP2, 8080).endswith(" 80")
    assert w.ask(w.client, "tcp", NODE_IP, 9001).endswith(" 9001")
    m = publication_metrics(w)
    assert m[("connections", "dns", "UDP", "kernel")] == 3
    assert m[("packets", "dns", "UDP", "kernel")] == 6  # each query and its reply
    assert m[("bytes", "dns", "UDP", "kernel")] > 6 * 28  # IP + UDP headers at least

    assert m[("connections", "web-ip", "TCP", "kernel")] == 2
    # SYN, ACK, FIN, ACK from the client and SYN-ACK, data, FIN(-ACK) back, per connection:
    # more than the client's side alone can account for.
    assert m[("packets", "web-ip", "TCP", "kernel")] >= 2 * 6
    assert m[("connections", "range", "TCP", "kernel")] == 1
    assert m[("packets", "idle", "TCP", "kernel")] == 0
    assert m[("bytes", "idle", "TCP", "kernel")] == 0


def test_proxy_path_in_the_same_family(w: World) -> None:
    w.agent.apply(NET, publication("web", 8081, "10.99.3.2", 80))
    w.agent.wait({"net-c": "Applied", "web": "Applied"})
    box = w.container("bp-c", "10.99.3.2/24", "10.99.3.1")
    w.serve(box, "--tcp", "80")
    assert w.ask(w.node, "tcp", "127.0.0.1", 8081).endswith(" 80")
    m = publication_metrics(w)
    assert m[("connections", "web", "TCP", "proxy")] == 1
    assert m[("bytes", "web", "TCP", "proxy")] > 0
    assert m[("connections", "web", "TCP", "kernel")] == 0
