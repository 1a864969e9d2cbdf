"""The fallback userland proxy (docker-proxy's job), run inside the agent's event loop.

One listener per (address, port, protocol) from the plan's ProxyPorts; TCP relayed with
splice(2), UDP through a per-client flow table. See manager.ProxyManager.
"""

from bridgeport.proxy.manager import ProxyManager
from bridgeport.proxy.status import ProxyStatus

__all__ = ["ProxyManager", "ProxyStatus"]
