"""UDP listener, the agent's side: owns the bound socket; one worker relays it (datagram.py).

The agent's event loop never reads a datagram: a big plan, a sort or a garbage collection in
the agent cannot stall UDP traffic (bench/input_stall.py).
"""

from __future__ import annotations

from bridgeport.proxy.listener import PooledListener
from bridgeport.proxy.metrics import ListenerStats


class UdpListener(PooledListener):
    EVENTS = {
        "target_unreachable": "proxy UDP target unreachable",
        "receive": "proxy UDP receive failed",
        "udp_flow_limit": "proxy UDP flow table full, dropping datagrams from new clients",
        "connect": "proxy cannot reach the UDP target",
        "source_limit": (
            "proxy UDP client at its flow limit: its oldest flow was closed for a new one"
        ),
        "internal": "proxy UDP relay internal error (the flow was closed)",
    }
    DEFAULT_EVENT = "proxy UDP relay error"

    def snapshot(self) -> ListenerStats:
        """The ACTIVE cells of a UDP listener count its live flows."""
        stats = super().snapshot()
        stats.flows, stats.active = stats.active, 0
        return stats
