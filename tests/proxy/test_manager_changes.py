"""ProxyManager.sync told only what changed equals a whole sync (hypothesis, real sockets).

Each example runs in a network namespace of its own (a thread unshares one, so the ports are
private: wildcard and specific addresses may overlap as the kernel decides). Random edits to
the wanted listeners and claims (adds, deletes, new owners and targets, an address moving
between a claim and a listener, the same address named twice), with a "host process" taking
and freeing ports now and then. After every sync told the changes, a whole sync of the same
wanted sets must change nothing: the same reports (every status, the failures in order, the
listeners'), the same sockets (not one bound or closed anew), the same failures; and with
release, nothing of ours left bound that is not wanted.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import ipaddress
import socket
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridgeport.core.plan import Claim, ProxyKey, ProxyPort
from bridgeport.core.sockets import SocketChanges, SocketReports
from bridgeport.core.specs import Protocol, ResourceRef
from bridgeport.proxy.listener_status import ProxyStatus
from bridgeport.proxy.manager import ProxyManager

pytestmark = pytest.mark.root

CLONE_NEWNET = 0x40000000
ADDRESSES = ("0.0.0.0", "127.0.0.1", "127.0.0.2")
PORTS = (5001, 5002, 5003)
OWNERS = tuple(ResourceRef("PortPublication", "default", n) for n in ("a", "b", "c"))
TARGET = ipaddress.IPv4Address("127.0.0.9")


def in_private_netns(fn: Callable[[], Any]) -> Any:
    """fn() on a thread of its own in a new network namespace with lo up (the thread's
    sockets, and the threads it starts, live there; the namespace dies with them)."""
    out: dict[str, Any] = {}

    def body() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
            out["value"] = fn()
        except BaseException as exc:  # re-raised on the test's thread
            out["error"] = exc

    thread = threading.Thread(target=body, name="private-netns")
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), "the scenario hung"
    if "error" in out:
        raise out["error"]
    return out.get("value")


keys = st.tuples(st.sampled_from(ADDRESSES), st.sampled_from(PORTS))
# A step: ("claim" | "proxy", key, protocol, owner, target port) adds or replaces the
# socket(s) at that address; ("drop", key, protocol) removes them; ("twice", ...) adds a
# second listener at an address, ("drop-first", ...) removes the first listed there;
# ("hold" | "free", key, protocol): a host process takes / frees the port. Every step also
# says whether the sync releases.
protocols = st.sampled_from([Protocol.TCP, Protocol.UDP])
steps = st.one_of(
    st.tuples(
        st.just("claim"), keys, protocols, st.sampled_from(OWNERS), st.just(0), st.booleans()
    ),
    st.tuples(
        st.just("proxy"),
        keys,
        st.just(Protocol.UDP),  # UDP listeners: no TCP worker processes to start
        st.sampled_from(OWNERS),
        st.integers(7000, 7001),
        st.booleans(),
    ),
    st.tuples(st.just("drop"), keys, protocols, st.sampled_from(OWNERS), st.just(0), st.booleans()),
    st.tuples(
        st.just("twice"),
        keys,
        st.just(Protocol.UDP),
        st.sampled_from(OWNERS),
        st.just(0),
        st.booleans(),
    ),
    st.tuples(
        st.just("drop-first"),
        keys,
        st.just(Protocol.UDP),
        st.just(OWNERS[0]),
        st.just(0),
        st.booleans(),
    ),
    st.tuples(st.just("hold"), keys, protocols, st.just(OWNERS[0]), st.just(0), st.booleans()),
    st.tuples(st.just("free"), keys, protocols, st.just(OWNERS[0]), st.just(0), st.booleans()),
)


def changes_between(
    old_p: Sequence[ProxyPort],
    new_p: Sequence[ProxyPort],
    old_c: Sequence[Claim],
    new_c: Sequence[Claim],
) -> SocketChanges:
    """What the incremental planner hands over: the sockets that went and came."""

    def gone_came(old: Sequence[Any], new: Sequence[Any]) -> tuple[tuple[Any, ...], ...]:
        a, b = Counter(old), Counter(new)
        return tuple((a - b).elements()), tuple((b - a).elements())

    p_gone, p_came = gone_came(old_p, new_p)
    c_gone, c_came = gone_came(old_c, new_c)
    return SocketChanges(p_gone, p_came, c_gone, c_came)


def sockets_of(m: ProxyManager) -> tuple[dict[ProxyKey, Any], ...]:
    """What the manager holds, by identity: a rebind or a close shows."""
    return (
        {k: (id(lst), lst.port) for k, lst in m.listeners.items()},
        {k: (id(sock), owner) for k, (sock, owner) in m.held.items()},
        dict(m.failed),
    )


def reports_of(r: SocketReports[ProxyStatus]) -> tuple[Any, ...]:
    return dict(r), list(r.failed.items()), dict(r.served)


def hold(key: tuple[str, int], protocol: Protocol) -> socket.socket | None:
    kind = socket.SOCK_STREAM if protocol is Protocol.TCP else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_INET, kind)
    try:
        sock.bind(key)
    except OSError as exc:
        sock.close()
        assert exc.errno == errno.EADDRINUSE, exc
        return None  # ours, or another holder's: nothing taken
    return sock


async def scenario(script: list[tuple[Any, ...]]) -> None:
    m = ProxyManager(workers=1)
    proxies: list[ProxyPort] = []
    claims: list[Claim] = []
    holders: dict[tuple[tuple[str, int], Protocol], socket.socket] = {}
    try:
        await m.sync([], [])
        for op, (address, port), protocol, owner, target_port, release in script:
            listen = ipaddress.IPv4Address(address)
            key = ProxyKey(address, port, protocol)
            old_p, old_c = list(proxies), list(claims)
            if op == "hold" and ((address, port), protocol) not in holders:
                sock = hold((address, port), protocol)
                if sock is not None:
                    holders[(address, port), protocol] = sock
            elif op == "free" and ((address, port), protocol) in holders:
                holders.pop(((address, port), protocol)).close()
            elif op == "claim":
                claims = [c for c in claims if c.key != key]
                claims.append(Claim(listen, port, protocol, owner))
            elif op in ("proxy", "twice"):
                if op == "proxy":
                    proxies = [p for p in proxies if p.key != key]
                port_ = ProxyPort(listen, port, protocol, TARGET, target_port, owner, "loopback")
                if port_ not in proxies:
                    proxies.append(port_)
            elif op == "drop-first":  # the first listed there: a second one may remain
                first = next((p for p in proxies if p.key == key), None)
                if first is not None:
                    proxies.remove(first)
            elif op == "drop":
                proxies = [p for p in proxies if p.key != key]
                claims = [c for c in claims if c.key != key]
            # As the plan lists them.
            proxies.sort(key=lambda p: (p.key, int(p.target), p.target_port, p.owner))
            claims.sort(key=lambda c: c.key)
            changes = changes_between(old_p, proxies, old_c, claims)
            told = await m.sync(proxies, claims, release=release, changes=changes)
            after_told = sockets_of(m)
            whole = await m.sync(proxies, claims, release=release)
            assert reports_of(told) == reports_of(whole), (op, key)
            assert sockets_of(m) == after_told, (op, key)
            if release:  # nothing of ours is bound that is not wanted
                wanted = {p.key for p in proxies}
                assert set(m.listeners) <= wanted
                assert set(m.held) <= {c.key for c in claims} - wanted
    finally:
        for sock in holders.values():
            sock.close()
        await m.close()


@settings(max_examples=60, deadline=None)
@given(st.lists(steps, max_size=30))
def test_told_changes_equal_a_whole_sync(script: list[tuple[Any, ...]]) -> None:
    in_private_netns(lambda: asyncio.run(asyncio.wait_for(scenario(script), 60)))


def test_a_told_change_touches_only_its_sockets() -> None:
    """Among 2,000 claims, one added: the told sync looks at that one (and the failures),
    binds it, and leaves the others' reports as they were."""

    async def main() -> None:
        m = ProxyManager(workers=1)
        owner = OWNERS[0]
        claims = [Claim(TARGET, 10000 + i, Protocol.TCP, owner) for i in range(2000)]
        try:
            first = await m.sync([], claims)
            assert len(first) == 2000 and not first.failed
            looked: list[ProxyKey] = []
            hold_one = m._hold

            async def counting(key: ProxyKey, claim: Claim) -> ProxyStatus:
                looked.append(key)
                return await hold_one(key, claim)

            m._hold = counting  # type: ignore[method-assign]
            new = Claim(TARGET, 9999, Protocol.TCP, OWNERS[1])
            told = await m.sync([], [new, *claims], changes=SocketChanges(claims_added=(new,)))
            assert looked == [new.key]
            assert told[new.key] == ProxyStatus("listening", OWNERS[1])
            assert len(told) == 2001 and not told.failed and not told.served
            gone = await m.sync([], claims, changes=SocketChanges(claims_removed=(new,)))
            assert new.key not in gone and new.key not in m.held and looked == [new.key]
        finally:
            await m.close()

    in_private_netns(lambda: asyncio.run(asyncio.wait_for(main(), 60)))
