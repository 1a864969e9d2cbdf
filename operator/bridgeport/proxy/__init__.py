"""The fallback userland proxy (docker-proxy's job): listeners owned by the agent.

The agent binds one socket per (address, port, protocol) from the plan's ProxyPorts
(manager.ProxyManager). A few worker processes relay (pool.py spawns worker.py processes):
TCP on every worker, sharing the agent's listening sockets (engine.py, splice(2)); each UDP
listener on one worker, through a per-client flow table (datagram.py). The agent's event
loop relays nothing.

Nothing is imported here: a worker process imports only what it uses.
"""
