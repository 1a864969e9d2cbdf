"""The proxy with real sockets: driver in a node netns, targets in another, veth between.

Scenarios: TCP via 127.0.0.1 and [::1]; 100 MiB each way hashed at both ends; half-close;
UDP from two clients at once; UDP flows expiring after a short idle timeout; wildcard UDP
replies leaving from the address the client dialled (v4 and v6 secondary addresses); a host
process holding the port (PortInUse, and it keeps its traffic); removal frees the port;
privileged port without CAP_NET_BIND_SERVICE; address not on the node; retarget without
rebinding; 1,000 listeners (setup time and RSS printed); refused and unreachable targets;
a stuck client not blocking others; TCP connection and UDP flow limits; a killed worker is
replaced while the other serves; workers exit with the agent, freeing the port; a worker out
of file descriptors defers clients and recovers; UDP relayed by one worker while the agent is
stopped (SIGSTOP); a killed UDP worker's listener handed to its replacement.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.netns import TOOLS, wait_for
from tests.proxy.conftest import (
    NODE,
    NODE2,
    NODE6,
    NODE6_2,
    NODE_UP,
    OTHER_TCP,
    TARGET6,
    World,
    port,
)

pytestmark = pytest.mark.root
UP = {"state": "listening", "reason": "", "message": "", "owner": "default/web"}


def test_tcp_loopback_v4_and_v6(w: World) -> None:
    """127.0.0.1 and [::1] listeners both reach the IPv4 target; a v6 target works too."""
    d = w.driver()
    statuses = d.sync(port("127.0.0.1", 8080), port("::1", 8080), port("::1", 8180, target=TARGET6))
    assert statuses == {"127.0.0.1:8080/TCP": UP, "[::1]:8080/TCP": UP, "[::1]:8180/TCP": UP}
    assert w.ask(w.node, "hello", "127.0.0.1", 8080)["reply"] == f"hello from target {NODE_UP}"
    assert w.ask(w.node, "hello", "::1", 8080)["reply"] == f"hello from target {NODE_UP}"
    assert w.ask(w.node, "hello", "::1", 8180)["reply"] == "hello from target fd00:2::1"
    labels = {"listen": "127.0.0.1", "port": "8080", "protocol": "TCP", "owner": "default/web"}
    wait_for(lambda: d.metric("bridgeport_proxy_active_connections", **labels) == 0)
    assert d.metric("bridgeport_proxy_connections_total", **labels) == 1
    assert d.metric("bridgeport_proxy_bytes_total", direction="client_to_target", **labels) == 6


def test_large_transfer_integrity(w: World) -> None:
    """100 MiB up and 100 MiB down through the proxy arrive byte for byte (sha256)."""
    d = w.driver()
    d.sync(port("127.0.0.1", 8080))
    up = w.ask(w.node, "upload", "127.0.0.1", 8080, 100)
    assert up["sent"] == up["received"] and up["bytes"] == 100 << 20
    down = w.ask(w.node, "download", "127.0.0.1", 8080, 100, 5)
    assert down["expected"] == down["received"] and down["bytes"] == 100 << 20
    assert d.metric("bridgeport_proxy_bytes_total") >= 200 << 20


def test_half_close(w: World) -> None:
    """The client shuts its write side; the target sees EOF and the reply still comes back."""
    d = w.driver()
    d.sync(port("127.0.0.1", 8080))
    got = w.ask(w.node, "halfclose", "127.0.0.1", 8080)
    assert got["sha256"] == got["expected"] and got["bytes"] == len("half-closed")


def test_udp_two_clients_at_once(w: World) -> None:
    """Two concurrent UDP clients each get exactly their own replies."""
    d = w.driver()
    assert d.sync(port("127.0.0.1", 8081, "UDP"))["127.0.0.1:8081/UDP"]["state"] == "listening"
    client = [sys.executable, str(TOOLS / "peer_client.py"), "datagrams", "127.0.0.1", "8081"]
    procs = [w.node.popen([*client, tag, "200"]) for tag in ("alpha", "beta")]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    for tag, out in zip(("alpha", "beta"), outs, strict=True):
        replies = json.loads(out)["replies"]
        assert replies == [
            f"target {NODE_UP}:{_port(r)} {tag}-{i}" for i, r in enumerate(replies)
        ], replies[:3]
    assert d.metric("bridgeport_proxy_udp_flows", port="8081") == 2


def test_udp_flows_expire(w: World) -> None:
    """With a 0.5 s idle timeout, a flow disappears and the next datagram opens a new one."""
    d = w.driver("--udp-idle-timeout", "0.5")
    d.sync(port("127.0.0.1", 8081, "UDP"))
    assert w.ask(w.node, "datagrams", "127.0.0.1", 8081, "x", 3)["replies"][2].endswith("x-2")
    assert d.metric("bridgeport_proxy_udp_flows") == 1
    wait_for(lambda: d.metric("bridgeport_proxy_udp_flows") == 0, timeout=5, what="expiry")
    w.ask(w.node, "datagrams", "127.0.0.1", 8081, "y", 1)
    assert d.metric("bridgeport_proxy_connections_total") == 2


@pytest.mark.parametrize(
    ("listen", "dialled"), [("0.0.0.0", NODE), ("0.0.0.0", NODE2), ("::", NODE6), ("::", NODE6_2)]
)
def test_udp_wildcard_replies_from_dialled_address(w: World, listen: str, dialled: str) -> None:
    """A wildcard UDP listener answers from the (secondary) address the client sent to."""
    d = w.driver()
    d.sync(port(listen, 8082, "UDP"))
    got = w.ask(w.client, "datagrams", dialled, 8082, "w", 2)
    assert got["sources"] == [dialled] and None not in got["replies"]


def test_port_in_use_by_host_process(w: World) -> None:
    """A host process listening first: PortInUse naming the address; it keeps its traffic."""
    w.serve(w.node, "--name", "host", "--tcp", "127.0.0.1:8090", "--udp", "127.0.0.1:8091")
    d = w.driver()
    statuses = d.sync(
        port("127.0.0.1", 8090), port("127.0.0.1", 8091, "UDP"), port("127.0.0.1", 8092)
    )
    for where in ("127.0.0.1:8090/TCP", "127.0.0.1:8091/UDP"):
        assert statuses[where]["state"] == "failed"
        assert statuses[where]["reason"] == "PortInUse"
        assert where in statuses[where]["message"]
    assert statuses["127.0.0.1:8092/TCP"]["state"] == "listening"
    assert w.ask(w.node, "hello", "127.0.0.1", 8090)["reply"] == "hello from host 127.0.0.1"
    assert w.ask(w.node, "datagrams", "127.0.0.1", 8091, "h", 1)["replies"][0].startswith("host ")
    assert d.metric("bridgeport_proxy_listener_up", port="8090") == 0
    assert d.metric("bridgeport_proxy_listener_up", port="8092") == 1


def test_removal_frees_the_port(w: World) -> None:
    """After a port leaves `desired`, its live connection ends and a plain bind succeeds."""
    d = w.driver()
    d.sync(port("127.0.0.1", 8083), port("127.0.0.1", 8083, "UDP"))
    held = w.start(w.node, "stuck", "127.0.0.1", 8083)
    wait_for(lambda: d.metric("bridgeport_proxy_active_connections", port="8083") == 1)
    assert d.sync() == {}
    code = (
        "import socket\nfor t in (socket.SOCK_STREAM, socket.SOCK_DGRAM):\n"
        "    s = socket.socket(socket.AF_INET, t); s.bind(('127.0.0.1', 8083))\n"
    )
    w.node.run(["python3", "-c", code])
    held.kill()


def test_privileged_port_without_capability(w: World) -> None:
    """Without CAP_NET_BIND_SERVICE, port 80 fails with PermissionDenied; 8080 still binds."""
    d = w.driver(prefix=("setpriv", "--bounding-set", "-net_bind_service"))
    statuses = d.sync(port("127.0.0.1", 80), port("127.0.0.1", 8080))
    assert statuses["127.0.0.1:80/TCP"]["reason"] == "PermissionDenied"
    assert "CAP_NET_BIND_SERVICE" in statuses["127.0.0.1:80/TCP"]["message"]
    assert statuses["127.0.0.1:8080/TCP"]["state"] == "listening"


def test_address_not_on_node(w: World) -> None:
    """Binding an address the node does not have fails with AddressNotAvailable."""
    d = w.driver()
    status = d.sync(port("192.0.2.99", 8080))["192.0.2.99:8080/TCP"]
    assert status["reason"] == "AddressNotAvailable" and "192.0.2.99" in status["message"]


def test_retarget_keeps_the_socket(w: World) -> None:
    """A new target for the same key changes where connections go, not the bound socket."""
    d = w.driver()
    d.sync(port("127.0.0.1", 8086))
    before = _inode(w, 8086)
    assert w.ask(w.node, "hello", "127.0.0.1", 8086)["reply"].startswith("hello from target")
    d.sync(port("127.0.0.1", 8086, target_port=OTHER_TCP, owner="default/moved"))
    assert w.ask(w.node, "hello", "127.0.0.1", 8086)["reply"].startswith("hello from other")
    assert _inode(w, 8086) == before
    assert d.metric("bridgeport_proxy_listener_up", owner="default/moved") == 1


def test_thousand_listeners(w: World) -> None:
    """1,000 listeners (500 TCP + 500 UDP) in one process: setup time and RSS printed."""
    d = w.driver()
    base = d.rss_kib()
    ports = [port("127.0.0.1", 20000 + i, "TCP" if i % 2 else "UDP") for i in range(1000)]
    setup = d.call({"sync": ports})
    assert all(s["state"] == "listening" for s in setup["statuses"].values())
    rss = d.rss_kib()
    assert w.ask(w.node, "hello", "127.0.0.1", 20999)["reply"].startswith("hello from target")
    assert w.ask(w.node, "datagrams", "127.0.0.1", 20998, "k", 1)["replies"][0].endswith("k-0")
    resync = d.call({"sync": ports})["seconds"]
    teardown = d.call({"sync": []})["seconds"]
    print(
        f"\n1000 listeners: setup {setup['seconds']:.3f}s, resync {resync:.3f}s, "
        f"teardown {teardown:.3f}s, RSS {base / 1024:.1f} -> {rss / 1024:.1f} MiB "
        f"(+{(rss - base) / 1024:.1f} MiB)"
    )


def test_refused_and_unreachable_targets(w: World) -> None:
    """Dead targets reset the client promptly, count an error, log the publication; the
    other ports keep serving."""
    d = w.driver("--connect-timeout", "1")
    d.sync(
        port("127.0.0.1", 8080),
        port("127.0.0.1", 8084, target_port=7999, owner="default/dead"),
        port("127.0.0.1", 8085, target="192.0.2.77", owner="default/gone"),
    )
    refused = w.ask(w.node, "refused", "127.0.0.1", 8084)
    assert refused["outcome"] in ("ConnectionResetError", "eof") and refused["seconds"] < 1
    timed_out = w.ask(w.node, "refused", "127.0.0.1", 8085)
    assert timed_out["outcome"] in ("ConnectionResetError", "eof")
    assert timed_out["seconds"] < 3
    assert (
        d.metric("bridgeport_proxy_errors_total", kind="connect_refused", owner="default/dead") == 1
    )
    assert (
        d.metric("bridgeport_proxy_errors_total", kind="connect_timeout", owner="default/gone") == 1
    )
    logs = d.logs()
    assert re.search(
        r'"publication": "default/dead".*connect_refused|'
        r'connect_refused.*"publication": "default/dead"',
        logs,
    ), logs[-2000:]
    assert w.ask(w.node, "hello", "127.0.0.1", 8080)["reply"].startswith("hello from target")


def test_stuck_client_does_not_block_others(w: World) -> None:
    """A client that never reads a 1 GB reply does not delay another client's transfer."""
    d = w.driver()
    d.sync(port("127.0.0.1", 8080))
    w.start(w.node, "stuck", "127.0.0.1", 8080)
    time.sleep(0.5)  # let the stuck direction fill its pipe and socket buffers
    start = time.monotonic()
    down = w.ask(w.node, "download", "127.0.0.1", 8080, 20, 9)
    assert down["expected"] == down["received"]
    print(f"\n20 MiB beside a stuck client: {time.monotonic() - start:.2f}s")
    # Backpressure: what the stuck connection pulled from the target stays bounded.
    stuck = d.metric("bridgeport_proxy_bytes_total", direction="target_to_client") - (20 << 20)
    assert stuck < 64 << 20


