"""Listener status as the agent reports it, and how a failed bind is explained (pure)."""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Literal

from bridgeport.core.plan import ProxyKey
from bridgeport.core.specs import ResourceRef

ListenerState = Literal["listening", "failed"]
Reason = Literal["", "PortInUse", "PermissionDenied", "AddressNotAvailable", "BindFailed"]


@dataclass(frozen=True)
class ProxyStatus:
    state: ListenerState
    owner: ResourceRef
    reason: Reason = ""
    message: str = ""


def describe(key: ProxyKey) -> str:
    """127.0.0.1:8080/TCP or [::1]:8080/UDP: the form every message uses."""
    host = f"[{key.listen}]" if ":" in key.listen else key.listen
    return f"{host}:{key.port}/{key.protocol.value}"


def bind_failure(key: ProxyKey, owner: ResourceRef, exc: OSError) -> ProxyStatus:
    """Turn a bind/listen error into a status a user can act on."""
    where = describe(key)
    if exc.errno == errno.EADDRINUSE:
        return ProxyStatus(
            "failed", owner, "PortInUse", f"{where} is already in use by another process"
        )
    if exc.errno == errno.EACCES:
        return ProxyStatus(
            "failed",
            owner,
            "PermissionDenied",
            f"binding {where} needs CAP_NET_BIND_SERVICE (ports below "
            "net.ipv4.ip_unprivileged_port_start are privileged)",
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return ProxyStatus(
            "failed",
            owner,
            "AddressNotAvailable",
            f"cannot bind {where}: {key.listen} is not an address of this node",
        )
    reason = exc.strerror or str(exc)
    return ProxyStatus("failed", owner, "BindFailed", f"cannot bind {where}: {reason}")
