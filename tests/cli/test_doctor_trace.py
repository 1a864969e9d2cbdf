"""doctor's analysis and trace's parsing, on the kernel's own output shapes."""

from __future__ import annotations

import ipaddress
import struct

from bridgeport.core import doctor, trace
from bridgeport.core.report import Report

DOCKER_JSON = {
    "nftables": [
        {"table": {"family": "ip", "name": "filter", "handle": 1}},
        {
            "chain": {
                "family": "ip",
                "table": "filter",
                "name": "FORWARD",
                "handle": 1,
                "type": "filter",
                "hook": "forward",
                "prio": 0,
                "policy": "drop",
            }
        },
        {"chain": {"family": "ip", "table": "filter", "name": "DOCKER-USER", "handle": 2}},
        {
            "rule": {
                "family": "ip",
                "table": "filter",
                "chain": "FORWARD",
                "handle": 4,
                "expr": [
                    {
                        "match": {
                            "op": "==",
                            "left": {"meta": {"key": "oifname"}},
                            "right": "docker0",
                        }
                    },
                    {"counter": {"packets": 0, "bytes": 0}},
                    {"drop": None},
                ],
            }
        },
    ]
}
DOCKER_TEXT = """table ip filter { # handle 1
\tchain FORWARD { # handle 1
\t\ttype filter hook forward priority filter; policy drop;
\t\toifname "docker0" counter packets 3 bytes 180 drop # handle 4
\t}
}
"""


def view(**kw: object) -> doctor.NodeView:
    base: dict[str, object] = {
        "sysctls": {
            "net.ipv4.ip_forward": "1",
            "net.ipv6.conf.all.forwarding": "1",
            "net.bridge.bridge-nf-call-iptables": "1",
        },
        "ruleset": {"nftables": []},
        "ruleset_text": "",
    }
    return doctor.NodeView(**(base | kw))  # type: ignore[arg-type]


def test_docker_policy_drop_is_an_error_naming_the_chain() -> None:
    found = doctor.diagnose(view(ruleset=DOCKER_JSON, ruleset_text=DOCKER_TEXT))
    foreign = [f for f in found if f.check == "foreign"]
    assert [f.severity for f in foreign] == ["error", "info"]
    assert "(hook forward, Docker)" in foreign[0].message
    assert foreign[1].rule == 'oifname "docker0" counter drop'
    assert doctor.worst(found) == "error"


def test_missing_conntrack_and_br_netfilter() -> None:
    found = doctor.diagnose(
        view(
            sysctls={"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"},
            conntrack=False,
        )
    )
    by_check = {f.check: f.severity for f in found}
    assert by_check["conntrack"] == "error" and by_check["br_netfilter"] == "info"


def test_listener_on_a_published_range() -> None:
    ours = {
        "nftables": [
            {
                "map": {
                    "family": "ip",
                    "table": "bridgeport",
                    "name": "pub_any_range",
                    "elem": [
                        [
                            {"elem": {"val": {"concat": ["tcp", {"range": [9000, 9010]}]}}},
                            "10.0.0.2",
                        ]
                    ],
                }
            }
        ]
    }
    listeners = [
        doctor.Listener("tcp", "0.0.0.0", 9005, "nginx (pid 7)", False),
        doctor.Listener("tcp", "0.0.0.0", 9006, "python3 (pid 8)", True),
        doctor.Listener("udp", "0.0.0.0", 9005, "dnsmasq (pid 9)", False),
    ]
    found = [
        f for f in doctor.diagnose(view(ruleset=ours, listeners=listeners)) if f.check == "listener"
    ]
    assert len(found) == 1 and "nginx (pid 7)" in found[0].message


def test_nodestate_condition_from_the_findings() -> None:
    check = {
        "severity": "error",
        "since": "2026-01-01T00:00:00+00:00",
        "summary": "error: x",
        "findings": [{"check": "foreign", "severity": "error", "message": "x"}],
    }
    report = Report(
        node="n",
        agent_version="1",
        last_sync="t",
        last_sync_ms=1.0,
        table_digest="d",
        counts={},
        entries=(),
        node_check=check,
    )
    status, _ = report.status()
    assert report.document()["doctor"] == check
    assert status["conditions"][0]["type"] == "NodeHealthy"
    assert status["conditions"][0]["status"] == "False"
    assert status["findings"] == check["findings"]


def test_probe_packet_checksums_verify() -> None:
    for proto in ("tcp", "udp"):
        probe = trace.Probe(
            ipaddress.IPv4Address("192.0.2.2"),
            ipaddress.IPv4Address("192.0.2.1"),
            8080,
            proto,
            40000,
        )
        pkt = probe.packet()
        assert trace._checksum(pkt[:20]) == 0
        pseudo = pkt[12:20] + struct.pack("!BBH", 0, pkt[9], len(pkt) - 20)
        assert trace._checksum(pseudo + pkt[20:]) == 0


def test_trace_events_name_the_dropping_rule() -> None:
    events = """trace id 1a ip bridgeport_trace probe_in packet: iif "t" ip saddr 1.1.1.1
trace id 1a ip bridgeport prerouting rule fib daddr type local jump publish (verdict jump publish)
trace id 2b ip other x policy drop
trace id 1a inet firewalld filter_FORWARD rule reject with icmpx admin-prohibited (verdict drop)
"""
    result = trace.parse_events(events)
    assert result.verdict == "dropped" and result.by is not None
    assert result.by.where == "table inet firewalld chain filter_FORWARD"
    assert result.lines()[-1].startswith("DROPPED by table inet firewalld")
    delivered = trace.parse_events(
        'trace id 3 ip bridgeport_trace probe_end_forward rule iifname "t" drop (verdict drop)\n'
    )
    assert delivered.verdict == "delivered"


def test_tools_are_named_by_their_tables_and_chains() -> None:
    def chain(family: str, table: str, name: str, hook: str = "") -> dict[str, object]:
        c: dict[str, object] = {"family": family, "table": table, "name": name}
        if hook:
            c |= {"hook": hook, "type": "filter", "prio": 0, "policy": "drop"}
        return {"chain": c}

    ruleset = {
        "nftables": [
            chain("ip", "kube-proxy", "forward", "forward"),
            chain("ip", "filter", "FORWARD", "forward"),
            chain("ip", "filter", "cali-FORWARD"),
            chain("inet", "firewalld", "filter_FORWARD", "forward"),
            chain("ip", "mangle", "PREROUTING", "input"),
        ]
    }
    found = {
        f.message.split(" has policy")[0]: f.severity
        for f in doctor.diagnose(view(ruleset=ruleset))
        if f.check == "foreign"
    }
    assert found == {
        "table ip kube-proxy chain forward (hook forward, kube-proxy)": "error",
        "table ip filter chain FORWARD (hook forward, a CNI plugin)": "error",
        "table inet firewalld chain filter_FORWARD (hook forward, firewalld)": "error",
        "table ip mangle chain PREROUTING (hook input, another tool)": "warning",
    }