def test_tcp_connection_limit(w: World) -> None:
    """Beyond max_tcp_connections, new clients are reset and the error is counted."""
    d = w.driver("--max-tcp-connections", "1")
    d.sync(port("127.0.0.1", 8080))
    w.start(w.node, "stuck", "127.0.0.1", 8080)
    # The kernel completes the handshake before a worker accepts and counts the connection:
    # the next client must come after it is counted, or it would take the one slot itself.
    wait_for(
        lambda: d.metric("bridgeport_proxy_active_connections") == 1,
        timeout=15,
        what="the stuck connection counted",
    )
    assert w.ask(w.node, "refused", "127.0.0.1", 8080)["outcome"] in ("ConnectionResetError", "eof")
    assert d.metric("bridgeport_proxy_errors_total", kind="connection_limit") == 1


def test_udp_flow_limit(w: World) -> None:
    """A full flow table drops datagrams of new clients and logs a clear warning."""
    d = w.driver("--max-udp-flows", "1")
    d.sync(port("127.0.0.1", 8081, "UDP"))
    assert None not in w.ask(w.node, "datagrams", "127.0.0.1", 8081, "a", 2)["replies"]
    assert w.ask(w.node, "datagrams", "127.0.0.1", 8081, "b", 1)["replies"] == [None]
    assert d.metric("bridgeport_proxy_errors_total", kind="udp_flow_limit") >= 1
    assert "flow table full" in d.logs()


