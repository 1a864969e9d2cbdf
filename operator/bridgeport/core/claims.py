"""Port claims: every address:port the kernel rules capture is first held by a socket of ours.

A DNAT element on hostIP:port (or on every local address, for a wildcard) would silently take
the traffic of a host process bound there. So before any element exists the agent owns a socket
on each captured address: the proxy's listener where one serves that address, otherwise a bound,
non-listening socket (as CRI-O holds host ports). A bind that fails means someone else is there,
and the publication loses (PortInUse) instead of shadowing them; a process that comes later gets
EADDRINUSE. Pure: this only decides which sockets; the proxy package holds them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import replace

from bridgeport.core.plan import Claim, Dnat, ProxyKey, ProxyPort
from bridgeport.core.specs import IPAddress, address_text

WILDCARD: dict[int, IPAddress] = {
    4: ipaddress.IPv4Address("0.0.0.0"),
    6: ipaddress.IPv6Address("::"),
}
LOOPBACK: dict[int, IPAddress] = {
    4: ipaddress.IPv4Address("127.0.0.1"),
    6: ipaddress.IPv6Address("::1"),
}
LOOPBACK_TEXT = {family: str(address) for family, address in LOOPBACK.items()}


def assign(
    dnats: Iterable[Dnat], proxies: Iterable[ProxyPort], userland_proxy: bool = True
) -> tuple[list[ProxyPort], list[Claim]]:
    """The proxies (with a wildcard DNAT's loopback listener widened to the wildcard, as
    docker-proxy binds 0.0.0.0) and the claims that cover every captured address:port."""
    by_key = {p.key: p for p in proxies} if userland_proxy else {}
    if not by_key:  # nothing to widen or hold: a claim for every captured address:port
        return [], [
            Claim(
                d.host_ip if d.host_ip is not None else WILDCARD[d.family],
                port,
                d.protocol,
                d.owner,
            )
            for d in dnats
            for port in range(d.port, d.port_end + 1)
        ]
    claims: list[Claim] = []
    for d in dnats:
        address = d.host_ip if d.host_ip is not None else WILDCARD[d.family]
        text = address_text(address)
        for port in range(d.port, d.port_end + 1):
            key = ProxyKey(text, port, d.protocol)
            if key in by_key:
                by_key[key] = replace(by_key[key], holds=True)  # its listener holds it
                continue
            if d.host_ip is None:
                # Loopback is not DNATed (the output chain skips it): one listener on the
                # wildcard serves loopback and holds every other address too.
                loop = by_key.pop(ProxyKey(LOOPBACK_TEXT[d.family], port, d.protocol), None)
                if loop is not None and loop.owner == d.owner:
                    by_key[key] = replace(loop, listen=address, holds=True)
                    continue
                if loop is not None:
                    by_key[loop.key] = loop
            claims.append(Claim(address, port, d.protocol, d.owner))
    return list(by_key.values()), claims
