"""Per-publication counters: the rendered declarations and the parsing of nft's JSON."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

from bridgeport.adapters.pubcounters import Key, PublicationCollector, Traffic, parse_listing
from bridgeport.core import planner, ruleset
from bridgeport.core.plan import NodeFacts
from bridgeport.core.specs import parse
from tests.builders import API


def _elem(val: Any, owner: str, packets: int, nbytes: int) -> dict[str, Any]:
    return {
        "elem": {"val": val, "comment": owner, "counter": {"packets": packets, "bytes": nbytes}}
    }


def test_parse_adds_dnat_connections_and_count_set_packets() -> None:
    totals: dict[Key, Traffic] = {}
    parse_listing(
        {
            "nftables": [
                {"metainfo": {}},
                {
                    "map": {
                        "name": "pub_any",
                        "elem": [
                            [
                                _elem({"concat": ["tcp", 80]}, "default/web", 3, 180),
                                {"concat": ["10.0.0.2", 80]},
                            ],
                        ],
                    }
                },
                {
                    "map": {
                        "name": "pub_host_range",
                        "elem": [
                            [
                                _elem(
                                    {"concat": ["192.0.2.1", "udp", {"range": [53, 54]}]},
                                    "ns/dns",
                                    2,
                                    60,
                                ),
                                "10.0.0.3",
                            ],
                        ],
                    }
                },
            ]
        },
        totals,
    )
    parse_listing(
        {
            "nftables": [
                {
                    "set": {
                        "name": "cnt_any",
                        "elem": [
                            _elem({"concat": ["tcp", 80]}, "default/web", 10, 1000),
                            _elem({"concat": ["tcp", 81]}, "not-a-publication-key", 10, 1000),
                        ],
                    }
                }
            ]
        },
        totals,
    )
    assert totals == {
        Key("default", "web", "TCP"): Traffic(connections=3, packets=13, bytes=1180),
        Key("ns", "dns", "UDP"): Traffic(connections=2, packets=2, bytes=60),
    }


def test_collector_sums_proxy_listeners_per_publication() -> None:
    key = Key("default", "web", "TCP")
    collector = PublicationCollector(
        lambda: {key: Traffic(1, 5, 300)},
        lambda: [(key, Traffic(2, 0, 10)), (key, Traffic(1, 0, 5))],
    )
    samples = {
        (f.name, s.labels["path"]): s.value
        for f in collector.collect()
        for s in f.samples
        if s.name.endswith("_total")
    }
    assert samples == {
        ("bridgeport_publication_connections", "kernel"): 1,
        ("bridgeport_publication_packets", "kernel"): 5,
        ("bridgeport_publication_bytes", "kernel"): 300,
        ("bridgeport_publication_connections", "proxy"): 3,
        ("bridgeport_publication_bytes", "proxy"): 15,
    }


def test_counters_off_renders_no_counting_state() -> None:
    doc = {
        "apiVersion": API,
        "kind": "PortPublication",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"hostPort": 8080, "target": {"address": "10.0.0.2", "port": 80}},
    }
    facts = NodeFacts(
        name="n",
        labels={},
        addresses=frozenset({ip_address("192.0.2.1")}),
        ipv4_forwarding=True,
        ipv6_forwarding=True,
    )
    plan = planner.plan([parse(doc)], facts)
    on, off = ruleset.render(plan)[0].text(), ruleset.render(plan, counters=False)[0].text()
    assert "counter;" in on and "chain count_in" in on and "set cnt_any" in on
    assert "counter;" not in off and "count_" not in off and "cnt_" not in off