def _inode(w: World, number: int) -> str:
    out = w.node.run(f"ss -Hltne sport = :{number}").stdout
    match = re.search(r"ino:(\d+)", out)
    assert match, out
    return match.group(1)


def _port(reply: Any) -> str:
    assert reply is not None
    return str(reply.split()[1].rpartition(":")[2])


def _workers(d: Any) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-P", str(d.proc.pid)], capture_output=True, text=True, check=False
    ).stdout
    return [int(pid) for pid in out.split()]


def test_killed_worker_is_restarted(w: World) -> None:
    """A worker killed mid-service: the other keeps serving, a new one takes its place with
    every listener, the restart is counted and logged."""
    d = w.driver("--workers", "2")
    d.sync(port("127.0.0.1", 8093))
    wait_for(lambda: len(_workers(d)) == 2)
    first, second = _workers(d)
    os.kill(first, signal.SIGKILL)
    for _ in range(20):  # served throughout by the survivor, then by both
        assert w.ask(w.node, "hello", "127.0.0.1", 8093)["reply"].startswith("hello from target")
    wait_for(lambda: d.metric("bridgeport_proxy_workers") == 2, timeout=10)
    assert d.metric("bridgeport_proxy_worker_restarts_total") == 1
    assert second in _workers(d) and first not in _workers(d)
    assert "proxy worker exited, restarting it" in d.logs()
    for _ in range(20):
        assert w.ask(w.node, "hello", "127.0.0.1", 8093)["reply"].startswith("hello from target")


def test_workers_exit_with_the_agent(w: World) -> None:
    """SIGKILL to the agent: its workers exit on their own and the port is free again."""
    d = w.driver("--workers", "2")
    d.sync(port("127.0.0.1", 8094))
    wait_for(lambda: len(_workers(d)) == 2)
    workers = _workers(d)
    d.proc.kill()
    d.proc.wait(5)
    wait_for(
        lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers),
        timeout=10,
        what="workers to exit",
    )
    w.node.run(["python3", "-c", "import socket; socket.create_server(('127.0.0.1', 8094))"])


def test_out_of_file_descriptors(w: World) -> None:
    """A worker out of file descriptors defers or resets new clients, counts and logs it,
    keeps its live connections, and serves again once descriptors are free."""
    limit = 40
    d = w.driver("--workers", "1", prefix=("prlimit", f"--nofile={limit}:{limit}"))
    d.sync(port("127.0.0.1", 8095))
    # Not w.start(): a client refused for lack of descriptors is reset and never says ready.
    # A relayed client holds 2 sockets, and a pipe only if its bulk data came while one could
    # be had (else it copies): limit / 2 clients need more than the worker has, whatever the
    # timing, as the worker holds descriptors of its own.
    held = [
        w.node.popen([sys.executable, str(TOOLS / "peer_client.py"), "stuck", "127.0.0.1", "8095"])
        for _ in range(limit // 2)
    ]
    wait_for(
        lambda: d.metric("bridgeport_proxy_errors_total", kind="accept") >= 1,
        timeout=30,
        what="an accept error",
    )
    # The count is in shared memory at once; the warning reaches the agent as a message.
    wait_for(lambda: "proxy accept failed" in d.logs(), what="the accept warning")
    wait_for(
        lambda: d.metric("bridgeport_proxy_active_connections", port="8095") >= 1,
        what="some clients served",
    )
    assert d.metric("bridgeport_proxy_active_connections", port="8095") < len(held)
    for proc in held:
        proc.kill()
        proc.wait()
    wait_for(
        lambda: d.metric("bridgeport_proxy_active_connections", port="8095") == 0,
        timeout=15,
        what="the held connections to end",
    )
    assert w.ask(w.node, "hello", "127.0.0.1", 8095)["reply"].startswith("hello from target")


def _holders(w: World, number: int, protocol: str = "u") -> set[int]:
    """The processes holding the listening socket(s) on port `number` (ss -p)."""
    out = w.node.run(f"ss -H{protocol}lnp sport = :{number}").stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}


def test_udp_relayed_while_the_agent_is_stopped(w: World) -> None:
    """A UDP listener is held by the agent and exactly one worker (TCP: by every worker).
    With the agent stopped (SIGSTOP), that worker answers every datagram, for a client seen
    before and for new ones: the agent's own work never stalls UDP."""
    d = w.driver("--workers", "2")
    d.sync(port("127.0.0.1", 8098, "UDP"), port("127.0.0.1", 8099))
    wait_for(lambda: len(_workers(d)) == 2)
    workers = set(_workers(d))
    # Handed over once each worker took its messages: TCP to both, UDP to one.
    wait_for(lambda: _holders(w, 8099, "t") == {d.proc.pid, *workers}, what="TCP handed over")
    wait_for(lambda: len(_holders(w, 8098)) == 2, what="the UDP socket handed to a worker")
    assert len(_holders(w, 8098) & workers) == 1 and d.proc.pid in _holders(w, 8098)
    client = [sys.executable, str(TOOLS / "peer_client.py"), "datagrams", "127.0.0.1", "8098"]
    seen = w.node.popen([*client, "before", "1"])
    assert None not in json.loads(seen.communicate(timeout=30)[0])["replies"]
    os.kill(d.proc.pid, signal.SIGSTOP)
    try:
        procs = [w.node.popen([*client, tag, "50"]) for tag in ("alpha", "beta")]
        for tag, proc in zip(("alpha", "beta"), procs, strict=True):
            replies = json.loads(proc.communicate(timeout=120)[0])["replies"]
            assert replies == [
                f"target {NODE_UP}:{_port(r)} {tag}-{i}" for i, r in enumerate(replies)
            ], replies[:3]
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)
    assert d.metric("bridgeport_proxy_connections_total", port="8098", protocol="UDP") == 3
    assert d.metric("bridgeport_proxy_udp_flows", port="8098") == 3


def test_killed_udp_worker_hands_over_its_listener(w: World) -> None:
    """Two UDP listeners go to two workers. The worker relaying one is killed: its flows are
    gone (counted so), and its replacement is handed the listener and answers again."""
    d = w.driver("--workers", "2", "--udp-idle-timeout", "600")
    d.sync(port("127.0.0.1", 8098, "UDP"), port("127.0.0.1", 8088, "UDP"))
    wait_for(
        lambda: len(_holders(w, 8098)) == len(_holders(w, 8088)) == 2,
        what="each UDP socket handed to a worker",
    )
    (owner,) = _holders(w, 8098) - {d.proc.pid}
    assert owner not in _holders(w, 8088)
    assert None not in w.ask(w.node, "datagrams", "127.0.0.1", 8098, "a", 2)["replies"]
    assert d.metric("bridgeport_proxy_udp_flows", port="8098") == 1
    os.kill(owner, signal.SIGKILL)
    wait_for(lambda: d.metric("bridgeport_proxy_worker_restarts_total") == 1, timeout=10)
    wait_for(
        lambda: len(_holders(w, 8098) - {d.proc.pid, owner}) == 1,
        timeout=10,
        what="the replacement to hold the UDP socket",
    )
    assert d.metric("bridgeport_proxy_udp_flows", port="8098") == 0
    assert None not in w.ask(w.node, "datagrams", "127.0.0.1", 8098, "b", 2)["replies"]
    assert d.metric("bridgeport_proxy_udp_flows", port="8098") == 1
    assert d.metric("bridgeport_proxy_connections_total", port="8098") == 2
